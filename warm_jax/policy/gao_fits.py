"""Gao et al. (2023)'s functional forms of the oracle reward gain against the distance from the
initial policy, d = sqrt(KL(policy || SFT)), fitted by least squares.

Where it sits: best-of-N (`warm_jax.policy.bon`, bon.json `curves.gao_fit`) fits
R_bon(d) = d (a - b d) per selector to the oracle gain of its choice over the pool mean (the
all-subsets estimate, at KL = log N - (N - 1) / N); RL (`warm_jax.policy.rl`, the DONE file's
`gao_fit`; `warm_jax.pipeline.report_policy`) fits R_rl(d) = d (a - b log d) to the evaluated oracle
gain over the step-0 (SFT) evaluation at the evaluated KL to SFT. Both forms are linear in
(a, b), so the fit is ordinary least squares without intercept (R(0) = 0 by construction).

The peak: BoN's rises while d < a / (2b) and tops out at height a^2 / (4b); RL's derivative
a - b (log d + 1) vanishes at d* = exp(a / b - 1), height b d*. With b <= 0 the fitted curve
never turns (no peak inside any range): peak_kl and peak_gain are None.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FORMS = ("bon", "rl")


def _design(d: np.ndarray, form: str) -> np.ndarray:
  if form == "bon":
    return np.stack([d, -d * d], axis=1)
  if form == "rl":
    d_log_d = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)  # d log d -> 0 at 0
    return np.stack([d, -d_log_d], axis=1)
  raise ValueError(f"Gao fit form={form!r}: use one of {FORMS}")


def gao_fit(kl: Any, gain: Any, *, form: str) -> dict[str, Any] | None:
  """Least-squares (a, b) of R(d) = d (a - b d) (form 'bon') or d (a - b log d) ('rl'),
  d = sqrt(max(KL, 0)) (an estimated KL a hair below 0 is 0).

  Args:
    kl: [n] KL(policy || SFT) of each point (nats).
    gain: [n] oracle reward gain of each point over the initial policy.
  Returns {form, a, b, n_points, rmse, peak_kl, peak_gain} (peaks None when b <= 0), or None
  when fewer than 2 points have KL > 0 (nothing to fit).
  """
  kl, gain = np.asarray(kl, np.float64), np.asarray(gain, np.float64)
  if kl.shape != gain.shape or kl.ndim != 1:
    raise ValueError(f"Gao fit: kl {kl.shape} and gain {gain.shape} must be [n] arrays of the "
                     "same points")
  if not (np.all(np.isfinite(kl)) and np.all(np.isfinite(gain))):
    raise ValueError("Gao fit: kl and gain must be finite (a diverged run logged NaN/inf)")
  d = np.sqrt(np.maximum(kl, 0.0))
  if int(np.sum(d > 0)) < 2:
    return None
  x = _design(d, form)
  (a, b), *_ = np.linalg.lstsq(x, gain, rcond=None)
  a, b = float(a), float(b)
  rmse = float(np.sqrt(np.mean(np.square(x @ np.array([a, b]) - gain))))
  peak_kl = peak_gain = None
  if b > 0:
    if form == "bon":
      d_star = a / (2 * b)
      peak_gain = a * a / (4 * b) if d_star > 0 else 0.0
    else:
      d_star = math.exp(min(a / b - 1, 700.0))
      peak_gain = b * d_star
    d_star = max(d_star, 0.0)
    peak_kl = d_star * d_star
  return {"form": form, "a": a, "b": b, "n_points": int(len(d)), "rmse": rmse,
          "peak_kl": peak_kl, "peak_gain": peak_gain}


def rl_eval_fit(records: list[dict[str, Any]], *, oracle_key: str = "eval/oracle_reward",
                kl_key: str = "eval/kl_to_sft") -> dict[str, Any] | None:
  """The RL fit from an RL run's metrics records (`metrics_writer.read_metrics`): the gain of
  every evaluation over the step-0 one (the SFT policy), against its KL to SFT. None without a
  step-0 evaluation (a run from before it existed) or with too few points."""
  evals = [r for r in records if oracle_key in r and kl_key in r]
  base = [r for r in evals if r["step"] == 0]
  if not base:
    return None
  later = [r for r in evals if r["step"] > 0]
  if not later:
    return None
  kl = [r[kl_key] for r in later]
  gain = [r[oracle_key] - base[-1][oracle_key] for r in later]
  fit = gao_fit(kl, gain, form="rl")
  if fit is not None:
    fit["sft_oracle"] = float(base[-1][oracle_key])
  return fit
