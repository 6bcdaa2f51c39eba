"""The names gin files may use, registered once for every entry point.

The library itself never imports gin-decorated code: its functions take plain keyword
arguments and dataclasses (the t5x / big_vision style). Entry points call `register()` before
parsing, which makes those classes and functions configurable under short names
(`TransformerConfig.d_model`, `OptimizerConfig.learning_rate`, `pretraining_dataset.num_docs`,
...). It is the top of the import graph with the command lines (`gin_utils`, each `main`):
nothing below imports it or them.
"""

from __future__ import annotations

from typing import Any

import gin

_REGISTERED = False


def register() -> None:
  global _REGISTERED
  if _REGISTERED:
    return
  from warm_jax.core import objectives, optimizers, partitioning, trainer
  from warm_jax.data import lm_data, vocab
  from warm_jax.data import builder as data_build, datasets, preferences, tokenizer
  from warm_jax.models import config as model_config
  from warm_jax.core import training_stage as train_lib
  from warm_jax.policy import bon, rl, sampling, win_rates
  from warm_jax import merging
  from warm_jax.rm import evaluation, linear_probe, members
  from warm_jax import pipeline
  from warm_jax.rm import vmapped_members

  for fn_or_cls in (
      model_config.TransformerConfig,
      optimizers.OptimizerConfig,
      trainer.TrainerConfig,
      partitioning.Partitioner,
      objectives.LanguageModelObjective,
      objectives.PreferenceObjective,
      linear_probe.linear_probe,
      linear_probe.ProbedRewardModelInit,
      members.MemberSweep,
      members.train_reward_model,
      vmapped_members.train_reward_members,
      vmapped_members.member_range,
      evaluation.evaluate_reward_models,
      pipeline.run_experiment,
      lm_data.pretraining_dataset,
      vocab.ByteVocabulary,
      train_lib.InitFromCheckpoint,
      merging.StreamConfig,
      datasets.lm_dataset,
      datasets.sft_dataset,
      datasets.preference_dataset,
      datasets.prompt_dataset,
      preferences.WorldConfig,
      tokenizer.TokenizerConfig,
      data_build.build_dataset,
      sampling.SamplingConfig,
      bon.best_of_n,
      rl.RLConfig,
      rl.train_policy,
      win_rates.policy_win_rates,
  ):
    gin.external_configurable(fn_or_cls, module=None)
  gin.external_configurable(train_lib.train, name="train")
  gin.external_configurable(merging.average_checkpoints, name="average_checkpoints")
  gin.external_configurable(run_stage, name="run_stage")
  _REGISTERED = True


def run_stage(stage: Any = None) -> Any:
  """What `python -m warm_jax.train` runs: `train` unless a stage file binds another stage,
  e.g. `run_stage.stage = @linear_probe` (gin/linear_probe.gin) or `@train_reward_model`
  (gin/rm.gin)."""
  if stage is None:
    stage = gin.get_configurable("train")
  return stage()
