"""`python -m warm_jax.evaluate`: the paper's reward-model evaluations, written as JSON + plots.

  python -m warm_jax.evaluate --gin_file=gin/models/tiny.gin --gin_file=gin/evaluate.gin \
      --gin.DATA_DIR="'/tmp/data'" --gin.MEMBERS_DIR="'/tmp/members'" \
      --gin.OUTPUT_DIR="'/tmp/eval'"

Reads every finished member under MEMBERS_DIR (member_<i> with DONE, latest checkpoint) or an
explicit list of params paths, and writes OUTPUT_DIR/eval.json:

  table        accuracy per subset (train_clean, train_corrupt, id_val, ood, and id_policy /
               ood_policy in an on-policy RM data dir or ood_policy from POLICY_PAIRS_DIR) of
               each member, WARM M and ENS M (members ranked best first on ID val), the
               ranking, bt_loss and margin per model and subset, and `paired`: WA - ENS,
               WA - best member, WA - mean member, ENS - best member with post-clustered
               standard errors and 95% intervals
  lmc          per named pair: WA / ENS / straight line vs lambda per subset, and the bump
               (mean of curve - line over interior lambdas) with its paired statistics
  vs_m         accuracy of WA and ENS of the first M members for the orders best-to-worst,
               worst-to-best, random (seeded) and greedy (kept members only)
  lmc_bump_differences  bump(b) - bump(a) for every two LMC pairs, paired over the same pairs
               (e.g. two_baklava_inits-checkpoints_of_one_run: the bump's growth with diversity)
  wa_minus_ens Acc(WA) - Acc(ENS) per subset for every pair of members (lambda = 1/2)

and OUTPUT_DIR/plots/*.png. See warm_jax/evaluation.py for the definitions.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from warm_jax import checkpoints as ckpt_lib
from warm_jax import evaluation as ev
from warm_jax import plots
from warm_jax.models import TransformerConfig
from warm_jax.partitioning import Partitioner
from warm_jax.scoring import RewardScorer

EVAL_FILE = "eval.json"
# the selection orders of accuracy vs M (fig. 10); "greedy" is the greedy soup's acceptance order
VS_M_ORDERS = ("best_to_worst", "worst_to_best", "random", "greedy")


def _has_finished_member(path: str) -> bool:
  return any(re.fullmatch(r"member_(\d+)", name) and os.path.exists(
      os.path.join(path, name, "DONE")) for name in os.listdir(path))


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
    if m and os.path.exists(os.path.join(members_dir, name, "DONE")):
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
                 max_pairs: int | None = None) -> dict[str, ev.PairSet]:
  """The evaluation subsets of DATA_DIR (with id_policy / ood_policy when it is an on-policy
  RM data dir), plus `ood_policy` from a policy-pairs dir if given; each pair knows its post."""
  from warm_jax.data import data_dir as data_dir_lib
  from warm_jax.data.datasets import load_arrays
  meta = data_dir_lib.read_meta(data_dir)
  available = meta.get("splits", {}).get("preferences", data_dir_lib.SPLITS["preferences"])
  names = [s for s in ("rm_train", "id_val", "ood", ev.ID_POLICY_SUBSET, ev.POLICY_SUBSET)
           if s in available]
  splits = {split: load_arrays(data_dir, kind="preferences", split=split, length=seq_len,
                               vocab_size=vocab_size) for split in names}
  groups = {split: _post_groups(data_dir, split, arrays["pair_index"])
            for split, arrays in splits.items()}
  if policy_pairs_dir:
    from warm_jax.data.policy_pairs import SPLIT, load_policy_pairs
    if ev.POLICY_SUBSET in splits:
      raise ValueError(f"DATA_DIR {data_dir} already holds the {ev.POLICY_SUBSET} split (an "
                       "on-policy RM data dir): drop POLICY_PAIRS_DIR")
    splits[ev.POLICY_SUBSET] = load_policy_pairs(policy_pairs_dir, data_dir=data_dir,
                                                 seq_len=seq_len, vocab_size=vocab_size)
    groups[ev.POLICY_SUBSET] = _post_groups(policy_pairs_dir, SPLIT,
                                            splits[ev.POLICY_SUBSET]["pair_index"])
  return ev.subsets_from_splits(**splits, groups=groups, max_pairs=max_pairs)


def evaluate_reward_models(*, output_dir: str | None, data_dir: str,
                           model_config: TransformerConfig, members_dir: str | None = None,
                           member_paths: Sequence[str] = (), ms: Sequence[int] = (2, 6),
                           lmc_pairs: Mapping[str, Sequence[str]] | None = None,
                           lmc_lambdas: Sequence[float] = ev.LAMBDAS,
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
  evaluator = ev.Evaluator(scorer=scorer, subsets=load_subsets(
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
    ranked = ev.rank_members(member_acc)
    rng = np.random.default_rng(orders_seed)
    orders = {"best_to_worst": ranked, "worst_to_best": ranked[::-1],
              "random": [int(i) for i in rng.permutation(len(members))]}
    orders = {k: v for k, v in orders.items() if k in vs_m_orders}
    if len(members) > 1:
      if "greedy" in vs_m_orders:
        from warm_jax.merging import greedy_selection
        ranking_only = {ev.RANKING_SUBSET: evaluator.subsets[ev.RANKING_SUBSET]}
        greedy = greedy_selection(  # a soup is judged on the ranking subset only
            num_members=len(members), load_member=lambda i: members[i],
            score_fn=lambda p: ev.accuracies(ev.score_subsets(scorer, p, ranking_only),
                                             ranking_only)[ev.RANKING_SUBSET])
        orders["greedy"] = [step["member"] for step in greedy["steps"] if step["accepted"]]
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
    result["lmc"] = {name: ev.strip_private(curve) for name, curve in curves.items()}
  result["wall_s"] = round(time.time() - t0, 2)
  write_outputs(output_dir, result)
  logging.info("evaluation written to %s (%.1fs)", output_dir, result["wall_s"])
  return result


def write_outputs(output_dir: str, result: dict[str, Any]) -> None:
  plot_dir = os.path.join(output_dir, "plots")
  os.makedirs(plot_dir, exist_ok=True)
  if "table" in result:
    plots.plot_accuracy_table(result["table"]["rows"], os.path.join(plot_dir, "accuracy.png"),
                              title="Pairwise accuracy: members, WARM M, ENS M")
  for subset in ("id_val", ev.ID_POLICY_SUBSET, "ood", ev.POLICY_SUBSET):
    if "vs_m" in result and subset in next(iter(result["vs_m"].values()))["wa"][0]:
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


def main(argv: Sequence[str] | None = None) -> int:
  from warm_jax.gin_utils import gin_main
  return gin_main(argv, entry="evaluate_reward_models", doc=__doc__,
                  example="--gin_file=gin/models/tiny.gin --gin_file=gin/evaluate.gin")


if __name__ == "__main__":
  sys.exit(main())
