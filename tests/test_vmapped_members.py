"""RM members trained in one vmapped program (warm_jax.rm.vmapped_members) against the sequential
one-member jobs (warm_jax.rm.members.train_reward_model), on a tiny model built here.

Equality tolerance. The two paths run the same arithmetic, but vmap turns every matmul and
reduction into a batched one that XLA may sum in another order, so they agree to float32
rounding, not bit for bit. Adafactor then divides each gradient by its own RMS, which turns
those ~1e-7 relative differences into ~1e-5 of the distance the params moved after a few steps
(measured: <= 5e-5). A real bug (another member's learning rate, dropout rate or key, data
order, or SFT init) changes the params by the order of that distance itself (tens of percent).
The test allows 1e-3 of it: 20x above the rounding seen, 100x below any such bug.

Two leaves are left out of the parameter comparison: the reward head's bias and the decoder's
final-norm bias. The Bradley-Terry loss is exactly invariant to both (each adds one constant to
every reward, which cancels in r+ - r-), so their true gradient is 0 and what they get is
rounding noise, which Adafactor normalises into full learning-rate steps of arbitrary sign.
They are checked through what they cannot change: the members' reward margins.
"""

import dataclasses
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from warm_jax.core import checkpoints as ckpt
from warm_jax.data.batching import ArrayDataset
from warm_jax.rm.members import MemberSweep, draw_member, train_reward_model
from warm_jax.core.metrics_writer import read_metrics
from warm_jax.models import LanguageModel, RewardModel
from warm_jax.core.objectives import PreferenceObjective
from warm_jax.core.optimizers import OptimizerConfig
from warm_jax.core.partitioning import DEFAULT_RULES, Partitioner
from warm_jax.rm.scoring import unboxed_init
from warm_jax.core.trainer import NonFiniteError, Preempted, TrainerConfig
from warm_jax.rm.vmapped_members import (VmappedMembersTrainer, member_partitioner, member_range,
                                         train_reward_members)

SEQ = 8
VOCAB = 40
POISON = VOCAB - 1  # a token id that makes the poisoned objective's loss NaN
CFG = tiny_config(num_layers=1, vocab_size=VOCAB)
SFT_STEPS = (10, 20)
BT_INVARIANT = ("reward_head/bias", "decoder/final_norm/bias")
MEMBERS = (0, 1)


def _partitioner():
  return Partitioner(mesh_shape={"data": 2}, devices=jax.devices()[:2])


def _pairs(n, seed=0, poison_from=None):
  rng = np.random.default_rng(seed)
  chosen = rng.integers(3, POISON, (n, SEQ)).astype(np.int32)
  rejected = rng.integers(3, POISON, (n, SEQ)).astype(np.int32)
  if poison_from is not None:
    chosen[poison_from:, 0] = POISON
  mask = np.ones((n, SEQ), np.int32)
  mask[::3, -3:] = 0  # some right padding
  return {"chosen_tokens": chosen, "chosen_mask": mask, "rejected_tokens": rejected,
          "rejected_mask": mask[::-1].copy(), "corrupted": np.zeros(n, bool)}


def _sweep():
  """The first sweep seed whose members 0 and 1 differ in learning rate, dropout rate and SFT
  step all at once (and, as every member, in data order)."""
  for seed in range(1000):
    sweep = MemberSweep(learning_rates=(3e-3, 3e-2), dropout_rates=(0.05, 0.2),
                        sft_steps=SFT_STEPS, seed=seed)
    a, b = (draw_member(sweep, i) for i in MEMBERS)
    if (a.learning_rate != b.learning_rate and a.dropout_rate != b.dropout_rate
        and a.sft_step != b.sft_step):
      return sweep
  raise AssertionError("no sweep seed separates the members")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  """An SFT run with two kept steps (Baklava), a probe dir, preference data, the stage args."""
  root = tmp_path_factory.mktemp("assets")
  for step, seed in zip(SFT_STEPS, (1, 2)):
    ckpt.save_params(unboxed_init(LanguageModel(CFG), seed),
                     str(root / "sft" / "checkpoints" / str(step) / "params"))
  probe = unboxed_init(RewardModel(CFG), 3)
  probe["reward_head"]["kernel"] = np.random.default_rng(4).normal(
      0, 0.3, probe["reward_head"]["kernel"].shape).astype(np.float32)
  probe["reward_head"]["bias"] = np.zeros_like(probe["reward_head"]["bias"])
  ckpt.save_params(probe, str(root / "probe" / "params"))
  args = dict(sweep=_sweep(), sft_dir=str(root / "sft"), probe_dir=str(root / "probe"),
              model_config=CFG, seq_len=SEQ,
              optimizer=OptimizerConfig(learning_rate=1.0, warmup_steps=2, clip_grad_norm=1.0),
              trainer_config=TrainerConfig(train_steps=4, batch_size=4, log_every=1,
                                           save_every=2, eval_every=2, async_checkpoints=False,
                                           peak_flops_per_device=1e12),
              dataset=ArrayDataset(_pairs(24)), eval_dataset=ArrayDataset(_pairs(10, seed=1),
                                                                          shuffle=False))
  return root, args


@pytest.fixture(scope="module")
def runs(assets):
  """Members 0 and 1 trained as two sequential jobs and as one vmapped program."""
  root, args = assets
  for i in MEMBERS:
    train_reward_model(members_dir=str(root / "seq"), member_index=i,
                       partitioner=_partitioner(), **args)
  state = train_reward_members(members_dir=str(root / "vmap"), member_indices=MEMBERS,
                               partitioner=_partitioner(), **args)
  assert int(state.step) == 4
  return root / "seq", root / "vmap"


def _params(model_dir):
  return ckpt.flatten_params(ckpt.load_params(str(model_dir)))


def _margins(params, data):
  r_plus, r_minus = PreferenceObjective(CFG).rewards(_unflatten(params), data)
  return np.asarray(r_plus - r_minus)


def _unflatten(flat):
  tree = {}
  for path, leaf in flat.items():
    node = tree
    *parents, name = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[name] = jnp.asarray(leaf)
  return tree


@pytest.mark.slow
def test_vmapped_members_equal_sequential_members(assets, runs):
  root, args = assets
  seq, vmap = runs
  data = {k: v for k, v in args["eval_dataset"].features.items() if k != "corrupted"}
  for i in MEMBERS:
    member = draw_member(args["sweep"], i)
    a, b = _params(seq / f"member_{i}"), _params(vmap / f"member_{i}")
    init = _params(root / "sft" / "checkpoints" / str(member.sft_step))
    assert sorted(a) == sorted(b)
    moved = max(float(np.max(np.abs(a[k] - init[k]))) for k in init if k in a)
    assert moved > member.learning_rate  # training really moved the member
    for k in a:
      if k not in BT_INVARIANT:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-3 * moved, err_msg=k)
    np.testing.assert_allclose(_margins(b, data), _margins(a, data), rtol=1e-3, atol=1e-4)
    # The per-member metrics agree step by step, train and eval.
    rows_a, rows_b = read_metrics(str(seq / f"member_{i}")), read_metrics(str(vmap / f"member_{i}"))
    train_a = [r for r in rows_a if "train/loss" in r]
    train_b = [r for r in rows_b if "train/loss" in r]
    assert [r["step"] for r in train_b] == [r["step"] for r in train_a] == [1, 2, 3, 4]
    for ra, rb in zip(train_a, train_b):
      for key in ("train/loss", "train/accuracy", "train/margin", "train/grad_norm",
                  "train/learning_rate"):
        assert rb[key] == pytest.approx(ra[key], rel=1e-3, abs=1e-5), (i, ra["step"], key)
    eval_a = [r for r in rows_a if "eval/loss" in r]
    eval_b = [r for r in rows_b if "eval/loss" in r]
    assert [r["step"] for r in eval_b] == [r["step"] for r in eval_a] == [2, 4]
    for ra, rb in zip(eval_a, eval_b):
      for key in ("eval/loss", "eval/accuracy", "eval/margin", "eval/weight"):
        assert rb[key] == pytest.approx(ra[key], rel=1e-3, abs=1e-5), (i, ra["step"], key)
    # The warm-up is the member's own: 0, half its peak, then its peak.
    assert [r["train/learning_rate"] for r in train_b] == pytest.approx(
        [0.0, member.learning_rate / 2, member.learning_rate, member.learning_rate])


@pytest.mark.slow
def test_member_dirs_have_the_sequential_layout(assets, runs):
  seq, vmap = runs
  for i in MEMBERS:
    a, b = seq / f"member_{i}", vmap / f"member_{i}"
    assert json.loads((b / "hparams.json").read_text()) == json.loads(
        (a / "hparams.json").read_text())
    assert json.loads((b / "hparams.json").read_text())["sft_path"].endswith(
        os.path.join("checkpoints", str(draw_member(assets[1]["sweep"], i).sft_step)))
    # Orbax also saves the first step of a fresh run (its InitialSavePolicy), in both paths.
    steps = sorted(p.name for p in (b / "checkpoints").iterdir())
    assert steps == sorted(p.name for p in (a / "checkpoints").iterdir()) == ["1", "2", "4"]
    for item in ("params", "opt_state"):
      # Same trees, shapes and dtypes: either path can resume the other's member.
      ta = ckpt.flatten_params(ckpt.load_params(str(a / "checkpoints" / "4" / item)))
      tb = ckpt.flatten_params(ckpt.load_params(str(b / "checkpoints" / "4" / item)))
      assert {k: (np.shape(v), np.asarray(v).dtype) for k, v in tb.items()} == {
          k: (np.shape(v), np.asarray(v).dtype) for k, v in ta.items()}
    done_a, done_b = (json.loads((d / "DONE").read_text()) for d in (a, b))
    assert sorted(done_b) == sorted(done_a) and done_b["step"] == done_a["step"] == 4
    assert done_b["num_params"] == done_a["num_params"]
    assert (b / "config.gin").exists() and list((b / "tb").iterdir())
    assert {k for r in read_metrics(str(b)) for k in r} >= {
        k for r in read_metrics(str(a)) for k in r if not k.startswith("perf/")}


class _TerminatingDataset(ArrayDataset):
  """Sends this process SIGTERM while the batch of `at_step` is read (a preemption)."""

  at_step = 1

  def batch(self, step, global_batch_size, **kw):
    if step == self.at_step:
      os.kill(os.getpid(), signal.SIGTERM)
    return super().batch(step, global_batch_size, **kw)


@pytest.mark.slow
def test_resume_after_preemption_equals_the_straight_run(assets, runs, tmp_path):
  root, args = assets
  _, straight = runs
  out = tmp_path / "members"
  data = args["dataset"]
  terminating = _TerminatingDataset(data.features, seed=data.seed)
  with pytest.raises(Preempted, match="SIGTERM at step 2"):
    train_reward_members(members_dir=str(out), member_indices=MEMBERS,
                         partitioner=_partitioner(), **dict(args, dataset=terminating))
  for i in MEMBERS:
    assert sorted(p.name for p in (out / f"member_{i}" / "checkpoints").iterdir()) == ["1", "2"]
    assert not (out / f"member_{i}" / "DONE").exists()
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  train_reward_members(members_dir=str(out), member_indices=MEMBERS,
                       partitioner=_partitioner(), **args)

  def check():
    for i in MEMBERS:
      resumed, ref = _params(out / f"member_{i}"), _params(straight / f"member_{i}")
      for k in ref:
        np.testing.assert_allclose(resumed[k], ref[k], rtol=1e-6, atol=1e-7, err_msg=k)
      assert [r["step"] for r in read_metrics(str(out / f"member_{i}"))
              if "train/loss" in r] == [1, 2, 3, 4]

  check()
  # Killed between two members' saves: member 1 lacks step 4, member 0 has it. The program
  # resumes both from step 2 (the latest they share) and leaves member 0's step 4 alone.
  import shutil
  shutil.rmtree(out / "member_1" / "checkpoints" / "4")
  os.remove(out / "member_1" / "DONE")
  kept = (out / "member_0" / "checkpoints" / "4" / "params").stat().st_mtime_ns
  train_reward_members(members_dir=str(out), member_indices=MEMBERS,
                       partitioner=_partitioner(), **args)
  assert (out / "member_0" / "checkpoints" / "4" / "params").stat().st_mtime_ns == kept
  check()


@dataclasses.dataclass(frozen=True)
class PoisonedObjective(PreferenceObjective):
  """Bradley-Terry loss that becomes NaN on any batch holding the POISON token."""

  def loss(self, params, batch, rng, dropout_rate=None):
    loss, metrics = super().loss(params, batch, rng, dropout_rate)
    nan_if_bad = jnp.where(jnp.any(batch["chosen_tokens"] == POISON), jnp.nan, 1.0)
    return loss * nan_if_bad, dict(metrics, loss=metrics["loss"] * nan_if_bad)


def _trainer(tmp_path, *, objective=None, partitioner=None, learning_rates=(1e-3, 1e-3),
             dropout_rates=(0.0, 0.0), **config):
  fields = dict(train_steps=4, batch_size=4, log_every=1, save_every=1,
                async_checkpoints=False, peak_flops_per_device=1e12)
  fields.update(config)
  return VmappedMembersTrainer(
      objective=objective or PreferenceObjective(CFG),
      optimizer=OptimizerConfig(learning_rate=1.0),
      partitioner=partitioner or _partitioner(), config=TrainerConfig(**fields),
      member_dirs=[str(tmp_path / f"member_{i}") for i in range(len(learning_rates))],
      learning_rates=learning_rates, dropout_rates=dropout_rates, seq_len=SEQ)


@pytest.mark.slow
def test_nan_guard_names_the_member_and_saves_nothing_non_finite(tmp_path):
  trainer = _trainer(tmp_path, objective=PoisonedObjective(CFG))
  clean = ArrayDataset(_pairs(24), shuffle=False)
  poisoned = ArrayDataset(_pairs(24, poison_from=8), shuffle=False)  # step 3 is the first bad
  with pytest.raises(NonFiniteError, match=r"member_1 \(learning_rate=0.001, dropout_rate=0\) "
                     r"of 2 vmapped members: non-finite training at step 3 .*last good "
                     r"checkpoint is step 2"):
    trainer.train([clean, poisoned])
  for i in range(2):
    manager = ckpt.TrainCheckpointer(str(tmp_path / f"member_{i}"), save_every=1)
    assert list(manager.all_steps()) == [1, 2]
    manager.close()


@pytest.mark.slow
def test_each_member_steps_with_its_own_learning_rate_with_members_over_data(tmp_path):
  # Members spread over the data axis (one member per data shard), same fresh init (as
  # sequential jobs), same data, no dropout: only the peak LR differs, 10x. Adafactor's first
  # step is independent of the gradient's scale: its second moment is then g^2, so every weight
  # moves by exactly -lr * sign(g) -- checked against a gradient computed here.
  rules = (("members", "data"),) + tuple(r for r in DEFAULT_RULES if r[0] != "members")
  partitioner = Partitioner(mesh_shape={"data": 2, "fsdp": 2}, logical_axis_rules=rules,
                            devices=jax.devices()[:4])
  lrs = (1e-3, 1e-2)
  trainer = _trainer(tmp_path, partitioner=partitioner, learning_rates=lrs, train_steps=1)
  start = jax.device_get(trainer.member.init_state().params)
  data = ArrayDataset(_pairs(24))
  from warm_jax.core import flops as flops_lib
  flops_lib.COUNTER.reset()
  state = trainer.train([data, data])
  # the stage profile: one step of 2 members x 4 pairs x 2 sequences of SEQ tokens, forward +
  # backward without LM head (per-token count from the real params' non-embedding leaves)
  leaves = jax.tree_util.tree_flatten_with_path(start["decoder"])[0]
  decoder = sum(int(np.prod(np.shape(x))) for path, x in leaves
                if "embed" not in jax.tree_util.keystr(path))
  per_token = 3 * (2 * decoder + 4 * CFG.num_layers * SEQ * CFG.d_model)
  assert flops_lib.COUNTER.programs() == {"train step (train, 2 members)": {
      "flops": pytest.approx(2 * 4 * 2 * SEQ * per_token), "calls": 1}}
  kernel = state.params["decoder"]["layer_0"]["mlp"]["wi"]["kernel"]
  assert kernel.sharding.spec[0] == "data"
  assert kernel.addressable_shards[0].data.shape[0] == 1  # one member per data shard
  batch = {k: jnp.asarray(v) for k, v in data.batch(0, 4).items() if k != "corrupted"}
  grads = jax.grad(lambda p: PreferenceObjective(CFG).loss(p, batch, None)[0])(start)
  start, grads = ckpt.flatten_params(start), ckpt.flatten_params(grads)
  ends = [ckpt.flatten_params(p) for p in jax.device_get(trainer.unstack_params(state.params))]
  ulp = 1e-6  # steps are differences of float32 params of magnitude <= ~1
  for lr, end in zip(lrs, ends):
    steps = np.concatenate([(end[k] - start[k]).ravel() for k in start if k not in BT_INVARIANT])
    expected = np.concatenate([-lr * np.sign(grads[k]).ravel() for k in start
                               if k not in BT_INVARIANT])
    assert np.mean(np.abs(expected) > 0) > 0.5
    # Gradients within rounding of 0 may take either sign; they are a handful at most.
    assert np.mean(np.abs(steps - expected) > ulp) < 1e-3


def test_member_axis_falls_back_to_replication_when_indivisible():
  rules = (("members", "data"),) + tuple(r for r in DEFAULT_RULES if r[0] != "members")
  part = Partitioner(mesh_shape={"data": 2, "fsdp": 2}, logical_axis_rules=rules,
                     devices=jax.devices()[:4])
  view, axes = member_partitioner(part, 3)
  assert axes is None and view is part and any("3 members" in f for f in part.fallbacks)
  view, axes = member_partitioner(part, 4)
  assert axes == "data" and view.mesh is part.mesh
  assert dict(view.logical_axis_rules)["batch"] == ("fsdp",)  # data is the members' now
  assert view.batch_divisor == 2


@pytest.mark.slow
def test_bad_member_lists_are_clear_errors(assets, tmp_path):
  _, args = assets
  with pytest.raises(ValueError, match="repeat a member"):
    train_reward_members(members_dir=str(tmp_path), member_indices=[0, 0], **args)
  with pytest.raises(ValueError, match="member_indices is empty"):
    train_reward_members(members_dir=str(tmp_path), member_indices=[], **args)
  with pytest.raises(ValueError, match="MEMBERS_DIR is not set"):
    train_reward_members(member_indices=[0], **args)
  with pytest.raises(ValueError, match="NUM_MEMBERS"):
    member_range(num_members=0)
  assert member_range(num_members=3, start=6) == [6, 7, 8]


def test_gin_rm_members_binds_the_vmapped_stage():
  import gin
  from warm_jax import configurables
  from warm_jax.gin_utils import parse_gin
  configurables.register()
  try:
    parse_gin(["gin/models/tiny.gin", "gin/rm_members.gin"],
              ["NUM_MEMBERS = 3", "FIRST_MEMBER = 2", "MEMBERS_DIR = '/tmp/never'"])
    assert str(gin.query_parameter("run_stage.stage")) == "@train_reward_members"
    assert gin.get_configurable("member_range")() == [2, 3, 4]
    assert gin.query_parameter("%MEMBERS_DIR") == "/tmp/never"
    assert str(gin.query_parameter("train_reward_members.members_dir")) == "%MEMBERS_DIR"
  finally:
    gin.clear_config()


@pytest.mark.slow
def test_variants_equal_the_one_job_lmc_pairs_and_scratch_rms(assets, tmp_path):
  """MEMBER_VARIANTS (the experiment's LMC diversity pairs and Remark 1's from-scratch RMs in
  one program) against `train_reward_model` with the same overrides, one job each; the extra
  eval dataset (the corrupted training pairs) is logged as eval_<name>/* along training."""
  root, args = assets
  base = draw_member(args["sweep"], 0)
  variants = {"lr": {"learning_rate": 3e-2 if base.learning_rate != 3e-2 else 3e-3},
              "scratch_a": {"data_seed": 11, "from_scratch": True},
              "scratch_b": {"data_seed": 12, "from_scratch": True}}
  corrupt = _pairs(6, seed=5)
  corrupt["corrupted"] = np.ones(6, bool)
  extra = {"train_corrupt": ArrayDataset(corrupt, shuffle=False)}
  train_reward_members(members_dir=str(tmp_path / "vmap"), member_indices=(0,),
                       partitioner=_partitioner(), variants=variants,
                       extra_eval_datasets=extra, **args)
  for name, overrides in variants.items():
    overrides = dict(overrides)
    scratch = overrides.pop("from_scratch", False)
    train_reward_model(members_dir=str(tmp_path / "seq"), member_index=0,
                       output_dir=str(tmp_path / "seq" / name), overrides=overrides,
                       from_scratch=scratch, partitioner=_partitioner(), **args)
    a, b = _params(tmp_path / "seq" / name), _params(tmp_path / "vmap" / name)
    assert sorted(a) == sorted(b)
    for k in a:
      if k not in BT_INVARIANT:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=2e-3 * max(
            float(np.max(np.abs(a[k]))), 1e-3), err_msg=(name, k))
    hp = json.load(open(tmp_path / "vmap" / name / "hparams.json"))
    assert (hp["probe_dir"] is None) == scratch
    rows = [r for r in read_metrics(str(tmp_path / "vmap" / name))
            if "eval_train_corrupt/accuracy" in r]
    assert [r["step"] for r in rows] == [2, 4]
  # the from-scratch RMs share their random init: same params at step 0 means their
  # difference comes from the data order only; different from every SFT-started variant
  sa, sb = _params(tmp_path / "vmap" / "scratch_a"), _params(tmp_path / "vmap" / "scratch_b")
  assert any(not np.allclose(sa[k], sb[k]) for k in sa)
  with pytest.raises(ValueError, match="unknown fields"):
    train_reward_members(members_dir=str(tmp_path / "bad"), partitioner=_partitioner(),
                         variants={"x": {"lr": 1.0}}, **args)
