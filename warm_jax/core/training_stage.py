"""One training stage into a model dir: init (fresh or from another stage's checkpoint), resume,
the operative config and the DONE marker around a `Trainer` run.

Where it sits: between the Trainer (`warm_jax.core.trainer`, the sharded jitted loop) and the stages
that train a single model: pre-training and SFT (gin/pretrain.gin, gin/sft.gin), one reward
model (`members.train_reward_model`). `python -m warm_jax.train` (the command line) runs it
through gin; the library calls it directly.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from warm_jax.core import checkpoints as ckpt_lib
from warm_jax.core import run_dir
from warm_jax.data.batching import ArrayDataset
from warm_jax.core.optimizers import OptimizerConfig
from warm_jax.core.partitioning import Partitioner
from warm_jax.core.trainer import Trainer, TrainerConfig

DONE_MARKER = run_dir.DONE


@dataclasses.dataclass(frozen=True)
class InitFromCheckpoint:
  """Initial params taken from another stage's checkpoint (used when not resuming).

  Attributes:
    path: a model dir, checkpoints/<step> dir or plain orbax params dir.
    assignment_map: (target-path regex, source-path replacement or None) rules; see
      `warm_jax.core.checkpoints.init_from_checkpoint`. Default: copy every leaf the source has,
      initialise the rest fresh (SFT LM -> RM: decoder copied, reward head new).
    require_all_copied_from: a path prefix whose target leaves must all be copied (e.g.
      "decoder/"), so a wrong checkpoint cannot silently leave the backbone random.
  """

  path: str
  assignment_map: Sequence[tuple[str, str | None]] = ()
  require_all_copied_from: str | None = "decoder/"

  def __call__(self, trainer: Trainer) -> Any:
    if not self.path:
      raise ValueError("InitFromCheckpoint.path is not set: pass the source stage's MODEL_DIR "
                       "(e.g. --gin.PRETRAIN_DIR=\"'/path'\" for SFT)")
    fresh = trainer.init_state().params
    source = ckpt_lib.load_params(self.path)
    params, report = ckpt_lib.init_from_checkpoint(
        fresh, source, self.assignment_map, source_name=self.path)
    if self.require_all_copied_from:
      missing = [p for p in report["fresh"] if p.startswith(self.require_all_copied_from)]
      if missing:
        raise ckpt_lib.CheckpointError(
            f"init from {self.path}: {len(missing)} target leaves under "
            f"{self.require_all_copied_from} have no source leaf (first: {missing[0]}); the "
            "checkpoint is not a backbone of this model")
    return params


def train(*, model_dir: str | None = None, objective: Any, optimizer: OptimizerConfig,
          trainer_config: TrainerConfig, dataset: ArrayDataset, seq_len: int,
          partitioner: Partitioner | None = None, eval_dataset: ArrayDataset | None = None,
          init_from: InitFromCheckpoint | None = None, write_config: bool = True,
          extra_eval_datasets: Mapping[str, ArrayDataset] | None = None) -> Any:
  """Trains one stage into `model_dir`; returns the final TrainState.

  A finished stage (DONE present with the same train_steps) is skipped and None returned; an
  interrupted one resumes from its latest checkpoint.
  """
  if not model_dir:
    raise ValueError("MODEL_DIR is not set: pass --gin.MODEL_DIR=\"'/path/to/dir'\"")
  done = run_dir.read_done(model_dir)
  if done is not None and done.get("train_steps") == trainer_config.train_steps:
    logging.info("%s is already trained (%s): skipped", model_dir, DONE_MARKER)
    return None
  partitioner = partitioner or Partitioner()

  def write_config_file(start_step: int) -> None:
    del start_step  # written once the state is restored: a refused resume keeps the old one
    if write_config and jax.process_index() == 0:
      run_dir.write_operative_config(model_dir)

  trainer = Trainer(objective=objective, optimizer=optimizer, partitioner=partitioner,
                    config=trainer_config, model_dir=model_dir, seq_len=seq_len)
  t0 = time.time()
  state = trainer.train(dataset, eval_dataset=eval_dataset, init_params=init_from,
                        on_start=write_config_file, extra_eval_datasets=extra_eval_datasets)
  if jax.process_index() == 0:
    run_dir.write_done(model_dir, {
        "step": int(state.step), "train_steps": trainer_config.train_steps,
        "num_params": trainer.num_params, "wall_s": round(time.time() - t0, 2)})
  return state
