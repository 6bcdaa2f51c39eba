"""Deterministic, resumable batches: the batch of step s is a pure function of (seed, s).

Where it sits: every training stage draws its batches from an `ArrayDataset` of fixed-shape
numpy features (tokenised once by the data stage: seqio tasks or the synthetic world). Epoch e
visits the examples in the order of a permutation seeded by (seed, e); the stream runs across
epoch boundaries without dropping examples. Because the position in the stream is step *
global_batch, a run restored at step s reads exactly the batches an uninterrupted run would
have, with no iterator state to checkpoint. Each process takes its contiguous slice of the
global batch (multi-host).
"""

from __future__ import annotations

import dataclasses
import jax
import numpy as np


@dataclasses.dataclass
class ArrayDataset:
  """Fixed-shape examples held as {feature: [num_examples, ...]} numpy arrays."""

  features: dict[str, np.ndarray]
  seed: int = 0
  shuffle: bool = True

  def __post_init__(self):
    sizes = {k: len(v) for k, v in self.features.items()}
    if not sizes:
      raise ValueError("ArrayDataset needs at least one feature")
    if len(set(sizes.values())) != 1:
      raise ValueError(f"ArrayDataset features have different numbers of examples: {sizes}")
    self.num_examples = next(iter(sizes.values()))
    if self.num_examples == 0:
      raise ValueError("ArrayDataset is empty: the data stage produced no examples")

    self._orders: dict[int, np.ndarray] = {}

  def _epoch_order(self, epoch: int) -> np.ndarray:
    if epoch not in self._orders:
      if len(self._orders) > 4:
        self._orders.clear()
      self._orders[epoch] = (
          np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
          if self.shuffle else np.arange(self.num_examples))
    return self._orders[epoch]

  def global_indices(self, step: int, global_batch_size: int) -> np.ndarray:
    """Example indices of the whole global batch of `step`."""
    positions = np.arange(step * global_batch_size, (step + 1) * global_batch_size)
    epochs, offsets = np.divmod(positions, self.num_examples)
    return np.array([self._epoch_order(int(e))[o] for e, o in zip(epochs, offsets)])

  def batch(self, step: int, global_batch_size: int, *, process_index: int | None = None,
            process_count: int | None = None) -> dict[str, np.ndarray]:
    """This process's rows of the global batch of `step`."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
      raise ValueError(f"global batch {global_batch_size} is not divisible by the "
                       f"{process_count} processes")
    per_host = global_batch_size // process_count
    idx = self.global_indices(step, global_batch_size)
    idx = idx[process_index * per_host:(process_index + 1) * per_host]
    return {k: v[idx] for k, v in self.features.items()}

  def eval_batches(self, batch_size: int, *, process_index: int | None = None,
                   process_count: int | None = None):
    """One ordered pass for evaluation; the last batch is padded with zero-weight rows."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    per_host = batch_size // process_count
    for start in range(0, self.num_examples, batch_size):
      idx = np.arange(start, start + batch_size)
      valid = idx < self.num_examples
      idx = np.where(valid, idx, 0)[process_index * per_host:(process_index + 1) * per_host]
      valid = valid[process_index * per_host:(process_index + 1) * per_host]
      yield {k: v[idx] for k, v in self.features.items()}, valid
