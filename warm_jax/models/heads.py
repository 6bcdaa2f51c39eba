"""Networks with heads on the shared `Decoder`: LM, scalar reward model, per-token value model.

Where it sits: the pre-training and SFT stages train `LanguageModel`; the RM stage trains
`RewardModel` (an SFT backbone plus a scalar head, the object WARM averages); RL trains the
policy (`LanguageModel`) beside a `ValueModel`. All three keep the backbone under the same
`decoder` key, so an SFT checkpoint initialises an RM or a value model by copying `decoder/*`
(see `warm_jax.core.checkpoints.init_from_checkpoint`). `LanguageModel.decode` is the KV-cache
decoding path of `warm_jax.policy.sampling` (see `Decoder.extend`).

Parameter trees:
  LanguageModel: {decoder: {...}, [lm_head: {kernel}] }     (lm_head only when untied)
  RewardModel:   {decoder: {...}, reward_head: {kernel, bias[, logprob_kernel]}
                  [, lm_head: {kernel}]}   (logprob_kernel with the log-prob readout; lm_head
                                            with it when the embeddings are untied)
  ValueModel:    {decoder: {...}, value_head: {kernel, bias}}

The reward readout (`TransformerConfig.reward_readout`):
  'hidden'          r = kernel . h_last + bias, h_last the final hidden state at the last real
                    token (the paper's head; Hugging Face's *ForSequenceClassification).
  'hidden_logprob'  r = kernel . h_last + logprob_kernel . [softmin lp, mean lp, sum lp] + bias,
                    lp_t = log p(token_t | tokens_<t) of every response token t (response_mask
                    1: the summary and its EOS) under the RM's own backbone and LM head (tied
                    embedding or lm_head), softmin = -tau * logsumexp(-lp / tau). An SFT model
                    "knows" which summary tokens do not fit the post (a wrong fact is a
                    surprising token) but holds it behind its LM head, not linearly in h_last;
                    this readout lets the shared linear probe and every member read it, so the
                    members need not leave the shared basin to learn it
                    (docs/reward_models.md, "The log-prob readout").
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
               deterministic: bool = True, dropout_rate: float | Array | None = None,
               last: int | None = None) -> Array:
    """last: the logits of the last `last` positions only, [batch, last, vocab] (the LM head
    and everything after it skip the others: RL reads log-probs of the response columns
    only, `policy.objective.window_log_probs`); None: every position."""
    hidden = self.decoder(tokens, mask, deterministic=deterministic, dropout_rate=dropout_rate)
    if last is not None:
      hidden = hidden[:, hidden.shape[1] - last:]
    return self._logits(hidden)

  def decode(self, tokens: Array, mask: Array, cache: KVCache) -> tuple[Array, KVCache]:
    """KV-cache decoding (`Decoder.extend`): the next chunk [batch, chunk] -> (logits [batch,
    chunk, vocab] float32, new cache); `warm_jax.policy.sampling` drives it."""
    hidden, cache = self.decoder.extend(tokens, mask, cache)
    return self._logits(hidden), cache

  def _logits(self, hidden: Array) -> Array:
    if self.config.tie_embeddings:
      logits = self.decoder.attend(hidden)
    else:
      logits = self.lm_head(hidden.astype(jnp.float32))
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    return _softcap(logits, self.config.logit_softcap)


LOGPROB_FEATURES = ("softmin", "mean", "sum")  # the log-prob readout's features, in order


def response_log_prob_features(logits: Array, tokens: Array, response_mask: Array, *,
                               temperature: float) -> Array:
  """[batch, 3] (softmin, mean, sum) over response tokens of log p(token_t | tokens_<t).

  logits [batch, length, vocab] (position t predicts token t + 1), tokens and response_mask
  [batch, length] (response_mask[:, 0] is ignored: the first token has no prediction). A row
  with no response token gets zeros. log p is the target's logit minus the row's logsumexp
  (no [batch, length, vocab] log-softmax is materialised).
  """
  logits = logits[:, :-1].astype(jnp.float32)
  target = jnp.take_along_axis(logits, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
  lp = target - jax.nn.logsumexp(logits, axis=-1)
  m = response_mask[:, 1:].astype(jnp.float32)
  count = jnp.sum(m, axis=-1)
  total = jnp.sum(lp * m, axis=-1)
  mean = total / jnp.maximum(count, 1.0)
  neg = jnp.where(m > 0, -lp / temperature, -jnp.inf)
  softmin = -temperature * jax.nn.logsumexp(neg, axis=-1)
  softmin = jnp.where(count > 0, softmin, 0.0)
  return jnp.stack([softmin, mean, total], axis=-1)


def response_window(mask: Array, window: int) -> tuple[Array, Array]:
  """(positions [batch, window], valid [batch, window]): the last `window` positions of each
  row, ending at its last real token, clipped at 0; valid is 0 where a position was clipped
  or is position 0 (which has no prediction). The log-prob readout's LM head runs there only.
  """
  last = last_token_index(mask)
  positions = last[:, None] - (window - 1) + jnp.arange(window)[None, :]
  return jnp.maximum(positions, 0), (positions >= 1).astype(jnp.int32)


def check_response_window(mask, response_mask, window: int | None, *, name: str) -> None:
  """Host check (numpy) that every response token of every row lies in the log-prob readout's
  window (`TransformerConfig.logprob_window`): raises naming the longest response and the fix.
  """
  if window is None or response_mask is None:
    return
  real = np.asarray(mask) != 0
  resp = (np.asarray(response_mask) != 0) & real
  resp[:, 0] = False  # the first token has no prediction and is never read
  if not resp.any():
    return
  length = real.shape[1]
  last = length - 1 - np.argmax(real[:, ::-1], axis=1)
  first = np.where(resp.any(axis=1), np.argmax(resp, axis=1), last)
  span = last - first + 1  # the response tokens to read, the first one included
  if span.max() > window - 1:
    raise ValueError(
        f"{name}: a response of {int(span.max())} tokens (summary + EOS, up to the last real "
        f"token) does not fit the log-prob readout's window of {window} positions "
        f"(TransformerConfig.logprob_window, which reads responses of up to {window - 1}): "
        f"set logprob_window >= {int(span.max()) + 1} (ExperimentScale.logprob_window in an "
        "experiment), or None to read logits at every position")


class RewardHead(nn.Module):
  """The scalar head: kernel [d_model, 1] and bias [1] on the last hidden state, plus
  logprob_kernel [3, 1] on the log-prob features under the 'hidden_logprob' readout."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, features: Array) -> Array:
    """features [batch, d_model (+ 3)] (`RewardModel.features`) -> [batch] rewards."""
    d = self.config.d_model
    kernel = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("embed", None)), (d, 1), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                      (1,), jnp.float32)
    features = features.astype(jnp.float32)
    reward = features[:, :d] @ kernel
    if self.config.reads_logprobs:
      logprob_kernel = self.param("logprob_kernel", nn.with_logical_partitioning(
          nn.initializers.zeros, (None, None)), (len(LOGPROB_FEATURES), 1), jnp.float32)
      reward = reward + features[:, d:] @ logprob_kernel
    return (reward + bias)[:, 0]


class RewardModel(nn.Module):
  """tokens [batch, length] + mask (+ response_mask) -> scalar reward [batch].

  The reward is read at the last real token ('hidden' readout) and, with the 'hidden_logprob'
  readout, from the log-probabilities of the response tokens (response_mask 1: the summary and
  its EOS) under the RM's own LM head; see the module docstring.
  """

  config: TransformerConfig

  def setup(self):
    self.decoder = Decoder(self.config)
    self.reward_head = RewardHead(self.config)
    if self.config.reads_logprobs and not self.config.tie_embeddings:
      # the SFT model's own untied LM head, copied from its checkpoint like the decoder
      self.lm_head = nn.DenseGeneral(
          self.config.vocab_size, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.normal(0.02), ("embed", "vocab")))

  def features(self, tokens: Array, mask: Array, response_mask: Array | None = None, *,
               deterministic: bool = True, dropout_rate: float | Array | None = None) -> Array:
    """[batch, d_model] hidden state at the last real token (what the linear probe fits on);
    [batch, d_model + 3] with the log-prob features (`LOGPROB_FEATURES`) appended under the
    'hidden_logprob' readout, which needs `response_mask`."""
    hidden = self.decoder(tokens, mask, deterministic=deterministic, dropout_rate=dropout_rate)
    idx = last_token_index(mask)
    last = jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0].astype(jnp.float32)
    if not self.config.reads_logprobs:
      return last
    if response_mask is None:
      raise ValueError("this reward model reads response log-probabilities "
                       "(reward_readout='hidden_logprob') and needs response_mask [batch, "
                       "length], 1 on the response tokens (summary and EOS): pass it, or use "
                       "reward_readout='hidden'")
    response_mask = response_mask * mask.astype(response_mask.dtype)
    window = self.config.logprob_window
    missed = None
    if window is not None and window < tokens.shape[1]:
      positions, valid = response_window(mask, window)
      hidden = jnp.take_along_axis(hidden, positions[..., None], axis=1)
      full_count = jnp.sum(response_mask[:, 1:], axis=-1)
      tokens = jnp.take_along_axis(tokens, positions, axis=1)
      response_mask = jnp.take_along_axis(response_mask, positions, axis=1) * valid.astype(
          response_mask.dtype)
      missed = full_count - jnp.sum(response_mask[:, 1:], axis=-1)
    if self.config.tie_embeddings:
      logits = self.decoder.attend(hidden)
    else:
      logits = self.lm_head(hidden.astype(jnp.float32))
    logits = _softcap(logits, self.config.logit_softcap)
    lp_features = response_log_prob_features(
        logits, tokens, response_mask, temperature=self.config.logprob_softmin_temperature)
    if missed is not None:  # a response longer than the window: NaN, never a wrong reward
      lp_features = jnp.where(missed[:, None] > 0, jnp.nan, lp_features)
    return jnp.concatenate([last, lp_features], axis=-1)

  def __call__(self, tokens: Array, mask: Array, response_mask: Array | None = None, *,
               deterministic: bool = True, dropout_rate: float | Array | None = None) -> Array:
    return self.reward_head(self.features(tokens, mask, response_mask,
                                          deterministic=deterministic,
                                          dropout_rate=dropout_rate))


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


def init_inputs(model: nn.Module) -> tuple[Array, ...]:
  """Dummy (tokens, mask[, response_mask]) [1, 2] that initialise every param of `model`."""
  tokens, mask = jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32)
  if isinstance(model, RewardModel) and model.config.reads_logprobs:
    return tokens, mask, mask
  return tokens, mask
