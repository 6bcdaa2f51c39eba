"""`python -m warm_jax.average`: merge reward-model checkpoints into one (WARM and friends).

  python -m warm_jax.average --inputs runs/rm_0 runs/rm_1 runs/rm_2 --output runs/warm_3
  python -m warm_jax.average --inputs A B --output AB_03 --method interpolate --lambda 0.3
  python -m warm_jax.average --inputs A B C --output W --method weighted --weights 2 1 1
  python -m warm_jax.average --inputs P1 P2 --init SFT --output P --method liti --eta 0.3 \
      --head none
  python -m warm_jax.average --gin_file=gin/average.gin --gin.INPUTS="['A', 'B']" \
      --gin.OUTPUT="'W'"

Each input is a plain orbax PyTree checkpoint dir, a `checkpoints/<step>` dir, a stage's
MODEL_DIR (its latest step) or any experiment stage dir (members/clean/member_0, average/warm_6:
`warm_jax.core.checkpoints.resolve_params_path`). The output is a new plain orbax checkpoint with
OUTPUT/manifest.json
(inputs, steps, content hashes, weights, method, time, peak memory). Flags:

  --inputs DIR [DIR ...]  the members, in the order --weights refers to
  --output DIR            the new checkpoint (refused if it exists, unless --overwrite)
  --method NAME           uniform (default), weighted, interpolate, greedy, slerp, liti
  --weights W [W ...]     weighted: one non-negative weight per input
  --lambda X              interpolate (required) and slerp/liti of 2 members: in [0, 1]
  --init DIR              slerp, liti: the checkpoint the members were fine-tuned from
  --eta X                 liti: (1 - eta) init + eta merged, in [0, 1] (default 0.3)
  --base NAME             liti: merge the members by slerp (default) or uniform first
  --head NAME|none        a node the inputs must have and the output keeps (reward_head)
  --overwrite             replace an existing output (never an input)
  --gin_file, --gin.NAME=VALUE, --gin_bindings, --gin_search_paths   as in warm_jax.train;
                          flags given on the command line win over gin bindings

Nothing is written on any refusal (exit status 1; 2 for a malformed command line). The
averager is a host program: it reads and writes numpy arrays and never uses an accelerator.
Greedy selection needs a validation score function, so it runs from Python or gin
(`average_checkpoints.score_fn`), not from the flags alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from warm_jax.cli_errors import print_error
from warm_jax.merging import average_checkpoints, method_names

__all__ = ["average_checkpoints", "main"]

USAGE_EXIT_CODE = 2
REFUSED_EXIT_CODE = 1


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise _UsageError(message)


class _UsageError(Exception):
  pass


def _parser() -> argparse.ArgumentParser:
  """Each flag's dest is the average_checkpoints keyword it sets; unset flags are absent (so
  gin bindings apply)."""
  p = _Parser(prog="python -m warm_jax.average", add_help=False,
              argument_default=argparse.SUPPRESS)
  p.add_argument("--inputs", nargs="+")
  p.add_argument("--output")
  p.add_argument("--method", choices=method_names())
  p.add_argument("--weights", nargs="+", type=float)
  p.add_argument("--lambda", dest="lam", type=float)
  p.add_argument("--init")
  p.add_argument("--eta", type=float)
  p.add_argument("--base")
  p.add_argument("--head")
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("-h", "--help", action="store_true")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """Parses the averager's flags (each one an `average_checkpoints` keyword, winning over gin)
  and runs it through the gin front end (`gin_utils.run_entry`: the exit codes and error
  messages of every command line; a refusal adds "nothing was written")."""
  from warm_jax.gin_utils import GinConfigError, host_program, run_entry, setup_logging
  from warm_jax.gin_utils import split_gin_args

  argv = list(sys.argv[1:] if argv is None else argv)
  setup_logging(quiet_absl=True)
  try:
    files, bindings, paths, rest = split_gin_args(argv)
    flags = vars(_parser().parse_args(rest))
  except (GinConfigError, _UsageError) as e:
    print_error(f"{e}\n(see python -m warm_jax.average --help)")
    return USAGE_EXIT_CODE
  if flags.pop("help", False):
    print(__doc__)
    return 0
  if "head" in flags and flags["head"].lower() in ("none", ""):
    flags["head"] = None
  host_program()  # no accelerator; freed bands go straight back to the OS (flat memory in M)
  return run_entry("average_checkpoints", files=files, bindings=bindings, paths=paths,
                   kwargs=flags, required={"inputs": "--inputs", "output": "--output"},
                   on_result=_print_summary, refusal_note="nothing was written")


def _print_summary(manifest: dict) -> None:
  """The one JSON line a run prints: where the average is, its hash, time, memory, bytes."""
  print(json.dumps({"output": manifest["output"]["path"],
                    "content_hash": manifest["output"]["content_hash"],
                    "wall_s": manifest["wall_s"], "peak_rss_bytes": manifest["peak_rss_bytes"],
                    "bytes_read": manifest["bytes_read"]}))


if __name__ == "__main__":
  sys.exit(main())
