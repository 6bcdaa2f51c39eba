"""The decoder-only Transformer backbone shared by the LM, the reward model and the value model.

Where it sits: every stage of the pipeline (pre-train, SFT, RM, RL) runs this `Decoder`; the
heads in `heads.py` turn its hidden states into next-token logits, a scalar reward or per-token
values. Parameters are created with logical axis names (`embed`, `mlp`, `heads`, `kv_heads`,
`head_dim`, `vocab`, `length`), which `warm_jax.partitioning` maps to mesh axes; the code never
names a mesh axis.

Padding: `mask[b, t] = 1` for real tokens. Positions count real tokens only (cumsum of the mask),
so a left-padded and a right-padded copy of one sequence give identical hidden states on their
real tokens; attention never looks at padded keys.
"""

from __future__ import annotations

import flax.linen as nn
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


def apply_rope(x: Array, positions: Array, theta: float) -> Array:
  """Rotary embedding of x [batch, length, heads, head_dim] at positions [batch, length].

  Uses the "rotate half" layout of GPT-NeoX / Llama (first half paired with second half).
  """
  half = x.shape[-1] // 2
  freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
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
  def __call__(self, x: Array, mask: Array, positions: Array, rate: float | Array) -> Array:
    cfg = self.config
    h, kv, hd = cfg.num_heads, cfg.kv_heads, cfg.per_head_dim
    q = _dense((h, hd), ("embed", "heads", "head_dim"), cfg, "query")(x)
    # Never a key bias: it adds q.b to every score of a query, which softmax ignores, so its
    # gradient is exactly zero and Adafactor would random-walk it on rounding noise (making
    # runs on different topologies diverge). Imported checkpoints drop it losslessly.
    k = _dense((kv, hd), ("embed", "kv_heads", "head_dim"), cfg, "key", use_bias=False)(x)
    v = _dense((kv, hd), ("embed", "kv_heads", "head_dim"), cfg, "value")(x)
    if cfg.positions == "rotary":
      q = apply_rope(q, positions, cfg.rope_theta)
      k = apply_rope(k, positions, cfg.rope_theta)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
    out = dot_product_attention(q, k, v, causal_padding_mask(mask))
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "head_dim"))
    out = _dense(cfg.d_model, ("heads", "head_dim", "embed"), cfg, "out", num_in=2)(out)
    return dropout(self, out, rate)


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
  b, tq, h, hd = q.shape
  kv = k.shape[2]
  q = q.reshape(b, tq, kv, h // kv, hd)
  scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k).astype(jnp.float32) / jnp.sqrt(hd)
  allowed = allowed.reshape(allowed.shape[0], 1, 1, *allowed.shape[-2:]) if allowed.shape[1] == 1 \
      else allowed.reshape(allowed.shape[0], kv, h // kv, *allowed.shape[-2:])
  scores = jnp.where(allowed, scores, _MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v)
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
  def __call__(self, x, mask, positions, rate):
    cfg = self.config
    x = x + Attention(cfg, name="attention")(
        Norm(cfg, name="pre_attention_norm")(x), mask, positions, rate)
    x = x + Mlp(cfg, name="mlp")(Norm(cfg, name="pre_mlp_norm")(x), rate)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


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
    x = self.token_embed(tokens)
    if cfg.positions == "learned":
      x = x + self.position_embed(positions)
    x = dropout(self, x, rate)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    for block in self.blocks:
      x = block(x, mask, positions, rate)
    return self.final_norm(x)

  def attend(self, hidden: Array) -> Array:
    """Tied-embedding logits: hidden [..., d_model] -> [..., vocab] in float32."""
    # Not Embed.attend: it would compute the logits in the (possibly bf16) compute dtype.
    return jnp.einsum("...d,vd->...v", hidden.astype(jnp.float32), self.token_embed.embedding)
