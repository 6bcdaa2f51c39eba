"""Weight averaging of reward models (WARM) and friends: one module per merge method.

Where it sits: after the M reward-model runs. `average_checkpoints` streams orbax checkpoints
on disk into a new one (the `python -m warm_jax.average` CLI); `merge_params` merges trees in
memory for evaluation (LMC curves, greedy soups). Methods, by name (see docs/averaging.md):

  uniform      WARM: (1/M) sum_i phi_i
  weighted     sum_i w_i phi_i / sum_i w_i, w_i >= 0
  interpolate  (1 - lam) phi_1 + lam phi_2
  greedy       DiWA / model-soups greedy soup on a caller's validation score
  slerp        WARP: SLERP of task vectors phi_i - phi_init, per leaf
  liti         WARP: (1 - eta) phi_init + eta phi_merged

A new method is a module with a `MergeMethod` subclass decorated with `@register`, imported
below.
"""

# Importing the method modules registers them.
from warm_jax.merging import greedy, interpolate, liti, slerp, uniform, weighted  # noqa: F401
from warm_jax.merging.checks import DEFAULT_HEAD, MergeInputError
from warm_jax.merging.in_memory import merge_params
from warm_jax.merging.reader import CheckpointReader, content_hash
from warm_jax.merging.registry import (LeafMerge, LinearPlan, MergeConfigError, MergeMethod,
                                       MergePlan, MethodParam, get_method, method_names,
                                       register)
from warm_jax.merging.slerp import slerp_task_vectors
from warm_jax.merging.output import MANIFEST_NAME
from warm_jax.merging.streaming import StreamConfig, average_checkpoints
from warm_jax.merging.greedy import greedy_selection

__all__ = [
    "DEFAULT_HEAD", "MANIFEST_NAME", "CheckpointReader", "LeafMerge", "LinearPlan",
    "MergeConfigError", "MergeInputError", "MergeMethod", "MergePlan", "MethodParam",
    "StreamConfig", "average_checkpoints", "content_hash", "get_method", "greedy_selection",
    "merge_params", "method_names", "register", "slerp_task_vectors",
]
