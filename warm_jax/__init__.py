"""warm-jax: the reference JAX/Flax implementation of WARM (Weight Averaged Reward Models).

The pipeline (docs/architecture.md; the paper it reproduces: docs/paper.md): pre-train an LM,
SFT it, fine-tune M diverse reward models from the SFT weights, average their weights, and use
the averaged RM for best-of-N and RL. Every stage is a gin-configured, sharded jit program.
"""

__version__ = "0.1.0"

from warm_jax import _moved

_moved.install()  # the old flat import paths (warm_jax.trainer, ...) as aliases
