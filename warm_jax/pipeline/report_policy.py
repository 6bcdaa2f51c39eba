"""The policy half of the experiment's report: best-of-N, RL and win-rate results gathered from
the stage dirs into metrics.json, the paper's policy findings (figs 6-9) and the report's
policy tables (its figures: `warm_jax.pipeline.policy_plots`).

Where it sits: called by `warm_jax.pipeline.report` (the RM half lives there) after
`python -m warm_jax.experiment` ran the `bon`, `rl/<reward>` and `win_rates` stages. Every
number is read from what those stages wrote (bon/bon.json, rl/<reward>/metrics.jsonl,
win_rates/win_rates.json); verdicts follow the rules written next to each finding.
"""

from __future__ import annotations

import os
from typing import Any

from warm_jax.core.checkpoints import read_json
from warm_jax.pipeline.presets import CORRUPT_SUFFIX
from warm_jax.pipeline.verdicts import verdict
from warm_jax.policy.win_rates import FINAL_SUFFIX

RL_CURVE_KEYS = ("rewards/proxy", "rewards/oracle", "rewards/kl_to_sft", "generation/length",
                 "generation/entropy")
RL_EVAL_KEYS = ("eval/proxy_reward", "eval/oracle_reward", "eval/kl_to_sft", "eval/length",
                "eval/normalized_reward", "eval/kl_term",  # these two: None in older runs
                # member disagreement (rl.DISAGREEMENT_EVAL_KEYS): None in older runs, in runs
                # without DISAGREEMENT_MEMBERS and in an eval where one is undefined
                "eval/disagreement", "eval/disagreement_spearman", "eval/disagreement_auroc")


def collect_bon(bon_dir: str) -> dict[str, Any] | None:
  """bon.json -> {n, kl, sft_sample_oracle, selectors: {name: curves}, win_rates_at_n_max}."""
  result = read_json(os.path.join(bon_dir, "bon.json"))
  if result is None:
    return None
  curves = result["curves"]
  keep = ("oracle", "oracle_sem", "oracle_all_subsets", "proxy", "gao_fit")
  selectors = {name: {k: entry[k] for k in keep if k in entry}
               for name, entry in curves["selectors"].items()}
  for name, entry in curves["selectors"].items():
    selectors[name]["win_rate_vs_sft"] = entry["win_rate_vs_sft"]
  # pairwise win rates only at the largest N (all N are in bon/bon.json)
  at_max = {key: rates[-1] for key, rates in curves["win_rates"].items()}
  # paired per-prompt differences likewise at the largest N (bon.json: runs since issue 14)
  paired = {key: diffs[-1] for key, diffs in curves.get("paired_differences", {}).items()}
  out = {"n": curves["n"], "kl": curves["kl"], "num_prompts": result["num_prompts"],
         "sft_sample_oracle": curves["sft_sample_oracle"], "selectors": selectors,
         "win_rates_at_n_max": at_max, "paired_differences_at_n_max": paired,
         "candidates": result["candidates"], "reward_models": result["reward_models"]}
  if "disagreement" in curves:  # member disagreement as uncertainty (runs since issue 14)
    out["disagreement"] = curves["disagreement"]
  return out


def collect_rl(rl_dirs: dict[str, str]) -> dict[str, Any] | None:
  """Per RL run: training curves (per step) and evaluation curves (per eval step, from step 0,
  the SFT policy, in runs that evaluated it), where the evaluated oracle reward peaked, and
  Gao et al.'s RL fit of the oracle gain over step 0 vs KL (`gao_fits.rl_eval_fit`)."""
  from warm_jax.policy.gao_fits import rl_eval_fit
  from warm_jax.core.metrics_writer import read_metrics
  out = {}
  for name, model_dir in rl_dirs.items():
    if not os.path.exists(os.path.join(model_dir, "metrics.jsonl")):
      continue
    rows = read_metrics(model_dir)
    train = {"step": [r["step"] for r in rows if "rewards/oracle" in r]}
    for key in RL_CURVE_KEYS:
      train[key] = [r[key] for r in rows if "rewards/oracle" in r]
    evals = [r for r in rows if "eval/oracle_reward" in r]
    ev = {"step": [r["step"] for r in evals]}
    for key in RL_EVAL_KEYS:
      ev[key] = [r.get(key) for r in evals]
    entry = {"train": train, "eval": ev, "reward_calibration": read_json(
        os.path.join(model_dir, "reward_calibration.json")), "gao_fit": rl_eval_fit(rows)}
    if evals:
      oracle = ev["eval/oracle_reward"]
      best = max(range(len(oracle)), key=lambda i: (oracle[i], -i))
      entry.update(best_step=ev["step"][best], best_oracle=oracle[best],
                   final_oracle=oracle[-1], final_proxy=ev["eval/proxy_reward"][-1],
                   first_oracle=oracle[0], kl_at_best=ev["eval/kl_to_sft"][best],
                   final_kl=ev["eval/kl_to_sft"][-1])
    out[name] = entry
  return out or None


def collect_win_rates(win_dir: str) -> dict[str, Any] | None:
  result = read_json(os.path.join(win_dir, "win_rates.json"))
  if result is None:
    return None
  return {k: result[k] for k in ("win_rates", "mean_oracle", "mean_length", "policies",
                                  "num_prompts", "split") if k in result}


def rl_groups(rl: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """RL runs grouped by KL coefficient and by the setting of their reward models:
  {'' or '_kl<alpha>' or '_corrupt': {reward name: run}} (ExperimentPlan.rl_runs' names)."""
  groups: dict[str, dict[str, Any]] = {}
  for name, run in rl.items():
    reward, sep, alpha = name.rpartition("_kl")
    if name.endswith(CORRUPT_SUFFIX) and name != CORRUPT_SUFFIX:
      groups.setdefault(CORRUPT_SUFFIX, {})[name[:-len(CORRUPT_SUFFIX)]] = run
    elif sep and reward:
      groups.setdefault(f"_kl{alpha}", {})[reward] = run
    else:
      groups.setdefault("", {})[name] = run
  return groups


def group_label(suffix: str) -> str:
  """' (alpha a)' for a KL sweep's group, ' (corrupted-label RMs)' for the corrupted setting's."""
  if suffix == CORRUPT_SUFFIX:
    return " (RMs trained on corrupted labels)"
  return f" (alpha {suffix[3:]})" if suffix else ""


# -- findings -----------------------------------------------------------------------------------
def _interval_verdict(rate: dict[str, float]) -> str:
  if rate["low"] > 0.5:
    return "reproduced"
  if rate["high"] < 0.5:
    return "not reproduced"
  return "inconclusive (the 95% interval contains 0.5)"


def directional_verdict(effect: float, se: float, *, se_text: str | None = None) -> str:
  """effect > 0 is the paper's direction; within one standard error we say so (shared with
  the RM findings of `warm_jax.pipeline.report`, whose effects are accuracies in points)."""
  if effect > se:
    return "reproduced"
  if effect < -se:
    return "not reproduced"
  return f"inconclusive (within 1 s.e. = {se_text or f'{se:.3f}'})"


def paired_difference(paired: dict[str, dict[str, float]], a: str, b: str
                      ) -> dict[str, float] | None:
  """The paired per-prompt difference a - b from bon.json's `paired_differences` (stored once
  per pair, in either order), or None when that pair was not computed."""
  if f"{a}-{b}" in paired:
    return paired[f"{a}-{b}"]
  if f"{b}-{a}" in paired:
    d = paired[f"{b}-{a}"]
    return {**d, "diff": -d["diff"], "low": -d["high"], "high": -d["low"]}
  return None


def _bon_finding(fid: str, finding: str, a: str, b: str, bon: dict[str, Any]
                 ) -> dict[str, Any]:
  """A best-of-N comparison a - b at the largest N: the paired per-prompt interval and its
  verdict (`report.verdict`, kind 'positive'); an older bon.json without paired differences
  falls back to the difference of the all-subsets means against one standard error."""
  sel, n_max = bon["selectors"], bon["n"][-1]
  va, vb = sel[a]["oracle_all_subsets"][-1], sel[b]["oracle_all_subsets"][-1]
  wr = bon.get("win_rates_at_n_max", {}).get(f"{a}_vs_{b}")
  rate = (f"; win rate {wr['rate']:.3f} [{wr['low']:.3f}, {wr['high']:.3f}]" if wr else "")
  d = paired_difference(bon.get("paired_differences_at_n_max") or {}, a, b)
  out = {"id": fid, "finding": finding, "kind": "positive", "unit": "reward",
         "effect": va - vb}
  if d is not None:
    out.update(rule=f"oracle reward of the choice at N={n_max} (all-subsets mean), a - b paired "
                    "over prompts: 95% interval above 0",
               numbers=f"{a} {va:.3f} vs {b} {vb:.3f}: {d['diff']:+.3f} [{d['low']:+.3f}, "
                       f"{d['high']:+.3f}] (SFT sample {bon['sft_sample_oracle']:.3f}){rate}",
               low=d["low"], high=d["high"],
               verdict=verdict("positive", d["low"], d["high"]))
  else:
    se = max(sel[a]["oracle_sem"][-1], sel[b]["oracle_sem"][-1])
    out.update(rule=f"oracle reward of the choice at N={n_max} (all-subsets mean) higher, "
                    "beyond 1 s.e.",
               numbers=f"{a} {va:.3f} vs {b} {vb:.3f} (SFT sample "
                       f"{bon['sft_sample_oracle']:.3f}){rate}",
               verdict=directional_verdict(va - vb, se))
  return out


def _bon_findings(metrics: dict[str, Any], key: str, setting: str, label: str
                  ) -> list[dict[str, Any]]:
  """The best-of-N comparisons of one setting's selectors (ids '<key>/...'): WARM M vs the
  setting's ID-val-best member and vs ENS M, and the largest M vs the smallest."""
  out, bon = [], metrics[key]
  sel = bon["selectors"]
  members = [n for n in sel if n.startswith("member_")]
  best_member = (metrics.get("rm", {}).get(setting, {}).get("best_member")
                 if metrics.get("rm") else None) or (members[0] if members else None)
  warms = sorted((n for n in sel if n.startswith("warm_")), key=lambda n: int(n.split("_")[1]))
  for name in warms:
    m = name.split("_")[1]
    if best_member in sel:
      out.append(_bon_finding(f"{key}/warm_{m}_vs_best", f"{label}: WARM M={m} selects better "
                              "than the best single RM (fig. 6-7)", name, best_member, bon))
    if f"ens_{m}" in sel:
      out.append(_bon_finding(f"{key}/warm_{m}_vs_ens_{m}", f"{label}: WARM M={m} selects "
                              f"better than ENS M={m} (fig. 6)", name, f"ens_{m}", bon))
  if len(warms) > 1:
    out.append(_bon_finding(f"{key}/{warms[-1]}_vs_{warms[0]}",
                            f"{label}: more members help WARM (M={warms[-1].split('_')[1]} vs "
                            f"M={warms[0].split('_')[1]}, fig. 6)", warms[-1], warms[0], bon))
  return out


def policy_findings(metrics: dict[str, Any]) -> list[dict[str, Any]]:
  """The policy findings (docs/paper.md figs 6-9). Those that compare two methods carry a stable
  `id`, a `kind` and an `effect` in the paper's direction (`unit`: 'reward' for oracle-reward
  differences, 'points' for a win rate minus 50%), so `warm_jax.seeds` aggregates them across
  seeds like the RM findings."""
  out = []
  for key, setting, label in (("bon", "clean", "BoN"),
                              ("bon_corrupt", "corrupt", "BoN (RMs trained on corrupted labels)")):
    if metrics.get(key):
      out += _bon_findings(metrics, key, setting, label)
  rl = metrics.get("rl") or {}
  wins = (metrics.get("win_rates") or {}).get("win_rates", {})
  for suffix, group in rl_groups(rl).items():
    alpha = group_label(suffix)
    single = group.get("best_member")
    if not single or "best_oracle" not in single:
      continue
    fell = single["best_oracle"] - single["final_oracle"]
    proxy_rose = single["final_proxy"] > single["eval"]["eval/proxy_reward"][0]
    out.append({
        "id": f"rl{suffix}/single_final_vs_first", "kind": "negative", "unit": "reward",
        "effect": single["final_oracle"] - single["first_oracle"],
        "finding": f"RL with a single RM{alpha}: reward hacking (oracle peaks then falls while "
                   "the proxy rises, fig. 8)",
        "rule": "final eval oracle below its peak while the final proxy is above the first "
                "(across seeds: final - first oracle below 0)",
        "numbers": f"oracle: first {single['first_oracle']:.3f}, peak {single['best_oracle']:.3f} "
                   f"at step {single['best_step']}, final {single['final_oracle']:.3f}; proxy "
                   f"first {single['eval']['eval/proxy_reward'][0]:.3f}, final "
                   f"{single['final_proxy']:.3f}",
        "verdict": ("observed" if fell > 0 and proxy_rose else "not observed") +
                   " in this run"})
    single_fall = _fall_after_peak(wins, "best_member", suffix, single)
    if single_fall:
      rate = single_fall["rate"]
      out.append({
          "id": f"rl{suffix}/single_fall_after_peak", "kind": "positive", "unit": "points",
          "effect": rate["rate"] - 0.5, "low": rate["low"] - 0.5, "high": rate["high"] - 0.5,
          "finding": f"RL with a single RM{alpha}: the policy falls after its peak (its best "
                     "step beats its final step on held-out prompts, fig. 8)",
          "rule": "oracle win rate of the best step over the final step > 0.5 with the 95% "
                  "interval above 0.5, on prompts that played no part in picking the best step",
          "numbers": single_fall["numbers"],
          "verdict": single_fall["verdict"]})
    for name in sorted(n for n in group if n.startswith("warm_") and "best_oracle" in group[n]):
      w = group[name]
      label = name.replace("_", " M=").upper()
      m = name.split("_")[1]
      out.append({
          "id": f"rl{suffix}/warm_{m}_final_vs_single", "kind": "positive", "unit": "reward",
          "effect": w["final_oracle"] - single["final_oracle"],
          "finding": f"RL{alpha}: {label} delays hacking (higher oracle reward at the end and at "
                     "the peak than the single RM, fig. 8)",
          "rule": "final and peak eval oracle reward both higher (across seeds: the final "
                  "difference)",
          "numbers": f"final {w['final_oracle']:.3f} vs {single['final_oracle']:.3f}; peak "
                     f"{w['best_oracle']:.3f} (step {w['best_step']}) vs "
                     f"{single['best_oracle']:.3f} (step {single['best_step']})",
          "verdict": "reproduced" if (w["final_oracle"] > single["final_oracle"] and
                                      w["best_oracle"] > single["best_oracle"]) else
                     "not reproduced"})
      out.append({
          "id": f"rl{suffix}/warm_{m}_peak_vs_single", "kind": "positive", "unit": "reward",
          "effect": w["best_oracle"] - single["best_oracle"],
          "finding": f"RL{alpha}: {label} peaks higher than the single RM (fig. 8)",
          "rule": "peak eval oracle reward higher",
          "numbers": f"peak {w['best_oracle']:.3f} (step {w['best_step']}, KL "
                     f"{w.get('kl_at_best', float('nan')):.2f}) vs {single['best_oracle']:.3f} "
                     f"(step {single['best_step']}, KL "
                     f"{single.get('kl_at_best', float('nan')):.2f})",
          "verdict": ("reproduced" if w["best_oracle"] > single["best_oracle"] else
                      "not reproduced") + " in this run"})
      whole_run = _mean_after_step_0(w, single)
      if whole_run is not None:
        out.append({
            "id": f"rl{suffix}/warm_{m}_mean_vs_single", "kind": "positive", "unit": "reward",
            "effect": whole_run["effect"],
            "finding": f"RL{alpha}: {label}'s policy is better than the single RM's over the whole "
                       "run (mean eval oracle reward after step 0, fig. 8)",
            "rule": "mean of the eval oracle rewards at steps > 0 higher (both runs evaluated at "
                    "the same steps, on the same prompts, with the same sampling seed); "
                    "registered 2026-12-07 after seeds 0-5, so seeds 6+ are its test",
            "numbers": whole_run["numbers"],
            "verdict": ("reproduced" if whole_run["effect"] > 0 else "not reproduced") +
                       " in this run"})
      warm_fall = _fall_after_peak(wins, name, suffix, w)
      if single_fall and warm_fall:
        out.append({
            "id": f"rl{suffix}/warm_{m}_falls_less", "kind": "positive", "unit": "points",
            "effect": single_fall["rate"]["rate"] - warm_fall["rate"]["rate"],
            "finding": f"RL{alpha}: {label} falls less after its peak than the single RM (held-out "
                       "prompts, fig. 8)",
            "rule": "win rate of best over final step: the single RM's minus WARM's (above 0: "
                    "WARM fell less; across seeds: that difference)",
            "numbers": f"single RM: {single_fall['numbers']}; {label}: {warm_fall['numbers']}",
            "verdict": ("not reproduced in this run"
                        if single_fall["rate"]["rate"] <= warm_fall["rate"]["rate"] else
                        "reproduced in this run" if single_fall["rate"]["low"] > 0.5 else
                        "inconclusive (the single-RM policy did not fall measurably after its "
                        "peak)")})
      rate = wins.get(f"{name}{suffix}_vs_best_member{suffix}")
      if rate:
        # A best step with KL 0 is the SFT policy itself (no update yet): then the win rate
        # only says how the single-RM policy compares with SFT, not what WARM did; it is left
        # out of the across-seed aggregate (no effect).
        unchanged = [n for n, run in ((label, w), ("the single RM", single))
                     if run.get("kl_at_best", 1.0) == 0.0]
        out.append({
            "id": f"rl{suffix}/win_rate/warm_{m}", "kind": "positive", "unit": "points",
            "effect": None if unchanged else rate["rate"] - 0.5,
            "low": None if unchanged else rate["low"] - 0.5,
            "high": None if unchanged else rate["high"] - 0.5,
            "finding": f"RL{alpha}: the {label} policy beats the single-RM policy, both at "
                       "their best step (paper: 79.4% for M=6, fig. 9)",
            "rule": "oracle win rate > 0.5 with the 95% interval above 0.5 (not informative "
                    "when a best step is the unchanged SFT policy, KL 0)",
            "numbers": f"win rate {rate['rate']:.3f} [{rate['low']:.3f}, {rate['high']:.3f}] "
                       f"over {rate['n']} samples; best steps {w['best_step']} (KL "
                       f"{w.get('kl_at_best', float('nan')):.2f}) vs {single['best_step']} (KL "
                       f"{single.get('kl_at_best', float('nan')):.2f})",
            "verdict": (f"not informative ({' and '.join(unchanged)} at its best step is the "
                        "SFT policy)") if unchanged else _interval_verdict(rate)})
      ens = group.get(f"ens_{m}")
      if ens and "best_oracle" in ens:
        out += _warm_vs_ens_findings(m, suffix, alpha, w, ens, wins)
  return out


def _warm_vs_ens_findings(m: str, suffix: str, alpha: str, w: dict[str, Any],
                          ens: dict[str, Any], wins: dict[str, Any]) -> list[dict[str, Any]]:
  """RL with WARM M against RL with ENS M of the same members (fig. 8: 'ENS M=2 hacks early';
  with corrupted labels WA memorises fewer flipped labels, figs. 4-5): the final eval oracle
  reward, and the held-out win rate of the final policies (the fall after a peak is what
  hacking leaves; the best steps are compared in win_rate/warm_M)."""
  out = [{
      "id": f"rl{suffix}/warm_{m}_final_vs_ens_{m}", "kind": "positive", "unit": "reward",
      "effect": w["final_oracle"] - ens["final_oracle"],
      "finding": f"RL{alpha}: WARM M={m}'s policy ends above ENS M={m}'s (the same members "
                 "averaged in weights vs in predictions, fig. 8)",
      "rule": "final eval oracle reward higher (across seeds: the difference)",
      "numbers": f"final {w['final_oracle']:.3f} (KL {w.get('final_kl', float('nan')):.2f}) vs "
                 f"{ens['final_oracle']:.3f} (KL {ens.get('final_kl', float('nan')):.2f}); peak "
                 f"{w['best_oracle']:.3f} (step {w['best_step']}) vs {ens['best_oracle']:.3f} "
                 f"(step {ens['best_step']})",
      "verdict": ("reproduced" if w["final_oracle"] > ens["final_oracle"] else
                  "not reproduced") + " in this run"}]
  rate = wins.get(f"warm_{m}{suffix}{FINAL_SUFFIX}_vs_ens_{m}{suffix}{FINAL_SUFFIX}")
  if rate:
    out.append({
        "id": f"rl{suffix}/win_rate/warm_{m}_vs_ens_{m}_final", "kind": "positive",
        "unit": "points", "effect": rate["rate"] - 0.5, "low": rate["low"] - 0.5,
        "high": rate["high"] - 0.5,
        "finding": f"RL{alpha}: WARM M={m}'s final policy beats ENS M={m}'s on held-out "
                   "prompts",
        "rule": "oracle win rate > 0.5 with the 95% interval above 0.5",
        "numbers": f"win rate {rate['rate']:.3f} [{rate['low']:.3f}, {rate['high']:.3f}] "
                   f"over {rate['n']} samples (final steps)",
        "verdict": _interval_verdict(rate)})
  return out


def _mean_after_step_0(run: dict[str, Any], single: dict[str, Any]) -> dict[str, Any] | None:
  """A run's mean eval oracle reward at steps > 0 minus the single-RM run's (the area under
  the oracle curve; the peak and the final eval are single noisy evals, this averages them
  all), with its numbers; None when the two runs were not evaluated at the same steps."""
  steps = list(run["eval"]["step"])
  if steps != list(single["eval"]["step"]):
    return None
  after = [i for i, step in enumerate(steps) if step > 0]
  if not after:
    return None
  ours, theirs = (sum(r["eval"]["eval/oracle_reward"][i] for i in after) / len(after)
                  for r in (run, single))
  return {"effect": ours - theirs,
          "numbers": f"{ours:.3f} vs {theirs:.3f} over {len(after)} evals (steps "
                     f"{steps[after[0]]}-{steps[after[-1]]})"}


def _fall_after_peak(wins: dict[str, Any], reward: str, suffix: str,
                     run: dict[str, Any]) -> dict[str, Any] | None:
  """The win rate of an RL run at its best step over itself at its final step (win_rates keys
  '<run>_vs_<run>_final'), with its numbers and verdict; None when the stage did not compare
  them (an older run). A run whose best step is its final step ties itself on every prompt."""
  name = f"{reward}{suffix}"
  rate = wins.get(f"{name}_vs_{name}{FINAL_SUFFIX}")
  if not rate:
    return None
  steps = f"best step {run['best_step']} vs final step {run['eval']['step'][-1]}"
  if run["best_step"] == run["eval"]["step"][-1]:
    return {"rate": rate, "numbers": f"win rate {rate['rate']:.3f}; {steps}",
            "verdict": "not observed (its best step is its final step)"}
  return {"rate": rate, "verdict": _interval_verdict(rate),
          "numbers": f"win rate {rate['rate']:.3f} [{rate['low']:.3f}, {rate['high']:.3f}] over "
                     f"{rate['n']} samples; {steps}"}


# -- tables -------------------------------------------------------------------------------------
def tables_md(metrics: dict[str, Any]) -> list[str]:
  """report.md sections for best-of-N, RL and the win rates."""
  lines = []
  for key, title in (("bon", ""), ("bon_corrupt", ", the corrupted setting's reward models")):
    bon = metrics.get(key)
    if bon:
      lines += _bon_md(bon, title)
  rl = metrics.get("rl")
  if rl:
    lines += ["", "## RL (evaluated on held-out prompts; the first eval is step 0, the SFT "
              "policy, in runs that evaluated it)", "",
              "| reward model | oracle first (step) | oracle peak (step) | oracle final | "
              "proxy final | KL final | alpha * KL final | sampling entropy per token, "
              "first -> last 10 updates | Gao fit d(a - b log d): a, b, peak KL, peak gain |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, run in rl.items():
      if "best_oracle" in run:
        kl_term = run["eval"].get("eval/kl_term", [None])[-1]
        lines.append(f"| {name} | {run['first_oracle']:.3f} ({run['eval']['step'][0]}) | "
                     f"{run['best_oracle']:.3f} ({run['best_step']}) | "
                     f"{run['final_oracle']:.3f} | {run['final_proxy']:.3f} | "
                     f"{run['final_kl']:.2f} | "
                     f"{'-' if kl_term is None else f'{kl_term:.3f}'} | "
                     f"{_entropy_text(run.get('train', {}).get('generation/entropy'))} | "
                     f"{_fit_text(run.get('gao_fit'))} |")
    lines += rl_disagreement_md(rl)
  wins = metrics.get("win_rates")
  if wins:
    lines += ["", f"## Oracle win rates of the RL policies at their best step "
              f"({wins.get('num_prompts')} prompts, ties split, 95% bootstrap interval)", "",
              "| A vs B | win rate of A |", "|---|---|"]
    for key, rate in wins["win_rates"].items():
      a, b = key.split("_vs_")
      if a.endswith(FINAL_SUFFIX) or b.endswith(FINAL_SUFFIX):
        if b == f"{a}{FINAL_SUFFIX}":  # a run's best step vs its final step, only
          lines.append(f"| {a} (best step) vs {a} (final step) | {rate['rate']:.3f} "
                       f"[{rate['low']:.3f}, {rate['high']:.3f}] |")
      elif a < b or "sft" in (a, b):
        lines.append(f"| {a} vs {b} | {rate['rate']:.3f} [{rate['low']:.3f}, "
                     f"{rate['high']:.3f}] |")
  return lines


def _bon_md(bon: dict[str, Any], title: str) -> list[str]:
  """report.md's best-of-N section (one per setting of the selectors)."""
  lines = ["", f"## Best-of-N{title} (oracle reward of the choice, {bon['num_prompts']} "
           f"prompts; a random SFT sample scores {bon['sft_sample_oracle']:.3f})", "",
           "| selector | " + " | ".join(f"N={n}" for n in bon["n"]) + " |",
           "|---" * (len(bon["n"]) + 1) + "|"]
  for name, entry in bon["selectors"].items():
    values = entry.get("oracle_all_subsets", entry["oracle"])
    lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
  fits = {name: e["gao_fit"] for name, e in bon["selectors"].items() if e.get("gao_fit")}
  if fits:
    lines += ["", "Gao et al.'s fit of the oracle gain over the pool mean, R(d) = d (a - b d), "
              "d = sqrt(KL):", "", "| selector | a, b, peak KL, peak gain | rmse |",
              "|---|---|---|"]
    lines += [f"| {name} | {_fit_text(fit)} | {fit['rmse']:.3f} |"
              for name, fit in fits.items()]
  return lines + disagreement_md(bon.get("disagreement"))


def _entropy_text(entropy: list[float] | None, window: int = 10) -> str:
  """The rollouts' sampling entropy per response token, the mean of the first and of the last
  `window` updates: where it collapses towards 0 the responses to a prompt become one response,
  the leave-one-out advantages vanish and the policy stops moving (docs/policy.md, "Four times
  the RL budget")."""
  values = [v for v in (entropy or []) if v is not None]
  if not values:
    return "-"
  head, tail = values[:window], values[-window:]
  return f"{sum(head) / len(head):.3f} -> {sum(tail) / len(tail):.3f}"


def disagreement_md(disagreement: dict[str, Any] | None) -> list[str]:
  """report.md table of best-of-N's member disagreement (bon.json curves.disagreement): per
  selector, at N_max, the disagreement of its choices (vs the pool's mean), how often a choice
  is wrong, the correlations with regret, and the AUROC of flagging wrong choices at each N."""
  if not disagreement or not (disagreement.get("selectors") or disagreement.get("skipped")):
    return []
  ns = disagreement["n"]
  shown = [i for i, n in enumerate(ns) if n > 1]  # N = 1: nothing is wrong, AUROC undefined
  fmt = lambda v: "-" if v is None else f"{v:.2f}"
  lines = ["", f"Member disagreement as uncertainty (the spread of the members' rewards of a "
           f"choice, each member standardised over the pool): at N={ns[-1]}, the mean "
           "disagreement of the choices (the pool's mean in brackets), the share of wrong "
           "choices (oracle below the median of its N candidates), Pearson / Spearman of "
           "disagreement with regret, and the AUROC of disagreement for flagging the wrong "
           "choices at each N (0.5: no signal; '-': undefined).", "",
           "| selector (M) | disagreement | wrong | Pearson / Spearman | " +
           " | ".join(f"AUROC N={ns[i]}" for i in shown) + " |", "|---" * (4 + len(shown)) + "|"]
  for name, e in disagreement.get("selectors", {}).items():
    lines.append(f"| {name} ({e['m']}) | {e['mean_disagreement'][-1]:.3f} "
                 f"({e['pool_mean_disagreement']:.3f}) | {e['wrong_rate'][-1]:.2f} | "
                 f"{fmt(e['pearson'][-1])} / {fmt(e['spearman'][-1])} | " +
                 " | ".join(fmt(e["auroc"][i]) for i in shown) + " |")
  for name, reason in disagreement.get("skipped", {}).items():
    lines.append(f"| {name} | skipped: {reason} |" + " |" * (2 + len(shown)))
  return lines


def runs_with_disagreement(rl: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """{run: its eval curves} of the RL runs that logged eval/disagreement (DISAGREEMENT_MEMBERS
  set; older runs and runs without it have only None there)."""
  return {name: run["eval"] for name, run in rl.items()
          if any(v is not None for v in run["eval"].get("eval/disagreement", []))}


def rl_disagreement_md(rl: dict[str, Any]) -> list[str]:
  """report.md table of RL's member disagreement (eval/disagreement*, runs with
  DISAGREEMENT_MEMBERS): per run, the mean disagreement of the eval responses, its AUROC for
  flagging the responses the RM over-rates most and its Spearman with the RM's error, at the
  first eval (step 0, the SFT policy) and at the final one; nothing when no run logged it."""
  runs = runs_with_disagreement(rl)
  if not runs:
    return []
  fmt = lambda v, digits=2: "-" if v is None else f"{v:.{digits}f}"
  lines = ["", "Member disagreement along RL (the std over the members of their rewards of an "
           "eval response, each member standardised on the step-0 eval responses; the RM's "
           "error z(proxy) - z(oracle) likewise): mean disagreement, the AUROC of disagreement "
           "for flagging the responses whose error is above the step-0 median (0.5: no "
           "signal) and its Spearman with the error, at the first and the final eval ('-': "
           "not logged or undefined).", "",
           "| reward model | disagreement first (step) | disagreement final (step) | "
           "AUROC first | AUROC final | Spearman first | Spearman final |",
           "|---|---|---|---|---|---|---|"]
  for name, ev in runs.items():
    d = ev["eval/disagreement"]
    a = ev.get("eval/disagreement_auroc") or [None] * len(d)
    rho = ev.get("eval/disagreement_spearman") or [None] * len(d)
    lines.append(f"| {name} | {fmt(d[0], 3)} ({ev['step'][0]}) | {fmt(d[-1], 3)} "
                 f"({ev['step'][-1]}) | {fmt(a[0])} | {fmt(a[-1])} | {fmt(rho[0])} | "
                 f"{fmt(rho[-1])} |")
  return lines


def _fit_text(fit: dict[str, Any] | None) -> str:
  """'a, b, peak KL, peak gain' of a Gao fit (`gao_fits.gao_fit`); '-' without one."""
  if not fit:
    return "-"
  peak = ("no peak" if fit["peak_kl"] is None else
          f"{fit['peak_kl']:.3g}, {fit['peak_gain']:+.3f}")
  return f"{fit['a']:.3f}, {fit['b']:.3f}, {peak}"
