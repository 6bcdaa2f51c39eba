"""`python -m warm_jax.evaluate`: the paper's reward-model evaluations, written as JSON + plots.

  python -m warm_jax.evaluate --gin_file=gin/models/tiny.gin --gin_file=gin/evaluate.gin \
      --gin.DATA_DIR="'/tmp/data'" --gin.MEMBERS_DIR="'/tmp/members'" \
      --gin.OUTPUT_DIR="'/tmp/eval'"

Reads every finished member under MEMBERS_DIR (member_<i> with DONE, latest checkpoint) or an
explicit list of params paths, and writes OUTPUT_DIR/eval.json:

  table        accuracy per subset (train_clean, train_corrupt, id_val, ood, and id_policy /
               ood_policy in an on-policy RM data dir or ood_policy from POLICY_PAIRS_DIR) of
               each member, WARM M and ENS M (members ranked best first on ID val), the
               ranking, bt_loss and margin per model and subset, and `paired`: WA - ENS,
               WA - best member, WA - mean member, ENS - best member with post-clustered
               standard errors and 95% intervals
  lmc          per named pair: WA / ENS / straight line vs lambda per subset, and the bump
               (mean of curve - line over interior lambdas) with its paired statistics
  vs_m         accuracy of WA and ENS of the first M members for the orders best-to-worst,
               worst-to-best, random (seeded) and greedy (kept members only)
  lmc_bump_differences  bump(b) - bump(a) for every two LMC pairs, paired over the same pairs
               (e.g. two_baklava_inits-checkpoints_of_one_run: the bump's growth with diversity)
  wa_minus_ens Acc(WA) - Acc(ENS) per subset for every pair of members (lambda = 1/2)

and OUTPUT_DIR/plots/*.png. The stage and the definitions are `warm_jax.rm.evaluation`'s.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# The library half (`warm_jax.rm.evaluation`), importable from here as it always was.
from warm_jax.rm.evaluation import (EVAL_FILE, VS_M_ORDERS, evaluate_reward_models,
                                    finished_members, load_subsets, write_outputs)


def main(argv: Sequence[str] | None = None) -> int:
  from warm_jax.gin_utils import gin_main
  return gin_main(argv, entry="evaluate_reward_models", doc=__doc__,
                  example="--gin_file=gin/models/tiny.gin --gin_file=gin/evaluate.gin")


if __name__ == "__main__":
  sys.exit(main())
