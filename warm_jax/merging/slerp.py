"""`slerp`: spherical interpolation of task vectors, per leaf (WARP, arXiv 2406.16768, §3).

With the shared init theta_init and task vectors d_i = theta_i - theta_init, for one leaf:

  Omega = arccos(<d_1, d_2> / (|d_1| |d_2|))
  slerp(d_1, d_2; lam) = sin((1 - lam) Omega) / sin(Omega) d_1 + sin(lam Omega) / sin(Omega) d_2
  theta = theta_init + slerp(d_1, d_2; lam)

Each leaf (layer weight) gets its own angle, as in WARP. M > 2 members are merged pairwise
and iteratively, s_1 = d_1, s_k = slerp(s_{k-1}, d_k; 1/k), so that with parallel task vectors
the result is exactly the uniform mean of the members (the order of the inputs then matters
slightly for non-parallel ones; `lam` is only accepted for M = 2). When the two vectors are
(anti)parallel or one is zero, sin(Omega) ~ 0 and SLERP is ill-conditioned; linear
interpolation, its limit, is used instead.
"""

from __future__ import annotations

import math

from warm_jax.merging.registry import (LeafMerge, MergeConfigError, MergeMethod, MergePlan,
                                       MethodParam, check_unit_interval, register)

# Above this |cos(Omega)| the vectors are treated as parallel and interpolated linearly
# (mergekit's threshold); slerp and lerp then agree to about 1e-3 relative.
PARALLEL_COSINE = 0.9995
DEFAULT_LAMBDA = 0.5


def slerp_task_vectors(d1, d2, *, lam: float, xp):
  """slerp(d1, d2; lam) for two same-shape arrays, the angle taken over all their entries."""
  n1 = float(xp.linalg.norm(d1.ravel()))
  n2 = float(xp.linalg.norm(d2.ravel()))
  if n1 > 0 and n2 > 0:
    cos = min(1.0, max(-1.0, float(xp.vdot(d1.ravel(), d2.ravel())) / (n1 * n2)))
    if abs(cos) <= PARALLEL_COSINE:
      omega = math.acos(cos)
      sin_omega = math.sin(omega)
      return (math.sin((1.0 - lam) * omega) / sin_omega) * d1 + \
          (math.sin(lam * omega) / sin_omega) * d2
  return (1.0 - lam) * d1 + lam * d2


class SlerpLeafMerge(LeafMerge):
  """theta_init + eta * s_M with s_M the iterated SLERP of the task vectors (eta=1: SLERP)."""

  def __init__(self, *, lam: float | None, eta: float = 1.0):
    self.lam = lam
    self.eta = eta

  def merge_leaf(self, *, member, num_members, init, xp):
    merged = member(0) - init
    for k in range(1, num_members):
      lam = self.lam if num_members == 2 else 1.0 / (k + 1)
      merged = slerp_task_vectors(merged, member(k) - init, lam=lam, xp=xp)
    return init + self.eta * merged if self.eta != 1.0 else init + merged


def slerp_lambda(lam: float | None, num_members: int) -> float | None:
  """The validated lam for a SLERP over `num_members` members (None when M > 2)."""
  if num_members == 2:
    return check_unit_interval("lambda", DEFAULT_LAMBDA if lam is None else lam)
  if lam is not None:
    raise MergeConfigError(f"--lambda only applies to a SLERP of 2 members; {num_members} are "
                           "merged pairwise with lambda_k = 1/k (docs/averaging.md)")
  return None


@register
class Slerp(MergeMethod):
  name = "slerp"
  summary = "WARP: spherical interpolation of task vectors theta_i - theta_init, per leaf"
  params = (MethodParam("lam", "for 2 members, the position on the arc in [0, 1] (default "
                               "0.5); M > 2 members are merged pairwise with lam_k = 1/k"),)
  needs_init = True
  min_members = 2

  def plan(self, *, num_members, load_member=None, lam=None, **params):
    del load_member, params
    lam = slerp_lambda(lam, num_members)
    return MergePlan(method=self.name, params={"lam": lam},
                     leaf_merge=SlerpLeafMerge(lam=lam))
