"""Running the stages of a plan: skip the finished, run the rest as subprocesses (or in this
process), up to N independent ones at a time, record each stage's wall, CPU and model FLOPs.

Where it sits: after the plan (`pipeline.plan`); `pipeline.run_experiment` calls `run_stages`.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from warm_jax.core.checkpoints import atomic_write_text, read_json
from warm_jax.pipeline.plan import Stage
from warm_jax.pipeline.presets import StageFailed


def compile_cache_environment(cache_dir: str) -> dict[str, str]:
  """This process's environment with one persistent XLA compile cache at `cache_dir` that keeps
  every program, however fast it compiled; a JAX_COMPILATION_CACHE_DIR (or minimum compile
  time) already set wins, so an outer caller's cache (e.g. `warm_jax.seeds`' one for all
  seeds) reaches every stage."""
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", cache_dir)
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  return env


def stage_environment(cache_dir: str) -> dict[str, str]:
  """The environment every stage runs in: one persistent XLA compile cache for the whole
  experiment (`compile_cache_environment`: the two settings, the LMC pairs and the RL runs
  compile the same programs; every program is cached, however fast it compiled: the tiny
  scale's ~130 compiles of ~0.4 s each are a third of its time, and caching them all cut it
  from 200 s to 133 s) and the FLOP/s of one timed matmul, so that each stage's MFU uses the
  same reference."""
  env = compile_cache_environment(cache_dir)
  if "WARM_JAX_MATMUL_FLOPS" not in env:
    from warm_jax.core import flops as flops_lib
    env["WARM_JAX_MATMUL_FLOPS"] = repr(flops_lib.measure_matmul_flops())
  return env


def _run_subprocess(stage: Stage, log_path: str, env: Mapping[str, str] | None,
                    running: dict[str, subprocess.Popen] | None = None) -> tuple[int, float]:
  """Runs the stage's command; returns (exit code, CPU seconds of it and its children)."""
  with open(log_path, "w") as log:
    proc = subprocess.Popen(stage.argv, stdout=log, stderr=subprocess.PIPE, text=True,
                            cwd=_repo_root(), env=None if env is None else dict(env))
    if running is not None:
      running[stage.name] = proc
    for line in proc.stderr:  # child progress lines are shown, everything is logged
      log.write(line)
      if line.startswith("[") or line.startswith("error"):
        print(f"  {line.rstrip()}", file=sys.stderr, flush=True)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (stages may overlap)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def _run_in_process(stage: Stage, log_path: str, env: Mapping[str, str] | None) -> int:
  """Runs `python -m MODULE ARGS` as MODULE.main(ARGS) in this process: no interpreter, JAX
  and TensorFlow start-up per stage (seconds each, most of a tiny stage's time). Logging goes
  to the stage's log; progress lines still reach the console."""
  import contextlib
  import importlib
  import gin
  import jax
  if stage.argv[1:2] != ["-m"]:
    raise ValueError(f"stage {stage.name}: in-process stages must be `python -m MODULE ...`")
  from warm_jax.core import flops as flops_lib
  if env is not None:
    for key in ("WARM_JAX_MATMUL_FLOPS",):
      if key in env:
        os.environ[key] = env[key]
    if env.get("JAX_COMPILATION_CACHE_DIR"):
      jax.config.update("jax_compilation_cache_dir", env["JAX_COMPILATION_CACHE_DIR"])
      jax.config.update("jax_persistent_cache_min_compile_time_secs",
                        float(env.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 0)))
  root = logging.getLogger()
  saved_levels = [(h, h.level) for h in root.handlers]
  handler = logging.FileHandler(log_path, mode="w")
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
  for h, _ in saved_levels:  # the console shows progress lines and errors, the log the rest
    h.setLevel(logging.ERROR)
  root.addHandler(handler)
  # the stage's own profile: this process's counter from zero, written by the stage's gin_main
  flops_lib.COUNTER.reset()
  saved_flops_file = os.environ.get(flops_lib.STAGE_FLOPS_ENV)
  os.environ[flops_lib.STAGE_FLOPS_ENV] = stage_flops_path(stage)
  cwd = os.getcwd()
  try:
    os.chdir(_repo_root())
    gin.clear_config()
    with open(log_path + ".stdout", "w") as out, contextlib.redirect_stdout(out):
      return int(importlib.import_module(stage.argv[2]).main(list(stage.argv[3:])) or 0)
  except SystemExit as e:
    return int(e.code or 0) if not isinstance(e.code, str) else 1
  finally:
    os.chdir(cwd)
    if saved_flops_file is None:
      os.environ.pop(flops_lib.STAGE_FLOPS_ENV, None)
    else:
      os.environ[flops_lib.STAGE_FLOPS_ENV] = saved_flops_file
    flops_lib.COUNTER.reset()
    gin.clear_config()
    root.removeHandler(handler)
    handler.close()
    for h, level in saved_levels:
      h.setLevel(level)


def run_stages(stages: Sequence[Stage], *, log_dir: str, env: Mapping[str, str] | None = None,
               on_resolve: Callable[[], None] | None = None, in_process: bool = False,
               parallel: int = 1) -> dict[str, dict[str, float]]:
  """Runs the stages, skipping finished ones; returns {stage: its STAGE_DONE record}.

  Each stage is a subprocess (isolated: its memory is returned, a crash is contained) unless
  `in_process`, which calls the stage's main() here, one at a time (the tiny smoke scale:
  start-up dominates). `parallel` > 1 runs up to that many subprocess stages at once, each
  started when every stage in its `after` is done, in plan order: two tiny-decoder stages
  on 2 CPU cores share them better than one does (XLA keeps ~1.5 cores busy on these shapes).
  A failed stage stops the others (they resume on the rerun) and raises StageFailed.
  """
  import concurrent.futures
  os.makedirs(log_dir, exist_ok=True)
  parallel = 1 if in_process else max(1, int(parallel))
  records: dict[str, dict[str, float]] = {}
  t_start = time.time()
  total = len(stages)
  index = {stage.name: k for k, stage in enumerate(stages, 1)}
  def label(stage: Stage) -> str:
    return f"[experiment] stage {index[stage.name]}/{total} {stage.name}"

  def log_path(stage: Stage) -> str:
    return os.path.join(log_dir, stage.name.replace("/", "_") + ".log")

  pending = []
  resolved_done = False
  for stage in stages:
    if os.path.exists(stage.done_path):
      with open(stage.done_path) as f:
        records[stage.name] = json.load(f)
      print(f"{label(stage)}: done already ({records[stage.name]['wall_s']:.0f}s), skipped",
            file=sys.stderr, flush=True)
      if not stage.resolved:  # its inputs exist: resolve it so commands.sh keeps its command
        try:
          stage.resolve()
          resolved_done = True
        except Exception:  # pylint: disable=broad-except
          logging.warning("could not resolve the command of the finished stage %s for "
                          "commands.sh", stage.name, exc_info=True)
    else:
      pending.append(stage)
  if resolved_done and on_resolve is not None:
    on_resolve()
  known = {stage.name for stage in stages}
  running_procs: dict[str, subprocess.Popen] = {}

  def run_one(stage: Stage) -> tuple[int, float, float, float]:
    from warm_jax.core import flops as flops_lib
    flops_path = stage_flops_path(stage)
    if os.path.exists(flops_path):  # an earlier, interrupted run's: this run writes its own
      os.remove(flops_path)
    t0 = time.time()
    if in_process:
      cpu0 = _cpu_seconds()
      code = _run_in_process(stage, log_path(stage), env)
      cpu = _cpu_seconds() - cpu0
    else:
      stage_env = dict(os.environ if env is None else env)
      stage_env[flops_lib.STAGE_FLOPS_ENV] = flops_path
      code, cpu = _run_subprocess(stage, log_path(stage), stage_env, running_procs)
    return code, cpu, t0, time.time()

  failure = None
  with (concurrent.futures.ThreadPoolExecutor(max_workers=parallel) if parallel > 1
        else _InlineExecutor()) as pool:
    futures: dict[concurrent.futures.Future, Stage] = {}
    while pending or futures:
      if failure is None:
        for stage in list(pending):
          if len(futures) >= parallel:
            break
          if any(dep in known and dep not in records for dep in stage.after):
            continue
          pending.remove(stage)
          if not stage.resolved:  # on this (the scheduling) thread only
            stage.resolve()
            if on_resolve:
              on_resolve()
          others = ", ".join(futures[f].name for f in futures)
          print(f"{label(stage)}: running "
                f"({time.time() - t_start:.0f}s into the experiment"
                + (f"; beside {others})" if others else ")"), file=sys.stderr, flush=True)
          futures[pool.submit(run_one, stage)] = stage
      if not futures:
        if failure is None and pending:  # cannot happen with the plan's table; guard anyway
          raise StageFailed(f"stages {[s.name for s in pending]} wait on stages that never ran")
        break
      done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        stage = futures.pop(future)
        code, cpu, t0, t1 = future.result()
        if code != 0:
          if failure is None:
            failure = (f"stage {stage.name} failed (exit {code}); its log is {log_path(stage)}; "
                       "fix the cause and rerun the same command: finished stages are skipped "
                       "and this one resumes")
            for name, proc in list(running_procs.items()):
              if proc.poll() is None and name != stage.name:
                proc.terminate()  # it resumes from its own checkpoints on the rerun
          continue
        record = {"wall_s": round(t1 - t0, 2), "cpu_s": round(cpu, 2),
                  "start": round(t0, 2), "end": round(t1, 2)}
        record.update(_flops_fields(stage))
        os.makedirs(stage.output, exist_ok=True)
        atomic_write_text(stage.done_path, json.dumps(record) + "\n")
        records[stage.name] = record
        if parallel > 1:
          print(f"{label(stage)}: done in "
                f"{record['wall_s']:.0f}s", file=sys.stderr, flush=True)
  if failure is not None:
    raise StageFailed(failure)
  return records


class _InlineExecutor:
  """Runs each submitted stage at once in the calling thread (parallel=1: in-process stages
  stay on the main thread, where signals, profilers and JAX's state expect them)."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def submit(self, fn, *args):
    import concurrent.futures
    future = concurrent.futures.Future()
    try:
      future.set_result(fn(*args))
    except BaseException as e:  # re-raised by future.result() in the scheduler
      future.set_exception(e)
    return future


def stage_flops_path(stage: Stage) -> str:
  """Where a stage's program writes its model FLOPs (`flops.write_stage_flops`)."""
  from warm_jax.core.flops import STAGE_FLOPS_FILE
  return os.path.join(stage.output, STAGE_FLOPS_FILE)


def _flops_fields(stage: Stage) -> dict[str, float]:
  """The STAGE_DONE fields of the stage's STAGE_FLOPS.json: its model FLOPs and the reference
  FLOP/s its MFU is read against; none when the stage counted nothing (no model program ran,
  or its program does not count: FLOPs unknown)."""
  try:
    counted = read_json(stage_flops_path(stage))
  except (OSError, ValueError):
    logging.warning("unreadable %s: the stage's FLOPs are unknown", stage_flops_path(stage),
                    exc_info=True)
    return {}
  if not counted:
    return {}
  out = {"flops": float(counted["flops"])}
  if counted.get("reference_flop_per_s"):
    out["reference_flop_per_s"] = float(counted["reference_flop_per_s"])
  return out


def stage_profile(records: Mapping[str, Mapping[str, float]], names: Sequence[str],
                  total_wall_s: float | None = None) -> dict[str, dict[str, float]]:
  """metrics.json's `flops` and `mfu`: per stage, the model FLOPs its programs counted and
  MFU = FLOPs / its wall seconds / the reference FLOP/s (the timed matmul the driver hands
  down, WARM_JAX_MATMUL_FLOPS: on CPU one 2048^3 float32 matmul using every core; on
  accelerators x devices), the same reference as the stages' perf/mfu. Stages without a count
  are left out (unknown). 'total': the counted stages' FLOPs, and their MFU over the
  experiment's wall time (`experiment_wall_seconds`) when given."""
  flops, mfu, reference = {}, {}, None
  for name in names:
    record = records.get(name) or {}
    if record.get("flops") is None:
      continue
    flops[name] = record["flops"]
    if record.get("reference_flop_per_s") and record.get("wall_s"):
      reference = reference or record["reference_flop_per_s"]
      mfu[name] = record["flops"] / record["wall_s"] / record["reference_flop_per_s"]
  if flops:
    flops["total"] = sum(flops.values())
    if reference and total_wall_s:
      mfu["total"] = flops["total"] / total_wall_s / reference
  return {"flops": flops, "mfu": mfu}


def experiment_wall_seconds(records: Mapping[str, Mapping[str, float]]) -> float:
  """Wall seconds during which at least one stage ran: the length of the union of the stages'
  [start, end] intervals (overlapping stages count once; the idle time between a stopped run
  and its resumption not at all). Markers without times (older runs) add their wall_s."""
  intervals, extra = [], 0.0
  for record in records.values():
    if "start" in record and "end" in record:
      intervals.append((record["start"], record["end"]))
    else:
      extra += record["wall_s"]
  total, cur_start, cur_end = 0.0, None, None
  for start, end in sorted(intervals):
    if cur_end is None or start > cur_end:
      if cur_end is not None:
        total += cur_end - cur_start
      cur_start, cur_end = start, end
    else:
      cur_end = max(cur_end, end)
  if cur_end is not None:
    total += cur_end - cur_start
  return round(total + extra, 2)


def _cpu_seconds() -> float:
  """CPU seconds (user + system) of this process and its finished children: a stage's cost
  that, unlike wall time, does not grow when other jobs share the machine."""
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


def _repo_root() -> str:
  """The repository root: stages run there (their gin files are relative to it)."""
  return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_commands(stages: Sequence[Stage], path: str) -> None:
  lines = ["#!/usr/bin/env bash", "# The stages of this experiment, in order (run from the "
           "repository root).", "set -euo pipefail"]
  for stage in stages:
    lines.append(f"# {stage.name}")
    if stage.resolved:
      lines.append(" ".join(shlex.quote(a) for a in ["python", *stage.argv[1:]]))
    else:
      lines.append("# (its arguments come from earlier stages: written when it starts)")
  atomic_write_text(path, "\n".join(lines) + "\n")
