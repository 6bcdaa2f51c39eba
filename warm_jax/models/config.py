"""Model shape and numerics: one frozen dataclass shared by every stage.

Every program of the pipeline (pre-training, SFT, reward models, value/policy for RL) builds its
network from a `TransformerConfig`; the presets in `gin/models/*.gin` bind its fields. Two
models can exchange weights (SFT -> RM init, WARM averaging) exactly when their configs agree on
everything except `dropout_rate` and the compute dtype (the reward readout only adds reward-head
leaves: an SFT LM initialises a reward model of either readout).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rotary")
MLP_ACTIVATIONS = ("gelu", "relu", "swiglu", "geglu")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# How a RewardModel turns its backbone into a scalar (`models.heads.RewardModel`):
#   'hidden'          w . h_last + b: the final hidden state at the last real token (the
#                     paper's head; what Hugging Face's *ForSequenceClassification computes)
#   'hidden_logprob'  the same plus a . [softmin_t lp_t, mean_t lp_t, sum_t lp_t], where lp_t is
#                     the log-probability of response token t under the RM's own backbone and
#                     LM head: the skill the shared SFT model holds behind its LM head
#                     (docs/reward_models.md, "The log-prob readout")
REWARD_READOUTS = ("hidden", "hidden_logprob")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Shape of a decoder-only Transformer.

  Attributes:
    vocab_size: number of token ids (embedding rows, LM logits).
    d_model: residual stream width.
    num_layers: number of decoder blocks.
    num_heads: query heads.
    num_kv_heads: key/value heads (== num_heads: multi-head; 1: multi-query; else grouped).
      None means num_heads.
    head_dim: per-head width; None means d_model // num_heads.
    mlp_dim: hidden width of the feed-forward block.
    max_len: longest sequence (learned position table size, RoPE range).
    dropout_rate: dropout on embeddings, attention output and MLP output (paper RMs: 0.05/0.1).
    norm: "layernorm" (GPT-2) or "rmsnorm" (Llama, Gemma).
    positions: "learned" absolute positions or "rotary" (RoPE).
    rope_theta: RoPE base frequency.
    mlp_activation: "gelu"/"relu" (two matrices) or "swiglu"/"geglu" (gated, three matrices).
    tie_embeddings: LM logits use the transposed token embedding.
    logit_softcap: if set, logits = cap * tanh(logits / cap) (Gemma 2 style).
    use_bias: biases in dense layers (GPT-2 style) or not (Llama style).
    norm_eps: epsilon of the normalisation layers.
    norm_scale_offset: the norms multiply by (norm_scale_offset + scale). Gemma stores its
      RMSNorm weight as scale - 1 (offset 1.0); 0.0 elsewhere. A fresh scale starts at
      1 - offset, so every convention starts as the identity scaling.
    scale_embeddings: multiply the token embeddings by sqrt(d_model) before the first block
      (Gemma); the tied LM head still uses the unscaled table.
    rope_scaling: Llama 3 frequency scaling of RoPE as (factor, low_freq_factor,
      high_freq_factor, original_max_len), e.g. (32.0, 1.0, 4.0, 8192) for Llama 3.2; None
      for plain RoPE.
    dtype: compute dtype name ("float32" or "bfloat16"); parameters stay float32.
    reward_readout: how a RewardModel reads its reward ("hidden" or "hidden_logprob", see
      REWARD_READOUTS); LanguageModel and ValueModel ignore it.
    logprob_softmin_temperature: tau of the log-prob readout's softmin
      -tau * logsumexp(-lp / tau) over response tokens (-> min as tau -> 0).
    logprob_window: the log-prob readout computes LM logits only at the last `logprob_window`
      positions of each row (ending at its last real token), which must hold every response
      token after the window's first (responses of at most logprob_window - 1 tokens, EOS
      included): the same features for a fraction of the LM head's cost (it is ~40% of the
      tiny decoder's FLOPs at every position). None: logits at every position. A longer
      response is refused on the host (`models.heads.check_response_window`) and gives NaN
      features inside a compiled program, never a silently different reward.
  """

  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  max_len: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  dropout_rate: float = 0.0
  norm: str = "layernorm"
  positions: str = "learned"
  rope_theta: float = 10_000.0
  mlp_activation: str = "gelu"
  tie_embeddings: bool = True
  logit_softcap: float | None = None
  use_bias: bool = True
  norm_eps: float = 1e-6
  norm_scale_offset: float = 0.0
  scale_embeddings: bool = False
  rope_scaling: tuple[float, float, float, int] | None = None
  dtype: str = "float32"
  reward_readout: str = "hidden"
  logprob_softmin_temperature: float = 0.25
  logprob_window: int | None = None

  def __post_init__(self):
    def bad(field, why):
      raise ValueError(f"TransformerConfig.{field}={getattr(self, field)!r}: {why}")

    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "mlp_dim", "max_len"):
      if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
        bad(name, "must be a positive integer")
    if self.head_dim is None and self.d_model % self.num_heads:
      bad("num_heads", f"must divide d_model={self.d_model}, or set head_dim explicitly")
    if self.num_heads % self.kv_heads:
      bad("num_kv_heads", f"must divide num_heads={self.num_heads} (grouped-query attention)")
    if not 0.0 <= self.dropout_rate < 1.0:
      bad("dropout_rate", "must be in [0, 1)")
    if self.norm not in NORMS:
      bad("norm", f"choose one of {NORMS}")
    if self.positions not in POSITIONS:
      bad("positions", f"choose one of {POSITIONS}")
    if self.positions == "rotary" and self.per_head_dim % 2:
      bad("head_dim", "rotary positions need an even head_dim")
    if self.mlp_activation not in MLP_ACTIVATIONS:
      bad("mlp_activation", f"choose one of {MLP_ACTIVATIONS}")
    if self.dtype not in DTYPES:
      bad("dtype", f"choose one of {tuple(DTYPES)}")
    if self.reward_readout not in REWARD_READOUTS:
      bad("reward_readout", f"choose one of {REWARD_READOUTS}")
    if not self.logprob_softmin_temperature > 0:
      bad("logprob_softmin_temperature", "must be > 0")
    if self.logprob_window is not None and (not isinstance(self.logprob_window, int)
                                            or self.logprob_window < 2):
      bad("logprob_window", "must be an integer >= 2 (a response of window - 1 tokens), or "
          "None for logits at every position")
    if self.logit_softcap is not None and self.logit_softcap <= 0:
      bad("logit_softcap", "must be positive or None")
    if self.rope_scaling is not None:
      object.__setattr__(self, "rope_scaling", tuple(self.rope_scaling))  # gin may give a list
      if self.positions != "rotary":
        bad("rope_scaling", "only applies to positions='rotary'")
      if len(self.rope_scaling) != 4:
        bad("rope_scaling", "must be (factor, low_freq_factor, high_freq_factor, "
            "original_max_len)")
      factor, low, high, original = self.rope_scaling
      if not (factor >= 1 and 0 < low < high and original > 0):
        bad("rope_scaling", "needs factor >= 1, 0 < low_freq_factor < high_freq_factor and "
            "original_max_len > 0")

  @property
  def kv_heads(self) -> int:
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  @property
  def per_head_dim(self) -> int:
    return self.head_dim if self.head_dim is not None else self.d_model // self.num_heads

  @property
  def reads_logprobs(self) -> bool:
    """Whether a RewardModel of this config needs response masks (the log-prob readout)."""
    return self.reward_readout == "hidden_logprob"

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  def replace(self, **changes) -> "TransformerConfig":
    return dataclasses.replace(self, **changes)

  def num_params(self, *, with_embeddings: bool = True) -> int:
    """Parameter count of the decoder (+ untied LM head), computed from the shape alone."""
    d, h, kv, hd, f = self.d_model, self.num_heads, self.kv_heads, self.per_head_dim, self.mlp_dim
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    mlp = (3 if self.mlp_activation in ("swiglu", "geglu") else 2) * d * f
    norms = 2 * d * (2 if self.norm == "layernorm" else 1)
    if self.use_bias:
      attn += h * hd + kv * hd + d  # query, value and output biases (no key bias)
      mlp += f * (2 if self.mlp_activation in ("swiglu", "geglu") else 1) + d
    total = self.num_layers * (attn + mlp + norms) + d * (2 if self.norm == "layernorm" else 1)
    if with_embeddings:
      total += self.vocab_size * d
      if self.positions == "learned":
        total += self.max_len * d
      if not self.tie_embeddings:
        total += d * self.vocab_size
    return total

  def train_flops_per_token(self, seq_len: int) -> float:
    """Model FLOPs of one forward+backward pass per token (PaLM appendix B convention).

    6 * (non-embedding params + LM head) for the matmuls plus 12 * layers * seq * width for the
    attention scores and weighted sum (causal masking is not discounted, as in PaLM's MFU):
    3x `forward_flops_per_token(seq_len)` (the backward pass costs twice the forward).
    """
    return 3.0 * self.forward_flops_per_token(seq_len)

  def forward_flops_per_token(self, context: int, *, lm_head: bool = True) -> float:
    """Model FLOPs of one forward pass per token that attends over `context` positions (the
    sequence length in training and scoring, the KV cache's slots in decoding): 2 * (non-
    embedding params [+ LM head]) + 4 * layers * context * heads * head_dim (same convention as
    `train_flops_per_token`: masked positions are not discounted)."""
    matmul_params = self.num_params(with_embeddings=False)
    if lm_head:
      matmul_params += self.vocab_size * self.d_model
    return 2.0 * matmul_params + 4 * self.num_layers * context * self.num_heads * self.per_head_dim

  def lm_forward_flops(self, length: int, *, last: int | None = None) -> float:
    """Model FLOPs of one LanguageModel forward pass over `length` tokens with the LM head at
    the last `last` positions (`LanguageModel(last=...)`; None: all)."""
    positions = length if last is None else min(last, length)
    return (length * self.forward_flops_per_token(length, lm_head=False)
            + 2.0 * self.vocab_size * self.d_model * positions)

  def reward_forward_flops(self, length: int) -> float:
    """Model FLOPs of one RewardModel forward pass over a sequence of `length` tokens: the
    decoder without LM head, plus, under the log-prob readout, the LM head at the positions it
    reads (the last `logprob_window` of them, or all). The scalar head is negligible."""
    flops = length * self.forward_flops_per_token(length, lm_head=False)
    if self.reads_logprobs:
      positions = length if self.logprob_window is None else min(self.logprob_window, length)
      flops += 2.0 * self.vocab_size * self.d_model * positions
    return flops
