"""The names gin files may use, registered once for every entry point.

The library itself never imports gin-decorated code: its functions take plain keyword
arguments and dataclasses (STYLE.md). Entry points call `register()` before parsing, which makes
those classes and functions configurable under short names (`TransformerConfig.d_model`,
`OptimizerConfig.learning_rate`, `pretraining_dataset.num_docs`, ...).
"""

from __future__ import annotations

import gin

_REGISTERED = False


def register() -> None:
  global _REGISTERED
  if _REGISTERED:
    return
  from warm_jax import objectives, optimizers, partitioning, trainer
  from warm_jax.data import lm_data, vocab
  from warm_jax.models import config as model_config
  from warm_jax import train as train_lib

  for fn_or_cls in (
      model_config.TransformerConfig,
      optimizers.OptimizerConfig,
      trainer.TrainerConfig,
      partitioning.Partitioner,
      objectives.LanguageModelObjective,
      lm_data.pretraining_dataset,
      vocab.ByteVocabulary,
      train_lib.InitFromCheckpoint,
  ):
    gin.external_configurable(fn_or_cls, module=None)
  gin.external_configurable(train_lib.train, name="train")
  _REGISTERED = True
