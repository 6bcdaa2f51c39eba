"""Objectives: a network plus the loss a training stage minimises on it.

Where it sits: the `Trainer` is generic; an objective tells it how to initialise the network,
what a batch looks like, and how to compute the loss and eval metrics (t5x calls these
"models"). Pre-training and SFT use `LanguageModelObjective`; the RM stage adds the
Bradley-Terry objective, RL the policy-gradient one.

Contract: `loss(...)` and `eval_metrics(...)` return *sums* over the batch plus a `weight`
(number of target tokens, number of pairs, ...); the trainer divides by the total weight, so a
microbatched or multi-host step is exactly the full-batch mean.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from warm_jax.core import losses
from warm_jax.models import LanguageModel, RewardModel, TransformerConfig
from warm_jax.models.heads import check_response_window

Array = jax.Array
Batch = dict[str, Array]



def forward(module: nn.Module, params: Any, rng: Array | None, *inputs: Any, **kwargs: Any
            ) -> Any:
  """The forward pass of every objective's loss: `module.apply` in training mode (dropout
  from `rng`) or, with rng None, deterministic (evaluation)."""
  return module.apply({"params": params}, *inputs, deterministic=rng is None,
                      rngs=None if rng is None else {"dropout": rng}, **kwargs)

class TokenSequenceObjective:
  """What the objectives over [batch, length] `tokens` / `mask` share (the LM, the policy and
  the value objectives): the network is initialised on those two features."""

  def init_variables(self, rng: Array, batch: Batch) -> Any:
    return self.module.init(rng, batch["tokens"], batch["mask"])


@dataclasses.dataclass(frozen=True)
class LanguageModelObjective(TokenSequenceObjective):
  """Next-token prediction on `tokens`, counting only positions where `loss_mask` is 1.

  Batch: tokens [batch, length] int32, mask [batch, length] (1 = real token),
  loss_mask [batch, length] (1 = this token is a target; prompts of SFT examples are 0).
  """

  model_config: TransformerConfig
  z_loss: float = 1e-4

  batch_features = ("tokens", "mask", "loss_mask")

  @property
  def module(self) -> nn.Module:
    return LanguageModel(self.model_config)

  def dummy_batch(self, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    shape = (batch_size, seq_len)
    return {"tokens": np.zeros(shape, np.int32), "mask": np.ones(shape, np.int32),
            "loss_mask": np.ones(shape, np.int32)}

  def loss(self, params: Any, batch: Batch, rng: Array | None
           ) -> tuple[Array, dict[str, Array]]:
    logits = forward(self.module, params, rng, batch["tokens"], batch["mask"])
    loss_mask = batch["loss_mask"] * batch["mask"]
    loss_sum, weight, correct = losses.next_token_cross_entropy(
        logits, batch["tokens"], loss_mask, z_loss=self.z_loss)
    return loss_sum, {"loss": loss_sum, "token_accuracy": correct, "weight": weight}

  def eval_metrics(self, params: Any, batch: Batch, valid: Array) -> dict[str, Array]:
    """Metric sums over the rows where valid [batch] is 1 (eval pads its last batch)."""
    batch = dict(batch, loss_mask=batch["loss_mask"] * valid[:, None].astype(jnp.int32))
    _, metrics = self.loss(params, batch, None)
    return metrics

  def train_flops_per_example(self, seq_len: int) -> float:
    return self.model_config.train_flops_per_token(seq_len) * seq_len

  @staticmethod
  def tokens_per_example(seq_len: int) -> int:
    return seq_len


@dataclasses.dataclass(frozen=True)
class PreferenceObjective:
  """Bradley-Terry reward modelling: L = -log sigmoid(r(x, y+) - r(x, y-)) per pair.

  Batch: chosen_tokens, chosen_mask, rejected_tokens, rejected_mask [batch, length] (+
  chosen_response_mask, rejected_response_mask under the log-prob readout); the prompt is
  inside both sequences and the reward is read at each sequence's last real token. Chosen and
  rejected go through the network as one concatenated batch (one forward, not two).

  Metric sums (divided by `weight` = number of pairs): loss, accuracy (ties count as correct, as
  in the paper), margin (r+ - r-), reward (mean of both rewards) and reward_sq (mean square, so
  std = sqrt(reward_sq - reward^2)).
  """

  model_config: TransformerConfig

  # Parameters that shift every reward by the same constant: Bradley-Terry sees only reward
  # differences, so their gradient is exactly zero (rounding noise that Adafactor would turn
  # into full-size random steps). They stay at their initial (probed) values. The final norm's
  # bias is one of them only when nothing but the last hidden state's projection reads it (the
  # log-prob readout reads it through the LM head).
  @property
  def frozen(self) -> tuple[str, ...]:
    if self.model_config.reads_logprobs:
      return ("reward_head/bias",)
    return ("reward_head/bias", "decoder/final_norm/bias")

  @property
  def batch_features(self) -> tuple[str, ...]:
    base = ("chosen_tokens", "chosen_mask", "rejected_tokens", "rejected_mask")
    if self.model_config.reads_logprobs:
      return base + ("chosen_response_mask", "rejected_response_mask")
    return base

  def trainable(self, path: str) -> bool:
    return path not in self.frozen

  @property
  def module(self) -> nn.Module:
    return RewardModel(self.model_config)

  def dummy_batch(self, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    shape = (batch_size, seq_len)
    return {k: (np.zeros if k.endswith("_tokens") else np.ones)(shape, np.int32)
            for k in self.batch_features}

  def init_variables(self, rng: Array, batch: Batch) -> Any:
    return self.module.init(rng, batch["chosen_tokens"], batch["chosen_mask"],
                            batch.get("chosen_response_mask"))

  def check_host_batch(self, batch: dict[str, np.ndarray]) -> None:
    """Refuses a host batch the model cannot read exactly (the trainers call it before a
    batch is sharded): responses longer than the log-prob readout's window."""
    if self.model_config.reads_logprobs:
      for side in ("chosen", "rejected"):
        check_response_window(batch[f"{side}_mask"], batch.get(f"{side}_response_mask"),
                              self.model_config.logprob_window,
                              name=f"a training batch's {side} sequences")

  def rewards(self, params: Any, batch: Batch, rng: Array | None = None,
              dropout_rate: float | Array | None = None) -> tuple[Array, Array]:
    """(r_chosen [batch], r_rejected [batch]); dropout only with an rng (rate: the config's
    unless given, possibly traced: one rate per vmapped member)."""
    n = batch["chosen_tokens"].shape[0]
    tokens = jnp.concatenate([batch["chosen_tokens"], batch["rejected_tokens"]], axis=0)
    mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], axis=0)
    response_mask = (jnp.concatenate([batch["chosen_response_mask"],
                                      batch["rejected_response_mask"]], axis=0)
                     if self.model_config.reads_logprobs else None)
    r = forward(self.module, params, rng, tokens, mask, response_mask,
                dropout_rate=dropout_rate)
    return r[:n], r[n:]

  def _sums(self, r_chosen: Array, r_rejected: Array, weights: Array
            ) -> tuple[Array, dict[str, Array]]:
    loss = jnp.sum(losses.bradley_terry_loss(r_chosen, r_rejected) * weights)
    mean_r = 0.5 * (r_chosen + r_rejected)
    mean_sq = 0.5 * (jnp.square(r_chosen) + jnp.square(r_rejected))
    return loss, {
        "loss": loss,
        "accuracy": jnp.sum(losses.pairwise_accuracy(r_chosen, r_rejected) * weights),
        "margin": jnp.sum((r_chosen - r_rejected) * weights),
        "reward": jnp.sum(mean_r * weights),
        "reward_sq": jnp.sum(mean_sq * weights),
        "weight": jnp.sum(weights),
    }

  def loss(self, params: Any, batch: Batch, rng: Array | None,
           dropout_rate: float | Array | None = None) -> tuple[Array, dict[str, Array]]:
    r_chosen, r_rejected = self.rewards(params, batch, rng, dropout_rate)
    return self._sums(r_chosen, r_rejected, jnp.ones_like(r_chosen))

  def eval_metrics(self, params: Any, batch: Batch, valid: Array) -> dict[str, Array]:
    r_chosen, r_rejected = self.rewards(params, batch)
    return self._sums(r_chosen, r_rejected, valid.astype(jnp.float32))[1]

  def train_flops_per_example(self, seq_len: int) -> float:
    # Two sequences per pair, forward + backward (3x the forward); no LM head (the scalar
    # head's FLOPs are negligible) except where the log-prob readout reads it (the last
    # logprob_window positions, or all).
    return 2 * 3 * self.model_config.reward_forward_flops(seq_len)

  @staticmethod
  def tokens_per_example(seq_len: int) -> int:
    return 2 * seq_len


def normalise_metrics(sums: dict[str, Any]) -> dict[str, float]:
  """Sums with a `weight` entry -> means (weight itself is kept as a count)."""
  weight = float(sums["weight"])
  return {k: (float(v) if k == "weight" else float(v) / max(weight, 1e-9))
          for k, v in sums.items()}


def sum_metrics(a: dict[str, Array], b: dict[str, Array]) -> dict[str, Array]:
  return jax.tree_util.tree_map(jnp.add, a, b)
