"""`python -m warm_jax.data.build`: the data stage, world -> text, tokenizer and token arrays.

  python -m warm_jax.data.build --gin_file=gin/data/synthetic_tldr.gin --output_dir=DIR \
      [--gin.CORRUPTION_RATE=0.25] [--gin.NAME=VALUE ...] [--overwrite]

Where it sits: the first box of the pipeline. Every training stage then reads DIR without
TensorFlow (`warm_jax.data.datasets`, bound to the stage gins' DATA_DIR). Steps:
1. `preferences.build_splits(config=WorldConfig(...))` (WorldConfig bound from gin) -> the
   splits as JSONL records (`data_dir` documents the layout), plus every post with its facts.
2. A SentencePiece model trained on the world's training texts -> DIR/spm.model
   (`tokenizer`); its size must be exactly VOCAB_SIZE, which the stage gins share.
3. The seqio tasks registered on those files (`synthetic_tasks`; for preferences / SFT the
   PREFERENCE_TASK / SFT_TASK macros may pick the real TL;DR tasks of `tldr_tasks` instead)
   are read through the converters of `converters` -> DIR/arrays/<kind>.<split>.npz.
4. DIR/meta.json, DIR/config.gin and, last, DIR/stats.json (split sizes, label noise,
   corruption, the length feature's correlation with the label per split, mean gold per
   generator, tokens per example and truncations, build time).
The whole dir is written as DIR.tmp-XXXX and renamed into place only when complete, so DIR is
either absent or complete; an existing build is replaced only with --overwrite.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence

# The library half (`warm_jax.data.builder`), importable from here as it always was.
from warm_jax.data.builder import (REAL_PREFERENCE_TASK, BuildError, build_dataset,  # noqa: F401
                                   token_stats, tokenizer_corpus)
from warm_jax.core.run_dir import install_dir  # noqa: F401


def main(argv: Sequence[str] | None = None) -> int:
  from warm_jax.gin_utils import gin_main

  def summary(stats):
    import gin
    output_dir = gin.query_parameter("build_dataset.output_dir")
    print(json.dumps({"output_dir": os.path.abspath(output_dir),
                      "sizes": stats["sizes"],
                      "build_seconds": stats["build_seconds"]["total"]}))

  logging.getLogger("absl").setLevel(logging.WARNING)  # seqio's per-task INFO chatter
  return gin_main(argv, entry="build_dataset", doc=__doc__,
                  example="--gin_file=gin/data/synthetic_tldr.gin --output_dir=DIR",
                  flags={"--output_dir": "build_dataset.output_dir = {value!r}",
                         "--overwrite": "build_dataset.overwrite = True"},
                  required=("--output_dir",),
                  bindings=["build_dataset.write_operative_gin = True"], on_result=summary)


if __name__ == "__main__":
  sys.exit(main())
