"""Train M reward-model members in one program: a leading member axis and a vmapped step.

Where it sits: the second way to run the member sweep of `warm_jax.rm.members` (after the linear
probe, before averaging). `members.train_reward_model` trains one member per job; here
`train_reward_members` trains the listed members at once, which keeps a small model's devices
busy: one program does M members' work per dispatch instead of M programs each too small to
fill the devices. Its outputs are those of the sequential jobs, member by member:

  MEMBERS_DIR/member_<i>/hparams.json              (written before training starts)
  MEMBERS_DIR/member_<i>/config.gin
  MEMBERS_DIR/member_<i>/checkpoints/<step>/{params,opt_state}   (one member's, unstacked)
  MEMBERS_DIR/member_<i>/metrics.jsonl, tb/        (train/*, eval/*, perf/*)
  MEMBERS_DIR/member_<i>/DONE

so the averager, the evaluations and a user cannot tell which way a member was trained, and
either way can resume the other's member (same params and optimizer-state trees).

Same members for the same seeds. The program is `jax.vmap` of the sequential Trainer's own step
halves (`trainer.sum_grads`, `trainer.optimizer_step`) over params, optimizer state, batches and
the per-member hyper-parameters; member m gets exactly what its sequential job gets:
- init: its SFT checkpoint at its Baklava step + the probed head (`ProbedRewardModelInit`, run
  on the member-level Trainer), the M results stacked;
- data order: its batches come from the dataset with seed = its `data_seed`;
- dropout: its rate, traced (`PreferenceObjective.loss(..., dropout_rate=)`), and the sequential
  Trainer's key fold_in(key(TrainerConfig.seed), step) -- one key for every member, as each
  sequential job derives it from the same TrainerConfig.seed;
- optimizer: its optax chain is built inside the vmapped step with its peak learning rate as a
  traced value (`make_optimizer(..., learning_rate=)`), so warm-up, decay, Adafactor's clipping,
  momentum and weight decay see the member's own schedule. This is exact for every optimizer
  and schedule and keeps the optimizer state identical to the sequential one. The alternatives
  are not: multiplying a unit-LR optimizer's updates by the peak LR is wrong for Adafactor with
  weight decay (added after the LR scaling) and, with Adafactor momentum (an EMA after the LR
  scaling), stores the momentum per unit LR, so checkpoints would differ from the sequential
  ones; `optax.inject_hyperparams` changes the optimizer-state tree, so a vmapped member could
  not be resumed sequentially or vice versa.
The numbers agree to float rounding, not bit for bit: vmap turns each matmul into a batched one,
which XLA may reduce in another order (see tests/test_vmapped_members.py for the tolerance).

Sharding: every param and optimizer-state leaf carries the logical axes ('members',) + its
member-level axes, batches are [members, batch, length]. The default rule ('members', None)
replicates the member axis: each device holds every member's shard and the per-member batch is
split over the batch axes as in a sequential job. Binding ('members', 'data') (e.g.
`Partitioner.logical_axis_rules` with ('members', 'data') in place of ('members', None)) spreads
the members over the data axis instead: a member's params live on 1/|data| of the devices and
the mesh axes the members take are removed from the other rules (the per-member batch is then
split over fsdp only). A member count the members' mesh axes do not divide falls back to
replicating the member axis (listed by `Partitioner.explain`), as for any indivisible dim.

The loop is `training_loop.run_training_loop`, Trainer.train's own, so it gives the same
guarantees: it resumes from the latest step that every member has
a checkpoint for, checks loss and gradient norm of every member before anything is saved (a
non-finite member stops the program, naming the member), checkpoints every member on SIGTERM,
writes a progress line and per-member metrics, and reads values back from the devices no more
often than the Trainer does.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from warm_jax.core import checkpoints as ckpt_lib
from warm_jax.core import flops as flops_lib
from warm_jax.rm import members as members_lib
from warm_jax.core import run_dir
from warm_jax.data.batching import ArrayDataset
from warm_jax.rm.linear_probe import ProbedRewardModelInit
from warm_jax.core.metrics_writer import MetricsWriter, Progress
from warm_jax.models import TransformerConfig
from warm_jax.core.objectives import PreferenceObjective, normalise_metrics
from warm_jax.core.optimizers import OptimizerConfig, make_optimizer
from warm_jax.core.partitioning import Partitioner
from warm_jax.core.trainer import (Trainer, TrainerConfig, TrainState, eval_sets, optimizer_step,
                                   sum_grads)
from warm_jax.core.training_loop import (CheckpointSet, EvalHook, NonFiniteError, StepOutput,
                                         TrainMetricsHook, non_finite_error, run_training_loop)

Array = jax.Array
MEMBERS_AXIS = "members"


def member_range(*, num_members: int, start: int = 0) -> list[int]:
  """Member indices start .. start + num_members - 1 (gin: NUM_MEMBERS, FIRST_MEMBER)."""
  if num_members <= 0:
    raise ValueError(f"num_members={num_members}: train at least one member "
                     "(--gin.NUM_MEMBERS=M with M >= 1)")
  if start < 0:
    raise ValueError(f"start={start}: member indices are >= 0")
  return list(range(start, start + num_members))


def member_partitioner(partitioner: Partitioner, num_members: int
                       ) -> tuple[Partitioner, str | tuple[str, ...] | None]:
  """(partitioner for the stacked program, mesh axes of the member axis or None).

  The member axis takes the mesh axes of the partitioner's 'members' rule when they divide
  `num_members` (else it is replicated and recorded as a fall-back). Those mesh axes are then
  removed from every other rule, so that a member's own arrays (and the activations inside the
  vmapped step) never name a mesh axis the member axis already uses.
  """
  spec = partitioner.logical_to_mesh((MEMBERS_AXIS,))
  axes = spec[0] if len(spec) else None
  if axes is None:
    return partitioner, None
  names = axes if isinstance(axes, tuple) else (axes,)
  size = int(np.prod([partitioner.mesh.shape[n] for n in names]))
  if num_members % size:
    partitioner.fallbacks.append(
        f"{MEMBERS_AXIS}: {num_members} members not divisible by {names} ({size}); replicated")
    return partitioner, None

  def strip(value):
    if value is None:
      return None
    kept = tuple(a for a in (value if isinstance(value, tuple) else (value,)) if a not in names)
    if not kept:
      return None
    return kept if isinstance(value, tuple) else kept[0]

  view = copy.copy(partitioner)  # same mesh and fall-back list; only the rules differ
  view.logical_axis_rules = ((MEMBERS_AXIS, axes),) + tuple(
      (name, strip(value)) for name, value in partitioner.logical_axis_rules
      if name != MEMBERS_AXIS)
  return view, axes


class VmappedMembersTrainer:
  """Trains M models of one objective in one program, member m with its own peak learning
  rate, dropout rate, data and output dir.

  Args:
    objective: network + loss; `loss(params, batch, rng, dropout_rate=)` must accept a traced
      dropout rate (`PreferenceObjective` does).
    optimizer: the shared optimizer config; its learning_rate is replaced by each member's.
    partitioner: mesh and rules (see the module docstring for the 'members' rule).
    config: the loop settings every member shares (steps, batch size, seed, save/log cadence).
    member_dirs: one output dir per member.
    learning_rates, dropout_rates: per member.
    seq_len: sequence length of the batches.
    member_names: how errors and logs name the members (default: their dirs' base names).
  """

  def __init__(self, *, objective: Any, optimizer: OptimizerConfig, partitioner: Partitioner,
               config: TrainerConfig, member_dirs: Sequence[str],
               learning_rates: Sequence[float], dropout_rates: Sequence[float], seq_len: int,
               member_names: Sequence[str] | None = None):
    m = len(member_dirs)
    if m == 0:
      raise ValueError("no members to train: pass at least one member dir")
    if len(set(member_dirs)) != m:
      raise ValueError(f"member dirs {list(member_dirs)} repeat a dir: every member needs its "
                       "own output dir")
    if len(learning_rates) != m or len(dropout_rates) != m:
      raise ValueError(f"{m} member dirs but {len(learning_rates)} learning rates and "
                       f"{len(dropout_rates)} dropout rates: give one of each per member")
    self.num_members, self.member_dirs = m, list(member_dirs)
    self.member_names = list(member_names or [os.path.basename(d.rstrip("/"))
                                              for d in member_dirs])
    self.objective, self.optimizer, self.config, self.seq_len = (objective, optimizer, config,
                                                                 seq_len)
    self.learning_rates = [float(x) for x in learning_rates]
    self.dropout_rates = [float(x) for x in dropout_rates]
    self.partitioner, self.member_axes = member_partitioner(partitioner, m)

    # -- member-level shapes, shardings and init: exactly the sequential Trainer's ------------
    # (its own loop and jitted step are not used; model_dir is only its nominal output dir)
    self.member = Trainer(objective=objective, optimizer=optimizer, partitioner=self.partitioner,
                          config=config, model_dir=self.member_dirs[0], seq_len=seq_len)
    self.num_params = self.member.num_params
    mesh = self.partitioner.mesh

    def stacked(sharding: NamedSharding) -> NamedSharding:
      return NamedSharding(mesh, PartitionSpec(self.member_axes, *sharding.spec))

    replicated = self.partitioner.replicated()
    member_shardings = self.member.state_shardings
    self.state_shardings = TrainState(
        step=replicated,
        params=jax.tree_util.tree_map(stacked, member_shardings.params),
        opt_state=jax.tree_util.tree_map(stacked, member_shardings.opt_state))
    self.batch_shardings = {k: stacked(s) for k, s in self.member.batch_shardings.items()}
    self.vector_sharding = NamedSharding(mesh, PartitionSpec(self.member_axes))
    vmap = (dict(spmd_axis_name=self.member_axes) if self.member_axes is not None else {})
    self._hparams = jax.device_put(
        (np.asarray(self.learning_rates, np.float32), np.asarray(self.dropout_rates, np.float32)),
        self.vector_sharding)

    # -- jitted programs ----------------------------------------------------------------------
    self._stack = jax.jit(
        lambda trees: jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees),
        out_shardings=self.state_shardings.params)
    self._unstack = jax.jit(
        lambda tree: [jax.tree_util.tree_map(lambda x, i=i: x[i], tree) for i in range(m)],
        out_shardings=[member_shardings.params] * m)
    self._unstack_state = jax.jit(
        lambda state: [(jax.tree_util.tree_map(lambda x, i=i: x[i], state.params),
                        jax.tree_util.tree_map(lambda x, i=i: x[i], state.opt_state))
                       for i in range(m)],
        out_shardings=[(member_shardings.params, member_shardings.opt_state)] * m)
    self._stack_state = jax.jit(
        lambda step, pairs: TrainState(
            step=step,
            params=jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[p for p, _ in pairs]),
            opt_state=jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[o for _, o in pairs])),
        out_shardings=self.state_shardings)
    member_tx = self.member.tx  # the state's structure does not depend on the learning rate
    self._init_opt = jax.jit(
        lambda params: TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                  opt_state=jax.vmap(member_tx.init)(params)),
        in_shardings=(self.state_shardings.params,), out_shardings=self.state_shardings)

    base_key = jax.random.key(config.seed)

    def train_step_fn(state: TrainState, batch: dict[str, Array], hparams):
      # The sequential Trainer's key: the same for every member (each job uses the same seed).
      key = jax.random.fold_in(base_key, state.step)

      def member_step(params, opt_state, batch, learning_rate, dropout_rate):
        def loss_fn(p, b, rng):
          return objective.loss(p, b, rng, dropout_rate=dropout_rate)

        with self.partitioner.activation_rules():
          grads, sums = sum_grads(loss_fn, params, batch, key, microbatches=config.microbatches)
        tx, schedule = make_optimizer(optimizer, config.train_steps,
                                      learning_rate=learning_rate,
                                      trainable=getattr(objective, "trainable", None))
        new, metrics = optimizer_step(
            TrainState(step=state.step, params=params, opt_state=opt_state), grads, sums,
            tx=tx, schedule=schedule)
        return new.params, new.opt_state, metrics

      params, opt_state, metrics = jax.vmap(member_step, **vmap)(
          state.params, state.opt_state, batch, *hparams)
      return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    self._train_step = jax.jit(
        train_step_fn,
        in_shardings=(self.state_shardings, self.batch_shardings, (self.vector_sharding,) * 2),
        out_shardings=(self.state_shardings, self.vector_sharding), donate_argnums=(0,))

    def eval_fn(params, batch, valid):
      def one(p):
        with self.partitioner.activation_rules():
          return objective.eval_metrics(p, batch, valid)
      return jax.vmap(one, **vmap)(params)

    self._eval_step = jax.jit(
        eval_fn,
        in_shardings=(self.state_shardings.params, self.member.batch_shardings,
                      self.partitioner.batch_sharding(1)),
        out_shardings=self.vector_sharding)

  # ---------------------------------------------------------------------------------------------
  # State and batches
  # ---------------------------------------------------------------------------------------------
  def state_from_params(self, params: Sequence[Any]) -> TrainState:
    """A step-0 state (fresh optimizers) around the members' params (member-level trees)."""
    if len(params) != self.num_members:
      raise ValueError(f"{len(params)} params trees for {self.num_members} members")
    placed = [jax.tree_util.tree_map(jax.device_put, p, self.member.param_shardings)
              for p in params]
    return self._init_opt(self._stack(placed))

  def unstack_params(self, params: Any) -> list[Any]:
    """Stacked [members, ...] params -> one member-level tree per member."""
    return self._unstack(params)

  def stack_batches(self, host_batches: Sequence[dict[str, np.ndarray]]) -> dict[str, Array]:
    """Each member's *global* batch (numpy [batch, ...]) -> sharded [members, batch, ...]
    arrays, keeping the objective's features only. Every process passes all members' global
    batches and keeps the shards its devices hold, whatever the member axis's layout."""
    check = getattr(self.objective, "check_host_batch", None)
    if check is not None:
      for batch in host_batches:
        check(batch)
    out = {}
    for name, sharding in self.batch_shardings.items():
      missing = [i for i, b in enumerate(host_batches) if name not in b]
      if missing:
        raise ValueError(f"the dataset of {self.member_names[missing[0]]} has no feature "
                         f"{name!r} that {type(self.objective).__name__} needs (it has "
                         f"{sorted(host_batches[missing[0]])}): bind the dataset that matches "
                         "this stage's objective")
      full = np.stack([np.asarray(b[name]) for b in host_batches])
      out[name] = jax.make_array_from_callback(full.shape, sharding,
                                               lambda index, full=full: full[index])
    return out

  def train_step(self, state: TrainState, batch: dict[str, Array]
                 ) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step of every member (the input state is donated); metrics are [members]
    arrays. Its model FLOPs (`train_step_flops`) go to the stage profile."""
    with self.partitioner.mesh_context():
      out = self._train_step(state, batch, self._hparams)
    flops_lib.count(f"train step ({self.config.name}, {self.num_members} members)",
                    self.train_step_flops(batch))
    return out

  def train_step_flops(self, batch: Mapping[str, Any]) -> float:
    """Model FLOPs of one step of every member on stacked [members, batch, length] batches:
    members x one member's count at the batch's width (`Trainer.train_step_flops`)."""
    return self.num_members * self.member.train_step_flops(batch)

  # ---------------------------------------------------------------------------------------------
  # Evaluation
  # ---------------------------------------------------------------------------------------------
  def evaluate(self, params: Any, dataset: ArrayDataset) -> list[dict[str, float]]:
    """Every member's eval metrics on one ordered pass over `dataset`."""
    total = None
    for host_batch, valid in dataset.eval_batches(self.config.batch_size):
      batch = self.member.shard_batch(host_batch)
      valid = self.partitioner.shard_batch({"v": valid.astype(np.float32)},
                                           self.config.batch_size)["v"]
      with self.partitioner.mesh_context():
        sums = jax.device_get(self._eval_step(params, batch, valid))
      flops_lib.count(f"eval ({self.config.name}, {self.num_members} members)",
                      self.train_step_flops(batch) / 3)
      total = sums if total is None else jax.tree_util.tree_map(np.add, total, sums)
    return [normalise_metrics({k: v[i] for k, v in total.items()})
            for i in range(self.num_members)]

  # ---------------------------------------------------------------------------------------------
  # The loop
  # ---------------------------------------------------------------------------------------------
  def train(self, datasets: Sequence[ArrayDataset], *, eval_dataset: ArrayDataset | None = None,
            init_params: Sequence[Callable[[Trainer], Any]] | None = None,
            extra_eval_datasets: Mapping[str, ArrayDataset] | None = None) -> TrainState:
    """Trains every member up to `config.train_steps`, resuming from their checkpoints.

    Args:
      datasets: member m's training examples; its batch of step s is
        datasets[m].batch(s, batch_size) (its own seed: its own data order).
      eval_dataset: evaluated for every member every `eval_every` steps and at the end.
      extra_eval_datasets: {name: dataset} evaluated with it (metrics eval_<name>/*).
      init_params: member m's initial params from init_params[m](member-level Trainer), used
        only when the members have no checkpoint step in common (as the sequential
        `init_params`); None: a fresh init, the same for every member (as sequential jobs).
    Returns the final stacked state ([members, ...] leaves).
    """
    cfg, m = self.config, self.num_members
    if len(datasets) != m:
      raise ValueError(f"{len(datasets)} datasets for {m} members: give one per member")
    if init_params is not None and len(init_params) != m:
      raise ValueError(f"{len(init_params)} init_params for {m} members: give one per member")
    checkpointers = [ckpt_lib.TrainCheckpointer(d, save_every=cfg.save_every,
                                                keep=cfg.keep_checkpoints,
                                                async_save=cfg.async_checkpoints)
                     for d in self.member_dirs]
    writers: list[MetricsWriter] = []
    try:  # the setup; the loop's own guard takes over from run_training_loop
      # -- resume order: (a) the latest step every member has, (b) init_params, (c) fresh ----
      kept = [set(c.all_steps()) for c in checkpointers]
      common = set.intersection(*kept)
      latest = max(common) if common else None
      # A member saved beyond `latest` (killed between members' saves) keeps those checkpoints;
      # recomputing the same steps must not save them again.
      ahead = [max(k) if k else -1 for k in kept]
      if any(a > (latest or 0) for a in ahead):
        logging.warning("members resume from step %s, the latest step all of them have; "
                        "checkpoints beyond it are kept: %s", latest,
                        {n: a for n, a in zip(self.member_names, ahead) if a > (latest or 0)})
      if latest is not None:
        abstract = self.member.abstract_state
        pairs = [c.restore(latest, abstract.params, abstract.opt_state) for c in checkpointers]
        state = self._stack_state(jax.device_put(jnp.asarray(latest, jnp.int32),
                                                 self.state_shardings.step), pairs)
        logging.info("resumed %d members from step %d", m, latest)
      elif init_params is not None:
        state = self.state_from_params([init(self.member) for init in init_params])
      else:
        state = self.state_from_params([self.member.init_state().params] * m)
      start = int(latest or 0)

      writers = [MetricsWriter(d, resume_step=start) for d in self.member_dirs]
      peak, peak_how = flops_lib.peak_flops_reference(
          peak_flops_per_device=cfg.peak_flops_per_device)
      tokens_per_step = self.objective.tokens_per_example(self.seq_len) * cfg.batch_size
      logging.info("%s: %d members x %d params; member axis on %s; %s; peak %.3g FLOP/s (%s)",
                   cfg.name, m, self.num_params, self.member_axes, self.partitioner.explain(),
                   peak, peak_how)

      checkpoints = _MemberCheckpoints(checkpointers, ahead, self)

      def check_finite(per_member: list[dict[str, Any]], done: int) -> None:
        self._check_finite(per_member, done, checkpointers)

      def evaluate(state: TrainState, step: int) -> None:
        self._write_eval(writers, step, state.params, eval_dataset, extra_eval_datasets)

      def step(state: TrainState, index: int) -> tuple[TrainState, StepOutput]:
        batch = self.stack_batches([d.batch(index, cfg.batch_size, process_index=0,
                                            process_count=1) for d in datasets])
        state, metrics = self.train_step(state, batch)
        return state, StepOutput(metrics=metrics, flops=self.train_step_flops(batch))
    except BaseException as e:
      for c in checkpointers:
        c.finish(e)
      for w in writers:
        w.close()
      raise
    return run_training_loop(
        state=state, start=start, train_steps=cfg.train_steps, step=step,
        checkpoints=checkpoints,
        hooks=[TrainMetricsHook(
                   log_every=cfg.log_every, check_finite_every=cfg.check_finite_every,
                   writers=writers,
                   progress=Progress(name=cfg.name, total_steps=cfg.train_steps,
                                     start_step=start),
                   tokens_per_step=tokens_per_step, peak_flops=peak,
                   check_finite=check_finite, members=m),
               EvalHook(every=cfg.eval_every, evaluate=evaluate)],
        preempted=lambda done: (
            f"SIGTERM at step {done}: checkpoints of {m} members saved in "
            f"{os.path.dirname(self.member_dirs[0].rstrip('/'))}; rerun the same command to "
            "resume"))

  def _write_eval(self, writers, step: int, params: Any, dataset: ArrayDataset | None,
                  extra: Mapping[str, ArrayDataset] | None) -> None:
    for prefix, data in eval_sets(dataset, extra):
      for writer, metrics in zip(writers, self.evaluate(params, data)):
        writer.write(step, {f"{prefix}/{k}": v for k, v in metrics.items()})

  def _check_finite(self, per_member: list[dict[str, Any]], step: int, checkpointers) -> None:
    """The Trainer's NaN guard for every member; the first non-finite member is named (all
    members stop: they share one program)."""
    bad = [i for i, x in enumerate(per_member)
           if not (math.isfinite(float(x["loss"])) and math.isfinite(float(x["grad_norm"])))]
    if not bad:
      return
    for c in checkpointers:
      c.wait()
    i = bad[0]
    error = non_finite_error(per_member[i], step, checkpointers[i], self.member_dirs[i])
    also = (f" Also non-finite: {', '.join(self.member_names[j] for j in bad[1:])}."
            if len(bad) > 1 else "")
    raise NonFiniteError(
        f"{self.member_names[i]} (learning_rate={self.learning_rates[i]:g}, "
        f"dropout_rate={self.dropout_rates[i]:g}) of {self.num_members} vmapped members: "
        f"{error}{also} All members stop with it; rerun after the fix resumes every member "
        "from their latest common checkpoint.")


class _MemberCheckpoints(CheckpointSet):
  """Every member's `TrainCheckpointer`, saved together from the stacked state.

  A member saved beyond the common resume step (killed between members' saves) keeps those
  checkpoints: recomputing the same steps does not save them again (`ahead`). Every member has
  the same schedule; it is asked of a member that is not ahead (the others would answer False
  for the steps they already hold)."""

  def __init__(self, checkpointers: list[ckpt_lib.TrainCheckpointer], ahead: list[int],
               trainer: VmappedMembersTrainer):
    self.checkpointers, self.ahead, self.trainer = checkpointers, ahead, trainer
    self.policy = checkpointers[int(np.argmin(ahead))].manager

  def _behind(self, step: int) -> list[int]:
    """The members that do not hold `step` yet."""
    return [i for i, c in enumerate(self.checkpointers)
            if step > max(self.ahead[i], c.latest_step() if c.latest_step() is not None
                          else -1)]

  def due(self, step: int) -> bool:
    return self.policy.should_save(step)

  def save(self, step: int, state: TrainState, *, force: bool, due: bool) -> None:
    if not (force or due):
      return
    behind = self._behind(step)
    if not behind:
      return
    with self.trainer.partitioner.mesh_context():
      pairs = self.trainer._unstack_state(state)
    for i in behind:
      self.checkpointers[i].save(step, *pairs[i], force=force)

  def holds(self, step: int) -> bool:
    return not self._behind(step)


def _fresh_init(trainer: Trainer) -> Any:
  """A random decoder and head from the member-level Trainer's seed: the same init for every
  from-scratch member (Remark 1's "shared random init")."""
  return trainer.init_state().params


def train_reward_members(*, members_dir: str | None = None,
                         member_indices: Sequence[int] = (0,),
                         sweep: members_lib.MemberSweep = members_lib.MemberSweep(),
                         sft_dir: str, probe_dir: str, model_config: TransformerConfig,
                         optimizer: OptimizerConfig, trainer_config: TrainerConfig,
                         dataset: ArrayDataset, eval_dataset: ArrayDataset | None = None,
                         seq_len: int, partitioner: Partitioner | None = None,
                         extra_eval_datasets: Mapping[str, ArrayDataset] | None = None,
                         variants: Mapping[str, Mapping[str, Any]] | None = None
                         ) -> TrainState:
  """Trains members `member_indices` of the sweep into MEMBERS_DIR/member_<i>, all in one
  vmapped program (arguments as `members.train_reward_model`, which trains one per job).

  variants: {name: overrides} instead trains one RM per entry into MEMBERS_DIR/<name>: member
    member_indices[0]'s draw with the overrides (learning_rate, dropout_rate, data_seed,
    sft_step), or, with 'from_scratch': True, a random decoder and head (the Trainer's seed,
    shared by every from-scratch variant) and no probe: the experiment's LMC diversity pairs
    and Remark 1's from-scratch RMs, in one program (`members.train_reward_model` trains the
    same ones one job each).

  Returns the final stacked state ([members, ...] leaves, in the order of member_indices).
  """
  if not members_dir:
    raise ValueError("MEMBERS_DIR is not set: pass --gin.MEMBERS_DIR=\"'/path'\"")
  indices = [int(i) for i in member_indices]
  if not indices:
    raise ValueError("member_indices is empty: pass the members to train, e.g. "
                     "--gin.NUM_MEMBERS=3")
  if len(set(indices)) != len(indices):
    raise ValueError(f"member_indices {indices} repeat a member: each member is trained once")
  if variants:
    base = members_lib.draw_member(sweep, indices[0])
    hparams, dirs, scratch = [], [], []
    fields = {f.name for f in dataclasses.fields(members_lib.MemberHParams)} - {"index"}
    for name, overrides in variants.items():
      overrides = dict(overrides)
      scratch.append(bool(overrides.pop("from_scratch", False)))
      unknown = set(overrides) - fields
      if unknown:
        raise ValueError(f"variant {name!r} overrides unknown fields {sorted(unknown)}: use "
                         f"{sorted(fields)} or from_scratch")
      hparams.append(dataclasses.replace(base, **overrides))
      dirs.append(os.path.join(members_dir, name))
    names = list(variants)
  else:
    hparams = [members_lib.draw_member(sweep, i) for i in indices]
    dirs = [members_lib.member_dir(members_dir, i) for i in indices]
    scratch = [False] * len(indices)
    names = [f"member {h.index}" for h in hparams]
  sft_paths = [None if fresh else members_lib.sft_checkpoint_path(sft_dir, h.sft_step)
               for h, fresh in zip(hparams, scratch)]
  for out, member, sft_path, fresh in zip(dirs, hparams, sft_paths, scratch):
    members_lib.write_hparams(out, member, {"sft_path": sft_path,
                                            "probe_dir": None if fresh else probe_dir})
  if jax.process_index() == 0:
    for out in dirs:
      run_dir.write_operative_config(out)
  trainer = VmappedMembersTrainer(
      objective=PreferenceObjective(model_config), optimizer=optimizer,
      partitioner=partitioner or Partitioner(),
      config=dataclasses.replace(
          trainer_config, name=f"rm_members_{indices[0]}" if len(indices) == 1 else
          f"rm_members_{indices[0]}-{indices[-1]}") if not variants else
      dataclasses.replace(trainer_config, name="rm_" + "+".join(names)),
      member_dirs=dirs, learning_rates=[h.learning_rate for h in hparams],
      dropout_rates=[h.dropout_rate for h in hparams], seq_len=seq_len,
      member_names=names)
  t0 = time.time()
  state = trainer.train(
      [dataclasses.replace(dataset, seed=h.data_seed) for h in hparams],
      eval_dataset=eval_dataset, extra_eval_datasets=extra_eval_datasets,
      init_params=[_fresh_init if fresh else
                   ProbedRewardModelInit(sft_path=p, probe_path=probe_dir)
                   for p, fresh in zip(sft_paths, scratch)])
  if jax.process_index() == 0:
    wall = round(time.time() - t0, 2)
    for out in dirs:
      run_dir.write_done(out, {
          "step": int(state.step), "train_steps": trainer_config.train_steps,
          "num_params": trainer.num_params, "wall_s": wall})
  return state
