"""The t5x-style Trainer: sharded state, jitted train/eval steps, and the training loop.

Where it sits: every training stage (pre-train, SFT, linear probe, RM members, RL value
warm-up) is `Trainer(objective=..., ...).train(dataset)`. The objective supplies the network
and loss; the partitioner the mesh; the trainer does the rest:

  1. State. Abstract shapes come from `jax.eval_shape` (nothing allocated), the partitioner
     turns the params' logical axes into shardings, and one jitted init with `out_shardings`
     creates params and optimizer state directly on their devices.
  2. Resume order. (a) the latest checkpoint in MODEL_DIR/checkpoints, else (b) params from
     another checkpoint through an assignment map (`init_params`), else (c) fresh init. The data
     position is a function of the step, so resuming needs nothing else.
  3. Step. One jitted function with in/out shardings and the state donated: microbatches
     accumulated with `lax.scan`, gradient clipping and Adafactor inside the optax chain,
     dropout keys folded from (seed, step).
  4. Loop. `training_loop.run_training_loop`, the loop every training program shares, with
     this trainer's step, its checkpointer and two hooks: `TrainMetricsHook` (checks loss and
     grad norm are finite, raising before anything non-finite can be saved; logs train/* and
     perf/* (tokens/s, MFU) to JSONL + TensorBoard; shows progress) and `EvalHook` (eval/*).
     It saves every K steps, and on SIGTERM saves a checkpoint and stops cleanly.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from warm_jax.core import checkpoints as ckpt_lib
from warm_jax.core import flops as flops_lib
from warm_jax.data.batching import ArrayDataset
from warm_jax.core.metrics_writer import MetricsWriter, Progress
from warm_jax.core.objectives import normalise_metrics
from warm_jax.core.optimizers import OptimizerConfig, make_optimizer
from warm_jax.core.partitioning import Partitioner, opt_state_shardings
# The loop and its errors live in training_loop; these names are also the trainer's API.
from warm_jax.core.training_loop import (FAULT_ENV, EvalHook, NonFiniteError, Preempted,
                                         StepOutput, TrainCheckpoints, TrainMetricsHook,
                                         non_finite_error, run_training_loop)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  """Loop settings.

  Attributes:
    train_steps: total optimizer steps (a resumed run continues up to this).
    batch_size: global batch size (all processes together).
    seed: parameter-init and dropout seed (the data order has its own seed).
    microbatches: split each batch into this many sequential microbatches (same gradient).
    log_every: write train/perf metrics and a progress line every N steps.
    eval_every: evaluate every N steps (0: only at the end, if an eval set is given).
    save_every: checkpoint every N steps (always at the last step).
    keep_checkpoints: checkpoints kept (None: all; Baklava wants several SFT steps kept).
    async_checkpoints: write checkpoints in the background.
    check_finite_every: read back loss/grad-norm every N steps to stop on NaN/inf.
    peak_flops_per_device: hardware peak for MFU; None times a large matmul at start-up.
    name: shown in the progress display.
  """

  train_steps: int = 100
  batch_size: int = 32
  seed: int = 0
  microbatches: int = 1
  log_every: int = 10
  eval_every: int = 0
  save_every: int = 100
  keep_checkpoints: int | None = 3
  async_checkpoints: bool = True
  check_finite_every: int = 1
  peak_flops_per_device: float | None = None
  name: str = "train"

  def __post_init__(self):
    for field in ("train_steps", "batch_size", "microbatches", "log_every", "save_every",
                  "check_finite_every"):
      if getattr(self, field) <= 0:
        raise ValueError(f"TrainerConfig.{field}={getattr(self, field)}: must be positive")
    if self.batch_size % self.microbatches:
      raise ValueError(f"TrainerConfig.batch_size={self.batch_size} is not divisible by "
                       f"microbatches={self.microbatches}")


class TrainState(flax.struct.PyTreeNode):
  step: Array
  params: Any
  opt_state: Any


class Trainer:
  """Builds the sharded train/eval programs of one objective and runs the loop.

  Args:
    objective: network + loss (see `warm_jax.core.objectives`).
    optimizer: optimizer and schedule config.
    partitioner: mesh and logical-axis rules.
    config: loop settings.
    model_dir: output dir (checkpoints/, metrics.jsonl, tb/).
    seq_len: sequence length of the batches (for shapes and FLOPs).
    trainable: optional predicate on a param path string ('decoder/layer_0/...'); params for
      which it is False get zero updates (the linear probe freezes the backbone this way).
  """

  def __init__(self, *, objective: Any, optimizer: OptimizerConfig, partitioner: Partitioner,
               config: TrainerConfig, model_dir: str, seq_len: int,
               trainable: Callable[[str], bool] | None = None):
    self.objective, self.partitioner, self.config = objective, partitioner, config
    self.model_dir, self.seq_len = model_dir, seq_len
    if config.batch_size % partitioner.batch_divisor:
      raise ValueError(
          f"batch_size {config.batch_size} is not divisible by the {partitioner.batch_divisor} "
          f"devices of the mesh's batch axes: pick a multiple of {partitioner.batch_divisor}")
    if (config.batch_size // config.microbatches) % partitioner.batch_divisor:
      raise ValueError(f"microbatch size {config.batch_size // config.microbatches} is not "
                       f"divisible by the {partitioner.batch_divisor} batch devices")
    # An objective may declare parameters its loss cannot see (the reward head's bias under
    # Bradley-Terry): they are frozen, or Adafactor would random-walk them on rounding noise.
    trainable = trainable or getattr(objective, "trainable", None)
    self.tx, self.schedule = make_optimizer(optimizer, config.train_steps, trainable=trainable)
    self._base_key = jax.random.key(config.seed)

    # -- abstract state and its shardings (nothing materialised yet) --------------------------
    dummy = objective.dummy_batch(config.batch_size, seq_len)
    boxed = jax.eval_shape(objective.init_variables, self._base_key, dummy)
    self.param_shardings = partitioner.param_shardings(boxed["params"])
    abstract_params = nn.unbox(boxed["params"])
    abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
    replicated = partitioner.replicated()
    self.state_shardings = TrainState(
        step=replicated, params=self.param_shardings,
        opt_state=opt_state_shardings(abstract_opt, abstract_params, self.param_shardings,
                                      replicated))
    self.abstract_state = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                   opt_state=abstract_opt), self.state_shardings)
    self.batch_shardings = {k: partitioner.batch_sharding(np.ndim(v)) for k, v in dummy.items()}
    self.num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(
        abstract_params))

    # -- jitted programs ----------------------------------------------------------------------
    def init_fn(key, batch):
      params = nn.unbox(objective.init_variables(key, batch)["params"])
      return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=self.tx.init(params))

    self._init = jax.jit(init_fn, out_shardings=self.state_shardings)
    self._init_opt = jax.jit(
        lambda params: TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                  opt_state=self.tx.init(params)),
        in_shardings=(self.param_shardings,), out_shardings=self.state_shardings)
    self._train_step = jax.jit(
        self._train_step_fn, in_shardings=(self.state_shardings, self.batch_shardings),
        out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))
    def eval_fn(params, batch, valid):
      with partitioner.activation_rules():
        return objective.eval_metrics(params, batch, valid)

    self._eval_step = jax.jit(
        eval_fn,
        in_shardings=(self.param_shardings, self.batch_shardings,
                      partitioner.batch_sharding(1)),
        out_shardings=replicated)

  # ---------------------------------------------------------------------------------------------
  # The step
  # ---------------------------------------------------------------------------------------------
  def _grads(self, params, batch, key):
    """Summed loss gradient over microbatches, divided by the total weight."""
    return sum_grads(self.objective.loss, params, batch, key,
                     microbatches=self.config.microbatches)

  def _train_step_fn(self, state: TrainState, batch: dict[str, Array]):
    with self.partitioner.activation_rules():
      key = jax.random.fold_in(self._base_key, state.step)
      grads, sums = self._grads(state.params, batch, key)
    return optimizer_step(state, grads, sums, tx=self.tx, schedule=self.schedule)

  def shard_batch(self, host_batch: dict[str, np.ndarray]) -> dict[str, Array]:
    """This process's rows -> global sharded arrays, keeping the objective's features only
    (datasets may carry metadata such as `corrupted` that the loss does not read)."""
    missing = [k for k in self.batch_shardings if k not in host_batch]
    if missing:
      raise ValueError(f"the dataset has no feature(s) {missing} that "
                       f"{type(self.objective).__name__} needs (it has {sorted(host_batch)}): "
                       "bind the dataset that matches this stage's objective")
    check = getattr(self.objective, "check_host_batch", None)
    if check is not None:
      check(host_batch)
    return self.partitioner.shard_batch({k: host_batch[k] for k in self.batch_shardings},
                                        self.config.batch_size)

  def train_step(self, state: TrainState, batch: dict[str, Array]
                 ) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step on a sharded global batch (the input state is donated); its model
    FLOPs (`train_step_flops`) go to the stage profile (`flops.count`)."""
    with self.partitioner.mesh_context():
      out = self._train_step(state, batch)
    flops_lib.count(f"train step ({self.config.name})", self.train_step_flops(batch))
    return out

  def train_step_flops(self, batch: Mapping[str, Any]) -> float:
    """Model FLOPs of one step on `batch` (global): the objective's analytic count per example
    at the batch's own width (length-bucketed batches are narrower) x the global batch size."""
    return (self.objective.train_flops_per_example(batch_width(batch))
            * self.config.batch_size)

  # ---------------------------------------------------------------------------------------------
  # State
  # ---------------------------------------------------------------------------------------------
  def init_state(self) -> TrainState:
    dummy = self.partitioner.shard_batch(
        self.objective.dummy_batch(self.config.batch_size // jax.process_count(), self.seq_len),
        self.config.batch_size)
    # No activation context here: flax's DenseGeneral unboxes its flattened kernel during init,
    # which a global mesh would try to constrain with the unflattened logical axes.
    return self._init(self._base_key, dummy)

  def state_from_params(self, params: Any) -> TrainState:
    """A step-0 state (fresh optimizer) around given params, e.g. from `init_from_checkpoint`."""
    params = jax.tree_util.tree_map(jax.device_put, params, self.param_shardings)
    return self._init_opt(params)

  # ---------------------------------------------------------------------------------------------
  # Evaluation
  # ---------------------------------------------------------------------------------------------
  def evaluate(self, params: Any, dataset: ArrayDataset) -> dict[str, float]:
    total = None
    for host_batch, valid in dataset.eval_batches(self.config.batch_size):
      batch = self.shard_batch(host_batch)
      valid = self.partitioner.shard_batch({"v": valid.astype(np.float32)},
                                           self.config.batch_size)["v"]
      with self.partitioner.mesh_context():
        sums = jax.device_get(self._eval_step(params, batch, valid))
      flops_lib.count(f"eval ({self.config.name})", self.train_step_flops(batch) / 3)
      total = sums if total is None else jax.tree_util.tree_map(np.add, total, sums)
    return normalise_metrics(total)

  # ---------------------------------------------------------------------------------------------
  # The loop
  # ---------------------------------------------------------------------------------------------
  def train(self, dataset: ArrayDataset, *, eval_dataset: ArrayDataset | None = None,
            init_params: Callable[["Trainer"], Any] | None = None,
            on_start: Callable[[int], None] | None = None,
            extra_eval_datasets: Mapping[str, ArrayDataset] | None = None) -> TrainState:
    """Trains up to `config.train_steps`, resuming from MODEL_DIR if it holds a checkpoint.

    Args:
      dataset: training examples; the batch of step s is dataset.batch(s, batch_size).
      eval_dataset: evaluated every `eval_every` steps and at the end (metrics eval/*).
      extra_eval_datasets: {name: dataset} evaluated with it (metrics eval_<name>/*), e.g. the
        training set's corrupted pairs, to see a reward model memorise them along training.
      init_params: called (only when there is no checkpoint to resume) to produce the initial
        params, e.g. an SFT checkpoint mapped onto a reward model.
      on_start: called with the start step once the state is restored or initialised (e.g.
        to write config.gin: a run refused for a checkpoint that does not fit keeps the
        config.gin the checkpoint was written with).
    Returns the final state.
    """
    cfg = self.config
    checkpointer = ckpt_lib.TrainCheckpointer(
        self.model_dir, save_every=cfg.save_every, keep=cfg.keep_checkpoints,
        async_save=cfg.async_checkpoints)
    latest = checkpointer.latest_step()
    if latest is not None:
      params, opt_state = checkpointer.restore(
          latest, self.abstract_state.params, self.abstract_state.opt_state)
      state = TrainState(step=jax.device_put(jnp.asarray(latest, jnp.int32),
                                             self.state_shardings.step),
                         params=params, opt_state=opt_state)
      logging.info("resumed %s from step %d", self.model_dir, latest)
    elif init_params is not None:
      state = self.state_from_params(init_params(self))
    else:
      state = self.init_state()
    start = int(latest or 0)
    if on_start is not None:
      on_start(start)

    writer = MetricsWriter(self.model_dir, resume_step=start)
    peak, peak_how = flops_lib.peak_flops_reference(
        peak_flops_per_device=cfg.peak_flops_per_device)
    logging.info("%s: %d params; %s; peak %.3g FLOP/s (%s)", cfg.name, self.num_params,
                 self.partitioner.explain(), peak, peak_how)

    def check_finite(per_member: list[dict[str, Any]], done: int) -> None:
      error = non_finite_error(per_member[0], done, checkpointer, self.model_dir)
      if error is not None:
        raise error

    def evaluate(state: TrainState, step: int) -> None:
      for prefix, data in eval_sets(eval_dataset, extra_eval_datasets):
        writer.write(step, {f"{prefix}/{k}": v for k, v in
                            self.evaluate(state.params, data).items()})

    return run_training_loop(
        state=state, start=start, train_steps=cfg.train_steps, step=self._loop_step(dataset),
        checkpoints=TrainCheckpoints(checkpointer),
        hooks=[TrainMetricsHook(
                   log_every=cfg.log_every, check_finite_every=cfg.check_finite_every,
                   writers=[writer],
                   progress=Progress(name=cfg.name, total_steps=cfg.train_steps,
                                     start_step=start),
                   tokens_per_step=self.objective.tokens_per_example(self.seq_len)
                   * cfg.batch_size, peak_flops=peak, check_finite=check_finite),
               EvalHook(every=cfg.eval_every, evaluate=evaluate)],
        preempted=lambda done: (f"SIGTERM at step {done}: checkpoint saved in "
                                f"{checkpointer.directory}; rerun the same command to resume"))

  def _loop_step(self, dataset: ArrayDataset) -> Callable[[TrainState, int], Any]:
    """The loop's step: batch `step` of `dataset`, sharded, and one optimizer step."""
    def step(state: TrainState, index: int) -> tuple[TrainState, StepOutput]:
      batch = self.shard_batch(dataset.batch(index, self.config.batch_size))
      state, metrics = self.train_step(state, batch)
      return state, StepOutput(metrics=metrics, flops=self.train_step_flops(batch))
    return step


# -------------------------------------------------------------------------------------------------
# The step's two halves, as pure functions: `Trainer` jits them for one model, and
# `warm_jax.rm.vmapped_members` vmaps them over a leading member axis (each member its own loss
# dropout rate and optimizer), so both paths run the same arithmetic.
# -------------------------------------------------------------------------------------------------
def sum_grads(loss_fn: Callable[..., Any], params: Any, batch: dict[str, Array], key: Array, *,
              microbatches: int = 1) -> tuple[Any, dict[str, Array]]:
  """Loss gradient summed over `microbatches` sequential slices of the batch (microbatch i's
  dropout key is fold_in(key, i)) and divided by the total weight; also the metric sums.

  `loss_fn(params, batch, rng)` returns (loss sum, metric sums with a `weight` entry).
  """
  grad_fn = jax.grad(loss_fn, has_aux=True)
  n = microbatches
  if n == 1:
    grads, sums = grad_fn(params, batch, key)
  else:
    micro = jax.tree_util.tree_map(
        lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)

    def body(carry, xs):
      index, mb = xs
      g, s = grad_fn(params, mb, jax.random.fold_in(key, index))
      return jax.tree_util.tree_map(jnp.add, carry, (g, s)), None

    zeros = jax.eval_shape(grad_fn, params, jax.tree_util.tree_map(lambda x: x[0], micro), key)
    zeros = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), zeros)
    (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(n), micro))
  weight = jnp.maximum(sums["weight"], 1e-9)
  grads = jax.tree_util.tree_map(lambda g: g / weight, grads)
  return grads, sums


def optimizer_step(state: TrainState, grads: Any, sums: dict[str, Array], *,
                   tx: optax.GradientTransformation, schedule: optax.Schedule
                   ) -> tuple[TrainState, dict[str, Array]]:
  """Applies `tx` to the gradients; returns the next state and the step's metrics (the loss
  sums plus grad_norm, param_norm and learning_rate)."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(sums)
  metrics["grad_norm"] = optax.tree.norm(grads)
  metrics["param_norm"] = optax.tree.norm(params)
  metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def batch_width(batch: Mapping[str, Any]) -> int:
  """The sequence width of a batch: the last dim of its [..., batch, length] features."""
  widths = [int(np.shape(x)[-1]) for x in batch.values() if np.ndim(x) >= 2]
  if not widths:
    raise ValueError(f"batch features {sorted(batch)} have no [batch, length] array")
  return max(widths)


def eval_sets(eval_dataset: ArrayDataset | None,
              extra: Mapping[str, ArrayDataset] | None) -> list[tuple[str, ArrayDataset]]:
  """(metric prefix, dataset) of every evaluation of a training loop: 'eval' for the main
  eval dataset, 'eval_<name>' for each extra one."""
  out = [] if eval_dataset is None else [("eval", eval_dataset)]
  for name, data in (extra or {}).items():
    if not name.isidentifier():
      raise ValueError(f"extra eval dataset name {name!r}: use an identifier (it names the "
                       f"metrics eval_{name}/*)")
    out.append((f"eval_{name}", data))
  return out


