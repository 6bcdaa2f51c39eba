"""`interpolate`: (1 - lam) phi_1 + lam phi_2, a point on the segment between two members.

The building block of the paper's linear-mode-connectivity curves (Fig. 3-5, Observation 1):
the evaluation code calls it through `merge_params` at many lambdas without touching disk.
"""

from __future__ import annotations

from warm_jax.merging.registry import (LinearPlan, MergeMethod, MergePlan,
                                       MethodParam, check_unit_interval, register)


@register
class Interpolate(MergeMethod):
  name = "interpolate"
  summary = "two members at lam: (1 - lam) phi_1 + lam phi_2"
  params = (MethodParam("lam", "--lambda X, the position on the segment in [0, 1] (0: the "
                               "first input)", required=True),)
  min_members = 2
  max_members = 2

  def plan(self, *, num_members, load_member=None, lam=None, **params):
    del num_members, load_member, params
    lam = check_unit_interval("lambda", lam)
    return MergePlan(method=self.name, params={"lam": lam},
                     linear=LinearPlan(coefficients=(1.0 - lam, lam)))
