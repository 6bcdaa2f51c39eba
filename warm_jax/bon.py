"""Best-of-N: N candidates per prompt from the SFT policy, a reward model picks one, the oracle
judges it (PAPER.md figs 6-7).

Where it sits: after the RM members are trained and averaged. One stage (gin/bon.gin):

  1. Sample N_max + 1 candidates per prompt ONCE from the SFT policy (temperature 0.9): the
     first N_max form the pool every selector picks from, the last is an independent "random
     SFT sample" the selections are compared against.
  2. Score every candidate with the oracle (`warm_jax.oracle`: the gold reward of the decoded
     text) and with each selector RM (`warm_jax.reward_sources`: a member, WARM M, ENS M,
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

Writes OUTPUT_DIR/bon.json, OUTPUT_DIR/bon_scores.npz (every candidate's oracle and RM
rewards, to recompute any curve), OUTPUT_DIR/plots/bon_oracle_vs_kl.png (fig. 6),
OUTPUT_DIR/plots/bon_win_rate_vs_n.png (fig. 7) and OUTPUT_DIR/DONE.

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

from warm_jax import checkpoints as ckpt_lib
from warm_jax import win_rates as wr
from warm_jax.gao_fits import gao_fit
from warm_jax.paired_stats import paired_difference
from warm_jax.models import TransformerConfig
from warm_jax.partitioning import Partitioner
from warm_jax.reward_sources import (PREDICTION_ENSEMBLES, parse_reward_sources,
                                     score_with_source)
from warm_jax.sampling import (Sampler, SamplingConfig, candidate_sequences, check_positions,
                               trained_positions)
from warm_jax.scoring import RewardScorer

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
  paths.append(os.path.join(plot_dir, "bon_oracle_vs_kl.png"))
  fig.tight_layout()
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)
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
  paths.append(os.path.join(plot_dir, "bon_win_rate_vs_n.png"))
  fig.tight_layout()
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)
  return paths


def best_of_n(*, output_dir: str | None, data_dir: str | None, sft_path: str | None,
              reward_models: Mapping[str, Any], model_config: TransformerConfig,
              reward_model_config: TransformerConfig | None = None,
              sampling: SamplingConfig = SamplingConfig(), n_max: int = 64,
              ns: Sequence[int] | None = None, split: str = "train",
              num_prompts: int | None = None, seed: int = 0, batch_size: int = 64,
              prompt_len: int | None = None, vocab_size: int | None = None,
              control_rm_path: str | None = None, confidence: float = 0.95,
              partitioner: Partitioner | None = None) -> dict[str, Any]:
  """Runs the best-of-N stage (module docstring) and writes OUTPUT_DIR; returns the result.

  Args:
    reward_models: {selector name: spec} (see `warm_jax.reward_sources`).
    n_max: candidates per prompt in the pool (the paper goes to 64 and beyond).
    ns: the N values (default 1, 2, 4, ..., n_max).
    split: the prompt split ('train': held-out BoN/RL prompts; 'validation').
    num_prompts: use the first this many prompts (None: all).
    control_rm_path: judge with this control RM instead of the gold reward (real data).
  """
  from warm_jax.data.datasets import load_arrays
  from warm_jax.oracle import ControlRewardOracle, GoldOracle
  for name, value in (("OUTPUT_DIR", output_dir), ("DATA_DIR", data_dir), ("SFT_DIR", sft_path)):
    if not value:
      raise ValueError(f"{name} is not set: pass --gin.{name}=\"'/path'\"")
  if os.path.exists(os.path.join(output_dir, "DONE")):
    logging.info("best-of-N already done in %s", output_dir)
    with open(os.path.join(output_dir, RESULT_FILE)) as f:
      return json.load(f)
  if n_max < 1:
    raise ValueError(f"N_MAX={n_max}: must be >= 1")
  ns = tuple(ns) if ns else default_ns(n_max)
  if max(ns) > n_max or min(ns) < 1:
    raise ValueError(f"NS={ns}: every N must be in 1..N_MAX={n_max}")
  sources = parse_reward_sources(reward_models)
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
                        partitioner=partitioner, batch_size=batch_size)
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
    result["plots"] = plot_bon(curves, os.path.join(output_dir, "plots"))
    ckpt_lib.atomic_write_text(os.path.join(output_dir, RESULT_FILE),
                               json.dumps(result, indent=1) + "\n")
    ckpt_lib.atomic_write_text(os.path.join(output_dir, "DONE"), json.dumps(
        {"wall_s": result["timing"]["total_s"]}) + "\n")
  _log_summary(curves)
  return result


def _corr(x: np.ndarray, y: np.ndarray) -> float:
  if np.std(x) == 0 or np.std(y) == 0:
    return float("nan")
  return float(np.corrcoef(x, y)[0, 1])


def _log_summary(curves: dict[str, Any]) -> None:
  for name, entry in curves["selectors"].items():
    logging.info("BoN %-14s oracle by N %s: %s", name, curves["n"],
                 " ".join(f"{v:.2f}" for v in entry["oracle"]))
