"""`liti`: linear interpolation towards the init (WARP's LITI, arXiv 2406.16768, §3).

  theta = (1 - eta) theta_init + eta theta_merged,   eta ~ 0.3 in WARP,

where theta_merged is the SLERP of the members' task vectors (`base='slerp'`, WARP's choice;
needs M >= 2) or their uniform mean (`base='uniform'`). With a single member, theta_merged is
that member. WARP iterates LITI (the result becomes the next round's init); one call is one
iteration.
"""

from __future__ import annotations

from warm_jax.merging.registry import (LinearPlan, MergeConfigError, MergeMethod, MergePlan,
                                       MethodParam, check_unit_interval, register)
from warm_jax.merging.slerp import SlerpLeafMerge, slerp_lambda

DEFAULT_ETA = 0.3
BASES = ("slerp", "uniform")


@register
class Liti(MergeMethod):
  name = "liti"
  summary = "WARP: (1 - eta) theta_init + eta theta_merged (merged by SLERP or uniform mean)"
  params = (
      MethodParam("eta", f"how far from the init towards the merge, in [0, 1] (default "
                         f"{DEFAULT_ETA})"),
      MethodParam("lam", "SLERP position for 2 members (default 0.5)"),
      MethodParam("base", f"how the members are merged first: one of {BASES} (default slerp)"),
  )
  needs_init = True

  def plan(self, *, num_members, load_member=None, eta=None, lam=None, base=None, **params):
    del load_member, params
    eta = check_unit_interval("eta", DEFAULT_ETA if eta is None else eta)
    base = base or "slerp"
    if base not in BASES:
      raise MergeConfigError(f"liti base {base!r} is not one of {BASES}")
    if base == "slerp" and num_members >= 2:
      lam = slerp_lambda(lam, num_members)
      return MergePlan(method=self.name, params={"eta": eta, "base": base, "lam": lam},
                       leaf_merge=SlerpLeafMerge(lam=lam, eta=eta))
    if lam is not None:
      raise MergeConfigError("--lambda is only used by liti with base='slerp' and 2 members")
    coefficients = tuple(eta / num_members for _ in range(num_members))
    return MergePlan(method=self.name, params={"eta": eta, "base": base},
                     linear=LinearPlan(coefficients=coefficients, init_coefficient=1.0 - eta))
