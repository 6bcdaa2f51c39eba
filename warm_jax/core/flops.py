"""Hardware reference for model FLOPs utilisation (MFU).

Where it sits: the trainer reports `perf/mfu` = achieved model FLOP/s divided by the FLOP/s of
a large matmul timed in the same process on the same devices (or a peak the user states in
gin, e.g. 989e12 for an H100 in bf16). On CPU the matmul reference is the honest "hardware
limit": XLA's CPU matmul already uses every core. A driver that starts many programs (the
experiment) times the matmul once and hands it down in WARM_JAX_MATMUL_FLOPS.

The stage profile: every compiled model program the pipeline runs adds the model FLOPs it
executed to this process's `COUNTER` (`count`, `count_steps`): the Trainer's and the vmapped
members' train and eval steps, `Sampler` decoding, `RewardScorer` scoring and RL's rollout
scoring. The counts are analytic model FLOPs (`TransformerConfig.forward_flops_per_token`,
PaLM appendix B: 2 x matmul params + 4 x layers x context x width per token forward, 3x that
forward + backward), the numerator of `perf/mfu`, computed from each call's actual shapes (the
batch's width, the decoding loop's executed steps). Not XLA's cost analysis: it counts a loop
body once whatever its trip count (a microbatched step's `lax.scan`, decoding's `while_loop`),
and it counts non-model work (optimizer, softmax, elementwise) too. Work outside these
programs is not counted: weight averages, the optimizer's own arithmetic, the RL anchor's EMA,
numpy (the gold oracle, the linear probe's Newton fit). When WARM_JAX_STAGE_FLOPS_FILE names a
file, `gin_utils.gin_main` writes the counter there after its entry point succeeds
(`write_stage_flops`); the experiment driver sets it to each stage's STAGE_FLOPS.json.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp


MATMUL_FLOPS_ENV = "WARM_JAX_MATMUL_FLOPS"
STAGE_FLOPS_ENV = "WARM_JAX_STAGE_FLOPS_FILE"
STAGE_FLOPS_FILE = "STAGE_FLOPS.json"
COUNT_METHOD = ("analytic model FLOPs (PaLM appendix B: forward 2 x matmul params + 4 x "
                "layers x context x width per token; training 3x the forward)")


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


# -------------------------------------------------------------------------------------------------
# The stage profile: model FLOPs executed by this process
# -------------------------------------------------------------------------------------------------
class FlopCounter:
  """Model FLOPs executed by this process, per program name (module docstring).

  `add` takes a count known on the host; `add_steps` one that depends on a device scalar (the
  decoding loop's executed steps), read back lazily so that counting never adds a device sync.
  """

  _RESOLVE_AT = 256  # pending device scalars read back in one go beyond this many

  def __init__(self):
    self._lock = threading.Lock()
    self.reset()

  def reset(self) -> None:
    with self._lock:
      self._programs: dict[str, dict[str, float]] = {}
      self._pending: list[tuple[str, Any, float, float]] = []

  def _add(self, program: str, flops: float, calls: int) -> None:
    entry = self._programs.setdefault(program, {"flops": 0.0, "calls": 0})
    entry["flops"] += float(flops)
    entry["calls"] += int(calls)

  def add(self, program: str, flops: float, calls: int = 1) -> None:
    """`calls` executions of `program` that did `flops` model FLOPs in all."""
    with self._lock:
      self._add(program, flops, calls)

  def add_steps(self, program: str, steps: Any, *, base: float, per_step: float) -> None:
    """One execution of `program`: base + steps * per_step FLOPs, `steps` a device scalar."""
    with self._lock:
      self._pending.append((program, steps, float(base), float(per_step)))
      if len(self._pending) >= self._RESOLVE_AT:
        self._resolve()

  def _resolve(self) -> None:
    if not self._pending:
      return
    import jax
    steps = jax.device_get([p[1] for p in self._pending])
    for (program, _, base, per_step), n in zip(self._pending, steps):
      self._add(program, base + int(n) * per_step, 1)
    self._pending = []

  def programs(self) -> dict[str, dict[str, float]]:
    """{program: {'flops': model FLOPs, 'calls': executions}} so far."""
    with self._lock:
      self._resolve()
      return {k: dict(v) for k, v in self._programs.items()}

  def total(self) -> float | None:
    """Model FLOPs so far; None when no program counted anything (unknown, not zero)."""
    programs = self.programs()
    return sum(p["flops"] for p in programs.values()) if programs else None


COUNTER = FlopCounter()


def count(program: str, flops: float, calls: int = 1) -> None:
  """Adds `calls` executions of `program` ({flops} model FLOPs in all) to this process's
  stage profile."""
  COUNTER.add(program, flops, calls)


def count_steps(program: str, steps: Any, *, base: float, per_step: float) -> None:
  """Adds one execution of a loop program: base + steps * per_step, `steps` a device scalar."""
  COUNTER.add_steps(program, steps, base=base, per_step=per_step)


def stage_flops_record(counter: FlopCounter = COUNTER) -> dict[str, Any] | None:
  """What STAGE_FLOPS.json holds: the total, the per-program split, how it was counted and the
  reference FLOP/s this process's MFU uses; None when nothing was counted."""
  programs = counter.programs()
  if not programs:
    return None
  record: dict[str, Any] = {"flops": sum(p["flops"] for p in programs.values()),
                            "programs": programs, "counted": COUNT_METHOD}
  inherited = os.environ.get(MATMUL_FLOPS_ENV)
  if inherited:  # never time a matmul just to write this (a stage run by the driver has it)
    peak, how = peak_flops_reference()
    record.update(reference_flop_per_s=peak, reference=how)
  return record


def write_stage_flops(path: str | None = None, counter: FlopCounter = COUNTER) -> str | None:
  """Writes `stage_flops_record` to `path` (default: $WARM_JAX_STAGE_FLOPS_FILE) when a path is
  given and something was counted; returns the path written, else None."""
  path = path or os.environ.get(STAGE_FLOPS_ENV)
  if not path:
    return None
  record = stage_flops_record(counter)
  if record is None:
    return None
  from warm_jax.core.checkpoints import atomic_write_text
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  atomic_write_text(path, json.dumps(record, sort_keys=True) + "\n")
  return path


