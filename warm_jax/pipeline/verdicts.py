"""How a finding's 95% interval becomes its verdict, one rule per kind of finding.

Where it sits: under the report (`warm_jax.pipeline.report`: the reward-model findings,
`warm_jax.pipeline.report_policy`: the policy findings) and the seeds sweep (`warm_jax.seeds`, the
same
rule on the interval over seeds). The kinds:
  positive   the effect should be > 0: reproduced when the interval excludes 0 above it
  negative   the effect should be < 0: reproduced when the interval excludes 0 below it
  not_below  "on or above" / "~": reproduced when the interval lies above -MARGIN (a
             non-inferiority test: not worse by more than MARGIN), not reproduced when it
             lies below 0, inconclusive otherwise
  threshold  the value should reach `threshold`: reproduced when the interval does
"""

from __future__ import annotations

import math

MARGIN = 0.02  # the not_below findings' non-inferiority margin (2 accuracy points)


def verdict(kind: str, low: float, high: float, *, threshold: float = 0.0) -> str:
  """The verdict of a finding of this kind (see above) from its 95% interval."""
  if not (math.isfinite(low) and math.isfinite(high)):
    return "inconclusive (no interval)"
  if kind == "negative":
    kind, low, high = "positive", -high, -low
  if kind == "positive":
    return "reproduced" if low > 0 else ("opposite" if high < 0 else "inconclusive")
  if kind == "not_below":
    if high < 0:
      return "not reproduced"
    return "reproduced" if low >= -MARGIN else "inconclusive"
  if kind == "threshold":
    if low >= threshold:
      return "reproduced"
    return "not reproduced" if high < threshold else "inconclusive"
  raise ValueError(f"unknown finding kind {kind!r}")
