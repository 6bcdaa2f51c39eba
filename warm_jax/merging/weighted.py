"""`weighted`: sum_i w_i phi_i / sum_i w_i with non-negative weights (not all zero).

Used for reweighted soups and to average a subset (weight 0 drops a member but it is still
read, hashed and checked, so the manifest describes every input).
"""

from __future__ import annotations

from warm_jax.merging.registry import (LinearPlan, MergeMethod, MergePlan,
                                       MethodParam, check_weights, register)


@register
class Weighted(MergeMethod):
  name = "weighted"
  summary = "a convex combination with user weights (normalised to sum to 1)"
  params = (MethodParam("weights", "one non-negative weight per input (normalised)",
                        per_model=True, required=True),)

  def plan(self, *, num_members, load_member=None, weights=None, **params):
    del load_member, params
    normalised = check_weights(weights)
    return MergePlan(method=self.name, params={"weights": [float(w) for w in weights]},
                     linear=LinearPlan(coefficients=normalised))
