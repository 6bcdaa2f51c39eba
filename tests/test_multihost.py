"""Two local processes through jax.distributed train exactly like one process on as many
devices (the multi-host path: per-process batch slices, global arrays, shared checkpoints)."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT

ARGS = ["-m", "warm_jax.train", "--gin_file=gin/models/tiny.gin", "--gin_file=gin/pretrain.gin",
        "--gin_file=gin/data/inline_bytes.gin",
        "--gin.BATCH_SIZE=8", "--gin.pretraining_dataset.num_docs=60", "--gin.TRAIN_STEPS=4",
        "--gin.TrainerConfig.eval_every=0", "--gin.TrainerConfig.peak_flops_per_device=1e11",
        "--gin.TrainerConfig.log_every=2", "--gin.DROPOUT_RATE=0.1"]


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices, **extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.update(extra)
  return env


def _run_two_processes(args):
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, *args, "--multihost"],
      cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=_env(2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i))) for i in range(2)]
  outputs = [p.communicate(timeout=240)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  outputs = _run_two_processes([*ARGS, f"--gin.MODEL_DIR='{tmp_path / 'two'}'"])
  single = subprocess.run([sys.executable, *ARGS, f"--gin.MODEL_DIR='{tmp_path / 'one'}'"],
                          cwd=REPO_ROOT, capture_output=True, text=True, env=_env(4),
                          timeout=240)
  assert single.returncode == 0, single.stderr[-3000:]
  assert "step 4/4" in outputs[0] and "step 4/4" not in outputs[1]  # only process 0 reports
  from warm_jax.core import checkpoints as ckpt
  two = ckpt.flatten_params(ckpt.load_params(str(tmp_path / "two")))
  one = ckpt.flatten_params(ckpt.load_params(str(tmp_path / "one")))
  assert two.keys() == one.keys()
  for name in one:
    np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.slow
def test_reward_model_training_on_two_processes_matches_one_process(tmp_path,
                                                                    tmp_path_factory):
  """A WARM member (gin/rm.gin: probe init, Bradley-Terry, dropout) trained by two local
  processes through jax.distributed (2 devices each, the data axis across them) ends with the
  same params as one process on 4 devices."""
  from reliability_assets import session_assets
  from warm_jax.core import checkpoints as ckpt
  assets = session_assets(tmp_path_factory)
  args = ["-m", "warm_jax.train", *assets.rm_args(str(tmp_path / "two"), steps=4,
                                                  save_every=4, batch_size=8)]
  outputs = _run_two_processes(args)
  assert "step 4/4" in outputs[0]
  single = subprocess.run(
      [sys.executable, "-m", "warm_jax.train",
       *assets.rm_args(str(tmp_path / "one"), steps=4, save_every=4, batch_size=8)],
      cwd=REPO_ROOT, capture_output=True, text=True, env=_env(4), timeout=240)
  assert single.returncode == 0, single.stderr[-3000:]
  two = ckpt.flatten_params(ckpt.load_params(str(tmp_path / "two" / "member_0")))
  one = ckpt.flatten_params(ckpt.load_params(str(tmp_path / "one" / "member_0")))
  init = ckpt.flatten_params(ckpt.load_params(os.path.join(assets.probe_dir, "params")))
  assert two.keys() == one.keys()
  moved = max(float(np.max(np.abs(one[k] - init[k]))) for k in one if k in init)
  assert moved > 1e-4  # the members really trained
  for name in one:
    np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
