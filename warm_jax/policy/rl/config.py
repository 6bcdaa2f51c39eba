"""RL's settings (`RLConfig`), the metric keys it logs, and the advantages of a rollout.

Where it sits: the RL stage's configuration (gin/rl.gin binds `RLConfig`); `rl.rollout` computes
advantages with it, `rl.evaluation` logs the keys, `rl.loop` runs it (package docstring).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from warm_jax.policy import objective as po

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
# Beside EVAL_KEYS when DISAGREEMENT_MEMBERS is set (`warm_jax.policy.disagreement`, against the
# step-0
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


def check_disagreement_members(members: Any) -> list[str] | None:
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


