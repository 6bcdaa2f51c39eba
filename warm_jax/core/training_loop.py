"""The one training loop: every training program's step loop and its guarantees, in one place.

Where it sits: under every training stage. `trainer.Trainer.train` (pre-training, SFT, the
linear probe, one RM member), `vmapped_members.VmappedMembersTrainer.train` (M members in one
program) and `rl.train_policy` (rollout, value and policy updates) each supply
  - a step: `(state, step) -> (state, output)`, the program's own work on step `step`;
  - a `CheckpointSet`: what is saved and when (`TrainCheckpoints` wraps one
    `TrainCheckpointer`; the vmapped members and RL have their own sets of several);
  - hooks (`LoopHook`): metrics and the NaN guard (`TrainMetricsHook`), evaluations
    (`EvalHook`), RL's rollout statistics and evals,
and `run_training_loop` runs them in the same order at every step, as t5x's and Levanter's
loops do with their callbacks:
  1. the step;
  2. every hook's `after_step` (a hook that raises, e.g. `NonFiniteError`, stops the run before
     anything of that step is saved);
  3. the checkpoint: `CheckpointSet.save` with `due` (its own schedule) and `force` at the last
     step;
  4. the reliability drills' fault hook: SIGKILL right after step N's save was issued when
     WARM_JAX_FAULT_KILL_AT_STEP=N (the async write may still be in flight);
  5. SIGTERM (a preemption): a checkpoint of the current step unless step 3 just wrote it, then
     `Preempted` (the command lines exit 143; a rerun resumes there). Multi-host, any process's
     SIGTERM stops every process at the same step.
After the last step: every hook's `at_end` (the final evaluations), then a save of the last step
if it is not on disk yet. Whatever happens, the SIGTERM handler is given back, the checkpoints
are finished (waited for, or abandoned after a peer's failure: `TrainCheckpointer.finish`) and
the hooks closed (their metric writers flushed).
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from warm_jax.core.metrics_writer import MetricsWriter, Progress


class NonFiniteError(FloatingPointError):
  """Loss or gradient norm became NaN/inf; the last good checkpoint is kept."""


class Preempted(RuntimeError):
  """SIGTERM received: a checkpoint was saved at the current step; rerun to resume."""


FAULT_ENV = "WARM_JAX_FAULT_KILL_AT_STEP"


def maybe_inject_fault(step: int) -> None:
  """Reliability drills: SIGKILL this process right after step N's save was issued (the async
  write may still be in flight), when WARM_JAX_FAULT_KILL_AT_STEP=N is set."""
  target = os.environ.get(FAULT_ENV)
  if target is not None and int(target) == step:
    os.kill(os.getpid(), signal.SIGKILL)


class SigtermFlag:
  """Turns SIGTERM into a flag the loop polls (multi-host: any process's flag stops all)."""

  def __init__(self):
    self._flag = False
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not the main thread
      self._previous = None

  def _handler(self, signum, frame):
    del signum, frame
    self._flag = True

  def requested(self) -> bool:
    if jax.process_count() == 1:
      return self._flag
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.array(self._flag))))

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class CheckpointSet:
  """What a loop checkpoints, and when. A subclass implements `due` and `save` and lists its
  checkpointers (anything with `latest_step`, `wait` and `finish`, e.g. `TrainCheckpointer`) in
  `checkpointers`; `holds`, `wait` and `finish` cover all of them unless overridden."""

  checkpointers: Sequence[Any] = ()

  def due(self, step: int) -> bool:
    """Whether the schedule saves `step` (asked before the hooks, which read metrics back
    before any save)."""
    raise NotImplementedError

  def save(self, step: int, state: Any, *, force: bool, due: bool) -> None:
    """Issues the save of `state` at `step` when `due` or `force` (possibly asynchronous)."""
    raise NotImplementedError

  def holds(self, step: int) -> bool:
    """Whether every checkpoint of the set has `step` as its latest."""
    return all(c.latest_step() == step for c in self.checkpointers)

  def wait(self) -> None:
    """Blocks until the saves in flight are on disk (raising if a write failed)."""
    for c in self.checkpointers:
      c.wait()

  def finish(self, error: BaseException | None) -> None:
    """The loop's `finally`: `TrainCheckpointer.finish` of every checkpointer."""
    for c in self.checkpointers:
      c.finish(error)


class TrainCheckpoints(CheckpointSet):
  """One `checkpoints.TrainCheckpointer` of a `TrainState` (params and opt_state items); its
  manager's schedule (`save_every`) decides what is due."""

  def __init__(self, checkpointer):
    self.checkpointer, self.checkpointers = checkpointer, [checkpointer]

  def due(self, step: int) -> bool:
    return self.checkpointer.manager.should_save(step)

  def save(self, step: int, state: Any, *, force: bool, due: bool) -> None:
    del due  # the checkpointer asks its own schedule
    self.checkpointer.save(step, state.params, state.opt_state, force=force)


@dataclasses.dataclass(frozen=True)
class StepEnd:
  """What a hook sees after a step: `done` steps are complete, `state` is the state after the
  step, `output` the step's own output, `save_due` whether this step's checkpoint is scheduled,
  `last` whether it was the last step."""

  done: int
  state: Any
  output: Any
  save_due: bool
  last: bool


class LoopHook:
  """A callback of `run_training_loop` (every method optional)."""

  def at_start(self, state: Any) -> None:
    """Before the first step (inside the loop's guard: a failure here still finishes the
    checkpoints and closes the hooks)."""

  def after_step(self, end: StepEnd) -> None:
    """After each step, before its checkpoint is issued."""

  def at_end(self, state: Any) -> None:
    """After the last step, before the final save (not after a preemption or an error)."""

  def close(self) -> None:
    """Always, last (flush writers)."""


def run_training_loop(*, state: Any, start: int, train_steps: int,
                      step: Callable[[Any, int], tuple[Any, Any]], checkpoints: CheckpointSet,
                      hooks: Sequence[LoopHook] = (),
                      preempted: Callable[[int], str],
                      preempt_at_last_step: bool = True) -> Any:
  """Runs steps start .. train_steps - 1 (module docstring) and returns the final state.

  Args:
    state: the state to start from (restored or initialised by the caller).
    step: `(state, step) -> (new state, output)`; the output goes to the hooks.
    checkpoints: what is saved (`CheckpointSet`).
    hooks: called in order after every step and at the end (`LoopHook`).
    preempted: the `Preempted` message for a SIGTERM after step `done` (say where the
      checkpoint is and that rerunning resumes).
    preempt_at_last_step: whether a SIGTERM seen after the last step still raises `Preempted`
      (its checkpoint is the final one, and the rerun does only what follows the last step: the
      trainers' final evaluations); False finishes the run instead (RL, whose final evaluation
      is part of its last step).
  """
  stop = SigtermFlag()
  error: BaseException | None = None
  try:
    for hook in hooks:
      hook.at_start(state)
    for index in range(start, train_steps):
      state, output = step(state, index)
      done = index + 1
      due = checkpoints.due(done)
      end = StepEnd(done=done, state=state, output=output, save_due=due,
                    last=done == train_steps)
      for hook in hooks:
        hook.after_step(end)
      checkpoints.save(done, state, force=end.last, due=due)
      maybe_inject_fault(done)
      if (preempt_at_last_step or not end.last) and stop.requested():
        checkpoints.wait()
        if not checkpoints.holds(done):  # not a save step
          checkpoints.save(done, state, force=True, due=False)
          checkpoints.wait()
        raise Preempted(preempted(done))
    for hook in hooks:
      hook.at_end(state)
    checkpoints.wait()
    if start < train_steps and not checkpoints.holds(train_steps):
      checkpoints.save(train_steps, state, force=True, due=False)
      checkpoints.wait()
  except BaseException as e:
    error = e  # a dead peer: `finish` enters no barrier that would wait for it
    raise
  finally:
    stop.restore()
    checkpoints.finish(error)
    for hook in hooks:
      hook.close()
  return state


# -------------------------------------------------------------------------------------------------
# The trainers' hooks: train/* and perf/* metrics with the NaN guard, and evaluations.
# -------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepOutput:
  """A trainer step's output: its metrics (device arrays; with a leading member axis for the
  vmapped members) and its model FLOPs (for perf/mfu)."""

  metrics: Mapping[str, Any]
  flops: float


class TrainMetricsHook(LoopHook):
  """Reads a step's metrics back from the devices only when needed (every
  `check_finite_every` steps, on log steps, at the last step and before a scheduled save),
  checks them (`check_finite(per_member, done)` raises `NonFiniteError`), and every `log_every`
  steps writes the window means of train/* with perf/steps_per_s, perf/tokens_per_s and
  perf/mfu (rates counted from the end of the first, compiling step) to each member's writer
  and a progress line.

  members: None for one model (metrics as the step returns them); M for the vmapped members
  (metrics with a leading member axis; each member's own window to its own writer, perf/members
  beside it, and the progress line shows the mean, min and max loss and the program's tokens/s).
  """

  def __init__(self, *, log_every: int, check_finite_every: int,
               writers: Sequence[MetricsWriter], progress: Progress, tokens_per_step: float,
               peak_flops: float, check_finite: Callable[[list[dict[str, Any]], int], None],
               members: int | None = None):
    self.log_every, self.check_finite_every = log_every, check_finite_every
    self.writers, self.progress = list(writers), progress
    self.tokens_per_step, self.peak_flops = tokens_per_step, peak_flops
    self.check_finite, self.members = check_finite, members
    self._windows: list[list[dict[str, Any]]] = [[] for _ in self.writers]
    self._t_window: float | None = None  # None until the first (compiling) step has run
    self._steps, self._flops = 0, 0.0

  def after_step(self, end: StepEnd) -> None:
    done, log = end.done, end.done % self.log_every == 0 or end.last
    # Read back (a device sync) only when needed: before anything is saved or logged.
    if done % self.check_finite_every == 0 or log or end.save_due:
      host = jax.device_get(end.output.metrics)
      per_member = ([host] if self.members is None else
                    [{k: v[i] for k, v in host.items()} for i in range(self.members)])
      self.check_finite(per_member, done)
      for window, metrics in zip(self._windows, per_member):
        window.append(metrics)
    if self._t_window is None:  # the first step compiled; rates count from its end
      jax.block_until_ready(end.state)
      self._t_window, self._steps, self._flops = time.perf_counter(), 0, 0.0
    else:
      self._steps += 1
      self._flops += end.output.flops
    if log and self._windows[0]:
      self._log(done)
      self._windows = [[] for _ in self.writers]
      self._t_window, self._steps, self._flops = time.perf_counter(), 0, 0.0

  def _log(self, done: int) -> None:
    elapsed = time.perf_counter() - self._t_window
    rows = [window_means(w) for w in self._windows]
    for writer, scalars in zip(self.writers, rows):
      if self._steps and elapsed > 0:
        # A member's own throughput (comparable with a sequential job's); MFU is the whole
        # program's, since vmapped members share the devices.
        scalars["perf/steps_per_s"] = self._steps / elapsed
        scalars["perf/tokens_per_s"] = self._steps * self.tokens_per_step / elapsed
        scalars["perf/mfu"] = self._flops / elapsed / self.peak_flops
      if self.members is not None:
        scalars["perf/members"] = self.members
      writer.write(done, scalars)
    if self.members is None:
      shown = {k.split("/")[-1]: v for k, v in rows[0].items()
               if k in ("train/loss", "train/grad_norm", "perf/tokens_per_s", "perf/mfu")}
    else:
      losses = [r["train/loss"] for r in rows]
      shown = {"loss": float(np.mean(losses)), "loss_min": min(losses),
               "loss_max": max(losses)}
      if "perf/tokens_per_s" in rows[0]:
        shown["tokens_per_s"] = rows[0]["perf/tokens_per_s"] * self.members
        shown["mfu"] = rows[0]["perf/mfu"]
    self.progress.update(done, shown)

  def close(self) -> None:
    for writer in self.writers:
      writer.close()


class EvalHook(LoopHook):
  """Evaluates every `every` steps (not at the last step) and once at the end:
  `evaluate(state, step)` computes and writes the metrics."""

  def __init__(self, *, every: int, evaluate: Callable[[Any, int], None]):
    self.every, self.evaluate = every, evaluate

  def after_step(self, end: StepEnd) -> None:
    if self.every and end.done % self.every == 0 and not end.last:
      self.evaluate(end.state, end.done)

  def at_end(self, state: Any) -> None:
    self.evaluate(state, int(state.step))


def window_means(window: list[dict[str, Any]]) -> dict[str, float]:
  """Means of the per-step metrics since the last log line, namespaced train/*: a summed
  metric is its total over the window / the total weight; grad_norm, param_norm and
  learning_rate are plain means."""
  out = {}
  weight = sum(float(m["weight"]) for m in window)
  for key in window[-1]:
    if key == "weight":
      out["train/weight"] = weight / len(window)
    elif key in ("grad_norm", "param_norm", "learning_rate"):
      out[f"train/{key}"] = float(np.mean([float(m[key]) for m in window]))
    else:
      out[f"train/{key}"] = sum(float(m[key]) for m in window) / max(weight, 1e-9)
  return out


def non_finite_error(metrics: Mapping[str, Any], step: int, checkpointer, model_dir: str
                     ) -> NonFiniteError | None:
  """The NaN guard of one model's step metrics: None when loss and grad norm are finite, else
  the error to raise (after waiting for the save in flight, so it can name the last good
  checkpoint)."""
  loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
  if math.isfinite(loss) and math.isfinite(grad_norm):
    return None
  checkpointer.wait()
  last = checkpointer.latest_step()
  kept = (f"the last good checkpoint is step {last} in {checkpointer.directory}"
          if last is not None else "no checkpoint had been written yet")
  return NonFiniteError(
      f"non-finite training at step {step} of {model_dir}: loss sum={loss}, "
      f"grad_norm={grad_norm}, learning_rate={float(metrics['learning_rate']):.3g}. Nothing "
      f"non-finite was saved; {kept}. Lower the learning rate, enable gradient clipping, or "
      f"check the data for that step, then rerun (it resumes from the last good checkpoint).")
