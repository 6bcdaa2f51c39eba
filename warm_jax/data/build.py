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

from warm_jax.cli_errors import print_error
# The library half (`warm_jax.data.builder`), importable from here as it always was.
from warm_jax.data.builder import (REAL_PREFERENCE_TASK, BuildError, build_dataset,  # noqa: F401
                                   install_dir, token_stats, tokenizer_corpus)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _parse_flags(rest: Sequence[str]) -> tuple[str | None, bool, str | None]:
  """(output_dir, overwrite, error) from the non-gin arguments."""
  output_dir, overwrite = None, False
  it = iter(rest)
  for arg in it:
    if arg.startswith("--output_dir="):
      output_dir = arg.split("=", 1)[1]
    elif arg == "--output_dir":
      output_dir = next(it, None)
    elif arg == "--overwrite":
      overwrite = True
    else:
      return None, False, (f"unknown argument {arg!r}; expected --gin_file, --gin.NAME=VALUE, "
                           "--gin_bindings, --gin_search_paths, --output_dir or --overwrite")
  return output_dir, overwrite, None


def main(argv: Sequence[str] | None = None) -> int:
  import gin
  from warm_jax import configurables
  from warm_jax.gin_utils import GinConfigError, error_message, parse_gin, split_gin_args

  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a in ("-h", "--help") for a in argv):
    print(__doc__)
    return 0
  logging.basicConfig(level=os.environ.get("WARM_JAX_LOGLEVEL", "INFO"),
                      format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)  # seqio's per-task INFO chatter
  try:
    files, bindings, paths, rest = split_gin_args(argv)
  except GinConfigError as e:
    print_error(str(e))
    return 2
  output_dir, overwrite, error = _parse_flags(rest)
  if error or not files or not output_dir:
    print_error(error or ("no --gin_file given (e.g. --gin_file=gin/data/synthetic_tldr.gin)"
                          if not files else "no --output_dir given"))
    return 2
  configurables.register()
  try:
    parse_gin(files, bindings, paths)
  except GinConfigError as e:
    print_error(str(e))
    return 2
  try:
    with gin.unlock_config():
      stats = gin.get_configurable("build_dataset")(
          output_dir=output_dir, overwrite=overwrite, write_operative_gin=True)
  except (ValueError, FileNotFoundError) as e:
    logging.debug("build failed", exc_info=True)
    print_error(f"{type(e).__name__}: {error_message(e)}")
    return 1
  print(json.dumps({"output_dir": os.path.abspath(output_dir), "sizes": stats["sizes"],
                    "build_seconds": stats["build_seconds"]["total"]}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
