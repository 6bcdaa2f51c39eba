"""Accelerator memory a model needs, computed from its `TransformerConfig` alone.

Where it sits: planning, before a run (docs/backbones.md's table: which imported backbone fits
which GPU/TPU, with which mesh). For training: parameters (float32), gradients (float32),
optimizer state (Adafactor's factored second moments, exactly as optax lays them out; or
AdamW's two moments) and the activations the backward pass keeps (this trainer does not
rematerialise). For sampling: weights in the compute dtype and the KV cache.

Sharding: `param_shards` devices split parameters, gradients and optimizer state (the fsdp x
tensor part of the mesh); `batch_shards` devices split the batch (data x fsdp). The activation
count is an estimate (what XLA keeps depends on fusion; tests hold it to XLA's own figure for
small models within a factor of two); parameter and optimizer numbers are exact.

  python -m warm_jax.models.memory gin/models/gpt2.gin:50257 gin/models/llama2_7b.gin:32000 \
      --batch_size 8 --seq_len 1024     # a markdown table (preset:vocab_size ...)
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Sequence

from warm_jax.models.config import TransformerConfig

FLOAT32_BYTES = 4
GIB = 2**30
# optax.adafactor's default: a second moment is factored only if its two largest dims are >= this.
ADAFACTOR_MIN_DIM_TO_FACTOR = 128


def param_shapes(config: TransformerConfig, *, head: str = "lm") -> dict[str, tuple[int, ...]]:
  """{leaf path: shape} of LanguageModel ("lm"), RewardModel ("reward") or ValueModel
  ("value") parameters, from the config (the layout of transformer.py / heads.py)."""
  d, f, v = config.d_model, config.mlp_dim, config.vocab_size
  h, kv, hd = config.num_heads, config.kv_heads, config.per_head_dim
  gated = config.mlp_activation in ("swiglu", "geglu")
  shapes: dict[str, tuple[int, ...]] = {"decoder/token_embed/embedding": (v, d)}
  if config.positions == "learned":
    shapes["decoder/position_embed/embedding"] = (config.max_len, d)

  def norm(prefix):
    shapes[f"{prefix}/scale"] = (d,)
    if config.norm == "layernorm":
      shapes[f"{prefix}/bias"] = (d,)

  def dense(prefix, kernel, bias):
    shapes[f"{prefix}/kernel"] = kernel
    if bias is not None and config.use_bias:
      shapes[f"{prefix}/bias"] = bias

  for i in range(config.num_layers):
    layer = f"decoder/layer_{i}"
    norm(f"{layer}/pre_attention_norm")
    dense(f"{layer}/attention/query", (d, h, hd), (h, hd))
    dense(f"{layer}/attention/key", (d, kv, hd), None)  # never a key bias
    dense(f"{layer}/attention/value", (d, kv, hd), (kv, hd))
    dense(f"{layer}/attention/out", (h, hd, d), (d,))
    norm(f"{layer}/pre_mlp_norm")
    dense(f"{layer}/mlp/wi", (d, f), (f,))
    if gated:
      dense(f"{layer}/mlp/wi_gate", (d, f), (f,))
    dense(f"{layer}/mlp/wo", (f, d), (d,))
  norm("decoder/final_norm")
  if head == "lm" and not config.tie_embeddings:
    shapes["lm_head/kernel"] = (d, v)
  elif head in ("reward", "value"):
    shapes[f"{head}_head/kernel"] = (d, 1)
    shapes[f"{head}_head/bias"] = (1,)
  elif head != "lm":
    raise ValueError(f"head={head!r}: use 'lm', 'reward' or 'value'")
  return shapes


def adafactor_state_elements(shape: Sequence[int], *, factored: bool = True) -> int:
  """Elements of optax.adafactor's second-moment state for one parameter: the row and column
  statistics when its two largest dims are >= 128 (each drops one of those dims) plus a
  1-element placeholder for the full one, else the full one plus two 1-element placeholders."""
  shape = tuple(shape)
  if factored and len(shape) >= 2:
    order = sorted(range(len(shape)), key=lambda i: shape[i])
    second, largest = order[-2], order[-1]
    if shape[second] >= ADAFACTOR_MIN_DIM_TO_FACTOR:
      row = math.prod(s for i, s in enumerate(shape) if i != largest)
      col = math.prod(s for i, s in enumerate(shape) if i != second)
      return row + col + 1
  return math.prod(shape) + 2


def optimizer_state_bytes(shapes: dict[str, tuple[int, ...]], *, optimizer: str = "adafactor",
                          factored: bool = True, momentum: bool = False) -> int:
  """float32 optimizer state of these parameters (adafactor, adamw or sgd)."""
  params = sum(math.prod(s) for s in shapes.values())
  if optimizer == "adafactor":
    elements = sum(adafactor_state_elements(s, factored=factored) for s in shapes.values())
    return FLOAT32_BYTES * (elements + (params if momentum else 0))
  if optimizer == "adamw":
    return FLOAT32_BYTES * 2 * params
  if optimizer == "sgd":
    return FLOAT32_BYTES * (params if momentum else 0)
  raise ValueError(f"optimizer={optimizer!r}: use adafactor, adamw or sgd")


def activation_bytes(config: TransformerConfig, *, batch_size: int, seq_len: int) -> int:
  """Estimated bytes the forward pass keeps for the backward pass (no rematerialisation).

  Per layer and token: the block input and the norms' float32 intermediates, q/k/v (rotary:
  float32 copies), the float32 attention scores and probabilities (seq_len per head: the term
  that grows quadratically), the attention output, the MLP hidden activations (two more for a
  gated MLP); plus float32 logits, their softmax and gradient over the vocabulary.
  """
  c = 2 if config.dtype == "bfloat16" else 4
  d, f = config.d_model, config.mlp_dim
  h, kv, hd = config.num_heads, config.kv_heads, config.per_head_dim
  qkv = (h + 2 * kv) * hd
  per_token = (
      2 * (d * c + 2 * d * FLOAT32_BYTES + d * c)  # residual in + two norms (f32 work, out)
      + qkv * c + (2 * (h + kv) * hd * FLOAT32_BYTES if config.positions == "rotary" else 0)
      + h * seq_len * (2 * FLOAT32_BYTES + c)      # scores, softmax (f32), probs (compute)
      + h * hd * c + 2 * d * c                     # attention output, out projection, residual
      + (4 if config.mlp_activation in ("swiglu", "geglu") else 2) * f * c)
  logits = 3 * config.vocab_size * FLOAT32_BYTES
  return batch_size * seq_len * (config.num_layers * per_token + logits + 2 * d * c)


def kv_cache_bytes(config: TransformerConfig, *, batch_size: int, length: int) -> int:
  """Keys and values of every layer for `length` slots (sampling, best-of-N, RL)."""
  c = 2 if config.dtype == "bfloat16" else 4
  return 2 * config.num_layers * batch_size * length * config.kv_heads * config.per_head_dim * c


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
  """Bytes per device. `total` = what a training step needs (XLA adds workspace on top)."""

  num_params: int
  params: int
  grads: int
  optimizer: int
  activations: int

  @property
  def total(self) -> int:
    return self.params + self.grads + self.optimizer + self.activations


def training_memory(config: TransformerConfig, *, batch_size: int, seq_len: int,
                    optimizer: str = "adafactor", factored: bool = True,
                    momentum: bool = False, head: str = "lm", param_shards: int = 1,
                    batch_shards: int = 1) -> MemoryEstimate:
  """Per-device bytes of one training step of `config` (see the module docstring)."""
  if param_shards < 1 or batch_shards < 1:
    raise ValueError(f"param_shards={param_shards}, batch_shards={batch_shards}: must be >= 1")
  shapes = param_shapes(config, head=head)
  n = sum(math.prod(s) for s in shapes.values())
  opt = optimizer_state_bytes(shapes, optimizer=optimizer, factored=factored,
                              momentum=momentum)
  acts = activation_bytes(config, batch_size=batch_size, seq_len=seq_len)
  return MemoryEstimate(num_params=n, params=FLOAT32_BYTES * n // param_shards,
                        grads=FLOAT32_BYTES * n // param_shards,
                        optimizer=opt // param_shards,
                        activations=math.ceil(acts / batch_shards))


def markdown_table(presets: Sequence[tuple[str, TransformerConfig]], *, batch_size: int,
                   seq_len: int) -> str:
  """One row per (name, config): params, Adafactor training memory on 1 device and with the
  batch and parameters split over 8 devices, bf16 weights + KV cache for sampling."""
  rows = ["| model | params | train, 1 device (params+grads+Adafactor / activations) | "
          "train, 8 devices FSDP | sample: bf16 weights + KV cache |",
          "|---|---|---|---|---|"]
  for name, config in presets:
    one = training_memory(config, batch_size=batch_size, seq_len=seq_len)
    eight = training_memory(config, batch_size=batch_size, seq_len=seq_len, param_shards=8,
                            batch_shards=8)
    sample = 2 * one.num_params + kv_cache_bytes(config.replace(dtype="bfloat16"),
                                                 batch_size=batch_size, length=seq_len)
    state = one.params + one.grads + one.optimizer
    rows.append(f"| {name} | {one.num_params / 1e6:,.0f}M | {one.total / GIB:,.1f} GiB "
                f"({state / GIB:,.1f} / {one.activations / GIB:,.1f}) | "
                f"{eight.total / GIB:,.1f} GiB | {sample / GIB:,.1f} GiB |")
  return "\n".join(rows)


def command_line(argv: Sequence[str], *, register: Callable[[], None],
                 parse_gin: Callable[..., None]) -> int:
  """`python -m warm_jax.models.memory PRESET.gin:VOCAB ...`: prints the table. The gin layer's
  `register` and `parse_gin` come from the caller (this module is library code)."""
  import argparse

  import gin

  parser = argparse.ArgumentParser(prog="python -m warm_jax.models.memory")
  parser.add_argument("presets", nargs="+", help="gin/models/NAME.gin:VOCAB_SIZE")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=1024)
  args = parser.parse_args(argv)
  register()
  presets = []
  for item in args.presets:
    path, _, vocab = item.rpartition(":")
    gin.clear_config()
    parse_gin([path], [f"VOCAB_SIZE = {int(vocab)}"])
    with gin.unlock_config():
      presets.append((path.split("/")[-1].removesuffix(".gin"),
                      gin.get_configurable("TransformerConfig")()))
  print(markdown_table(presets, batch_size=args.batch_size, seq_len=args.seq_len))
  return 0


if __name__ == "__main__":  # the program: only here is the gin layer imported
  from warm_jax import configurables
  from warm_jax.gin_utils import parse_gin as _parse_gin
  sys.exit(command_line(sys.argv[1:], register=configurables.register, parse_gin=_parse_gin))
