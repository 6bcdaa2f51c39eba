"""Optimizers and learning-rate schedules for every training stage (optax).

Where it sits: `warm_jax.core.trainer.Trainer` takes an `OptimizerConfig` (bound from gin) and
builds
the optax transformation here. The default is Adafactor, the paper's optimizer for SFT, RM and
RL; AdamW is offered for comparisons. Gradient clipping by global norm comes first in the chain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import optax

SCHEDULES = ("constant", "linear", "cosine", "rsqrt")
OPTIMIZERS = ("adafactor", "adamw", "sgd")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Optimizer and schedule.

  Attributes:
    name: "adafactor" (paper), "adamw" or "sgd".
    learning_rate: peak learning rate.
    warmup_steps: linear warm-up from 0 to the peak.
    schedule: decay after warm-up: "constant", "linear" (to 0 at total_steps), "cosine" (to
      `final_lr_fraction` * peak at total_steps) or "rsqrt" (t5x's inverse square root).
    final_lr_fraction: floor of linear/cosine decay, as a fraction of the peak.
    clip_grad_norm: clip gradients to this global norm before the update (None: no clipping).
    weight_decay: decoupled weight decay (adafactor: weight_decay_rate; adamw: weight_decay).
    adafactor_factored: factor Adafactor's second moment (the memory saving; False = full).
    adafactor_multiply_by_parameter_scale: Adafactor's relative step size. The paper-style
      small learning rates (1e-5) assume False; optax's default is True.
    momentum: Adafactor momentum / AdamW b1 (None: Adafactor without momentum).
  """

  name: str = "adafactor"
  learning_rate: float = 1e-3
  warmup_steps: int = 0
  schedule: str = "constant"
  final_lr_fraction: float = 0.0
  clip_grad_norm: float | None = 1.0
  weight_decay: float = 0.0
  adafactor_factored: bool = True
  adafactor_multiply_by_parameter_scale: bool = False
  momentum: float | None = None

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"OptimizerConfig.name={self.name!r}: choose one of {OPTIMIZERS}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"OptimizerConfig.schedule={self.schedule!r}: choose one of {SCHEDULES}")
    if not self.learning_rate > 0:
      raise ValueError(f"OptimizerConfig.learning_rate={self.learning_rate}: must be > 0")
    if self.warmup_steps < 0:
      raise ValueError(f"OptimizerConfig.warmup_steps={self.warmup_steps}: must be >= 0")
    if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
      raise ValueError(f"OptimizerConfig.clip_grad_norm={self.clip_grad_norm}: must be > 0 "
                       "or None")


def make_schedule(config: OptimizerConfig, total_steps: int, *,
                  learning_rate: float | jax.Array | None = None) -> optax.Schedule:
  """Warm-up then decay, as a function of the optimizer step.

  `learning_rate` replaces config.learning_rate as the peak and may be a traced value (one peak
  per member when `warm_jax.rm.vmapped_members` vmaps the step over RM members).
  """
  peak = config.learning_rate if learning_rate is None else learning_rate
  warm = config.warmup_steps
  decay_steps = max(total_steps - warm, 1)
  floor = peak * config.final_lr_fraction
  if config.schedule == "constant":
    decay = optax.constant_schedule(peak)
  elif config.schedule == "linear":
    decay = optax.linear_schedule(peak, floor, decay_steps)
  elif config.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.final_lr_fraction)
  else:  # rsqrt, continuous at the end of warm-up
    decay = lambda step: peak * (max(warm, 1) / (step + max(warm, 1))) ** 0.5
  if warm == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), decay], [warm])


def make_optimizer(config: OptimizerConfig, total_steps: int, *,
                   learning_rate: float | jax.Array | None = None,
                   trainable: Callable[[str], bool] | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax transformation (clip -> optimizer) and its schedule (peak: `learning_rate` if
  given, possibly traced, else config.learning_rate; the state's structure does not depend on
  it)."""
  schedule = make_schedule(config, total_steps, learning_rate=learning_rate)
  if config.name == "adafactor":
    opt = optax.adafactor(
        learning_rate=schedule,
        factored=config.adafactor_factored,
        multiply_by_parameter_scale=config.adafactor_multiply_by_parameter_scale,
        momentum=config.momentum,
        weight_decay_rate=config.weight_decay or None,
    )
  elif config.name == "adamw":
    opt = optax.adamw(schedule, b1=config.momentum if config.momentum is not None else 0.9,
                      weight_decay=config.weight_decay)
  else:
    opt = optax.sgd(schedule, momentum=config.momentum)
  chain = [opt] if config.clip_grad_norm is None else [
      optax.clip_by_global_norm(config.clip_grad_norm), opt]
  tx = optax.chain(*chain)
  return (tx if trainable is None else freeze_untrainable(tx, trainable)), schedule


def freeze_untrainable(tx: optax.GradientTransformation, trainable: Callable[[str], bool]
                       ) -> optax.GradientTransformation:
  """Zero updates (and no optimizer state) for params whose path ('decoder/layer_0/...') is
  not trainable: the linear probe's frozen backbone, parameters a loss cannot see."""
  from warm_jax.core.checkpoints import _path_str

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "train" if trainable(_path_str(path)) else "freeze", params)

  return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
