"""`python -m warm_jax.data.on_policy`: the command line of the on-policy RM data stage.

The stage itself is `warm_jax.policy.on_policy` (it samples policies, so it sits on the policy
side); this program keeps the documented command and existing runs' commands.sh working, and
re-exports the stage's names.
"""

import sys
from collections.abc import Sequence

from warm_jax.policy.on_policy import *  # noqa: F401,F403
from warm_jax.policy.on_policy import __doc__ as _STAGE_DOC
from warm_jax.policy.on_policy import build_on_policy_data


def main(argv: Sequence[str] | None = None) -> int:
  from warm_jax.gin_utils import function_main
  return function_main(build_on_policy_data, sys.argv[1:] if argv is None else argv,
                       doc=_STAGE_DOC,
                       example="--gin_file=gin/models/tiny.gin --gin_file=gin/data/on_policy.gin")


if __name__ == "__main__":
  sys.exit(main())
