"""Tiny random transformers models of each supported family, built from config (no download),
for the tests/test_hf_*.py files. Importing this module needs torch and transformers (the `hf`
extra): test files call `pytest.importorskip` first."""

from __future__ import annotations

import numpy as np
import torch
import transformers

FAMILIES = ("gpt2", "llama", "gemma")


def hf_config(family: str, *, vocab_size: int = 97, **overrides):
  """A tiny config of `family`; the shapes of gin/models/<family>_tiny.gin by default."""
  if family == "gpt2":
    fields = dict(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_inner=256,
                  n_positions=256, bos_token_id=1, eos_token_id=1, pad_token_id=0)
    fields.update(overrides)
    return transformers.GPT2Config(**fields)
  if family == "llama":
    fields = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    fields.update(overrides)
    return transformers.LlamaConfig(**fields)
  if family == "gemma":
    fields = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                  max_position_embeddings=256, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    fields.update(overrides)
    return transformers.GemmaConfig(**fields)
  raise ValueError(family)


_CLASSES = {
    ("gpt2", "lm"): "GPT2LMHeadModel", ("gpt2", "reward"): "GPT2ForSequenceClassification",
    ("llama", "lm"): "LlamaForCausalLM", ("llama", "reward"): "LlamaForSequenceClassification",
    ("gemma", "lm"): "GemmaForCausalLM", ("gemma", "reward"): "GemmaForSequenceClassification",
}


def build(family: str, *, head: str = "lm", seed: int = 0, **config_overrides):
  """A random model in eval mode. Norm weights are perturbed away from their init (ones /
  zeros), so a norm convention mix-up (Gemma's 1 + w) cannot hide."""
  torch.manual_seed(seed)
  config = hf_config(family, **config_overrides)
  if head == "reward":
    config.num_labels = 1
  model = getattr(transformers, _CLASSES[family, head])(config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name or ".ln_" in name:
        param.add_(0.2 * torch.randn_like(param))
  return model


def hf_logits(model, tokens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
  with torch.no_grad():
    out = model(torch.tensor(tokens),
                attention_mask=None if mask is None else torch.tensor(mask))
  return out.logits.float().numpy()
