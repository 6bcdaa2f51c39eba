"""Hardware reference for model FLOPs utilisation (MFU).

Where it sits: the trainer reports `perf/mfu` = achieved model FLOP/s divided by the FLOP/s of
a large matmul timed in the same process on the same devices (or a peak the user states in
gin, e.g. 989e12 for an H100 in bf16). On CPU the matmul reference is the honest "hardware
limit": XLA's CPU matmul already uses every core. A driver that starts many programs (the
experiment) times the matmul once and hands it down in WARM_JAX_MATMUL_FLOPS.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp


MATMUL_FLOPS_ENV = "WARM_JAX_MATMUL_FLOPS"


def measure_matmul_flops(*, size: int = 2048, dtype: str = "float32", repeats: int = 5,
                         device=None) -> float:
  """FLOP/s of a [size, size] @ [size, size] matmul on one device (best of `repeats`)."""
  device = device or jax.local_devices()[0]
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.device_put(jax.random.normal(key_a, (size, size), dtype), device)
  b = jax.device_put(jax.random.normal(key_b, (size, size), dtype), device)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()  # compile + warm up
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * size ** 3 / best


def peak_flops_reference(*, peak_flops_per_device: float | None = None,
                         dtype: str = "float32") -> tuple[float, str]:
  """(FLOP/s of the whole program's devices, how it was obtained).

  Accelerators: per-device peak (given, or a timed matmul) x device count. CPU: one timed
  matmul, since simulated CPU devices (xla_force_host_platform_device_count) share the cores.
  """
  if peak_flops_per_device:
    return peak_flops_per_device * jax.device_count(), "configured peak"
  inherited = os.environ.get(MATMUL_FLOPS_ENV)
  if inherited:
    try:
      per_device = float(inherited)
    except ValueError:
      raise ValueError(f"{MATMUL_FLOPS_ENV}={inherited!r} is not a number (FLOP/s of one "
                       "timed matmul); unset it to time one here") from None
    how = "timed 2048^3 matmul (timed once by the parent program)"
  else:
    per_device, how = measure_matmul_flops(dtype=dtype), "timed 2048^3 matmul"
  if jax.default_backend() == "cpu":
    return per_device, how + " (all CPU cores)"
  return per_device * jax.device_count(), how + " x devices"
