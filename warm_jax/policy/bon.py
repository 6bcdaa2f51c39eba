"""Best-of-N: N candidates per prompt from the SFT policy, a reward model picks one, the oracle
judges it (docs/paper.md figs 6-7).

Where it sits: after the RM members are trained and averaged. One stage (gin/bon.gin):

  1. Sample N_max + 1 candidates per prompt ONCE from the SFT policy (temperature 0.9): the
     first N_max form the pool every selector picks from, the last is an independent "random
     SFT sample" the selections are compared against.
  2. Score every candidate with the oracle (`warm_jax.policy.oracle`: the gold reward of the decoded
     text) and with each selector RM (`warm_jax.policy.reward_sources`: a member, WARM M, ENS M,
     Coste et al.'s WCO M / UWO M);
     an RM reads an unfinished candidate closed with EOS (`sampling.close_unfinished`).
  Before sampling, the prompts + MAX_NEW_TOKENS (+ that EOS) are checked against the
  positions the models were trained on (`sampling.check_positions`).
  3. For N in 1, 2, 4, ..., N_max the BoN choice is the argmax of the selector's reward over the
     first N candidates (ties: the earliest). Per selector and N: mean oracle (and RM) reward
     of the choices, against N and against KL(BoN || SFT) = log N - (N - 1) / N; also the
     lower-variance estimate averaged over every N-subset of the pool (`all_subsets`).
  4. Oracle win rates (ties split, with confidence intervals) of every selector against the
     random SFT sample and against every other selector, at each N.
  5. Per selector, Gao et al.'s fit R(d) = d (a - b d), d = sqrt(KL), of the oracle gain of its
     choice over the pool mean (all-subsets estimate) with its peak KL and height
     (`gao_fits`, curves.selectors.<name>.gao_fit); per pair of selectors and N, the paired
     per-prompt difference of the all-subsets oracle (mean, s.e., 95% interval over prompts,
     curves.paired_differences['A-B']).
  6. Member disagreement as uncertainty (`warm_jax.policy.disagreement`, curves.disagreement): for
     each selector whose members' rewards were scored here (ENS / WCO / UWO and {'warm': [...]}
     from their own paths; a single checkpoint - a WARM average, the best member - from
     DISAGREEMENT_MEMBERS), the spread of those members' standardised rewards of its choice
     against the choice's regret w.r.t. the oracle (Pearson, Spearman) and the AUROC of
     flagging the wrong choices, per N. Members never scored here are not scored for it: the
     selector is skipped with the reason logged and written (curves.disagreement.skipped).

Writes OUTPUT_DIR/bon.json, OUTPUT_DIR/bon_scores.npz (every candidate's oracle and RM
rewards, to recompute any curve), OUTPUT_DIR/plots/bon_oracle_vs_kl.png (fig. 6),
OUTPUT_DIR/plots/bon_win_rate_vs_n.png (fig. 7), OUTPUT_DIR/plots/bon_disagreement.png (when
any selector has its members' rewards) and OUTPUT_DIR/DONE.

  python -m warm_jax.train --gin_file=gin/models/tiny.gin --gin_file=gin/bon.gin \
      --gin.DATA_DIR="'/tmp/data'" --gin.SFT_DIR="'/tmp/sft'" --gin.OUTPUT_DIR="'/tmp/bon'" \
      --gin.REWARD_MODELS="{'member_0': '/tmp/members/member_0'}"
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from warm_jax.core import checkpoints as ckpt_lib
from warm_jax.policy import disagreement as dis
from warm_jax.core import run_dir
from warm_jax.policy import win_rates as wr
from warm_jax.policy.gao_fits import gao_fit
from warm_jax.core.paired_stats import paired_difference
from warm_jax.models import TransformerConfig
from warm_jax.core.partitioning import Partitioner
from warm_jax.policy.reward_sources import (PREDICTION_ENSEMBLES, parse_reward_sources,
                                            score_with_source)
from warm_jax.policy.sampling import (Sampler, SamplingConfig, candidate_sequences,
                                      check_positions, trained_positions)
from warm_jax.rm.scoring import RewardScorer

RESULT_FILE = "bon.json"
SCORES_FILE = "bon_scores.npz"
REFERENCE = "sft_sample"  # the independent random SFT sample selections are compared with
ORACLE_BEST = "oracle_best"  # the oracle picking its own best of N: an upper bound


def kl_best_of_n(n: int | np.ndarray) -> float | np.ndarray:
  """KL(BoN || SFT) = log N - (N - 1) / N (Stiennon et al. 2020; the paper's x-axis)."""
  n = np.asarray(n, np.float64)
  if np.any(n < 1):
    raise ValueError(f"N must be >= 1, got {n}")
  out = np.log(n) - (n - 1) / n
  return float(out) if out.ndim == 0 else out


def default_ns(n_max: int) -> tuple[int, ...]:
  """1, 2, 4, ... up to n_max (n_max itself included)."""
  ns = [1 << i for i in range(int(math.log2(n_max)) + 1)]
  return tuple(ns if ns[-1] == n_max else ns + [n_max])


def best_of_n_indices(rm_scores: np.ndarray, n: int) -> np.ndarray:
  """[prompts] index of the highest RM score among each prompt's first n candidates (the
  earliest on ties)."""
  rm_scores = np.asarray(rm_scores)
  if not 1 <= n <= rm_scores.shape[1]:
    raise ValueError(f"N={n} is outside 1..{rm_scores.shape[1]} (the candidates sampled)")
  return np.argmax(rm_scores[:, :n], axis=1)


def take_rows(values: np.ndarray, index: np.ndarray) -> np.ndarray:
  return np.take_along_axis(np.asarray(values), np.asarray(index)[:, None], axis=1)[:, 0]


def all_subsets_expectation(rm_scores: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
  """[prompts] E[value of the RM's argmax] over a uniformly random n-subset of the pool.

  With the pool sorted by RM score (ties: later candidates count as lower, matching the
  earliest-wins rule of `best_of_n_indices` on shuffled pools), the candidate of rank i (1 =
  lowest) is the subset's argmax with probability C(i - 1, n - 1) / C(pool, n).
  """
  rm_scores, values = np.asarray(rm_scores), np.asarray(values, np.float64)
  pool = rm_scores.shape[1]
  # Sort ascending by score, descending by index among equals (so the earliest ranks higher).
  order = np.lexsort((-np.arange(pool)[None].repeat(len(rm_scores), 0), rm_scores), axis=1)
  ranks = np.arange(1, pool + 1)
  weights = np.array([math.comb(int(i) - 1, n - 1) for i in ranks], np.float64)
  weights /= math.comb(pool, n)
  return (np.take_along_axis(values, order, axis=1) * weights[None]).sum(axis=1)


def bon_curves(*, oracle: np.ndarray, rm_scores: Mapping[str, np.ndarray],
               ns: Sequence[int], reference: np.ndarray, confidence: float = 0.95,
               seed: int = 0) -> dict[str, Any]:
  """Curves and win rates from the scores of a pool.

  Args:
    oracle: [prompts, N_max] oracle reward of every candidate.
    rm_scores: {selector: [prompts, N_max]} each selector's reward of every candidate.
    ns: the N values (each <= N_max).
    reference: [prompts] oracle reward of an independent SFT sample per prompt.
  """
  ns = [int(n) for n in ns]
  selections = {name: {n: take_rows(oracle, best_of_n_indices(s, n)) for n in ns}
                for name, s in rm_scores.items()}
  # Per prompt and N, the all-subsets expectation of each selector's choice.
  subsets = {name: {n: all_subsets_expectation(s, oracle, n) for n in ns}
             for name, s in rm_scores.items()}
  pool_mean = np.asarray(oracle, np.float64).mean(axis=1)  # [prompts]: what a random candidate (N = 1) scores
  selections[ORACLE_BEST] = {n: oracle[:, :n].max(axis=1) for n in ns}
  curves: dict[str, Any] = {"n": ns, "kl": [kl_best_of_n(n) for n in ns], "selectors": {}}
  for name, by_n in selections.items():
    entry = {"oracle": [float(by_n[n].mean()) for n in ns],
             "oracle_sem": [float(by_n[n].std() / np.sqrt(len(by_n[n]))) for n in ns]}
    if name in rm_scores:
      s = rm_scores[name]
      entry["proxy"] = [float(take_rows(s, best_of_n_indices(s, n)).mean()) for n in ns]
      entry["oracle_all_subsets"] = [float(subsets[name][n].mean()) for n in ns]
      # Gao et al.'s BoN form of the gain over the pool mean vs KL (all-subsets estimate).
      entry["gao_fit"] = gao_fit(curves["kl"], [float(np.mean(subsets[name][n] - pool_mean))
                                                for n in ns], form="bon")
    entry["win_rate_vs_sft"] = [wr.win_rate(by_n[n], reference, confidence=confidence,
                                            seed=seed).to_json() for n in ns]
    curves["selectors"][name] = entry
  names = list(rm_scores)
  curves["win_rates"] = {
      f"{a}_vs_{b}": [wr.win_rate(selections[a][n], selections[b][n], confidence=confidence,
                                  seed=seed).to_json() for n in ns]
      for a in names for b in names if a != b}
  # Paired per-prompt differences (A - B) of the all-subsets oracle of the choice, each pair
  # once in the selectors' order: mean and a 95% interval over prompts.
  curves["paired_differences"] = {
      f"{a}-{b}": [paired_difference(subsets[a][n], subsets[b][n]) for n in ns]
      for i, a in enumerate(names) for b in names[i + 1:]}
  curves["pool_mean_oracle"] = float(pool_mean.mean())
  curves["sft_sample_oracle"] = float(np.mean(reference))
  return curves


def disagreement_curves(*, oracle: np.ndarray, rm_scores: Mapping[str, np.ndarray],
                        members: Mapping[str, Sequence[str]],
                        member_scores: Mapping[str, np.ndarray], ns: Sequence[int],
                        skipped: Mapping[str, str] | None = None) -> dict[str, Any]:
  """curves.disagreement: per selector with members, at each N, the members' disagreement of
  its choice among the first N candidates against the choice's error
  (`warm_jax.policy.disagreement`).

  Args:
    oracle: [prompts, pool] oracle reward of every pool candidate.
    rm_scores: {selector: [prompts, pool]} the rewards each selector chose with.
    members: {selector: [member path, ...]} the members whose disagreement flags its choices.
    member_scores: {member path: [prompts, pool]} each member's reward of every candidate.
    skipped: {selector: reason} selectors left out, written as they are.
  """
  ns = [int(n) for n in ns]
  out: dict[str, Any] = {
      "n": ns,
      "rule": {"disagreement": "std (ddof 0) over the members of their rewards, each member "
                               "standardised over the whole pool (every candidate of every "
                               "prompt)",
               "regret": "oracle of the best of the first N candidates - oracle of the choice",
               "wrong": "oracle of the choice < median oracle of the first N candidates",
               "choice": "the selector's argmax over the first N candidates"},
      "selectors": {}, "skipped": dict(skipped or {})}
  for name, paths in members.items():
    if name not in rm_scores:
      raise ValueError(f"disagreement members are given for {name!r}, which is not a selector "
                       f"({sorted(rm_scores)}): name a key of REWARD_MODELS")
    missing = [p for p in paths if p not in member_scores]
    if missing:
      raise ValueError(f"disagreement members of {name!r} without rewards: {missing}")
    d = dis.member_disagreement(np.stack([member_scores[p] for p in paths]), list(paths))
    entry: dict[str, Any] = {"members": list(paths), "m": len(paths),
                             "pool_mean_disagreement": float(d.mean())}
    for n in ns:
      stats = dis.selection_stats(d, oracle, best_of_n_indices(rm_scores[name], n), n)
      for key, value in stats.items():
        entry.setdefault(key, []).append(value)
    out["selectors"][name] = entry
  return out


def plot_disagreement(disagreement: dict[str, Any], plot_dir: str) -> list[str]:
  """AUROC of member disagreement for flagging wrong choices, and its Spearman correlation
  with regret, vs N per selector (bon_disagreement.png); nothing without a selector."""
  entries = disagreement.get("selectors") or {}
  if not entries:
    return []
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  os.makedirs(plot_dir, exist_ok=True)
  fig, (ax_a, ax_s) = plt.subplots(1, 2, figsize=(9, 3.6))
  ns = disagreement["n"]
  for name, entry in entries.items():
    label = f"{name} (M={entry['m']})"
    for ax, key in ((ax_a, "auroc"), (ax_s, "spearman")):
      points = [(n, v) for n, v in zip(ns, entry[key]) if v is not None]
      if points:
        ax.plot(*zip(*points), "o-", markersize=3, label=label)
  ax_a.axhline(0.5, color="gray", lw=0.8, ls="--")
  ax_s.axhline(0.0, color="gray", lw=0.8, ls="--")
  ax_a.set_ylabel("AUROC for flagging wrong choices")
  ax_a.set_title("wrong: below the median oracle of its N", fontsize=9)
  ax_s.set_ylabel("Spearman(disagreement, regret)")
  ax_s.set_title("regret: oracle of the best of N - of the choice", fontsize=9)
  for ax in (ax_a, ax_s):
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("N")
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
    else:  # e.g. no wrong choice at any N: AUROC undefined everywhere
      ax.text(0.5, 0.5, "undefined at every N", transform=ax.transAxes, ha="center")
  fig.suptitle("Best-of-N: does the members' disagreement flag the RM's wrong choices?")
  from warm_jax.core.plots import save_figure
  return [save_figure(fig, os.path.join(plot_dir, "bon_disagreement.png"))]


def plot_bon(curves: dict[str, Any], plot_dir: str) -> list[str]:
  """Fig. 6 (oracle reward vs KL) and fig. 7 (win rate vs the SFT sample, vs N)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  os.makedirs(plot_dir, exist_ok=True)
  paths = []
  fig, ax = plt.subplots(figsize=(5.2, 3.8))
  for name, entry in curves["selectors"].items():
    if name == ORACLE_BEST:
      ax.plot(curves["kl"], entry["oracle"], ":", color="gray", label=name)
      continue
    # Solid: the all-subsets estimate (lower variance); dots: the first-N choices.
    line, = ax.plot(curves["kl"], entry["oracle_all_subsets"], "-", label=name)
    ax.plot(curves["kl"], entry["oracle"], "o", color=line.get_color(), markersize=3)
  ax.axhline(curves["sft_sample_oracle"], color="gray", lw=0.8, ls="--", label="SFT sample")
  ax.set_xlabel("KL(BoN || SFT) = log N - (N-1)/N")
  ax.set_ylabel("oracle reward of the choice")
  ax.set_title("Best-of-N: oracle reward vs KL (dots: first N)")
  ax.legend(fontsize=7)
  from warm_jax.core.plots import save_figure
  paths.append(save_figure(fig, os.path.join(plot_dir, "bon_oracle_vs_kl.png")))
  fig, ax = plt.subplots(figsize=(5.2, 3.8))
  selectors = [name for name in curves["selectors"] if name != ORACLE_BEST]
  for i, name in enumerate(selectors):
    rates = curves["selectors"][name]["win_rate_vs_sft"]
    shift = 2 ** (0.06 * (i - (len(selectors) - 1) / 2))  # side by side on the log axis
    ax.errorbar([n * shift for n in curves["n"]], [r["rate"] for r in rates],
                yerr=[[r["rate"] - r["low"] for r in rates],
                      [r["high"] - r["rate"] for r in rates]],
                fmt="o-", markersize=3, capsize=2, label=name)
  ax.axhline(0.5, color="gray", lw=0.8, ls="--")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("N")
  ax.set_ylabel("oracle win rate vs a random SFT sample")
  ax.set_title("Best-of-N: win rate vs N (ties split)")
  ax.legend(fontsize=7)
  paths.append(save_figure(fig, os.path.join(plot_dir, "bon_win_rate_vs_n.png")))
  return paths


def best_of_n(*, output_dir: str | None, data_dir: str | None, sft_path: str | None,
              reward_models: Mapping[str, Any], model_config: TransformerConfig,
              reward_model_config: TransformerConfig | None = None,
              sampling: SamplingConfig = SamplingConfig(), n_max: int = 64,
              ns: Sequence[int] | None = None, split: str = "train",
              num_prompts: int | None = None, seed: int = 0, batch_size: int = 64,
              score_batch_size: int | None = None, prompt_len: int | None = None, vocab_size: int | None = None,
              control_rm_path: str | None = None, confidence: float = 0.95,
              partitioner: Partitioner | None = None,
              disagreement_members: Mapping[str, Sequence[str]] | None = None
              ) -> dict[str, Any]:
  """Runs the best-of-N stage (module docstring) and writes OUTPUT_DIR; returns the result.

  Args:
    reward_models: {selector name: spec} (see `warm_jax.policy.reward_sources`).
    n_max: candidates per prompt in the pool (the paper goes to 64 and beyond).
    ns: the N values (default 1, 2, 4, ..., n_max).
    split: the prompt split ('train': held-out BoN/RL prompts; 'validation').
    num_prompts: use the first this many prompts (None: all).
    batch_size: rows per compiled sampling call.
    score_batch_size: rows per compiled reward-model scoring call (None: batch_size). On CPU
      small scoring batches keep the tiny decoder's activations in cache: 16 rows score ~1.4x
      more sequences a second than 64 (bench/RESULTS.md section 11); the rewards are the same.
    control_rm_path: judge with this control RM instead of the gold reward (real data).
    disagreement_members: {selector: [member checkpoint paths]} whose disagreement flags that
      selector's choices (step 6), for selectors that are one checkpoint (a WARM average, the
      best member); a selector with several paths defaults to its own. The members' rewards
      are reused, never computed for this: a member must itself be a selector or a member of
      an ENS / WCO / UWO selector, else the selector is skipped (logged, in bon.json).
  """
  from warm_jax.data.datasets import load_arrays
  from warm_jax.policy.oracle import ControlRewardOracle, GoldOracle
  for name, value in (("OUTPUT_DIR", output_dir), ("DATA_DIR", data_dir), ("SFT_DIR", sft_path)):
    if not value:
      raise ValueError(f"{name} is not set: pass --gin.{name}=\"'/path'\"")
  if run_dir.is_done(output_dir):
    logging.info("best-of-N already done in %s", output_dir)
    with open(os.path.join(output_dir, RESULT_FILE)) as f:
      return json.load(f)
  if n_max < 1:
    raise ValueError(f"N_MAX={n_max}: must be >= 1")
  ns = tuple(ns) if ns else default_ns(n_max)
  if max(ns) > n_max or min(ns) < 1:
    raise ValueError(f"NS={ns}: every N must be in 1..N_MAX={n_max}")
  sources = parse_reward_sources(reward_models)
  members_of = _disagreement_members(sources, disagreement_members)
  partitioner = partitioner or Partitioner()
  t0 = time.time()

  prompts = load_arrays(data_dir, kind="prompts", split=split, length=prompt_len,
                        vocab_size=vocab_size)
  count = len(prompts["prompt_tokens"]) if num_prompts is None else int(num_prompts)
  if not 0 < count <= len(prompts["prompt_tokens"]):
    raise ValueError(f"NUM_PROMPTS={num_prompts}: prompts.{split} of {data_dir} has "
                     f"{len(prompts['prompt_tokens'])} prompts")
  prompts = {k: v[:count] for k, v in prompts.items()}
  limit, limit_source = trained_positions(
      (model_config, reward_model_config or model_config), data_dir=data_dir)
  check_positions(prompts["prompt_mask"], max_new_tokens=sampling.max_new_tokens, limit=limit,
                  source=limit_source, program="best-of-N",
                  closing_eos=sampling.eos_id is not None)
  per_prompt = n_max + 1  # the pool, then the independent reference sample
  rows = np.repeat(np.arange(count), per_prompt)
  tokens, mask = prompts["prompt_tokens"][rows], prompts["prompt_mask"][rows]
  index = prompts["prompt_index"][rows]

  # -- 1. sample once ---------------------------------------------------------------------------
  sampler = Sampler(model_config=model_config, partitioner=partitioner, config=sampling,
                    batch_size=batch_size, max_positions=limit, closing_eos=True)
  t_sample = time.time()
  samples = sampler.sample(sampler.place(ckpt_lib.load_params(sft_path)), tokens, mask,
                           seed=seed)
  t_sample = time.time() - t_sample
  logging.info("sampled %d candidates (%d prompts x %d) in %.1fs", len(rows), count,
               per_prompt, t_sample)

  # -- 2. score: oracle and every selector ------------------------------------------------------
  scorer = RewardScorer(model_config=reward_model_config or model_config,
                        partitioner=partitioner, batch_size=score_batch_size or batch_size)
  if control_rm_path:
    oracle_judge = ControlRewardOracle(scorer=scorer, params_path=control_rm_path,
                                       eos_id=sampling.eos_id)
  else:
    oracle_judge = GoldOracle(data_dir=data_dir, split=split)
  oracle_all = oracle_judge.score(prompt_index=index, prompt_tokens=tokens, prompt_mask=mask,
                                  response_tokens=samples.tokens,
                                  response_mask=samples.mask).reshape(count, per_prompt)
  seq_tokens, seq_mask, seq_response = candidate_sequences(tokens, mask, samples.tokens,
                                                           samples.mask, eos_id=sampling.eos_id)
  # ENS, WCO and UWO reuse their members' rewards: each checkpoint is scored once.
  rm_all, by_path = {}, {}
  for source in sources:
    if source.combine in PREDICTION_ENSEMBLES or len(source.paths) == 1:
      for path in source.paths:
        if path not in by_path:
          tree = scorer.place(ckpt_lib.load_params(path))
          by_path[path] = scorer.rewards(tree, seq_tokens, seq_mask, seq_response)
      rewards = source.combine_rewards(np.stack([by_path[p] for p in source.paths]))
    else:
      trees = [scorer.place(tree) for tree in source.load()]
      rewards = score_with_source(scorer, trees, seq_tokens, seq_mask, seq_response,
                                  source=source)
    rm_all[source.name] = rewards.reshape(count, per_prompt)
    logging.info("scored with %s (%s of %d)", source.name, source.combine, len(source.paths))

  # -- 3-4. curves and win rates ----------------------------------------------------------------
  curves = bon_curves(oracle=oracle_all[:, :n_max],
                      rm_scores={k: v[:, :n_max] for k, v in rm_all.items()}, ns=ns,
                      reference=oracle_all[:, n_max], confidence=confidence, seed=seed)
  curves["disagreement"] = _disagreement(oracle_all[:, :n_max], rm_all, by_path, members_of,
                                         ns, count=count, per_prompt=per_prompt, n_max=n_max)
  lengths = samples.lengths.reshape(count, per_prompt)
  result = {
      "sft_path": sft_path, "data_dir": data_dir, "split": split, "num_prompts": count,
      "n_max": n_max, "oracle": oracle_judge.name,
      "sampling": dataclasses.asdict(sampling),
      "reward_models": {s.name: {"paths": list(s.paths), "combine": s.combine,
                                 **({"lambda": s.uwo_lambda} if s.combine == "uwo" else {})}
                        for s in sources},
      "candidates": {"mean_oracle": float(oracle_all.mean()),
                     "mean_length": float(lengths.mean()),
                     "eos_rate": float(samples.ended.mean()),
                     "length_oracle_corr": _corr(lengths.ravel(), oracle_all.ravel())},
      "curves": curves,
      "timing": {"sample_s": round(t_sample, 2), "total_s": round(time.time() - t0, 2),
                 "sampled_tokens_per_s": float(samples.lengths.sum() / max(t_sample, 1e-9))},
  }
  if jax.process_index() == 0:
    os.makedirs(output_dir, exist_ok=True)
    np.savez(os.path.join(output_dir, SCORES_FILE), oracle=oracle_all, lengths=lengths,
             **{f"rm/{k}": v for k, v in rm_all.items()})
    result["plots"] = plot_bon(curves, os.path.join(output_dir, "plots")) + \
        plot_disagreement(curves["disagreement"], os.path.join(output_dir, "plots"))
    ckpt_lib.atomic_write_text(os.path.join(output_dir, RESULT_FILE),
                               json.dumps(result, indent=1) + "\n")
    run_dir.write_done(output_dir, {"wall_s": result["timing"]["total_s"]})
  _log_summary(curves)
  return result


def _disagreement_members(sources, given: Mapping[str, Sequence[str]] | None
                          ) -> dict[str, list[str]]:
  """{selector: member paths} for step 6: a selector's own paths when it has several, then
  the explicit `given` entries (checked here, before anything is sampled)."""
  names = [s.name for s in sources]
  out = {s.name: list(s.paths) for s in sources if len(s.paths) > 1}
  for name, paths in (given or {}).items():
    if name not in names:
      raise ValueError(f"DISAGREEMENT_MEMBERS names {name!r}, which is not in REWARD_MODELS "
                       f"({names}): use a selector's name as the key")
    if isinstance(paths, str) or len(paths) < 2 or not all(isinstance(p, str) for p in paths):
      raise ValueError(f"DISAGREEMENT_MEMBERS[{name!r}] = {paths!r}: give a list of >= 2 "
                       "member checkpoint paths (disagreement needs two members)")
    if len(set(paths)) != len(paths):
      raise ValueError(f"DISAGREEMENT_MEMBERS[{name!r}] lists a checkpoint twice: {paths}")
    out[name] = list(paths)
  return {name: out[name] for name in names if name in out}  # REWARD_MODELS' order


def _disagreement(oracle, rm_all, by_path, members_of, ns, *, count, per_prompt, n_max):
  """Step 6 from the rewards already computed; selectors whose members were not scored are
  skipped with the reason logged."""
  skipped, members = {}, {}
  for name, paths in members_of.items():
    missing = [p for p in paths if p not in by_path]
    if missing:
      skipped[name] = (f"members {missing} were not scored in this stage (add each as a "
                       "selector to REWARD_MODELS to get their rewards)")
      logging.info("disagreement of %s skipped: %s", name, skipped[name])
      continue
    flat = [p for p in paths if np.ptp(by_path[p].reshape(count, per_prompt)[:, :n_max]) == 0]
    if flat:  # nothing to standardise (`disagreement.member_disagreement` refuses them)
      skipped[name] = f"members {flat} give one reward to every candidate"
      logging.warning("disagreement of %s skipped: %s", name, skipped[name])
      continue
    members[name] = paths
  singles = sorted(n for n in rm_all if n not in members_of)
  if singles:
    logging.info("disagreement: no members given for the single checkpoints %s "
                 "(DISAGREEMENT_MEMBERS)", singles)
  scores = {p: by_path[p].reshape(count, per_prompt)[:, :n_max]
            for paths in members.values() for p in paths}
  return disagreement_curves(oracle=oracle, rm_scores={k: v[:, :n_max] for k, v in
                                                       rm_all.items()},
                             members=members, member_scores=scores, ns=ns, skipped=skipped)


def _corr(x: np.ndarray, y: np.ndarray) -> float:
  if np.std(x) == 0 or np.std(y) == 0:
    return float("nan")
  return float(np.corrcoef(x, y)[0, 1])


def _log_summary(curves: dict[str, Any]) -> None:
  for name, entry in curves["selectors"].items():
    logging.info("BoN %-14s oracle by N %s: %s", name, curves["n"],
                 " ".join(f"{v:.2f}" for v in entry["oracle"]))
  for name, entry in curves.get("disagreement", {}).get("selectors", {}).items():
    logging.info("BoN %-14s disagreement AUROC by N: %s", name,
                 " ".join("-" if v is None else f"{v:.2f}" for v in entry["auroc"]))
