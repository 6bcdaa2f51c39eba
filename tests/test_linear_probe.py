"""The linear probe's Bradley-Terry head fit, against scipy's optimiser on the same objective."""

import numpy as np
import pytest
from scipy import optimize

from warm_jax.rm.linear_probe import fit_bradley_terry_head


def test_newton_fit_matches_scipy_and_recovers_the_direction():
  rng = np.random.default_rng(0)
  d, n = 6, 400
  true_w = rng.normal(size=d)
  chosen, rejected = rng.normal(size=(n, d)), rng.normal(size=(n, d))
  # Labels from the Bradley-Terry model itself: swap where the coin says so.
  p = 1 / (1 + np.exp(-(chosen - rejected) @ true_w))
  swap = rng.random(n) > p
  chosen[swap], rejected[swap] = rejected[swap].copy(), chosen[swap].copy()
  l2 = 1e-2
  fit = fit_bradley_terry_head(chosen, rejected, l2=l2)
  diff = chosen - rejected

  def objective(w):
    return np.mean(np.logaddexp(0, -diff @ w)) + 0.5 * l2 * w @ w

  ref = optimize.minimize(objective, np.zeros(d), method="BFGS", options={"gtol": 1e-10}).x
  np.testing.assert_allclose(fit.kernel, ref, rtol=1e-4, atol=1e-6)
  assert fit.train_loss == pytest.approx(objective(ref), rel=1e-8)
  cosine = fit.kernel @ true_w / np.linalg.norm(fit.kernel) / np.linalg.norm(true_w)
  assert cosine > 0.9
  assert fit.train_accuracy == pytest.approx(np.mean(diff @ fit.kernel >= 0))


def test_separable_data_stays_finite_thanks_to_l2():
  chosen = np.array([[1.0, 0.0], [2.0, 0.0]])
  rejected = np.zeros((2, 2))
  fit = fit_bradley_terry_head(chosen, rejected, l2=1e-3)
  assert np.all(np.isfinite(fit.kernel)) and fit.train_accuracy == 1.0


def test_no_pairs_is_an_error():
  with pytest.raises(ValueError, match="no preference pairs"):
    fit_bradley_terry_head(np.zeros((0, 3)), np.zeros((0, 3)))
