"""Drill 5: one process of a two-process jax.distributed run dies; the other must exit quickly.

  python launch/drills/peer_death.py [--bound_s 60] [--workdir DIR]

Two local processes (2 CPU devices each) pre-train the tiny model through
`python -m warm_jax.train --multihost`; one of them SIGKILLs itself after a given step
(WARM_JAX_FAULT_KILL_AT_STEP). Scenarios:

  worker_between_steps       process 1 dies; no checkpoint save in flight
  coordinator_between_steps  process 0 (the coordination service's host) dies
  worker_during_save         process 1 dies right after a checkpoint save was issued

For each, the survivor must exit non-zero within --bound_s seconds of the death (measured from
the victim's exit), with one of the two clear messages:

  ours  `error: JaxRuntimeError in process P of 2: ... Another process of this jax.distributed
        job probably stopped ... Restart all processes with the same command ...` (exit 1,
        when the survivor's next collective fails: `gin_utils.gin_main`);
  jax's "Terminating process because the JAX distributed service detected fatal errors. This
        most likely indicates that another task died" (SIGABRT, when the coordination service
        notices first; bounded by the heartbeat timeout, 30 s by default,
        WARM_JAX_HEARTBEAT_TIMEOUT_S).

Writes DIR/report.json; exits 1 if a survivor hung past the bound or exited unclearly.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

import common

ARGS = ["-m", "warm_jax.train", "--gin_file=gin/models/tiny.gin", "--gin_file=gin/pretrain.gin",
        "--gin_file=gin/data/inline_bytes.gin", "--gin.BATCH_SIZE=8",
        "--gin.pretraining_dataset.num_docs=60", "--gin.TRAIN_STEPS=60",
        "--gin.TrainerConfig.eval_every=0", "--gin.TrainerConfig.log_every=2",
        "--gin.TrainerConfig.peak_flops_per_device=1e11", "--multihost"]
SCENARIOS = {  # name: (victim, kill after step, save_every)
    "worker_between_steps": (1, 3, 100),
    "coordinator_between_steps": (0, 3, 100),
    "worker_during_save": (1, 4, 2),
}
OURS = "Another process of this jax.distributed job probably stopped"
JAX_S = "the JAX distributed service detected fatal errors"


def run_scenario(name, victim, kill_at, save_every, *, work, bound_s):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  model_dir = common.fresh_dir(os.path.join(work, name))
  procs, logs = [], []
  for i in range(2):
    env = common.drill_env(XLA_FLAGS="--xla_force_host_platform_device_count=2",
                           JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                           JAX_PROCESS_ID=str(i))
    if i == victim:
      env[common.FAULT_ENV] = str(kill_at)
    logs.append(open(os.path.join(work, f"{name}.process_{i}.log"), "w+"))
    procs.append(subprocess.Popen(
        [sys.executable, *ARGS, f"--gin.MODEL_DIR='{model_dir}/run'",
         f"--gin.TrainerConfig.save_every={save_every}"], cwd=common.REPO_ROOT, env=env,
        stdout=logs[-1], stderr=subprocess.STDOUT))
  survivor = procs[1 - victim]
  try:
    procs[victim].wait(timeout=900)
    died = time.time()
    try:
      survivor.wait(timeout=bound_s)
      exit_s = time.time() - died
    except subprocess.TimeoutExpired:
      exit_s = None
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  logs[1 - victim].seek(0)
  text = logs[1 - victim].read()
  for f in logs:
    f.close()
  kind = "ours" if OURS in text else "jax" if JAX_S in text else "unclear"
  record = {"victim": victim, "victim_returncode": procs[victim].returncode,
            "survivor_returncode": survivor.returncode,
            "survivor_exit_s_after_death": None if exit_s is None else round(exit_s, 2),
            "message": kind,
            "error_line": next((line for line in text.splitlines()
                                if line.startswith("error: ") or JAX_S in line), None)}
  failures = []
  if procs[victim].returncode != -signal.SIGKILL:
    failures.append(f"{name}: the victim exited {procs[victim].returncode}, not by SIGKILL")
  if exit_s is None:
    failures.append(f"{name}: the survivor still ran {bound_s}s after the death (a hang)")
  elif survivor.returncode == 0 or kind == "unclear":
    failures.append(f"{name}: survivor exit {survivor.returncode}, message {kind}")
  return record, failures


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--bound_s", type=float, default=60)
  parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS),
                      default=list(SCENARIOS))
  parser.add_argument("--workdir", default=os.path.join(
      os.environ.get("TMPDIR", "/tmp"), "warm_jax_drills", "peer_death"))
  flags = parser.parse_args()
  work = common.fresh_dir(flags.workdir)
  records, failures = {}, []
  for name in flags.scenarios:
    victim, kill_at, save_every = SCENARIOS[name]
    common.log(f"{name}: process {victim} dies after step {kill_at} (save every {save_every})")
    record, errors = run_scenario(name, victim, kill_at, save_every, work=work,
                                  bound_s=flags.bound_s)
    records[name], failures = record, failures + errors
    common.log(f"{name}: survivor exit {record['survivor_returncode']} "
               f"{record['survivor_exit_s_after_death']}s after the death ({record['message']})")
  report = {"drill": "peer_death", "bound_s": flags.bound_s, "scenarios": records,
            "failures": failures, "passed": not failures}
  common.write_report(os.path.join(work, "report.json"), report)
  print(f"peer_death: {'PASSED' if not failures else 'FAILED'}: " + "; ".join(
      f"{n}: exit {r['survivor_returncode']} after {r['survivor_exit_s_after_death']}s "
      f"({r['message']})" for n, r in records.items()))
  for failure in failures:
    print(f"  {failure}")
  return 0 if not failures else 1


if __name__ == "__main__":
  sys.exit(main())
