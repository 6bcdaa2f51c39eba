"""RL: REINFORCE with a learned value baseline and a KL penalty, against any reward model.

Where it sits: after the RMs (docs/paper.md: the setup's RL, figs 8-9, 18-21). The policy and
the value model both start from the SFT checkpoint; the reward is a member, a WARM checkpoint or ENS
(`warm_jax.reward_sources`); the oracle (`warm_jax.oracle`) scores every sampled response so
reward hacking shows as the oracle reward falling while the proxy (the RM's) keeps rising.
The value model is the SFT backbone under a zero-initialised head (V = 0 until it is fit).

One step s (gin/rl.gin; `python -m warm_jax.train --gin_file=... --gin_file=gin/rl.gin`):
  1. Rollout: the prompts of batch s (B / K prompts, each K times) are answered by the policy
     at temperature T (paper 0.9) with the KV-cache sampler (`warm_jax.sampling`).
  2. Score (one jitted program): the RM reward R of prompt + response (read at its last token),
     the policy's and the reference's log probs of the response tokens under softmax(logits/T),
     the policy's entropy, and V(state) from the value model.
  3. Advantages (`compute_advantages`): per-token rewards r_t = -alpha * k(d_t) (the chosen KL
     estimator; kl_penalty='reward', the default) plus R at the final token; returns
     G_t = sum_{t' >= t} r_t'; A_t = G_t - V_t (baseline 'value', the paper), or the sequence
     return minus the mean of the other K - 1 samples of the prompt ('leave_one_out', RLOO),
     or G_t ('none'). With kl_penalty='loss' the returns hold R only and alpha * KL estimate is
     differentiated in the policy loss instead.
  4. Update: the value model every step (squared error to G_t); the policy (REINFORCE,
     `policy_objective.PolicyGradientObjective`) from step value_warmup_steps on (the value is
     trained first). Each has its own `Trainer` (Adafactor). The policy optimiser's schedule
     counts policy updates, so its OptimizerConfig.warmup_steps (gin POLICY_WARMUP_STEPS, the
     paper's policy warm-up) ramps the learning rate linearly from 0 over the first updates.
  5. Anchor: the KL reference is the SFT policy, or (anchor='ema', WARP) an EMA of the policy,
     ref <- (1 - mu) ref + mu policy after each policy update.
The RM reward is standardised with its mean and std on SFT samples (`reward_normalization`;
MODEL_DIR/reward_calibration.json) unless turned off; `rewards/proxy` is always the raw RM
reward and `rewards/total` the regularised objective (normalised reward - KL penalty), with
its two terms beside it: `rewards/normalized_reward` and `rewards/kl_penalty` (alpha * KL).
Before scoring, the prompts + max_new_tokens (+ the closing EOS) are checked against the
positions the models were trained on (`sampling.check_positions`); the RM reads a response cut
at max_new_tokens closed with EOS (`sampling.close_unfinished`, the rule of best-of-N and win
rates).
Logged per step (MODEL_DIR/metrics.jsonl, TensorBoard): `METRIC_KEYS`; `EVAL_KEYS` on
held-out prompts at step 0 (the SFT policy, before any update: every curve starts there) and
every eval_every steps; with DISAGREEMENT_MEMBERS (a list of >= 2 member checkpoints, default
None: off) also `DISAGREEMENT_EVAL_KEYS`, the members' disagreement on the eval responses as an
uncertainty signal for the RM's errors (`warm_jax.disagreement`, the scales fixed on the step-0
eval and written to MODEL_DIR/disagreement_reference.json; M more RM passes per eval, none per
training step). The DONE file holds the last eval and Gao et al.'s RL fit
R(d) = d (a - b log d), d = sqrt(KL), of the eval oracle gain over step 0 (`gao_fits`).
Checkpoints: MODEL_DIR/checkpoints/<step> (policy; a params dir later stages and win rates load), MODEL_DIR/value/, MODEL_DIR/anchor/ (ema only). A rerun
resumes from the latest checkpoint: the prompts and sampling keys of step s depend only on s.
SIGTERM (a preemption) checkpoints the policy, the value and the anchor at the current step and
raises `trainer.Preempted` (exit 143 from the CLI); the rerun resumes there bit for bit. The
trainer's fault hook (WARM_JAX_FAULT_KILL_AT_STEP=N, a SIGKILL after step N's save was issued)
works here too.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from warm_jax import checkpoints as ckpt_lib
from warm_jax import disagreement as dis
from warm_jax import flops as flops_lib
from warm_jax import policy_objective as po
from warm_jax import run_dir
from warm_jax.data.batching import ArrayDataset
from warm_jax.metrics_writer import MetricsWriter, Progress
from warm_jax.models import LanguageModel, RewardModel, TransformerConfig, ValueModel
from warm_jax.models.heads import init_inputs
from warm_jax.optimizers import OptimizerConfig
from warm_jax.partitioning import Partitioner, is_peer_failure
from warm_jax.reward_sources import combine_member_rewards, parse_reward_source
from warm_jax.sampling import (Sampler, SamplingConfig, check_left_padded, check_positions,
                               close_unfinished, join_prompt_and_response, response_ended,
                               trained_positions)
# The loop helpers are the Trainer's own (private to the training loops, shared on purpose).
from warm_jax.trainer import (NonFiniteError, Preempted, Trainer, TrainerConfig,
                              _maybe_inject_fault, _SigtermFlag)

Array = jax.Array
BASELINES = ("value", "leave_one_out", "none")
KL_PENALTIES = ("reward", "loss")
ANCHORS = ("sft", "ema")
REWARD_NORMALIZATIONS = ("sft_samples", "none")
CALIBRATION_FILE = "reward_calibration.json"
# Written at every log step (`value/*` only with the value baseline).
METRIC_KEYS = (
    "rewards/proxy", "rewards/proxy_std", "rewards/oracle", "rewards/oracle_std",
    "rewards/kl_to_sft", "rewards/kl_to_ref", "rewards/kl_penalty", "rewards/normalized_reward",
    "rewards/total",
    "generation/length", "generation/eos_rate", "generation/entropy",
    "policy/loss", "policy/grad_norm", "policy/learning_rate", "policy/updated",
    "policy/advantage_mean", "policy/advantage_std", "perf/rollout_s", "perf/update_s",
    "perf/sampled_tokens_per_s")
VALUE_METRIC_KEYS = ("value/loss", "value/grad_norm", "value/explained_variance")
# Written at step 0 and every eval_every steps (kl_term: alpha * eval/kl_to_sft, in the units
# of eval/normalized_reward, the RM reward standardised as in training).
EVAL_KEYS = ("eval/proxy_reward", "eval/oracle_reward", "eval/kl_to_sft", "eval/length",
             "eval/normalized_reward", "eval/kl_term", "eval/eos_rate", "eval/num_prompts")
# Beside EVAL_KEYS when DISAGREEMENT_MEMBERS is set (`warm_jax.disagreement`, against the step-0
# eval's scales): the mean over eval responses of the members' disagreement, its Spearman with
# the RM's error z(proxy) - z(oracle), and its AUROC for flagging an error above the step-0
# median; the last two are left out of an eval where they are undefined.
DISAGREEMENT_EVAL_KEYS = ("eval/disagreement", "eval/disagreement_spearman",
                          "eval/disagreement_auroc")
DISAGREEMENT_REFERENCE_FILE = "disagreement_reference.json"


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """The RL algorithm's settings (loop settings are the TrainerConfig's).

  Attributes:
    kl_coef: alpha (paper: 0.003 with clean labels, 0.01 with corrupted ones).
    kl_estimator: k1, k2 or k3 (`policy_objective`); k1 in the reward is exact REINFORCE on
      E[R] - alpha KL(pi || ref).
    kl_penalty: 'reward' (-alpha * k(d_t) folded into the per-token rewards) or 'loss'
      (alpha * k(d_t) differentiated in the policy loss; k2 there is the exact KL gradient).
    baseline: 'value' (learned, paper), 'leave_one_out' (RLOO over samples_per_prompt) or
      'none'.
    samples_per_prompt: K responses per prompt in a batch (>= 2 for leave_one_out).
    value_warmup_steps: steps that train only the value model before policy updates start.
    anchor: KL reference 'sft' (paper) or 'ema' (WARP: an EMA of the policy).
    anchor_ema_rate: mu of the EMA anchor (WARP: ~0.01).
    reward_normalization: 'sft_samples' standardises the RM reward with the mean and std of
      its rewards on one batch of SFT samples (drawn before training, the same on resume), so
      rewards start centred (the zero-initialised value head is right on average) and one
      kl_coef means the same for RMs of different scales (a member, WARM, ENS); 'none' uses
      the raw reward (the paper's setting, with its RM's scale).
    eval_every: evaluate on the eval prompts every N steps (0: only at the end), and at step 0
      (the SFT policy) whenever there are eval prompts.
    num_eval_prompts: eval prompts used (None: all).
  """

  kl_coef: float = 0.003
  kl_estimator: str = "k1"
  kl_penalty: str = "reward"
  baseline: str = "value"
  samples_per_prompt: int = 1
  value_warmup_steps: int = 0
  anchor: str = "sft"
  anchor_ema_rate: float = 0.01
  reward_normalization: str = "sft_samples"
  eval_every: int = 0
  num_eval_prompts: int | None = None

  def __post_init__(self):
    def bad(field, why):
      raise ValueError(f"RLConfig.{field}={getattr(self, field)!r}: {why}")

    if self.kl_coef < 0:
      bad("kl_coef", "must be >= 0")
    for field, options in (("kl_estimator", po.KL_ESTIMATORS), ("kl_penalty", KL_PENALTIES),
                           ("baseline", BASELINES), ("anchor", ANCHORS),
                           ("reward_normalization", REWARD_NORMALIZATIONS)):
      if getattr(self, field) not in options:
        bad(field, f"use one of {options}")
    if self.samples_per_prompt < 1:
      bad("samples_per_prompt", "must be >= 1")
    if self.baseline == "leave_one_out" and self.samples_per_prompt < 2:
      bad("samples_per_prompt", "the leave-one-out baseline needs >= 2 samples per prompt")
    if self.value_warmup_steps < 0:
      bad("value_warmup_steps", "must be >= 0")
    if self.value_warmup_steps and self.baseline != "value":
      bad("value_warmup_steps", f"there is no value model to warm up with baseline="
          f"{self.baseline!r}; set it to 0 or use baseline='value'")
    if not 0 < self.anchor_ema_rate <= 1:
      bad("anchor_ema_rate", "must be in (0, 1]")
    if self.eval_every < 0:
      bad("eval_every", "must be >= 0")


def compute_advantages(*, log_probs: Array, ref_log_probs: Array, response_mask: Array,
                       rewards: Array, values: Array, config: RLConfig) -> dict[str, Array]:
  """`policy_objective.advantages` with this config's KL and baseline settings."""
  return po.advantages(log_probs=log_probs, ref_log_probs=ref_log_probs,
                       response_mask=response_mask, rewards=rewards, values=values,
                       kl_coef=config.kl_coef, kl_estimator=config.kl_estimator,
                       kl_in_reward=config.kl_penalty == "reward", baseline=config.baseline,
                       samples_per_prompt=config.samples_per_prompt)


def _score_rollout(policy, ref, sft, value, reward_trees, reward_shift, reward_scale,
                   prompt_tokens, prompt_mask, response_tokens, response_mask, *, lm, rm, vm,
                   temperature, config, partitioner, eos_id=None, reward_combine=("ens", 0.0)):
  """Step 2-3 on device: the two Trainers' batches and [batch] per-row statistics. The
  reward is the reward trees' rewards combined by reward_combine = (combine, uwo lambda)
  (`reward_sources.combine_member_rewards`: ENS mean, WCO min, UWO mean - lambda var). The RM
  reads each response closed by `sampling.close_unfinished` (EOS after an unfinished one, the
  rule of best-of-N and win rates); the policy, reference and value read the sampled tokens."""
  with partitioner.activation_rules():
    tokens = jnp.concatenate([prompt_tokens, response_tokens], 1).astype(jnp.int32)
    mask = jnp.concatenate([prompt_mask, response_mask], 1).astype(jnp.int32)
    rmask = jnp.concatenate([jnp.zeros_like(prompt_mask), response_mask], 1).astype(jnp.int32)
    log_probs_of = lambda p: po.token_log_probs(lm.apply({"params": p}, tokens, mask), tokens,
                                                temperature=temperature)
    log_probs, entropy = log_probs_of(policy)
    ref_log_probs = log_probs_of(ref)[0]
    sft_log_probs = ref_log_probs if sft is None else log_probs_of(sft)[0]
    rewards = combine_member_rewards(
        _rm_rewards(rm, reward_trees, prompt_tokens, prompt_mask, response_tokens,
                    response_mask, eos_id), reward_combine[0], reward_combine[1])
    values = (jnp.zeros(tokens.shape, jnp.float32) if value is None else
              po.state_values(vm.apply({"params": value}, tokens, mask)))
    adv = compute_advantages(log_probs=log_probs, ref_log_probs=ref_log_probs,
                             response_mask=rmask, rewards=(rewards - reward_shift) / reward_scale,
                             values=values,
                             config=config)
  fm = rmask.astype(jnp.float32)
  rows = {"proxy": rewards, "length": jnp.sum(fm, -1), "entropy": jnp.sum(entropy * fm, -1),
          "kl_to_sft": jnp.sum((log_probs - sft_log_probs) * fm, -1),
          "kl_to_ref": jnp.sum((log_probs - ref_log_probs) * fm, -1),
          "kl_penalty": config.kl_coef * jnp.sum(adv["kl"], -1),
          "normalized_reward": (rewards - reward_shift) / reward_scale,
          "adv_sum": jnp.sum(adv["advantages"] * fm, -1),
          "adv_sq": jnp.sum(jnp.square(adv["advantages"]) * fm, -1),
          "ret_err_sq": jnp.sum(jnp.square(adv["returns"] - values) * fm, -1),
          "ret_sq": jnp.sum(jnp.square(adv["returns"]) * fm, -1),
          "ret_sum": jnp.sum(adv["returns"] * fm, -1)}
  policy_batch = {"tokens": tokens, "mask": mask, "response_mask": rmask,
                  "advantages": adv["advantages"], "ref_log_probs": ref_log_probs}
  value_batch = {"tokens": tokens, "mask": mask, "response_mask": rmask,
                 "returns": adv["returns"]}
  return policy_batch, value_batch, rows


def rollout_score_flops(model_config: TransformerConfig, reward_config: TransformerConfig, *,
                        batch: int, width: int, policies: int, rewards: int, value_model: bool,
                        closing_eos: bool) -> float:
  """Model FLOPs of `_score_rollout` (or, with policies=0, `_member_rewards`) on `batch`
  sequences of prompt + response `width`: `policies` LM forward passes (policy, reference and,
  with an EMA anchor, the SFT policy), `rewards` reward-model passes over the responses closed
  by one more column (`close_unfinished`, when there is an EOS) and the value model's."""
  rm_width = width + int(closing_eos)
  flops = policies * width * model_config.forward_flops_per_token(width)
  flops += rewards * reward_config.reward_forward_flops(rm_width)
  if value_model:
    flops += width * model_config.forward_flops_per_token(width, lm_head=False)
  return batch * flops


def _rm_rewards(rm, trees, prompt_tokens, prompt_mask, response_tokens, response_mask, eos_id):
  """[len(trees), batch] rewards of each RM tree of prompt + response, the response closed by
  `sampling.close_unfinished` (the rule of best-of-N and win rates). Traced inside a jitted
  program (the RL reward in `_score_rollout`, the disagreement members in `_member_rewards`)."""
  closed_tokens, closed_mask = close_unfinished(response_tokens, response_mask, eos_id)
  rm_tokens, rm_mask = join_prompt_and_response(prompt_tokens, prompt_mask, closed_tokens,
                                                closed_mask)
  rm_response = jnp.concatenate([jnp.zeros_like(prompt_mask), closed_mask], 1).astype(jnp.int32)
  return jnp.stack([rm.apply({"params": t}, rm_tokens, rm_mask, rm_response) for t in trees])


def _member_rewards(member_trees, prompt_tokens, prompt_mask, response_tokens, response_mask,
                    *, rm, partitioner, eos_id=None):
  """[batch, M] rewards of the disagreement members (the RL reward's scoring code,
  `_rm_rewards`): M RM passes, at eval only."""
  with partitioner.activation_rules():
    return _rm_rewards(rm, member_trees, prompt_tokens, prompt_mask, response_tokens,
                       response_mask, eos_id).T


def _check_disagreement_members(members: Any) -> list[str] | None:
  """DISAGREEMENT_MEMBERS: None (off) or a list of >= 2 distinct checkpoint paths."""
  if members is None:
    return None
  if isinstance(members, str) or len(members) < 2 or not all(isinstance(p, str)
                                                             for p in members):
    raise ValueError(f"DISAGREEMENT_MEMBERS={members!r}: give None (off) or a list of >= 2 "
                     "member checkpoint paths (disagreement needs two members)")
  if len(set(members)) != len(members):
    raise ValueError(f"DISAGREEMENT_MEMBERS lists a checkpoint twice: {list(members)}")
  return list(members)


def _to_host(tree: Any) -> Any:
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


class _AnchorCheckpointer:
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


def train_policy(*, model_dir: str | None, sft_path: str | None, reward_model: Any,
                 model_config: TransformerConfig, optimizer: OptimizerConfig,
                 trainer_config: TrainerConfig, dataset: ArrayDataset,
                 rl: RLConfig = RLConfig(), sampling: SamplingConfig = SamplingConfig(),
                 value_optimizer: OptimizerConfig | None = None,
                 reward_model_config: TransformerConfig | None = None,
                 eval_dataset: ArrayDataset | None = None, oracle: Any = None,
                 eval_oracle: Any = None, data_dir: str | None = None,
                 prompt_split: str = "train", eval_split: str = "validation",
                 partitioner: Partitioner | None = None, write_config: bool = True,
                 disagreement_members: Any = None) -> dict[str, Any]:
  """Runs RL into MODEL_DIR (module docstring); returns the last eval metrics.

  Args:
    reward_model: the RM spec (`reward_sources`: a path, [paths] for ENS, {'warm': [...]},
      {'wco': [...]}, {'uwo': [...], 'lambda': 0.1}).
    dataset / eval_dataset: prompt datasets (prompt_tokens, prompt_mask left-padded,
      prompt_index).
    oracle / eval_oracle: judges of the train / eval prompts; default the gold reward of
      DATA_DIR's prompts.<prompt_split> / .<eval_split> (`oracle.GoldOracle`).
    trainer_config: train_steps, batch_size (responses per step), seed, log_every, save_every,
      keep_checkpoints (None keeps every checkpoint along the run), microbatches.
    disagreement_members: None (off) or [>= 2 RM checkpoint paths] (reward_model_config):
      each eval's responses are also scored by each of them and `DISAGREEMENT_EVAL_KEYS`
      logged (module docstring; docs/policy.md). The experiment passes WARM M's own members.
  """
  from warm_jax.oracle import GoldOracle
  for name, value in (("MODEL_DIR", model_dir), ("SFT_DIR", sft_path)):
    if not value:
      raise ValueError(f"{name} is not set: pass --gin.{name}=\"'/path'\"")
  cfg, k, batch = trainer_config, rl.samples_per_prompt, trainer_config.batch_size
  disagreement_members = _check_disagreement_members(disagreement_members)
  if batch % k:
    raise ValueError(f"BATCH_SIZE={batch} responses is not a multiple of samples_per_prompt="
                     f"{k}")
  if sampling.greedy:
    raise ValueError("RL samples from the policy: set SamplingConfig.temperature > 0 (paper 0.9)")
  partitioner = partitioner or Partitioner()
  if oracle is None:
    oracle = GoldOracle(data_dir=data_dir, split=prompt_split) if data_dir else None
  if eval_oracle is None and eval_dataset is not None and data_dir:
    eval_oracle = GoldOracle(data_dir=data_dir, split=eval_split)
  if oracle is None:
    raise ValueError("no oracle: set DATA_DIR (gold reward) or pass an oracle")
  if write_config and jax.process_index() == 0:
    run_dir.write_operative_config(model_dir)
  prompt_len = dataset.features["prompt_tokens"].shape[1]
  seq_len = prompt_len + sampling.max_new_tokens
  limit, limit_source = trained_positions(
      (model_config, reward_model_config or model_config), data_dir=data_dir)
  for what, data in (("train", dataset), ("eval", eval_dataset)):
    if data is not None:
      check_positions(data.features["prompt_mask"], max_new_tokens=sampling.max_new_tokens,
                      limit=limit, source=limit_source, program=f"RL ({what} prompts)",
                      closing_eos=sampling.eos_id is not None)

  # -- programs ---------------------------------------------------------------------------------
  kl_in_loss = rl.kl_penalty == "loss"
  policy_trainer = Trainer(
      objective=po.PolicyGradientObjective(model_config, temperature=sampling.temperature,
                                           kl_coef=rl.kl_coef, kl_estimator=rl.kl_estimator,
                                           kl_in_loss=kl_in_loss),
      optimizer=optimizer, partitioner=partitioner,
      config=dataclasses.replace(cfg, name="policy"), model_dir=model_dir, seq_len=seq_len)
  value_dir = os.path.join(model_dir, "value")
  value_trainer = None if rl.baseline != "value" else Trainer(
      objective=po.ValueRegressionObjective(model_config), optimizer=value_optimizer or optimizer,
      partitioner=partitioner, config=dataclasses.replace(cfg, name="value"),
      model_dir=value_dir, seq_len=seq_len)
  sampler = Sampler(model_config=model_config, partitioner=partitioner, config=sampling,
                    batch_size=batch, max_positions=limit, closing_eos=True)
  rows2 = partitioner.batch_sharding(2)
  source = parse_reward_source("reward", reward_model)
  score = jax.jit(functools.partial(
      _score_rollout, lm=LanguageModel(model_config),
      rm=RewardModel(reward_model_config or model_config), vm=ValueModel(model_config),
      temperature=sampling.temperature, config=rl, partitioner=partitioner,
      eos_id=sampling.eos_id, reward_combine=(source.combine, source.uwo_lambda or 0.0)),
      out_shardings=({key: rows2 for key in po.PolicyGradientObjective.batch_features},
                     {key: rows2 for key in po.ValueRegressionObjective.batch_features},
                     partitioner.batch_sharding(1)))
  member_score = jax.jit(functools.partial(
      _member_rewards, rm=RewardModel(reward_model_config or model_config),
      partitioner=partitioner, eos_id=sampling.eos_id), out_shardings=rows2)
  ema = jax.jit(lambda anchor, policy: jax.tree_util.tree_map(
      lambda a, p: (1 - rl.anchor_ema_rate) * a + rl.anchor_ema_rate * p, anchor, policy),
      donate_argnums=(0,))

  # -- state: resume, else SFT ------------------------------------------------------------------
  policy_ckpt = ckpt_lib.TrainCheckpointer(model_dir, save_every=cfg.save_every,
                                           keep=cfg.keep_checkpoints,
                                           async_save=cfg.async_checkpoints)
  value_ckpt = value_trainer and ckpt_lib.TrainCheckpointer(
      value_dir, save_every=cfg.save_every, keep=cfg.keep_checkpoints,
      async_save=cfg.async_checkpoints)
  anchor_ckpt = _AnchorCheckpointer(os.path.join(model_dir, "anchor"), cfg.keep_checkpoints) \
      if rl.anchor == "ema" else None
  sft_host = ckpt_lib.load_params(sft_path)
  sft, report = ckpt_lib.init_from_checkpoint(policy_trainer.abstract_state.params, sft_host,
                                              source_name=sft_path)
  if report["fresh"]:
    raise ckpt_lib.CheckpointError(f"SFT checkpoint {sft_path} lacks {report['fresh'][0]}: it "
                                   "is not a policy of this model config")
  start = policy_ckpt.latest_step() or 0
  abstract = policy_trainer.abstract_state
  if start:
    params, opt = policy_ckpt.restore(start, abstract.params, abstract.opt_state)
    policy = policy_trainer.state_from_params(params).replace(
        opt_state=opt, step=jnp.asarray(max(0, start - rl.value_warmup_steps), jnp.int32))
    logging.info("resumed RL in %s from step %d", model_dir, start)
  else:  # a copy: the train step donates the policy's buffers, the reference keeps its own
    policy = policy_trainer.state_from_params(jax.tree_util.tree_map(jnp.copy, sft))
  value = None
  if value_trainer is not None:
    if start:
      vabs = value_trainer.abstract_state
      vparams, vopt = value_ckpt.restore(start, vabs.params, vabs.opt_state)
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
  if anchor_ckpt is not None:
    anchor = (anchor_ckpt.restore(start, abstract.params) if start
              else jax.tree_util.tree_map(jnp.copy, sft))
  reward_module = RewardModel(reward_model_config or model_config)
  rm_shardings = partitioner.param_shardings(jax.eval_shape(lambda: reward_module.init(
      jax.random.key(0), *init_inputs(reward_module)))["params"])
  place_rm = lambda t: jax.tree_util.tree_map(lambda x, s: jax.device_put(np.asarray(x), s), t,
                                              rm_shardings)
  reward_trees = [place_rm(t) for t in source.load()]
  # Read once: scored at every eval when set (M RM passes per eval batch, none in training).
  member_trees = [place_rm(ckpt_lib.load_params(p)) for p in disagreement_members or []]

  def rollout(params, prompts: dict[str, np.ndarray], judge: Any, seed: int, row_offset: int,
              with_members: bool = False):
    """Samples and scores one GLOBAL batch of prompts (the same host arrays on every process;
    each process feeds its slice); the host stats cover the whole batch. with_members: also
    the disagreement members' rewards of the responses (host 'members' [batch, M])."""
    check_left_padded(prompts["prompt_mask"])
    local = slice(jax.process_index() * batch // jax.process_count(),
                  (jax.process_index() + 1) * batch // jax.process_count())
    row_ids = row_offset + np.arange(batch, dtype=np.int32)
    rows = partitioner.shard_batch({"t": prompts["prompt_tokens"][local],
                                    "m": prompts["prompt_mask"][local], "r": row_ids[local]},
                                   batch)
    t0 = time.perf_counter()
    with partitioner.mesh_context():
      out = sampler.sample_sharded(params, rows["t"], rows["m"], rows["r"], seed)
      ref = anchor if anchor is not None else sft
      pbatch, vbatch, stats = score(params, ref, sft if anchor is not None else None,
                                    None if value is None else value.params, reward_trees,
                                    *calibration, rows["t"], rows["m"], out["tokens"],
                                    out["mask"])
      if with_members and member_trees:
        stats = {**stats, "members": member_score(member_trees, rows["t"], rows["m"],
                                                  out["tokens"], out["mask"])}
    width = rows["t"].shape[1] + out["tokens"].shape[1]
    flops_lib.count("score rollout", rollout_score_flops(
        model_config, reward_model_config or model_config, batch=batch, width=width,
        policies=2 if anchor is None else 3, rewards=len(reward_trees),
        value_model=value is not None, closing_eos=sampling.eos_id is not None))
    if with_members and member_trees:
      flops_lib.count("score disagreement members", rollout_score_flops(
          model_config, reward_model_config or model_config, batch=batch, width=width,
          policies=0, rewards=len(member_trees), value_model=False,
          closing_eos=sampling.eos_id is not None))
    host = _to_host({"tokens": out["tokens"], "mask": out["mask"], **stats})
    host["ended"] = response_ended(host["tokens"], host["mask"], sampling.eos_id)
    host["oracle"] = judge.score(
        prompt_index=prompts["prompt_index"], prompt_tokens=prompts["prompt_tokens"],
        prompt_mask=prompts["prompt_mask"], response_tokens=host["tokens"],
        response_mask=host["mask"])
    host["seconds"] = time.perf_counter() - t0
    return pbatch, vbatch, host

  def eval_rollouts(params) -> dict[str, np.ndarray]:
    """Per-response eval statistics of `params` on the eval prompts (fixed sampling keys)."""
    data = eval_dataset.features
    n = len(data["prompt_tokens"]) if rl.num_eval_prompts is None else min(
        rl.num_eval_prompts, len(data["prompt_tokens"]))
    stats = []
    for lo in range(0, n, batch):
      idx = np.arange(lo, lo + batch) % n  # the last chunk wraps; extra rows dropped below
      _, _, host = rollout(params, {key: v[idx] for key, v in data.items()}, eval_oracle,
                           cfg.seed + 1, lo, with_members=True)
      stats.append({key: np.asarray(v)[:min(batch, n - lo)] for key, v in host.items()
                    if key in ("proxy", "oracle", "kl_to_sft", "length", "normalized_reward",
                               "ended", "members")})
    return {key: np.concatenate([s[key] for s in stats]) for key in stats[0]}

  def evaluate(cat: dict[str, np.ndarray]) -> dict[str, float]:
    kl = float(cat["kl_to_sft"].mean())
    out = {"eval/proxy_reward": float(cat["proxy"].mean()),
           "eval/oracle_reward": float(cat["oracle"].mean()),
           "eval/kl_to_sft": kl, "eval/length": float(cat["length"].mean()),
           "eval/normalized_reward": float(cat["normalized_reward"].mean()),
           "eval/kl_term": rl.kl_coef * kl, "eval/eos_rate": float(cat["ended"].mean()),
           "eval/num_prompts": len(cat["proxy"])}
    if dis_reference is not None:
      got = dis.eval_disagreement_stats(cat["members"].T, cat["proxy"], cat["oracle"],
                                        dis_reference)
      for key, name in zip(DISAGREEMENT_EVAL_KEYS, ("disagreement", "spearman", "auroc")):
        if got[name] is not None:  # undefined: left out of this eval
          out[key] = got[name]
    return out

  def set_dis_reference(cat: dict[str, np.ndarray]) -> None:
    """The step-0 (SFT) eval's scales the disagreement is read against all along the run
    (`disagreement.eval_reference`); a constant series turns the disagreement off (logged)."""
    nonlocal dis_reference
    try:
      dis_reference = dis.eval_reference(cat["members"].T, cat["proxy"], cat["oracle"],
                                         disagreement_members)
    except ValueError as e:
      logging.warning("member disagreement off for this run: %s", e)
      return
    logging.info("member disagreement along RL: %d members, scales of the %d step-0 eval "
                 "responses (%s)", len(member_trees), len(cat["proxy"]),
                 DISAGREEMENT_REFERENCE_FILE)
    if jax.process_index() == 0:
      ckpt_lib.atomic_write_text(os.path.join(model_dir, DISAGREEMENT_REFERENCE_FILE),
                                 json.dumps({"members": disagreement_members,
                                             **dis_reference}) + "\n")

  dis_reference: dict[str, Any] | None = None

  # -- reward calibration on SFT samples (before any update; recomputed identically on resume) --
  calibration = (jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32))
  if rl.reward_normalization == "sft_samples":
    sft_rewards = rollout(sft, dataset.batch(0, batch, process_index=0, process_count=1),
                          oracle, cfg.seed + 2, 0)[2]["proxy"]
    shift, scale = float(np.mean(sft_rewards)), max(float(np.std(sft_rewards)), 1e-6)
    calibration = (jnp.asarray(shift, jnp.float32), jnp.asarray(scale, jnp.float32))
    logging.info("RM reward on %d SFT samples: mean %.4g, std %.4g (the reward is "
                 "standardised with them)", batch, shift, scale)
    if jax.process_index() == 0:
      ckpt_lib.atomic_write_text(os.path.join(model_dir, CALIBRATION_FILE), json.dumps(
          {"shift": shift, "scale": scale, "num_samples": batch}) + "\n")

  # -- the loop ---------------------------------------------------------------------------------
  # A fresh run drops every old line (a restart before the first checkpoint repeats step 0).
  writer = MetricsWriter(model_dir, resume_step=start or None)
  progress = Progress(name="rl", total_steps=cfg.train_steps, start_step=start)
  window: list[dict[str, float]] = []
  last_eval: dict[str, float] = {}
  t_start = time.time()
  evaluating = eval_dataset is not None and eval_oracle is not None
  if member_trees and not evaluating:
    logging.warning("DISAGREEMENT_MEMBERS is set but there are no eval prompts / eval oracle: "
                    "the member disagreement is computed at evals only, so not in this run")
  def save(done: int) -> None:
    policy_ckpt.save(done, policy.params, policy.opt_state, force=True)
    if value is not None:
      value_ckpt.save(done, value.params, value.opt_state, force=True)
    if anchor_ckpt is not None:
      anchor_ckpt.save(done, anchor)

  checkpointers = [c for c in (policy_ckpt, value_ckpt, anchor_ckpt) if c]
  stop = _SigtermFlag()  # a preemption: checkpoint the current step, exit 143 (gin_main)
  error: BaseException | None = None
  try:
    if evaluating and start == 0:  # step 0: the SFT policy, so every eval curve starts there
      cat = eval_rollouts(policy.params)
      if member_trees:
        set_dis_reference(cat)
      last_eval = evaluate(cat)
      writer.write(0, last_eval)
    elif evaluating and member_trees:  # resumed: the same step-0 responses again (same keys)
      set_dis_reference(eval_rollouts(sft))
    for step in range(start, cfg.train_steps):
      prompts = dataset.batch(step, batch // k, process_index=0, process_count=1)  # global
      prompts = {key: np.repeat(v, k, axis=0) for key, v in prompts.items()}
      pbatch, vbatch, host = rollout(policy.params, prompts, oracle, cfg.seed, step * batch)
      t0 = time.perf_counter()
      metrics = {}
      if value is not None:
        value, vm = value_trainer.train_step(value, vbatch)
        metrics.update({f"value/{key}": v for key, v in vm.items()})
      update_policy = step >= rl.value_warmup_steps
      if update_policy:
        policy, pm = policy_trainer.train_step(policy, pbatch)
        metrics.update({f"policy/{key}": v for key, v in pm.items()})
        if anchor is not None:
          with partitioner.mesh_context():
            anchor = ema(anchor, policy.params)
      metrics = _to_host(metrics)
      window.append(_step_scalars(host, metrics, update_policy,
                                  time.perf_counter() - t0, value is not None))
      done = step + 1
      if not all(math.isfinite(v) for v in window[-1].values()):
        raise NonFiniteError(f"non-finite RL metrics at step {done} of {model_dir}: "
                             f"{window[-1]}; nothing non-finite was saved. Lower the learning "
                             "rate or the KL coefficient and rerun (it resumes)")
      scalars = {}
      if done % cfg.log_every == 0 or done == cfg.train_steps:
        scalars = {key: float(np.mean([w[key] for w in window if key in w]))
                   for key in window[-1]}
        window = []
      if evaluating and (done == cfg.train_steps or (rl.eval_every and
                                                     done % rl.eval_every == 0)):
        last_eval = evaluate(eval_rollouts(policy.params))
        scalars.update(last_eval)
      if scalars:
        writer.write(done, scalars)
        progress.update(done, {key.split("/")[-1]: v for key, v in scalars.items() if key in (
            "rewards/proxy", "rewards/oracle", "rewards/kl_to_sft", "eval/oracle_reward")})
      if done % cfg.save_every == 0 or done == cfg.train_steps:
        save(done)
      _maybe_inject_fault(done)  # the SIGKILL drills' hook (WARM_JAX_FAULT_KILL_AT_STEP)
      if done < cfg.train_steps and stop.requested(done):
        for checkpointer in checkpointers:
          checkpointer.wait()
        if any(c.latest_step() != done for c in checkpointers):  # not a save step
          save(done)
          for checkpointer in checkpointers:
            checkpointer.wait()
        raise Preempted(f"SIGTERM at step {done}: checkpoints of the policy"
                        f"{', the value' if value is not None else ''}"
                        f"{' and the anchor' if anchor is not None else ''} saved in "
                        f"{model_dir}; rerun the same command to resume")
  except BaseException as e:
    error = e  # a dead peer: `finish` enters no barrier that would wait for it
    raise
  finally:
    stop.restore()
    for checkpointer in checkpointers:
      checkpointer.finish(error)
    writer.close()
  if jax.process_index() == 0:
    from warm_jax.gao_fits import rl_eval_fit
    from warm_jax.metrics_writer import read_metrics
    fit = rl_eval_fit(read_metrics(model_dir)) if evaluating else None
    run_dir.write_done(model_dir, {
        "step": cfg.train_steps, "train_steps": cfg.train_steps,
        "wall_s": round(time.time() - t_start, 2), **last_eval, "gao_fit": fit})
  return last_eval


def _step_scalars(host: Mapping[str, Any], metrics: Mapping[str, Any], updated: bool,
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

