"""The shared training loop's contract, on a toy program whose every call is recorded.

`training_loop.run_training_loop` runs the trainer, the vmapped members and RL; these tests pin
its order of events (step, hooks, checkpoint, fault hook, SIGTERM), its preemption and NaN
behaviour and its cleanup, independently of any model. The programs' own tests (test_trainer,
test_vmapped_members, test_rl) check the same guarantees end to end.
"""

import os
import signal

import pytest

from warm_jax.core.training_loop import (CheckpointSet, EvalHook, LoopHook, NonFiniteError,
                                         Preempted, run_training_loop)


class _Checkpoints(CheckpointSet):
  """Saves to a list; every `every` steps is due."""

  def __init__(self, log, every=3):
    self.log, self.every, self.saved, self.finished = log, every, [], None

  def due(self, step):
    return step % self.every == 0

  def save(self, step, state, *, force, due):
    if force or due:
      self.saved.append((step, state))
      self.log.append(("save", step, force))

  def holds(self, step):
    return bool(self.saved) and self.saved[-1][0] == step

  def wait(self):
    self.log.append(("wait",))

  def finish(self, error):
    self.finished = error
    self.log.append(("finish", type(error).__name__ if error else None))


class _Recorder(LoopHook):
  def __init__(self, log, fail_at=None):
    self.log, self.fail_at = log, fail_at

  def at_start(self, state):
    self.log.append(("start", state))

  def after_step(self, end):
    self.log.append(("after", end.done, end.state, end.output, end.save_due, end.last))
    if end.done == self.fail_at:
      raise NonFiniteError(f"step {end.done}")

  def at_end(self, state):
    self.log.append(("end", state))

  def close(self):
    self.log.append(("close",))


def _step(log, sigterm_at=None):
  def step(state, index):
    log.append(("step", index))
    if index == sigterm_at:
      os.kill(os.getpid(), signal.SIGTERM)
    return state + 1, f"out{index}"
  return step


def test_each_step_runs_hooks_then_its_checkpoint_and_the_end_saves_once():
  log = []
  ckpt = _Checkpoints(log)
  final = run_training_loop(state=10, start=1, train_steps=4, step=_step(log), checkpoints=ckpt,
                            hooks=[_Recorder(log)], preempted=str)
  assert final == 13
  assert log == [
      ("start", 10),
      ("step", 1), ("after", 2, 11, "out1", False, False),
      ("step", 2), ("after", 3, 12, "out2", True, False), ("save", 3, False),
      ("step", 3), ("after", 4, 13, "out3", False, True), ("save", 4, True),
      ("end", 13), ("wait",),  # step 4 was saved by the last step: no second save
      ("finish", None), ("close",)]
  assert ckpt.saved == [(3, 12), (4, 13)]


def test_a_run_already_at_its_last_step_does_only_the_end():
  log = []
  ckpt = _Checkpoints(log)
  run_training_loop(state=5, start=4, train_steps=4, step=_step(log), checkpoints=ckpt,
                    hooks=[_Recorder(log)], preempted=str)
  assert ("step", 4) not in log and ("end", 5) in log and ckpt.saved == []


def test_a_hook_that_raises_stops_before_the_step_is_saved_and_still_cleans_up():
  log = []
  ckpt = _Checkpoints(log)
  with pytest.raises(NonFiniteError, match="step 3"):
    run_training_loop(state=0, start=0, train_steps=6, step=_step(log), checkpoints=ckpt,
                      hooks=[_Recorder(log, fail_at=3)], preempted=str)
  assert ckpt.saved == []  # step 3 was due, but its hook failed first
  assert isinstance(ckpt.finished, NonFiniteError)
  assert log[-2:] == [("finish", "NonFiniteError"), ("close",)]


@pytest.mark.parametrize("every", [2, 5])
def test_sigterm_checkpoints_the_current_step_once_and_raises_preempted(every):
  log = []
  ckpt = _Checkpoints(log, every=every)
  previous = signal.getsignal(signal.SIGTERM)
  with pytest.raises(Preempted, match="stopped after 2"):
    run_training_loop(state=0, start=0, train_steps=6, step=_step(log, sigterm_at=1),
                      checkpoints=ckpt, hooks=[_Recorder(log)],
                      preempted=lambda done: f"stopped after {done}")
  assert [s for s, _ in ckpt.saved] == [2]  # the scheduled save (every=2) or the forced one
  assert ("step", 2) not in log and ("end", 2) not in log
  assert signal.getsignal(signal.SIGTERM) == previous  # the handler is given back
  assert isinstance(ckpt.finished, Preempted)


def test_sigterm_at_the_last_step_finishes_when_the_program_asks():
  log = []
  ckpt = _Checkpoints(log)
  final = run_training_loop(state=0, start=0, train_steps=2, step=_step(log, sigterm_at=1),
                            checkpoints=ckpt, hooks=[_Recorder(log)], preempted=str,
                            preempt_at_last_step=False)
  assert final == 2 and ("end", 2) in log
  with pytest.raises(Preempted):
    run_training_loop(state=0, start=0, train_steps=2, step=_step([], sigterm_at=1),
                      checkpoints=_Checkpoints([]), preempted=str)


def test_eval_hook_evaluates_every_n_steps_and_once_at_the_end():
  class State(int):
    @property
    def step(self):
      return int(self)

  seen = []
  run_training_loop(state=State(0), start=0, train_steps=5,
                    step=lambda s, i: (State(s + 1), None), checkpoints=_Checkpoints([]),
                    hooks=[EvalHook(every=2, evaluate=lambda s, step: seen.append(step))],
                    preempted=str)
  assert seen == [2, 4, 5]
