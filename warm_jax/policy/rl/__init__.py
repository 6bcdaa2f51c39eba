"""RL: REINFORCE with a learned value baseline and a KL penalty, against any reward model.

Where it sits: after the RMs (docs/paper.md: the setup's RL, figs 8-9, 18-21). The policy and
the value model both start from the SFT checkpoint; the reward is a member, a WARM checkpoint or ENS
(`warm_jax.policy.reward_sources`); the oracle (`warm_jax.policy.oracle`) scores every sampled
response so
reward hacking shows as the oracle reward falling while the proxy (the RM's) keeps rising.
The value model is the SFT backbone under a zero-initialised head (V = 0 until it is fit).

One step s (gin/rl.gin; `python -m warm_jax.train --gin_file=... --gin_file=gin/rl.gin`):
  1. Rollout: the prompts of batch s (B / K prompts, each K times) are answered by the policy
     at temperature T (paper 0.9) with the KV-cache sampler (`warm_jax.policy.sampling`).
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
uncertainty signal for the RM's errors (`warm_jax.policy.disagreement`, the scales fixed on the
step-0
eval and written to MODEL_DIR/disagreement_reference.json; M more RM passes per eval, none per
training step). The DONE file holds the last eval and Gao et al.'s RL fit
R(d) = d (a - b log d), d = sqrt(KL), of the eval oracle gain over step 0 (`gao_fits`).
Checkpoints: MODEL_DIR/checkpoints/<step> (policy; a params dir later stages and win rates load), MODEL_DIR/value/, MODEL_DIR/anchor/ (ema only). A rerun
resumes from the latest checkpoint: the prompts and sampling keys of step s depend only on s.
SIGTERM (a preemption) checkpoints the policy, the value and the anchor at the current step and
raises `trainer.Preempted` (exit 143 from the CLI); the rerun resumes there bit for bit. The
trainer's fault hook (WARM_JAX_FAULT_KILL_AT_STEP=N, a SIGKILL after step N's save was issued)
works here too.

The package, by piece: `config` (RLConfig, the metric keys, the advantages), `rollout` (sampling
and scoring one batch of prompts: steps 1-3), `evaluation` (held-out evals, the disagreement
signal, the per-step scalars, the loop hook that logs them), `state` (policy, value and anchor:
their checkpoints, resume, the SFT start) and `loop` (`train_policy`: steps 4-5 on the shared
`training_loop.run_training_loop`).
"""

from warm_jax.policy.rl.config import (ANCHORS, BASELINES, CALIBRATION_FILE,
                                       DISAGREEMENT_EVAL_KEYS, DISAGREEMENT_REFERENCE_FILE,
                                       EVAL_KEYS, KL_PENALTIES, METRIC_KEYS, REWARD_NORMALIZATIONS,
                                       VALUE_METRIC_KEYS, RLConfig, compute_advantages)
from warm_jax.policy.rl.loop import train_policy
from warm_jax.policy.rl.rollout import _score_rollout, rollout_score_flops

__all__ = ["ANCHORS", "BASELINES", "CALIBRATION_FILE", "DISAGREEMENT_EVAL_KEYS",
           "DISAGREEMENT_REFERENCE_FILE", "EVAL_KEYS", "KL_PENALTIES", "METRIC_KEYS",
           "REWARD_NORMALIZATIONS", "VALUE_METRIC_KEYS", "RLConfig", "compute_advantages",
           "train_policy", "_score_rollout", "rollout_score_flops"]
