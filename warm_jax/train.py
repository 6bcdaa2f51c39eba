"""`python -m warm_jax.train`: run any training stage from gin files (t5x style).

  python -m warm_jax.train --gin_file=gin/models/tiny.gin --gin_file=gin/pretrain.gin \
      --gin.MODEL_DIR="'/tmp/pretrain'" --gin.TRAIN_STEPS=5

Every stage file (gin/pretrain.gin, later sft/rm/rl) binds `train` below and accepts the macros
MODEL_DIR, TRAIN_STEPS, BATCH_SIZE and SEED; the model size comes from an included
gin/models/NAME.gin. The run writes MODEL_DIR/config.gin (operative config),
MODEL_DIR/checkpoints/<step>/{params,opt_state}, MODEL_DIR/metrics.jsonl, MODEL_DIR/tb/ and,
when finished, MODEL_DIR/DONE (a JSON completion marker the experiment driver checks).
Rerunning the same command resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from warm_jax import checkpoints as ckpt_lib
from warm_jax.data.batching import ArrayDataset
from warm_jax.optimizers import OptimizerConfig
from warm_jax.partitioning import Partitioner
from warm_jax.trainer import Trainer, TrainerConfig

DONE_MARKER = "DONE"


@dataclasses.dataclass(frozen=True)
class InitFromCheckpoint:
  """Initial params taken from another stage's checkpoint (used when not resuming).

  Attributes:
    path: a model dir, checkpoints/<step> dir or plain orbax params dir.
    assignment_map: (target-path regex, source-path replacement or None) rules; see
      `warm_jax.checkpoints.init_from_checkpoint`. Default: copy every leaf the source has,
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
  done = read_done(model_dir)
  if done is not None and done.get("train_steps") == trainer_config.train_steps:
    logging.info("%s is already trained (%s): skipped", model_dir, DONE_MARKER)
    return None
  partitioner = partitioner or Partitioner()

  def write_config_file(start_step: int) -> None:
    del start_step  # written once the state is restored: a refused resume keeps the old one
    if write_config and jax.process_index() == 0:
      from warm_jax.gin_utils import write_operative_config
      write_operative_config(model_dir)

  trainer = Trainer(objective=objective, optimizer=optimizer, partitioner=partitioner,
                    config=trainer_config, model_dir=model_dir, seq_len=seq_len)
  t0 = time.time()
  state = trainer.train(dataset, eval_dataset=eval_dataset, init_params=init_from,
                        on_start=write_config_file, extra_eval_datasets=extra_eval_datasets)
  if jax.process_index() == 0:
    ckpt_lib.atomic_write_text(os.path.join(model_dir, DONE_MARKER), json.dumps({
        "step": int(state.step), "train_steps": trainer_config.train_steps,
        "num_params": trainer.num_params, "wall_s": round(time.time() - t0, 2)}) + "\n")
  return state


def read_done(model_dir: str) -> dict[str, Any] | None:
  """The completion marker of a stage dir, or None if it has not finished."""
  path = os.path.join(model_dir, DONE_MARKER)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def run_stage(stage: Any = None) -> Any:
  """What `python -m warm_jax.train` runs: `train` unless a stage file binds another stage,
  e.g. `run_stage.stage = @linear_probe` (gin/linear_probe.gin) or `@train_reward_model`
  (gin/rm.gin)."""
  if stage is None:
    import gin
    stage = gin.get_configurable("train")
  return stage()


def main(argv: Sequence[str] | None = None) -> int:
  from warm_jax.gin_utils import gin_main
  return gin_main(argv, entry="run_stage", doc=__doc__,
                  example="--gin_file=gin/models/tiny.gin --gin_file=gin/pretrain.gin")


if __name__ == "__main__":
  sys.exit(main())
