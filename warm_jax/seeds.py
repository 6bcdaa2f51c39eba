"""`python -m warm_jax.seeds`: the experiment over K seeds, every finding with its interval.

  python -m warm_jax.seeds --gin_file=gin/experiments/warm_synthetic_tldr.gin \
      --output_dir=runs/seeds --seeds=0,1,2 [--parallel=1] [--gin.NAME=VALUE ...]
  python -m warm_jax.seeds --output_dir=runs/seeds --aggregate_only

Where it sits: on top of `warm_jax.experiment`. One run says little: the same preset on two
machines flipped verdicts that sat within one unpaired standard error (docs/experiment.md,
"Seeds"). Seed k runs the whole experiment into OUTPUT/seed_<k> with --gin.SEED=k (inits, data
orders, the member sweep, sampling) and --gin.WORLD_SEED=k (the world's posts, generator pairs
and labels), as a subprocess; a rerun resumes every seed stage by stage (the experiment's own resume: a
finished seed only has its metrics rewritten, an interrupted one, or one whose plan gained
stages, runs what is missing). `--parallel` runs that many seeds at once (on 2
cores, 1 seed with the experiment's 2 parallel stages is the faster choice). Extra
--gin flags go to every seed's experiment. All seeds share one XLA compile cache,
OUTPUT/cache/jax (`seeds_environment`).

Then every finding of the seeds' metrics.json (`warm_jax.pipeline.report.findings`: a stable id, an
effect in the paper's direction and its kind) is aggregated into the mean over seeds and a
Student-t 95% interval (`paired_stats.seed_interval`), and judged by the finding's own rule on
that interval (`report.verdict`: e.g. reproduced when it excludes zero in the paper's
direction). Seeds 0-4 are the ones the recipe may be tuned on; seeds >= 5 are held out and, if
present, get their own interval, so a finding can be checked on seeds nobody tuned on.

Writes OUTPUT/metrics.json (key `seeds`: the seeds, per finding the per-seed effects, mean,
interval and verdict, for all seeds, the tuning seeds and the held-out seeds; and per seed
its verdicts and wall time) and OUTPUT/report.md (all seeds; with held-out seeds also the
three groups side by side, the table README's results section shows).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from warm_jax.core import paired_stats
from warm_jax.core.checkpoints import atomic_write_text, read_json
from warm_jax.cli_errors import print_error

TUNING_SEEDS = range(5)  # seeds a recipe may be tuned on; findings are checked on the others
DEFAULT_GIN = "gin/experiments/warm_synthetic_tldr.gin"


def seed_dir(output_dir: str, seed: int) -> str:
  return os.path.join(output_dir, f"seed_{seed}")


def experiment_command(*, seed: int, output_dir: str, gin_args: Sequence[str]) -> list[str]:
  """The experiment of one seed: the gin files and flags given, then SEED and WORLD_SEED."""
  return [sys.executable, "-m", "warm_jax.experiment", *gin_args,
          f"--output_dir={seed_dir(output_dir, seed)}", f"--gin.SEED={seed}",
          f"--gin.WORLD_SEED={seed}"]


def seeds_environment(output_dir: str) -> dict[str, str]:
  """The environment of every seed's experiment: one persistent XLA compile cache for all the
  seeds, OUTPUT/cache/jax (the seeds run the same programs on other data, so seed 0's compiles
  serve every later seed; each experiment hands it on to its stages,
  `scheduler.stage_environment`). A JAX_COMPILATION_CACHE_DIR set by the caller wins."""
  from warm_jax.pipeline.scheduler import compile_cache_environment
  return compile_cache_environment(os.path.join(os.path.abspath(output_dir), "cache", "jax"))


def run_seeds(*, seeds: Sequence[int], output_dir: str, gin_args: Sequence[str],
              parallel: int = 1) -> dict[int, dict[str, Any]]:
  """Runs (or resumes) each seed's experiment; returns {seed: {exit, wall_s, log}}. Every seed
  is resumed, finished or not: the experiment skips its done stages (seconds for a finished
  seed) and runs what the plan has gained since (e.g. a stage a new preset field adds), then
  rewrites the seed's metrics.json, so the aggregate never reads a stale one."""
  os.makedirs(output_dir, exist_ok=True)
  pending = list(seeds)
  results: dict[int, dict[str, Any]] = {}
  running: dict[int, tuple[subprocess.Popen, float, Any]] = {}
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = seeds_environment(output_dir)
  while pending or running:
    while pending and len(running) < max(1, parallel):
      seed = pending.pop(0)
      log_path = os.path.join(output_dir, f"seed_{seed}.log")
      log = open(log_path, "a")
      print(f"[seeds] seed {seed}: running ({log_path})", file=sys.stderr, flush=True)
      proc = subprocess.Popen(experiment_command(seed=seed, output_dir=output_dir,
                                                 gin_args=gin_args),
                              stdout=log, stderr=subprocess.STDOUT, cwd=repo, env=env)
      running[seed] = (proc, time.time(), log)
    time.sleep(1.0)
    for seed, (proc, t0, log) in list(running.items()):
      if proc.poll() is None:
        continue
      log.close()
      del running[seed]
      results[seed] = {"exit": proc.returncode, "wall_s": round(time.time() - t0, 1),
                       "log": log.name}
      print(f"[seeds] seed {seed}: exit {proc.returncode} after {results[seed]['wall_s']:.0f}s",
            file=sys.stderr, flush=True)
  return results


def aggregate(per_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
  """{seeds, findings: [...], per_seed} from each seed's metrics.json (see the module doc)."""
  from warm_jax.pipeline import report
  seeds = sorted(per_seed)
  order: list[str] = []
  info: dict[str, dict[str, Any]] = {}
  effects: dict[str, dict[int, float]] = {}
  for seed in seeds:
    for f in per_seed[seed].get("findings", []):
      if "id" not in f or f.get("effect") is None:
        continue  # e.g. a win rate whose best step is the unchanged SFT policy
      if f["id"] not in info:
        order.append(f["id"])
        info[f["id"]] = {k: f[k] for k in ("finding", "rule", "kind", "threshold", "unit")
                         if k in f}
      effects.setdefault(f["id"], {})[seed] = float(f["effect"])
  findings = []
  for fid in order:
    entry = {"id": fid, **info[fid], "effects": {str(k): v for k, v in effects[fid].items()}}
    groups = {"all": list(effects[fid].values()),
              "tuning": [v for k, v in effects[fid].items() if k in TUNING_SEEDS],
              "held_out": [v for k, v in effects[fid].items() if k not in TUNING_SEEDS]}
    for name, values in groups.items():
      if not values or (name != "all" and len(values) == len(groups["all"])):
        continue
      interval = paired_stats.seed_interval(values)
      interval["verdict"] = report.verdict(info[fid]["kind"], interval["low"], interval["high"],
                                           threshold=info[fid].get("threshold", 0.0))
      entry[name] = interval
    findings.append(entry)
  return {"seeds": seeds, "tuning_seeds": [s for s in seeds if s in TUNING_SEEDS],
          "held_out_seeds": [s for s in seeds if s not in TUNING_SEEDS],
          "findings": findings,
          "per_seed": {str(s): {"verdicts": {f.get("id", f["finding"]): f["verdict"]
                                             for f in per_seed[s].get("findings", [])},
                                "total_wall_s": per_seed[s].get("timings", {}).get("total")}
                       for s in seeds}}


def _num(x: float, signed: bool = True, unit: str = "points") -> str:
  """An accuracy (difference) or win rate - 50% in points (stored as a fraction), or an
  oracle-reward difference as it is (unit 'reward')."""
  if x is None or not math.isfinite(x):
    return "n/a"
  if unit == "reward":
    return f"{x:+.2f}" if signed else f"{x:.2f}"
  return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def write_report(output_dir: str, summary: Mapping[str, Any]) -> None:
  """OUTPUT/metrics.json ({'seeds': summary}) and OUTPUT/report.md."""
  atomic_write_text(os.path.join(output_dir, "metrics.json"),
                    json.dumps({"seeds": summary}, indent=1, sort_keys=True) + "\n")
  seeds = summary["seeds"]
  lines = ["# WARM findings over seeds", "",
           f"Seeds {', '.join(map(str, seeds))} (SEED = WORLD_SEED = k; seeds 0-4 are the ones "
           "a recipe may be tuned on). Each finding's effect (accuracy points: a difference, "
           "or for a threshold finding the accuracy itself; for the policy findings an "
           "oracle-reward difference, or a win rate minus 50 in points) is averaged over "
           "seeds; the "
           "interval is the Student-t 95% interval of that mean, judged by the finding's rule "
           "(`warm_jax.pipeline.report`).", "",
           "| finding | kind | mean [95% interval] | per seed | verdict |", "|---|---|---|---|---|"]
  for f in summary["findings"]:
    group = f["all"]
    signed, unit = f.get("kind") != "threshold", f.get("unit", "points")
    num = lambda x: _num(x, signed, unit)  # pylint: disable=cell-var-from-loop
    per = ", ".join(num(v) for v in f["effects"].values())
    threshold = (f" (>= {100 * f['threshold']:.0f})" if not signed else "")
    unit_text = " (oracle reward)" if unit == "reward" else ""
    lines.append(f"| {f['finding']} | {f['kind']}{threshold}{unit_text} | "
                 f"{num(group['mean'])} [{num(group['low'])}, {num(group['high'])}] | {per} | "
                 f"**{group['verdict']}** |")
  lines += _groups_table(summary)
  held = [f for f in summary["findings"] if "held_out" in f]
  if held:
    lines += ["", "## On the held-out seeds only", "", "| finding | mean [95% interval] | "
              "verdict |", "|---|---|---|"]
    for f in held:
      g, signed, unit = f["held_out"], f.get("kind") != "threshold", f.get("unit", "points")
      lines.append(f"| {f['finding']} | {_num(g['mean'], signed, unit)} "
                   f"[{_num(g['low'], signed, unit)}, {_num(g['high'], signed, unit)}] | "
                   f"**{g['verdict']}** |")
  lines += ["", "## Per seed", "", "| seed | wall s | verdicts reproduced / total |",
            "|---|---|---|"]
  for seed, entry in summary["per_seed"].items():
    verdicts = list(entry["verdicts"].values())
    wall = entry.get("total_wall_s")
    lines.append(f"| {seed} | {wall:.0f} | {sum(v == 'reproduced' for v in verdicts)} / "
                 f"{len(verdicts)} |" if wall else f"| {seed} | | |")
  atomic_write_text(os.path.join(output_dir, "report.md"), "\n".join(lines) + "\n")


def _groups_table(summary: Mapping[str, Any]) -> list[str]:
  """The tuning and held-out seeds side by side (README's results table): each finding's
  per-seed effects (tuning | held out), then mean [95% interval] and verdict per group. Empty
  when there are no held-out seeds."""
  if not summary["held_out_seeds"]:
    return []
  tuning, held = summary["tuning_seeds"], summary["held_out_seeds"]
  lines = ["", "## Tuning and held-out seeds side by side", "",
           f"| finding | per seed ({', '.join(map(str, tuning))} \\| {', '.join(map(str, held))}) "
           f"| tuning seeds: mean [95% interval] | verdict | held-out seeds: mean [95% interval] "
           f"| verdict | all seeds: mean [95% interval] | verdict |",
           "|---|---|---|---|---|---|---|---|"]
  for f in summary["findings"]:
    signed, unit = f.get("kind") != "threshold", f.get("unit", "points")
    num = lambda x: _num(x, signed, unit)  # pylint: disable=cell-var-from-loop
    values = [[f["effects"].get(str(k)) for k in group] for group in (tuning, held)]
    # each group's effects, "-" for a seed (or a whole group) without the finding
    per = " \\| ".join(", ".join("-" if v is None else num(v) for v in group)
                        if any(v is not None for v in group) else "-" for group in values)
    cells = []
    for name in ("tuning", "held_out", "all"):
      # a group with every seed of the finding is reported as "all" only (see aggregate)
      g = f.get(name) or (f["all"] if name != "all" and _only_group(f, name, summary) else None)
      cells += ([f"{num(g['mean'])} [{num(g['low'])}, {num(g['high'])}]", g["verdict"]]
                if g else ["-", "-"])
    lines.append(f"| {f['finding']} | {per} | " + " | ".join(cells) + " |")
  return lines


def _only_group(finding: Mapping[str, Any], name: str, summary: Mapping[str, Any]) -> bool:
  """Whether all of a finding's seeds belong to group `name` (aggregate then keeps 'all')."""
  group = set(map(str, summary["tuning_seeds" if name == "tuning" else "held_out_seeds"]))
  return bool(finding["effects"]) and set(finding["effects"]) <= group


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m warm_jax.seeds", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--seeds", default="0,1,2",
                      help="comma-separated seeds, or a range 0-4 (default 0,1,2)")
  parser.add_argument("--parallel", type=int, default=1, help="seeds run at once")
  parser.add_argument("--aggregate_only", action="store_true",
                      help="only aggregate the seeds' finished metrics.json")
  args, gin_args = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
  bad = [a for a in gin_args if not (a.startswith("--gin_file=") or a.startswith("--gin."))]
  if bad:
    print_error(f"unknown argument(s) {bad}: the experiment takes --gin_file=F and "
                "--gin.NAME=VALUE")
    return 2
  try:
    seeds = parse_seeds(args.seeds)
  except ValueError as e:
    print_error(f"--seeds={args.seeds!r}: {e}")
    return 2
  if not any(a.startswith("--gin_file=") for a in gin_args):
    gin_args = [f"--gin_file={DEFAULT_GIN}", *gin_args]
  failed = {}
  if not args.aggregate_only:
    results = run_seeds(seeds=seeds, output_dir=args.output_dir, gin_args=gin_args,
                        parallel=args.parallel)
    failed = {s: r for s, r in results.items() if r["exit"] != 0}
  per_seed = {s: m for s in seeds
              if (m := read_json(os.path.join(seed_dir(args.output_dir, s), "metrics.json")))}
  if not per_seed:
    print_error(f"no seed of {seeds} has a metrics.json under {args.output_dir}: run the "
                "seeds first (without --aggregate_only)")
    return 1
  summary = aggregate(per_seed)
  summary["missing_seeds"] = [s for s in seeds if s not in per_seed]
  write_report(args.output_dir, summary)
  print(f"[seeds] {len(per_seed)} seed(s) aggregated: {os.path.join(args.output_dir, 'report.md')}",
        file=sys.stderr)
  if failed:
    first = min(failed)
    print_error(f"seed {first} failed (exit {failed[first]['exit']}); its log is "
                f"{failed[first]['log']}; rerun the same command to resume it")
    return 1
  return 0


def parse_seeds(text: str) -> list[int]:
  """'0,1,2' or '0-4' (or a mix, '0-2,7') -> sorted unique seeds."""
  out = set()
  for part in text.split(","):
    part = part.strip()
    if not part:
      continue
    if "-" in part:
      lo, hi = part.split("-", 1)
      if int(hi) < int(lo):
        raise ValueError(f"range {part} is empty")
      out.update(range(int(lo), int(hi) + 1))
    else:
      out.add(int(part))
  if not out or min(out) < 0:
    raise ValueError("give seeds >= 0, e.g. 0,1,2 or 0-4")
  return sorted(out)


if __name__ == "__main__":
  sys.exit(main())
