"""KV-cache sampling: equal to recomputing everything, greedy at temperature 0, log probs equal
to a teacher-forced pass, EOS handling, determinism, and the filters."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from test_bon import random_params
from warm_jax.models import LanguageModel
from warm_jax.models.transformer import init_kv_cache
from warm_jax.core.partitioning import Partitioner
from warm_jax.policy.objective import token_log_probs
from warm_jax.policy.sampling import (Sampler, SamplingConfig, check_left_padded, filter_logits,
                                      first_argmax, gumbel_max_draw, join_prompt_and_response,
                                      trim_padding)

LLAMA = dict(norm="rmsnorm", positions="rotary", mlp_activation="swiglu", tie_embeddings=False,
             use_bias=False, num_kv_heads=2)
NEW = 8
# The sampling settings most tests share (temperature and both filters on).
SAMPLED = dict(temperature=0.7, top_k=10, top_p=0.9)


def _params(cfg, seed=0):
  return random_params(LanguageModel(cfg), seed)


def _prompts(cfg, n=16, length=10, seed=0):
  """Left-padded prompts with 0..5 pads per row."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, cfg.vocab_size, (n, length)).astype(np.int32)
  mask = np.ones_like(tokens)
  for i in range(n):
    mask[i, :i % 6] = 0
  return np.where(mask == 1, tokens, 0), mask


@functools.lru_cache(maxsize=None)  # one compiled sampler per config, shared by the tests
def _sampler(cfg, **config):
  return Sampler(model_config=cfg, partitioner=Partitioner(), batch_size=8,
                 config=SamplingConfig(max_new_tokens=NEW, **config))


def test_kv_cache_steps_equal_a_full_forward_pass():
  """Token by token at the model level: prefill + one token per step == one full pass."""
  cfg = tiny_config(**LLAMA)
  params, (tokens, mask) = _params(cfg), _prompts(cfg)
  model = LanguageModel(cfg)
  full_tokens = np.concatenate([tokens, np.arange(3, 3 + 16 * 4).reshape(16, 4) % 37 + 3], 1)
  full_mask = np.concatenate([mask, np.ones((16, 4), np.int32)], 1)
  full = jax.jit(model.apply)({"params": params}, full_tokens, full_mask)
  decode = jax.jit(functools.partial(model.apply, method=LanguageModel.decode))
  cache = init_kv_cache(cfg, batch_size=16, length=14)
  steps = [(0, 10)] + [(t, t + 1) for t in range(10, 14)]
  for lo, hi in steps:
    logits, cache = decode({"params": params}, full_tokens[:, lo:hi], full_mask[:, lo:hi],
                           cache)
    np.testing.assert_allclose(logits * full_mask[:, lo:hi, None],
                               full[:, lo:hi] * full_mask[:, lo:hi, None], atol=2e-5)


@pytest.mark.parametrize("variant", [{}, LLAMA], ids=["gpt2", "llama_gqa_rope"])
def test_kv_cache_sampling_equals_full_recomputation(variant):
  cfg = tiny_config(**variant)
  params, (tokens, mask) = _params(cfg), _prompts(cfg)
  cached = _sampler(cfg, **SAMPLED).sample(params, tokens, mask, seed=3)
  recomputed = _sampler(cfg, **SAMPLED, use_cache=False).sample(params, tokens, mask, seed=3)
  np.testing.assert_array_equal(cached.tokens, recomputed.tokens)
  np.testing.assert_array_equal(cached.mask, recomputed.mask)
  np.testing.assert_allclose(cached.log_probs, recomputed.log_probs, atol=2e-5)


def test_temperature_zero_is_greedy_argmax_and_log_probs_are_teacher_forced():
  cfg = tiny_config()
  params, (tokens, mask) = _params(cfg, seed=1), _prompts(cfg, seed=1)
  model = LanguageModel(cfg)
  greedy = _sampler(cfg, temperature=0.0, eos_id=None).sample(params, tokens, mask, seed=0)
  # Independent greedy loop: a full forward pass and a numpy argmax per step (a fixed-size
  # buffer whose unfilled slots are masked, so one compiled forward serves every step).
  forward = jax.jit(model.apply)
  seq = np.concatenate([tokens, np.zeros((16, NEW), np.int32)], 1)
  seq_mask = np.concatenate([mask, np.zeros((16, NEW), np.int32)], 1)
  for t in range(NEW):
    logits = np.asarray(forward({"params": params}, seq, seq_mask))[:, tokens.shape[1] + t - 1]
    seq[:, tokens.shape[1] + t] = logits.argmax(-1)
    seq_mask[:, tokens.shape[1] + t] = 1
  np.testing.assert_array_equal(greedy.tokens, seq[:, -NEW:])
  # Sampled log probs at T = 0.7 equal log softmax(logits / T) of a teacher-forced pass (before
  # the top-k / top-p truncation).
  sampled = _sampler(cfg, **SAMPLED).sample(params, tokens, mask, seed=5)
  joined, joined_mask = join_prompt_and_response(tokens, mask, sampled.tokens, sampled.mask)
  forced, _ = token_log_probs(forward({"params": params}, joined, joined_mask),
                              jnp.asarray(joined), temperature=0.7)
  np.testing.assert_allclose(sampled.log_probs, np.asarray(forced)[:, -NEW:] * sampled.mask,
                             atol=2e-5)


def test_eos_stops_each_row_and_pads_after_it():
  cfg = tiny_config()
  params, (tokens, mask) = _params(cfg, seed=2), _prompts(cfg, seed=2)
  free = _sampler(cfg, temperature=0.0, eos_id=None).sample(params, tokens, mask, seed=0)
  eos = int(np.bincount(free.tokens.ravel()).argmax())  # a token several rows emit
  stopped = _sampler(cfg, temperature=0.0, eos_id=eos).sample(params, tokens, mask, seed=0)
  for row in range(len(tokens)):
    hits = np.nonzero(free.tokens[row] == eos)[0]
    length = hits[0] + 1 if len(hits) else NEW
    assert stopped.lengths[row] == length and stopped.ended[row] == bool(len(hits))
    np.testing.assert_array_equal(stopped.tokens[row, :length], free.tokens[row, :length])
    assert np.all(stopped.tokens[row, length:] == 0) and np.all(stopped.mask[row, length:] == 0)
    assert np.all(stopped.log_probs[row, length:] == 0)
  assert stopped.ended.any() and not stopped.ended.all()


def test_sampling_is_deterministic_per_seed_whatever_the_batching():
  cfg = tiny_config()
  params, (tokens, mask) = _params(cfg), _prompts(cfg, n=12)
  sampler = _sampler(cfg, **SAMPLED)
  a = sampler.sample(params, tokens, mask, seed=7)
  b = sampler.sample(params, tokens, mask, seed=7)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, sampler.sample(params, tokens, mask, seed=8).tokens)
  # Row i's stream depends on (seed, row id) only: the same rows in another order agree.
  order = np.arange(12)[::-1]
  c = sampler.sample(params, tokens[order], mask[order], seed=7, row_ids=order)
  np.testing.assert_array_equal(c.tokens, a.tokens[order])


def test_the_draw_is_jax_categorical_and_the_argmax_numpys():
  """The sampler's token draw (max, then the first index hitting it) against the reductions it
  replaces: numpy's argmax (first maximum; NaN counts as the maximum) on rows with ties, -inf
  and NaN, and jax.random.categorical on the same keys, token for token."""
  rng = np.random.default_rng(0)
  x = rng.integers(-3, 4, (64, 37)).astype(np.float32)  # many ties
  x[5, :] = -np.inf
  x[6, 10:] = -np.inf
  x[7, [3, 20]] = np.nan
  x[8, 0] = np.nan
  np.testing.assert_array_equal(np.asarray(jax.jit(first_argmax)(jnp.asarray(x))),
                                np.argmax(x, axis=-1))
  for vocab, temperature in ((37, 1.0), (1024, 0.9)):
    logits = jnp.asarray(rng.normal(size=(256, vocab)) * 3 / temperature, jnp.float32)
    logits = filter_logits(logits, top_k=vocab // 3)  # -inf outside the top-k, as sampled
    keys = jax.random.split(jax.random.key(vocab), logits.shape[0])
    ours = np.asarray(jax.jit(gumbel_max_draw)(keys, logits))
    np.testing.assert_array_equal(ours, np.asarray(jax.vmap(jax.random.categorical)(keys, logits)))
    assert len(np.unique(ours)) > 10  # a real draw, not one token


def test_filters_and_left_padding_check():
  logits = jnp.asarray([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 0.1]])
  top2 = np.asarray(filter_logits(logits, top_k=2))
  np.testing.assert_array_equal(np.isfinite(top2), [[0, 1, 1, 0], [0, 0, 1, 1]])
  # probs of row 0: .09 .64 .24 .03 -> the nucleus for 0.7 is {1, 2}; row 1 is {2}.
  nucleus = np.asarray(filter_logits(logits, top_p=0.7))
  np.testing.assert_array_equal(np.isfinite(nucleus), [[0, 1, 1, 0], [0, 0, 1, 0]])
  tokens, mask = trim_padding(np.array([[0, 5, 6, 0], [0, 0, 7, 0]]),
                              np.array([[0, 1, 1, 0], [0, 0, 1, 0]]))
  np.testing.assert_array_equal(tokens, [[5, 6], [0, 7]])
  np.testing.assert_array_equal(mask, [[1, 1], [0, 1]])
  with pytest.raises(ValueError, match="LEFT-padded"):
    check_left_padded(np.array([[1, 1, 0]]))
  with pytest.raises(ValueError, match="temperature"):
    SamplingConfig(temperature=-1.0)


def test_decoding_counts_the_prompt_pass_and_the_steps_it_ran():
  """The stage profile's count of sampling: per call of 8 rows, a forward pass per prompt token
  and per executed loop step (the longest response of the call: EOS stops the loop early),
  every token attending over the cache's P + NEW slots; per-token FLOPs from the real params."""
  from warm_jax.core import flops as flops_lib
  cfg = tiny_config()
  params, (tokens, mask) = _params(cfg, seed=2), _prompts(cfg, seed=2)
  free = _sampler(cfg, temperature=0.0, eos_id=None).sample(params, tokens, mask, seed=0)
  eos = int(np.bincount(free.tokens.ravel()).argmax())
  early = int(np.argmin([list(row).index(eos) if eos in row else NEW for row in free.tokens]))
  # the first call: 8 copies of a row that emits EOS early, so the whole call stops early
  rows = np.concatenate([np.full(8, early), np.arange(8)])
  tokens, mask = tokens[rows], mask[rows]
  flops_lib.COUNTER.reset()
  stopped = _sampler(cfg, temperature=0.0, eos_id=eos).sample(params, tokens, mask, seed=0)
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  matmul = sum(int(np.prod(np.shape(x))) for path, x in leaves
               if "embed" not in jax.tree_util.keystr(path)) + cfg.vocab_size * cfg.d_model
  prompt_len = tokens.shape[1]
  per_token = 2 * matmul + 4 * cfg.num_layers * (prompt_len + NEW) * cfg.d_model
  steps = [int(stopped.lengths[lo:lo + 8].max()) for lo in (0, 8)]
  assert steps[0] < NEW  # EOS stopped the first call early
  expected = sum(8 * (prompt_len + s) * per_token for s in steps)
  assert flops_lib.COUNTER.programs() == {"sample": {"flops": pytest.approx(expected),
                                                     "calls": 2}}


def test_decoding_loops_of_fewer_rows_sample_the_same_tokens_and_count_their_steps():
  """SamplingConfig.loop_rows: a call of 16 rows run as 2 loops of 8 (the even and the odd rows,
  `core.row_slices`) samples what one loop does, row for row, and its FLOP count adds each
  loop's own steps (a loop stops when its rows have ended)."""
  from warm_jax.core import flops as flops_lib
  cfg = tiny_config()
  params, (tokens, mask) = _params(cfg, seed=2), _prompts(cfg, seed=2)
  sixteen = lambda **config: Sampler(model_config=cfg, partitioner=Partitioner(), batch_size=16,
                                     config=SamplingConfig(max_new_tokens=NEW, **config))
  free = _sampler(cfg, temperature=0.0, eos_id=None).sample(params, tokens, mask, seed=0)
  eos = int(np.bincount(free.tokens.ravel()).argmax())  # some rows end early, some never
  whole = sixteen(eos_id=eos, **SAMPLED).sample(params, tokens, mask, seed=3)
  flops_lib.COUNTER.reset()
  looped = sixteen(eos_id=eos, loop_rows=8, **SAMPLED).sample(params, tokens, mask, seed=3)
  for field in ("tokens", "mask", "ended"):
    np.testing.assert_array_equal(getattr(looped, field), getattr(whole, field))
  # the same log-probs up to float rounding (XLA vectorises 8 rows unlike 16)
  np.testing.assert_allclose(looped.log_probs, whole.log_probs, rtol=1e-6, atol=1e-6)
  assert len(set(whole.lengths.tolist())) > 2  # rows of different lengths
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  matmul = sum(int(np.prod(np.shape(x))) for path, x in leaves
               if "embed" not in jax.tree_util.keystr(path)) + cfg.vocab_size * cfg.d_model
  prompt_len = tokens.shape[1]
  per_token = 2 * matmul + 4 * cfg.num_layers * (prompt_len + NEW) * cfg.d_model
  steps = [int(looped.lengths[j::2].max()) for j in range(2)]
  expected = 16 * prompt_len * per_token + sum(8 * s * per_token for s in steps)
  assert flops_lib.COUNTER.programs() == {"sample": {"flops": pytest.approx(expected),
                                                     "calls": 1}}
  with pytest.raises(ValueError, match=r"loop_rows=4 does not split the sampling batch of 16 "
                                       r"rows into equal loops divisible by the 8 batch"):
    sixteen(loop_rows=4)
  with pytest.raises(ValueError, match="loop_rows=0: a positive integer"):
    SamplingConfig(loop_rows=0)
