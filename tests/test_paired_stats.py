"""Paired statistics of the evaluations and the seeds sweep, against independent computations."""

import math

import numpy as np
import pytest

from warm_jax.core import paired_stats as ps


def test_clustered_se_matches_a_bootstrap_over_posts():
  rng = np.random.default_rng(0)
  posts = np.repeat(np.arange(300), 5)  # 5 pairs per post, correlated within a post
  post_effect = rng.normal(0, 1.5, 300)[posts]
  values = (rng.random(len(posts)) < 0.5 + 0.45 * np.tanh(post_effect)).astype(float)
  analytic = ps.clustered_mean(values, posts)
  boot = ps.bootstrap_mean(values, posts, samples=4000, seed=1)
  assert analytic["mean"] == pytest.approx(values.mean())
  assert analytic["clusters"] == 300 and analytic["n"] == 1500
  assert analytic["se"] == pytest.approx(boot["se"], rel=0.08)
  # pairs of one post are correlated: the clustered s.e. is larger than the naive one
  naive = values.std(ddof=1) / math.sqrt(len(values))
  assert analytic["se"] > 1.2 * naive


def test_clustered_se_with_singleton_clusters_is_the_usual_se():
  values = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
  out = ps.clustered_mean(values)
  assert out["se"] == pytest.approx(values.std(ddof=1) / math.sqrt(len(values)))


def test_paired_difference_interval():
  a = np.array([1, 1, 0, 1, 1, 0, 1, 1], float)
  b = np.array([1, 0, 0, 1, 0, 0, 1, 0], float)
  out = ps.paired_difference(a, b)
  d = a - b
  se = d.std(ddof=1) / math.sqrt(len(d))
  assert out["diff"] == pytest.approx(d.mean()) and out["se"] == pytest.approx(se)
  assert out["low"] == pytest.approx(d.mean() - 1.959964 * se)


def test_seed_interval_uses_students_t():
  scipy_stats = pytest.importorskip("scipy.stats")
  for dof in (1, 2, 4, 9, 29):
    assert ps.t975(dof) == pytest.approx(scipy_stats.t.ppf(0.975, dof), abs=2e-3)
  values = [0.02, 0.035, 0.01]
  out = ps.seed_interval(values)
  se = np.std(values, ddof=1) / math.sqrt(3)
  assert out["mean"] == pytest.approx(np.mean(values))
  assert out["high"] - out["mean"] == pytest.approx(scipy_stats.t.ppf(0.975, 2) * se, rel=1e-3)
  assert ps.interval_verdict(out["low"], out["high"]) == "inconclusive"  # 3 seeds, noisy
  assert ps.interval_verdict(0.01, 0.03) == "reproduced"
  assert ps.interval_verdict(-0.03, -0.01) == "opposite"
  assert ps.interval_verdict(-0.03, -0.01, direction="negative") == "reproduced"
  assert ps.seed_interval([0.5])["seeds"] == 1 and math.isnan(ps.seed_interval([0.5])["low"])
