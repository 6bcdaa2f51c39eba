"""A jitted computation over sequential slices of a batch's rows, joined back: the same numbers.

Where it sits: inside the compiled programs whose rows are independent and whose per-row work
is large for its arithmetic on CPU: RL's scoring passes (`policy.rl.rollout`, the policy's,
reference's and reward models' forward passes over [batch, prompt + response]) and the
decoding loop (`policy.sampling.Sampler`, `SamplingConfig.loop_rows`). The trainer's
microbatches (`core.trainer.sum_grads`) do the same for gradients.

Why: at d_model 64-128 a layer's [rows, heads, length, length] attention scores and the LM
head's [rows, length, vocab] logits of a 128-row batch do not stay in cache (slices of 16-32
rows: the scoring passes ~1.6x faster here); a decoding loop runs until its slowest row ends,
so one loop over 128 rows runs ~all max_new_tokens steps for every row, four loops of 32 stop
earlier (~1.5x; bench/RESULTS.md section 11).

Slice j holds rows j, j + n, j + 2n, ... (strided): a batch sharded over the mesh's batch axes
in contiguous blocks keeps each slice spread over every device with no data movement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax


def check_row_slices(rows: int, slices: int, divisor: int, *, name: str) -> None:
  """Refuses `slices` that do not cut `rows` into equal slices the mesh's `divisor` batch
  shards divide."""
  if slices < 1 or rows % slices or (rows // slices) % divisor:
    raise ValueError(f"{name}={slices}: must be >= 1 and split the batch of {rows} rows into "
                     f"equal slices divisible by the mesh's {divisor} batch shards; pick a "
                     "divisor of the batch")


def map_row_slices(fn: Callable[..., Any], slices: int, *arrays: jax.Array) -> Any:
  """fn(*arrays) computed on `slices` sequential row slices (`lax.map`) and joined back in row
  order. fn's per-row outputs (leading axis = rows) come back [rows, ...]; its scalar outputs
  (a slice's own number, e.g. a decoding loop's step count) come back stacked, [slices] (with
  slices=1, as fn returns them: scalars). Traced inside jit."""
  if slices == 1:
    return fn(*arrays)
  split = lambda x: x.reshape((x.shape[0] // slices, slices) + x.shape[1:]).swapaxes(0, 1)
  out = jax.lax.map(lambda xs: fn(*xs), tuple(split(a) for a in arrays))
  return jax.tree_util.tree_map(
      lambda y: y if y.ndim == 1 else y.swapaxes(0, 1).reshape((-1,) + y.shape[2:]), out)
