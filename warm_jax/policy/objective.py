"""The RL stage's two objectives on rollouts: REINFORCE (+ KL) for the policy, squared error for
the value model; and the per-token arithmetic they share (log probs, KL estimators, returns).

Where it sits: `warm_jax.policy.rl` samples a rollout, scores it (RM reward, reference log probs,
values) and hands each objective a batch to `Trainer.train_step`, so the policy and the value
model are trained by the same sharded, jitted step as every other stage (each its own Trainer,
optimizer and checkpoints).

Layout: a rollout row is the left-padded prompt followed by the response, [batch, L] with
L = P + max_new_tokens. Every per-token array is indexed by token position j: `response_mask[j]`
is 1 where token j was generated (EOS included); log_probs[j] = log pi(token j | tokens < j);
values[j] = V(state before token j); advantages[j], returns[j] likewise. Position 0 is never a
response token.

KL estimators of KL(pi || ref) per token, with d = log pi(y_t) - log ref(y_t), y_t ~ pi
(Schulman, "Approximating KL divergence"): k1 = d (unbiased, can be negative),
k2 = d^2 / 2 (biased, >= 0), k3 = exp(-d) - 1 + d (unbiased, >= 0). All are 0 when pi = ref.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from warm_jax.models import LanguageModel, TransformerConfig, ValueModel
from warm_jax.core.objectives import TokenSequenceObjective, forward

Array = jax.Array
Batch = dict[str, Array]
KL_ESTIMATORS = ("k1", "k2", "k3")


def token_log_probs(logits: Array, tokens: Array, *, temperature: float = 1.0
                    ) -> tuple[Array, Array]:
  """(log_probs, entropy), both [batch, L]: log softmax(logits / T) of token j given tokens
  < j, and the entropy of that distribution; position 0 (no context) is 0."""
  scaled = logits[:, :-1].astype(jnp.float32) / temperature
  log_z = jax.nn.log_softmax(scaled, axis=-1)
  picked = jnp.take_along_axis(log_z, tokens[:, 1:, None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(log_z) * log_z, axis=-1)
  zero = jnp.zeros_like(picked[:, :1])
  return jnp.concatenate([zero, picked], 1), jnp.concatenate([zero, entropy], 1)


def window_log_probs(logits_of: Any, tokens: Array, *, temperature: float,
                     window: int | None) -> tuple[Array, Array]:
  """`token_log_probs` of tokens [batch, L] with the logits of the last `window` tokens only:
  (log_probs, entropy) [batch, L], exact in the last window - 1 columns and 0 before them.

  logits_of(last) returns the model's logits of the last `last` positions (None: all;
  `LanguageModel(last=...)`). RL's responses fill the last max_new_tokens columns of its
  [prompt | response] rows (prompts are left-padded to a fixed width), so window =
  max_new_tokens + 1 gives every response token's log-prob (the logit before the first
  response token included) while the LM head and the log-softmax over the vocabulary skip the
  prompt columns: ~2/3 of the positions of the default's rows. None: `token_log_probs` of
  every position.
  """
  length = tokens.shape[1]
  if window is None or window >= length:
    return token_log_probs(logits_of(None), tokens, temperature=temperature)
  log_probs, entropy = token_log_probs(logits_of(window), tokens[:, length - window:],
                                       temperature=temperature)
  pad = jnp.zeros((tokens.shape[0], length - window), jnp.float32)
  return (jnp.concatenate([pad, log_probs.astype(jnp.float32)], 1),
          jnp.concatenate([pad, entropy.astype(jnp.float32)], 1))


def kl_estimate(log_probs: Array, ref_log_probs: Array, estimator: str) -> Array:
  """Per-token estimate of KL(pi || ref) from samples of pi (module docstring)."""
  d = log_probs - ref_log_probs
  if estimator == "k1":
    return d
  if estimator == "k2":
    return 0.5 * jnp.square(d)
  if estimator == "k3":
    return jnp.expm1(-d) + d
  raise ValueError(f"kl_estimator={estimator!r}: use one of {KL_ESTIMATORS}")


def returns_to_go(rewards: Array, mask: Array) -> Array:
  """[batch, L] undiscounted sum of rewards[j'] * mask[j'] over j' >= j, where mask is 1."""
  masked = rewards * mask
  return jnp.flip(jnp.cumsum(jnp.flip(masked, -1), -1), -1) * mask


def last_response_token(response_mask: Array) -> Array:
  """[batch, L] one-hot of each row's last response token (where the RM reward goes)."""
  following = jnp.concatenate([response_mask[:, 1:], jnp.zeros_like(response_mask[:, :1])], 1)
  return response_mask * (1 - following)


def advantages(*, log_probs: Array, ref_log_probs: Array, response_mask: Array, rewards: Array,
               values: Array, kl_coef: float, kl_estimator: str = "k1",
               kl_in_reward: bool = True, baseline: str = "value",
               samples_per_prompt: int = 1) -> dict[str, Array]:
  """Per-token KL estimates, rewards, returns and advantages of a rollout ([batch, L] each;
  `rewards` [batch] is the RM's, `values` [batch, L] V(state before token j)).

  Token rewards: the RM reward on the last response token, minus kl_coef * KL estimate on
  every response token when kl_in_reward. Returns G_j: their undiscounted sum from j on.
  Advantages: G_j - V_j ('value'), G_j ('none'), or ('leave_one_out', rows of one prompt
  contiguous in groups of samples_per_prompt) each response's total reward minus the mean of
  the other responses to its prompt, on every token (RLOO).
  """
  mask = response_mask.astype(jnp.float32)
  kl = kl_estimate(log_probs, ref_log_probs, kl_estimator) * mask
  token_rewards = rewards[:, None] * last_response_token(mask)
  if kl_in_reward:
    token_rewards = token_rewards - kl_coef * kl
  returns = returns_to_go(token_rewards, mask)
  if baseline == "value":
    adv = (returns - values) * mask
  elif baseline == "none":
    adv = returns
  elif baseline == "leave_one_out":
    k = samples_per_prompt
    total = jnp.sum(token_rewards * mask, axis=-1).reshape(-1, k)
    others = (jnp.sum(total, axis=1, keepdims=True) - total) / (k - 1)
    adv = (total - others).reshape(-1)[:, None] * mask
  else:
    raise ValueError(f"baseline={baseline!r}: use 'value', 'leave_one_out' or 'none'")
  return {"kl": kl, "token_rewards": token_rewards, "returns": returns, "advantages": adv}


def policy_gradient_sums(log_probs: Array, advantages: Array, mask: Array, *,
                         ref_log_probs: Array | None = None, kl_coef: float = 0.0,
                         kl_estimator: str = "k1", kl_in_loss: bool = False
                         ) -> tuple[Array, dict[str, Array]]:
  """REINFORCE loss sum -sum_t A_t log pi(y_t) (A held constant), plus kl_coef * the KL
  estimate differentiated through log pi when kl_in_loss; and metric sums (weight = tokens)."""
  mask = mask.astype(jnp.float32)
  pg = -jnp.sum(jax.lax.stop_gradient(advantages) * log_probs * mask)
  metrics = {"pg_loss": pg, "weight": jnp.sum(mask)}
  loss = pg
  if ref_log_probs is not None:
    kl = jnp.sum(kl_estimate(log_probs, jax.lax.stop_gradient(ref_log_probs), kl_estimator)
                 * mask)
    metrics["kl"] = kl
    if kl_in_loss:
      loss = loss + kl_coef * kl
  metrics["loss"] = loss
  return loss, metrics


@dataclasses.dataclass(frozen=True)
class PolicyGradientObjective(TokenSequenceObjective):
  """REINFORCE on rollouts for `Trainer`: the loss of `policy_gradient_sums` on the policy's
  temperature-scaled log probs of the response tokens, averaged over response tokens.

  Batch: tokens, mask, response_mask [batch, L] int32; advantages, ref_log_probs [batch, L]
  float32 (see the module docstring's layout).

  Attributes:
    model_config: the policy's shape.
    temperature: the sampling temperature: the policy optimised is softmax(logits / T).
    kl_coef: alpha, used here only when kl_in_loss.
    kl_estimator: k1, k2 or k3 (logged always; in the loss only when kl_in_loss).
    kl_in_loss: add alpha * KL estimate to the loss (else the KL is in the advantages).
    response_window: the response tokens lie in the last response_window columns of every
      row (RL: max_new_tokens; `window_log_probs` with window response_window + 1): the LM
      head runs there only. None: at every position.
  """

  model_config: TransformerConfig
  temperature: float = 1.0
  kl_coef: float = 0.0
  kl_estimator: str = "k1"
  kl_in_loss: bool = False
  response_window: int | None = None

  batch_features = ("tokens", "mask", "response_mask", "advantages", "ref_log_probs")

  def __post_init__(self):
    if self.kl_estimator not in KL_ESTIMATORS:
      raise ValueError(f"kl_estimator={self.kl_estimator!r}: use one of {KL_ESTIMATORS}")
    if not self.temperature > 0:
      raise ValueError(f"RL needs a sampling temperature > 0, got {self.temperature}: the "
                       "policy is softmax(logits / T)")

  @property
  def module(self) -> nn.Module:
    return LanguageModel(self.model_config)

  def dummy_batch(self, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    shape = (batch_size, seq_len)
    return {"tokens": np.zeros(shape, np.int32), "mask": np.ones(shape, np.int32),
            "response_mask": np.zeros(shape, np.int32),
            "advantages": np.zeros(shape, np.float32),
            "ref_log_probs": np.zeros(shape, np.float32)}

  def loss(self, params: Any, batch: Batch, rng: Array | None
           ) -> tuple[Array, dict[str, Array]]:
    window = None if self.response_window is None else self.response_window + 1
    log_probs, entropy = window_log_probs(
        lambda last: forward(self.module, params, rng, batch["tokens"], batch["mask"],
                             last=last),
        batch["tokens"], temperature=self.temperature, window=window)
    mask = batch["response_mask"].astype(jnp.float32)
    if window is not None:  # the columns whose log-probs were computed
      mask = mask * (jnp.arange(mask.shape[1]) >= mask.shape[1] - window + 1)
    loss, metrics = policy_gradient_sums(
        log_probs, batch["advantages"], mask, ref_log_probs=batch["ref_log_probs"],
        kl_coef=self.kl_coef, kl_estimator=self.kl_estimator, kl_in_loss=self.kl_in_loss)
    metrics["entropy"] = jnp.sum(entropy * mask)
    return loss, metrics

  def eval_metrics(self, params: Any, batch: Batch, valid: Array) -> dict[str, Array]:
    batch = dict(batch, response_mask=batch["response_mask"] * valid[:, None].astype(jnp.int32))
    return self.loss(params, batch, None)[1]

  def train_flops_per_example(self, seq_len: int) -> float:
    last = None if self.response_window is None else self.response_window + 1
    return 3.0 * self.model_config.lm_forward_flops(seq_len, last=last)

  @staticmethod
  def tokens_per_example(seq_len: int) -> int:
    return seq_len


def state_values(values: Array) -> Array:
  """Per-token value heads [batch, L] (value after reading token j) -> V(state before token
  j): shifted right by one, 0 at position 0."""
  return jnp.concatenate([jnp.zeros_like(values[:, :1]), values[:, :-1]], axis=1)


@dataclasses.dataclass(frozen=True)
class ValueRegressionObjective(TokenSequenceObjective):
  """The learned baseline: 0.5 * (V(state before y_t) - G_t)^2 summed over response tokens.

  Batch: tokens, mask, response_mask [batch, L] int32; returns [batch, L] float32 (G_t at the
  positions of the response tokens).
  """

  model_config: TransformerConfig

  batch_features = ("tokens", "mask", "response_mask", "returns")

  @property
  def module(self) -> nn.Module:
    return ValueModel(self.model_config)

  def dummy_batch(self, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    shape = (batch_size, seq_len)
    return {"tokens": np.zeros(shape, np.int32), "mask": np.ones(shape, np.int32),
            "response_mask": np.zeros(shape, np.int32), "returns": np.zeros(shape, np.float32)}

  def loss(self, params: Any, batch: Batch, rng: Array | None
           ) -> tuple[Array, dict[str, Array]]:
    values = forward(self.module, params, rng, batch["tokens"], batch["mask"])
    mask = batch["response_mask"].astype(jnp.float32)
    error = (state_values(values) - batch["returns"]) * mask
    loss = 0.5 * jnp.sum(jnp.square(error))
    return loss, {"loss": loss, "value": jnp.sum(state_values(values) * mask),
                  "weight": jnp.sum(mask)}

  def eval_metrics(self, params: Any, batch: Batch, valid: Array) -> dict[str, Array]:
    batch = dict(batch, response_mask=batch["response_mask"] * valid[:, None].astype(jnp.int32))
    return self.loss(params, batch, None)[1]

  def train_flops_per_example(self, seq_len: int) -> float:
    # forward + backward (3x the forward) of the decoder; the value head replaces the LM head
    return 3.0 * self.model_config.forward_flops_per_token(seq_len, lm_head=False) * seq_len

  @staticmethod
  def tokens_per_example(seq_len: int) -> int:
    return seq_len
