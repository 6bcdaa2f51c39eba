"""Deterministic, resumable batches: the batch of step s is a pure function of (seed, s).

Where it sits: every training stage draws its batches from an `ArrayDataset` of fixed-shape
numpy features (tokenised once by the data stage: seqio tasks or the synthetic world). Epoch e
visits the examples in the order of a permutation seeded by (seed, e); the stream runs across
epoch boundaries without dropping examples. Because the position in the stream is step *
global_batch, a run restored at step s reads exactly the batches an uninterrupted run would
have, with no iterator state to checkpoint. Each process takes its contiguous slice of the
global batch (multi-host).

Length buckets (optional, `length_buckets` + `lengths`): examples are grouped by the smallest
bucket width that holds their real length; step s draws its bucket from a stream of its own
(`bucket_seed`, with probability proportional to the bucket's size, so every example is visited
at the same rate on average), takes the bucket's next `global_batch` examples (each bucket has
its own epoch permutations, seeded by (seed, bucket, epoch)) and returns [batch, width] arrays:
the columns cut are padding in every row, so a causal model's outputs on the real tokens are
unchanged, and a training step pays for ~94 instead of 128 tokens on the on-policy RM pairs.
The batch of step s is still a pure function of (seed, bucket_seed, s); members that share a
bucket_seed (every vmapped member does) get the same width at every step, each its own rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass
class ArrayDataset:
  """Fixed-shape examples held as {feature: [num_examples, ...]} numpy arrays."""

  features: dict[str, np.ndarray]
  seed: int = 0
  shuffle: bool = True
  length_buckets: tuple[int, ...] | None = None  # bucket widths (needs `lengths`)
  lengths: np.ndarray | None = None  # [num_examples] real length of each example
  bucket_seed: int = 0  # the stream of bucket choices (shared by members trained together)

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
    self._buckets = None
    if self.length_buckets is not None:
      self._buckets = self._make_buckets()

  def _make_buckets(self) -> dict[str, Any]:
    widths = tuple(int(w) for w in self.length_buckets)
    if not widths or list(widths) != sorted(set(widths)) or widths[0] <= 0:
      raise ValueError(f"length_buckets={self.length_buckets}: increasing positive widths")
    if self.lengths is None or len(self.lengths) != self.num_examples:
      raise ValueError("length_buckets needs lengths: one real length per example")
    full = {k: v.shape[1] for k, v in self.features.items() if v.ndim >= 2}
    if int(np.max(self.lengths)) > widths[-1] or any(w > widths[-1] for w in full.values()):
      raise ValueError(f"length_buckets={widths}: the last bucket must hold the longest "
                       f"example ({int(np.max(self.lengths))}) and the arrays' width "
                       f"({max(full.values(), default=0)})")
    ids = np.searchsorted(np.asarray(widths), np.asarray(self.lengths), side="left")
    rows = {b: np.nonzero(ids == b)[0] for b in range(len(widths))}
    used = [b for b in rows if len(rows[b])]
    sizes = np.array([len(rows[b]) for b in used], np.float64)
    return {"widths": [widths[b] for b in used], "rows": [rows[b] for b in used],
            "p": sizes / sizes.sum(), "choices": np.zeros(0, np.int64), "orders": {}}

  def _bucket_choices(self, upto: int) -> np.ndarray:
    """Bucket of every step < upto (extended lazily; a pure function of bucket_seed)."""
    b = self._buckets
    have = len(b["choices"])
    if upto > have:
      new = [int(np.random.default_rng([self.bucket_seed, 7, s]).choice(len(b["p"]), p=b["p"]))
             for s in range(have, upto)]
      b["choices"] = np.concatenate([b["choices"], np.asarray(new, np.int64)])
    return b["choices"][:upto]

  def _bucket_order(self, bucket: int, epoch: int) -> np.ndarray:
    orders = self._buckets["orders"]
    key = (bucket, epoch)
    if key not in orders:
      if len(orders) > 16:
        orders.clear()
      n = len(self._buckets["rows"][bucket])
      orders[key] = (np.random.default_rng([self.seed, 1000 + bucket, epoch]).permutation(n)
                     if self.shuffle else np.arange(n))
    return orders[key]

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
    if self._buckets is not None:
      choices = self._bucket_choices(step + 1)
      bucket = int(choices[step])
      done = int(np.count_nonzero(choices[:step] == bucket))  # this bucket's earlier batches
      rows = self._buckets["rows"][bucket]
      positions = np.arange(done * global_batch_size, (done + 1) * global_batch_size)
      epochs, offsets = np.divmod(positions, len(rows))
      return np.array([rows[self._bucket_order(bucket, int(e))[o]]
                       for e, o in zip(epochs, offsets)])
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
    if self._buckets is None:
      return {k: v[idx] for k, v in self.features.items()}
    width = self.batch_width(step, global_batch_size)
    return {k: (v[idx][:, :width] if v.ndim >= 2 else v[idx]) for k, v in self.features.items()}

  def batch_width(self, step: int, global_batch_size: int) -> int | None:
    """The width of step's [batch, width] arrays under length buckets (None without)."""
    if self._buckets is None:
      return None
    return self._buckets["widths"][int(self._bucket_choices(step + 1)[step])]

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
