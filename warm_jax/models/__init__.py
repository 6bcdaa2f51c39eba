"""Decoder-only Transformer family and its heads (LM, scalar reward, per-token value)."""

from warm_jax.models.config import TransformerConfig
from warm_jax.models.heads import LanguageModel, RewardModel, ValueModel, last_token_index
from warm_jax.models.transformer import Decoder

__all__ = ["TransformerConfig", "Decoder", "LanguageModel", "RewardModel", "ValueModel",
           "last_token_index"]
