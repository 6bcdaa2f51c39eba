"""The policy half of the report's figures: RL reward curves (fig. 8), the members'
disagreement along RL, and the RL policies' win rates (fig. 9).

Where it sits: called by `warm_jax.pipeline.report.write_report` with what
`warm_jax.pipeline.report_policy` gathered into metrics.json (its `rl` and `win_rates` keys);
the best-of-N figures are the `bon` stages' own (copied by the report).
"""

from __future__ import annotations

import os
from typing import Any

from warm_jax.pipeline.presets import CORRUPT_SUFFIX
from warm_jax.pipeline.report_policy import group_label, rl_groups, runs_with_disagreement
from warm_jax.policy.win_rates import FINAL_SUFFIX


def plot_rl(rl: dict[str, Any], plot_dir: str) -> list[str]:
  """Fig. 8: evaluated oracle (solid) and proxy (dashed) reward along RL, vs step and vs KL; one
  pair of figures per group of runs (`rl_groups`: fig8_rl_reward_vs_{step,kl}.png for the
  default's runs, fig8_rl<group>_reward_vs_... for an alpha's or the corrupted setting's)."""
  os.makedirs(plot_dir, exist_ok=True)
  paths = []
  for suffix, group in rl_groups(rl).items():
    paths += _plot_rl_group(group, suffix, plot_dir)
  return paths


def _plot_rl_group(group: dict[str, Any], suffix: str, plot_dir: str) -> list[str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from warm_jax.core.plots import save_figure
  paths = []
  for x_key, x_label, fname in (("step", "RL step", f"fig8_rl{suffix}_reward_vs_step.png"),
                                ("eval/kl_to_sft", "KL(policy || SFT)",
                                 f"fig8_rl{suffix}_reward_vs_kl.png")):
    fig, (ax_o, ax_p) = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, run in group.items():
      ev = run["eval"]
      if not ev["step"]:
        continue
      x = ev[x_key] if x_key != "step" else ev["step"]
      line, = ax_o.plot(x, ev["eval/oracle_reward"], "o-", markersize=3, label=name)
      ax_p.plot(x, ev["eval/proxy_reward"], "o--", markersize=3, color=line.get_color(),
                label=name)
    ax_o.set_title("oracle (gold) reward")
    ax_p.set_title("proxy reward (the RL reward model's)")
    for ax in (ax_o, ax_p):
      ax.set_xlabel(x_label)
      ax.legend(fontsize=7)
    fig.suptitle("RL" + group_label(suffix) + ": reward hacking shows as the oracle falling "
                 "while the proxy rises")
    paths.append(save_figure(fig, os.path.join(plot_dir, fname)))
  return paths


def plot_rl_disagreement(rl: dict[str, Any], plot_dir: str) -> list[str]:
  """The members' disagreement of the eval responses (left) and its AUROC for flagging the
  RM's largest errors (right) vs KL(policy || SFT), one line per RL run that logged it
  (rl_disagreement_vs_kl.png); nothing when none did."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from warm_jax.core.plots import save_figure
  runs = runs_with_disagreement(rl)
  if not runs:
    return []
  fig, (ax_d, ax_a) = plt.subplots(1, 2, figsize=(9, 3.6))
  for name, ev in runs.items():
    points = [(kl, d, a) for kl, d, a in zip(
        ev["eval/kl_to_sft"], ev["eval/disagreement"],
        ev.get("eval/disagreement_auroc") or [None] * len(ev["eval/disagreement"]))
        if d is not None]
    line, = ax_d.plot([p[0] for p in points], [p[1] for p in points], "o-", markersize=3,
                      label=name)
    aurocs = [(p[0], p[2]) for p in points if p[2] is not None]
    ax_a.plot([p[0] for p in aurocs], [p[1] for p in aurocs], "o-", markersize=3,
              color=line.get_color(), label=name)
  ax_a.axhline(0.5, color="gray", ls="--", lw=0.8)
  ax_d.set_title("members' disagreement (step-0 scales)")
  ax_a.set_title("AUROC: flags the RM's over-rated responses")
  for ax in (ax_d, ax_a):
    ax.set_xlabel("KL(policy || SFT)")
    ax.legend(fontsize=7)
  fig.suptitle("RL: does the members' disagreement track where the RM is wrong?")
  return [save_figure(fig, os.path.join(plot_dir, "rl_disagreement_vs_kl.png"))]


def plot_win_rates(win_rates: dict[str, Any], plot_dir: str) -> list[str]:
  """Fig. 9: oracle win rate of each RL policy (best step) against the others of its group
  (the clean or the corrupted setting's RMs) and against SFT."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  def shown(key: str) -> bool:
    a, b = key.split("_vs_")
    return (a != "sft" and not a.startswith("best_member") and FINAL_SUFFIX not in key
            and (b == "sft" or a.endswith(CORRUPT_SUFFIX) == b.endswith(CORRUPT_SUFFIX)))
  rates = {k: v for k, v in win_rates["win_rates"].items() if shown(k)}
  if not rates:
    return []
  os.makedirs(plot_dir, exist_ok=True)
  names = sorted(rates)
  fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(names) + 1.4))
  y = range(len(names))
  vals = [rates[n]["rate"] for n in names]
  ax.barh(list(y), vals, xerr=[[rates[n]["rate"] - rates[n]["low"] for n in names],
                               [rates[n]["high"] - rates[n]["rate"] for n in names]],
          color="tab:blue", alpha=0.7, capsize=2)
  ax.axvline(0.5, color="gray", ls="--", lw=0.8)
  ax.set_yticks(list(y))
  ax.set_yticklabels([n.replace("_vs_", " vs ") for n in names], fontsize=7)
  ax.set_xlabel("oracle win rate (ties split, 95% bootstrap interval)")
  ax.set_title("RL policies at their best step: win rates")
  from warm_jax.core.plots import save_figure
  return [save_figure(fig, os.path.join(plot_dir, "fig9_rl_win_rates.png"))]
