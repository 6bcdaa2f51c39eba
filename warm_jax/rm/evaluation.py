"""The paper's reward-model evaluations: accuracy per subset for members, WARM and ENS, LMC
curves, accuracy vs M by selection order, and Acc(WA) - Acc(ENS) over member pairs.

Where it sits: after the members are trained (and averaged). `evaluate_reward_models` (the
stage: reads the members, writes OUTPUT_DIR/eval.json and plots) is what
`python -m warm_jax.evaluate` (the command line, warm_jax/evaluate.py: its docstring lists the
outputs) runs; figures come from `warm_jax.core.plots`.

Subsets (docs/paper.md figs 4-5), from a built data dir's preference splits:
  train_clean    rm_train pairs whose label was not corrupted; accuracy vs the training label
  train_corrupt  rm_train pairs whose label was swapped; accuracy vs the (swapped) training
                 label = how much of the corruption the model memorised (lower is better)
  id_val         held-out posts, ID generator mix; accuracy vs the gold sign
  ood            held-out posts, OOD mix (length no longer predictive); accuracy vs gold
  id_policy      on-policy RM data dirs (`warm_jax.policy.on_policy`): held-out ID posts, pairs
                 of the final SFT policy's samples at the best-of-N / RL temperature; vs gold
  ood_policy     OOD posts, pairs of several policies' high-temperature samples (on-policy RM
                 data dirs, or a `python -m warm_jax.data.policy_pairs` dir); vs gold
Pairwise accuracy counts ties as correct (r+ >= r-), as in the paper. Beside it: the
Bradley-Terry loss -log sigmoid(r_preferred - r_other) and the mean signed margin.

Paired statistics (`warm_jax.core.paired_stats`): every comparison of two models (WA vs ENS, WA vs
the best or the mean member, ENS vs the best member) and every LMC bump (curve vs its straight
line) is a mean of per-pair differences on the same pairs, with a standard error that counts
each post as one cluster (pairs of one post share its summaries) and a 95% interval.

Models: a member is a params tree; WARM M = the uniform weight average of the M members ranked
best first by ID-val accuracy (the paper ranks on OOD, which leaks the test distribution into
the selection; we rank on ID val and say so); ENS M = the mean of the same M members' rewards.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from warm_jax.core import checkpoints as ckpt_lib
from warm_jax.core import paired_stats, run_dir
from warm_jax.models import TransformerConfig
from warm_jax.core.partitioning import Partitioner
from warm_jax.rm.scoring import RewardScorer

SUBSETS = ("train_clean", "train_corrupt", "id_val", "ood")
ID_POLICY_SUBSET = "id_policy"  # present in on-policy RM data dirs
POLICY_SUBSET = "ood_policy"  # on-policy RM data dirs, or when given a policy-pairs dir
SUBSET_ORDER = ("train_clean", "train_corrupt", "id_val", ID_POLICY_SUBSET, "ood", POLICY_SUBSET)
RANKING_SUBSET = "id_val"
LAMBDAS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


@dataclasses.dataclass
class PairSet:
  """Tokenised pairs of one subset and which side the accuracy counts as correct.

  `target[i] = 0` when the chosen side should score higher, 1 when the rejected side should.
  """

  name: str
  arrays: dict[str, np.ndarray]
  target: np.ndarray
  groups: np.ndarray | None = None  # [n] the post of each pair (its cluster); None: unknown

  def __len__(self) -> int:
    return len(self.target)

  def subset(self, rows: np.ndarray) -> "PairSet":
    return PairSet(self.name, {k: v[rows] for k, v in self.arrays.items()}, self.target[rows],
                   None if self.groups is None else self.groups[rows])


def subsets_from_splits(*, rm_train: dict[str, np.ndarray], id_val: dict[str, np.ndarray],
                        ood: dict[str, np.ndarray],
                        id_policy: dict[str, np.ndarray] | None = None,
                        ood_policy: dict[str, np.ndarray] | None = None,
                        groups: dict[str, np.ndarray] | None = None,
                        max_pairs: int | None = None, seed: int = 0) -> dict[str, PairSet]:
  """The evaluation subsets from preference arrays (with metadata) of the splits, plus
  `id_policy` / `ood_policy` (accuracy vs gold) when their pairs are given.

  groups: {split: [n] post id of each pair} (the clusters of the paired standard errors).
  max_pairs: keep at most this many pairs per subset, a seeded uniform sample (in data order);
    every evaluation costs one pass over all subsets, so this bounds an LMC point's cost.
  """
  token_keys = ("chosen_tokens", "chosen_mask", "rejected_tokens", "rejected_mask",
                "chosen_response_mask", "rejected_response_mask")
  groups = groups or {}

  def take(arrays, rows):  # response masks only where the data dir has them
    return {k: arrays[k][rows] for k in token_keys if k in arrays}

  def group(split, rows):
    return None if split not in groups else np.asarray(groups[split])[rows]

  corrupted = rm_train["corrupted"].astype(bool)
  sets = {
      "train_clean": PairSet("train_clean", take(rm_train, ~corrupted),
                             np.zeros(int((~corrupted).sum()), np.int32),
                             group("rm_train", ~corrupted)),
      "train_corrupt": PairSet("train_corrupt", take(rm_train, corrupted),
                               np.zeros(int(corrupted.sum()), np.int32),
                               group("rm_train", corrupted)),
  }
  for name, arrays in (("id_val", id_val), (ID_POLICY_SUBSET, id_policy), ("ood", ood),
                       (POLICY_SUBSET, ood_policy)):
    if arrays is not None:
      sets[name] = PairSet(name, take(arrays, slice(None)), arrays["gold_label"].astype(np.int32),
                           group(name, slice(None)))
  if max_pairs is not None:
    if max_pairs <= 0:
      raise ValueError(f"max_pairs={max_pairs}: must be positive (None: every pair)")
    rng = np.random.default_rng(seed)
    for name, pairs in sets.items():
      if len(pairs) > max_pairs:
        sets[name] = pairs.subset(np.sort(rng.choice(len(pairs), max_pairs, replace=False)))
  return {k: v for k, v in sets.items() if len(v)}


def pair_accuracy(r_chosen: np.ndarray, r_rejected: np.ndarray, target: np.ndarray) -> float:
  """Mean of 1{r_preferred >= r_other}, the preferred side given by `target` (ties correct)."""
  if len(target) == 0:
    return float("nan")
  margin = np.where(target == 0, r_chosen - r_rejected, r_rejected - r_chosen)
  return float(np.mean(margin >= 0))


Rewards = dict[str, tuple[np.ndarray, np.ndarray]]  # subset -> (r_chosen, r_rejected)


def score_subsets(scorer: RewardScorer, params: Any, subsets: dict[str, PairSet]) -> Rewards:
  """Rewards of both sides of every pair of every subset, in ONE pass over the concatenated
  sequences (so an LMC point or a vs-M point costs ceil(2 * total pairs / batch) calls)."""
  placed = scorer.place(params)

  def stacked(feature):
    parts = [s.arrays.get(f"{side}_{feature}") for s in subsets.values()
             for side in ("chosen", "rejected")]
    return None if any(p is None for p in parts) else np.concatenate(parts)

  rewards = scorer.rewards(placed, stacked("tokens"), stacked("mask"), stacked("response_mask"))
  out, start = {}, 0
  for name, s in subsets.items():
    n = len(s)
    out[name] = (rewards[start:start + n], rewards[start + n:start + 2 * n])
    start += 2 * n
  return out


def accuracies(rewards: Rewards, subsets: dict[str, PairSet]) -> dict[str, float]:
  return {name: pair_accuracy(*rewards[name], subsets[name].target) for name in rewards}


def signed_margins(rewards: Rewards, subsets: dict[str, PairSet]) -> dict[str, np.ndarray]:
  """Per subset, [n] r_preferred - r_other (the side `target` names is preferred): >= 0 is a
  correct pair."""
  return {name: np.where(subsets[name].target == 0, rc - rr, rr - rc)
          for name, (rc, rr) in rewards.items()}


def loss_and_margin(rewards: Rewards, subsets: dict[str, PairSet]
                    ) -> tuple[dict[str, float], dict[str, float]]:
  """Per subset, the mean Bradley-Terry loss -log sigmoid(margin) and the mean signed margin
  (`signed_margins`) against the subset's target side."""
  margins = signed_margins(rewards, subsets)
  return ({s: float(np.mean(np.logaddexp(0.0, -m))) for s, m in margins.items()},
          {s: float(np.mean(m)) for s, m in margins.items()})


def correct_pairs(rewards: Rewards, subsets: dict[str, PairSet]) -> dict[str, np.ndarray]:
  """Per subset, [n] float 1.0 where the model ranks the pair right (ties count as right)."""
  return {s: (m >= 0).astype(np.float64) for s, m in signed_margins(rewards, subsets).items()}


def ensemble_rewards(members: Sequence[Rewards], weights: Sequence[float] | None = None
                     ) -> Rewards:
  """ENS: the (weighted) mean of the members' rewards, subset by subset."""
  w = np.full(len(members), 1.0 / len(members)) if weights is None else np.asarray(weights)
  w = w / w.sum()
  return {name: (sum(wi * m[name][0] for wi, m in zip(w, members)),
                 sum(wi * m[name][1] for wi, m in zip(w, members)))
          for name in members[0]}


def weight_average(trees: Sequence[Any], weights: Sequence[float] | None = None) -> Any:
  """In-memory weighted average of params trees (float32 accumulation)."""
  from warm_jax.merging import merge_params
  if weights is None:
    return merge_params("uniform", trees)
  return merge_params("weighted", trees, weights=list(weights))


def rank_members(member_accuracies: Sequence[dict[str, float]],
                 subset: str = RANKING_SUBSET) -> list[int]:
  """Member indices best first by accuracy on `subset` (ties: lower index first)."""
  return sorted(range(len(member_accuracies)),
                key=lambda i: (-member_accuracies[i][subset], i))


@dataclasses.dataclass
class Evaluator:
  """Scores params and rewards on the subsets; caches member rewards by name."""

  scorer: RewardScorer
  subsets: dict[str, PairSet]

  def rewards(self, params: Any) -> Rewards:
    return score_subsets(self.scorer, params, self.subsets)

  def uniform_wa_rewards(self, members: Sequence[Any], group: Sequence[int],
                         member_rewards: Sequence[Rewards] | None = None) -> Rewards:
    """Rewards of the uniform weight average of members[group], computed once per set of
    members (the table, accuracy vs M and the pair histograms share many of them)."""
    key = (id(members), tuple(sorted(set(int(i) for i in group))))
    cache = self.__dict__.setdefault("_wa_cache", {})
    if key not in cache:  # the entry keeps `members` alive, so its id is never reused
      if len(key[1]) == 1 and member_rewards is not None:
        cache[key] = (members, member_rewards[key[1][0]])
      else:
        cache[key] = (members, self.rewards(weight_average([members[i] for i in key[1]])))
    return cache[key][1]

  def accuracy(self, rewards: Rewards) -> dict[str, float]:
    return accuracies(rewards, self.subsets)

  # -- the accuracy table (members, WARM M, ENS M) ------------------------------------------
  def table(self, members: Sequence[Any], ms: Sequence[int], *,
            member_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Accuracy (`rows`, with its post-clustered standard error `accuracy_se`, which also
    covers `mean_member`), Bradley-Terry loss and mean margin per model and subset, for the
    members, WARM M and ENS M (the M best by ID val), plus `paired`: per comparison and
    subset, the paired difference of accuracies with its post-clustered standard error."""
    names = list(member_names or [f"member_{i}" for i in range(len(members))])
    member_rewards = [self.rewards(p) for p in members]
    member_acc = [self.accuracy(r) for r in member_rewards]
    order = rank_members(member_acc)
    model_rewards = {names[i]: member_rewards[i] for i in range(len(members))}
    for m in ms:
      if m > len(members):
        continue
      top = order[:m]
      model_rewards[f"warm_{m}"] = self.uniform_wa_rewards(members, top, member_rewards)
      model_rewards[f"ens_{m}"] = ensemble_rewards([member_rewards[i] for i in top])
    rows, losses, margins, correct = {}, {}, {}, {}
    for name, rewards in model_rewards.items():
      rows[name] = self.accuracy(rewards)
      losses[name], margins[name] = loss_and_margin(rewards, self.subsets)
      correct[name] = correct_pairs(rewards, self.subsets)
    best = names[order[0]]
    correct["mean_member"] = {s: np.mean([correct[n][s] for n in names], axis=0)
                              for s in self.subsets}
    comparisons = []
    for m in ms:
      if m <= len(members):
        comparisons += [(f"warm_{m}", f"ens_{m}"), (f"warm_{m}", "best_member"),
                        (f"warm_{m}", "mean_member"), (f"ens_{m}", "best_member")]
    accuracy_se = {name: {s: paired_stats.clustered_mean(c[s], self.subsets[s].groups)["se"]
                          for s in self.subsets} for name, c in correct.items()}
    paired = {}
    for a, b in comparisons:
      paired[f"{a}-{b}"] = {
          s: paired_stats.paired_difference(correct[a][s], correct[best if b == "best_member"
                                                                  else b][s],
                                            self.subsets[s].groups)
          for s in self.subsets}
    return {"rows": rows, "bt_loss": losses, "margin": margins, "paired": paired,
            "accuracy_se": accuracy_se,
            "ranking": [names[i] for i in order],
            "ranking_subset": RANKING_SUBSET,
            "mean_member": {s: float(np.mean([a[s] for a in member_acc])) for s in self.subsets},
            "best_member": best,
            "_member_rewards": member_rewards}

  # -- LMC (fig. 3, 4-5) ------------------------------------------------------------------
  def lmc_curve(self, params_a: Any, params_b: Any, *, lambdas: Sequence[float] = LAMBDAS,
                rewards_a: Rewards | None = None, rewards_b: Rewards | None = None
                ) -> dict[str, Any]:
    """WA (weights interpolated), ENS (rewards interpolated) and the straight line between the
    endpoints' accuracies, per subset, at each lambda (lambda = weight of b); the bumps
    (mean over interior lambdas of curve - line) with their paired statistics (`bump_paired`,
    `ens_bump_paired`: per pair, the mean over interior lambdas of its correctness under the
    curve minus the line's; the post-clustered standard error and 95% interval of their
    mean)."""
    rewards_a = rewards_a or self.rewards(params_a)
    rewards_b = rewards_b or self.rewards(params_b)
    acc_a, acc_b = self.accuracy(rewards_a), self.accuracy(rewards_b)
    correct_a, correct_b = correct_pairs(rewards_a, self.subsets), correct_pairs(rewards_b,
                                                                                 self.subsets)
    curve = {"lambdas": [float(x) for x in lambdas], "wa": {}, "ens": {}, "line": {}}
    for s in self.subsets:
      curve["wa"][s], curve["ens"][s], curve["line"][s] = [], [], []
    interior = {kind: {s: [] for s in self.subsets} for kind in ("wa", "ens")}
    for lam in lambdas:
      if lam == 0.0:
        wa_rewards = rewards_a
      elif lam == 1.0:
        wa_rewards = rewards_b
      else:
        wa_rewards = self.rewards(weight_average([params_a, params_b], [1.0 - lam, lam]))
      ens_rewards = ensemble_rewards([rewards_a, rewards_b], [1.0 - lam, lam])
      wa, ens = self.accuracy(wa_rewards), self.accuracy(ens_rewards)
      if 0.0 < lam < 1.0:
        for kind, rewards in (("wa", wa_rewards), ("ens", ens_rewards)):
          for s, c in correct_pairs(rewards, self.subsets).items():
            interior[kind][s].append(c - ((1.0 - lam) * correct_a[s] + lam * correct_b[s]))
      for s in self.subsets:
        curve["wa"][s].append(wa[s])
        curve["ens"][s].append(ens[s])
        curve["line"][s].append((1.0 - lam) * acc_a[s] + lam * acc_b[s])
    curve["bump"] = {s: lmc_bump(curve["wa"][s], curve["line"][s]) for s in self.subsets}
    curve["ens_bump"] = {s: lmc_bump(curve["ens"][s], curve["line"][s]) for s in self.subsets}
    for kind, key in (("wa", "bump_paired"), ("ens", "ens_bump_paired")):
      curve[key] = {s: paired_stats.paired_difference(
          np.mean(interior[kind][s], axis=0), np.zeros(len(self.subsets[s])),
          self.subsets[s].groups) for s in self.subsets if interior[kind][s]}
    # per pair, its mean over interior lambdas of WA - line: two curves' bumps compare on them
    curve["_bump_per_pair"] = {s: np.mean(v, axis=0) for s, v in interior["wa"].items() if v}
    return curve

  def bump_differences(self, curves: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """For every two LMC curves b, a (in insertion order, a first), bump(b) - bump(a) per
    subset as a paired difference over the same pairs (`paired_stats.paired_difference`):
    e.g. 'two_baklava_inits-checkpoints_of_one_run', the paper's growth of the bump with
    diversity."""
    names = [n for n in curves if "_bump_per_pair" in curves[n]]
    out = {}
    for i, a in enumerate(names):
      for b in names[i + 1:]:
        out[f"{b}-{a}"] = {s: paired_stats.paired_difference(
            curves[b]["_bump_per_pair"][s], curves[a]["_bump_per_pair"][s],
            self.subsets[s].groups) for s in curves[a]["_bump_per_pair"]}
    return out

  # -- accuracy vs M by selection order (fig. 10) -------------------------------------------
  def accuracy_vs_m(self, members: Sequence[Any], member_rewards: Sequence[Rewards],
                    orders: dict[str, Sequence[int]]) -> dict[str, Any]:
    out = {}
    for name, order in orders.items():
      out[name] = {"order": [int(i) for i in order], "m": [], "wa": [], "ens": []}
      for m in range(1, len(order) + 1):
        top = list(order[:m])
        out[name]["m"].append(m)
        out[name]["wa"].append(self.accuracy(self.uniform_wa_rewards(members, top,
                                                                     member_rewards)))
        out[name]["ens"].append(self.accuracy(ensemble_rewards(
            [member_rewards[i] for i in top])))
    return out

  # -- Acc(WA) - Acc(ENS) over pairs (figs 4-5 histograms) ----------------------------------
  def wa_minus_ens_over_pairs(self, members: Sequence[Any], member_rewards: Sequence[Rewards]
                              ) -> dict[str, Any]:
    diffs = {s: [] for s in self.subsets}
    pairs = list(itertools.combinations(range(len(members)), 2))
    for i, j in pairs:
      wa = self.accuracy(self.uniform_wa_rewards(members, (i, j), member_rewards))
      ens = self.accuracy(ensemble_rewards([member_rewards[i], member_rewards[j]]))
      for s in self.subsets:
        diffs[s].append(wa[s] - ens[s])
    return {"pairs": [list(p) for p in pairs], "diff": diffs,
            "mean": {s: float(np.mean(v)) if v else float("nan") for s, v in diffs.items()}}


def lmc_bump(curve: Sequence[float], line: Sequence[float]) -> float:
  """Mean over interior lambdas of (curve - straight line): > 0 means above the line."""
  interior = np.asarray(curve[1:-1]) - np.asarray(line[1:-1])
  return float(np.mean(interior)) if len(interior) else 0.0


def strip_private(result: dict[str, Any]) -> dict[str, Any]:
  """Drops cached arrays (keys starting with '_') before writing JSON."""
  return {k: v for k, v in result.items() if not k.startswith("_")}


# ---------------------------------------------------------------------------------------------
# The evaluation stage
# ---------------------------------------------------------------------------------------------
EVAL_FILE = "eval.json"
# the selection orders of accuracy vs M (fig. 10); "greedy" is the greedy soup's acceptance order
VS_M_ORDERS = ("best_to_worst", "worst_to_best", "random", "greedy")


def _has_finished_member(path: str) -> bool:
  return any(re.fullmatch(r"member_(\d+)", name) and run_dir.is_done(os.path.join(path, name))
             for name in os.listdir(path))


def _members_dirs_below(root: str, depth: int = 2) -> list[str]:
  """Dirs at most `depth` levels under `root` that hold finished members (shallowest first)."""
  found, level = [], [root]
  for _ in range(depth):
    below = []
    for path in level:
      for name in sorted(os.listdir(path)):
        child = os.path.join(path, name)
        if os.path.isdir(child):
          (found if _has_finished_member(child) else below).append(child)
    level = below
  return found


def finished_members(members_dir: str) -> list[str]:
  """member_<i> dirs with a DONE marker, by index."""
  if not os.path.isdir(members_dir):
    raise FileNotFoundError(f"members dir {members_dir} does not exist: train members first "
                            "(gin/rm.gin or gin/rm_members.gin)")
  found = []
  for name in os.listdir(members_dir):
    m = re.fullmatch(r"member_(\d+)", name)
    if m and run_dir.is_done(os.path.join(members_dir, name)):
      found.append((int(m.group(1)), os.path.join(members_dir, name)))
  if not found:
    below = _members_dirs_below(members_dir)  # the run's root or members/: members/clean
    hint = (f"MEMBERS_DIR holding them is below: {', '.join(below)}; pass one of those" if below
            else "train the members first (gin/rm.gin), or point MEMBERS_DIR at their dir")
    raise FileNotFoundError(f"no finished member (member_<i>/DONE) in {members_dir}: {hint}")
  return [path for _, path in sorted(found)]


def _post_groups(data_dir: str, split: str, pair_index: np.ndarray) -> np.ndarray:
  """[n] integer id of each pair's post (the cluster of the paired statistics), from the
  split's records (`pair_index` is the record line of each array row)."""
  from warm_jax.data import data_dir as data_dir_lib
  records = data_dir_lib.load_records(data_dir, kind="preferences", split=split)
  ids: dict[str, int] = {}
  posts = np.array([ids.setdefault(r["post_id"], len(ids)) for r in records], np.int64)
  return posts[np.asarray(pair_index, np.int64)]


def load_subsets(data_dir: str, *, seq_len: int | None, vocab_size: int | None,
                 policy_pairs_dir: str | None = None,
                 max_pairs: int | None = None) -> dict[str, PairSet]:
  """The evaluation subsets of DATA_DIR (with id_policy / ood_policy when it is an on-policy
  RM data dir), plus `ood_policy` from a policy-pairs dir if given; each pair knows its post."""
  from warm_jax.data import data_dir as data_dir_lib
  from warm_jax.data.datasets import load_arrays
  meta = data_dir_lib.read_meta(data_dir)
  available = meta.get("splits", {}).get("preferences", data_dir_lib.SPLITS["preferences"])
  names = [s for s in ("rm_train", "id_val", "ood", ID_POLICY_SUBSET, POLICY_SUBSET)
           if s in available]
  splits = {split: load_arrays(data_dir, kind="preferences", split=split, length=seq_len,
                               vocab_size=vocab_size) for split in names}
  groups = {split: _post_groups(data_dir, split, arrays["pair_index"])
            for split, arrays in splits.items()}
  if policy_pairs_dir:
    from warm_jax.policy.policy_pairs import SPLIT, load_policy_pairs
    if POLICY_SUBSET in splits:
      raise ValueError(f"DATA_DIR {data_dir} already holds the {POLICY_SUBSET} split (an "
                       "on-policy RM data dir): drop POLICY_PAIRS_DIR")
    splits[POLICY_SUBSET] = load_policy_pairs(policy_pairs_dir, data_dir=data_dir,
                                                 seq_len=seq_len, vocab_size=vocab_size)
    groups[POLICY_SUBSET] = _post_groups(policy_pairs_dir, SPLIT,
                                            splits[POLICY_SUBSET]["pair_index"])
  return subsets_from_splits(**splits, groups=groups, max_pairs=max_pairs)


def evaluate_reward_models(*, output_dir: str | None, data_dir: str,
                           model_config: TransformerConfig, members_dir: str | None = None,
                           member_paths: Sequence[str] = (), ms: Sequence[int] = (2, 6),
                           lmc_pairs: Mapping[str, Sequence[str]] | None = None,
                           lmc_lambdas: Sequence[float] = LAMBDAS,
                           pairs_histogram: bool = True, orders_seed: int = 0,
                           batch_size: int = 64, seq_len: int | None = None,
                           vocab_size: int | None = None,
                           policy_pairs_dir: str | None = None,
                           max_pairs_per_subset: int | None = None,
                           vs_m_orders: Sequence[str] = VS_M_ORDERS,
                           partitioner: Partitioner | None = None) -> dict[str, Any]:
  """Runs the evaluations and writes OUTPUT_DIR/eval.json and plots (see module docstring).

  lmc_pairs: {name: (params_path_a, params_path_b)}, e.g. the four diversity levels.
  lmc_lambdas: the interpolation weights of the LMC curves (each interior one costs a pass
    over every subset): increasing from 0.0 to 1.0.
  policy_pairs_dir: a `python -m warm_jax.data.policy_pairs` output built from DATA_DIR;
    adds the subset `ood_policy` to every table, curve and histogram (None: not evaluated).
  max_pairs_per_subset: evaluate a seeded sample of at most this many pairs per subset (None:
    all); the sizes used are in eval.json's subset_sizes.
  vs_m_orders: the selection orders of `vs_m` (each costs up to M - 2 weight averages scored
    on every subset; 'greedy' also runs the greedy soup, judged on the ranking subset).
  """
  if not output_dir:
    raise ValueError("OUTPUT_DIR is not set: pass --gin.OUTPUT_DIR=\"'/path'\"")
  unknown = set(vs_m_orders) - set(VS_M_ORDERS)
  if unknown:  # refused before any checkpoint is loaded or scored
    raise ValueError(f"VS_M_ORDERS has unknown orders {sorted(unknown)}: choose among "
                     f"{', '.join(VS_M_ORDERS)}")
  lmc_lambdas = [float(x) for x in lmc_lambdas]
  if (len(lmc_lambdas) < 2 or lmc_lambdas[0] != 0.0 or lmc_lambdas[-1] != 1.0
      or lmc_lambdas != sorted(set(lmc_lambdas))):
    raise ValueError(f"LMC_LAMBDAS={tuple(lmc_lambdas)}: increasing, from 0.0 to 1.0")
  if any(int(m) < 1 for m in ms):
    raise ValueError(f"WARM_MS={tuple(ms)}: every M (members averaged) must be >= 1")
  t0 = time.time()
  paths = list(member_paths) or (finished_members(members_dir) if members_dir else [])
  if not paths and not lmc_pairs:
    raise ValueError("nothing to evaluate: give MEMBERS_DIR, member_paths or lmc_pairs")
  if len(set(map(os.path.realpath, paths))) != len(paths):
    raise ValueError(f"duplicate member paths in {paths}")
  scorer = RewardScorer(model_config=model_config, partitioner=partitioner or Partitioner(),
                        batch_size=batch_size)
  evaluator = Evaluator(scorer=scorer, subsets=load_subsets(
      data_dir, seq_len=seq_len, vocab_size=vocab_size, policy_pairs_dir=policy_pairs_dir,
      max_pairs=max_pairs_per_subset))
  result: dict[str, Any] = {"members": paths,
                            "subset_sizes": {k: len(v) for k, v in evaluator.subsets.items()}}
  if policy_pairs_dir:
    result["policy_pairs_dir"] = os.path.abspath(policy_pairs_dir)
  if paths:
    members = [ckpt_lib.load_params(p) for p in paths]
    for path, params in zip(paths, members):  # another architecture or NaN: refuse by name
      scorer.check_params(params, name=path)
    names = [os.path.basename(os.path.normpath(p)) for p in paths]
    table = evaluator.table(members, ms, member_names=names)
    member_rewards = table.pop("_member_rewards")
    result["table"] = table
    member_acc = [table["rows"][n] for n in names]
    ranked = rank_members(member_acc)
    rng = np.random.default_rng(orders_seed)
    orders = {"best_to_worst": ranked, "worst_to_best": ranked[::-1],
              "random": [int(i) for i in rng.permutation(len(members))]}
    orders = {k: v for k, v in orders.items() if k in vs_m_orders}
    if len(members) > 1:
      if "greedy" in vs_m_orders:
        from warm_jax.merging import greedy_selection
        ranking_only = {RANKING_SUBSET: evaluator.subsets[RANKING_SUBSET]}
        greedy = greedy_selection(  # a soup is judged on the ranking subset only
            num_members=len(members), load_member=lambda i: members[i],
            score_fn=lambda p: accuracies(score_subsets(scorer, p, ranking_only),
                                             ranking_only)[RANKING_SUBSET])
        orders["greedy"] = [step["member"] for step in greedy["steps"] if step["accepted"]]
      if orders:  # VS_M_ORDERS=() asks for none
        result["vs_m"] = evaluator.accuracy_vs_m(members, member_rewards, orders)
      if pairs_histogram:
        result["wa_minus_ens"] = evaluator.wa_minus_ens_over_pairs(members, member_rewards)
  if lmc_pairs:
    # an endpoint that is one of the members evaluated above reuses its rewards
    scored = {os.path.realpath(p): r for p, r in zip(paths, member_rewards)} if paths else {}
    curves = {name: evaluator.lmc_curve(ckpt_lib.load_params(a), ckpt_lib.load_params(b),
                                        lambdas=lmc_lambdas,
                                        rewards_a=scored.get(os.path.realpath(a)),
                                        rewards_b=scored.get(os.path.realpath(b)))
              for name, (a, b) in lmc_pairs.items()}
    result["lmc_bump_differences"] = evaluator.bump_differences(curves)
    result["lmc"] = {name: strip_private(curve) for name, curve in curves.items()}
  result["wall_s"] = round(time.time() - t0, 2)
  write_outputs(output_dir, result)
  logging.info("evaluation written to %s (%.1fs)", output_dir, result["wall_s"])
  return result


def write_outputs(output_dir: str, result: dict[str, Any]) -> None:
  """OUTPUT_DIR/eval.json and OUTPUT_DIR/plots/*.png of one evaluation."""
  from warm_jax.core import plots
  plot_dir = os.path.join(output_dir, "plots")
  os.makedirs(plot_dir, exist_ok=True)
  if "table" in result:
    plots.plot_accuracy_table(result["table"]["rows"], os.path.join(plot_dir, "accuracy.png"),
                              title="Pairwise accuracy: members, WARM M, ENS M")
  for subset in ("id_val", ID_POLICY_SUBSET, "ood", POLICY_SUBSET):
    if result.get("vs_m") and subset in next(iter(result["vs_m"].values()))["wa"][0]:
      plots.plot_accuracy_vs_m(result["vs_m"], subset,
                               os.path.join(plot_dir, f"accuracy_vs_m_{subset}.png"))
  if "wa_minus_ens" in result:
    plots.plot_wa_minus_ens(result["wa_minus_ens"]["diff"],
                            os.path.join(plot_dir, "wa_minus_ens.png"),
                            title="Acc(WA) - Acc(ENS) over member pairs")
  if "lmc" in result:
    subsets = next(iter(result["lmc"].values()))["wa"]
    for subset in subsets:
      plots.plot_lmc(result["lmc"], subset, os.path.join(plot_dir, f"lmc_{subset}.png"))
    for name, curve in result["lmc"].items():
      plots.plot_lmc_subsets(curve, os.path.join(plot_dir, f"lmc_pair_{name}.png"),
                             title=f"WA vs ENS along {name.replace('_', ' ')}")
  ckpt_lib.atomic_write_text(os.path.join(output_dir, EVAL_FILE),
                             json.dumps(result, indent=1, sort_keys=True) + "\n")
