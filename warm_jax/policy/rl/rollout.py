"""One RL rollout: sample a global batch of prompts with the policy and score it (steps 1-3).

Where it sits: inside every RL step and every RL evaluation (`rl.loop`, `rl.evaluation`).
`Rollouts` holds the compiled programs: the KV-cache sampler (`warm_jax.policy.sampling`), the
scoring
program `_score_rollout` (the reward, the policy's, reference's and SFT's log probs, the value,
the advantages: the two Trainers' batches and per-row statistics) and the disagreement
members' scorer; it calls the oracle on the host. The RM reward is standardised with
`calibration` (`Rollouts.calibrate`, on SFT samples before any update).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax.core import checkpoints as ckpt_lib
from warm_jax.core import flops as flops_lib
from warm_jax.core.row_slices import check_row_slices, map_row_slices
from warm_jax.policy import objective as po
from warm_jax.models import LanguageModel, RewardModel, TransformerConfig, ValueModel
from warm_jax.core.partitioning import Partitioner
from warm_jax.policy.reward_sources import combine_member_rewards
from warm_jax.policy.rl.config import CALIBRATION_FILE, RLConfig, compute_advantages
from warm_jax.policy.sampling import (Sampler, SamplingConfig, check_left_padded, close_unfinished,
                                      join_prompt_and_response, response_ended)

Array = jax.Array


class Rollouts:
  """Samples and scores global batches of prompts for RL (steps 1-3 of the package docstring).

  Args:
    model_config / reward_model_config: the policy's and the RMs' configs.
    sampling: temperature, max_new_tokens, EOS (the rollouts' sampling).
    rl: the RL config (KL, baseline, samples per prompt).
    partitioner: mesh and rules.
    batch: responses per global batch.
    max_positions: the positions the models were trained on (`sampling.trained_positions`).
    reward_source: the parsed reward spec (`reward_sources.parse_reward_source`): how the
      reward trees' rewards combine.
    reward_trees: the RM params the reward is read from (placed on the devices).
    member_trees: the disagreement members' params (scored at evals only), or [].
    sft: the SFT policy's params (the KL reference with an SFT anchor; KL-to-SFT otherwise).
    score_microbatches: the scoring program's model passes run over this many sequential
      slices of the batch (the same numbers; `core.row_slices`): on CPU, small slices keep each
      layer's attention scores and the LM head's logits in cache (the RL stage passes the
      policy trainer's `TrainerConfig.microbatches`).
  """

  def __init__(self, *, model_config: TransformerConfig, reward_model_config: TransformerConfig,
               sampling: SamplingConfig, rl: RLConfig, partitioner: Partitioner, batch: int,
               max_positions: int, reward_source: Any, reward_trees: list[Any],
               member_trees: list[Any], sft: Any, score_microbatches: int = 1):
    self.model_config, self.reward_model_config = model_config, reward_model_config
    self.sampling, self.partitioner, self.batch = sampling, partitioner, batch
    self.reward_trees, self.member_trees, self.sft = reward_trees, member_trees, sft
    self.sampler = Sampler(model_config=model_config, partitioner=partitioner, config=sampling,
                           batch_size=batch, max_positions=max_positions, closing_eos=True)
    rows2 = partitioner.batch_sharding(2)
    check_row_slices(batch, score_microbatches, partitioner.batch_divisor,
                     name="score_microbatches")
    self._score = jax.jit(functools.partial(
        _score_rollout, lm=LanguageModel(model_config), rm=RewardModel(reward_model_config),
        vm=ValueModel(model_config), temperature=sampling.temperature, config=rl,
        partitioner=partitioner, eos_id=sampling.eos_id,
        reward_combine=(reward_source.combine, reward_source.uwo_lambda or 0.0),
        row_slices=score_microbatches),
        out_shardings=({key: rows2 for key in po.PolicyGradientObjective.batch_features},
                       {key: rows2 for key in po.ValueRegressionObjective.batch_features},
                       partitioner.batch_sharding(1)))
    self._member_score = jax.jit(functools.partial(
        _member_rewards, rm=RewardModel(reward_model_config), partitioner=partitioner,
        eos_id=sampling.eos_id, row_slices=score_microbatches), out_shardings=rows2)
    # The reward's (shift, scale): none until `calibrate`.
    self.calibration = (jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32))

  def __call__(self, params: Any, prompts: dict[str, np.ndarray], judge: Any, seed: int,
               row_offset: int, *, anchor: Any, value: Any, with_members: bool = False
               ) -> tuple[dict[str, Array], dict[str, Array], dict[str, Any]]:
    """Samples and scores one GLOBAL batch of prompts (the same host arrays on every process;
    each process feeds its slice) with policy `params`, the KL `anchor` params (None: the SFT
    policy) and the `value` params (None: no value model): (policy batch, value batch, host
    statistics of the whole batch). with_members: also the disagreement members' rewards of
    the responses (host 'members' [batch, M])."""
    batch, partitioner, sampling = self.batch, self.partitioner, self.sampling
    check_left_padded(prompts["prompt_mask"])
    local = slice(jax.process_index() * batch // jax.process_count(),
                  (jax.process_index() + 1) * batch // jax.process_count())
    row_ids = row_offset + np.arange(batch, dtype=np.int32)
    rows = partitioner.shard_batch({"t": prompts["prompt_tokens"][local],
                                    "m": prompts["prompt_mask"][local], "r": row_ids[local]},
                                   batch)
    t0 = time.perf_counter()
    with partitioner.mesh_context():
      out = self.sampler.sample_sharded(params, rows["t"], rows["m"], rows["r"], seed)
      ref = anchor if anchor is not None else self.sft
      pbatch, vbatch, stats = self._score(
          params, ref, self.sft if anchor is not None else None, value, self.reward_trees,
          *self.calibration, rows["t"], rows["m"], out["tokens"], out["mask"])
      members = with_members and self.member_trees
      if members:
        stats = {**stats, "members": self._member_score(self.member_trees, rows["t"], rows["m"],
                                                        out["tokens"], out["mask"])}
    width = rows["t"].shape[1] + out["tokens"].shape[1]
    flops_lib.count("score rollout", rollout_score_flops(
        self.model_config, self.reward_model_config, batch=batch, width=width,
        policies=2 if anchor is None else 3, rewards=len(self.reward_trees),
        value_model=value is not None, closing_eos=sampling.eos_id is not None,
        response_width=out["tokens"].shape[1]))
    if members:
      flops_lib.count("score disagreement members", rollout_score_flops(
          self.model_config, self.reward_model_config, batch=batch, width=width,
          policies=0, rewards=len(self.member_trees), value_model=False,
          closing_eos=sampling.eos_id is not None, response_width=out["tokens"].shape[1]))
    host = to_host({"tokens": out["tokens"], "mask": out["mask"], **stats})
    host["ended"] = response_ended(host["tokens"], host["mask"], sampling.eos_id)
    host["oracle"] = judge.score(
        prompt_index=prompts["prompt_index"], prompt_tokens=prompts["prompt_tokens"],
        prompt_mask=prompts["prompt_mask"], response_tokens=host["tokens"],
        response_mask=host["mask"])
    host["seconds"] = time.perf_counter() - t0
    return pbatch, vbatch, host

  def calibrate(self, prompts: dict[str, np.ndarray], judge: Any, seed: int, *, anchor: Any,
                value: Any, model_dir: str) -> None:
    """Standardises the reward with the mean and std of the RM's rewards on one batch of SFT
    samples of `prompts` (before any update; the same on resume), written to
    MODEL_DIR/reward_calibration.json."""
    sft_rewards = self(self.sft, prompts, judge, seed, 0, anchor=anchor, value=value)[2]["proxy"]
    shift, scale = float(np.mean(sft_rewards)), max(float(np.std(sft_rewards)), 1e-6)
    self.calibration = (jnp.asarray(shift, jnp.float32), jnp.asarray(scale, jnp.float32))
    logging.info("RM reward on %d SFT samples: mean %.4g, std %.4g (the reward is "
                 "standardised with them)", self.batch, shift, scale)
    if jax.process_index() == 0:
      ckpt_lib.atomic_write_text(os.path.join(model_dir, CALIBRATION_FILE), json.dumps(
          {"shift": shift, "scale": scale, "num_samples": self.batch}) + "\n")


def _score_rollout(policy, ref, sft, value, reward_trees, reward_shift, reward_scale,
                   prompt_tokens, prompt_mask, response_tokens, response_mask, *, lm, rm, vm,
                   temperature, config, partitioner, eos_id=None, reward_combine=("ens", 0.0),
                   row_slices=1):
  """Step 2-3 on device: the two Trainers' batches and [batch] per-row statistics. The
  reward is the reward trees' rewards combined by reward_combine = (combine, uwo lambda)
  (`reward_sources.combine_member_rewards`: ENS mean, WCO min, UWO mean - lambda var). The RM
  reads each response closed by `sampling.close_unfinished` (EOS after an unfinished one, the
  rule of best-of-N and win rates); the policy, reference and value read the sampled tokens.
  The model passes run over `row_slices` sequential slices of the rows (`core.row_slices`); the
  advantages (baselines across rows) over the whole batch."""
  with partitioner.activation_rules():
    tokens = jnp.concatenate([prompt_tokens, response_tokens], 1).astype(jnp.int32)
    mask = jnp.concatenate([prompt_mask, response_mask], 1).astype(jnp.int32)
    rmask = jnp.concatenate([jnp.zeros_like(prompt_mask), response_mask], 1).astype(jnp.int32)

    # the responses fill the last columns: the LM head runs there only (`window_log_probs`)
    window = response_tokens.shape[1] + 1

    def model_passes(tokens, mask, prompt_tokens, prompt_mask, response_tokens, response_mask):
      log_probs_of = lambda p: po.window_log_probs(
          lambda last: lm.apply({"params": p}, tokens, mask, last=last), tokens,
          temperature=temperature, window=window)
      log_probs, entropy = log_probs_of(policy)
      ref_log_probs = log_probs_of(ref)[0]
      sft_log_probs = ref_log_probs if sft is None else log_probs_of(sft)[0]
      member_rewards = _rm_rewards(rm, reward_trees, prompt_tokens, prompt_mask,
                                   response_tokens, response_mask, eos_id).T  # [rows, trees]
      values = (jnp.zeros(tokens.shape, jnp.float32) if value is None else
                po.state_values(vm.apply({"params": value}, tokens, mask)))
      return log_probs, entropy, ref_log_probs, sft_log_probs, member_rewards, values

    log_probs, entropy, ref_log_probs, sft_log_probs, member_rewards, values = map_row_slices(
        model_passes, row_slices, tokens, mask, prompt_tokens, prompt_mask, response_tokens,
        response_mask)
    rewards = combine_member_rewards(member_rewards.T, reward_combine[0], reward_combine[1])
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
                        closing_eos: bool, response_width: int) -> float:
  """Model FLOPs of `_score_rollout` (or, with policies=0, `_member_rewards`) on `batch`
  sequences of prompt + response `width`: `policies` LM forward passes (policy, reference and,
  with an EMA anchor, the SFT policy; their LM head at the last response_width + 1 positions,
  `window_log_probs`), `rewards` reward-model passes over the responses closed by one more
  column (`close_unfinished`, when there is an EOS) and the value model's."""
  rm_width = width + int(closing_eos)
  flops = policies * model_config.lm_forward_flops(width, last=response_width + 1)
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
                    *, rm, partitioner, eos_id=None, row_slices=1):
  """[batch, M] rewards of the disagreement members (the RL reward's scoring code,
  `_rm_rewards`): M RM passes, at eval only, over `row_slices` slices of the rows."""
  with partitioner.activation_rules():
    return map_row_slices(lambda *rows: _rm_rewards(rm, member_trees, *rows, eos_id).T,
                          row_slices, prompt_tokens, prompt_mask, response_tokens, response_mask)


def to_host(tree: Any) -> Any:
  """Device arrays -> host numpy (multi-host: the whole global batch on every process)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


