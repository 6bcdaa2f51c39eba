"""RL's state: the policy, the value model and the KL anchor; their checkpoints and their start.

Where it sits: between `rl.loop` and the shared `training_loop`. `RLState` is what an RL step
carries; `RLCheckpoints` saves all three together (MODEL_DIR/checkpoints/<step> for the policy,
MODEL_DIR/value/, MODEL_DIR/anchor/ with an EMA anchor) every save_every steps and at the end;
`initial_state` resumes them from MODEL_DIR's latest step, else starts the policy and the value
backbone from the SFT checkpoint (the value under a zero head: V = 0 until it is fit).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from warm_jax.core import checkpoints as ckpt_lib
from warm_jax.core.partitioning import is_peer_failure
from warm_jax.core.trainer import Trainer, TrainState
from warm_jax.core.training_loop import CheckpointSet


@dataclasses.dataclass(frozen=True)
class RLState:
  """The policy's train state, the value model's (None without a value baseline) and the EMA
  anchor's params (None with the SFT anchor)."""

  policy: TrainState
  value: TrainState | None
  anchor: Any

  @property
  def value_params(self) -> Any:
    return None if self.value is None else self.value.params


class AnchorCheckpointer:
  """The EMA anchor's params, one orbax item per saved step (MODEL_DIR/anchor/<step>)."""

  def __init__(self, directory: str, keep: int | None):
    self.manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True), item_handlers={"params": ckpt_lib.standard_handler()})

  def save(self, step: int, params: Any) -> None:
    self.manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                      force=True)

  def restore(self, step: int, abstract: Any) -> Any:
    return self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract)))["params"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def close(self) -> None:
    self.manager.close()

  def finish(self, error: BaseException | None = None) -> None:
    """`TrainCheckpointer.finish`: no wait (orbax barriers) after a peer failure."""
    if not is_peer_failure(error):
      self.wait()
      self.close()


class RLCheckpoints(CheckpointSet):
  """The policy's, the value's and the anchor's checkpoints, saved together when the step is a
  multiple of save_every, at the last step and on SIGTERM."""

  def __init__(self, *, policy: ckpt_lib.TrainCheckpointer,
               value: ckpt_lib.TrainCheckpointer | None, anchor: AnchorCheckpointer | None,
               save_every: int):
    self.policy, self.value, self.anchor, self.save_every = policy, value, anchor, save_every
    self.checkpointers = [c for c in (policy, value, anchor) if c is not None]

  def due(self, step: int) -> bool:
    return step % self.save_every == 0

  def save(self, step: int, state: RLState, *, force: bool, due: bool) -> None:
    if not (force or due):
      return
    self.policy.save(step, state.policy.params, state.policy.opt_state, force=True)
    if self.value is not None:
      self.value.save(step, state.value.params, state.value.opt_state, force=True)
    if self.anchor is not None:
      self.anchor.save(step, state.anchor)


def initial_state(*, start: int, checkpoints: RLCheckpoints, policy_trainer: Trainer,
                  value_trainer: Trainer | None, sft: Any, sft_host: Any, sft_path: str,
                  value_warmup_steps: int) -> RLState:
  """The state at `start`: restored from the checkpoints when start > 0 (the policy
  optimiser's step counts policy updates: start - value_warmup_steps), else the SFT policy (a
  copy: the train step donates the policy's buffers, the reference keeps its own), the SFT
  backbone under a zero value head, and the SFT policy as the anchor."""
  abstract = policy_trainer.abstract_state
  if start:
    params, opt = checkpoints.policy.restore(start, abstract.params, abstract.opt_state)
    policy = policy_trainer.state_from_params(params).replace(
        opt_state=opt, step=jnp.asarray(max(0, start - value_warmup_steps), jnp.int32))
    logging.info("resumed RL in %s from step %d", checkpoints.policy.directory.parent, start)
  else:
    policy = policy_trainer.state_from_params(jax.tree_util.tree_map(jnp.copy, sft))
  value = None
  if value_trainer is not None:
    if start:
      vabs = value_trainer.abstract_state
      vparams, vopt = checkpoints.value.restore(start, vabs.params, vabs.opt_state)
      value = value_trainer.state_from_params(vparams).replace(
          opt_state=vopt, step=jnp.asarray(start, jnp.int32))
    else:  # the SFT backbone under a zero head: V = 0 until the value warm-up fits it
      head = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype),
                                    value_trainer.abstract_state.params["value_head"])
      vparams, _ = ckpt_lib.init_from_checkpoint(
          value_trainer.abstract_state.params, {"decoder": sft_host["decoder"],
                                                "value_head": head}, source_name=sft_path)
      value = value_trainer.state_from_params(vparams)
  anchor = None
  if checkpoints.anchor is not None:
    anchor = (checkpoints.anchor.restore(start, abstract.params) if start
              else jax.tree_util.tree_map(jnp.copy, sft))
  return RLState(policy=policy, value=value, anchor=anchor)
