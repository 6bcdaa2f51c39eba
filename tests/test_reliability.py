"""Reliability drills, small enough for the suite (docs/reliability.md; the full drills are
`bash launch/drills/*.sh`):

1. an RM member's training SIGKILLed at random steps resumes to bit-identical params, and every
   checkpoint on disk stays readable after each kill;
2. the averager SIGKILLed from outside while it writes leaves no output that looks complete and
   its inputs byte-identical (tests/test_average_cli.py kills it at two fixed points);
3. a disk that fills up during a save (the kernel refusing the writes: RLIMIT_FSIZE) gives a
   clear error and leaves the last good checkpoint intact, for the trainer and the averager;
4. when one process of a two-process jax.distributed run dies, the other exits with a clear
   error within seconds instead of waiting in jax's shutdown barrier.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import gin
import jax
import numpy as np
import pytest

from conftest import REPO_ROOT, run_cli
from reliability_assets import session_assets, tree_file_hashes
from warm_jax.core import checkpoints as ckpt
from warm_jax import train
from warm_jax.core.trainer import FAULT_ENV

TRAIN = ["-m", "warm_jax.train"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  return session_assets(tmp_path_factory)


@pytest.fixture
def clean_gin():
  """`train.main` run in this process parses gin into the global config: reset around it."""
  gin.clear_config()
  yield
  gin.clear_config()


def _complete_steps(model_dir):
  root = os.path.join(model_dir, ckpt.CHECKPOINTS_SUBDIR)
  return sorted(int(p) for p in os.listdir(root) if p.isdigit()) if os.path.isdir(root) else []


def _assert_every_checkpoint_readable(model_dir):
  """Every published step restores, params and optimizer state, with finite values; the
  latest one is what a resume (and `load_params(model_dir)`) picks."""
  steps = _complete_steps(model_dir)
  for step in steps:
    for item in (ckpt.PARAMS_ITEM, ckpt.OPT_STATE_ITEM):
      tree = ckpt.load_params(os.path.join(model_dir, ckpt.CHECKPOINTS_SUBDIR, str(step), item))
      leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
      assert leaves and all(np.isfinite(x).all() for x in leaves if x.dtype.kind == "f")
  manager = ckpt.TrainCheckpointer(model_dir, save_every=1)
  try:
    assert manager.latest_step() == (steps[-1] if steps else None)
  finally:
    manager.close()
  return steps


def _flat_step(model_dir, step, item):
  return ckpt.flatten_params(ckpt.load_params(
      os.path.join(model_dir, ckpt.CHECKPOINTS_SUBDIR, str(step), item)))


# ------------------------------------------------------------------------------------------------
# 1. SIGKILL at random steps
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_rm_training_killed_at_random_steps_resumes_bit_identical(assets, tmp_path, clean_gin):
  steps = 8
  straight = str(tmp_path / "straight")
  assert train.main(assets.rm_args(straight, steps=steps)) == 0  # in process: no start-up
  killed_members = str(tmp_path / "killed")
  killed = os.path.join(killed_members, "member_0")
  # Kill steps drawn from a fixed seed (the full drill draws ten from a fresh one): a kill at an
  # even step lands right after its asynchronous save was issued, i.e. mid-write.
  kill_at = sorted(int(s) for s in np.random.default_rng(3).choice(np.arange(1, steps), 2,
                                                                     replace=False))
  for step in kill_at:
    proc = run_cli(TRAIN + assets.rm_args(killed_members, steps=steps),
                   env={FAULT_ENV: str(step)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not os.path.exists(os.path.join(killed, "DONE"))
    assert all(s <= step for s in _assert_every_checkpoint_readable(killed))
  gin.clear_config()
  assert train.main(assets.rm_args(killed_members, steps=steps)) == 0
  assert _assert_every_checkpoint_readable(killed)[-1] == steps
  for item in (ckpt.PARAMS_ITEM, ckpt.OPT_STATE_ITEM):
    a = _flat_step(os.path.join(straight, "member_0"), steps, item)
    b = _flat_step(killed, steps, item)
    assert a.keys() == b.keys()
    for name in a:
      np.testing.assert_array_equal(a[name], b[name], err_msg=f"{item} {name}")


# ------------------------------------------------------------------------------------------------
# 2. The averager killed from outside while it writes
# ------------------------------------------------------------------------------------------------
def _save_members(root, n, *, rows=4096, cols=256, leaves=4):
  paths = []
  for i in range(n):
    rng = np.random.default_rng(i)
    tree = {"decoder": {f"layer_{j}": {"kernel": rng.standard_normal((rows, cols), np.float32)}
                        for j in range(leaves)},
            "reward_head": {"kernel": rng.standard_normal((cols, 1), np.float32)}}
    paths.append(str(root / f"rm_{i}"))
    ckpt.save_params(tree, paths[-1])
  return paths


def _looks_complete(path):
  return os.path.isfile(os.path.join(path, "manifest.json"))


@pytest.mark.slow
def test_averager_killed_while_writing_leaves_no_complete_output(tmp_path):
  paths = _save_members(tmp_path, 2)  # 2 x 16 MiB: the write takes a while
  before = tree_file_hashes(*paths)
  out = tmp_path / "warm"
  rng = np.random.default_rng(0)
  killed_mid_write = 0
  for attempt in range(4):
    proc = subprocess.Popen([sys.executable, "-m", "warm_jax.average", "--inputs", *paths,
                             "--output", str(out)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
      if list(tmp_path.glob(f"warm.tmp-{proc.pid}*")):  # this run's write has started
        # (the uncompressed write of 2 x 16 MiB takes tens of ms on a quiet machine)
        time.sleep(float(rng.uniform(0, 0.01)))
        proc.kill()
        break
      time.sleep(0.002)
    proc.communicate(timeout=60)
    if proc.returncode == -signal.SIGKILL and not out.exists():
      killed_mid_write += 1
      assert not any(_looks_complete(str(p)) for p in tmp_path.glob("warm*"))
    else:  # it won the race and published (then exited or was killed after the rename): the
      # output must be complete
      assert proc.returncode in (0, -signal.SIGKILL) and _looks_complete(str(out))
      break
    assert tree_file_hashes(*paths) == before
  assert killed_mid_write >= 1
  # A rerun publishes a complete output (and names what the killed runs left behind).
  if not out.exists():
    proc = run_cli(["-m", "warm_jax.average", "--inputs", *paths, "--output", str(out)],
                   check=True)
    assert "left by an averager that was killed" in proc.stderr
  from warm_jax.merging import content_hash
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["output"]["content_hash"] == content_hash(str(out))
  assert tree_file_hashes(*paths) == before


# ------------------------------------------------------------------------------------------------
# 3. The disk fills up during a save
# ------------------------------------------------------------------------------------------------
def _error_line(stderr, kind="CheckpointWriteError"):
  """The command's one `error: <kind>: ...` line. (orbax also logs the failed write of its
  threads, with their tracebacks, at ERROR level: C++ and Python threads share stderr, so the
  line is searched for, not required to start a line.)"""
  lines = [line[line.index(f"error: {kind}: "):] for line in stderr.splitlines()
           if f"error: {kind}: " in line]
  assert len(lines) == 1, stderr[-6000:]
  return lines[0]


# From `limit_at` on, the kernel refuses to grow any file of this process past 16 KiB (EFBIG, as
# a full disk refuses with ENOSPC): orbax's TensorStore writes of that checkpoint fail for real.
_DISK_FULL_TRAIN = textwrap.dedent("""
    import json, resource, signal, sys
    from warm_jax import checkpoints, train
    limit_at = int(sys.argv[1])
    original = checkpoints.TrainCheckpointer.save
    def save(self, step, *args, **kwargs):
      if step >= limit_at and resource.getrlimit(resource.RLIMIT_FSIZE)[0] != 16384:
        self.wait()  # the earlier checkpoints are complete: this one meets the full disk
        from reliability_assets import tree_file_hashes
        print("HASHES " + json.dumps(tree_file_hashes(str(self.directory))), flush=True)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, resource.RLIM_INFINITY))
      return original(self, step, *args, **kwargs)
    checkpoints.TrainCheckpointer.save = save
    sys.exit(train.main(sys.argv[2:]))
""")


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_save_keeps_the_last_good_one(assets, tmp_path, clean_gin):
  members = str(tmp_path / "members")
  model_dir = os.path.join(members, "member_0")
  args = assets.rm_args(members, steps=6, save_every=2)
  proc = run_cli(["-c", _DISK_FULL_TRAIN, "4", *args],
                 env={"PYTHONPATH": os.path.join(REPO_ROOT, "tests")})
  assert proc.returncode == 1, proc.stderr[-3000:]
  line = _error_line(proc.stderr)
  assert line.startswith("error: CheckpointWriteError: writing the checkpoint of step 4 to "
                         f"{model_dir}/checkpoints failed: "), line
  assert "File too large" in line and "the last complete checkpoint is step 2, intact" in line
  assert line.endswith("then rerun the same command: it resumes from the last complete "
                       "checkpoint."), proc.stderr[-6000:]
  hashes = json.loads(next(line for line in proc.stdout.splitlines()
                           if line.startswith("HASHES "))[len("HASHES "):])
  assert _complete_steps(model_dir) == [1, 2]
  complete = {p: h for p, h in tree_file_hashes(os.path.join(model_dir, "checkpoints")).items()
              if ".orbax-checkpoint-tmp" not in p}
  assert complete == hashes  # steps 1 and 2 byte-identical to before the disk filled up
  _assert_every_checkpoint_readable(model_dir)
  assert not os.path.exists(os.path.join(model_dir, "DONE"))
  # With space again, the same command resumes from step 2 and finishes.
  assert train.main(args) == 0
  assert json.loads(open(os.path.join(model_dir, "DONE")).read())["step"] == 6
  assert _assert_every_checkpoint_readable(model_dir)[-1] == 6


_DISK_FULL_AVERAGE = textwrap.dedent("""
    import resource, signal, sys
    from warm_jax import average
    from warm_jax.merging import output
    original = output.save_tree
    def save_tree(*args, **kwargs):
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
      resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
      return original(*args, **kwargs)
    output.save_tree = save_tree
    sys.exit(average.main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_disk_full_while_averaging_writes_nothing(tmp_path):
  paths = _save_members(tmp_path, 2, rows=512, cols=64)
  before = tree_file_hashes(*paths)
  out = tmp_path / "warm"
  proc = run_cli(["-c", _DISK_FULL_AVERAGE, "--inputs", *paths, "--output", str(out)])
  assert proc.returncode == 1, proc.stderr[-3000:]
  line = _error_line(proc.stderr)
  assert line.startswith(f"error: CheckpointWriteError: writing {out} failed: "), line
  assert "File too large" in line and line.endswith("nothing was written"), proc.stderr[-6000:]
  assert sorted(os.listdir(tmp_path)) == ["rm_0", "rm_1"]  # no output, no temporary dir
  assert tree_file_hashes(*paths) == before


# ------------------------------------------------------------------------------------------------
# 4. One process of a jax.distributed run dies
# ------------------------------------------------------------------------------------------------
MULTIHOST = ["-m", "warm_jax.train", "--gin_file=gin/models/tiny.gin",
             "--gin_file=gin/pretrain.gin", "--gin_file=gin/data/inline_bytes.gin",
             "--gin.BATCH_SIZE=8", "--gin.pretraining_dataset.num_docs=60",
             "--gin.TRAIN_STEPS=50", "--gin.TrainerConfig.eval_every=0",
             "--gin.TrainerConfig.save_every=100", "--gin.TrainerConfig.log_every=2",
             "--gin.TrainerConfig.peak_flops_per_device=1e11", "--multihost"]
SURVIVOR_BOUND_S = 60


# A fresh run saves step 1 (orbax's initial save) asynchronously: killed at step 1 the worker
# leaves that save in flight, its background barriers waiting for the dead process; at step 3
# the save may be done or, on a loaded machine, still in flight (the flake this pins down: the
# survivor's cleanup joined the save and was aborted by jax after the heartbeat timeout).
@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [1, 3], ids=["save_in_flight", "between_steps"])
def test_when_one_process_dies_the_other_exits_with_a_clear_error(tmp_path, kill_at):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  # A worker dies between two steps; the survivor (the coordinator) is in, or enters, the
  # next step's collective, which fails at once, and its cleanup does not wait for the
  # checkpoint save in flight (`TrainCheckpointer.finish`). (When the coordinator dies, or a
  # process dies while the others wait in a checkpoint save's own barrier, jax's coordination
  # service may instead terminate the survivors itself, within the heartbeat timeout: the
  # full drill, launch/drills/peer_death.sh, runs such cases too.)
  victim = 1
  procs = []
  for i in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i))
    if i == victim:
      env[FAULT_ENV] = str(kill_at)
    procs.append(subprocess.Popen(
        [sys.executable, *MULTIHOST, f"--gin.MODEL_DIR='{tmp_path / 'run'}'"], cwd=REPO_ROOT,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  survivor = procs[1 - victim]
  start = time.time()
  try:
    procs[victim].wait(timeout=300)  # start-up and compilation of both, then the kill step
    died = time.time()
    survivor.wait(timeout=SURVIVOR_BOUND_S)
    exited = time.time()
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  log = survivor.stdout.read()
  assert procs[victim].returncode == -signal.SIGKILL, procs[victim].stdout.read()[-3000:]
  assert survivor.returncode == 1, log[-3000:]
  assert exited - died < SURVIVOR_BOUND_S, (start, died, exited)
  errors = [line for line in log.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and errors[0].startswith(
      f"error: JaxRuntimeError in process {1 - victim} of 2: "), log[-3000:]
  assert "Another process of this jax.distributed job probably stopped" in log, log[-3000:]
  assert "Restart all processes with the same command" in log
  assert "Traceback" not in log and "Check failure" not in log
