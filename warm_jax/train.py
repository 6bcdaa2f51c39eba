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

import sys
from collections.abc import Sequence

from warm_jax.core import run_dir
# The library half (`warm_jax.core.training_stage`), importable from here as it always was.
from warm_jax.core.training_stage import DONE_MARKER, InitFromCheckpoint, train  # noqa: F401

read_done = run_dir.read_done  # the completion record of a stage dir, or None if unfinished


def main(argv: Sequence[str] | None = None) -> int:
  from warm_jax.gin_utils import gin_main
  return gin_main(argv, entry="run_stage", doc=__doc__,
                  example="--gin_file=gin/models/tiny.gin --gin_file=gin/pretrain.gin")


if __name__ == "__main__":
  sys.exit(main())
