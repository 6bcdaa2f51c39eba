"""Drill 2: SIGKILL the averager while it writes; no output may look complete, inputs unchanged.

  python launch/drills/averager_sigkill.py [--kills 10] [--members 4] [--mib 64] [--seed S]
      [--workdir DIR]

Saves `--members` reward-model-shaped checkpoints of `--mib` MiB each, times one clean
`python -m warm_jax.average` (and the window between its temporary output appearing and the
publish), then runs it again and again, SIGKILLing it from outside at a uniformly random
moment of that window, until `--kills` kills landed mid-write (timing jitter lands some kills just after the publish: then OUTPUT
must be complete; it is removed for the next attempt). After each kill mid-write:

  * OUTPUT does not exist, and nothing there carries a manifest.json (what marks a complete
    averager output): only OUTPUT.tmp-<pid>, which no reader mistakes for the output;
  * every file of every input is byte-identical (sha256) to before.

Finally a clean run publishes OUTPUT, warns about the leftovers, and its content hash equals
the first clean run's. Writes DIR/report.json; exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

import common


def save_members(root: str, n: int, mib: int) -> list[str]:
  from warm_jax.core import checkpoints as ckpt
  cols = 512
  rows = max(1, mib * 2**20 // (4 * cols * 4))  # 4 leaves of float32
  paths = []
  for i in range(n):
    rng = np.random.default_rng(i)
    tree = {"decoder": {f"layer_{j}": {"kernel": rng.standard_normal((rows, cols), np.float32)}
                        for j in range(4)},
            "reward_head": {"kernel": rng.standard_normal((cols, 1), np.float32),
                            "bias": np.zeros((1,), np.float32)}}
    paths.append(os.path.join(root, f"rm_{i}"))
    ckpt.save_params(tree, paths[-1])
  return paths


def watch(args, output, *, kill_after=None, timeout=900):
  """Runs the averager. Returns (returncode, seconds from the temporary output appearing to
  the publish (OUTPUT appearing), whether OUTPUT was published when killed, stderr)."""
  proc = subprocess.Popen([sys.executable, *args], cwd=common.REPO_ROOT,
                          env=common.drill_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  appeared = published = None
  deadline = time.time() + timeout
  published_at_kill = None
  while proc.poll() is None and time.time() < deadline:
    now = time.time()
    if appeared is None and glob.glob(f"{glob.escape(output)}.tmp-{proc.pid}*"):  # this run's
      appeared = now
    if published is None and os.path.exists(output):
      published = now
    if appeared is not None and kill_after is not None and now - appeared >= kill_after:
      published_at_kill = os.path.exists(output)
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.001)
  _, stderr = proc.communicate()
  window = published - appeared if appeared is not None and published is not None else None
  return proc.returncode, window, published_at_kill, stderr


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=10)
  parser.add_argument("--members", type=int, default=4)
  parser.add_argument("--mib", type=int, default=64)
  parser.add_argument("--seed", type=int, default=None)
  parser.add_argument("--workdir", default=os.path.join(
      os.environ.get("TMPDIR", "/tmp"), "warm_jax_drills", "averager_sigkill"))
  flags = parser.parse_args()
  seed = flags.seed if flags.seed is not None else int.from_bytes(os.urandom(4), "little")
  rng = np.random.default_rng(seed)
  work = common.fresh_dir(flags.workdir)
  common.log(f"seed {seed}: {flags.members} members of {flags.mib} MiB in {work}")
  paths = save_members(os.path.join(work, "inputs"), flags.members, flags.mib)
  before = common.file_hashes(*paths)
  out_dir = os.path.join(work, "outputs")
  os.makedirs(out_dir)

  reference = os.path.join(out_dir, "reference")
  code, window, _, stderr = watch(["-m", "warm_jax.average", "--inputs", *paths, "--output",
                                   reference], reference)
  if code != 0:
    raise SystemExit(f"the clean averaging run failed ({code}):\n{stderr[-3000:]}")
  reference_hash = json.load(open(os.path.join(reference, "manifest.json")))["output"][
      "content_hash"]
  if window is None:
    raise SystemExit("the clean run published before its temporary output was seen: raise --mib")
  common.log(f"clean run: the temporary output exists for {window:.2f}s before the publish")

  output = os.path.join(out_dir, "warm")
  args = ["-m", "warm_jax.average", "--inputs", *paths, "--output", output]
  records, failures = [], []
  for i in range(3 * flags.kills):  # until --kills of them landed mid-write
    if sum(r.get("when") == "mid-write" for r in records) >= flags.kills:
      break
    delay = float(rng.uniform(0, window))
    code, _, _, _ = watch(args, output, kill_after=delay)
    leftovers = sorted(os.path.basename(p) for p in glob.glob(output + "*"))
    record = {"kill": i + 1, "delay_s": round(delay, 3), "returncode": code, "left": leftovers}
    if code == -signal.SIGKILL and not os.path.exists(output):
      record["when"] = "mid-write"
      complete_looking = [p for p in glob.glob(output + "*")
                          if os.path.isfile(os.path.join(p, "manifest.json"))]
      if complete_looking:
        failures.append(f"kill {i + 1}: {complete_looking} look complete (manifest.json)")
    elif code in (0, -signal.SIGKILL):  # the publish came first: OUTPUT must be complete
      record["when"] = "after the publish" if code else "finished before the kill"
      if not os.path.isfile(os.path.join(output, "manifest.json")):
        failures.append(f"kill {i + 1}: {output} was published without its manifest")
      shutil.rmtree(output)  # the drill's own output: make room for the next attempt
    else:
      failures.append(f"kill {i + 1}: exit {code}")
    if common.file_hashes(*paths) != before:
      failures.append(f"kill {i + 1}: an input file changed")
    records.append(record)
    common.log(f"kill {i + 1}: {delay:.3f}s into the write: exit {code}, {record.get('when')}, "
               f"{len(leftovers)} leftovers")

  code, _, _, stderr = watch(args, output)
  final = {"returncode": code, "warned_about_leftovers": "left by an averager that was killed"
           in stderr}
  if code != 0:
    failures.append(f"final run: exit {code}")
  else:
    final["content_hash_equals_clean_run"] = json.load(open(os.path.join(
        output, "manifest.json")))["output"]["content_hash"] == reference_hash
    if not final["content_hash_equals_clean_run"]:
      failures.append("final run: another content hash than the clean run")
  if common.file_hashes(*paths) != before:
    failures.append("an input file changed")
  killed = sum(r.get("when") == "mid-write" for r in records)
  if killed < flags.kills:
    failures.append(f"only {killed} attempts were killed while writing (raise --mib)")
  report = {"drill": "averager_sigkill", "seed": seed, "killed_while_writing": killed,
            "members": flags.members, "mib_per_member": flags.mib,
            "write_window_s": round(window, 3), "kills": records,
            "final": final, "failures": failures, "passed": not failures}
  common.write_report(os.path.join(work, "report.json"), report)
  print(f"averager_sigkill: {'PASSED' if not failures else 'FAILED'}: {killed} kills "
        f"(seed {seed}); inputs unchanged: {common.file_hashes(*paths) == before}; final: "
        f"{final}")
  for failure in failures:
    print(f"  {failure}")
  return 0 if not failures else 1


if __name__ == "__main__":
  sys.exit(main())
