"""Oracle win rates between two policies (or two selection strategies) on the same prompts.

Where it sits: best-of-N compares its selectors (WARM M vs ENS M vs one member vs a random SFT
sample, docs/paper.md fig. 7) and RL compares policies (WARM M=6 at its best step vs the best
single-RM policy, the paper's 79.4%, fig. 9). Both reduce to: for each prompt, A's response and
B's response were scored by the oracle; A wins (1), ties (1/2: ties are split, as the paper's
labeller does across orderings) or loses (0); the win rate is the mean.

Confidence intervals: a percentile bootstrap over prompts (default; resampling whole prompts
when several samples share one, via `groups`) or the Wilson score interval with ties counted as
half a success. A strategy against itself has win rate exactly 0.5 (every prompt ties).

`policy_win_rates` is the stage (gin/win_rates.gin) that compares saved policies, e.g. RL
checkpoints at their best steps (`best_checkpoint`), and writes win_rates.json. The experiment
also gives every RL run at its final step (`<run>_final`): the win rate of a run's best step
over its final step on these prompts, which played no part in picking the best step, measures
how far the policy fell after its peak (reward hacking) without the selection bias of the peak
itself.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
from collections.abc import Mapping
from typing import Any

import numpy as np

CI_METHODS = ("bootstrap", "wilson")
# The name of an RL run's policy at its final step beside the run's name at its best step
# (the experiment compares both on held-out prompts: the fall after the peak, unbiased).
FINAL_SUFFIX = "_final"
# Scores closer than this are a tie (the gold reward is a sum of a few decimal terms).
DEFAULT_TIE_TOLERANCE = 1e-6


@dataclasses.dataclass(frozen=True)
class WinRate:
  """P(A beats B) with ties split, and its confidence interval [low, high]."""

  rate: float
  low: float
  high: float
  n: int
  wins: int
  ties: int
  losses: int
  confidence: float
  method: str

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def outcomes(scores_a: np.ndarray, scores_b: np.ndarray, *,
             tie_tolerance: float = DEFAULT_TIE_TOLERANCE) -> np.ndarray:
  """[n] float: 1 where A's score beats B's, 0.5 on a tie, 0 where it loses."""
  a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"scores_a {a.shape} and scores_b {b.shape} must be [n] arrays of the same "
                     "prompts in the same order")
  diff = a - b
  return np.where(np.abs(diff) <= tie_tolerance, 0.5, (diff > 0).astype(np.float64))


def wilson_interval(successes: float, n: int, confidence: float) -> tuple[float, float]:
  """Wilson score interval of a binomial proportion (successes may be fractional)."""
  if n == 0:
    return 0.0, 1.0
  z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
  p = successes / n
  denom = 1 + z * z / n
  center = (p + z * z / (2 * n)) / denom
  half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return float(max(0.0, center - half)), float(min(1.0, center + half))


def bootstrap_interval(values: np.ndarray, *, confidence: float, n_bootstrap: int, seed: int,
                       groups: np.ndarray | None = None) -> tuple[float, float]:
  """Percentile bootstrap interval of mean(values), resampling rows (or whole groups)."""
  values = np.asarray(values, np.float64)
  rng = np.random.default_rng(seed)
  if groups is None:
    idx = rng.integers(0, len(values), (n_bootstrap, len(values)))
    means = values[idx].mean(axis=1)
  else:
    labels, inverse = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(labels))
    counts = np.bincount(inverse, minlength=len(labels)).astype(np.float64)
    idx = rng.integers(0, len(labels), (n_bootstrap, len(labels)))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
  alpha = (1 - confidence) / 2
  low, high = np.quantile(means, [alpha, 1 - alpha])
  return float(low), float(high)


def win_rate(scores_a: np.ndarray, scores_b: np.ndarray, *, confidence: float = 0.95,
             method: str = "bootstrap", n_bootstrap: int = 2000, seed: int = 0,
             groups: np.ndarray | None = None,
             tie_tolerance: float = DEFAULT_TIE_TOLERANCE) -> WinRate:
  """Oracle win rate of A over B on paired rows (row i: the same prompt for both).

  Args:
    scores_a, scores_b: [n] oracle scores of A's and B's responses.
    confidence: coverage of the interval.
    method: "bootstrap" (percentile, over rows or `groups`) or "wilson" (ties = half wins).
    groups: optional [n] prompt ids, so the bootstrap resamples prompts, not samples.
  """
  if method not in CI_METHODS:
    raise ValueError(f"win_rate method={method!r}: use one of {CI_METHODS}")
  if not 0 < confidence < 1:
    raise ValueError(f"win_rate confidence={confidence}: must be in (0, 1)")
  out = outcomes(scores_a, scores_b, tie_tolerance=tie_tolerance)
  n = len(out)
  if n == 0:
    raise ValueError("win_rate got no rows: sample at least one prompt")
  rate = float(out.mean())
  if method == "wilson":
    low, high = wilson_interval(float(out.sum()), n, confidence)
  else:
    low, high = bootstrap_interval(out, confidence=confidence, n_bootstrap=n_bootstrap,
                                   seed=seed, groups=groups)
  return WinRate(rate=rate, low=low, high=high, n=n, wins=int(np.sum(out == 1.0)),
                 ties=int(np.sum(out == 0.5)), losses=int(np.sum(out == 0.0)),
                 confidence=confidence, method=method)


def pairwise_win_rates(scores: Mapping[str, np.ndarray], **kwargs) -> dict[str, dict[str, Any]]:
  """{'A_vs_B': WinRate json} for every ordered pair of named [n] score arrays."""
  names = list(scores)
  return {f"{a}_vs_{b}": win_rate(scores[a], scores[b], **kwargs).to_json()
          for a in names for b in names if a != b}


def compare_policies(*, sampler: Any, policies: Mapping[str, Any], prompt_tokens: np.ndarray,
                     prompt_mask: np.ndarray, prompt_index: np.ndarray, oracle: Any, seed: int,
                     samples_per_prompt: int = 1, **win_rate_kwargs) -> dict[str, Any]:
  """Samples every policy on the same prompts and judges them with the oracle.

  Args:
    sampler: a `warm_jax.policy.sampling.Sampler` for the policies' architecture.
    policies: {name: params} (host or placed).
    prompt_tokens, prompt_mask, prompt_index: the prompts ([n, P] left-padded, [n]).
    oracle: a `warm_jax.policy.oracle` judge (a response cut at max_new_tokens is judged by the rule
      of best-of-N and RL: the gold oracle reads its text, a control RM reads it closed with
      EOS, `sampling.close_unfinished`).
    samples_per_prompt: responses per prompt and policy (the bootstrap resamples prompts).
  Returns {'mean_oracle': {name: float}, 'mean_length': {...}, 'win_rates': {'A_vs_B': ...}}.
  Each policy uses the same seed and row ids, so two identical policies tie on every prompt.
  """
  k = samples_per_prompt
  rows = np.repeat(np.arange(len(prompt_tokens)), k)
  tokens, mask, index = prompt_tokens[rows], prompt_mask[rows], np.asarray(prompt_index)[rows]
  scores, lengths = {}, {}
  for name, params in policies.items():
    samples = sampler.sample(sampler.place(params), tokens, mask, seed=seed)
    scores[name] = oracle.score(prompt_index=index, prompt_tokens=tokens, prompt_mask=mask,
                                response_tokens=samples.tokens, response_mask=samples.mask)
    lengths[name] = float(samples.lengths.mean())
  return {"mean_oracle": {n: float(s.mean()) for n, s in scores.items()},
          "mean_length": lengths,
          "win_rates": pairwise_win_rates(scores, groups=rows, **win_rate_kwargs),
          "num_prompts": int(len(prompt_tokens)), "samples_per_prompt": k}


def best_checkpoint(model_dir: str, *, metric: str = "eval/oracle_reward") -> str:
  """The saved policy checkpoint (MODEL_DIR/checkpoints/<step>) whose step logged the highest
  `metric` (the paper compares policies "at their best step"). Only steps that have both a
  checkpoint and the metric count."""
  from warm_jax.core import checkpoints as ckpt_lib
  from warm_jax.core.metrics_writer import read_metrics
  directory = os.path.join(model_dir, ckpt_lib.CHECKPOINTS_SUBDIR)
  saved = {int(d) for d in os.listdir(directory) if d.isdigit()} if os.path.isdir(
      directory) else set()
  logged = {r["step"]: r[metric] for r in read_metrics(model_dir)
            if metric in r and isinstance(r[metric], (int, float))}
  candidates = sorted(saved & set(logged))
  if not candidates:
    raise ValueError(f"{model_dir} has no checkpoint at a step that logged {metric} (saved: "
                     f"{sorted(saved)}): set EVAL_EVERY to a multiple of SAVE_EVERY")
  best = max(candidates, key=lambda step: (logged[step], -step))
  return os.path.join(directory, str(best))


def policy_win_rates(*, output_dir: str | None, data_dir: str | None,
                     policies: Mapping[str, str], model_config: Any, sampling: Any,
                     split: str = "validation", num_prompts: int | None = None,
                     prompt_offset: int = 0, samples_per_prompt: int = 1, seed: int = 0, batch_size: int = 64,
                     prompt_len: int | None = None, vocab_size: int | None = None,
                     confidence: float = 0.95, partitioner: Any = None) -> dict[str, Any]:
  """Oracle win rates between saved policies on one prompt split; writes
  OUTPUT_DIR/win_rates.json.

  Args:
    policies: {name: checkpoint path} (an RL model dir -> its latest step; a step dir; an SFT
      dir), e.g. {'warm_6': '/rl/warm_6/checkpoints/3500', 'best_single': ..., 'sft': ...}.
    sampling: a `SamplingConfig` (paper: temperature 0.9).
    prompt_offset: skip this many prompts of the split first: the RL runs pick their best step
      on the first NUM_EVAL_PROMPTS validation prompts, so the win rates use the ones after.
  """
  from warm_jax.core import checkpoints as ckpt_lib
  from warm_jax.data.datasets import load_arrays
  from warm_jax.policy.oracle import GoldOracle
  from warm_jax.core.partitioning import Partitioner
  from warm_jax.policy.sampling import Sampler, check_positions, trained_positions
  if not output_dir or not data_dir:
    raise ValueError("OUTPUT_DIR and DATA_DIR must be set: pass --gin.OUTPUT_DIR=\"'/path'\" "
                     "and --gin.DATA_DIR=\"'/path'\"")
  if len(policies) < 2:
    raise ValueError(f"POLICIES={dict(policies)}: give at least two {{name: checkpoint}}")
  prompts = load_arrays(data_dir, kind="prompts", split=split, length=prompt_len,
                        vocab_size=vocab_size)
  total = len(prompts["prompt_tokens"])
  n = total - prompt_offset if num_prompts is None else int(num_prompts)
  if prompt_offset < 0 or n <= 0 or prompt_offset + n > total:
    raise ValueError(f"PROMPT_OFFSET={prompt_offset}, NUM_PROMPTS={num_prompts}: prompts.{split} "
                     f"of {data_dir} has {total} prompts; pick an offset and count within it")
  prompts = {k: v[prompt_offset:prompt_offset + n] for k, v in prompts.items()}
  limit, limit_source = trained_positions(model_config, data_dir=data_dir)
  check_positions(prompts["prompt_mask"], max_new_tokens=sampling.max_new_tokens, limit=limit,
                  source=limit_source, program="win rates")
  sampler = Sampler(model_config=model_config, partitioner=partitioner or Partitioner(),
                    config=sampling, batch_size=batch_size, max_positions=limit)
  result = compare_policies(
      sampler=sampler, policies={name: ckpt_lib.load_params(path)
                                 for name, path in policies.items()},
      prompt_tokens=prompts["prompt_tokens"], prompt_mask=prompts["prompt_mask"],
      prompt_index=prompts["prompt_index"], oracle=GoldOracle(data_dir=data_dir, split=split),
      seed=seed, samples_per_prompt=samples_per_prompt, confidence=confidence)
  result.update(policies=dict(policies), split=split)
  os.makedirs(output_dir, exist_ok=True)
  ckpt_lib.atomic_write_text(os.path.join(output_dir, "win_rates.json"),
                             json.dumps(result, indent=1) + "\n")
  for key, value in result["win_rates"].items():
    logging.info("win rate %s: %.3f [%.3f, %.3f]", key, value["rate"], value["low"],
                 value["high"])
  return result
