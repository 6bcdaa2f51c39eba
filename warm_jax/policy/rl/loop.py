"""`train_policy`: the RL stage, on the shared training loop (package docstring: the algorithm).

Where it sits: the RL stage's entry (gin `train_policy`, gin/rl.gin). It checks the inputs,
builds the two Trainers (policy, value), the rollouts (`rl.rollout`), the state (`rl.state`) and
the evaluation hook (`rl.evaluation`), and runs `training_loop.run_training_loop` with one RL
step: rollout, value update, policy update (after the value warm-up), EMA anchor.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import jax
import numpy as np

from warm_jax.core import checkpoints as ckpt_lib
from warm_jax.policy import objective as po
from warm_jax.core import run_dir
from warm_jax.data.batching import ArrayDataset
from warm_jax.models import RewardModel, TransformerConfig
from warm_jax.models.heads import init_inputs
from warm_jax.core.optimizers import OptimizerConfig
from warm_jax.core.partitioning import Partitioner
from warm_jax.policy.reward_sources import parse_reward_source
from warm_jax.policy.rl.config import RLConfig, check_disagreement_members
from warm_jax.policy.rl.evaluation import RLEvaluator, RLLogHook, step_scalars
from warm_jax.policy.rl.rollout import Rollouts, to_host
from warm_jax.policy.rl.state import AnchorCheckpointer, RLCheckpoints, RLState, initial_state
from warm_jax.policy.sampling import SamplingConfig, check_positions, trained_positions
from warm_jax.core.trainer import Trainer, TrainerConfig
from warm_jax.core.training_loop import run_training_loop


def train_policy(*, model_dir: str | None, sft_path: str | None, reward_model: Any,
                 model_config: TransformerConfig, optimizer: OptimizerConfig,
                 trainer_config: TrainerConfig, dataset: ArrayDataset,
                 rl: RLConfig = RLConfig(), sampling: SamplingConfig = SamplingConfig(),
                 value_optimizer: OptimizerConfig | None = None,
                 reward_model_config: TransformerConfig | None = None,
                 eval_dataset: ArrayDataset | None = None, oracle: Any = None,
                 eval_oracle: Any = None, data_dir: str | None = None,
                 prompt_split: str = "train", eval_split: str = "validation",
                 partitioner: Partitioner | None = None, write_config: bool = True,
                 disagreement_members: Any = None) -> dict[str, Any]:
  """Runs RL into MODEL_DIR (module docstring); returns the last eval metrics.

  Args:
    reward_model: the RM spec (`reward_sources`: a path, [paths] for ENS, {'warm': [...]},
      {'wco': [...]}, {'uwo': [...], 'lambda': 0.1}).
    dataset / eval_dataset: prompt datasets (prompt_tokens, prompt_mask left-padded,
      prompt_index).
    oracle / eval_oracle: judges of the train / eval prompts; default the gold reward of
      DATA_DIR's prompts.<prompt_split> / .<eval_split> (`oracle.GoldOracle`).
    trainer_config: train_steps, batch_size (responses per step), seed, log_every, save_every,
      keep_checkpoints (None keeps every checkpoint along the run), microbatches.
    disagreement_members: None (off) or [>= 2 RM checkpoint paths] (reward_model_config):
      each eval's responses are also scored by each of them and `DISAGREEMENT_EVAL_KEYS`
      logged (module docstring; docs/policy.md). The experiment passes WARM M's own members.
  """
  from warm_jax.policy.oracle import GoldOracle
  for name, value in (("MODEL_DIR", model_dir), ("SFT_DIR", sft_path)):
    if not value:
      raise ValueError(f"{name} is not set: pass --gin.{name}=\"'/path'\"")
  cfg, k, batch = trainer_config, rl.samples_per_prompt, trainer_config.batch_size
  disagreement_members = check_disagreement_members(disagreement_members)
  if batch % k:
    raise ValueError(f"BATCH_SIZE={batch} responses is not a multiple of samples_per_prompt="
                     f"{k}")
  if sampling.greedy:
    raise ValueError("RL samples from the policy: set SamplingConfig.temperature > 0 (paper 0.9)")
  partitioner = partitioner or Partitioner()
  if oracle is None:
    oracle = GoldOracle(data_dir=data_dir, split=prompt_split) if data_dir else None
  if eval_oracle is None and eval_dataset is not None and data_dir:
    eval_oracle = GoldOracle(data_dir=data_dir, split=eval_split)
  if oracle is None:
    raise ValueError("no oracle: set DATA_DIR (gold reward) or pass an oracle")
  if write_config and jax.process_index() == 0:
    run_dir.write_operative_config(model_dir)
  prompt_len = dataset.features["prompt_tokens"].shape[1]
  seq_len = prompt_len + sampling.max_new_tokens
  limit, limit_source = trained_positions(
      (model_config, reward_model_config or model_config), data_dir=data_dir)
  for what, data in (("train", dataset), ("eval", eval_dataset)):
    if data is not None:
      check_positions(data.features["prompt_mask"], max_new_tokens=sampling.max_new_tokens,
                      limit=limit, source=limit_source, program=f"RL ({what} prompts)",
                      closing_eos=sampling.eos_id is not None)

  # -- programs ---------------------------------------------------------------------------------
  kl_in_loss = rl.kl_penalty == "loss"
  policy_trainer = Trainer(
      objective=po.PolicyGradientObjective(model_config, temperature=sampling.temperature,
                                           kl_coef=rl.kl_coef, kl_estimator=rl.kl_estimator,
                                           kl_in_loss=kl_in_loss,
                                           # the rollouts' rows: [prompt | max_new_tokens]
                                           response_window=sampling.max_new_tokens),
      optimizer=optimizer, partitioner=partitioner,
      config=dataclasses.replace(cfg, name="policy"), model_dir=model_dir, seq_len=seq_len)
  value_dir = os.path.join(model_dir, "value")
  value_trainer = None if rl.baseline != "value" else Trainer(
      objective=po.ValueRegressionObjective(model_config), optimizer=value_optimizer or optimizer,
      partitioner=partitioner, config=dataclasses.replace(cfg, name="value"),
      model_dir=value_dir, seq_len=seq_len)
  ema = jax.jit(lambda anchor, policy: jax.tree_util.tree_map(
      lambda a, p: (1 - rl.anchor_ema_rate) * a + rl.anchor_ema_rate * p, anchor, policy),
      donate_argnums=(0,))

  # -- state: resume, else SFT ------------------------------------------------------------------
  train_checkpointer = lambda d: ckpt_lib.TrainCheckpointer(
      d, save_every=cfg.save_every, keep=cfg.keep_checkpoints, async_save=cfg.async_checkpoints)
  checkpoints = RLCheckpoints(
      policy=train_checkpointer(model_dir),
      value=value_trainer and train_checkpointer(value_dir),
      anchor=AnchorCheckpointer(os.path.join(model_dir, "anchor"), cfg.keep_checkpoints)
      if rl.anchor == "ema" else None, save_every=cfg.save_every)
  sft_host = ckpt_lib.load_params(sft_path)
  sft, report = ckpt_lib.init_from_checkpoint(policy_trainer.abstract_state.params, sft_host,
                                              source_name=sft_path)
  if report["fresh"]:
    raise ckpt_lib.CheckpointError(f"SFT checkpoint {sft_path} lacks {report['fresh'][0]}: it "
                                   "is not a policy of this model config")
  start = checkpoints.policy.latest_step() or 0
  state = initial_state(start=start, checkpoints=checkpoints, policy_trainer=policy_trainer,
                        value_trainer=value_trainer, sft=sft, sft_host=sft_host,
                        sft_path=sft_path, value_warmup_steps=rl.value_warmup_steps)
  reward_config = reward_model_config or model_config
  reward_module = RewardModel(reward_config)
  rm_shardings = partitioner.param_shardings(jax.eval_shape(lambda: reward_module.init(
      jax.random.key(0), *init_inputs(reward_module)))["params"])
  place_rm = lambda t: jax.tree_util.tree_map(lambda x, s: jax.device_put(np.asarray(x), s), t,
                                              rm_shardings)
  source = parse_reward_source("reward", reward_model)
  rollouts = Rollouts(
      model_config=model_config, reward_model_config=reward_config, sampling=sampling, rl=rl,
      partitioner=partitioner, batch=batch, max_positions=limit, reward_source=source,
      reward_trees=[place_rm(t) for t in source.load()],
      # Read once: scored at every eval when set (M RM passes per eval batch, none in training).
      member_trees=[place_rm(ckpt_lib.load_params(p)) for p in disagreement_members or []],
      sft=sft, score_microbatches=cfg.microbatches)
  if rl.reward_normalization == "sft_samples":  # before any update; the same on resume
    rollouts.calibrate(dataset.batch(0, batch, process_index=0, process_count=1), oracle,
                       cfg.seed + 2, anchor=state.anchor, value=state.value_params,
                       model_dir=model_dir)

  # -- the loop ---------------------------------------------------------------------------------
  evaluating = eval_dataset is not None and eval_oracle is not None
  if rollouts.member_trees and not evaluating:
    logging.warning("DISAGREEMENT_MEMBERS is set but there are no eval prompts / eval oracle: "
                    "the member disagreement is computed at evals only, so not in this run")
  log = RLLogHook(model_dir=model_dir, start=start, train_steps=cfg.train_steps,
                  log_every=cfg.log_every, rl=rl, evaluator=RLEvaluator(
                      rollouts=rollouts, eval_dataset=eval_dataset, eval_oracle=eval_oracle,
                      rl=rl, seed=cfg.seed, disagreement_members=disagreement_members,
                      model_dir=model_dir) if evaluating else None)

  def step(state: RLState, index: int) -> tuple[RLState, dict[str, float]]:
    prompts = dataset.batch(index, batch // k, process_index=0, process_count=1)  # global
    prompts = {key: np.repeat(v, k, axis=0) for key, v in prompts.items()}
    pbatch, vbatch, host = rollouts(state.policy.params, prompts, oracle, cfg.seed,
                                    index * batch, anchor=state.anchor,
                                    value=state.value_params)
    t0 = time.perf_counter()
    policy, value, anchor = state.policy, state.value, state.anchor
    metrics = {}
    if value is not None:
      value, vm = value_trainer.train_step(value, vbatch)
      metrics.update({f"value/{key}": v for key, v in vm.items()})
    update_policy = index >= rl.value_warmup_steps
    if update_policy:
      policy, pm = policy_trainer.train_step(policy, pbatch)
      metrics.update({f"policy/{key}": v for key, v in pm.items()})
      if anchor is not None:
        with partitioner.mesh_context():
          anchor = ema(anchor, policy.params)
    metrics = to_host(metrics)
    return RLState(policy=policy, value=value, anchor=anchor), step_scalars(
        host, metrics, update_policy, time.perf_counter() - t0, value is not None)

  t_start = time.time()
  run_training_loop(
      state=state, start=start, train_steps=cfg.train_steps, step=step, checkpoints=checkpoints,
      hooks=[log], preempt_at_last_step=False,  # the last step's eval is its DONE's content
      preempted=lambda done: (
          f"SIGTERM at step {done}: checkpoints of the policy"
          f"{', the value' if value_trainer is not None else ''}"
          f"{' and the anchor' if checkpoints.anchor is not None else ''} saved in "
          f"{model_dir}; rerun the same command to resume"))
  if jax.process_index() == 0:
    from warm_jax.policy.gao_fits import rl_eval_fit
    from warm_jax.core.metrics_writer import read_metrics
    fit = rl_eval_fit(read_metrics(model_dir)) if evaluating else None
    run_dir.write_done(model_dir, {
        "step": cfg.train_steps, "train_steps": cfg.train_steps,
        "wall_s": round(time.time() - t_start, 2), **log.last_eval, "gao_fit": fit})
  return log.last_eval
