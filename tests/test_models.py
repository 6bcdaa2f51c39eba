"""The decoder and its heads, checked against independent numpy computations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from warm_jax.models import LanguageModel, RewardModel, TransformerConfig, ValueModel
from warm_jax.models.transformer import apply_rope, attend_to_cache, dot_product_attention

VARIANTS = {
    "gpt2": {},
    "llama": dict(norm="rmsnorm", positions="rotary", mlp_activation="swiglu",
                  tie_embeddings=False, use_bias=False, num_kv_heads=2),
    "mqa_geglu_softcap": dict(num_kv_heads=1, mlp_activation="geglu", logit_softcap=30.0),
}


def _init(module, cfg, batch=2, length=8):
  tokens = jnp.ones((batch, length), jnp.int32)
  variables = module.init(jax.random.key(0), tokens, jnp.ones_like(tokens))
  return nn.unbox(variables)["params"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_param_count_matches_config(variant):
  cfg = tiny_config(**VARIANTS[variant])
  params = _init(LanguageModel(cfg), cfg)
  assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == cfg.num_params()


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_causal_future_tokens_do_not_change_past_logits(variant):
  cfg = tiny_config(**VARIANTS[variant])
  model = LanguageModel(cfg)
  params = _init(model, cfg)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, cfg.vocab_size, (1, 10))
  changed = tokens.copy()
  changed[0, 6:] = (changed[0, 6:] + 1) % cfg.vocab_size
  a = model.apply({"params": params}, jnp.asarray(tokens))
  b = model.apply({"params": params}, jnp.asarray(changed))
  np.testing.assert_allclose(a[0, :6], b[0, :6], atol=1e-5)
  assert not np.allclose(a[0, 6:], b[0, 6:])


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reward_read_at_last_real_token_whatever_the_padding(variant):
  cfg = tiny_config(**VARIANTS[variant])
  model = RewardModel(cfg)
  params = _init(model, cfg)
  real = np.array([5, 9, 3, 7, 11])
  pad = 0
  unpadded = real[None]
  right = np.concatenate([real, [pad] * 3])[None]
  left = np.concatenate([[pad] * 3, real])[None]
  r_none = model.apply({"params": params}, jnp.asarray(unpadded), jnp.ones((1, 5), jnp.int32))
  r_right = model.apply({"params": params}, jnp.asarray(right),
                        jnp.asarray([[1] * 5 + [0] * 3]))
  r_left = model.apply({"params": params}, jnp.asarray(left), jnp.asarray([[0] * 3 + [1] * 5]))
  np.testing.assert_allclose(r_right, r_none, atol=1e-5)
  np.testing.assert_allclose(r_left, r_none, atol=1e-5)
  # Independently: the head applied to the decoder's hidden state at the last token.
  hidden = model.apply({"params": params}, jnp.asarray(unpadded), jnp.ones((1, 5), jnp.int32),
                       method=lambda m, t, k: m.decoder(t, k))
  head = params["reward_head"]
  expected = np.asarray(hidden[0, -1]) @ np.asarray(head["kernel"])[:, 0] + float(head["bias"][0])
  np.testing.assert_allclose(r_none[0], expected, rtol=1e-5, atol=1e-5)
  # And not at the first pad: a different token at the pad slot changes nothing.
  right2 = right.copy()
  right2[0, 6] = 17
  r_right2 = model.apply({"params": params}, jnp.asarray(right2),
                         jnp.asarray([[1] * 5 + [0] * 3]))
  np.testing.assert_allclose(r_right2, r_right, atol=1e-6)


def test_value_head_is_per_token_and_matches_lm_backbone():
  cfg = tiny_config()
  lm_params = _init(LanguageModel(cfg), cfg)
  value = ValueModel(cfg)
  v_params = _init(value, cfg)
  v_params = dict(v_params, decoder=lm_params["decoder"])
  tokens = jnp.asarray(np.arange(3, 11)[None])
  values = value.apply({"params": v_params}, tokens, jnp.ones_like(tokens))
  assert values.shape == (1, 8)
  hidden = LanguageModel(cfg).apply({"params": lm_params}, tokens,
                                    method=lambda m, t: m.decoder(t))
  expected = np.asarray(hidden[0]) @ np.asarray(v_params["value_head"]["kernel"])[:, 0]
  np.testing.assert_allclose(values[0], expected + float(v_params["value_head"]["bias"][0]),
                             rtol=1e-5, atol=1e-5)


def _numpy_attention(q, k, v, allowed):
  b, t, h, d = q.shape
  group = h // k.shape[2]
  out = np.zeros_like(q)
  for bi in range(b):
    for hi in range(h):
      kv = hi // group
      s = q[bi, :, hi] @ k[bi, :, kv].T / np.sqrt(d)
      s = np.where(allowed[bi, 0], s, -1e9)
      p = np.exp(s - s.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      out[bi, :, hi] = p @ v[bi, :, kv]
  return out


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_grouped_query_attention_matches_numpy(kv_heads):
  rng = np.random.default_rng(1)
  q = rng.normal(size=(2, 6, 4, 8)).astype(np.float32)
  k = rng.normal(size=(2, 6, kv_heads, 8)).astype(np.float32)
  v = rng.normal(size=(2, 6, kv_heads, 8)).astype(np.float32)
  allowed = np.tril(np.ones((6, 6), bool))[None, None].repeat(2, 0)
  allowed[1, :, :, :2] = False  # second row: two left pads
  out = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                              jnp.asarray(allowed))
  expected = _numpy_attention(q, k, v, allowed)
  np.testing.assert_allclose(out[0], expected[0], atol=1e-5)
  np.testing.assert_allclose(out[1, 2:], expected[1, 2:], atol=1e-5)  # pad queries unread
  # Decoding reads the same keys and values from the head-major cache [batch, kv, slots, hd].
  cached = attend_to_cache(jnp.asarray(q), jnp.asarray(k.transpose(0, 2, 1, 3)),
                           jnp.asarray(v.transpose(0, 2, 1, 3)), jnp.asarray(allowed))
  np.testing.assert_allclose(cached[0], expected[0], atol=1e-5)
  np.testing.assert_allclose(cached[1, 2:], expected[1, 2:], atol=1e-5)


def test_rope_matches_formula_and_is_relative():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1, 5, 1, 4)).astype(np.float32)
  pos = np.arange(5)[None]
  out = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(pos), 10_000.0))
  freq = 10_000.0 ** (-np.arange(2) / 2)
  for t in range(5):
    ang = t * freq
    x1, x2 = x[0, t, 0, :2], x[0, t, 0, 2:]
    expected = np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang),
                               x2 * np.cos(ang) + x1 * np.sin(ang)])
    np.testing.assert_allclose(out[0, t, 0], expected, atol=1e-5)
  # q.k depends only on the position difference.
  q = np.broadcast_to(x[:, :1], x.shape)
  rq = np.asarray(apply_rope(jnp.asarray(q), jnp.asarray(pos), 10_000.0))[0, :, 0]
  rk = np.asarray(apply_rope(jnp.asarray(q), jnp.asarray(pos + 3), 10_000.0))[0, :, 0]
  dots = [rq[t] @ rk[t] for t in range(5)]
  np.testing.assert_allclose(dots, dots[0], rtol=1e-5)


@pytest.mark.slow
def test_bf16_compute_keeps_fp32_params_and_close_logits():
  cfg = tiny_config()
  cfg16 = cfg.replace(dtype="bfloat16")
  params = _init(LanguageModel(cfg), cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(
      _init(LanguageModel(cfg16), cfg16)))
  tokens = jnp.asarray(np.arange(3, 13)[None])
  a = LanguageModel(cfg).apply({"params": params}, tokens)
  b = LanguageModel(cfg16).apply({"params": params}, tokens)
  assert b.dtype == jnp.float32
  np.testing.assert_allclose(a, b, atol=5e-2)


def test_dropout_rate_is_used_only_when_not_deterministic():
  cfg = tiny_config(dropout_rate=0.1)
  model = LanguageModel(cfg)
  params = _init(model, cfg)
  tokens = jnp.asarray(np.arange(3, 13)[None])
  det = model.apply({"params": params}, tokens)
  det2 = model.apply({"params": params}, tokens, deterministic=True)
  drop = model.apply({"params": params}, tokens, deterministic=False,
                     rngs={"dropout": jax.random.key(1)})
  np.testing.assert_array_equal(det, det2)
  assert not np.allclose(det, drop)


def test_bad_configs_name_the_field():
  with pytest.raises(ValueError, match="num_kv_heads"):
    tiny_config(num_kv_heads=3)
  with pytest.raises(ValueError, match="norm"):
    tiny_config(norm="batchnorm")
  with pytest.raises(ValueError, match="dropout_rate"):
    tiny_config(dropout_rate=1.5)
  cfg = tiny_config()
  with pytest.raises(ValueError, match="max_len"):
    _init(LanguageModel(cfg), cfg, length=cfg.max_len + 1)


def test_logical_axis_names_on_params():
  cfg = TransformerConfig(**{**dict(vocab_size=40, d_model=32, num_layers=1, num_heads=4,
                                    mlp_dim=64, max_len=16), **VARIANTS["llama"]})
  boxed = jax.eval_shape(lambda: LanguageModel(cfg).init(
      jax.random.key(0), jnp.ones((1, 4), jnp.int32)))
  specs = nn.get_partition_spec(boxed)["params"]
  layer = specs["decoder"]["layer_0"]
  assert tuple(layer["mlp"]["wi"]["kernel"]) == ("embed", "mlp")
  assert tuple(layer["attention"]["query"]["kernel"]) == ("embed", "heads", "head_dim")
  assert tuple(layer["attention"]["key"]["kernel"]) == ("embed", "kv_heads", "head_dim")
  assert tuple(specs["decoder"]["token_embed"]["embedding"]) == ("vocab", "embed")
  assert tuple(specs["lm_head"]["kernel"]) == ("embed", "vocab")


@pytest.mark.slow
def test_traced_dropout_rate_matches_the_configured_one():
  # The vmapped RM members pass their own dropout rate as an array.
  cfg = tiny_config(dropout_rate=0.1)
  model = LanguageModel(cfg)
  params = _init(model, cfg)
  tokens = jnp.asarray(np.arange(3, 13)[None])
  rngs = {"dropout": jax.random.key(7)}
  configured = model.apply({"params": params}, tokens, deterministic=False, rngs=rngs)
  traced = jax.jit(lambda r: model.apply({"params": params}, tokens, deterministic=False,
                                         dropout_rate=r, rngs=rngs))(jnp.float32(0.1))
  np.testing.assert_allclose(traced, configured, rtol=1e-5, atol=1e-6)
  per_member = jax.vmap(lambda r: model.apply({"params": params}, tokens, deterministic=False,
                                              dropout_rate=r, rngs=rngs))(
                                                  jnp.asarray([0.0, 0.1]))
  np.testing.assert_allclose(per_member[1], configured, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(per_member[0], model.apply({"params": params}, tokens),
                             rtol=1e-5, atol=1e-6)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logprob_readout_matches_the_lm_of_the_same_backbone(variant):
  """reward = kernel . h_last + logprob_kernel . [softmin, mean, sum] of the response tokens'
  log-probs, the log-probs computed independently (numpy) from LanguageModel's logits on the
  same decoder (and untied lm_head), the response given by response_mask only."""
  cfg = tiny_config(**VARIANTS[variant], reward_readout="hidden_logprob",
                    logprob_softmin_temperature=0.5)
  lm = LanguageModel(cfg)
  lm_params = _init(lm, cfg)
  rm = RewardModel(cfg)
  tokens = jnp.ones((2, 8), jnp.int32)
  rm_params = nn.unbox(rm.init(jax.random.key(1), tokens, jnp.ones_like(tokens),
                               jnp.ones_like(tokens)))["params"]
  assert set(rm_params["reward_head"]) == {"kernel", "bias", "logprob_kernel"}
  params = dict(lm_params, reward_head={
      "kernel": rm_params["reward_head"]["kernel"], "bias": jnp.asarray([0.3]),
      "logprob_kernel": jnp.asarray([[0.7], [-0.4], [0.2]])})
  assert set(params) == set(rm_params)  # lm_head (untied) is part of the RM, as in the LM
  rng = np.random.default_rng(0)
  tok = rng.integers(3, cfg.vocab_size, (2, 9))
  mask = np.array([[1] * 9, [1] * 7 + [0] * 2])
  response = np.array([[0] * 5 + [1] * 4, [0] * 4 + [1] * 3 + [0] * 2])
  r = np.asarray(rm.apply({"params": params}, jnp.asarray(tok), jnp.asarray(mask),
                          jnp.asarray(response)))
  logits = np.asarray(lm.apply({"params": lm_params}, jnp.asarray(tok), jnp.asarray(mask)),
                      np.float64)
  hidden = np.asarray(rm.apply({"params": params}, jnp.asarray(tok), jnp.asarray(mask),
                               method=lambda m, t, k: m.decoder(t, k)))
  for b in range(2):
    lp = np.array([_log_softmax(logits[b, t - 1])[tok[b, t]] for t in range(1, 9)
                   if response[b, t]])
    tau = 0.5
    softmin = -tau * np.log(np.sum(np.exp(-lp / tau)))
    feats = np.array([softmin, lp.mean(), lp.sum()])
    last = int(mask[b].sum()) - 1
    expected = (hidden[b, last] @ np.asarray(params["reward_head"]["kernel"])[:, 0]
                + feats @ np.array([0.7, -0.4, 0.2]) + 0.3)
    np.testing.assert_allclose(r[b], expected, rtol=1e-4, atol=1e-4)
  # without a response mask the readout refuses, naming the fix
  with pytest.raises(ValueError, match="response_mask"):
    rm.apply({"params": params}, jnp.asarray(tok), jnp.asarray(mask))


@pytest.mark.slow
def test_logprob_readout_ignores_prompt_tokens_and_padding():
  cfg = tiny_config(reward_readout="hidden_logprob")
  rm = RewardModel(cfg)
  tok = jnp.ones((1, 6), jnp.int32)
  params = nn.unbox(rm.init(jax.random.key(0), tok, jnp.ones_like(tok), jnp.ones_like(tok)))[
      "params"]
  params["reward_head"]["logprob_kernel"] = jnp.asarray([[1.0], [1.0], [1.0]])
  real = np.array([5, 9, 3, 7, 11, 4])
  resp = np.array([0, 0, 0, 1, 1, 1])
  base = rm.apply({"params": params}, jnp.asarray(real[None]), jnp.ones((1, 6), jnp.int32),
                  jnp.asarray(resp[None]))
  left = rm.apply({"params": params}, jnp.asarray(np.r_[[0, 0], real][None]),
                  jnp.asarray([[0, 0] + [1] * 6]), jnp.asarray(np.r_[[1, 1], resp][None]))
  np.testing.assert_allclose(left, base, atol=1e-5)  # a response mask on pads is not read
  # the response tokens' log-probs matter: changing a response-mask bit changes the reward
  other = rm.apply({"params": params}, jnp.asarray(real[None]), jnp.ones((1, 6), jnp.int32),
                   jnp.asarray(np.array([0, 0, 1, 1, 1, 1])[None]))
  assert abs(float(other[0]) - float(base[0])) > 1e-4


def _lp_params(cfg, seed=0):
  rm = RewardModel(cfg)
  tok = jnp.ones((1, 6), jnp.int32)
  params = nn.unbox(rm.init(jax.random.key(seed), tok, jnp.ones_like(tok), jnp.ones_like(tok)))[
      "params"]
  params["reward_head"]["logprob_kernel"] = jnp.asarray([[0.9], [-0.6], [0.3]])
  return params


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["gpt2", "llama"])
def test_logprob_window_gives_the_full_readouts_features(variant):
  """With logprob_window W the LM head runs at W positions per row only; as long as every
  response fits (at most W - 1 tokens), features and rewards equal the full computation:
  right and left padding, rows shorter than the window, responses ending before padding."""
  full_cfg = tiny_config(**VARIANTS[variant], reward_readout="hidden_logprob", max_len=32)
  win_cfg = full_cfg.replace(logprob_window=6)
  params = _lp_params(full_cfg)
  rng = np.random.default_rng(3)
  n, length = 6, 20
  tok = rng.integers(3, full_cfg.vocab_size, (n, length)).astype(np.int32)
  starts = np.array([0, 0, 0, 4, 0, 9])       # left padding of rows 3 and 5
  ends = np.array([20, 14, 5, 20, 3, 16])     # right padding; rows 2 and 4 shorter than W
  resp_len = np.array([5, 3, 2, 5, 1, 4])     # at most W - 1 = 5 response tokens
  pos = np.arange(length)[None]
  mask = ((pos >= starts[:, None]) & (pos < ends[:, None])).astype(np.int32)
  response = ((pos >= (ends - resp_len)[:, None]) & (pos < ends[:, None])).astype(np.int32)
  response[2, :3] = 1  # ... and stray bits on position 0 / prompt-side pads are not read
  response[2, 0], response[3, 1] = 1, 1
  args = (jnp.asarray(tok), jnp.asarray(mask), jnp.asarray(response))
  full = np.asarray(RewardModel(full_cfg).apply({"params": params}, *args,
                                                method=RewardModel.features))
  win = np.asarray(RewardModel(win_cfg).apply({"params": params}, *args,
                                              method=RewardModel.features))
  np.testing.assert_allclose(win, full, rtol=1e-5, atol=1e-5)
  assert np.abs(full[:, -3:]).min() > 0  # every row has log-prob features to compare


@pytest.mark.slow
def test_a_response_longer_than_the_logprob_window_is_refused_or_nan():
  from warm_jax.models.heads import check_response_window
  from warm_jax.core.objectives import PreferenceObjective
  cfg = tiny_config(reward_readout="hidden_logprob", logprob_window=4)
  params = _lp_params(cfg)
  tok = np.full((2, 10), 5, np.int32)
  mask = np.ones((2, 10), np.int32)
  response = np.zeros((2, 10), np.int32)
  response[0, 7:] = 1  # 3 tokens: fits a window of 4
  response[1, 6:] = 1  # 4 tokens: does not
  feats = np.asarray(RewardModel(cfg).apply({"params": params}, jnp.asarray(tok),
                                            jnp.asarray(mask), jnp.asarray(response),
                                            method=RewardModel.features))
  assert np.isfinite(feats[0]).all()
  assert np.isnan(feats[1, -3:]).all()  # inside a program: NaN, never a different reward
  check_response_window(mask[:1], response[:1], 4, name="x")
  with pytest.raises(ValueError, match=r"the batch: a response of 4 tokens .* window of 4 "
                                       r"positions.*logprob_window >= 5"):
    check_response_window(mask, response, 4, name="the batch")
  batch = {"chosen_tokens": tok, "chosen_mask": mask, "chosen_response_mask": response,
           "rejected_tokens": tok, "rejected_mask": mask, "rejected_response_mask": response}
  with pytest.raises(ValueError, match="training batch's chosen sequences"):
    PreferenceObjective(cfg).check_host_batch(batch)
  with pytest.raises(ValueError, match="logprob_window"):
    tiny_config(logprob_window=1)


def test_reward_readout_is_validated():
  with pytest.raises(ValueError, match="reward_readout"):
    tiny_config(reward_readout="mean_pool")
