"""Statistics that can see the paper's effects: paired differences on the same pairs, standard
errors that respect posts, and intervals across seeds.

Where it sits: the RM evaluation (`warm_jax.rm.evaluation`) compares models on the *same* pairs
(WA vs ENS, WA vs a member, an LMC curve vs its straight line), so the per-pair differences
are what carries the signal: their standard error is far smaller than that of two accuracies
measured apart. Pairs about one post are not independent (they share its summaries), so the
standard error treats each post as one cluster (`clustered_mean`), which a bootstrap over
posts (`bootstrap_mean`) reproduces. Across seeds (`warm_jax.seeds`) a finding's per-seed
effects give a mean and a Student-t 95% interval (`seed_interval`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (then the normal's)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z975 = 1.959964


def t975(dof: int) -> float:
  """The 97.5% quantile of Student's t with `dof` degrees of freedom (a 95% two-sided
  interval is mean +- t975 * se)."""
  if dof < 1:
    return float("nan")
  return _T975[dof - 1] if dof <= len(_T975) else Z975


def clustered_mean(values: np.ndarray, groups: np.ndarray | None = None) -> dict[str, float]:
  """Mean of per-pair `values` [n] and its standard error with each group (post) one cluster.

  se^2 = G / (G - 1) * sum_g (sum_{i in g} (v_i - mean))^2 / n^2 (the cluster-robust variance
  of a mean; with one pair per group it is the usual s^2 / n up to the n / (n - 1) factor).
  groups: [n] cluster ids (None: every pair its own cluster).
  Returns {mean, se, n, clusters}.
  """
  values = np.asarray(values, np.float64)
  n = len(values)
  if n == 0:
    return {"mean": float("nan"), "se": float("nan"), "n": 0, "clusters": 0}
  groups = np.arange(n) if groups is None else np.asarray(groups)
  if groups.shape != values.shape:
    raise ValueError(f"groups of shape {groups.shape} for values of shape {values.shape}")
  mean = float(values.mean())
  _, inverse = np.unique(groups, return_inverse=True)
  sums = np.bincount(inverse, weights=values - mean)
  g = len(sums)
  se = float(math.sqrt(g / (g - 1) * float(np.sum(sums ** 2))) / n) if g > 1 else float("nan")
  return {"mean": mean, "se": se, "n": n, "clusters": g}


def bootstrap_mean(values: np.ndarray, groups: np.ndarray, *, samples: int = 2000,
                   seed: int = 0) -> dict[str, float]:
  """Mean of `values` and the standard deviation of its bootstrap distribution when whole
  groups (posts) are resampled with replacement; the check on `clustered_mean`."""
  values, groups = np.asarray(values, np.float64), np.asarray(groups)
  ids, inverse = np.unique(groups, return_inverse=True)
  sums = np.bincount(inverse, weights=values)
  counts = np.bincount(inverse).astype(np.float64)
  rng = np.random.default_rng(seed)
  draws = rng.integers(len(ids), size=(samples, len(ids)))
  means = sums[draws].sum(1) / counts[draws].sum(1)
  return {"mean": float(values.mean()), "se": float(means.std(ddof=1)), "n": len(values),
          "clusters": len(ids)}


def paired_difference(a: np.ndarray, b: np.ndarray, groups: np.ndarray | None = None
                      ) -> dict[str, float]:
  """mean(a - b) over the same pairs with its clustered standard error and a 95% interval
  (normal: thousands of pairs): {diff, se, low, high, n, clusters}."""
  stats = clustered_mean(np.asarray(a, np.float64) - np.asarray(b, np.float64), groups)
  return {"diff": stats["mean"], "se": stats["se"],
          "low": stats["mean"] - Z975 * stats["se"], "high": stats["mean"] + Z975 * stats["se"],
          "n": stats["n"], "clusters": stats["clusters"]}


def seed_interval(effects: Sequence[float]) -> dict[str, Any]:
  """Mean of per-seed effects and its Student-t 95% interval: {mean, sd, se, low, high,
  seeds, values}. One seed gives no interval (low/high NaN)."""
  values = [float(v) for v in effects if v is not None and math.isfinite(float(v))]
  k = len(values)
  if k == 0:
    return {"mean": float("nan"), "sd": float("nan"), "se": float("nan"),
            "low": float("nan"), "high": float("nan"), "seeds": 0, "values": []}
  mean = float(np.mean(values))
  sd = float(np.std(values, ddof=1)) if k > 1 else float("nan")
  se = sd / math.sqrt(k) if k > 1 else float("nan")
  half = t975(k - 1) * se if k > 1 else float("nan")
  return {"mean": mean, "sd": sd, "se": se, "low": mean - half, "high": mean + half,
          "seeds": k, "values": values}


def interval_verdict(low: float, high: float, *, direction: str = "positive") -> str:
  """'reproduced' when a 95% interval excludes zero in the paper's direction, 'opposite'
  when it excludes zero the other way, else 'inconclusive'. direction: 'positive' (the
  effect should be > 0) or 'negative'."""
  if not (math.isfinite(low) and math.isfinite(high)):
    return "inconclusive (no interval)"
  if direction == "negative":
    low, high = -high, -low
  if low > 0:
    return "reproduced"
  if high < 0:
    return "opposite"
  return "inconclusive"
