"""Test setup: 8 simulated CPU devices (for the sharding tests) and small shared helpers.

XLA_FLAGS must be set before jax initialises its backend, hence at import time here.
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# XLA:CPU compiles dominate the suite's time and many tests build the same tiny programs (also
# in the CLI subprocesses, which inherit this environment): share a persistent compile cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), "warm_jax_test_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  from warm_jax.models import TransformerConfig
  fields = dict(vocab_size=40, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=32)
  fields.update(overrides)
  return TransformerConfig(**fields)


def run_cli(args, *, timeout=300, check=False, env=None):
  """Runs `python -m ...` in a subprocess from the repo root; returns CompletedProcess."""
  import subprocess
  full_env = dict(os.environ)
  full_env.update(env or {})
  proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                        timeout=timeout, env=full_env)
  if check and proc.returncode != 0:
    raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


@pytest.fixture
def repo_root():
  return REPO_ROOT


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: end-to-end, subprocess, multi-host and other tests over ~2 s on 2 loaded "
      "cores; `pytest -m 'not slow'` is the quick pass (CI and launch/test.sh run everything)")
