"""Loss functions of the pipeline's stages, as pure functions of arrays.

Where it sits: objectives (`warm_jax.core.objectives`) call these inside the jitted train step.
Losses return *sums* and *weights* rather than means, so that microbatched gradient
accumulation and multi-host reductions give exactly the full-batch mean.

  LM / SFT:       next_token_cross_entropy
  reward models:  bradley_terry_loss (L = -log sigmoid(r+ - r-)), pairwise_accuracy
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def next_token_cross_entropy(logits: Array, tokens: Array, loss_mask: Array,
                             z_loss: float = 0.0) -> tuple[Array, Array, Array]:
  """Teacher-forced next-token loss.

  Args:
    logits: [batch, length, vocab] float32; position t predicts tokens[:, t + 1].
    tokens: [batch, length] int.
    loss_mask: [batch, length]; loss_mask[:, t] = 1 where token t is a target (so the first
      position is never a target).
    z_loss: coefficient of the log-partition penalty (PaLM); 0 disables it.
  Returns:
    (loss_sum, num_targets, correct_sum): summed loss (with z-loss), number of target tokens,
    number of targets predicted by the argmax.
  """
  logits = logits[:, :-1].astype(jnp.float32)
  targets = tokens[:, 1:]
  weights = loss_mask[:, 1:].astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = log_z - target_logit
  if z_loss:
    nll = nll + z_loss * jnp.square(log_z)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return jnp.sum(nll * weights), jnp.sum(weights), jnp.sum(correct * weights)


def bradley_terry_loss(reward_chosen: Array, reward_rejected: Array) -> Array:
  """Per-pair Bradley-Terry negative log-likelihood -log sigmoid(r+ - r-), shape [batch]."""
  return -jax.nn.log_sigmoid(reward_chosen - reward_rejected)


def pairwise_accuracy(reward_chosen: Array, reward_rejected: Array) -> Array:
  """Per-pair 1{r+ >= r-} (ties count as correct, as in the paper), shape [batch]."""
  return (reward_chosen >= reward_rejected).astype(jnp.float32)
