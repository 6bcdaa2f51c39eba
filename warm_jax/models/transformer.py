"""The decoder-only Transformer backbone shared by the LM, the reward model and the value model.

Where it sits: every stage of the pipeline (pre-train, SFT, RM, RL) runs this `Decoder`; the
heads in `heads.py` turn its hidden states into next-token logits, a scalar reward or per-token
values. Parameters are created with logical axis names (`embed`, `mlp`, `heads`, `kv_heads`,
`head_dim`, `vocab`, `length`), which `warm_jax.core.partitioning` maps to mesh axes; the code never
names a mesh axis.

Padding: `mask[b, t] = 1` for real tokens. Positions count real tokens only (cumsum of the mask),
so a left-padded and a right-padded copy of one sequence give identical hidden states on their
real tokens; attention never looks at padded keys.

Decoding (best-of-N, RL rollouts; `warm_jax.policy.sampling`): `Decoder.extend` runs a chunk of new
tokens against an explicit `KVCache` pytree (keys/values of every layer for a fixed number of
slots, which slots hold real tokens, the next slot) and returns the updated cache. It is the
same arithmetic as `__call__` on the whole sequence -- positions still count real tokens and
attention still skips padded and future slots -- so cached decoding of a left-padded prompt
equals recomputing everything. The training path (`__call__`) never touches a cache.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from warm_jax.models.config import TransformerConfig

Array = jax.Array

_init_dense = nn.initializers.normal(stddev=0.02)
_init_embed = nn.initializers.normal(stddev=0.02)
# Finite rather than -inf so that a fully masked row (a pad query under left padding) gives a
# uniform softmax instead of NaN; those rows are never read.
_MASK_VALUE = -1e9


def _param_axes(init, names):
  return nn.with_logical_partitioning(init, names)


def dropout(module: nn.Module, x: Array, rate: float | Array) -> Array:
  """Inverted dropout whose rate may be a traced value (one rate per vmapped RM member).

  A Python 0.0 is a no-op and draws no random numbers; otherwise uses the 'dropout' rng.
  """
  if isinstance(rate, (int, float)) and rate == 0.0:
    return x
  keep = 1.0 - jnp.asarray(rate, jnp.float32)
  mask = jax.random.bernoulli(module.make_rng("dropout"), keep, x.shape)
  return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros_like(x))


def positions_from_mask(mask: Array) -> Array:
  """[batch, length] int positions counting real tokens from 0 (pads get the previous value)."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


class KVCache(flax.struct.PyTreeNode):
  """Decoding state of a `Decoder`: keys and values of every layer for `length` slots.

  Attributes:
    keys, values: one [batch, kv_heads, length, head_dim] array per layer (compute dtype):
      head-major, so that attention over the cache contracts it with its batch dims leading
      and no step copies (transposes) the whole cache (`attend_to_cache`).
    mask: [batch, length] int32, 1 where a real token has been written (pads and empty slots 0).
    index: [] int32, the next slot to write; slots >= index are empty.
  """

  keys: tuple[Array, ...]
  values: tuple[Array, ...]
  mask: Array
  index: Array

  @property
  def length(self) -> int:
    return self.mask.shape[-1]


def init_kv_cache(config: TransformerConfig, *, batch_size: int, length: int) -> KVCache:
  """An empty cache of `length` slots (prompt + new tokens) for `batch_size` rows."""
  if length > config.max_len:
    raise ValueError(f"a decoding cache of {length} slots (prompt + new tokens) exceeds the "
                     f"model's max_len {config.max_len}: shorten the prompts or "
                     "max_new_tokens, or use a model with a larger max_len")
  shape = (batch_size, config.kv_heads, length, config.per_head_dim)
  zeros = tuple(jnp.zeros(shape, config.compute_dtype) for _ in range(config.num_layers))
  return KVCache(keys=zeros, values=tuple(jnp.zeros_like(z) for z in zeros),
                 mask=jnp.zeros((batch_size, length), jnp.int32),
                 index=jnp.zeros((), jnp.int32))


def rope_frequencies(head_dim: int, theta: float,
                     scaling: tuple[float, float, float, int] | None = None) -> Array:
  """[head_dim // 2] float32 angular frequencies of RoPE, optionally with Llama 3 scaling.

  Llama 3 scaling (`TransformerConfig.rope_scaling`): wavelengths longer than
  original_max_len / low_freq_factor are divided by `factor`, those shorter than
  original_max_len / high_freq_factor are kept, and the band between is interpolated.
  """
  half = head_dim // 2
  freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if scaling is None:
    return freq
  factor, low_freq_factor, high_freq_factor, original_max_len = scaling
  wavelength = 2 * jnp.pi / freq
  smooth = (original_max_len / wavelength - low_freq_factor) / (
      high_freq_factor - low_freq_factor)
  interpolated = (1 - smooth) * freq / factor + smooth * freq
  return jnp.where(wavelength > original_max_len / low_freq_factor, freq / factor,
                   jnp.where(wavelength < original_max_len / high_freq_factor, freq,
                             interpolated))


def apply_rope(x: Array, positions: Array, theta: float,
               scaling: tuple[float, float, float, int] | None = None) -> Array:
  """Rotary embedding of x [batch, length, heads, head_dim] at positions [batch, length].

  Uses the "rotate half" layout of GPT-NeoX / Llama (first half paired with second half),
  which is also the layout of Hugging Face checkpoints' q/k projections.
  """
  half = x.shape[-1] // 2
  freq = rope_frequencies(x.shape[-1], theta, scaling)
  angle = positions[..., None].astype(jnp.float32) * freq  # [batch, length, half]
  sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Norm(nn.Module):
  """LayerNorm or RMSNorm over the last axis, with a logically named scale."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    xf = x.astype(jnp.float32)
    if cfg.norm == "layernorm":
      xf = xf - jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf), axis=-1, keepdims=True)
    y = xf * jax.lax.rsqrt(var + cfg.norm_eps)
    if cfg.norm_scale_offset:
      init = nn.initializers.constant(1.0 - cfg.norm_scale_offset)
      scale = self.param("scale", _param_axes(init, ("embed",)), (x.shape[-1],))
      y = y * (cfg.norm_scale_offset + scale)
    else:  # the original arithmetic, bit for bit
      scale = self.param("scale", _param_axes(nn.initializers.ones, ("embed",)), (x.shape[-1],))
      y = y * scale
    if cfg.norm == "layernorm":
      bias = self.param("bias", _param_axes(nn.initializers.zeros, ("embed",)), (x.shape[-1],))
      y = y + bias
    return y.astype(cfg.compute_dtype)


class DenseGeneral(nn.Module):
  """x [..., *in] @ kernel [*in, *out] (+ bias [*out]) with logically named kernel axes.

  Not flax's DenseGeneral: that one initialises a flattened 2-D kernel and reshapes it, which
  breaks logical-axis constraints under a global mesh (the boxed names have the unflattened
  rank).
  """

  features: tuple[int, ...]
  axes: tuple[str, ...]
  num_in: int
  config: TransformerConfig
  use_bias: bool | None = None  # None: config.use_bias

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    in_shape = x.shape[x.ndim - self.num_in:]
    kernel = self.param("kernel", _param_axes(_init_dense, self.axes),
                        (*in_shape, *self.features), jnp.float32)
    x = x.astype(cfg.compute_dtype)
    y = jax.lax.dot_general(
        x, kernel.astype(cfg.compute_dtype),
        ((tuple(range(x.ndim - self.num_in, x.ndim)), tuple(range(self.num_in))), ((), ())))
    if cfg.use_bias if self.use_bias is None else self.use_bias:
      bias = self.param("bias", _param_axes(nn.initializers.zeros,
                                            self.axes[-len(self.features):]),
                        self.features, jnp.float32)
      y = y + bias.astype(cfg.compute_dtype)
    return y


def _dense(features: int | tuple[int, ...], axes: tuple[str, ...], cfg: TransformerConfig,
           name: str, num_in: int = 1, use_bias: bool | None = None) -> DenseGeneral:
  """A dense layer whose kernel has logical `axes` (the num_in inputs, then the outputs)."""
  features = features if isinstance(features, tuple) else (features,)
  return DenseGeneral(features=features, axes=axes, num_in=num_in, config=cfg, name=name,
                      use_bias=use_bias)


class Attention(nn.Module):
  """Causal self-attention with multi-, grouped- or multi-query heads."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, mask: Array, positions: Array, rate: float | Array,
               cache: tuple[Array, Array, Array, Array] | None = None):
    """Training: x [batch, length, d_model] -> [batch, length, d_model].

    Decoding: `cache` = (keys, values, index, allowed) with keys/values [batch, kv_heads,
    slots, head_dim] (head-major, as `KVCache`), `index` the slot of x's first token and
    `allowed` [batch, 1, chunk, slots]; x's keys/values are written at slots index.. and x
    attends over every slot `allowed` permits. Returns (output, (keys, values)).
    """
    cfg = self.config
    h, kv, hd = cfg.num_heads, cfg.kv_heads, cfg.per_head_dim
    q = _dense((h, hd), ("embed", "heads", "head_dim"), cfg, "query")(x)
    # Never a key bias: it adds q.b to every score of a query, which softmax ignores, so its
    # gradient is exactly zero and Adafactor would random-walk it on rounding noise (making
    # runs on different topologies diverge). Imported checkpoints drop it losslessly.
    k = _dense((kv, hd), ("embed", "kv_heads", "head_dim"), cfg, "key", use_bias=False)(x)
    v = _dense((kv, hd), ("embed", "kv_heads", "head_dim"), cfg, "value")(x)
    if cfg.positions == "rotary":
      q = apply_rope(q, positions, cfg.rope_theta, cfg.rope_scaling)
      k = apply_rope(k, positions, cfg.rope_theta, cfg.rope_scaling)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
    if cache is None:
      out = dot_product_attention(q, k, v, causal_padding_mask(mask))
    else:
      keys, values, index, allowed = cache
      # The chunk's keys/values [batch, chunk, kv, hd] go into the head-major cache.
      keys = jax.lax.dynamic_update_slice(
          keys, k.transpose(0, 2, 1, 3).astype(keys.dtype), (0, 0, index, 0))
      values = jax.lax.dynamic_update_slice(
          values, v.transpose(0, 2, 1, 3).astype(values.dtype), (0, 0, index, 0))
      keys = nn.with_logical_constraint(keys, ("batch", "kv_heads", "length", "head_dim"))
      values = nn.with_logical_constraint(values, ("batch", "kv_heads", "length", "head_dim"))
      out = attend_to_cache(q, keys, values, allowed)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "head_dim"))
    out = _dense(cfg.d_model, ("heads", "head_dim", "embed"), cfg, "out", num_in=2)(out)
    out = dropout(self, out, rate)
    return out if cache is None else (out, (keys, values))


def causal_padding_mask(mask: Array) -> Array:
  """[batch, 1, q_len, k_len] boolean: key is real and not in the future of the query."""
  length = mask.shape[-1]
  causal = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))
  return causal[None, None] & mask.astype(jnp.bool_)[:, None, None, :]


def dot_product_attention(q: Array, k: Array, v: Array, allowed: Array) -> Array:
  """Softmax attention.

  Args:
    q: [batch, q_len, heads, head_dim]
    k, v: [batch, k_len, kv_heads, head_dim]; heads must be a multiple of kv_heads.
    allowed: boolean, broadcastable to [batch, heads, q_len, k_len].
  Returns:
    [batch, q_len, heads, head_dim]
  """
  return _attention(q, k, v, allowed, kv_layout="bskd")


def attend_to_cache(q: Array, keys: Array, values: Array, allowed: Array) -> Array:
  """`dot_product_attention` over a head-major KV cache (decoding).

  Args:
    q: [batch, q_len, heads, head_dim] (the chunk being decoded: 1 token, or the prompt).
    keys, values: [batch, kv_heads, slots, head_dim], the cache as `KVCache` stores it.
    allowed: boolean, broadcastable to [batch, heads, q_len, slots].
  Returns:
    [batch, q_len, heads, head_dim]. The same arithmetic as `dot_product_attention` on the
    token-major layout; only the small query is transposed, never the cache.
  """
  return _attention(q, keys, values, allowed, kv_layout="bksd")


def _attention(q: Array, k: Array, v: Array, allowed: Array, *, kv_layout: str) -> Array:
  """Both layouts' attention: `kv_layout` names k's and v's axes as einsum letters (b batch, s
  key slot, k kv head, d head dim), "bskd" token-major or "bksd" head-major."""
  b, tq, h, hd = q.shape
  kv = k.shape[kv_layout.index("k")]
  q = q.reshape(b, tq, kv, h // kv, hd)
  scores = jnp.einsum(f"bqkgd,{kv_layout}->bkgqs", q, k).astype(jnp.float32) / jnp.sqrt(hd)
  allowed = allowed.reshape(allowed.shape[0], 1, 1, *allowed.shape[-2:]) if allowed.shape[1] == 1 \
      else allowed.reshape(allowed.shape[0], kv, h // kv, *allowed.shape[-2:])
  scores = jnp.where(allowed, scores, _MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum(f"bkgqs,{kv_layout}->bqkgd", probs, v)
  return out.reshape(b, tq, h, hd)


class Mlp(nn.Module):
  """Feed-forward block: plain (gelu/relu) or gated (swiglu/geglu)."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, rate: float | Array) -> Array:
    cfg = self.config
    act = {"gelu": nn.gelu, "relu": nn.relu, "swiglu": nn.silu, "geglu": nn.gelu}[
        cfg.mlp_activation]
    hidden = act(_dense(cfg.mlp_dim, ("embed", "mlp"), cfg, "wi")(x))
    if cfg.mlp_activation in ("swiglu", "geglu"):
      hidden = hidden * _dense(cfg.mlp_dim, ("embed", "mlp"), cfg, "wi_gate")(x)
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
    out = _dense(cfg.d_model, ("mlp", "embed"), cfg, "wo")(hidden)
    return dropout(self, out, rate)


class DecoderBlock(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x, mask, positions, rate, cache=None):
    """`cache`: see `Attention`; with it, returns (x, (keys, values))."""
    cfg = self.config
    attended = Attention(cfg, name="attention")(
        Norm(cfg, name="pre_attention_norm")(x), mask, positions, rate, cache)
    if cache is not None:
      attended, layer_cache = attended
    x = x + attended
    x = x + Mlp(cfg, name="mlp")(Norm(cfg, name="pre_mlp_norm")(x), rate)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return x if cache is None else (x, layer_cache)


class Decoder(nn.Module):
  """Token ids [batch, length] -> final-normalised hidden states [batch, length, d_model]."""

  config: TransformerConfig

  def setup(self):
    cfg = self.config
    self.token_embed = nn.Embed(
        num_embeddings=cfg.vocab_size,
        features=cfg.d_model,
        dtype=cfg.compute_dtype,
        param_dtype=jnp.float32,
        embedding_init=_param_axes(_init_embed, ("vocab", "embed")),
    )
    if cfg.positions == "learned":
      self.position_embed = nn.Embed(
          num_embeddings=cfg.max_len,
          features=cfg.d_model,
          dtype=cfg.compute_dtype,
          param_dtype=jnp.float32,
          embedding_init=_param_axes(_init_embed, ("length", "embed")),
      )
    self.blocks = [DecoderBlock(cfg, name=f"layer_{i}") for i in range(cfg.num_layers)]
    self.final_norm = Norm(cfg)

  def __call__(self, tokens: Array, mask: Array | None = None, *,
               deterministic: bool = True, dropout_rate: float | Array | None = None
               ) -> Array:
    """dropout_rate overrides config.dropout_rate (and may be traced); deterministic=True
    disables dropout whatever the rate."""
    cfg = self.config
    rate = 0.0 if deterministic else (cfg.dropout_rate if dropout_rate is None
                                      else dropout_rate)
    if tokens.shape[-1] > cfg.max_len:
      raise ValueError(f"sequence length {tokens.shape[-1]} exceeds the model's max_len "
                       f"{cfg.max_len}: truncate the inputs or use a model with a larger max_len")
    if mask is None:
      mask = jnp.ones(tokens.shape, jnp.int32)
    positions = positions_from_mask(mask)
    x = self._embed(tokens, positions, rate)
    for block in self.blocks:
      x = block(x, mask, positions, rate)
    return self.final_norm(x)

  def _embed(self, tokens: Array, positions: Array, rate: float | Array) -> Array:
    x = self.token_embed(tokens)
    if self.config.scale_embeddings:
      x = x * jnp.asarray(self.config.d_model ** 0.5, x.dtype)
    if self.config.positions == "learned":
      x = x + self.position_embed(positions)
    x = dropout(self, x, rate)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))

  def extend(self, tokens: Array, mask: Array, cache: KVCache) -> tuple[Array, KVCache]:
    """Decoding: the next chunk of tokens [batch, chunk] (mask 1 = real) at slots
    cache.index .. cache.index + chunk - 1 -> (hidden [batch, chunk, d_model], new cache).

    A chunk is the (left-padded) prompt at prefill, then one token per step; a row that has
    stopped feeds mask 0. Hidden states equal `__call__` on the whole sequence so far.
    Deterministic (no dropout).
    """
    chunk = tokens.shape[-1]
    mask = mask.astype(jnp.int32)
    full_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, cache.index))
    # Positions count real tokens from the start of the sequence (as positions_from_mask).
    seen = jnp.sum(cache.mask, axis=-1, keepdims=True)
    positions = jnp.maximum(seen + jnp.cumsum(mask, axis=-1) - 1, 0)
    query_slots = cache.index + jnp.arange(chunk)
    causal = jnp.arange(cache.length)[None, :] <= query_slots[:, None]  # [chunk, slots]
    allowed = causal[None, None] & full_mask.astype(jnp.bool_)[:, None, None, :]
    x = self._embed(tokens, positions, 0.0)
    keys, values = [], []
    for block, k, v in zip(self.blocks, cache.keys, cache.values):
      x, (k, v) = block(x, mask, positions, 0.0, (k, v, cache.index, allowed))
      keys.append(k)
      values.append(v)
    new_cache = KVCache(keys=tuple(keys), values=tuple(values), mask=full_mask,
                        index=cache.index + chunk)
    return self.final_norm(x), new_cache

  def attend(self, hidden: Array) -> Array:
    """Tied-embedding logits: hidden [..., d_model] -> [..., vocab] in float32."""
    # Not Embed.attend: it would compute the logits in the (possibly bf16) compute dtype.
    return jnp.einsum("...d,vd->...v", hidden.astype(jnp.float32), self.token_embed.embedding)
