"""The training loop: non-finite guard, frozen params, metrics, schedules, losses."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from warm_jax.core import checkpoints as ckpt
from warm_jax.core import losses
from warm_jax.data.batching import ArrayDataset
from warm_jax.core.metrics_writer import read_metrics
from warm_jax.core.objectives import LanguageModelObjective
from warm_jax.core.optimizers import OptimizerConfig, make_schedule
from warm_jax.core.partitioning import Partitioner
from warm_jax.core.trainer import NonFiniteError, Trainer, TrainerConfig

SEQ = 8
POISON = 39  # a token id that makes the test objective's loss NaN


@dataclasses.dataclass(frozen=True)
class PoisonedObjective(LanguageModelObjective):
  """LM loss that becomes NaN on any batch holding the POISON token."""

  def loss(self, params, batch, rng):
    loss, metrics = super().loss(params, batch, rng)
    bad = jnp.any(batch["tokens"] == POISON)
    nan_if_bad = jnp.where(bad, jnp.nan, 1.0)
    return loss * nan_if_bad, dict(metrics, loss=metrics["loss"] * nan_if_bad)


def _data(n=32, poison_from=None):
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, POISON, (n, SEQ)).astype(np.int32)
  if poison_from is not None:
    tokens[poison_from:, 0] = POISON
  ones = np.ones_like(tokens)
  return ArrayDataset({"tokens": tokens, "mask": ones, "loss_mask": ones}, shuffle=False)


def _trainer(tmp_path, objective=None, **config):
  fields = dict(train_steps=6, batch_size=4, log_every=1, save_every=2, async_checkpoints=False,
                peak_flops_per_device=1e12)
  fields.update(config)
  return Trainer(objective=objective or LanguageModelObjective(tiny_config()),
                 optimizer=OptimizerConfig(learning_rate=1e-2),
                 partitioner=Partitioner(mesh_shape={"data": 2}, devices=jax.devices()[:2]),
                 config=TrainerConfig(**fields), model_dir=str(tmp_path / "run"), seq_len=SEQ)


@pytest.mark.slow
def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
  # Batches are 4 rows, unshuffled: step index 3 (the 4th step) is the first poisoned one.
  trainer = _trainer(tmp_path, PoisonedObjective(tiny_config()))
  with pytest.raises(NonFiniteError, match=r"step 4 .*last good checkpoint is step 2"):
    trainer.train(_data(poison_from=12))
  manager = ckpt.TrainCheckpointer(trainer.model_dir, save_every=2)
  assert manager.latest_step() == 2 and 4 not in manager.all_steps()
  params = ckpt.load_params(trainer.model_dir)
  manager.close()
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))
  # Rerunning on clean data resumes from step 2 and finishes.
  state = _trainer(tmp_path).train(_data())
  assert int(state.step) == 6


def test_frozen_params_do_not_move(tmp_path):
  trainer = Trainer(objective=LanguageModelObjective(tiny_config()),
                    optimizer=OptimizerConfig(learning_rate=1e-2),
                    partitioner=Partitioner(mesh_shape={"data": 1}, devices=jax.devices()[:1]),
                    config=TrainerConfig(train_steps=3, batch_size=4, save_every=10,
                                         peak_flops_per_device=1e12),
                    model_dir=str(tmp_path / "frozen"), seq_len=SEQ,
                    trainable=lambda path: "layer_1" in path)
  start = jax.device_get(trainer.init_state().params)
  end = jax.device_get(trainer.train(_data()).params)
  assert np.array_equal(start["decoder"]["layer_0"]["mlp"]["wi"]["kernel"],
                        end["decoder"]["layer_0"]["mlp"]["wi"]["kernel"])
  assert not np.array_equal(start["decoder"]["layer_1"]["mlp"]["wi"]["kernel"],
                            end["decoder"]["layer_1"]["mlp"]["wi"]["kernel"])


@pytest.mark.slow
def test_loop_writes_namespaced_metrics_and_evaluates(tmp_path):
  trainer = _trainer(tmp_path, eval_every=3)
  trainer.train(_data(), eval_dataset=_data(n=10))
  records = read_metrics(trainer.model_dir)
  train_rows = [r for r in records if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
  for key in ("train/grad_norm", "train/learning_rate", "train/token_accuracy"):
    assert key in train_rows[-1]
  assert "perf/tokens_per_s" in train_rows[-1] and 0 < train_rows[-1]["perf/mfu"] < 1
  evals = [r for r in records if "eval/loss" in r]
  assert [r["step"] for r in evals] == [3, 6]
  assert evals[-1]["eval/weight"] == 10 * (SEQ - 1)  # every target of the 10 examples, once
  # Eval loss equals an independent mean over the examples.
  params = ckpt.load_params(trainer.model_dir)
  data = _data(n=10).features
  logits = trainer.objective.module.apply({"params": params}, data["tokens"], data["mask"])
  logz = jax.nn.logsumexp(logits[:, :-1], -1)
  nll = logz - np.take_along_axis(np.asarray(logits[:, :-1]), data["tokens"][:, 1:, None],
                                  -1)[..., 0]
  expected = float(np.mean(nll + trainer.objective.z_loss * np.square(logz)))
  assert math.isclose(evals[-1]["eval/loss"], expected, rel_tol=1e-4)


def test_cross_entropy_and_bradley_terry_against_numpy():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  tokens = rng.integers(0, 7, (2, 5))
  mask = np.array([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]])
  loss_sum, weight, _ = losses.next_token_cross_entropy(jnp.asarray(logits), jnp.asarray(tokens),
                                                        jnp.asarray(mask))
  expected = 0.0
  for b in range(2):
    for t in range(1, 5):
      if mask[b, t]:
        row = logits[b, t - 1].astype(np.float64)
        expected += np.log(np.exp(row).sum()) - row[tokens[b, t]]
  assert float(weight) == mask[:, 1:].sum()
  np.testing.assert_allclose(float(loss_sum), expected, rtol=1e-5)
  r_plus, r_minus = np.array([2.0, 0.5, 1.0]), np.array([1.0, 0.5, 3.0])
  np.testing.assert_allclose(losses.bradley_terry_loss(r_plus, r_minus),
                             np.log1p(np.exp(-(r_plus - r_minus))), rtol=1e-6)
  np.testing.assert_array_equal(losses.pairwise_accuracy(r_plus, r_minus), [1.0, 1.0, 0.0])


def test_schedules_warm_up_then_decay():
  sched = make_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=10, schedule="linear"),
                        total_steps=110)
  np.testing.assert_allclose([float(sched(s)) for s in (0, 5, 10, 60, 110)],
                             [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
  rsqrt = make_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=100, schedule="rsqrt"),
                        total_steps=1000)
  np.testing.assert_allclose(float(rsqrt(400)), math.sqrt(100 / 400), rtol=1e-6)
  with pytest.raises(ValueError, match="schedule"):
    OptimizerConfig(schedule="exponential")


def test_dataset_order_is_a_function_of_seed_and_step():
  data = ArrayDataset({"x": np.arange(10)}, seed=3)
  first = [data.batch(s, 4)["x"].tolist() for s in range(5)]
  again = ArrayDataset({"x": np.arange(10)}, seed=3)
  assert [again.batch(s, 4)["x"].tolist() for s in (4, 2)] == [first[4], first[2]]
  # Each epoch is a permutation: steps 0-4 cover 20 positions = exactly 2 epochs.
  flat = sum(first, [])
  assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
  # Two processes split each global batch.
  halves = [data.batch(1, 4, process_index=i, process_count=2)["x"].tolist() for i in (0, 1)]
  assert halves[0] + halves[1] == first[1]


def test_metrics_file_is_trimmed_on_resume(tmp_path):
  from warm_jax.core.metrics_writer import MetricsWriter
  w = MetricsWriter(str(tmp_path), tensorboard=False)
  for s in (1, 2, 3, 4):
    w.write(s, {"train/loss": float(s)})
  w = MetricsWriter(str(tmp_path), resume_step=2, tensorboard=False)
  assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]
  with open(tmp_path / "metrics.jsonl") as f:
    assert all(json.loads(line) for line in f)


class _TerminatingDataset(ArrayDataset):
  """Sends this process SIGTERM while the batch of `at_step` is being read (a preemption)."""

  at_step = 3

  def batch(self, step, global_batch_size, **kw):
    if step == self.at_step:
      import os
      import signal
      os.kill(os.getpid(), signal.SIGTERM)
    return super().batch(step, global_batch_size, **kw)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_stops_cleanly(tmp_path):
  from warm_jax.core.trainer import Preempted
  data = _data()
  terminating = _TerminatingDataset(data.features, shuffle=False)
  with pytest.raises(Preempted, match="SIGTERM at step 4: checkpoint saved"):
    _trainer(tmp_path, save_every=100).train(terminating)
  manager = ckpt.TrainCheckpointer(str(tmp_path / "run"), save_every=100)
  assert manager.latest_step() == 4
  manager.close()
  # The handler is restored afterwards and a rerun finishes from step 4.
  import signal
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  assert int(_trainer(tmp_path, save_every=100).train(data).step) == 6


def _matmul_params(params) -> int:
  """Non-embedding params of the real param tree (every leaf but the token and position
  tables), independent of TransformerConfig.num_params's shape arithmetic."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return sum(int(np.prod(x.shape)) for path, x in leaves
             if "embed" not in jax.tree_util.keystr(path))


@pytest.mark.slow
def test_training_and_eval_count_their_model_flops(tmp_path):
  """The stage profile's count (warm_jax.core.flops.COUNTER): steps x the PaLM-convention count of
  one step, computed here from the real param tree; an eval batch counts one forward (1/3);
  and the analytic step is within a factor of XLA's own count of the compiled program."""
  from warm_jax.core import flops as flops_lib
  cfg = tiny_config()
  trainer = _trainer(tmp_path, train_steps=3, log_every=3)
  flops_lib.COUNTER.reset()
  state = trainer.train(_data(), eval_dataset=_data(n=10))
  per_token = (6 * (_matmul_params(state.params) + cfg.vocab_size * cfg.d_model)
               + 12 * cfg.num_layers * SEQ * cfg.num_heads * (cfg.d_model // cfg.num_heads))
  step = 4 * SEQ * per_token  # batch 4
  programs = flops_lib.COUNTER.programs()
  assert programs["train step (train)"] == {"flops": pytest.approx(3 * step), "calls": 3}
  # 10 eval examples in 3 padded batches of 4, a forward pass each
  assert programs["eval (train)"] == {"flops": pytest.approx(3 * step / 3), "calls": 3}
  assert flops_lib.COUNTER.total() == pytest.approx(4 * step)
  batch = trainer.shard_batch(_data().batch(0, 4))
  with trainer.partitioner.mesh_context():
    per_device = trainer._train_step.lower(state, batch).compile().cost_analysis()["flops"]
  # XLA counts one device's share of the partitioned program (the batch is split over 2), and
  # also the optimizer, softmax and elementwise work that model FLOPs leave out
  assert step < 2 * per_device < 2 * step
  flops_lib.COUNTER.reset()
  flops_lib.write_stage_flops(str(tmp_path / "none.json"))
  assert not (tmp_path / "none.json").exists()  # nothing counted: unknown, no file
