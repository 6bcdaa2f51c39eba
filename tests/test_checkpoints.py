"""Checkpoints: round trips, plain-orbax readability, SFT -> RM init mapping, clear errors."""

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_config
from warm_jax.core import checkpoints as ckpt
from warm_jax.models import RewardModel
from warm_jax.core.objectives import LanguageModelObjective
from warm_jax.core.optimizers import OptimizerConfig
from warm_jax.core.partitioning import Partitioner
from warm_jax.train import InitFromCheckpoint
from warm_jax.core.trainer import Trainer, TrainerConfig

SEQ = 8


def _lm_trainer(tmp_path, cfg=None, name="lm"):
  return Trainer(objective=LanguageModelObjective(cfg or tiny_config()),
                 optimizer=OptimizerConfig(), partitioner=Partitioner(mesh_shape={"fsdp": 2},
                                                                      devices=jax.devices()[:2]),
                 config=TrainerConfig(batch_size=2), model_dir=str(tmp_path / name), seq_len=SEQ)


def _tree_equal(a, b):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_train_checkpoint_round_trip_and_plain_orbax_restore(tmp_path):
  trainer = _lm_trainer(tmp_path)
  state = trainer.init_state()
  manager = ckpt.TrainCheckpointer(trainer.model_dir, save_every=1, async_save=True)
  manager.save(7, state.params, state.opt_state, force=True)
  manager.wait()
  assert manager.latest_step() == 7
  params, opt_state = manager.restore(7, trainer.abstract_state.params,
                                      trainer.abstract_state.opt_state)
  manager.close()
  _tree_equal(params, state.params)
  _tree_equal(opt_state, state.opt_state)
  # Restored onto the requested shardings.
  wi = params["decoder"]["layer_0"]["mlp"]["wi"]["kernel"]
  assert wi.sharding == trainer.param_shardings["decoder"]["layer_0"]["mlp"]["wi"]["kernel"]
  # A user with orbax alone reads the params item.
  plain = ocp.StandardCheckpointer().restore(tmp_path / "lm" / "checkpoints" / "7" / "params")
  _tree_equal(plain, jax.device_get(state.params))
  # And our loader finds it from the model dir, the checkpoints dir or the step dir.
  for path in (tmp_path / "lm", tmp_path / "lm" / "checkpoints",
               tmp_path / "lm" / "checkpoints" / "7"):
    _tree_equal(ckpt.load_params(str(path)), jax.device_get(state.params))


def test_unfinished_save_is_removed_before_the_same_step_is_saved_again(tmp_path):
  """A process killed mid-save leaves `<step>.orbax-checkpoint-tmp-*`; the resumed run saves
  that step again. The leftover goes synchronously at start-up (orbax's background cleanup
  could delete the new save's temporary dir), complete steps stay."""
  trainer = _lm_trainer(tmp_path)
  state = trainer.init_state()
  manager = ckpt.TrainCheckpointer(trainer.model_dir, save_every=1, async_save=True)
  manager.save(2, state.params, state.opt_state, force=True)
  manager.close()
  directory = tmp_path / "lm" / "checkpoints"
  leftover = directory / "4.orbax-checkpoint-tmp-1796409356"
  (leftover / "params").mkdir(parents=True)
  (leftover / "params" / "half_written").write_text("x")
  manager = ckpt.TrainCheckpointer(trainer.model_dir, save_every=1, async_save=True)
  assert not leftover.exists()
  assert manager.complete_steps() == [2]
  manager.save(4, state.params, state.opt_state, force=True)
  manager.wait()
  manager.close()
  assert sorted(p.name for p in directory.iterdir()) == ["2", "4"]
  _tree_equal(ckpt.load_params(str(directory / "4")), jax.device_get(state.params))


def test_save_params_is_plain_and_refuses_to_overwrite(tmp_path):
  params = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"c": np.ones(4)}}
  ckpt.save_params(params, str(tmp_path / "p"))
  _tree_equal(ocp.StandardCheckpointer().restore(tmp_path / "p"), params)
  with pytest.raises(ckpt.CheckpointError, match="already exists"):
    ckpt.save_params({"a": np.zeros(1)}, str(tmp_path / "p"))
  _tree_equal(ckpt.load_params(str(tmp_path / "p")), params)  # untouched


def test_sft_to_rm_init_copies_the_backbone_exactly(tmp_path):
  cfg = tiny_config()
  lm_state = _lm_trainer(tmp_path, cfg).init_state()
  ckpt.save_params(jax.device_get(lm_state.params), str(tmp_path / "sft_params"))
  rm = RewardModel(cfg)
  fresh = jax.device_get(jax.tree_util.tree_map(
      np.asarray, rm.init(jax.random.key(5), np.ones((1, 4), np.int32),
                          np.ones((1, 4), np.int32))))
  fresh = jax.tree_util.tree_map(lambda x: getattr(x, "value", x), fresh["params"],
                                 is_leaf=lambda x: hasattr(x, "value"))
  params, report = ckpt.init_from_checkpoint(
      fresh, ckpt.load_params(str(tmp_path / "sft_params")), [(r"reward_head/.*", None)])
  _tree_equal(params["decoder"], jax.device_get(lm_state.params["decoder"]))
  _tree_equal(params["reward_head"], fresh["reward_head"])
  assert sorted(report["fresh"]) == ["reward_head/bias", "reward_head/kernel"]
  assert report["unused_source"] == []  # tied embeddings: the LM has no separate head


def test_init_from_checkpoint_with_renaming_map():
  source = {"old": {"w": np.ones((2, 2), np.float32)}, "keep": np.zeros(3, np.float32)}
  target = {"new": {"w": np.full((2, 2), 5.0, np.float32)}, "keep": np.ones(3, np.float32)}
  params, report = ckpt.init_from_checkpoint(target, source, [(r"new/(.*)", r"old/\1")])
  np.testing.assert_array_equal(params["new"]["w"], 1.0)
  np.testing.assert_array_equal(params["keep"], 0.0)
  assert sorted(report["copied"]) == ["keep", "new/w"]


def test_init_from_other_architecture_names_the_leaf(tmp_path):
  small = _lm_trainer(tmp_path, tiny_config(d_model=32), "a").init_state()
  ckpt.save_params(jax.device_get(small.params), str(tmp_path / "src"))
  other = jax.device_get(_lm_trainer(tmp_path, tiny_config(d_model=48, num_heads=4),
                                     "b").init_state().params)
  with pytest.raises(ckpt.CheckpointError, match=r"decoder/.* has shape \(.*32.*\) but the "
                                                 r"target model's .* has \(.*48.*\)"):
    ckpt.init_from_checkpoint(other, ckpt.load_params(str(tmp_path / "src")))


def test_init_from_checkpoint_without_backbone_is_refused(tmp_path):
  ckpt.save_params({"unrelated": np.zeros(2, np.float32)}, str(tmp_path / "src"))
  trainer = _lm_trainer(tmp_path)
  with pytest.raises(ckpt.CheckpointError, match="not a backbone of this model"):
    InitFromCheckpoint(path=str(tmp_path / "src"))(trainer)


def test_missing_checkpoint_dir_is_a_clear_error(tmp_path):
  with pytest.raises(ckpt.CheckpointError, match="does not exist"):
    ckpt.load_params(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ckpt.CheckpointError, match="no orbax checkpoint found"):
    ckpt.load_params(str(tmp_path / "empty"))


def test_write_failure_reason_names_the_os_cause_whichever_layer_reports_it():
  import errno
  import os
  efbig, enospc = os.strerror(errno.EFBIG), os.strerror(errno.ENOSPC)
  # TensorStore's status text already names it: kept as it is, no second copy.
  ts = ValueError(f"OUT_OF_RANGE: Error writing \"a/0.0\": Failed to write 113 bytes: {efbig} "
                  f"[os_error_code='{errno.EFBIG}']")
  assert ckpt.write_failure_reason(ts) == str(ts)
  # A status that carries only the code gets the text.
  bare = ValueError(f"OUT_OF_RANGE: write failed [os_error_code='{errno.EFBIG}']\nmore")
  assert ckpt.write_failure_reason(bare) == (
      f"OUT_OF_RANGE: write failed [os_error_code='{errno.EFBIG}'] ({efbig}, errno {errno.EFBIG})")
  # A generic wrapper (an asyncio error raised while handling the write's failure): its first
  # line, and the cause found in its context.
  try:
    try:
      raise OSError(errno.ENOSPC, enospc)
    except OSError:
      raise RuntimeError("Task exception was never retrieved\nfuture: <Task finished>")
  except RuntimeError as wrapper:
    assert ckpt.write_failure_reason(wrapper) == (
        f"Task exception was never retrieved ({enospc}, errno {errno.ENOSPC})")
  # Nothing from the OS anywhere: the first line alone, or the type for an empty message.
  assert ckpt.write_failure_reason(ValueError("bad dtype\nstack")) == "bad dtype"
  assert ckpt.write_failure_reason(ValueError()) == "ValueError"
