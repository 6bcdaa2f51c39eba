"""Networks with heads on the shared `Decoder`: LM, scalar reward model, per-token value model.

Where it sits: the pre-training and SFT stages train `LanguageModel`; the RM stage trains
`RewardModel` (an SFT backbone plus a scalar head, the object WARM averages); RL trains the
policy (`LanguageModel`) beside a `ValueModel`. All three keep the backbone under the same
`decoder` key, so an SFT checkpoint initialises an RM or a value model by copying `decoder/*`
(see `warm_jax.checkpoints.init_from_checkpoint`). `LanguageModel.decode` is the KV-cache
decoding path of `warm_jax.sampling` (see `Decoder.extend`).

Parameter trees:
  LanguageModel: {decoder: {...}, [lm_head: {kernel}] }     (lm_head only when untied)
  RewardModel:   {decoder: {...}, reward_head: {kernel, bias}}
  ValueModel:    {decoder: {...}, value_head: {kernel, bias}}
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from warm_jax.models.config import TransformerConfig
from warm_jax.models.transformer import Decoder, KVCache

Array = jax.Array


def last_token_index(mask: Array) -> Array:
  """[batch] index of the last real token of each row (left, right or no padding).

  A row with no real token gets index 0; callers reject such rows before they get here.
  """
  positions = jnp.arange(mask.shape[-1])
  return jnp.max(jnp.where(mask.astype(jnp.bool_), positions, 0), axis=-1)


def _scalar_head(name: str) -> nn.Dense:
  return nn.Dense(
      1, dtype=jnp.float32, param_dtype=jnp.float32, name=name,
      kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", None)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))


def _softcap(logits: Array, cap: float | None) -> Array:
  return logits if cap is None else cap * jnp.tanh(logits / cap)


class LanguageModel(nn.Module):
  """tokens [batch, length] (+ mask) -> next-token logits [batch, length, vocab], float32."""

  config: TransformerConfig

  def setup(self):
    self.decoder = Decoder(self.config)
    if not self.config.tie_embeddings:
      self.lm_head = nn.DenseGeneral(
          self.config.vocab_size, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.normal(0.02), ("embed", "vocab")))

  def __call__(self, tokens: Array, mask: Array | None = None, *,
               deterministic: bool = True, dropout_rate: float | Array | None = None
               ) -> Array:
    hidden = self.decoder(tokens, mask, deterministic=deterministic, dropout_rate=dropout_rate)
    return self._logits(hidden)

  def decode(self, tokens: Array, mask: Array, cache: KVCache) -> tuple[Array, KVCache]:
    """KV-cache decoding (`Decoder.extend`): the next chunk [batch, chunk] -> (logits [batch,
    chunk, vocab] float32, new cache); `warm_jax.sampling` drives it."""
    hidden, cache = self.decoder.extend(tokens, mask, cache)
    return self._logits(hidden), cache

  def _logits(self, hidden: Array) -> Array:
    if self.config.tie_embeddings:
      logits = self.decoder.attend(hidden)
    else:
      logits = self.lm_head(hidden.astype(jnp.float32))
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    return _softcap(logits, self.config.logit_softcap)


class RewardModel(nn.Module):
  """tokens [batch, length] + mask -> scalar reward [batch], read at the last real token."""

  config: TransformerConfig

  def setup(self):
    self.decoder = Decoder(self.config)
    self.reward_head = _scalar_head("reward_head")

  def features(self, tokens: Array, mask: Array, *, deterministic: bool = True,
               dropout_rate: float | Array | None = None) -> Array:
    """[batch, d_model] hidden state at the last real token (what the linear probe fits on)."""
    hidden = self.decoder(tokens, mask, deterministic=deterministic, dropout_rate=dropout_rate)
    idx = last_token_index(mask)
    return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0].astype(jnp.float32)

  def __call__(self, tokens: Array, mask: Array, *, deterministic: bool = True,
               dropout_rate: float | Array | None = None) -> Array:
    return self.reward_head(self.features(tokens, mask, deterministic=deterministic,
                                          dropout_rate=dropout_rate))[:, 0]


class ValueModel(nn.Module):
  """tokens [batch, length] + mask -> per-token value estimates [batch, length]."""

  config: TransformerConfig

  def setup(self):
    self.decoder = Decoder(self.config)
    self.value_head = _scalar_head("value_head")

  def __call__(self, tokens: Array, mask: Array, *, deterministic: bool = True,
               dropout_rate: float | Array | None = None) -> Array:
    hidden = self.decoder(tokens, mask, deterministic=deterministic, dropout_rate=dropout_rate)
    return self.value_head(hidden.astype(jnp.float32))[..., 0]
