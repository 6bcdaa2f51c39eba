"""Our reward model as a Hugging Face GPT-2 sequence classifier: the peers' side of benchmarks 1
and 4.

Where it sits: `bench/rm_vs_trl.py` gives TRL's RewardTrainer a `GPT2ForSequenceClassification`
of our decoder's shape, initialised from our own init (and checks that both compute the same
rewards before timing anything); `bench/averager.py` writes the members it averages as HF
safetensors for mergekit. Only the GPT-2-compatible configuration of our decoder converts
(learned positions, LayerNorm, GELU, tied embeddings, biases): the small/base presets.

Name map (ours -> GPT-2; GPT-2's Conv1D weights are [in, out] like our kernels):
  decoder/token_embed/embedding            transformer.wte.weight
  decoder/position_embed/embedding         transformer.wpe.weight
  layer_i/pre_attention_norm/{scale,bias}  transformer.h.i.ln_1.{weight,bias}
  layer_i/attention/{query,key,value}      transformer.h.i.attn.c_attn.{weight,bias} (fused)
  layer_i/attention/out                    transformer.h.i.attn.c_proj
  layer_i/pre_mlp_norm                     transformer.h.i.ln_2
  layer_i/mlp/wi, wo                       transformer.h.i.mlp.c_fc, c_proj
  decoder/final_norm                       transformer.ln_f
  reward_head/kernel [d, 1]                score.weight [1, d]
We have no key bias (GPT-2 does: it is written as zeros) and GPT-2's score has no bias (ours is
frozen at 0 by the Bradley-Terry objective and must be 0 to convert).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def check_gpt2_compatible(config) -> None:
  """Raises unless `config` (a TransformerConfig) has GPT-2's architecture."""
  wrong = {name: getattr(config, name) for name, want in (
      ("norm", "layernorm"), ("positions", "learned"), ("mlp_activation", "gelu"),
      ("tie_embeddings", True), ("use_bias", True), ("logit_softcap", None),
      ("num_kv_heads", None), ("head_dim", None)) if getattr(config, name) != want}
  if wrong:
    raise ValueError(f"TransformerConfig fields {wrong} have no GPT-2 equivalent: only the "
                     "GPT-2-shaped presets (tiny, small, base) convert")


def gpt2_config(config, *, num_labels: int = 1, pad_token_id: int = 0,
                eos_token_id: int = 1):
  """A transformers `GPT2Config` of our decoder's shape (no download; dropout off)."""
  from transformers import GPT2Config
  check_gpt2_compatible(config)
  return GPT2Config(
      vocab_size=config.vocab_size, n_positions=config.max_len, n_embd=config.d_model,
      n_layer=config.num_layers, n_head=config.num_heads, n_inner=config.mlp_dim,
      activation_function="gelu_new",  # tanh approximation = flax's nn.gelu default
      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=config.norm_eps,
      num_labels=num_labels, pad_token_id=pad_token_id, bos_token_id=eos_token_id,
      eos_token_id=eos_token_id,
      architectures=["GPT2ForSequenceClassification"])


def rm_params_to_gpt2_state_dict(params: Any, *, config) -> dict[str, np.ndarray]:
  """Our RewardModel params (nested dict of arrays) -> GPT-2 sequence-classifier tensors
  (float32 numpy, C-contiguous), in GPT-2's names."""
  check_gpt2_compatible(config)
  d = config.d_model
  dec = params["decoder"]

  def a(x):
    return np.ascontiguousarray(np.asarray(x, np.float32))

  head_bias = np.asarray(params["reward_head"]["bias"])
  if np.any(head_bias != 0):
    raise ValueError(f"reward_head/bias is {head_bias}: GPT-2's score layer has no bias, so "
                     "only a zero bias converts exactly")
  out = {"transformer.wte.weight": a(dec["token_embed"]["embedding"]),
         "transformer.wpe.weight": a(dec["position_embed"]["embedding"])}
  for i in range(config.num_layers):
    layer, pre = dec[f"layer_{i}"], f"transformer.h.{i}."
    att = layer["attention"]
    out[pre + "ln_1.weight"] = a(layer["pre_attention_norm"]["scale"])
    out[pre + "ln_1.bias"] = a(layer["pre_attention_norm"]["bias"])
    out[pre + "attn.c_attn.weight"] = a(np.concatenate(
        [np.asarray(att[n]["kernel"]).reshape(d, d) for n in ("query", "key", "value")], axis=1))
    out[pre + "attn.c_attn.bias"] = a(np.concatenate(
        [np.asarray(att["query"]["bias"]).reshape(d), np.zeros(d, np.float32),
         np.asarray(att["value"]["bias"]).reshape(d)]))
    out[pre + "attn.c_proj.weight"] = a(np.asarray(att["out"]["kernel"]).reshape(d, d))
    out[pre + "attn.c_proj.bias"] = a(att["out"]["bias"])
    out[pre + "ln_2.weight"] = a(layer["pre_mlp_norm"]["scale"])
    out[pre + "ln_2.bias"] = a(layer["pre_mlp_norm"]["bias"])
    out[pre + "mlp.c_fc.weight"] = a(layer["mlp"]["wi"]["kernel"])
    out[pre + "mlp.c_fc.bias"] = a(layer["mlp"]["wi"]["bias"])
    out[pre + "mlp.c_proj.weight"] = a(layer["mlp"]["wo"]["kernel"])
    out[pre + "mlp.c_proj.bias"] = a(layer["mlp"]["wo"]["bias"])
  out["transformer.ln_f.weight"] = a(dec["final_norm"]["scale"])
  out["transformer.ln_f.bias"] = a(dec["final_norm"]["bias"])
  out["score.weight"] = a(np.asarray(params["reward_head"]["kernel"]).T)
  return out


def gpt2_reward_model(params: Any, *, config):
  """A torch `GPT2ForSequenceClassification` (float32, eval mode) holding our params."""
  import torch
  from transformers import GPT2ForSequenceClassification
  model = GPT2ForSequenceClassification(gpt2_config(config))
  state = {k: torch.tensor(v)
           for k, v in rm_params_to_gpt2_state_dict(params, config=config).items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  # Buffers (GPT-2's causal-mask 'bias'/'masked_bias', if this transformers version keeps
  # them) are not parameters; every parameter must have been set.
  params_missing = [k for k in missing if k in dict(model.named_parameters())]
  if params_missing or unexpected:
    raise ValueError(f"GPT-2 conversion: missing {params_missing}, unexpected {unexpected}")
  return model.float().eval()


def save_gpt2_checkpoint(params: Any, *, config, directory: str) -> int:
  """Writes `directory/{config.json, model.safetensors}` (what mergekit and
  `from_pretrained` read); returns the bytes written."""
  import os
  from safetensors.numpy import save_file
  os.makedirs(directory, exist_ok=True)
  gpt2_config(config).save_pretrained(directory)
  path = os.path.join(directory, "model.safetensors")
  save_file(rm_params_to_gpt2_state_dict(params, config=config), path, metadata={"format": "pt"})
  return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
