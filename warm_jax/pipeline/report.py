"""metrics.json -> report.md + plots/: the experiment's results next to the paper's findings.

Where it sits: last stage of `python -m warm_jax.experiment`. `collect_metrics` gathers what
the stages wrote (eval/<setting>/eval.json, stage timings, ...) into one metrics dict with the
top-level keys documented in README ("Outputs of the experiment"); `write_report` writes
OUTPUT/metrics.json, OUTPUT/plots/*.png (one per reproduced figure) and OUTPUT/report.md, which
states for each paper finding whether it reproduced here, with the numbers. Verdicts are
computed from the numbers by the rules written next to each finding, never edited by hand.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from warm_jax.pipeline import policy_plots, report_policy
from warm_jax.core.checkpoints import atomic_write_text, read_json
from warm_jax.pipeline.verdicts import MARGIN, verdict  # noqa: F401

SUBSETS = ("train_clean", "train_corrupt", "id_val", "id_policy", "ood", "ood_policy")
DIVERSITY_ORDER = ("checkpoints_of_one_run", "two_data_orders", "two_learning_rates",
                   "two_baklava_inits")
# metrics["lmc"] key of eval/pretraining_pair (ExperimentScale.pretraining_pair)
PRETRAINING_PAIR = "pretraining_pair"


def collect_metrics(plan: Any, *, timings: dict[str, float], scale_name: str
                    ) -> dict[str, Any]:
  rm, lmc, bump_differences = {}, {}, {}
  for setting in ("clean", "corrupt"):
    result = read_json(plan.path("eval", setting, "eval.json"))
    if result is None:
      continue
    table = result["table"]
    rm[setting] = {"table": table["rows"], "ranking": table["ranking"],
                   "ranking_subset": table["ranking_subset"],
                   "mean_member": table["mean_member"],
                   "best_member": table["best_member"],
                   "subset_sizes": result["subset_sizes"],
                   "bt_loss": table.get("bt_loss"), "margin": table.get("margin"),
                   "accuracy_se": table.get("accuracy_se"), "paired": table.get("paired"),
                   "memorisation": _memorisation_along_training(plan, setting),
                   "vs_m": result.get("vs_m"), "wa_minus_ens": result.get("wa_minus_ens")}
    lmc[setting] = result.get("lmc", {})
    bump_differences[setting] = result.get("lmc_bump_differences", {})
  pair = read_json(plan.path("eval", "pretraining_pair", "eval.json"))
  if pair is not None:  # ExperimentScale.pretraining_pair: two_pretrainings beside two_data_orders
    lmc[PRETRAINING_PAIR] = pair.get("lmc", {})
    bump_differences[PRETRAINING_PAIR] = pair.get("lmc_bump_differences", {})
  data_stats = {s: read_json(plan.path("data", s, "stats.json")) for s in ("clean", "corrupt")}
  rm_data = read_json(plan.path("rm_data", "stats.json"))
  rl_names = plan.rl_run_names() if hasattr(plan, "rl_run_names") else []
  return {"scale": scale_name, "rm": rm, "lmc": lmc, "lmc_bump_differences": bump_differences,
          "bon": report_policy.collect_bon(plan.path("bon")),
          # best-of-N with the corrupted setting's members (ExperimentScale.bon_corrupt)
          "bon_corrupt": report_policy.collect_bon(plan.path("bon_corrupt")),
          "rl": report_policy.collect_rl({n: plan.path("rl", n) for n in rl_names}),
          "win_rates": report_policy.collect_win_rates(plan.path("win_rates")),
          "timings": timings,
          "data": {s: {k: v for k, v in (st or {}).items()
                       if k in ("sizes", "label_noise_rate", "corruption_rate",
                                "length_label_corr", "bt_expected_noise_rate")}
                   for s, st in data_stats.items() if st},
          "rm_data": None if rm_data is None else {
              "settings": {k: v["splits"] for k, v in rm_data["settings"].items()},
              "samples": rm_data["samples"], "build_seconds": rm_data["build_seconds"]},
          "policy_pairs": read_json(plan.path("policy_pairs", "stats.json")),
          "rm_start": _rm_start(plan),
          "_plot_sources": {**{s: plan.path("eval", s, "plots")
                               for s in ("clean", "corrupt", PRETRAINING_PAIR)},
                            "bon": plan.path("bon", "plots"),
                            "bon_corrupt": plan.path("bon_corrupt", "plots")}}


def _rm_start(plan: Any) -> dict[str, Any]:
  """Where the reward models start: the policy's SFT (the paper), or their own pre-training
  and SFT (ExperimentScale.rm_pretrain_steps)."""
  scale = plan.scale
  own = scale.rm_pretrain_steps is not None
  return {"shared_with_policy": not own,
          "pretrain_steps": scale.rm_pretrain_steps if own else scale.pretrain_steps,
          "policy_pretrain_steps": scale.pretrain_steps, "sft_steps": scale.sft_steps}


def _rm_start_line(start: dict[str, Any]) -> list[str]:
  if start["shared_with_policy"]:
    return [f"Reward models start from the policy's SFT (pre-training {start['pretrain_steps']} "
            f"steps, SFT {start['sft_steps']}), as in the paper.", ""]
  return [f"Reward models start from **their own** shared SFT model (pre-training "
          f"{start['pretrain_steps']} steps, SFT {start['sft_steps']}); the policy that writes "
          f"their data and that best-of-N and RL start from is pre-trained "
          f"{start['policy_pretrain_steps']} steps (`rm_pretrain_steps`, docs/experiment.md).",
          ""]


def _memorisation_along_training(plan: Any, setting: str) -> dict[str, Any] | None:
  """Per member, (step, accuracy on the corrupted training pairs) along training, from the
  members' metrics.jsonl (eval_train_corrupt/accuracy; the corrupted setting logs it)."""
  from warm_jax.core.metrics_writer import read_metrics
  members_dir = plan.path("members", setting)
  if not os.path.isdir(members_dir):
    return None
  out = {}
  for name in sorted(os.listdir(members_dir)):
    if not os.path.exists(os.path.join(members_dir, name, "metrics.jsonl")):
      continue
    rows = [r for r in read_metrics(os.path.join(members_dir, name))
            if "eval_train_corrupt/accuracy" in r]
    if rows:
      out[name] = {"step": [r["step"] for r in rows],
                   "accuracy": [r["eval_train_corrupt/accuracy"] for r in rows]}
  return out or None


# -- findings ---------------------------------------------------------------------------------
# Each finding: a stable id, the paper's claim, our rule, the numbers, an effect (in accuracy
# points as a fraction) with its 95% interval, and a verdict from the rule's kind
# (`warm_jax.pipeline.verdicts`). A single run's interval is the paired, post-clustered one of the
# evaluation; the seeds sweep (`warm_jax.seeds`) applies the same rule to the interval over
# seeds.
HELD_OUT = ("id_val", "id_policy", "ood", "ood_policy")
MEMBERS_INFORMATIVE = 0.80  # members' accuracy on the policy's own samples at T = 0.9
MEMORISATION = 0.60  # members' accuracy against the swapped labels of corrupted pairs


def _fmt(x: float) -> str:
  return f"{100 * x:.1f}"


def _pm(stats: dict[str, float]) -> str:
  return (f"{100 * stats['diff']:+.1f} [{100 * stats['low']:+.1f}, {100 * stats['high']:+.1f}]")


def standard_error(accuracy: float, n: int) -> float:
  """Binomial standard error of an accuracy measured on n pairs."""
  return (max(accuracy * (1 - accuracy), 1e-4) / max(n, 1)) ** 0.5


def _finding(fid: str, finding: str, rule: str, numbers: str, kind: str, effect: float,
             low: float, high: float, threshold: float = 0.0) -> dict[str, Any]:
  return {"id": fid, "finding": finding, "rule": rule, "numbers": numbers, "kind": kind,
          "effect": effect, "low": low, "high": high, "threshold": threshold,
          "verdict": verdict(kind, low, high, threshold=threshold)}


def _accuracy_interval(entry: dict[str, Any], model: str, subset: str) -> tuple[float, float,
                                                                                float]:
  acc = (entry["mean_member"] if model == "mean_member" else entry["table"][model])[subset]
  se = ((entry.get("accuracy_se") or {}).get(model, {}).get(subset)
        or standard_error(acc, entry["subset_sizes"].get(subset, 1)))
  return acc, acc - 1.959964 * se, acc + 1.959964 * se


def rm_findings(metrics: dict[str, Any]) -> list[dict[str, Any]]:
  """The reward-model findings (docs/paper.md figs 3-5) with paired intervals (see above)."""
  out = []
  rm, lmc = metrics.get("rm", {}), metrics.get("lmc", {})
  clean = rm.get("clean")
  if clean and clean.get("paired"):
    t, paired = clean["table"], clean["paired"]
    ms = sorted(int(k.split("_")[1]) for k in t if k.startswith("warm_"))
    policy = "id_policy" if "id_policy" in t[clean["best_member"]] else None
    if policy:
      acc, low, high = _accuracy_interval(clean, "mean_member", policy)
      out.append(_finding(
          "members_informative", "The reward models are informative on the policy's own "
          "samples (the premise of best-of-N and RL)",
          f"mean member accuracy on {policy} (SFT samples at T=0.9) >= "
          f"{100 * MEMBERS_INFORMATIVE:.0f}%",
          f"mean member {_fmt(acc)} [{_fmt(low)}, {_fmt(high)}]; members " + ", ".join(
              _fmt(t[n][policy]) for n in t if n.startswith("member_")),
          "threshold", acc, low, high, MEMBERS_INFORMATIVE))
    for m in ms:
      for subset in [s for s in HELD_OUT if s in paired[f"warm_{m}-ens_{m}"]]:
        stats = paired[f"warm_{m}-ens_{m}"][subset]
        out.append(_finding(
            f"wa_vs_ens/M{m}/{subset}", f"WA ~ ENS (WARM M={m} vs ENS M={m}, clean, {subset})",
            "Acc(WA) - Acc(ENS), paired over the same pairs: interval above -2 points",
            f"WA {_fmt(t[f'warm_{m}'][subset])} vs ENS {_fmt(t[f'ens_{m}'][subset])}: "
            f"{_pm(stats)}", "not_below", stats["diff"], stats["low"], stats["high"]))
      for subset in [s for s in ("ood_policy", "id_policy", "ood")
                     if s in paired[f"warm_{m}-best_member"]]:
        stats = paired[f"warm_{m}-best_member"][subset]
        out.append(_finding(
            f"wa_vs_best/M{m}/{subset}",
            f"WARM M={m} beats the best single RM ({subset})",
            f"Acc_{subset}(WARM M) - Acc_{subset}(ID-val-best member) > 0, paired",
            f"WARM {_fmt(t[f'warm_{m}'][subset])} vs {clean['best_member']} "
            f"{_fmt(t[clean['best_member']][subset])}: {_pm(stats)}",
            "positive", stats["diff"], stats["low"], stats["high"]))
  corrupt = rm.get("corrupt")
  if corrupt and corrupt.get("paired") and "train_corrupt" in corrupt["mean_member"]:
    t, paired = corrupt["table"], corrupt["paired"]
    acc, low, high = _accuracy_interval(corrupt, "mean_member", "train_corrupt")
    out.append(_finding(
        "members_memorise", "Members memorise corrupted training labels (the regime of the "
        "paper's 10k steps x 128)",
        f"mean member accuracy against the swapped labels >= {100 * MEMORISATION:.0f}%",
        f"mean member {_fmt(acc)} [{_fmt(low)}, {_fmt(high)}]", "threshold", acc, low, high,
        MEMORISATION))
    ms = sorted(int(k.split("_")[1]) for k in t if k.startswith("warm_"))
    for m in ms:
      stats = paired[f"warm_{m}-ens_{m}"]["train_corrupt"]
      out.append(_finding(
          f"wa_memorises_less/M{m}", f"WA memorises fewer corrupted labels than ENS (M={m}, "
          "25% corrupted)", "Acc_train-corrupt(WA) - Acc_train-corrupt(ENS) < 0, paired",
          f"WA {_fmt(t[f'warm_{m}']['train_corrupt'])} vs ENS "
          f"{_fmt(t[f'ens_{m}']['train_corrupt'])}: {_pm(stats)}",
          "negative", stats["diff"], stats["low"], stats["high"]))
      for subset in [s for s in ("id_policy", "ood_policy") if s in paired[f"warm_{m}-ens_{m}"]]:
        stats = paired[f"warm_{m}-ens_{m}"][subset]
        out.append(_finding(
            f"corrupt_wa_vs_ens/M{m}/{subset}", f"With corrupted labels WA >= ENS held out "
            f"(M={m}, {subset})", "Acc(WA) - Acc(ENS), paired: interval above -2 points",
            f"WA {_fmt(t[f'warm_{m}'][subset])} vs ENS {_fmt(t[f'ens_{m}'][subset])}: "
            f"{_pm(stats)}", "not_below", stats["diff"], stats["low"], stats["high"]))
  pairs = lmc.get("clean", {})
  subset = _lmc_subset(next(iter(pairs.values()))) if pairs else None
  if subset:
    for name in [n for n in DIVERSITY_ORDER if n in pairs]:
      stats = pairs[name]["bump_paired"][subset]
      out.append(_finding(
          f"lmc_bump/{name}", f"LMC: WA on or above the straight line ({name.replace('_', ' ')})",
          f"mean over interior lambdas of Acc_{subset}(WA) - line: interval above -2 points",
          f"bump {_pm(stats)} points", "not_below", stats["diff"], stats["low"],
          stats["high"]))
    stats = _bump_difference(metrics, "clean", "two_baklava_inits-checkpoints_of_one_run",
                             subset)
    if stats:
      out.append(_finding(
          "lmc_bump_grows", "The LMC bump grows with diversity (two Baklava inits vs two "
          "checkpoints of one run)", f"bump(Baklava) - bump(checkpoints) on {subset} > 0, "
          "paired", f"{_pm(stats)} points; bumps " + ", ".join(
              f"{n}: {100 * pairs[n]['bump'][subset]:+.2f}" for n in DIVERSITY_ORDER
              if n in pairs), "positive", stats["diff"], stats["low"], stats["high"]))
    if "from_scratch" in pairs:
      stats = pairs["from_scratch"]["bump_paired"][subset]
      out.append(_finding(
          "lmc_from_scratch", "Remark 1: LMC fails without shared pre-training (two RMs from "
          "one random init)", f"bump on {subset} < 0 (WA below the line), paired",
          f"bump {_pm(stats)} points", "negative", stats["diff"], stats["low"],
          stats["high"]))
  out += _pretraining_pair_findings(metrics, subset)
  return out


def _lmc_subset(curve: dict[str, Any]) -> str | None:
  """The subset the LMC findings read: the first of ood_policy, id_policy, ood the curve has."""
  return next((s for s in ("ood_policy", "id_policy", "ood")
               if s in curve.get("bump_paired", {})), None)


def _bump_difference(metrics: dict[str, Any], setting: str, key: str, subset: str | None
                     ) -> dict[str, float] | None:
  """The paired bump(b) - bump(a) of metrics['lmc_bump_differences'][setting]['b-a'] on
  subset, or None where it was not measured."""
  return metrics.get("lmc_bump_differences", {}).get(setting, {}).get(key, {}).get(subset)


def _pretraining_pair_findings(metrics: dict[str, Any], subset: str | None
                               ) -> list[dict[str, Any]]:
  """Remark 1's reason where from-scratch RMs cannot learn: member 0 and the same recipe from a
  second, independent pre-training (eval/pretraining_pair) are not linearly connected, and
  their bump is below the shared-start data-order pair's on the same pairs."""
  curves = metrics.get("lmc", {}).get(PRETRAINING_PAIR, {})
  if "two_pretrainings" not in curves:
    return []
  curve = curves["two_pretrainings"]
  if subset not in curve["bump_paired"]:
    subset = _lmc_subset(curve)
    if subset is None:
      return []
  wa, lambdas = curve["wa"][subset], curve["lambdas"]
  middle = min(range(len(lambdas)), key=lambda i: abs(lambdas[i] - 0.5))
  stats = curve["bump_paired"][subset]
  out = [_finding(
      "lmc_two_pretrainings", "LMC needs a shared pre-training (Remark 1's reason): member 0 "
      "and the same recipe from a second, independent pre-training",
      f"bump on {subset} < 0 (WA below the line), paired",
      f"bump {_pm(stats)} points; {subset} accuracy at lambda 0, {lambdas[middle]:g}, 1: "
      f"{_fmt(wa[0])}, {_fmt(wa[middle])}, {_fmt(wa[-1])}", "negative", stats["diff"],
      stats["low"], stats["high"])]
  stats = _bump_difference(metrics, PRETRAINING_PAIR, "two_pretrainings-two_data_orders", subset)
  if stats:
    out.append(_finding(
        "lmc_two_pretrainings_vs_shared", "The bump of two pre-trainings is below the bump "
        "of one shared start (two data orders)", f"bump(two pre-trainings) - bump(two data "
        f"orders) on {subset} < 0, paired", f"{_pm(stats)} points", "negative", stats["diff"],
        stats["low"], stats["high"]))
  return out


def findings(metrics: dict[str, Any]) -> list[dict[str, Any]]:
  """Each paper finding with the rule applied, our numbers and the verdict."""
  return rm_findings(metrics) + report_policy.policy_findings(metrics)


# -- writing ----------------------------------------------------------------------------------
FIGURES = {  # our plot file (in eval/<setting>/plots) -> report figure name
    ("clean", "lmc_ood.png"): "fig3_lmc_diversity_ood.png",
    ("clean", "lmc_id_val.png"): "fig3_lmc_diversity_id_val.png",
    ("corrupt", "lmc_pair_two_members.png"): "fig4_5_lmc_corrupted_subsets.png",
    ("corrupt", "wa_minus_ens.png"): "fig4_5_wa_minus_ens_corrupted.png",
    ("clean", "wa_minus_ens.png"): "fig4_5_wa_minus_ens_clean.png",
    ("clean", "accuracy_vs_m_ood.png"): "fig10_accuracy_vs_m_ood.png",
    ("clean", "accuracy_vs_m_ood_policy.png"): "fig10_accuracy_vs_m_ood_policy.png",
    ("clean", "lmc_ood_policy.png"): "fig3_lmc_diversity_ood_policy.png",
    ("clean", "accuracy.png"): "accuracy_clean.png",
    ("corrupt", "accuracy.png"): "accuracy_corrupted.png",
    ("bon", "bon_oracle_vs_kl.png"): "fig6_bon_oracle_vs_kl.png",
    ("bon", "bon_win_rate_vs_n.png"): "fig7_bon_win_rate_vs_n.png",
    ("bon", "bon_disagreement.png"): "bon_member_disagreement.png",
    ("bon_corrupt", "bon_oracle_vs_kl.png"): "fig6_bon_corrupt_oracle_vs_kl.png",
    ("bon_corrupt", "bon_win_rate_vs_n.png"): "fig7_bon_corrupt_win_rate_vs_n.png",
    (PRETRAINING_PAIR, "lmc_id_policy.png"): "lmc_two_pretrainings_id_policy.png",
    (PRETRAINING_PAIR, "lmc_ood_policy.png"): "lmc_two_pretrainings_ood_policy.png",
}


def _table_md(rows: dict[str, dict[str, float]]) -> list[str]:
  subsets = [s for s in SUBSETS if s in next(iter(rows.values()))]
  lines = ["| model | " + " | ".join(subsets) + " |", "|---" * (len(subsets) + 1) + "|"]
  for name, acc in rows.items():
    lines.append(f"| {name} | " + " | ".join(_fmt(acc[s]) for s in subsets) + " |")
  return lines


def write_report(output_dir: str, metrics: dict[str, Any]) -> None:
  plot_dir = os.path.join(output_dir, "plots")
  os.makedirs(plot_dir, exist_ok=True)
  copied = []
  for (setting, src), dst in FIGURES.items():
    source = metrics["_plot_sources"].get(setting)
    path = os.path.join(source, src) if source else None
    if path and os.path.exists(path):
      shutil.copyfile(path, os.path.join(plot_dir, dst))
      copied.append(dst)
  if metrics.get("rl"):
    copied += [os.path.basename(p) for p in policy_plots.plot_rl(metrics["rl"], plot_dir)]
    copied += [os.path.basename(p)
               for p in policy_plots.plot_rl_disagreement(metrics["rl"], plot_dir)]
  if metrics.get("win_rates"):
    copied += [os.path.basename(p)
               for p in policy_plots.plot_win_rates(metrics["win_rates"], plot_dir)]
  public = {k: v for k, v in metrics.items() if not k.startswith("_")}
  public["findings"] = findings(metrics)
  atomic_write_text(os.path.join(output_dir, "metrics.json"),
                    json.dumps(public, indent=1, sort_keys=True) + "\n")
  lines = ["# WARM on the embedded synthetic TL;DR world", "",
           f"Scale: `{metrics['scale']}`. Accuracies in %, ties count as correct; ID val and "
           "OOD against the gold reward's sign, train subsets against the training labels.",
           "Members are ranked best first on ID validation (the paper ranks on OOD, which "
           "leaks).", "", *_rm_start_line(metrics["rm_start"]), "## Findings", "",
           "| paper finding | rule | ours | verdict |",
           "|---|---|---|---|"]
  for f in public["findings"]:
    lines.append(f"| {f['finding']} | {f['rule']} | {f['numbers']} | **{f['verdict']}** |")
  lines += ["", "Intervals are 95%, paired over the same pairs with each post one cluster "
            "(`warm_jax.core.paired_stats`); one run's interval says nothing about seeds: "
            "`python -m warm_jax.seeds` gives the interval across seeds."]
  for setting, title in (("clean", "clean labels"), ("corrupt", "25% corrupted labels")):
    if setting in metrics["rm"]:
      lines += ["", f"## Reward-model accuracy, {title}", ""]
      lines += _table_md(metrics["rm"][setting]["table"])
  for setting, title in (("clean", "clean labels"), ("corrupt", "25% corrupted labels")):
    paired = metrics["rm"].get(setting, {}).get("paired")
    if paired:
      subsets = [s for s in SUBSETS if s in next(iter(paired.values()))]
      lines += ["", f"## Paired differences, {title} (points, 95% interval, posts as "
                "clusters)", "", "| comparison | " + " | ".join(subsets) + " |",
                "|---" * (len(subsets) + 1) + "|"]
      for name, row in paired.items():
        lines.append(f"| {name} | " + " | ".join(_pm(row[s]) for s in subsets) + " |")
  if metrics["lmc"].get("clean"):
    curves = metrics["lmc"]["clean"]
    subsets = [s for s in SUBSETS if s in next(iter(curves.values())).get("bump_paired", {})]
    lines += ["", "## LMC bump per diversity level (clean labels; points, 95% interval)", "",
              "| pair | " + " | ".join(subsets) + " |", "|---" * (len(subsets) + 1) + "|"]
    for name, curve in curves.items():
      lines.append(f"| {name} | " + " | ".join(_pm(curve["bump_paired"][s])
                                                for s in subsets) + " |")
    pair = metrics["lmc"].get(PRETRAINING_PAIR, {}).get("two_pretrainings")
    if pair and all(s in pair["bump_paired"] for s in subsets):
      lines.append("| two_pretrainings (eval/pretraining_pair) | " + " | ".join(
          _pm(pair["bump_paired"][s]) for s in subsets) + " |")
      lines += ["", "Two pre-trainings (member 0 and the same recipe from a second, independent "
                "pre-training and SFT), accuracy along lambda = " + ", ".join(
                    f"{x:g}" for x in pair["lambdas"]) + ": " + "; ".join(
                    f"{s} " + " / ".join(_fmt(a) for a in pair["wa"][s]) for s in subsets)
                + "."]
  memo = metrics["rm"].get("corrupt", {}).get("memorisation")
  if memo:
    lines += ["", "## Memorisation along training (accuracy against the swapped labels of "
              "the corrupted training pairs, %)", "",
              "| member | " + " | ".join(str(st) for st in next(iter(memo.values()))["step"])
              + " |", "|---" * (len(next(iter(memo.values()))["step"]) + 1) + "|"]
    for name, row in memo.items():
      lines.append(f"| {name} | " + " | ".join(_fmt(a) for a in row["accuracy"]) + " |")
  rm_data = metrics.get("rm_data")
  if rm_data:
    lines += ["", "## The reward models' data (on-policy comparisons, clean setting)", "",
              "| split | pairs | label noise (BT expected) | length-label corr | equal length | "
              "longer is better |", "|---|---|---|---|---|---|"]
    for split, st in rm_data["settings"]["clean"].items():
      if st.get("num_pairs"):
        lines.append(f"| {split} | {st['num_pairs']} | {_fmt(st['label_noise_rate'])} "
                     f"({_fmt(st['bt_expected_noise_rate'])}) | {st['length_label_corr']:+.3f} "
                     f"| {_fmt(st['equal_length_rate'])} | {_fmt(st['longer_is_better_rate'])} |")
  lines += report_policy.tables_md(metrics)
  lines += ["", "## Figures", ""] + [f"![{c}](plots/{c})" for c in copied]
  lines += profile_md(metrics)
  atomic_write_text(os.path.join(output_dir, "report.md"), "\n".join(lines) + "\n")


SLOWEST_SHOWN = 3  # stages in bold in the profile table: the largest wall times


def _share(x: float, total: float | None) -> str:
  return f"{100 * x / total:.0f}%" if total else "-"


def _mfu(x: float | None) -> str:
  if x is None:
    return "-"
  return f"{100 * x:.1f}%" if x >= 0.1 else f"{100 * x:.2g}%"


def profile_md(metrics: dict[str, Any]) -> list[str]:
  """The '## Wall time per stage (s)' section: per stage wall and CPU seconds with their shares,
  model FLOPs and MFU (metrics' `timings`, `cpu_s`, `flops`, `mfu`; '-' where unknown), the
  slowest stages in bold and named above the table."""
  timings = metrics["timings"]
  cpu = metrics.get("cpu_s") or {}
  flops = metrics.get("flops") or {}
  mfu = metrics.get("mfu") or {}
  load = metrics.get("load_average")
  summary = ("stages_sum", "total")
  stages = {k: v for k, v in timings.items() if k not in summary}
  wall_sum = timings.get("stages_sum") or sum(stages.values())
  cpu_sum = cpu.get("total") or sum(v for k, v in cpu.items() if k not in summary)
  slowest = sorted(stages, key=lambda k: -stages[k])[:SLOWEST_SHOWN]
  lines = ["", "## Wall time per stage (s)", "",
           "CPU seconds (user + system, all threads) do not grow when other jobs share the "
           "machine; wall seconds do." + (f" Load average at the end: {load[0]:.1f} (1 min), "
                                          f"{load[2]:.1f} (15 min)." if load else ""),
           "FLOPs: the analytic model FLOPs the stage's compiled model programs executed "
           "(training steps, evaluations, sampling, reward scoring; `warm_jax.core.flops`); MFU: "
           "FLOPs / the stage's wall seconds / the FLOP/s of the matmul timed once for the "
           "whole experiment (WARM_JAX_MATMUL_FLOPS, every core); '-': no model program "
           "counted (data building, weight averaging). Shares are of the stages' summed wall "
           "and CPU seconds (stages that overlapped each count in full)."]
  if slowest:
    lines += ["", "Slowest stages: " + ", ".join(
        f"**{k}** {stages[k]:.0f} s ({_share(stages[k], wall_sum)} of wall"
        + (f", {_share(cpu[k], cpu_sum)} of CPU)" if k in cpu else ")") for k in slowest) + "."]
  lines += ["", "| stage | wall s | % wall | CPU s | % CPU | FLOPs | MFU |",
            "|---|---|---|---|---|---|---|"]
  for k, v in timings.items():
    name, wall = (f"**{k}**", f"**{v:.0f}**") if k in slowest else (k, f"{v:.0f}")
    if k == "total":
      name += " (union of intervals)"
    wall_share = _share(v, wall_sum) if k not in summary else ("100%" if k == "stages_sum"
                                                                else "-")
    if k in cpu:
      cpu_s, cpu_share = f"{cpu[k]:.0f}", _share(cpu[k], cpu_sum) if k != "total" else "100%"
    else:
      cpu_s, cpu_share = "-", "-"
    count = f"{flops[k]:.3g}" if flops.get(k) is not None else "-"
    lines.append(f"| {name} | {wall} | {wall_share} | {cpu_s} | {cpu_share} | {count} | "
                 f"{_mfu(mfu.get(k))} |")
  return lines
