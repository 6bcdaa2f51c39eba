"""core.row_slices: a computation over row slices equals it over the whole batch, in row
order, and bad slice counts are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from warm_jax.core.row_slices import check_row_slices, map_row_slices


def test_slices_join_back_in_row_order_with_every_output():
  rng = np.random.default_rng(0)
  x, y = jnp.asarray(rng.normal(size=(12, 5))), jnp.asarray(rng.normal(size=(12, 3, 2)))
  # per-row outputs of different ranks, a tuple and a dict, and a row-dependent reduction
  fn = lambda a, b: ({"sum": a.sum(-1), "outer": a[:, :, None] * b[:, None, 0, :]},
                     jnp.cumsum(b, axis=1), jnp.arange(a.shape[0]) * 0 + a[:, 0])
  whole = jax.jit(lambda a, b: fn(a, b))(x, y)
  for slices in (1, 2, 3, 4, 6, 12):
    sliced = jax.jit(lambda a, b: map_row_slices(fn, slices, a, b))(x, y)
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6), whole,
                           sliced)
  # a slice's scalar comes back once per slice
  count = jax.jit(lambda a: map_row_slices(lambda r: (r.sum(-1), jnp.sum(r)), 4, a))(x)
  np.testing.assert_allclose(count[1], [np.asarray(x)[j::4].sum() for j in range(4)], rtol=1e-5)
  # the slices really are separate calls: a batch-wide statistic differs per slice
  mean = map_row_slices(lambda a: jnp.broadcast_to(a.mean(), a.shape[:1]), 3, x[:, 0])
  rows = np.asarray(x[:, 0])
  np.testing.assert_allclose(mean, [rows[i % 3::3].mean() for i in range(12)], rtol=1e-6)


def test_bad_slice_counts_are_refused():
  check_row_slices(128, 4, 8, name="loop_rows")
  with pytest.raises(ValueError, match="score_microbatches=3: must be >= 1 and split the batch "
                                       "of 8 rows"):
    check_row_slices(8, 3, 1, name="score_microbatches")
  with pytest.raises(ValueError, match="divisible by the mesh's 2 batch shards"):
    check_row_slices(8, 8, 2, name="score_microbatches")
  with pytest.raises(ValueError, match="must be >= 1"):
    check_row_slices(8, 0, 1, name="x")
