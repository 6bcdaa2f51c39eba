"""`merge_params`: the same merge methods on trees already in memory (numpy or jax arrays).

Where it sits: used by evaluation code that needs weight averages without touching disk -- LMC
curves (`interpolate` at 11+ lambdas), accuracy of WARM M for several selection orders, greedy
soups scored on a validation split. Same plans, same checks (trees, head, finiteness) and the
same accumulation dtype as the streaming averager; jax arrays stay on their devices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax.core import checkpoints as ckpt_lib
from warm_jax.merging import checks
from warm_jax.merging.registry import MergeConfigError, get_method

ACCUMULATE_DTYPES = {"float32": np.float32, "float64": np.float64}


def _signature(tree: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  return {path: (tuple(np.shape(leaf)), np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype)))
          for path, leaf in ckpt_lib.flatten_params(tree).items()}


def merge_params(method: str, trees: Sequence[Any], *, init: Any = None,
                 weights: Sequence[float] | None = None, lam: float | None = None,
                 eta: float | None = None, base: str | None = None,
                 score_fn: Callable[[Any], float] | None = None, head: str | None = None,
                 accumulate_dtype: str = "float32", check_finite: bool = True) -> Any:
  """Merges M param trees with a registered method; returns a tree shaped like trees[0].

  Args:
    method: e.g. "uniform", "weighted", "interpolate", "greedy", "slerp", "liti".
    trees: the members (same structure, shapes and dtypes), in the order `weights` refer to.
    init: theta_init for slerp/liti.
    weights, lam, eta, base, score_fn: the method's parameters (see docs/averaging.md).
    head: if set, a node every tree must have (e.g. "reward_head").
    accumulate_dtype: "float32" or "float64"; leaves are cast back to their own dtype.
    check_finite: refuse NaN/inf leaves (a device sync per leaf for jax arrays).

  Example (an LMC curve): [merge_params("interpolate", [phi1, phi2], lam=l) for l in grid].
  """
  trees = list(trees)
  if not trees:
    raise MergeConfigError("merge_params: no trees to merge")
  if accumulate_dtype not in ACCUMULATE_DTYPES:
    raise MergeConfigError(f"accumulate_dtype={accumulate_dtype!r}: choose one of "
                           f"{sorted(ACCUMULATE_DTYPES)}")
  acc_dtype = ACCUMULATE_DTYPES[accumulate_dtype]
  labels = [f"tree {i}" for i in range(len(trees))]
  named = list(zip(labels, trees)) + ([("init", init)] if init is not None else [])
  checks.check_same_tree([(label, _signature(tree)) for label, tree in named])
  flat = [ckpt_lib.flatten_params(tree) for tree in trees]
  checks.check_head(labels[0], list(flat[0]), head)
  if check_finite:
    for label, tree in named:
      for path, leaf in ckpt_lib.flatten_params(tree).items():
        xp = jnp if isinstance(leaf, jax.Array) else np
        checks.check_finite(label, path, xp.asarray(leaf), xp=xp)

  plan = get_method(method).resolve(
      num_members=len(trees), has_init=init is not None, load_member=trees.__getitem__,
      weights=weights, lam=lam, eta=eta, base=base, score_fn=score_fn)
  leaves, treedef = jax.tree_util.tree_flatten(trees[0])
  member_leaves = [leaves] + [jax.tree_util.tree_leaves(t) for t in trees[1:]]
  init_leaves = jax.tree_util.tree_leaves(init) if init is not None else None

  merged = []
  for j, leaf in enumerate(leaves):
    xp = jnp if any(isinstance(m[j], jax.Array) for m in member_leaves) else np
    dtype = np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype))
    if not checks.is_float(dtype):
      merged.append(leaf)
      continue
    acc = np.float64 if dtype == np.float64 else acc_dtype
    cast = lambda x: xp.asarray(x).astype(acc)  # noqa: E731
    if plan.linear is not None:
      terms = [(c, m[j]) for c, m in zip(plan.linear.coefficients, member_leaves) if c > 0]
      if init_leaves is not None and plan.linear.init_coefficient > 0:
        terms.append((plan.linear.init_coefficient, init_leaves[j]))
      total = sum(cast(x) * acc(c) for c, x in terms)
    else:
      total = plan.leaf_merge.merge_leaf(
          member=lambda i, j=j: cast(member_leaves[i][j]), num_members=len(trees),
          init=cast(init_leaves[j]), xp=xp)
    merged_leaf = xp.asarray(total).astype(dtype)
    # A Python scalar leaf (e.g. a temperature) stays one, as in the streaming averager.
    merged.append(merged_leaf.item() if not hasattr(leaf, "dtype") else merged_leaf)
  return jax.tree_util.tree_unflatten(treedef, merged)
