"""Per-family maps between Hugging Face decoders and ours: config.json fields and tensor names.

Where it sits: under `importer` and `exporter`. A `Family` knows, for one `model_type` of
config.json (gpt2, llama, gemma):
- `config_from_hf(hf_config)` -> `TransformerConfig` (every option that changes the
  arithmetic is read or refused by name: no silent approximation);
- `config_to_hf(config)` -> the config.json fields that rebuild that shape in transformers;
- `tensor_maps(config, head, prefix)` -> one `TensorMap` per Hugging Face tensor: its name,
  shape, layout, and which of our leaves it holds.

Layouts. torch `nn.Linear` stores [out, in]; GPT-2's `Conv1D` stores [in, out]; our kernels are
[*in, *out] with the head axes split out (query [d_model, heads, head_dim], out [heads,
head_dim, d_model]). A tensor may hold several of our leaves concatenated along its output
axis (GPT-2's fused c_attn = query | key | value). Our decoder has no key bias (softmax ignores
it: see transformer.py), so GPT-2's is dropped on import and written as zeros on export.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from warm_jax.hf.errors import ConversionError
from warm_jax.models.config import TransformerConfig

# "reward_logprob": a reward model with the log-prob readout (reward_readout='hidden_logprob'),
# exported as the family's *ForCausalLM plus score (weight, bias) and logprob_score, run by the
# custom class of warm_jax/hf/modeling_warm_reward.py (`Family.classes`)
HEADS = ("lm", "reward", "reward_logprob")
LAYOUTS = ("copy", "linear", "conv1d", "vector")


@dataclasses.dataclass(frozen=True)
class TensorMap:
  """One Hugging Face tensor and the leaves of our params tree it holds.

  Attributes:
    hf_name: the tensor's name in the safetensors files (prefix included).
    hf_shape: its shape.
    layout: "copy" (same array), "linear" (torch [out, in]), "conv1d" ([in, out]) or
      "vector" (a 1-D bias or norm scale).
    parts: (our leaf path or None, width) per slice of the output axis, in order; None is a
      slice our model does not have (dropped on import, zeros on export).
  """

  hf_name: str
  hf_shape: tuple[int, ...]
  layout: str
  parts: tuple[tuple[str | None, int], ...]

  @property
  def leaves(self) -> tuple[str, ...]:
    return tuple(leaf for leaf, _ in self.parts if leaf is not None)

  def to_ours(self, array: np.ndarray, leaf_shapes: dict[str, tuple[int, ...]]
              ) -> dict[str, np.ndarray]:
    """The HF array -> {leaf path: array of the leaf's shape}."""
    if self.layout == "copy":
      ((leaf, _),) = self.parts
      return {leaf: array.reshape(leaf_shapes[leaf])}
    matrix = array.T if self.layout == "linear" else array
    out, start = {}, 0
    for leaf, width in self.parts:
      piece = matrix[start:start + width] if self.layout == "vector" \
          else matrix[:, start:start + width]
      start += width
      if leaf is not None:
        out[leaf] = piece.reshape(leaf_shapes[leaf])
    return out

  def to_hf(self, values: dict[str, np.ndarray]) -> np.ndarray:
    """{leaf path: our array} -> the HF array (hf_shape)."""
    if self.layout == "copy":
      ((leaf, _),) = self.parts
      return values[leaf].reshape(self.hf_shape)
    if self.layout == "vector":
      pieces = [values[leaf].reshape(width) if leaf is not None else None
                for leaf, width in self.parts]
      dtype = next(p.dtype for p in pieces if p is not None)
      return np.concatenate([p if p is not None else np.zeros(width, dtype)
                             for p, (_, width) in zip(pieces, self.parts)])
    rows = self.hf_shape[1] if self.layout == "linear" else self.hf_shape[0]
    pieces = [values[leaf].reshape(rows, width) if leaf is not None else None
              for leaf, width in self.parts]
    dtype = next(p.dtype for p in pieces if p is not None)
    matrix = np.concatenate([p if p is not None else np.zeros((rows, width), dtype)
                             for p, (_, width) in zip(pieces, self.parts)], axis=1)
    return np.ascontiguousarray(matrix.T) if self.layout == "linear" else matrix


def _flat(shape: Sequence[int]) -> int:
  return math.prod(shape)


@dataclasses.dataclass(frozen=True)
class Family:
  """One Hugging Face model family (a config.json `model_type`).

  Attributes:
    model_type: config.json's model_type.
    classes: transformers class names for our heads: {"lm": ..., "reward": ...,
      "reward_logprob": the class of modeling_warm_reward.py, whose config's model_type is
      "warm_reward_<model_type>"}.
    prefixes: backbone name prefixes a checkpoint may use (first = what we write), e.g.
      "model." for LlamaForCausalLM, "" for a bare LlamaModel.
    ignorable: name suffixes of stored buffers that carry no weights (GPT-2's causal-mask
      buffers, old Llama's rotary inv_freq).
    from_hf, to_hf, layer_maps, global_maps: the family's functions (see module docstring).
  """

  model_type: str
  classes: dict[str, str]
  prefixes: tuple[str, ...]
  ignorable: tuple[str, ...]
  from_hf: Callable[[dict[str, Any]], TransformerConfig]
  to_hf: Callable[[TransformerConfig], dict[str, Any]]
  layer_maps: Callable[[TransformerConfig, str, int], list[TensorMap]]
  embed_name: str

  def config_from_hf(self, hf_config: dict[str, Any]) -> TransformerConfig:
    try:
      return self.from_hf(hf_config)
    except KeyError as e:
      raise ConversionError(f"config.json of this {self.model_type} model has no {e} field: "
                            "the file is incomplete; re-save it with transformers") from e

  def config_to_hf(self, config: TransformerConfig) -> dict[str, Any]:
    return self.to_hf(config)

  def tensor_maps(self, config: TransformerConfig, *, head: str, prefix: str
                  ) -> list[TensorMap]:
    """Every tensor of a `head` model ("lm", "reward" or "reward_logprob") with backbone prefix
    `prefix`."""
    if head not in HEADS:
      raise ValueError(f"head={head!r}: use one of {HEADS}")
    maps = [m for i in range(config.num_layers) for m in self.layer_maps(config, prefix, i)]
    d, vocab = config.d_model, config.vocab_size
    maps.append(TensorMap(prefix + self.embed_name, (vocab, d), "copy",
                          (("decoder/token_embed/embedding", vocab * d),)))
    if config.positions == "learned":
      maps.append(TensorMap(prefix + "wpe.weight", (config.max_len, d), "copy",
                            (("decoder/position_embed/embedding", config.max_len * d),)))
    maps.extend(_norm_maps(config, prefix + _FINAL_NORM[self.model_type], "decoder/final_norm"))
    if head in ("lm", "reward_logprob") and not config.tie_embeddings:
      maps.append(TensorMap("lm_head.weight", (vocab, d), "linear", (("lm_head/kernel", vocab),)))
    if head in ("reward", "reward_logprob"):
      maps.append(TensorMap("score.weight", (1, d), "linear", (("reward_head/kernel", 1),)))
    if head == "reward_logprob":  # the custom class's score has a bias, and the log-prob term
      maps.append(TensorMap("score.bias", (1,), "vector", (("reward_head/bias", 1),)))
      maps.append(TensorMap("logprob_score.weight", (1, 3), "linear",
                            (("reward_head/logprob_kernel", 1),)))
    return maps


_FINAL_NORM = {"gpt2": "ln_f", "llama": "norm", "gemma": "norm"}


def _norm_maps(config: TransformerConfig, hf: str, ours: str) -> list[TensorMap]:
  d = config.d_model
  maps = [TensorMap(f"{hf}.weight", (d,), "vector", ((f"{ours}/scale", d),))]
  if config.norm == "layernorm":
    maps.append(TensorMap(f"{hf}.bias", (d,), "vector", ((f"{ours}/bias", d),)))
  return maps


def _refuse(model_type: str, key: str, value: Any, why: str) -> None:
  raise ConversionError(f"{model_type} config.json has {key}={value!r}: {why}")


def _rope(model_type: str, c: dict[str, Any]) -> tuple[float, tuple | None]:
  """(rope_theta, Llama 3 scaling or None) from transformers 5's rope_parameters or the older
  rope_theta / rope_scaling fields."""
  params = dict(c.get("rope_parameters") or {})
  legacy = c.get("rope_scaling") or {}
  theta = float(params.get("rope_theta", c.get("rope_theta", 10_000.0)))
  scaling = {**legacy, **params}
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if c.get("partial_rotary_factor", 1.0) != 1.0:
    _refuse(model_type, "partial_rotary_factor", c["partial_rotary_factor"],
            "partial rotary embeddings are not supported")
  if kind == "default":
    return theta, None
  if kind == "llama3":
    return theta, (float(scaling["factor"]), float(scaling["low_freq_factor"]),
                   float(scaling["high_freq_factor"]),
                   int(scaling["original_max_position_embeddings"]))
  _refuse(model_type, "rope type", kind, "supported: default, llama3")
  raise AssertionError


def _rope_to_hf(config: TransformerConfig) -> dict[str, Any]:
  params: dict[str, Any] = {"rope_theta": config.rope_theta, "rope_type": "default"}
  if config.rope_scaling is not None:
    factor, low, high, original = config.rope_scaling
    params.update(rope_type="llama3", factor=factor, low_freq_factor=low,
                  high_freq_factor=high, original_max_position_embeddings=original)
  return {"rope_parameters": params}


def _expressible(config: TransformerConfig, model_type: str, **allowed: tuple) -> None:
  """Refuses to export a config the family cannot represent, naming the field."""
  for field, values in allowed.items():
    have = getattr(config, field)
    if have not in values:
      raise ConversionError(
          f"TransformerConfig.{field}={have!r} cannot be written as a {model_type} model "
          f"(it needs one of {values}); export with the family the model was built as "
          "(--family)")


# --- GPT-2 -------------------------------------------------------------------------------------

_GPT2_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}


def _gpt2_from_hf(c: dict[str, Any]) -> TransformerConfig:
  act = c.get("activation_function", "gelu_new")
  if act not in _GPT2_ACTIVATIONS:
    _refuse("gpt2", "activation_function", act,
            f"supported: {sorted(_GPT2_ACTIVATIONS)} (our gelu is the tanh approximation)")
  for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                    ("add_cross_attention", False)):
    if c.get(key, want) != want:
      _refuse("gpt2", key, c[key], f"only {key}={want} is supported")
  d = c["n_embd"]
  return TransformerConfig(
      vocab_size=c["vocab_size"], d_model=d, num_layers=c["n_layer"], num_heads=c["n_head"],
      mlp_dim=c.get("n_inner") or 4 * d, max_len=c["n_positions"], norm="layernorm",
      positions="learned", mlp_activation=_GPT2_ACTIVATIONS[act],
      tie_embeddings=bool(c.get("tie_word_embeddings", True)), use_bias=True,
      norm_eps=float(c.get("layer_norm_epsilon", 1e-5)))


def _gpt2_to_hf(config: TransformerConfig) -> dict[str, Any]:
  _expressible(config, "gpt2", norm=("layernorm",), positions=("learned",), use_bias=(True,),
               num_kv_heads=(None, config.num_heads),
               head_dim=(None, config.d_model // config.num_heads),
               mlp_activation=("gelu", "relu"), norm_scale_offset=(0.0,),
               scale_embeddings=(False,), logit_softcap=(None,))
  return {"model_type": "gpt2", "vocab_size": config.vocab_size, "n_embd": config.d_model,
          "n_layer": config.num_layers, "n_head": config.num_heads, "n_inner": config.mlp_dim,
          "n_positions": config.max_len,
          "activation_function": "gelu_new" if config.mlp_activation == "gelu" else "relu",
          "layer_norm_epsilon": config.norm_eps, "tie_word_embeddings": config.tie_embeddings,
          "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
          "reorder_and_upcast_attn": False}


def _gpt2_layer(config: TransformerConfig, prefix: str, i: int) -> list[TensorMap]:
  d, f = config.d_model, config.mlp_dim
  hf, ours = f"{prefix}h.{i}", f"decoder/layer_{i}"
  att = f"{ours}/attention"
  return [
      *_norm_maps(config, f"{hf}.ln_1", f"{ours}/pre_attention_norm"),
      TensorMap(f"{hf}.attn.c_attn.weight", (d, 3 * d), "conv1d",
                ((f"{att}/query/kernel", d), (f"{att}/key/kernel", d),
                 (f"{att}/value/kernel", d))),
      TensorMap(f"{hf}.attn.c_attn.bias", (3 * d,), "vector",
                ((f"{att}/query/bias", d), (None, d), (f"{att}/value/bias", d))),
      TensorMap(f"{hf}.attn.c_proj.weight", (d, d), "conv1d", ((f"{att}/out/kernel", d),)),
      TensorMap(f"{hf}.attn.c_proj.bias", (d,), "vector", ((f"{att}/out/bias", d),)),
      *_norm_maps(config, f"{hf}.ln_2", f"{ours}/pre_mlp_norm"),
      TensorMap(f"{hf}.mlp.c_fc.weight", (d, f), "conv1d", ((f"{ours}/mlp/wi/kernel", f),)),
      TensorMap(f"{hf}.mlp.c_fc.bias", (f,), "vector", ((f"{ours}/mlp/wi/bias", f),)),
      TensorMap(f"{hf}.mlp.c_proj.weight", (f, d), "conv1d", ((f"{ours}/mlp/wo/kernel", d),)),
      TensorMap(f"{hf}.mlp.c_proj.bias", (d,), "vector", ((f"{ours}/mlp/wo/bias", d),)),
  ]


# --- Llama and Gemma (one layout, different numerics) ------------------------------------------

def _llama_like_from_hf(c: dict[str, Any], *, model_type: str, activations: dict[str, str],
                        default_tie: bool, gemma: bool) -> TransformerConfig:
  act = c.get("hidden_activation") or c.get("hidden_act", "silu")
  if act not in activations:
    _refuse(model_type, "hidden_act", act, f"supported: {sorted(activations)}")
  for key in ("attention_bias", "mlp_bias"):
    if c.get(key):
      _refuse(model_type, key, c[key], "biased projections are not supported")
  if c.get("use_bidirectional_attention"):
    _refuse(model_type, "use_bidirectional_attention", True, "the decoder is causal")
  d, heads = c["hidden_size"], c["num_attention_heads"]
  head_dim = c.get("head_dim") or d // heads
  kv = c.get("num_key_value_heads") or heads
  theta, scaling = _rope(model_type, c)
  return TransformerConfig(
      vocab_size=c["vocab_size"], d_model=d, num_layers=c["num_hidden_layers"],
      num_heads=heads, num_kv_heads=None if kv == heads else kv,
      head_dim=None if head_dim * heads == d else head_dim, mlp_dim=c["intermediate_size"],
      max_len=c["max_position_embeddings"], norm="rmsnorm", positions="rotary",
      rope_theta=theta, rope_scaling=scaling, mlp_activation=activations[act],
      tie_embeddings=bool(c.get("tie_word_embeddings", default_tie)), use_bias=False,
      norm_eps=float(c.get("rms_norm_eps", 1e-6)),
      norm_scale_offset=1.0 if gemma else 0.0, scale_embeddings=gemma)


def _llama_like_to_hf(config: TransformerConfig, *, model_type: str, act: str,
                      gemma: bool) -> dict[str, Any]:
  _expressible(config, model_type, norm=("rmsnorm",), positions=("rotary",),
               use_bias=(False,), mlp_activation=("geglu" if gemma else "swiglu",),
               norm_scale_offset=(1.0 if gemma else 0.0,), scale_embeddings=(gemma,),
               logit_softcap=(None,))
  return {"model_type": model_type, "vocab_size": config.vocab_size,
          "hidden_size": config.d_model, "num_hidden_layers": config.num_layers,
          "num_attention_heads": config.num_heads, "num_key_value_heads": config.kv_heads,
          "head_dim": config.per_head_dim, "intermediate_size": config.mlp_dim,
          "max_position_embeddings": config.max_len, "rms_norm_eps": config.norm_eps,
          "hidden_act": act, "tie_word_embeddings": config.tie_embeddings,
          "attention_bias": False, **({} if gemma else {"mlp_bias": False}),
          **_rope_to_hf(config)}


def _llama_like_layer(config: TransformerConfig, prefix: str, i: int) -> list[TensorMap]:
  d, f = config.d_model, config.mlp_dim
  q, kv = config.num_heads * config.per_head_dim, config.kv_heads * config.per_head_dim
  hf, ours = f"{prefix}layers.{i}", f"decoder/layer_{i}"
  att, mlp = f"{ours}/attention", f"{ours}/mlp"
  return [
      *_norm_maps(config, f"{hf}.input_layernorm", f"{ours}/pre_attention_norm"),
      TensorMap(f"{hf}.self_attn.q_proj.weight", (q, d), "linear", ((f"{att}/query/kernel", q),)),
      TensorMap(f"{hf}.self_attn.k_proj.weight", (kv, d), "linear", ((f"{att}/key/kernel", kv),)),
      TensorMap(f"{hf}.self_attn.v_proj.weight", (kv, d), "linear",
                ((f"{att}/value/kernel", kv),)),
      TensorMap(f"{hf}.self_attn.o_proj.weight", (d, q), "linear", ((f"{att}/out/kernel", d),)),
      *_norm_maps(config, f"{hf}.post_attention_layernorm", f"{ours}/pre_mlp_norm"),
      TensorMap(f"{hf}.mlp.gate_proj.weight", (f, d), "linear", ((f"{mlp}/wi/kernel", f),)),
      TensorMap(f"{hf}.mlp.up_proj.weight", (f, d), "linear", ((f"{mlp}/wi_gate/kernel", f),)),
      TensorMap(f"{hf}.mlp.down_proj.weight", (d, f), "linear", ((f"{mlp}/wo/kernel", d),)),
  ]


_GELU_TANH = {"gelu_pytorch_tanh": "geglu", "gelu_new": "geglu", "gelu_tanh": "geglu",
              # transformers maps Gemma's legacy "gelu" to the tanh approximation too
              "gelu": "geglu"}

FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        model_type="gpt2",
        classes={"lm": "GPT2LMHeadModel", "reward": "GPT2ForSequenceClassification",
                 "reward_logprob": "WarmRewardGPT2"},
        prefixes=("transformer.", ""), ignorable=(".attn.bias", ".attn.masked_bias"),
        from_hf=_gpt2_from_hf, to_hf=_gpt2_to_hf, layer_maps=_gpt2_layer,
        embed_name="wte.weight"),
    "llama": Family(
        model_type="llama",
        classes={"lm": "LlamaForCausalLM", "reward": "LlamaForSequenceClassification",
                 "reward_logprob": "WarmRewardLlama"},
        prefixes=("model.", ""), ignorable=(".rotary_emb.inv_freq",),
        from_hf=lambda c: _llama_like_from_hf(c, model_type="llama",
                                              activations={"silu": "swiglu"},
                                              default_tie=False, gemma=False),
        to_hf=lambda cfg: _llama_like_to_hf(cfg, model_type="llama", act="silu", gemma=False),
        layer_maps=_llama_like_layer, embed_name="embed_tokens.weight"),
    "gemma": Family(
        model_type="gemma",
        classes={"lm": "GemmaForCausalLM", "reward": "GemmaForSequenceClassification",
                 "reward_logprob": "WarmRewardGemma"},
        prefixes=("model.", ""), ignorable=(".rotary_emb.inv_freq",),
        from_hf=lambda c: _llama_like_from_hf(c, model_type="gemma", activations=_GELU_TANH,
                                              default_tie=True, gemma=True),
        to_hf=lambda cfg: _llama_like_to_hf(cfg, model_type="gemma", act="gelu_pytorch_tanh",
                                            gemma=True),
        layer_maps=_llama_like_layer, embed_name="embed_tokens.weight"),
}


def get_family(model_type: str | None, *, source: str) -> Family:
  """The family of a config.json model_type; a clear error for anything else."""
  if model_type not in FAMILIES:
    raise ConversionError(
        f"{source}: model_type {model_type!r} is not supported (supported: "
        f"{', '.join(sorted(FAMILIES))}). Gemma 2/3, Mistral, Qwen and others need their own "
        "entry in warm_jax/hf/families.py")
  return FAMILIES[model_type]


def head_of(hf_config: dict[str, Any], *, source: str) -> str:
  """"lm" or "reward" from config.json's architectures (a 1-label *ForSequenceClassification
  is a reward model)."""
  archs = hf_config.get("architectures") or []
  if not archs or not archs[0].endswith("ForSequenceClassification"):
    return "lm"
  labels = hf_config.get("num_labels") or len(hf_config.get("id2label") or {}) or 2
  if labels != 1:
    raise ConversionError(f"{source}: {archs[0]} with {labels} labels is a classifier, not a "
                          "reward model (num_labels must be 1)")
  return "reward"
