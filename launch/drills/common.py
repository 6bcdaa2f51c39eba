"""Helpers shared by the reliability drills (launch/drills/*.py, docs/reliability.md).

Where it sits: outside the library. Each drill drives the real command-line programs as
subprocesses (`python -m warm_jax.train`, `warm_jax.average`, ...), breaks them (SIGKILL, a full
disk, a dead peer) and checks what they leave behind with the library's own readers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAULT_ENV = "WARM_JAX_FAULT_KILL_AT_STEP"  # warm_jax.core.trainer: SIGKILL itself after step N


def drill_env(**extra: str) -> dict[str, str]:
  """CPU, one device, quiet TensorFlow, and a compile cache shared by the drill's processes."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
      os.environ.get("TMPDIR", "/tmp"), "warm_jax_drill_jax_cache"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  env.setdefault("WARM_JAX_LOGLEVEL", "WARNING")  # progress lines and errors, not orbax's INFO
  env.update(extra)
  return env


def quiet_absl() -> None:
  """orbax warns about every item dir restored on its own (no step-level metadata there)."""
  import logging
  logging.getLogger("absl").setLevel(logging.ERROR)


def log(message: str) -> None:
  print(f"[drill {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(args: Sequence[str], *, env: dict[str, str] | None = None, check: bool = True,
        log_path: str | None = None, timeout: float | None = None
        ) -> subprocess.CompletedProcess:
  """`python ARGS` from the repository root; output to `log_path` (if given) and returned."""
  proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env or drill_env(),
                        capture_output=True, text=True, timeout=timeout)
  if log_path:
    with open(log_path, "a") as f:
      f.write(f"$ python {' '.join(args)}\n{proc.stdout}{proc.stderr}\n[exit {proc.returncode}]\n")
  if check and proc.returncode != 0:
    raise SystemExit(f"drill setup failed: python {' '.join(args)} exited {proc.returncode}:\n"
                     f"{proc.stderr[-4000:]}")
  return proc


def file_hashes(*roots: str) -> dict[str, str]:
  """{path: sha256} of every file under the roots."""
  out = {}
  for root in roots:
    paths = [root] if os.path.isfile(root) else [
        os.path.join(d, f) for d, _, files in os.walk(root) for f in files]
    for path in paths:
      with open(path, "rb") as f:
        out[path] = hashlib.sha256(f.read()).hexdigest()
  return out


def complete_steps(model_dir: str) -> list[int]:
  root = os.path.join(model_dir, "checkpoints")
  return sorted(int(p) for p in os.listdir(root) if p.isdigit()) if os.path.isdir(root) else []


def check_checkpoints_readable(model_dir: str) -> list[int]:
  """Restores params and optimizer state of every published step (finite values); returns
  the steps. Raises AssertionError naming the first unreadable one."""
  import jax
  import numpy as np
  from warm_jax.core import checkpoints as ckpt
  quiet_absl()
  steps = complete_steps(model_dir)
  for step in steps:
    for item in ("params", "opt_state"):
      path = os.path.join(model_dir, "checkpoints", str(step), item)
      try:
        leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(ckpt.load_params(path))]
      except Exception as e:  # pylint: disable=broad-except
        raise AssertionError(f"unreadable checkpoint {path}: {e}") from e
      if not leaves or not all(np.isfinite(x).all() for x in leaves if x.dtype.kind == "f"):
        raise AssertionError(f"checkpoint {path} is empty or not finite")
  return steps


def flat_step(model_dir: str, step: int, item: str = "params") -> dict[str, Any]:
  from warm_jax.core import checkpoints as ckpt
  quiet_absl()
  return ckpt.flatten_params(ckpt.load_params(
      os.path.join(model_dir, "checkpoints", str(step), item)))


def bitwise_equal(model_dir_a: str, model_dir_b: str, step: int) -> tuple[bool, str]:
  """(equal, detail): params and optimizer state of `step` in both runs, bit for bit."""
  import numpy as np
  for item in ("params", "opt_state"):
    a, b = flat_step(model_dir_a, step, item), flat_step(model_dir_b, step, item)
    if a.keys() != b.keys():
      return False, f"{item}: different leaves"
    for name in a:
      if not np.array_equal(np.asarray(a[name]), np.asarray(b[name])):
        diff = float(np.max(np.abs(np.asarray(a[name], np.float64)
                                   - np.asarray(b[name], np.float64))))
        return False, f"{item}/{name} differs (max |diff| {diff:.3g})"
  return True, "params and opt_state bit-identical"


class RewardModelAssets:
  """A tiny end-to-end RM setup made with the real programs: data build, pre-training, SFT,
  linear probe; `rm_args(members_dir)` trains member 0 on them."""

  def __init__(self, root: str, *, log_path: str):
    self.root, self.log_path = root, log_path
    self.data_dir = os.path.join(root, "data")
    self.pretrain_dir = os.path.join(root, "pretrain")
    self.sft_dir = os.path.join(root, "sft")
    self.probe_dir = os.path.join(root, "probe")
    common = ["--gin_file=gin/models/tiny.gin", f"--gin.DATA_DIR='{self.data_dir}'",
              "--gin.BATCH_SIZE=8", "--gin.TrainerConfig.peak_flops_per_device=1e11"]
    if not os.path.exists(os.path.join(self.data_dir, "stats.json")):
      log("assets: building the tiny synthetic TL;DR data dir")
      run(["-m", "warm_jax.data.build", "--gin_file=gin/data/synthetic_tldr_tiny.gin",
           f"--output_dir={self.data_dir}", "--overwrite"], log_path=log_path)
    log("assets: pre-training, SFT and the linear probe (a few steps each)")
    run(["-m", "warm_jax.train", *common, "--gin_file=gin/pretrain.gin",
         f"--gin.MODEL_DIR='{self.pretrain_dir}'", "--gin.TRAIN_STEPS=3"], log_path=log_path)
    run(["-m", "warm_jax.train", *common, "--gin_file=gin/sft.gin",
         f"--gin.PRETRAIN_DIR='{self.pretrain_dir}'", f"--gin.MODEL_DIR='{self.sft_dir}'",
         "--gin.TRAIN_STEPS=3", "--gin.SAVE_EVERY=3"], log_path=log_path)
    if not os.path.exists(os.path.join(self.probe_dir, "params")):
      run(["-m", "warm_jax.train", "--gin_file=gin/models/tiny.gin",
           "--gin_file=gin/linear_probe.gin", f"--gin.DATA_DIR='{self.data_dir}'",
           f"--gin.SFT_DIR='{self.sft_dir}'", f"--gin.MODEL_DIR='{self.probe_dir}'"],
          log_path=log_path)

  def rm_args(self, members_dir: str, *, steps: int, save_every: int,
              batch_size: int = 8) -> list[str]:
    return ["-m", "warm_jax.train", "--gin_file=gin/models/tiny.gin", "--gin_file=gin/rm.gin",
            f"--gin.DATA_DIR='{self.data_dir}'", f"--gin.SFT_DIR='{self.sft_dir}'",
            f"--gin.PROBE_DIR='{self.probe_dir}'", f"--gin.MEMBERS_DIR='{members_dir}'",
            f"--gin.TRAIN_STEPS={steps}", f"--gin.BATCH_SIZE={batch_size}",
            f"--gin.TrainerConfig.save_every={save_every}",
            f"--gin.TrainerConfig.log_every={save_every}", "--gin.TrainerConfig.eval_every=0",
            "--gin.TrainerConfig.peak_flops_per_device=1e11", "--gin.DROPOUT_RATES=(0.1,)"]


def fresh_dir(path: str) -> str:
  shutil.rmtree(path, ignore_errors=True)
  os.makedirs(path)
  return path


def write_report(path: str, report: dict[str, Any]) -> None:
  with open(path, "w") as f:
    json.dump(report, f, indent=1, default=str)
    f.write("\n")
  log(f"report: {path}")
