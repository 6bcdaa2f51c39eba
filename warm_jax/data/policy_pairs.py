"""`python -m warm_jax.data.policy_pairs`: the command line of the OOD policy-pairs stage.

The stage itself is `warm_jax.policy.policy_pairs` (it samples the SFT policy, so it sits on the
policy side); this program keeps the documented command and existing runs' commands.sh working,
and re-exports the stage's names.
"""

import sys
from collections.abc import Sequence

from warm_jax.policy.policy_pairs import *  # noqa: F401,F403
from warm_jax.policy.policy_pairs import __doc__ as _STAGE_DOC
from warm_jax.policy.policy_pairs import build_policy_pairs


def main(argv: Sequence[str] | None = None) -> int:
  from warm_jax.gin_utils import function_main
  return function_main(build_policy_pairs, sys.argv[1:] if argv is None else argv,
                       doc=_STAGE_DOC, example="--gin_file=gin/models/small.gin "
                                               "--gin_file=gin/data/policy_pairs.gin")


if __name__ == "__main__":
  sys.exit(main())
