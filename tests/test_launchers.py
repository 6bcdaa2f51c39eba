"""The launchers in launch/: the member sweep (one job per member), the SLURM multi-host script
and the TPU-pod wrapper (the cluster tools stubbed), the local experiment runner's refusals."""

import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


def _bash(args, *, env=None, cwd=REPO_ROOT, timeout=300):
  full = dict(os.environ, PYTHON=sys.executable)
  full.update(env or {})
  return subprocess.run(["bash", *args], cwd=cwd, capture_output=True, text=True, env=full,
                        timeout=timeout)


def test_sweep_prints_one_command_per_member():
  proc = _bash(["launch/sweep_members.sh", "--members", "3", "--print", "--",
                "--gin_file=gin/models/tiny.gin", "--gin_file=gin/rm.gin",
                "--gin.MEMBERS_DIR='/runs/m x'"])
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 3
  for i, line in enumerate(lines):
    assert line.rstrip().endswith(f"--gin.MEMBER_INDEX={i}")
    assert "-m warm_jax.train" in line and "gin/rm.gin" in line
    assert "m\\ x" in line  # shell-quoted: safe to paste into a scheduler


@pytest.mark.parametrize("args, message", [
    (["--members", "0", "--", "x"], "--members must be a positive integer"),
    (["--members", "2", "--parallel", "-1", "--", "x"], "--parallel must be a positive"),
    (["--members", "2", "--", "--gin.MEMBER_INDEX=1"], "do not pass --gin.MEMBER_INDEX"),
    (["--members", "2", "--"], "no TRAIN_ARGS"),
    (["--bogus"], "unknown option"),
])
def test_sweep_refuses_bad_arguments(args, message):
  proc = _bash(["launch/sweep_members.sh", *args])
  assert proc.returncode == 2 and message in proc.stderr


@pytest.mark.slow
def test_sweep_trains_members_as_separate_jobs(tmp_path, tmp_path_factory):
  from reliability_assets import session_assets
  assets = session_assets(tmp_path_factory)
  members = tmp_path / "members"
  train_args = [a for a in assets.rm_args(str(members), steps=2, save_every=2)
                if not a.startswith("--gin.DROPOUT_RATES")]
  train_args.append("--gin.LEARNING_RATES=(1e-4, 1e-3)")
  proc = _bash(["launch/sweep_members.sh", "--members", "2", "--parallel", "2", "--",
                *train_args], env={"XLA_FLAGS": ""})
  assert proc.returncode == 0, proc.stderr[-3000:]
  hparams = []
  for i in range(2):
    assert os.path.exists(members / f"member_{i}" / "DONE")
    with open(members / f"member_{i}" / "hparams.json") as f:
      hparams.append(json.load(f))
  assert [h["index"] for h in hparams] == [0, 1]
  assert hparams[0]["data_seed"] != hparams[1]["data_seed"]
  # an array job (SLURM_ARRAY_TASK_ID) runs only its member
  proc = _bash(["launch/sweep_members.sh", "--members", "3", "--", *train_args],
               env={"XLA_FLAGS": "", "SLURM_ARRAY_TASK_ID": "2"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.path.exists(members / "member_2" / "DONE")
  assert sorted(os.listdir(members)) == ["member_0", "member_1", "member_2"]


def _stub(bin_dir, name, body):
  path = bin_dir / name
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_script_sets_the_coordinator_and_runs_one_process_per_node(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  # a long node list: the script must read all of it (an early-closed pipe is SIGPIPE, 141)
  _stub(bin_dir, "scontrol", 'printf "gpu-node-07\\ngpu-node-08\\n"; seq 1 20000\n')
  # srun stub: run the task command twice, as SLURM would on two nodes
  _stub(bin_dir, "srun", 'shift  # --kill-on-bad-exit\n'
        'for id in 0 1; do SLURM_PROCID=$id "$@"; done\n')
  repo = tmp_path / "repo"
  (repo / ".venv" / "bin").mkdir(parents=True)
  _stub(repo / ".venv" / "bin", "python",
        'echo "pid=$JAX_PROCESS_ID n=$JAX_NUM_PROCESSES coord=$JAX_COORDINATOR_ADDRESS '
        'dist=$WARM_JAX_DISTRIBUTED args=$*"\n')
  proc = _bash([os.path.join(REPO_ROOT, "launch/slurm_multihost.sbatch"),
                "--gin_file=gin/models/base.gin", "--gin.X='a b'"], cwd=str(repo),
               env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(repo),
                    "SLURM_JOB_NODELIST": "gpu-node-[07-08]", "SLURM_NNODES": "2"})
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert lines == [
      f"pid={i} n=2 coord=gpu-node-07:12355 dist=1 args=-m warm_jax.train "
      "--gin_file=gin/models/base.gin --gin.X='a b' --multihost" for i in (0, 1)]


def test_tpu_pod_wrapper_runs_the_same_command_on_every_worker():
  proc = _bash(["launch/tpu_pod.sh", "-m", "warm_jax.experiment",
                "--gin_file=gin/experiments/warm_tldr_real.gin"],
               env={"TPU_NAME": "pod", "ZONE": "us-central2-b", "DRY_RUN": "1"})
  assert proc.returncode == 0, proc.stderr
  scp, ssh = proc.stdout.strip().splitlines()
  assert scp.startswith("gcloud compute tpus tpu-vm scp") and "--worker=all" in scp
  assert ssh.startswith("gcloud compute tpus tpu-vm ssh pod") and "--worker=all" in ssh
  assert "warm_jax.experiment" in ssh and "--multihost" in ssh and "jax\\[tpu\\]" in ssh
  missing = _bash(["launch/tpu_pod.sh", "-m", "x"], env={"TPU_NAME": "", "ZONE": "z"})
  assert missing.returncode != 0 and "TPU_NAME" in missing.stderr


def test_local_launcher_refuses_a_missing_gin_file():
  proc = _bash(["launch/local.sh", "gin/experiments/nope.gin", "/tmp/x"])
  assert proc.returncode == 2 and "no such gin file" in proc.stderr
  proc = _bash(["launch/local.sh"])
  assert proc.returncode == 2 and "usage" in proc.stderr
