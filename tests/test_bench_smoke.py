"""The benchmarks' own side at a minute size, so that bench/*.py keep working.

Not timings: each benchmark function runs once on a one-layer model and its bookkeeping is
checked against an independent computation (token and FLOP counts from the params tree, the
Bradley-Terry loss of the first batch, the bytes on disk, a child's peak memory). The peers'
sides (TRL, mergekit) need the bench virtualenv (bench/setup_env.sh) and are not run here;
the GPT-2 name map they use is checked with numpy alone.
"""

import importlib.util
import os
import sys

import jax
import numpy as np
import pytest

from conftest import REPO_ROOT

if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

from bench import (averager, common, decoding, hf_convert, mfu, policy_slices,  # noqa: E402
                   rm_vs_trl, vmapped_members, warm_vs_ens)
from warm_jax.core import checkpoints as ckpt  # noqa: F401
from warm_jax.models import RewardModel  # noqa: E402
from warm_jax.rm.scoring import unboxed_init  # noqa: F401

VOCAB = 64
SMALL = dict(num_layers=1, d_model=32, num_heads=2, mlp_dim=64, max_len=32)
MIB = 2**20


def _config():
  return common.preset_config("tiny", vocab_size=VOCAB, **SMALL)


def _non_embedding_params(params) -> int:
  """Parameters the matmul FLOPs count, from the tree itself: all but the token and position
  tables and the scalar reward head."""
  flat = ckpt.flatten_params(params)
  return sum(int(np.prod(v.shape)) for k, v in flat.items()
             if not k.startswith(("decoder/token_embed", "decoder/position_embed",
                                  "reward_head")))


# -------------------------------------------------------------------------------------------------
# Shared helpers
# -------------------------------------------------------------------------------------------------
def test_presets_are_the_gin_model_files():
  import gin
  from warm_jax import configurables
  gin.clear_config()
  try:
    configurables.register()
    for name in ("tiny", "small", "base"):
      gin.clear_config()
      gin.parse_config_files_and_bindings([os.path.join(REPO_ROOT, "gin/models", f"{name}.gin")],
                                          ["VOCAB_SIZE = 1000"])
      fields = common.preset_fields(name)
      assert fields, name
      for field, value in fields.items():
        assert gin.query_parameter(f"TransformerConfig.{field}") == value, (name, field)
  finally:
    gin.clear_config()
  assert common.preset_config("base", vocab_size=32000).num_params() > 100e6  # "100M-class"


def test_run_measured_reports_the_childs_own_peak_memory():
  size = 200 * MIB
  result = common.run_measured([sys.executable, "-c", f"b = b'x' * {size}; print(len(b))"])
  assert result.stdout.strip() == str(size)
  # The pytest process holding jax is far larger than this child; the launcher keeps its peak
  # from being inherited, so the child's own ~200 MB (+ an interpreter) is what comes back.
  assert size <= result.peak_rss_bytes < size + 100 * MIB
  # ... and the child's own page faults: one per 4 KiB page of the bytes it wrote, at least.
  assert result.minor_faults >= size // 4096
  assert result.wall_s > 0 and result.returncode == 0
  with pytest.raises(RuntimeError, match="exited 3"):
    common.run_measured([sys.executable, "-c", "import sys; sys.exit(3)"])


def test_read_files_reads_every_byte_cold_and_warm(tmp_path):
  sizes = (3 * MIB + 17, 1234)
  for i, n in enumerate(sizes):
    (tmp_path / f"f{i}").write_bytes(os.urandom(n))
  files = common.files_under([str(tmp_path)])
  assert common.evict_page_cache(files, method="fadvise").startswith("fadvise")
  seconds, nbytes = common.read_files(files, block_bytes=MIB)
  assert nbytes == sum(sizes) == common.total_bytes(files)
  assert seconds > 0
  with pytest.raises(ValueError, match="method"):
    common.evict_page_cache(files, method="nope")


def test_markdown_table():
  text = common.markdown_table(["a", "b"], [[1, 0.123456], ["x", 12345.6]])
  assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.123 |", "| x | 12,346 |"]


# -------------------------------------------------------------------------------------------------
# 1. RM vs TRL (our side) and the GPT-2 name map
# -------------------------------------------------------------------------------------------------
def test_gpt2_name_map_carries_every_weight():
  config = _config()
  params = jax.tree_util.tree_map(
      lambda x: np.random.default_rng(0).standard_normal(x.shape).astype(np.float32),
      unboxed_init(RewardModel(config)))
  params["reward_head"]["bias"] = np.zeros(1, np.float32)
  state = hf_convert.rm_params_to_gpt2_state_dict(params, config=config)
  d, layers = config.d_model, config.num_layers
  ours = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
  # every weight but the (zero) head bias, plus GPT-2's key bias written as zeros
  assert sum(v.size for v in state.values()) == ours - 1 + layers * d
  attn = params["decoder"]["layer_0"]["attention"]
  fused = state["transformer.h.0.attn.c_attn.weight"]
  assert fused.shape == (d, 3 * d)
  np.testing.assert_array_equal(fused[:, d:2 * d], attn["key"]["kernel"].reshape(d, d))
  np.testing.assert_array_equal(state["transformer.h.0.attn.c_attn.bias"][d:2 * d], 0)
  np.testing.assert_array_equal(state["score.weight"], params["reward_head"]["kernel"].T)
  params["reward_head"]["bias"] = np.ones(1, np.float32)
  with pytest.raises(ValueError, match="reward_head/bias"):
    hf_convert.rm_params_to_gpt2_state_dict(params, config=config)
  with pytest.raises(ValueError, match="no GPT-2 equivalent"):
    hf_convert.check_gpt2_compatible(config.replace(norm="rmsnorm"))


@pytest.mark.slow
def test_our_rm_step_counts_tokens_and_computes_bradley_terry():
  config = _config()
  pairs = common.random_pairs(num_pairs=4, seq_len=8, vocab_size=VOCAB)
  init = rm_vs_trl.initial_params(config)
  result = rm_vs_trl.measure_ours(config=config, pairs=pairs, batch_size=2, warmup_steps=1,
                                  steps=2, init_params=init)
  # tokens/s x timed seconds = 2 steps x 2 pairs x 2 sequences x 8 tokens
  assert np.isclose(result.tokens_per_s * sum(result.step_s), 2 * 2 * 2 * 8)
  model = RewardModel(config)
  r_c = np.asarray(model.apply({"params": init}, pairs["chosen_tokens"][:2],
                               pairs["chosen_mask"][:2]), np.float64)
  r_r = np.asarray(model.apply({"params": init}, pairs["rejected_tokens"][:2],
                               pairs["rejected_mask"][:2]), np.float64)
  assert np.isclose(result.losses[0], np.mean(np.logaddexp(0.0, r_r - r_c)), rtol=1e-5)
  assert len(result.losses) == 3 and all(np.isfinite(result.losses))
  # two microbatches of one pair each: the same step (losses equal to float rounding)
  split = rm_vs_trl.measure_ours(config=config, pairs=pairs, batch_size=2, warmup_steps=1,
                                 steps=2, init_params=init, microbatches=2)
  np.testing.assert_allclose(split.losses, result.losses, rtol=1e-5)


# -------------------------------------------------------------------------------------------------
# 2. MFU
# -------------------------------------------------------------------------------------------------
def test_mfu_is_model_flops_over_the_same_run_matmul():
  config = _config()
  seq, batch, reference = 8, 2, 1e9
  r = mfu.measure_train_step(preset="tiny", kind="rm", batch_size=batch, seq_len=seq,
                             vocab_size=VOCAB, steps=1, matmul_flops_per_s=reference,
                             model_overrides=SMALL)
  # PaLM's count from the params tree: 6 x matmul params + 12 x layers x seq x width per token,
  # two sequences per pair, no LM head on a reward model.
  matmul_params = _non_embedding_params(unboxed_init(RewardModel(config)))
  attention = 12 * config.num_layers * seq * config.d_model
  flops = 2 * batch * seq * (6 * matmul_params + attention)
  assert np.isclose(r.model_flops_per_s * r.step_s, flops)
  assert np.isclose(r.mfu, r.model_flops_per_s / reference)
  assert np.isclose(r.tokens_per_s * r.step_s, 2 * batch * seq)
  assert r.num_params == matmul_params + (VOCAB + SMALL["max_len"] + 1) * config.d_model + 1
  # The own-shape ceiling: the step's matmuls alone, counted from its jaxpr, are the model's
  # FLOPs to within the analytic count's conventions (PaLM's 6 x params per token, which
  # ignores e.g. the reward head's dot and gradients a frozen or input weight does not need),
  # and each part of the step took time.
  assert abs(r.breakdown.dots_flops / flops - 1) < 0.05
  assert r.own_shape_flops_per_s > 0 and np.isclose(
      r.mfu_own_shapes, r.model_flops_per_s / r.own_shape_flops_per_s)
  b = r.breakdown
  assert min(b.forward_s, b.grads_s, b.optimizer_s, b.dots_s) > 0
  assert np.isclose(r.matmul_share, b.dots_s / r.step_s)
  torch_installed = importlib.util.find_spec("torch") is not None
  assert (b.torch_dots_s is not None) == torch_installed
  if torch_installed:  # the same dots timed in torch
    assert np.isclose(r.torch_own_shape_flops_per_s * b.torch_dots_s, b.dots_flops)
  assert "own-shape matmul GFLOP/s" in mfu.table([r]) and "optimizer ms" in mfu.breakdown_table([r])
  with pytest.raises(ValueError, match="kind"):
    mfu.measure_train_step(preset="tiny", kind="value", batch_size=batch, seq_len=seq,
                           vocab_size=VOCAB, steps=1, matmul_flops_per_s=reference,
                           model_overrides=SMALL)


def test_step_matmuls_lists_every_dot_of_a_gradient_step():
  """A two-layer MLP's loss gradient w.r.t. both weights: 2 forward dots, 3 backward (dW2,
  dh, dW1; no dx), FLOPs 2 x m x k x n each; a scan's body counts once per trip."""
  b, d, h, o = 5, 3, 7, 2
  x, w1, w2 = np.ones((b, d), np.float32), np.ones((d, h), np.float32), np.ones((h, o),
                                                                              np.float32)
  def loss(w1, w2):
    return jax.numpy.sum(jax.numpy.tanh(x @ w1) @ w2)
  dots = mfu.step_matmuls(jax.grad(loss, argnums=(0, 1)), w1, w2)
  assert len(dots) == 5
  assert sum(m.flops for m in dots) == 2 * (2 * b * d * h) + 3 * (2 * b * h * o)
  assert {(m.lhs_shape, m.rhs_shape) for m in dots} >= {((b, d), (d, h)), ((b, h), (h, o))}

  def scanned(w):
    return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=4)[0]
  assert len(mfu.step_matmuls(scanned, np.ones((d, d), np.float32))) == 4
  # Batched dims count once: [2, b, d] x [2, d, h] over the leading batch dim.
  batched = mfu.step_matmuls(lambda a, c: jax.numpy.einsum("nbd,ndh->nbh", a, c),
                             np.ones((2, b, d), np.float32), np.ones((2, d, h), np.float32))
  assert [m.flops for m in batched] == [2 * 2 * b * d * h]
  rate, seconds = mfu.own_shape_rate(dots, repeats=2)
  assert seconds > 0 and np.isclose(rate * seconds, sum(m.flops for m in dots))


def test_a_dot_as_an_einsum_and_in_torch():
  """Matmul.einsum against jax.lax.dot_general itself (plain, transposed-contraction as in a
  weight gradient, batched over a non-leading dim as in attention), and the torch timing of
  the same dots."""
  pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  cases = [((5, 3), (3, 7), (((1,), (0,)), ((), ()))),
           ((5, 3), (5, 7), (((0,), (0,)), ((), ()))),  # x^T g
           ((2, 6, 4, 3), (2, 5, 4, 3), (((3,), (3,)), ((0, 2), (0, 2)))),  # b t h d, b s h d
           ((4, 2, 6), (2, 6, 4, 3), (((1, 2), (0, 1)), ((), ())))]
  dots = []
  for lhs_shape, rhs_shape, numbers in cases:
    a, b = (rng.standard_normal(s).astype(np.float32) for s in (lhs_shape, rhs_shape))
    dot = mfu.Matmul(lhs_shape, rhs_shape, "float32", "float32", numbers, None)
    np.testing.assert_allclose(np.einsum(dot.einsum(), a, b),
                               np.asarray(jax.lax.dot_general(a, b, numbers)), rtol=1e-5, atol=1e-5)
    dots.append(dot)
  assert dots[2].einsum() == "adbc,aebc->abde"  # dot_general's order: batch, lhs, rhs free
  rate, seconds = mfu.torch_shape_rate(dots, repeats=2, threads=1)
  assert seconds > 0 and np.isclose(rate * seconds, sum(m.flops for m in dots))


# -------------------------------------------------------------------------------------------------
# 3-6. Members, averager, WARM vs ENS, decoding
# -------------------------------------------------------------------------------------------------
def test_vmapped_members_benchmark_runs_both_sides(monkeypatch):
  from warm_jax.core.trainer import Trainer
  from warm_jax.rm.vmapped_members import VmappedMembersTrainer
  calls = {"sequential": [], "vmapped": []}
  for cls, side in ((Trainer, "sequential"), (VmappedMembersTrainer, "vmapped")):
    def counted(self, state, batch, _step=cls.train_step, _side=side):
      calls[_side].append(jax.tree_util.tree_leaves(batch)[0].shape)
      return _step(self, state, batch)
    monkeypatch.setattr(cls, "train_step", counted)
  r = vmapped_members.measure(preset="tiny", num_members=2, batch_size=2, seq_len=8, steps=3,
                              vocab_size=VOCAB, model_overrides=SMALL)
  # one compile call, then M x steps member-level steps vs steps vmapped steps of M members
  assert len(calls["sequential"]) == 1 + 2 * 3 and len(calls["vmapped"]) == 1 + 3
  assert {s[0] for s in calls["sequential"]} == {2} and {s[:2] for s in calls["vmapped"]} == {(2, 2)}
  assert r.sequential_s > 0 and r.vmapped_s > 0
  assert np.isclose(r.vmapped_member_steps_per_s, 2 * 3 / r.vmapped_s)
  assert "**" in vmapped_members.table([r])


@pytest.mark.slow
def test_averager_benchmark_our_side(tmp_path):
  config = averager.member_config("tiny", vocab_size=VOCAB, **SMALL)
  orbax_dirs, hf_dirs, num_params = averager.make_members(
      workdir=str(tmp_path), config=config, num_members=2, with_hf=False)
  assert hf_dirs == []
  assert num_params == sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(
      ckpt.load_params(orbax_dirs[0])))
  before = {f: os.path.getmtime(f) for f in common.files_under(orbax_dirs)}
  r = averager.measure(orbax_dirs=orbax_dirs, hf_dirs=[], num_params=num_params,
                       workdir=str(tmp_path), config=config, cache_eviction="fadvise")
  on_disk = sum(os.path.getsize(os.path.join(root, f)) for d in orbax_dirs
                for root, _, files in os.walk(d) for f in files)
  assert r.orbax_bytes == on_disk
  assert r.mergekit is None and r.cache_eviction.startswith("fadvise")
  assert r.ours["peak_rss_bytes"] > 0 and r.ours_internal_wall_s > 0
  assert r.ours["minor_faults"] > 0
  assert {f: os.path.getmtime(f) for f in common.files_under(orbax_dirs)} == before
  assert not [p for p in os.listdir(tmp_path) if p.startswith("out_")]  # outputs cleaned up
  assert "n/a" in averager.table([r])


def test_warm_vs_ens_scores_every_candidate_once_per_forward(monkeypatch):
  from warm_jax.rm.scoring import RewardScorer
  scored = []  # (which params tree, rows) per scoring call
  original = RewardScorer.rewards
  def counted(self, params, tokens, *args, **kwargs):
    scored.append((id(params), len(tokens)))
    return original(self, params, tokens, *args, **kwargs)
  monkeypatch.setattr(RewardScorer, "rewards", counted)
  results = warm_vs_ens.measure(preset="tiny", members_list=(2,), num_prompts=2, n=4,
                                repeats=1, batch_size=8, prompt_len=4, response_len=4,
                                vocab_size=VOCAB, model_overrides=SMALL)
  (r,) = results
  assert (r.sequences, r.seq_len, r.num_members) == (8, 8, 2)
  # after the compile call: WARM's one tree scores the 8 candidates once, ENS's 2 trees once each
  timed = scored[1:]
  trees = {}
  for tree, rows in timed:
    trees[tree] = trees.get(tree, 0) + rows
  assert sorted(trees.values()) == [8, 8, 8] and len(timed) == 3
  assert 0.0 <= r.bon_agreement <= 1.0 and r.merge_s > 0


def test_decoding_benchmark_compares_cache_and_recompute():
  (row,) = decoding.measure(preset="tiny", batches=(2,), prompt_len=4, max_new_tokens=3,
                            repeats=1, vocab_size=VOCAB, model_overrides=SMALL)
  assert row["batch_size"] == 2 and row["max_new_tokens"] == 3
  # both sides decoded the same prompts with the same key: the cache changes no token
  assert row["token_agreement"] == 1.0
  assert "cache / recompute" in decoding.table([row])
  # The roofline's bytes: the params tree's own bytes (float32) + keys and values of every
  # layer, row and slot (prompt + new tokens), counted here from the cache decoding allocates.
  from warm_jax.models import LanguageModel
  from warm_jax.models.transformer import init_kv_cache
  from warm_jax.rm.scoring import unboxed_init
  config = common.preset_config("tiny", vocab_size=VOCAB, **SMALL)
  params = unboxed_init(LanguageModel(config), 0)
  cache = init_kv_cache(config, batch_size=2, length=7)
  kv_bytes = sum(x.nbytes for x in (*cache.keys, *cache.values))
  assert decoding.step_bytes(config, batch_size=2, cache_length=7) == kv_bytes + sum(
      np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(params))
  assert row["step_bytes"] == decoding.step_bytes(config, batch_size=2, cache_length=7)
  assert np.isclose(row["memory_bound_tokens_per_s"],
                    2 * row["read_bytes_per_s"] / row["step_bytes"])
  assert np.isclose(row["of_roofline"], row["cache_tokens_per_s"] / min(
      row["memory_bound_tokens_per_s"], row["flop_bound_tokens_per_s"]))
  assert "cache vs roofline" in decoding.table([row])


def test_policy_slices_benchmark_times_each_program_both_ways(tmp_path):
  # a run dir as the demo leaves it (sft/, data/clean/), minute size: our tiny preset's shape
  from test_bon import make_policy_data_dir, save_random_model
  from warm_jax.models import LanguageModel
  data = make_policy_data_dir(str(tmp_path / "data" / "clean"), num_prompts=16)
  vocab = json_vocab(data)
  save_random_model(LanguageModel(common.preset_config("tiny", vocab_size=vocab)),
                    str(tmp_path / "sft"), 0)
  rows = policy_slices.measure(run_dir=str(tmp_path), repeats=1, pool=16, batches=(16,),
                               loop_rows=8, score_batches=(16, 8), rl_batch=16, rl_slices=2,
                               max_new_tokens=4)
  assert [r["program"] for r in rows] == ["decoding, batch 16", "best-of-N RM scoring",
                                          "RL rollout scoring, batch 16"]
  for r in rows:
    assert r["whole_rate"] > 0 and r["sliced_rate"] > 0
    assert np.isclose(r["ratio"], r["sliced_rate"] / r["whole_rate"])
  text = policy_slices.table(rows)
  assert "2 loops of 8" in text and "2 slices of 8" in text
  with pytest.raises(SystemExit, match="run `bash launch/demo.sh` first"):
    policy_slices.measure(run_dir=str(tmp_path / "nothing"), repeats=1)


def json_vocab(data_dir):
  import json
  with open(os.path.join(data_dir, "meta.json")) as f:
    return json.load(f)["vocab_size"]
