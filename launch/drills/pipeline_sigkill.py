"""Drill 6: SIGKILL the whole experiment at random moments; the reruns must end where an
uninterrupted run ends.

  python launch/drills/pipeline_sigkill.py [--kills 5] [--seed S] [--workdir DIR]
      [--gin_file gin/experiments/warm_synthetic_tldr_tiny.gin] [--in_process]

Runs the experiment (the tiny preset by default; stages as subprocesses, two at a time, unless
--in_process) once without interruption, then again into another dir, SIGKILLing the driver and
every stage process it started (its process group) at `--kills` random moments (from --seed,
printed): a random stage still to run, killed a random fraction of its uninterrupted wall time
after it starts, or (one time in four) the instant it finishes; the same command is rerun after
each kill. Each kill is recorded with what was running: a stage mid-way, two stages
side by side, or the driver between stages. After every kill:

  * no stage dir looks complete but is not: every stage holding the driver's STAGE_DONE marker
    holds every top-level file and dir the uninterrupted run's same stage holds;

and at the end, after a last rerun to completion:

  * metrics.json equals the uninterrupted run's, except what measures time or load (timings,
    CPU seconds, FLOPs and MFU per stage: a stage killed mid-way counts only its resumed part,
    wall seconds, load averages).

Writes DIR/report.json; exits 1 if anything failed. The suite runs one kill
(tests/test_experiment.py); docs/reliability.md records a full run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

import common
from warm_jax.pipeline.presets import STAGE_DONE

TINY = "gin/experiments/warm_synthetic_tldr_tiny.gin"
# metrics.json entries that measure time or load, not results
VOLATILE_TOP = ("timings", "cpu_s", "flops", "mfu", "load_average")
VOLATILE_KEY = re.compile(r"(^|_)(s|wall|seconds|secs|time|timing|timings)$|wall_s|_seconds$")


def results_only(value, out: str, top: bool = True):
  """`value` (the metrics.json of the run in `out`) without the entries that measure time or
  load, and with the run's own dir written as OUT in the paths it names."""
  if isinstance(value, dict):
    return {k: results_only(v, out, False) for k, v in value.items()
            if not (top and k in VOLATILE_TOP) and not VOLATILE_KEY.search(str(k))}
  if isinstance(value, list):
    return [results_only(v, out, False) for v in value]
  if isinstance(value, str):
    return value.replace(os.path.abspath(out), "OUT")
  return value


def differences(a, b, path: str = "") -> list[str]:
  """Where two JSON values differ (paths), at most a few per branch."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = [f"{path}/{k}: only in one" for k in sorted(set(a) ^ set(b))]
    for k in sorted(set(a) & set(b)):
      out += differences(a[k], b[k], f"{path}/{k}")
    return out
  if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
    return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
  return [] if a == b else [f"{path}: {str(a)[:80]} != {str(b)[:80]}"]


def stage_dirs(out: str) -> dict[str, str]:
  """{stage name: its dir} for every stage dir holding the driver's STAGE_DONE marker."""
  found = {}
  for root, _, files in os.walk(out):
    if STAGE_DONE in files:
      found[os.path.relpath(root, out)] = root
  return found


def top_level(path: str) -> set[str]:
  """A stage dir's top-level entries that say what it produced (logs and TensorBoard files,
  whose names carry times and hosts, left out)."""
  return {name for name in os.listdir(path)
          if name not in ("tb", "logs") and ".tmp-" not in name and not name.endswith(".log")}


def experiment_command(args, out: str) -> list[str]:
  command = ["-m", "warm_jax.experiment", f"--gin_file={args.gin_file}", f"--output_dir={out}"]
  if not args.in_process:
    command += ["--gin.IN_PROCESS=False", "--gin.PARALLEL_STAGES=2"]
  return command


def start(args, env, out: str, log_path: str) -> subprocess.Popen:
  """The driver in its own process group (so one killpg reaches every stage it started)."""
  log = open(log_path, "a")
  return subprocess.Popen([sys.executable, *experiment_command(args, out)], cwd=common.REPO_ROOT,
                          env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def running_stages(log_path: str) -> list[str]:
  """Stages the driver's log shows started and not finished (the last run of the log)."""
  text = open(log_path).read().split("# run ")[-1]
  started = re.findall(r"stage \d+/\d+ (\S+): running", text)
  ended = set(re.findall(r"stage \d+/\d+ (\S+): (?:done|skipped|failed)", text))
  return [s for s in started if s not in ended]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--kills", type=int, default=5)
  parser.add_argument("--seed", type=int, default=None)
  parser.add_argument("--gin_file", default=TINY)
  parser.add_argument("--in_process", action="store_true")
  parser.add_argument("--workdir", default=os.path.join(
      os.environ.get("TMPDIR", "/tmp"), "warm_jax_drills", "pipeline_sigkill"))
  args = parser.parse_args(argv)
  seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
  rng = np.random.default_rng(seed)
  work = common.fresh_dir(args.workdir)
  env = common.drill_env(XLA_FLAGS="")  # one CPU device, as a user's run
  common.log(f"pipeline drill: {args.kills} kills, seed {seed}, workdir {work}")

  straight = os.path.join(work, "straight")
  t0 = time.time()
  proc = start(args, env, straight, os.path.join(work, "straight.log"))
  if proc.wait() != 0:
    common.log("the uninterrupted run failed: see straight.log")
    return 1
  total = time.time() - t0
  common.log(f"uninterrupted run: {total:.0f} s")
  reference = results_only(json.load(open(os.path.join(straight, "metrics.json"))), straight)
  reference_stages = stage_dirs(straight)

  killed, log_path = os.path.join(work, "killed"), os.path.join(work, "killed.log")
  stage_wall = json.load(open(os.path.join(straight, "metrics.json")))["timings"]
  numbered = re.findall(r"stage (\d+)/\d+ (\S+): running",
                        open(os.path.join(work, "straight.log")).read())
  order = [name for _, name in sorted((int(i), name) for i, name in set(numbered))]
  kills, failures = [], []
  for k in range(args.kills):
    done = set(stage_dirs(killed))
    left = [name for name in order if name not in done]
    if not left:
      break
    # the moment: one of the next stages to run (the kills spread over the run), and either a
    # random point of it (a share of its uninterrupted wall time) or the instant it finishes
    # (the driver between stages)
    target = str(rng.choice(left[:max(1, len(left) // (args.kills - k))]))
    between = bool(rng.random() < 0.25)
    fraction = float(rng.uniform(0.1, 0.9))
    with open(log_path, "a") as f:
      f.write(f"\n# run {k + 1}\n")
    proc = start(args, env, killed, log_path)
    started_at, landed = None, None
    while proc.poll() is None:
      text = open(log_path).read().split("# run ")[-1]
      if started_at is None and re.search(rf" {re.escape(target)}: running", text):
        started_at = time.time()
      finished = re.search(rf" {re.escape(target)}: done", text)
      if finished or (started_at is not None and not between
                      and time.time() - started_at >= fraction * stage_wall.get(target, 1.0)):
        stages = running_stages(log_path)
        os.killpg(proc.pid, signal.SIGKILL)
        landed = ("between stages" if not stages else f"mid-stage: {stages[0]}"
                  if len(stages) == 1 else
                  f"{len(stages)} stages side by side: {', '.join(stages)}")
        break
      time.sleep(0.05)
    proc.wait()
    if landed is None:
      kills.append({"kill": k + 1, "target": target, "landed": "the run ended first"})
      break
    bad = [name for name, path in stage_dirs(killed).items()
           if name in reference_stages and not top_level(reference_stages[name]) <= top_level(path)]
    kills.append({"kill": k + 1, "target": target,
                  "when": "as it finished" if between else f"{fraction:.0%} into it",
                  "landed": landed, "stages_done": len(stage_dirs(killed)),
                  "looks_complete_but_is_not": bad})
    failures += [f"kill {k + 1}: {name} has STAGE_DONE but lacks what the uninterrupted run's "
                 "stage holds" for name in bad]
    common.log(f"kill {k + 1}: {landed} ({len(stage_dirs(killed))} stages done)")
  with open(log_path, "a") as f:
    f.write("\n# run final\n")
  proc = start(args, env, killed, log_path)
  if proc.wait() != 0:
    failures.append("the last rerun failed: see killed.log")
  else:
    got = results_only(json.load(open(os.path.join(killed, "metrics.json"))), killed)
    diff = differences(reference, got)
    failures += [f"metrics.json differs at {d}" for d in diff[:20]]
  report = {"drill": "pipeline_sigkill", "seed": seed, "gin_file": args.gin_file,
            "in_process": args.in_process, "uninterrupted_s": round(total, 1),
            "stages": len(reference_stages), "kills": kills, "failures": failures,
            "passed": not failures}
  common.write_report(os.path.join(work, "report.json"), report)
  common.log("PASSED" if not failures else "FAILED:\n  " + "\n  ".join(failures))
  return 0 if not failures else 1


if __name__ == "__main__":
  sys.exit(main())
