"""Partitioner and the sharded train step on 8 simulated CPU devices (see conftest.py)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import tiny_config
from warm_jax.data.batching import ArrayDataset
from warm_jax.core.objectives import LanguageModelObjective
from warm_jax.core.optimizers import OptimizerConfig
from warm_jax.core.partitioning import Partitioner
from warm_jax.core.trainer import Trainer, TrainerConfig

SEQ = 16


def _dataset(n=64, vocab=40, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab, (n, SEQ)).astype(np.int32)
  mask = np.ones_like(tokens)
  mask[::3, -4:] = 0  # some right padding
  return ArrayDataset({"tokens": tokens, "mask": mask, "loss_mask": mask.copy()}, seed=seed)


def _trainer(partitioner, tmp_path, *, microbatches=1, cfg=None, batch=8, name="t"):
  cfg = cfg or tiny_config(d_model=32, mlp_dim=64, vocab_size=40)
  return Trainer(
      objective=LanguageModelObjective(cfg),
      optimizer=OptimizerConfig(learning_rate=1e-2),
      partitioner=partitioner,
      config=TrainerConfig(train_steps=3, batch_size=batch, microbatches=microbatches,
                           log_every=1, save_every=100),
      model_dir=str(tmp_path / name), seq_len=SEQ)


def _run_steps(trainer, dataset, steps=3):
  state = trainer.init_state()
  losses = []
  for step in range(steps):
    batch = trainer.partitioner.shard_batch(dataset.batch(step, trainer.config.batch_size),
                                            trainer.config.batch_size)
    state, metrics = trainer.train_step(state, batch)
    metrics = jax.device_get(metrics)
    losses.append(float(metrics["loss"]) / float(metrics["weight"]))
  return state, losses


def test_eight_simulated_devices():
  assert jax.device_count() == 8, "conftest should force 8 host devices"


@pytest.mark.slow
def test_sharded_step_matches_single_device(tmp_path):
  data = _dataset()
  single = _trainer(Partitioner(mesh_shape={"data": 1}, devices=jax.devices()[:1]), tmp_path,
                    name="single")
  sharded = _trainer(Partitioner(mesh_shape={"data": 2, "fsdp": 2, "tensor": 2}), tmp_path,
                     name="sharded")
  s1, l1 = _run_steps(single, data)
  s8, l8 = _run_steps(sharded, data)
  np.testing.assert_allclose(l8, l1, rtol=2e-5)
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(s8.params)),
                  jax.tree_util.tree_leaves(jax.device_get(s1.params))):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  # Params really are laid out as the rules say.
  layer = s8.params["decoder"]["layer_0"]
  assert layer["mlp"]["wi"]["kernel"].sharding.spec == P("fsdp", "tensor")
  assert layer["mlp"]["wo"]["kernel"].sharding.spec == P("tensor", "fsdp")
  assert layer["attention"]["query"]["kernel"].sharding.spec == P("fsdp", "tensor", None)
  assert s8.params["decoder"]["token_embed"]["embedding"].sharding.spec == P("tensor", "fsdp")
  wi = layer["mlp"]["wi"]["kernel"]
  assert wi.addressable_shards[0].data.shape == (wi.shape[0] // 2, wi.shape[1] // 2)
  # Optimizer state of a factored matrix follows the rules or is replicated, never wrong-rank.
  for leaf in jax.tree_util.tree_leaves(s8.opt_state):
    assert len(leaf.sharding.spec) <= leaf.ndim


@pytest.mark.slow
def test_microbatching_gives_the_full_batch_gradient(tmp_path):
  data = _dataset()
  part = Partitioner(mesh_shape={"data": 2}, devices=jax.devices()[:2])
  full, lf = _run_steps(_trainer(part, tmp_path, name="full"), data)
  micro, lm = _run_steps(_trainer(part, tmp_path, microbatches=4, name="micro"), data)
  np.testing.assert_allclose(lm, lf, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(micro.params)),
                  jax.tree_util.tree_leaves(jax.device_get(full.params))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_indivisible_dims_fall_back_to_replication(tmp_path):
  # 2 heads on a 4-way tensor axis: heads dims cannot be split, mlp (64) still is.
  cfg = tiny_config(num_heads=2, d_model=32, mlp_dim=64, vocab_size=40)
  part = Partitioner(mesh_shape={"data": 2, "tensor": 4})
  trainer = _trainer(part, tmp_path, cfg=cfg)
  state = trainer.init_state()
  layer = state.params["decoder"]["layer_0"]
  assert layer["attention"]["query"]["kernel"].sharding.spec == P("fsdp", None, None)
  assert layer["mlp"]["wi"]["kernel"].sharding.spec == P("fsdp", "tensor")
  assert any("query" in f for f in part.fallbacks)


def test_mesh_larger_than_device_count_is_a_clear_error():
  with pytest.raises(ValueError, match=r"needs 16 devices but jax has 8"):
    Partitioner(mesh_shape={"data": 2, "fsdp": 2, "tensor": 4})
  with pytest.raises(ValueError, match="unknown axes"):
    Partitioner(mesh_shape={"model": 2})
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    Partitioner(mesh_shape={"data": -1, "fsdp": -1})


def test_batch_not_divisible_by_batch_devices_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    _trainer(Partitioner(), tmp_path, batch=12)


def test_shard_batch_splits_rows_over_data_and_fsdp():
  part = Partitioner(mesh_shape={"data": 2, "fsdp": 2, "tensor": 2})
  arr = part.shard_batch({"x": np.arange(16).reshape(8, 2)}, 8)["x"]
  assert arr.sharding.spec == P(("data", "fsdp"), None)
  assert arr.addressable_shards[0].data.shape == (2, 2)
  np.testing.assert_array_equal(np.asarray(arr), np.arange(16).reshape(8, 2))
