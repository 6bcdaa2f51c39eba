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

from warm_jax import report_policy
from warm_jax.checkpoints import atomic_write_text

SUBSETS = ("train_clean", "train_corrupt", "id_val", "ood", "ood_policy")
DIVERSITY_ORDER = ("checkpoints_of_one_run", "two_data_orders", "two_learning_rates",
                   "two_baklava_inits")
# |Acc(WA) - Acc(ENS)| below this counts as "WA ~ ENS" (about one std of a ~1k-pair subset).
SIMILAR_TOLERANCE = 0.015


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def collect_metrics(plan: Any, *, timings: dict[str, float], scale_name: str
                    ) -> dict[str, Any]:
  rm, lmc = {}, {}
  for setting in ("clean", "corrupt"):
    result = _read_json(plan.path("eval", setting, "eval.json"))
    if result is None:
      continue
    rm[setting] = {"table": result["table"]["rows"], "ranking": result["table"]["ranking"],
                   "ranking_subset": result["table"]["ranking_subset"],
                   "mean_member": result["table"]["mean_member"],
                   "best_member": result["table"]["best_member"],
                   "subset_sizes": result["subset_sizes"],
                   "vs_m": result.get("vs_m"), "wa_minus_ens": result.get("wa_minus_ens")}
    lmc[setting] = result.get("lmc", {})
  data_stats = {s: _read_json(plan.path("data", s, "stats.json")) for s in ("clean", "corrupt")}
  rl_names = plan.rl_run_names() if hasattr(plan, "rl_run_names") else []
  return {"scale": scale_name, "rm": rm, "lmc": lmc,
          "bon": report_policy.collect_bon(plan.path("bon")),
          "rl": report_policy.collect_rl({n: plan.path("rl", n) for n in rl_names}),
          "win_rates": report_policy.collect_win_rates(plan.path("win_rates")),
          "timings": timings,
          "data": {s: {k: v for k, v in (st or {}).items()
                       if k in ("sizes", "label_noise_rate", "corruption_rate",
                                "length_label_corr", "bt_expected_noise_rate")}
                   for s, st in data_stats.items()},
          "policy_pairs": _read_json(plan.path("policy_pairs", "stats.json")),
          "_plot_sources": {**{s: plan.path("eval", s, "plots") for s in ("clean", "corrupt")},
                            "bon": plan.path("bon", "plots")}}


# -- findings ---------------------------------------------------------------------------------
def _fmt(x: float) -> str:
  return f"{100 * x:.1f}"


def standard_error(accuracy: float, n: int) -> float:
  """Binomial standard error of an accuracy measured on n pairs."""
  return (max(accuracy * (1 - accuracy), 1e-4) / max(n, 1)) ** 0.5


def directional_verdict(effect: float, se: float) -> str:
  """effect (an accuracy difference) > 0 is the paper's direction, beyond 1 s.e."""
  return report_policy.directional_verdict(effect, se, se_text=f"{100 * se:.1f} points")


def findings(metrics: dict[str, Any]) -> list[dict[str, str]]:
  """Each paper finding with the rule applied, our numbers and the verdict."""
  out = []
  rm, lmc = metrics.get("rm", {}), metrics.get("lmc", {})
  clean = rm.get("clean")
  if clean:
    t, sizes = clean["table"], clean["subset_sizes"]
    ms = sorted(int(k.split("_")[1]) for k in t if k.startswith("warm_"))
    for m in ms:
      wa, ens = t[f"warm_{m}"], t[f"ens_{m}"]
      gaps = {s: wa[s] - ens[s] for s in ("id_val", "ood", "ood_policy") if s in wa}
      out.append({
          "finding": f"WA ~ ENS (WARM M={m} vs ENS M={m}, clean labels)",
          "rule": f"|Acc(WA) - Acc(ENS)| <= max({100 * SIMILAR_TOLERANCE:.1f} points, 1 s.e.) "
                  "on every held-out subset",
          "numbers": ", ".join(f"{s}: WA {_fmt(wa[s])} vs ENS {_fmt(ens[s])}" for s in gaps),
          "verdict": "reproduced" if all(
              abs(g) <= max(SIMILAR_TOLERANCE, standard_error(wa[s], sizes[s]))
              for s, g in gaps.items()) else "not reproduced"})
      best = clean["best_member"]
      for subset, label in (("ood", "out of distribution"),
                            ("ood_policy", "on high-temperature policy samples")):
        if subset not in wa:
          continue
        out.append({
            "finding": f"WARM M={m} beats the best single RM {label}",
            "rule": f"Acc_{subset}(WARM M) > Acc_{subset}(best member, ranked on ID val)",
            "numbers": f"{subset}: WARM {_fmt(wa[subset])} vs {best} {_fmt(t[best][subset])} "
                       f"(mean member {_fmt(clean['mean_member'][subset])})",
            "verdict": directional_verdict(wa[subset] - t[best][subset],
                                           standard_error(wa[subset], sizes[subset]))})
  corrupt = rm.get("corrupt")
  if corrupt and "train_corrupt" in next(iter(corrupt["table"].values())):
    t, sizes = corrupt["table"], corrupt["subset_sizes"]
    ms = sorted(int(k.split("_")[1]) for k in t if k.startswith("warm_"))
    for m in ms:
      wa, ens = t[f"warm_{m}"], t[f"ens_{m}"]
      out.append({
          "finding": f"WA memorises fewer corrupted labels than ENS (M={m}, 25% corrupted)",
          "rule": "Acc_train-corrupt(WA) < Acc_train-corrupt(ENS)",
          "numbers": f"train-corrupt: WA {_fmt(wa['train_corrupt'])} vs ENS "
                     f"{_fmt(ens['train_corrupt'])}; OOD: WA {_fmt(wa['ood'])} vs ENS "
                     f"{_fmt(ens['ood'])}",
          "verdict": directional_verdict(
              ens["train_corrupt"] - wa["train_corrupt"],
              standard_error(ens["train_corrupt"], sizes["train_corrupt"]))})
  pairs = lmc.get("clean", {})
  levels = [name for name in DIVERSITY_ORDER if name in pairs]
  ood_se = standard_error(0.5, rm.get("clean", {}).get("subset_sizes", {}).get("ood", 1))
  for name in levels:
    bump = pairs[name]["bump"]
    out.append({
        "finding": f"LMC: WA above the straight line ({name.replace('_', ' ')})",
        "rule": "mean over interior lambdas of Acc(WA) - line > 0 on OOD",
        "numbers": f"bump OOD {100 * bump['ood']:+.2f}, ID val {100 * bump['id_val']:+.2f} "
                   "points",
        "verdict": directional_verdict(bump["ood"], ood_se)})
  if len(levels) >= 2:
    bumps = [pairs[n]["bump"]["ood"] for n in levels]
    increasing = all(b2 >= b1 for b1, b2 in zip(bumps, bumps[1:]))
    out.append({
        "finding": "The LMC bump grows with diversity (checkpoints < data orders < learning "
                   "rates < Baklava)",
        "rule": "OOD bump non-decreasing in that order",
        "numbers": ", ".join(f"{n}: {100 * b:+.2f}" for n, b in zip(levels, bumps)),
        "verdict": ("reproduced" if increasing else "not reproduced") if
                   max(bumps) - min(bumps) > ood_se else
                   f"inconclusive (spread within 1 s.e. = {100 * ood_se:.1f} points)"})
  if "from_scratch" in pairs:
    bump = pairs["from_scratch"]["bump"]
    out.append({
        "finding": "Remark 1: LMC fails without shared pre-training (two RMs from one random "
                   "init)",
        "rule": "OOD bump < 0 (WA below the line)",
        "numbers": f"bump OOD {100 * bump['ood']:+.2f}, ID val {100 * bump['id_val']:+.2f} "
                   "points",
        "verdict": directional_verdict(-bump["ood"], ood_se)})
  return out + report_policy.policy_findings(metrics)


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
    path = os.path.join(metrics["_plot_sources"][setting], src)
    if os.path.exists(path):
      shutil.copyfile(path, os.path.join(plot_dir, dst))
      copied.append(dst)
  if metrics.get("rl"):
    copied += [os.path.basename(p) for p in report_policy.plot_rl(metrics["rl"], plot_dir)]
  if metrics.get("win_rates"):
    copied += [os.path.basename(p)
               for p in report_policy.plot_win_rates(metrics["win_rates"], plot_dir)]
  public = {k: v for k, v in metrics.items() if not k.startswith("_")}
  public["findings"] = findings(metrics)
  atomic_write_text(os.path.join(output_dir, "metrics.json"),
                    json.dumps(public, indent=1, sort_keys=True) + "\n")
  lines = ["# WARM on the embedded synthetic TL;DR world", "",
           f"Scale: `{metrics['scale']}`. Accuracies in %, ties count as correct; ID val and "
           "OOD against the gold reward's sign, train subsets against the training labels.",
           "Members are ranked best first on ID validation (the paper ranks on OOD, which "
           "leaks).", "", "## Findings", "", "| paper finding | rule | ours | verdict |",
           "|---|---|---|---|"]
  for f in public["findings"]:
    lines.append(f"| {f['finding']} | {f['rule']} | {f['numbers']} | **{f['verdict']}** |")
  for setting, title in (("clean", "clean labels"), ("corrupt", "25% corrupted labels")):
    if setting in metrics["rm"]:
      lines += ["", f"## Reward-model accuracy, {title}", ""]
      lines += _table_md(metrics["rm"][setting]["table"])
  if metrics["lmc"].get("clean"):
    lines += ["", "## LMC bump per diversity level (clean labels)", "",
              "| pair | ID val bump | OOD bump | ENS OOD bump |", "|---|---|---|---|"]
    for name, curve in metrics["lmc"]["clean"].items():
      lines.append(f"| {name} | {100 * curve['bump']['id_val']:+.2f} | "
                   f"{100 * curve['bump']['ood']:+.2f} | {100 * curve['ens_bump']['ood']:+.2f} |")
  lines += report_policy.tables_md(metrics)
  lines += ["", "## Figures", ""] + [f"![{c}](plots/{c})" for c in copied]
  cpu = metrics.get("cpu_s") or {}
  load = metrics.get("load_average")
  lines += ["", "## Wall time per stage (s)", "",
            "CPU seconds (user + system, all threads) do not grow when other jobs share the "
            "machine; wall seconds do." + (f" Load average at the end: {load[0]:.1f} (1 min), "
                                           f"{load[2]:.1f} (15 min)." if load else ""), "",
            "| stage | wall s | CPU s |", "|---|---|---|"]
  lines += [f"| {k} | {v:.0f} | {cpu[k]:.0f} |" if k in cpu else f"| {k} | {v:.0f} | |"
            for k, v in metrics["timings"].items()]
  atomic_write_text(os.path.join(output_dir, "report.md"), "\n".join(lines) + "\n")
