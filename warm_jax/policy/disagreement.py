"""Member disagreement as an uncertainty signal for a reward model's choices (issue 14, part 7).

Where it sits: WARM averages M members into one RM and so gives no uncertainty of its own (the
paper's stated limit); the members it averages still disagree, and that disagreement may flag
where the RM is wrong. `warm_jax.policy.bon` calls `selection_stats` for each selector (WARM M, ENS
M,
the best member, WCO / UWO M) whose members' rewards of every pool candidate it already has,
and writes the result to bon.json under `curves.disagreement` (docs/policy.md, "Member
disagreement"). Everything here is plain numpy on host arrays.

Definitions (one rule each, documented in docs/policy.md):
  * disagreement of a candidate: the population standard deviation (ddof 0) over the M members
    of their rewards of it, each member's rewards first standardised (mean 0, sd 1) over the
    whole pool (every candidate of every prompt), so members with different reward scales
    weigh the same and prompt-level offsets are kept (`member_disagreement`);
  * regret of a choice among the first N candidates: the oracle of the best of those N minus
    the oracle of the choice (>= 0);
  * a choice is "wrong" when its oracle is strictly below the median oracle of those N
    candidates: the selection did worse than a typical random candidate of its own N. (The
    alternative, regret > 0, labels nearly every choice wrong once N >= 16 - the exact oracle
    best of N is rarely picked - and leaves AUROC with almost no negatives.) At N = 1 no
    choice is wrong (AUROC undefined: None);
  * AUROC of disagreement for flagging wrong choices: P(d_wrong > d_right) + P(tie) / 2
    (`auroc`, the Mann-Whitney statistic with mid-ranks); None when one class is empty.

RL's evaluation (`warm_jax.policy.rl`, DISAGREEMENT_MEMBERS in gin/rl.gin) reads the same signal
along training, on the responses of each eval (one per eval prompt), against fixed scales:
  * the reference (`eval_reference`) is the step-0 eval, the SFT policy's responses: each
    member's mean and sd, the RM's (proxy) and the oracle's mean and sd, and the median RM
    error of those responses. It never moves, so a value at step s is comparable with step 0;
  * disagreement of a response (`response_disagreement`): the std (ddof 0) over the members
    of their rewards standardised with the reference's per-member mean and sd;
  * RM error of a response (`rm_error`): z(proxy) - z(oracle), each standardised with the
    reference's mean and sd (positive: the RM over-rates the response relative to the oracle);
  * per eval (`eval_disagreement_stats`): the mean disagreement, Spearman (mid-ranks) of
    disagreement with the RM error, and the AUROC of disagreement for flagging the responses
    whose error is strictly above the reference's median error (about half of them at step 0;
    more as the policy learns to exploit the RM). None where undefined (a constant series, an
    empty class).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _vector(name: str, x: Any) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 1:
    raise ValueError(f"{name} must be 1-d, got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} has non-finite values (NaN/inf): drop or fix those rows first")
  return x


def average_ranks(x: Any) -> np.ndarray:
  """1-based ranks of x, ties given the mean of the ranks they span (mid-ranks)."""
  x = _vector("x", x)
  order = np.argsort(x, kind="mergesort")
  sorted_x = x[order]
  # Group boundaries of equal values; every member of a group gets the group's mean rank.
  starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
  ends = np.r_[starts[1:], len(x)]
  ranks = np.empty(len(x), np.float64)
  for s, e in zip(starts, ends):
    ranks[order[s:e]] = (s + 1 + e) / 2.0
  return ranks


def pearson(x: Any, y: Any) -> float | None:
  """Pearson correlation; None when either side is constant (undefined) or n < 2."""
  x, y = _vector("x", x), _vector("y", y)
  if len(x) != len(y):
    raise ValueError(f"x and y differ in length ({len(x)} vs {len(y)})")
  if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return None
  xc, yc = x - x.mean(), y - y.mean()
  return float(np.clip(xc @ yc / np.sqrt((xc @ xc) * (yc @ yc)), -1.0, 1.0))


def spearman(x: Any, y: Any) -> float | None:
  """Spearman correlation: Pearson of the mid-ranks; None where Pearson is undefined."""
  return pearson(average_ranks(x), average_ranks(y))


def auroc(scores: Any, labels: Any) -> float | None:
  """Area under the ROC curve of `scores` for flagging `labels` (True = positive), ties
  counted one half: (rank sum of the positives - n_pos (n_pos + 1) / 2) / (n_pos n_neg) with
  mid-ranks. None when there are no positives or no negatives."""
  scores = _vector("scores", scores)
  labels = np.asarray(labels)
  if labels.shape != scores.shape:
    raise ValueError(f"labels shape {labels.shape} != scores shape {scores.shape}")
  if labels.dtype != bool and not np.isin(labels, (0, 1)).all():
    raise ValueError("labels must be booleans or 0/1")
  labels = labels.astype(bool)
  n_pos, n_neg = int(labels.sum()), int((~labels).sum())
  if n_pos == 0 or n_neg == 0:
    return None
  ranks = average_ranks(scores)
  return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def member_disagreement(member_rewards: Any, names: list[str] | None = None) -> np.ndarray:
  """[M, prompts, pool] members' rewards -> [prompts, pool] disagreement: the std (ddof 0)
  over members of each member's rewards standardised over the whole pool. Refuses fewer than
  2 members and a member with one reward for every candidate (nothing to standardise)."""
  r = np.asarray(member_rewards, np.float64)
  names = names or [f"member {i}" for i in range(len(r))]
  if r.ndim != 3 or r.shape[0] < 2:
    raise ValueError(f"member rewards must be [M >= 2, prompts, pool], got shape {r.shape}: "
                     "disagreement needs at least two members")
  if not np.all(np.isfinite(r)):
    raise ValueError("member rewards have non-finite values (NaN/inf)")
  mean = r.mean(axis=(1, 2), keepdims=True)
  sd = r.std(axis=(1, 2), keepdims=True)
  flat = [names[i] for i in np.flatnonzero(sd.ravel() == 0)]
  if flat:
    raise ValueError(f"{flat} give one reward to every candidate: their rewards cannot be "
                     "standardised; leave them out of the disagreement members")
  return ((r - mean) / sd).std(axis=0)


def choice_errors(oracle: Any, choice: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
  """Regret [prompts] (oracle of the best of the first n candidates minus the oracle of the
  choice) and wrong [prompts] (choice strictly below the median oracle of those n)."""
  oracle = np.asarray(oracle, np.float64)
  choice = np.asarray(choice)
  if oracle.ndim != 2 or not 1 <= n <= oracle.shape[1]:
    raise ValueError(f"oracle must be [prompts, pool] with 1 <= n <= pool; got shape "
                     f"{oracle.shape} and n={n}")
  if choice.shape != (oracle.shape[0],) or choice.min() < 0 or choice.max() >= n:
    raise ValueError(f"choice must be [prompts] indices in 0..{n - 1}, one per prompt")
  first = oracle[:, :n]
  chosen = np.take_along_axis(first, choice[:, None], axis=1)[:, 0]
  return first.max(axis=1) - chosen, chosen < np.median(first, axis=1)


def selection_stats(disagreement: np.ndarray, oracle: np.ndarray, choice: np.ndarray,
                    n: int) -> dict[str, Any]:
  """The disagreement of each prompt's choice among the first n candidates against its error:
  means, Pearson / Spearman of disagreement with regret, AUROC for the wrong choices (None
  where undefined, e.g. at n = 1 every regret is 0 and no choice is wrong)."""
  d = np.take_along_axis(np.asarray(disagreement, np.float64), np.asarray(choice)[:, None],
                         axis=1)[:, 0]
  regret, wrong = choice_errors(oracle, choice, n)
  return {"mean_disagreement": float(d.mean()), "mean_regret": float(regret.mean()),
          "wrong_rate": float(wrong.mean()), "pearson": pearson(d, regret),
          "spearman": spearman(d, regret), "auroc": auroc(d, wrong)}


# -- RL evaluation: disagreement along training, against the step-0 (SFT) scales -----------------
def _members(name: str, x: Any) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"{name} must be [M >= 2, responses], got shape {x.shape}: disagreement "
                     "needs at least two members")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} has non-finite values (NaN/inf)")
  return x


def eval_reference(member_rewards: Any, proxy: Any, oracle: Any,
                   names: list[str] | None = None) -> dict[str, Any]:
  """The scales RL's eval disagreement is read against, from the step-0 (SFT) eval responses:
  member_rewards [M, n], proxy [n] (the RM's raw reward), oracle [n] -> {member_mean [M],
  member_sd [M], proxy_mean, proxy_sd, oracle_mean, oracle_sd, median_error, num_responses}
  (plain floats and lists: JSON-ready). Refuses a constant series (nothing to standardise)."""
  r = _members("member rewards", member_rewards)
  proxy, oracle = _vector("proxy", proxy), _vector("oracle", oracle)
  if not len(proxy) == len(oracle) == r.shape[1] or len(proxy) < 2:
    raise ValueError(f"member rewards {r.shape}, proxy ({len(proxy)}) and oracle "
                     f"({len(oracle)}) must cover the same >= 2 responses")
  names = names or [f"member {i}" for i in range(len(r))]
  sd = r.std(axis=1)
  flat = [names[i] for i in np.flatnonzero(sd == 0)]
  flat += [name for name, x in (("the RM (proxy)", proxy), ("the oracle", oracle))
           if np.std(x) == 0]
  if flat:
    raise ValueError(f"{flat} give one reward to every step-0 eval response: their rewards "
                     "cannot be standardised")
  ref = {"member_mean": r.mean(axis=1).tolist(), "member_sd": sd.tolist(),
         "proxy_mean": float(proxy.mean()), "proxy_sd": float(proxy.std()),
         "oracle_mean": float(oracle.mean()), "oracle_sd": float(oracle.std()),
         "num_responses": int(len(proxy))}
  ref["median_error"] = float(np.median(rm_error(proxy, oracle, ref)))
  return ref


def response_disagreement(member_rewards: Any, reference: dict[str, Any]) -> np.ndarray:
  """[M, n] members' rewards -> [n]: the std (ddof 0) over the members of their rewards, each
  standardised with its step-0 mean and sd (`eval_reference`)."""
  r = _members("member rewards", member_rewards)
  mean = np.asarray(reference["member_mean"], np.float64)[:, None]
  sd = np.asarray(reference["member_sd"], np.float64)[:, None]
  if mean.shape[0] != r.shape[0]:
    raise ValueError(f"{r.shape[0]} members' rewards against a reference of {mean.shape[0]}")
  return ((r - mean) / sd).std(axis=0)


def rm_error(proxy: Any, oracle: Any, reference: dict[str, Any]) -> np.ndarray:
  """[n] RM error z(proxy) - z(oracle), both standardised with the step-0 means and sds
  (`eval_reference`): positive where the RM over-rates a response relative to the oracle."""
  proxy, oracle = _vector("proxy", proxy), _vector("oracle", oracle)
  return ((proxy - reference["proxy_mean"]) / reference["proxy_sd"] -
          (oracle - reference["oracle_mean"]) / reference["oracle_sd"])


def eval_disagreement_stats(member_rewards: Any, proxy: Any, oracle: Any,
                            reference: dict[str, Any]) -> dict[str, float | None]:
  """One RL eval's {disagreement: mean over responses of `response_disagreement`, spearman:
  Spearman of it with `rm_error`, auroc: AUROC of it for flagging an error strictly above the
  reference's median error}; spearman / auroc None where undefined."""
  d = response_disagreement(member_rewards, reference)
  err = rm_error(proxy, oracle, reference)
  if len(err) != len(d):
    raise ValueError(f"{len(d)} members' rewards against {len(err)} proxy / oracle rewards")
  return {"disagreement": float(d.mean()), "spearman": spearman(d, err),
          "auroc": auroc(d, err > reference["median_error"])}
