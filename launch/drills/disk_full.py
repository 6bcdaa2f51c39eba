"""Drill 3: the disk fills up during a checkpoint save (trainer) and an output write (averager).

  python launch/drills/disk_full.py [--mode auto|tmpfs|rlimit] [--workdir DIR]

tmpfs mode (needs root, i.e. `mount`): a reward-model member trains into a small tmpfs sized
to hold its first two checkpoints (measured from an uninterrupted run on the normal disk), so
the third save meets a real ENOSPC. Checked:

  * the run exits 1 with one `error: CheckpointWriteError: writing the checkpoint of step S
    ... No space left on device ... the last complete checkpoint is step K, intact ...` line;
  * every published checkpoint restores and is bit-identical to the uninterrupted run's at the
    same step (so nothing of it was touched), no DONE;
  * after the tmpfs is grown (`mount -o remount,size=...`: space freed), the same command
    resumes and ends bit-identical to the uninterrupted run;
  * the averager writing into a full tmpfs exits 1 (`CheckpointWriteError: writing OUTPUT
    failed: ... No space left on device ... nothing was written`), leaves nothing there and its
    inputs byte-identical.

rlimit mode (any user; what tests/test_reliability.py does): the same checks with the kernel's
per-process file-size limit (RLIMIT_FSIZE) instead of a full file system: writes fail with
EFBIG ("File too large") from the chosen save on. auto: tmpfs when mounting works, else rlimit.
Writes DIR/report.json; exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap

import common

# RLIMIT_FSIZE from the save of step LIMIT_AT on (the process's own writes then fail with EFBIG).
_RLIMIT_DRIVER = textwrap.dedent("""
    import resource, signal, sys
    from warm_jax import checkpoints
    limit_at, module = int(sys.argv[1]), sys.argv[2]
    original = checkpoints.TrainCheckpointer.save
    def save(self, step, *args, **kwargs):
      if step >= limit_at and resource.getrlimit(resource.RLIMIT_FSIZE)[0] != 16384:
        self.wait()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, resource.RLIM_INFINITY))
      return original(self, step, *args, **kwargs)
    checkpoints.TrainCheckpointer.save = save
    if module == "average":
      from warm_jax.merging import output
      save_tree = output.save_tree
      def limited(*args, **kwargs):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        return save_tree(*args, **kwargs)
      output.save_tree = limited
      from warm_jax import average
      sys.exit(average.main(sys.argv[3:]))
    from warm_jax import train
    sys.exit(train.main(sys.argv[3:]))
""")


def can_mount(path: str) -> bool:
  os.makedirs(path, exist_ok=True)
  ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", path],
                      capture_output=True).returncode == 0
  if ok:
    subprocess.run(["umount", path], check=True)
  return ok


def disk_usage(path: str) -> int:
  """Bytes of blocks used under path (what a file system's size limit counts)."""
  return sum(os.lstat(os.path.join(d, f)).st_blocks * 512
             for d, _, files in os.walk(path) for f in files) + 4096 * sum(
                 len(dirs) + 1 for _, dirs, _ in os.walk(path))


def error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith("error: ")]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--mode", choices=("auto", "tmpfs", "rlimit"), default="auto")
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--workdir", default=os.path.join(
      os.environ.get("TMPDIR", "/tmp"), "warm_jax_drills", "disk_full"))
  flags = parser.parse_args()
  work = flags.workdir
  os.makedirs(work, exist_ok=True)
  for name in ("straight", "mnt", "avg_mnt", "rlimit"):
    path = os.path.join(work, name)
    if os.path.ismount(path):
      subprocess.run(["umount", path], check=True)
    shutil.rmtree(path, ignore_errors=True)
  mode = flags.mode
  if mode == "auto":
    mode = "tmpfs" if can_mount(os.path.join(work, "mnt")) else "rlimit"
  log_path = os.path.join(work, "drill.log")
  common.log(f"mode {mode}; log {log_path}")
  assets = common.RewardModelAssets(os.path.join(work, "assets"), log_path=log_path)
  env = common.drill_env()
  save_every = 2

  def args(members_dir):
    return assets.rm_args(members_dir, steps=flags.steps, save_every=save_every)

  straight = os.path.join(work, "straight")
  common.run(args(straight), env=env, log_path=log_path)
  straight_run = os.path.join(straight, "member_0")
  steps = common.complete_steps(straight_run)  # e.g. 1 (orbax's first), 2, 4, 6, 8
  keep = steps[:2]
  failures, report = [], {"drill": "disk_full", "mode": mode}

  # -- the trainer ---------------------------------------------------------------------------
  mnt = os.path.join(work, "mnt" if mode == "tmpfs" else "rlimit")
  os.makedirs(mnt, exist_ok=True)
  members = os.path.join(mnt, "members")
  run_dir = os.path.join(members, "member_0")
  if mode == "tmpfs":
    # Room for everything but the checkpoints, the first two checkpoints, and half a third.
    ckpt_bytes = [disk_usage(os.path.join(straight_run, "checkpoints", str(s))) for s in steps]
    other = disk_usage(straight_run) - sum(ckpt_bytes)
    size = other + sum(ckpt_bytes[:2]) + ckpt_bytes[2] // 2
    size = (size // 4096 + 1) * 4096
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mnt], check=True)
    report["tmpfs_bytes"] = size
    proc = common.run(args(members), env=env, check=False, log_path=log_path)
    reason = "No space left on device"
  else:
    proc = common.run(["-c", _RLIMIT_DRIVER, str(steps[2]), "train",
                       *args(members)[2:]], env=env, check=False, log_path=log_path)
    reason = "File too large"
  lines = error_lines(proc.stderr)
  report["trainer"] = {"returncode": proc.returncode, "error": lines}
  if proc.returncode != 1 or len(lines) != 1:
    failures.append(f"trainer: exit {proc.returncode}, error lines {lines}")
  elif not (lines[0].startswith("error: CheckpointWriteError: writing the checkpoint of step ")
            and reason in lines[0] and f"the last complete checkpoint is step {keep[-1]}, "
            "intact" in lines[0]):
    failures.append(f"trainer: unexpected message {lines[0]}")
  published = common.check_checkpoints_readable(run_dir)
  report["trainer"]["published_steps"] = published
  if published != keep:
    failures.append(f"trainer: published steps {published}, expected {keep}")
  for step in published:
    equal, detail = common.bitwise_equal(straight_run, run_dir, step)
    if not equal:
      failures.append(f"trainer: step {step} differs from the uninterrupted run: {detail}")
  if os.path.exists(os.path.join(run_dir, "DONE")):
    failures.append("trainer: DONE written")
  # Space again: the same command resumes and ends where the uninterrupted run ended.
  if mode == "tmpfs":
    subprocess.run(["mount", "-o", "remount,size=256m", mnt], check=True)
  resumed = common.run(args(members), env=env, check=False, log_path=log_path)
  equal, detail = (common.bitwise_equal(straight_run, run_dir, flags.steps)
                   if resumed.returncode == 0 else (False, f"exit {resumed.returncode}"))
  report["trainer"]["resumed"] = detail
  if not equal:
    failures.append(f"trainer: resume after freeing space: {detail}")

  # -- the averager --------------------------------------------------------------------------
  inputs = [straight_run, os.path.join(straight_run, "checkpoints", str(keep[-1]))]
  before = common.file_hashes(*inputs)
  if mode == "tmpfs":
    out_root = os.path.join(work, "avg_mnt")
    os.makedirs(out_root, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", out_root], check=True)
    output = os.path.join(out_root, "warm")
    proc = common.run(["-m", "warm_jax.average", "--inputs", *inputs, "--output", output],
                      env=env, check=False, log_path=log_path)
  else:
    out_root = os.path.join(work, "rlimit", "avg")
    os.makedirs(out_root, exist_ok=True)
    output = os.path.join(out_root, "warm")
    proc = common.run(["-c", _RLIMIT_DRIVER, "0", "average", "--inputs", *inputs, "--output",
                       output], env=env, check=False, log_path=log_path)
  lines = error_lines(proc.stderr)
  left = sorted(os.listdir(out_root))
  report["averager"] = {"returncode": proc.returncode, "error": lines, "left": left}
  if proc.returncode != 1 or len(lines) != 1 or not lines[0].startswith(
      f"error: CheckpointWriteError: writing {output} failed: ") or reason not in lines[0]:
    failures.append(f"averager: exit {proc.returncode}, error lines {lines}")
  if left:
    failures.append(f"averager: left {left} in the output dir")
  if common.file_hashes(*inputs) != before:
    failures.append("averager: an input changed")

  for path in (mnt, os.path.join(work, "avg_mnt")):
    if os.path.ismount(path):
      subprocess.run(["umount", path], check=True)
  report.update(failures=failures, passed=not failures)
  common.write_report(os.path.join(work, "report.json"), report)
  print(f"disk_full ({mode}): {'PASSED' if not failures else 'FAILED'}: trainer "
        f"{report['trainer']['error']}; kept {report['trainer']['published_steps']}; resumed: "
        f"{report['trainer']['resumed']}; averager {report['averager']['error']}")
  for failure in failures:
    print(f"  {failure}")
  return 0 if not failures else 1


if __name__ == "__main__":
  sys.exit(main())
