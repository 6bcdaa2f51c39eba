"""Length-bucketed training batches (`batching.ArrayDataset(length_buckets=...)`): pure
functions of the step, uniform visits, only padding cut, the same Bradley-Terry loss as full
width, and one width per step for members that share a bucket seed."""

import collections

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from warm_jax.data.batching import ArrayDataset
from warm_jax.models import RewardModel
from warm_jax.core.objectives import PreferenceObjective
from warm_jax.rm.scoring import unboxed_init

L = 24


def _pairs(n, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(6, L + 1, n)
  def side():
    tokens = rng.integers(3, 40, (n, L)).astype(np.int32)
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
    response = mask * (np.arange(L)[None] >= lengths[:, None] - 3)
    return tokens * mask, mask, response.astype(np.int32)
  (ct, cm, cr), (rt, rm, rr) = side(), side()
  return {"chosen_tokens": ct, "chosen_mask": cm, "chosen_response_mask": cr,
          "rejected_tokens": rt, "rejected_mask": rm, "rejected_response_mask": rr,
          "corrupted": np.zeros(n, np.int32)}, lengths


def _dataset(features, lengths, **kw):
  return ArrayDataset(features, length_buckets=(8, 12, 16, 24), lengths=lengths, **kw)


def test_batches_are_pure_cut_only_padding_and_visit_uniformly():
  features, lengths = _pairs(200)
  ds = _dataset(features, lengths, seed=3)
  again = _dataset(features, lengths, seed=3)
  visits = collections.Counter()
  for step in range(400):
    batch = ds.batch(step, 8, process_index=0, process_count=1)
    width = ds.batch_width(step, 8)
    assert batch["chosen_tokens"].shape == (8, width) and batch["corrupted"].shape == (8,)
    idx = ds.global_indices(step, 8)
    assert (lengths[idx] <= width).all()  # only padding was cut
    np.testing.assert_array_equal(batch["chosen_mask"], features["chosen_mask"][idx, :width])
    assert features["chosen_mask"][idx, width:].sum() == 0
    visits.update(idx.tolist())
  for step in (399, 0, 123):  # out of order, as after a resume: the same batch
    np.testing.assert_array_equal(again.global_indices(step, 8), ds.global_indices(step, 8))
  counts = np.array([visits[i] for i in range(200)])
  assert counts.min() >= 1 and counts.mean() == pytest.approx(16.0)
  assert counts.std() < 0.5 * counts.mean()  # every bucket at the same rate on average
  widths = {ds.batch_width(s, 8) for s in range(400)}
  assert widths == {8, 12, 16, 24}


def test_members_with_one_bucket_seed_share_widths_not_rows():
  features, lengths = _pairs(200)
  a, b = _dataset(features, lengths, seed=1), _dataset(features, lengths, seed=2)
  assert [a.batch_width(s, 8) for s in range(50)] == [b.batch_width(s, 8) for s in range(50)]
  assert any((a.global_indices(s, 8) != b.global_indices(s, 8)).any() for s in range(50))


@pytest.mark.slow
def test_the_cut_batch_has_the_full_width_loss():
  cfg = tiny_config(max_len=L, reward_readout="hidden_logprob")
  objective = PreferenceObjective(cfg)
  params = unboxed_init(RewardModel(cfg), 0)
  params["reward_head"]["logprob_kernel"] = jnp.asarray([[0.5], [0.3], [-0.2]])
  features, lengths = _pairs(64)
  ds = _dataset(features, lengths)
  keys = objective.batch_features
  for step in range(6):
    cut = ds.batch(step, 8, process_index=0, process_count=1)
    full = {k: v[ds.global_indices(step, 8)] for k, v in features.items()}
    loss_cut, _ = objective.loss(params, {k: jnp.asarray(cut[k]) for k in keys}, None)
    loss_full, _ = objective.loss(params, {k: jnp.asarray(full[k]) for k in keys}, None)
    np.testing.assert_allclose(float(loss_cut), float(loss_full), rtol=1e-5, atol=1e-5)


def test_bad_buckets_are_refused():
  features, lengths = _pairs(20)
  with pytest.raises(ValueError, match="increasing positive widths"):
    ArrayDataset(features, length_buckets=(16, 8), lengths=lengths)
  with pytest.raises(ValueError, match="the last bucket must hold"):
    ArrayDataset(features, length_buckets=(8, 16), lengths=lengths)
  with pytest.raises(ValueError, match="needs lengths"):
    ArrayDataset(features, length_buckets=(8, 24))
