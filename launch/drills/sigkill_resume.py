"""Drill 1: SIGKILL a reward-model training at random steps; every resume must end bit-identical.

  python launch/drills/sigkill_resume.py [--kills 10] [--steps 40] [--seed S] [--workdir DIR]

Builds a tiny RM setup with the real programs (data build, pre-training, SFT, linear probe),
trains member 0 once without interruption, then runs the same command again and SIGKILLs it
`--kills` times at random steps (drawn from --seed, printed): odd kills through the trainer's
fault hook (WARM_JAX_FAULT_KILL_AT_STEP: right after that step's checkpoint save was issued),
even kills from outside the moment a checkpoint write is in flight (an
`<step>.orbax-checkpoint-tmp` dir appears at or after the drawn step). After each kill:

  * every published checkpoint restores (params and optimizer state, finite values);
  * a copy of the killed run, resumed to the end, is bit-identical to the uninterrupted run
    (params and optimizer state): each resume, not only the last, ends where it should.

The killed run itself is then resumed and killed again at the next step; at the end it is
resumed to completion and compared too. Writes DIR/report.json; exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

import common


def kill_when_saving(args, env, model_dir, at_step, timeout=600):
  """Runs the command and SIGKILLs it once a checkpoint write of a step >= at_step is in flight
  (or when it reaches at_step, if no save is due before the end). Returns (returncode,
  what was in flight when killed)."""
  started = time.time()
  proc = subprocess.Popen([sys.executable, *args], cwd=common.REPO_ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = started + timeout
  in_flight = None
  while proc.poll() is None and time.time() < deadline:
    tmp = []
    for path in glob.glob(os.path.join(model_dir, "checkpoints", "*.orbax-checkpoint-tmp*")):
      try:
        if os.stat(path).st_mtime >= started:  # not one left by the previous kill
          tmp.append(os.path.basename(path))
      except FileNotFoundError:  # published (renamed) meanwhile
        pass
    steps = [int(name.split(".")[0]) for name in tmp if name.split(".")[0].isdigit()]
    if any(s >= at_step for s in steps):
      proc.send_signal(signal.SIGKILL)
      in_flight = sorted(tmp)
      break
    time.sleep(0.002)
  proc.wait()
  return proc.returncode, in_flight


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=10)
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--save_every", type=int, default=3)
  parser.add_argument("--seed", type=int, default=None)
  parser.add_argument("--workdir", default=os.path.join(
      os.environ.get("TMPDIR", "/tmp"), "warm_jax_drills", "sigkill_resume"))
  flags = parser.parse_args()
  if not 1 <= flags.kills < flags.steps:
    parser.error("need 1 <= --kills < --steps")
  seed = flags.seed if flags.seed is not None else int.from_bytes(os.urandom(4), "little")
  rng = np.random.default_rng(seed)
  kill_steps = sorted(int(s) for s in rng.choice(np.arange(1, flags.steps), flags.kills,
                                                 replace=False))
  work = flags.workdir
  os.makedirs(work, exist_ok=True)
  for name in ("straight", "killed", "side"):
    shutil.rmtree(os.path.join(work, name), ignore_errors=True)
  log_path = os.path.join(work, "drill.log")
  common.log(f"seed {seed}: kills after steps {kill_steps} of {flags.steps} "
             f"(save every {flags.save_every}); log {log_path}")
  assets = common.RewardModelAssets(os.path.join(work, "assets"), log_path=log_path)
  env = common.drill_env()

  def args(members_dir):
    return assets.rm_args(members_dir, steps=flags.steps, save_every=flags.save_every)

  t0 = time.time()
  straight = os.path.join(work, "straight")
  common.run(args(straight), env=env, log_path=log_path)
  straight_run = os.path.join(straight, "member_0")
  common.log(f"uninterrupted run: {time.time() - t0:.0f}s")

  killed = os.path.join(work, "killed")
  killed_run = os.path.join(killed, "member_0")
  records, failures = [], []
  for i, step in enumerate(kill_steps):
    mode = "fault hook" if i % 2 == 0 else "mid-save, from outside"
    if i % 2 == 0:
      proc = subprocess.run([sys.executable, *args(killed)], cwd=common.REPO_ROOT,
                            env=common.drill_env(**{common.FAULT_ENV: str(step)}),
                            capture_output=True, text=True)
      code, in_flight = proc.returncode, None
    else:
      code, in_flight = kill_when_saving(args(killed), env, killed_run, step)
    record = {"kill": i + 1, "mode": mode, "drawn_step": step, "returncode": code,
              "in_flight_at_kill": in_flight}
    if code != -signal.SIGKILL:
      failures.append(f"kill {i + 1}: the run was not killed (exit {code})")
    try:
      record["complete_steps"] = common.check_checkpoints_readable(killed_run)
    except AssertionError as e:
      failures.append(f"kill {i + 1}: {e}")
    # Each resume must end where the uninterrupted run ended: resume a copy to the end.
    side = os.path.join(work, "side", f"kill_{i + 1}")
    shutil.copytree(killed, side)
    common.run(args(side), env=env, log_path=log_path)
    equal, detail = common.bitwise_equal(straight_run, os.path.join(side, "member_0"),
                                         flags.steps)
    record["resumed_copy"] = detail
    if not equal:
      failures.append(f"kill {i + 1}: resumed copy: {detail}")
    shutil.rmtree(side)
    records.append(record)
    common.log(f"kill {i + 1}/{flags.kills} ({mode}) at step {step}: exit {code}, published "
               f"steps {record.get('complete_steps')}, in flight {in_flight}; resumed copy: "
               f"{detail}")

  common.run(args(killed), env=env, log_path=log_path)
  equal, detail = common.bitwise_equal(straight_run, killed_run, flags.steps)
  if not equal:
    failures.append(f"final resume: {detail}")
  common.check_checkpoints_readable(killed_run)
  report = {"drill": "sigkill_resume", "seed": seed, "steps": flags.steps,
            "save_every": flags.save_every, "kill_steps": kill_steps, "kills": records,
            "final_resume": detail, "failures": failures,
            "wall_s": round(time.time() - t0, 1), "passed": not failures}
  common.write_report(os.path.join(work, "report.json"), report)
  print(f"sigkill_resume: {'PASSED' if not failures else 'FAILED'}: {flags.kills} kills "
        f"(seed {seed}), final resume: {detail}")
  for failure in failures:
    print(f"  {failure}")
  return 0 if not failures else 1


if __name__ == "__main__":
  sys.exit(main())
