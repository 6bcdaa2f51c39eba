"""WARM reward models with the log-prob readout, as transformers models (`trust_remote_code`).

Where it sits: after the pipeline. `warm_jax.hf.exporter` copies this file, as it is, into the
export dir of a reward model trained with `TransformerConfig.reward_readout='hidden_logprob'`,
and points config.json's `auto_map` at it, so that

  AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)

scores text as warm-jax's `RewardModel` does (`warm_jax.models.heads`). This file imports
torch and transformers only (never warm_jax): it runs wherever the export is copied.

Each class is the family's stock `*ForCausalLM` (backbone + LM head, tied or untied) plus the
reward head, and returns the reward as `logits` [batch, 1] like a sequence classifier:

  r = score.weight . h_last + logprob_score.weight . [softmin lp, mean lp, sum lp] + score.bias

  h_last   the final hidden state at the last real token (the EOS that ends the summary)
  lp_t     log p(token_t | tokens_<t) under the model's own LM head (logits soft-capped when
           config.final_logit_softcapping is set), for every response token t
  response the tokens after the LAST occurrence of config.warm_response_separator_ids (the
           ` TL;DR:` marker as the exported tokenizer encodes it) up to the last real token:
           the summary and its EOS, exactly warm-jax's response_mask
  softmin  -tau * logsumexp(-lp / tau), tau = config.warm_logprob_softmin_temperature

A row without the separator is refused (ValueError naming the row): warm-jax never scores a
sequence without its prompt's marker. Real tokens are those of attention_mask (else the ids
that are not config.pad_token_id); pad on the right, as the exported tokenizer does. The model
type is warm-jax's own (`warm_reward_<family>`), so loading without trust_remote_code fails
instead of silently building the stock classifier, which would ignore the log-prob term.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (GemmaConfig, GemmaForCausalLM, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM)
from transformers.modeling_outputs import SequenceClassifierOutputWithPast

LOGPROB_FEATURES = ("softmin", "mean", "sum")


def response_mask_from_ids(input_ids: torch.Tensor, real: torch.Tensor,
                           separator_ids: list[int]) -> torch.Tensor:
  """[batch, length] bool: the real tokens after the last occurrence of `separator_ids` among
  each row's real tokens. Raises ValueError for a row without it."""
  k = len(separator_ids)
  batch, length = input_ids.shape
  if length < k:
    raise ValueError(f"sequences of {length} tokens cannot hold the response separator "
                     f"{separator_ids} (the prompt's marker)")
  sep = torch.tensor(separator_ids, dtype=input_ids.dtype, device=input_ids.device)
  windows = input_ids.unfold(1, k, 1)  # [batch, length - k + 1, k]
  found = (windows == sep).all(-1) & real.unfold(1, k, 1).all(-1)
  starts = torch.arange(length - k + 1, device=input_ids.device)
  last = torch.where(found, starts, torch.full_like(starts, -1)).max(-1).values  # [batch]
  missing = (last < 0).nonzero().flatten().tolist()
  if missing:
    raise ValueError(
        f"row {missing[0]} has no response separator {separator_ids} (the prompt's TL;DR "
        "marker as this model's tokenizer encodes it): the reward model reads the summary "
        "after it; pass the post, the marker and the summary (see README.md)")
  positions = torch.arange(length, device=input_ids.device)
  return real & (positions[None, :] >= (last + k)[:, None])


def response_log_prob_features(logits: torch.Tensor, input_ids: torch.Tensor,
                               response: torch.Tensor, temperature: float) -> torch.Tensor:
  """[batch, 3] (softmin, mean, sum) of log p(token_t | tokens_<t) over the response tokens
  (warm_jax.models.heads.response_log_prob_features); logits [batch, length, vocab]."""
  logits = logits[:, :-1].float()
  target = logits.gather(-1, input_ids[:, 1:, None].long())[..., 0]
  lp = target - torch.logsumexp(logits, dim=-1)
  m = response[:, 1:].float()
  count = m.sum(-1)
  total = (lp * m).sum(-1)
  mean = total / count.clamp(min=1.0)
  neg = torch.where(m > 0, -lp / temperature, torch.full_like(lp, -float("inf")))
  softmin = -temperature * torch.logsumexp(neg, dim=-1)
  softmin = torch.where(count > 0, softmin, torch.zeros_like(softmin))
  return torch.stack([softmin, mean, total], dim=-1)


class _LogProbRewardMixin:
  """The reward head and forward pass shared by the families' classes below."""

  def _add_reward_head(self, config) -> None:
    width = config.hidden_size
    self.score = nn.Linear(width, 1, bias=True)
    self.logprob_score = nn.Linear(len(LOGPROB_FEATURES), 1, bias=False)

  def forward(self, input_ids: torch.Tensor | None = None,
              attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
              return_dict: bool | None = None, **kwargs) -> SequenceClassifierOutputWithPast:
    if input_ids is None:
      raise ValueError("this reward model reads its response from input_ids (the tokens after "
                       "the TL;DR marker): pass input_ids, not inputs_embeds")
    config = self.config
    if attention_mask is not None:
      real = attention_mask.bool()
    elif config.pad_token_id is not None:
      real = input_ids != config.pad_token_id
    else:
      real = torch.ones_like(input_ids, dtype=torch.bool)
    kwargs.pop("token_type_ids", None)
    kwargs.pop("use_cache", None)
    backbone = getattr(self, self.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                      **kwargs).last_hidden_state
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = torch.where(real, positions, torch.zeros_like(positions)).max(-1).values
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    h_last = hidden[rows, last].float()
    response = response_mask_from_ids(input_ids, real, list(config.warm_response_separator_ids))
    # LM logits only from the position before the batch's first response token on (the
    # prompt's log-probs are never read; warm-jax's logprob_window saves the same way)
    first = int(response.float().argmax(-1).min()) if response.any() else input_ids.shape[1]
    lo = max(first - 1, 0)
    logits = self.lm_head(hidden[:, lo:]).float()
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is not None:
      logits = cap * torch.tanh(logits / cap)
    features = response_log_prob_features(logits, input_ids[:, lo:], response[:, lo:],
                                          float(config.warm_logprob_softmin_temperature))
    reward = (h_last @ self.score.weight.float().T + self.score.bias.float()
              + features @ self.logprob_score.weight.float().T)
    loss = None
    if labels is not None:
      loss = nn.functional.mse_loss(reward[:, 0], labels.float().view(-1))
    return SequenceClassifierOutputWithPast(loss=loss, logits=reward)


class WarmRewardGPT2Config(GPT2Config):
  model_type = "warm_reward_gpt2"


class WarmRewardLlamaConfig(LlamaConfig):
  model_type = "warm_reward_llama"


class WarmRewardGemmaConfig(GemmaConfig):
  model_type = "warm_reward_gemma"


class WarmRewardGPT2(_LogProbRewardMixin, GPT2LMHeadModel):
  """GPT2LMHeadModel (transformer.*, lm_head tied to wte) + the log-prob reward head."""

  config_class = WarmRewardGPT2Config

  def __init__(self, config):
    super().__init__(config)
    self._add_reward_head(config)


class WarmRewardLlama(_LogProbRewardMixin, LlamaForCausalLM):
  """LlamaForCausalLM (model.*, lm_head tied or not) + the log-prob reward head."""

  config_class = WarmRewardLlamaConfig

  def __init__(self, config):
    super().__init__(config)
    self._add_reward_head(config)


class WarmRewardGemma(_LogProbRewardMixin, GemmaForCausalLM):
  """GemmaForCausalLM (model.*, lm_head tied to the unscaled embedding) + the reward head."""

  config_class = WarmRewardGemmaConfig

  def __init__(self, config):
    super().__init__(config)
    self._add_reward_head(config)
