"""Figures of the paper we reproduce, from the JSON the evaluations write (matplotlib, Agg).

Where it sits: `python -m warm_jax.evaluate` and the report (`warm_jax.pipeline.report`) call these
on
their metrics; every function takes plain dicts/lists and a path, so a user can redraw a figure
from metrics.json alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SUBSET_TITLES = {"train_clean": "Train (clean labels)", "train_corrupt": "Train (corrupted labels)",
                 "id_val": "ID validation", "ood": "OOD"}


def save_figure(fig, path: str) -> str:
  """Lays out, writes (dpi 110, its dir made) and closes a figure; returns the path. Every plot
  of the pipeline (RM evaluations, best-of-N, RL, win rates) is written through it."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_lmc(curves: dict[str, dict[str, Any]], subset: str, path: str, *,
             title: str | None = None) -> str:
  """Fig. 3 style: accuracy vs lambda for WA, ENS and the straight line, one panel per pair."""
  names = list(curves)
  fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
  for ax, name in zip(axes[0], names):
    c = curves[name]
    lam = c["lambdas"]
    ax.plot(lam, c["wa"][subset], "o-", color="tab:red", label="WA (weights)")
    ax.plot(lam, c["ens"][subset], "s--", color="tab:blue", label="ENS (predictions)")
    ax.plot(lam, c["line"][subset], ":", color="gray", label="linear interpolation")
    ax.set_title(name.replace("_", " "), fontsize=10)
    ax.set_xlabel(r"$\lambda$")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel(f"{SUBSET_TITLES.get(subset, subset)} accuracy")
  axes[0][0].legend(fontsize=8)
  fig.suptitle(title or f"Linear mode connectivity: {SUBSET_TITLES.get(subset, subset)}")
  return save_figure(fig, path)


def plot_lmc_subsets(curve: dict[str, Any], path: str, *, title: str) -> str:
  """Figs. 4-5 style: one pair, one panel per subset."""
  subsets = list(curve["wa"])
  fig, axes = plt.subplots(1, len(subsets), figsize=(3.4 * len(subsets), 3.2), squeeze=False)
  for ax, s in zip(axes[0], subsets):
    lam = curve["lambdas"]
    ax.plot(lam, curve["wa"][s], "o-", color="tab:red", label="WA")
    ax.plot(lam, curve["ens"][s], "s--", color="tab:blue", label="ENS")
    ax.plot(lam, curve["line"][s], ":", color="gray", label="line")
    ax.set_title(SUBSET_TITLES.get(s, s), fontsize=10)
    ax.set_xlabel(r"$\lambda$")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("accuracy")
  axes[0][0].legend(fontsize=8)
  fig.suptitle(title)
  return save_figure(fig, path)


def plot_accuracy_vs_m(vs_m: dict[str, Any], subset: str, path: str) -> str:
  """Fig. 10 style: accuracy of WA (and ENS) of the first M members, per selection order."""
  fig, ax = plt.subplots(figsize=(4.8, 3.6))
  for name, series in vs_m.items():
    ax.plot(series["m"], [a[subset] for a in series["wa"]], "o-", label=f"WA, {name}")
    ax.plot(series["m"], [a[subset] for a in series["ens"]], "x:", alpha=0.6,
            label=f"ENS, {name}")
  ax.set_xlabel("M (number of averaged RMs)")
  ax.set_ylabel(f"{SUBSET_TITLES.get(subset, subset)} accuracy")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  ax.set_title("Accuracy vs M by selection order")
  return save_figure(fig, path)


def plot_wa_minus_ens(diffs: dict[str, Sequence[float]], path: str, *, title: str) -> str:
  """Figs. 4-5 histograms: Acc(WA) - Acc(ENS) over member pairs, per subset."""
  subsets = [s for s in diffs if len(diffs[s])]
  fig, axes = plt.subplots(1, len(subsets), figsize=(3.2 * len(subsets), 3.0), squeeze=False)
  for ax, s in zip(axes[0], subsets):
    ax.hist(diffs[s], bins=10, color="tab:purple", alpha=0.8)
    ax.axvline(0.0, color="black", lw=1)
    ax.set_title(SUBSET_TITLES.get(s, s), fontsize=10)
    ax.set_xlabel("Acc(WA) - Acc(ENS)")
  fig.suptitle(title)
  return save_figure(fig, path)


def plot_accuracy_table(rows: dict[str, dict[str, float]], path: str, *, title: str) -> str:
  """Bar chart of the accuracy table: members, WARM M and ENS M per subset."""
  names = list(rows)
  subsets = list(next(iter(rows.values())))
  fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names)), 3.6))
  width = 0.8 / len(subsets)
  for k, s in enumerate(subsets):
    ax.bar([i + k * width for i in range(len(names))], [rows[n][s] for n in names], width,
           label=SUBSET_TITLES.get(s, s))
  ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
  ax.set_xticklabels([n.replace("member_", "m") for n in names], rotation=45, fontsize=8)
  ax.set_ylabel("pairwise accuracy")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=7, ncol=len(subsets))
  ax.set_title(title)
  return save_figure(fig, path)
