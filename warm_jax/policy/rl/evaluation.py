"""RL's evaluations and logs: held-out evals, the members' disagreement, the per-step scalars.

Where it sits: the hook `rl.loop` gives the shared `training_loop`. `RLEvaluator` samples the
eval prompts with fixed keys and reduces them to `EVAL_KEYS` (plus `DISAGREEMENT_EVAL_KEYS`
against the step-0 eval's scales when disagreement members are set); `step_scalars` reduces a
training rollout to `METRIC_KEYS`; `RLLogHook` checks each step's scalars are finite (before
anything of the step is saved), writes their window means every log_every steps and the evals
(at step 0, every eval_every steps and at the end) to MODEL_DIR/metrics.jsonl, and shows
progress.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from warm_jax.core import checkpoints as ckpt_lib
from warm_jax.policy import disagreement as dis
from warm_jax.data.batching import ArrayDataset
from warm_jax.core.metrics_writer import MetricsWriter, Progress
from warm_jax.policy.rl.config import DISAGREEMENT_EVAL_KEYS, DISAGREEMENT_REFERENCE_FILE, RLConfig
from warm_jax.policy.rl.rollout import Rollouts
from warm_jax.policy.rl.state import RLState
from warm_jax.core.training_loop import LoopHook, NonFiniteError, StepEnd


class RLEvaluator:
  """Held-out evaluation of RL policies: `eval_rollouts` samples the eval prompts (the same
  sampling keys at every eval: seed + 1) and `evaluate` reduces them to the eval metrics.

  Args:
    rollouts: the run's `Rollouts`.
    eval_dataset: the eval prompts.
    eval_oracle: the judge of the eval prompts.
    rl: the RL config (num_eval_prompts, kl_coef).
    seed: the run's seed.
    disagreement_members: the disagreement members' paths (None: off).
    model_dir: where the disagreement reference is written.
  """

  def __init__(self, *, rollouts: Rollouts, eval_dataset: ArrayDataset, eval_oracle: Any,
               rl: RLConfig, seed: int, disagreement_members: list[str] | None,
               model_dir: str):
    self.rollouts, self.eval_dataset, self.eval_oracle = rollouts, eval_dataset, eval_oracle
    self.rl, self.seed, self.model_dir = rl, seed, model_dir
    self.disagreement_members = disagreement_members
    self.reference: dict[str, Any] | None = None  # the step-0 scales of the disagreement

  def eval_rollouts(self, params: Any, state: RLState) -> dict[str, np.ndarray]:
    """Per-response eval statistics of policy `params` on the eval prompts (fixed sampling
    keys); `state` gives the anchor and the value model."""
    batch = self.rollouts.batch
    data = self.eval_dataset.features
    n = len(data["prompt_tokens"]) if self.rl.num_eval_prompts is None else min(
        self.rl.num_eval_prompts, len(data["prompt_tokens"]))
    stats = []
    for lo in range(0, n, batch):
      idx = np.arange(lo, lo + batch) % n  # the last chunk wraps; extra rows dropped below
      _, _, host = self.rollouts(params, {key: v[idx] for key, v in data.items()},
                                 self.eval_oracle, self.seed + 1, lo, anchor=state.anchor,
                                 value=state.value_params, with_members=True)
      stats.append({key: np.asarray(v)[:min(batch, n - lo)] for key, v in host.items()
                    if key in ("proxy", "oracle", "kl_to_sft", "length", "normalized_reward",
                               "ended", "members")})
    return {key: np.concatenate([s[key] for s in stats]) for key in stats[0]}

  def evaluate(self, cat: dict[str, np.ndarray]) -> dict[str, float]:
    """`EVAL_KEYS` (and the disagreement keys) of `eval_rollouts`' statistics."""
    kl = float(cat["kl_to_sft"].mean())
    out = {"eval/proxy_reward": float(cat["proxy"].mean()),
           "eval/oracle_reward": float(cat["oracle"].mean()),
           "eval/kl_to_sft": kl, "eval/length": float(cat["length"].mean()),
           "eval/normalized_reward": float(cat["normalized_reward"].mean()),
           "eval/kl_term": self.rl.kl_coef * kl, "eval/eos_rate": float(cat["ended"].mean()),
           "eval/num_prompts": len(cat["proxy"])}
    if self.reference is not None:
      got = dis.eval_disagreement_stats(cat["members"].T, cat["proxy"], cat["oracle"],
                                        self.reference)
      for key, name in zip(DISAGREEMENT_EVAL_KEYS, ("disagreement", "spearman", "auroc")):
        if got[name] is not None:  # undefined: left out of this eval
          out[key] = got[name]
    return out

  def set_reference(self, cat: dict[str, np.ndarray]) -> None:
    """The step-0 (SFT) eval's scales the disagreement is read against all along the run
    (`disagreement.eval_reference`); a constant series turns the disagreement off (logged)."""
    try:
      self.reference = dis.eval_reference(cat["members"].T, cat["proxy"], cat["oracle"],
                                          self.disagreement_members)
    except ValueError as e:
      logging.warning("member disagreement off for this run: %s", e)
      return
    logging.info("member disagreement along RL: %d members, scales of the %d step-0 eval "
                 "responses (%s)", len(self.rollouts.member_trees), len(cat["proxy"]),
                 DISAGREEMENT_REFERENCE_FILE)
    if jax.process_index() == 0:
      ckpt_lib.atomic_write_text(os.path.join(self.model_dir, DISAGREEMENT_REFERENCE_FILE),
                                 json.dumps({"members": self.disagreement_members,
                                             **self.reference}) + "\n")


class RLLogHook(LoopHook):
  """RL's metrics on the shared loop: the step-0 eval (or, resumed, the step-0 disagreement
  scales again: the same responses, the same keys), the NaN guard on each step's scalars, their
  window means every log_every steps, the evals every eval_every steps and at the end
  (`last_eval`), all to MODEL_DIR/metrics.jsonl, and a progress line."""

  def __init__(self, *, model_dir: str, start: int, train_steps: int, log_every: int,
               rl: RLConfig, evaluator: RLEvaluator | None):
    # A fresh run drops every old line (a restart before the first checkpoint repeats step 0).
    self.writer = MetricsWriter(model_dir, resume_step=start or None)
    self.progress = Progress(name="rl", total_steps=train_steps, start_step=start)
    self.model_dir, self.start, self.log_every, self.rl = model_dir, start, log_every, rl
    self.evaluator = evaluator
    self.window: list[dict[str, float]] = []
    self.last_eval: dict[str, float] = {}

  def at_start(self, state: RLState) -> None:
    ev = self.evaluator
    if ev is None:
      return
    members = bool(ev.rollouts.member_trees)
    if self.start == 0:  # step 0: the SFT policy, so every eval curve starts there
      cat = ev.eval_rollouts(state.policy.params, state)
      if members:
        ev.set_reference(cat)
      self.last_eval = ev.evaluate(cat)
      self.writer.write(0, self.last_eval)
    elif members:  # resumed: the same step-0 responses again (same keys)
      ev.set_reference(ev.eval_rollouts(ev.rollouts.sft, state))

  def after_step(self, end: StepEnd) -> None:
    done, scalars_now = end.done, end.output
    self.window.append(scalars_now)
    if not all(math.isfinite(v) for v in scalars_now.values()):
      raise NonFiniteError(f"non-finite RL metrics at step {done} of {self.model_dir}: "
                           f"{scalars_now}; nothing non-finite was saved. Lower the learning "
                           "rate or the KL coefficient and rerun (it resumes)")
    scalars = {}
    if done % self.log_every == 0 or end.last:
      scalars = {key: float(np.mean([w[key] for w in self.window if key in w]))
                 for key in self.window[-1]}
      self.window = []
    if self.evaluator is not None and (end.last or (self.rl.eval_every and
                                                   done % self.rl.eval_every == 0)):
      self.last_eval = self.evaluator.evaluate(
          self.evaluator.eval_rollouts(end.state.policy.params, end.state))
      scalars.update(self.last_eval)
    if scalars:
      self.writer.write(done, scalars)
      self.progress.update(done, {key.split("/")[-1]: v for key, v in scalars.items() if key in (
          "rewards/proxy", "rewards/oracle", "rewards/kl_to_sft", "eval/oracle_reward")})

  def close(self) -> None:
    self.writer.close()


def step_scalars(host: Mapping[str, Any], metrics: Mapping[str, Any], updated: bool,
                  update_s: float, with_value: bool) -> dict[str, float]:
  """One step's scalars (METRIC_KEYS): per-row statistics averaged over the batch."""
  mean = lambda key: float(np.mean(host[key]))
  tokens = max(float(np.sum(host["length"])), 1.0)
  out = {
      "rewards/proxy": mean("proxy"), "rewards/proxy_std": float(np.std(host["proxy"])),
      "rewards/oracle": mean("oracle"), "rewards/oracle_std": float(np.std(host["oracle"])),
      "rewards/kl_to_sft": mean("kl_to_sft"), "rewards/kl_to_ref": mean("kl_to_ref"),
      "rewards/kl_penalty": mean("kl_penalty"),
      "rewards/normalized_reward": mean("normalized_reward"),
      "rewards/total": mean("normalized_reward") - mean("kl_penalty"),
      "generation/length": mean("length"),
      "generation/eos_rate": mean("ended"),
      "generation/entropy": float(np.sum(host["entropy"])) / tokens,
      "policy/updated": float(updated),
      "policy/advantage_mean": float(np.sum(host["adv_sum"])) / tokens,
      "policy/advantage_std": math.sqrt(max(float(np.sum(host["adv_sq"])) / tokens - (
          float(np.sum(host["adv_sum"])) / tokens) ** 2, 0.0)),
      "perf/rollout_s": float(host["seconds"]), "perf/update_s": update_s,
      "perf/sampled_tokens_per_s": tokens / max(float(host["seconds"]), 1e-9),
  }
  weight = lambda prefix: max(float(metrics.get(f"{prefix}/weight", 1.0)), 1e-9)
  if updated:
    out["policy/loss"] = float(metrics["policy/loss"]) / weight("policy")
    out["policy/grad_norm"] = float(metrics["policy/grad_norm"])
    out["policy/learning_rate"] = float(metrics["policy/learning_rate"])
  else:
    out.update({"policy/loss": 0.0, "policy/grad_norm": 0.0, "policy/learning_rate": 0.0})
  if with_value:
    out["value/loss"] = float(metrics["value/loss"]) / weight("value")
    out["value/grad_norm"] = float(metrics["value/grad_norm"])
    # 1 - mean (G - V)^2 / Var(G) over response tokens: how much of the return V explains.
    ret_var = float(np.sum(host["ret_sq"])) / tokens - (float(np.sum(host["ret_sum"])) /
                                                        tokens) ** 2
    out["value/explained_variance"] = 1.0 - (float(np.sum(host["ret_err_sq"])) / tokens) / max(
        ret_var, 1e-9)
  return out

