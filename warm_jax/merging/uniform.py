"""`uniform`: WARM itself, phi_WARM = (1/M) sum_i phi_i (docs/paper.md, "The method", step 3)."""

from __future__ import annotations

from warm_jax.merging.registry import LinearPlan, MergeMethod, MergePlan, register


@register
class Uniform(MergeMethod):
  name = "uniform"
  summary = "WARM: the uniform mean of the M members' weights"

  def plan(self, *, num_members, load_member=None, **params):
    del load_member, params
    return MergePlan(method=self.name, params={},
                     linear=LinearPlan(coefficients=(1.0 / num_members,) * num_members))
