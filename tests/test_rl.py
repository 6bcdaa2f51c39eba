"""RL: the REINFORCE gradient against the analytic one on a bandit, the KL terms, the baselines,
and a tiny run end to end (metrics, checkpoints, value warm-up)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from test_bon import PROMPT_LEN, make_policy_data_dir, save_random_model
from warm_jax.core import checkpoints as ckpt_lib
from warm_jax.policy import objective as po
from warm_jax.policy import rl, win_rates
from warm_jax.data.datasets import prompt_dataset
from warm_jax.core.metrics_writer import read_metrics
from warm_jax.models import LanguageModel, RewardModel
from warm_jax.core.optimizers import OptimizerConfig
from warm_jax.policy.sampling import SamplingConfig
from warm_jax.core.trainer import TrainerConfig

ARMS = 5


def _bandit(seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=ARMS)), jnp.asarray(rng.normal(size=ARMS)),
          jnp.asarray(rng.normal(size=ARMS)))  # policy logits, rewards, reference logits


def test_reinforce_gradient_on_a_bandit_matches_the_analytic_one():
  theta, reward, ref_logits = _bandit()
  p = jax.nn.softmax(theta)
  analytic = p * (reward - p @ reward)  # d/dtheta sum_a p_a r_a

  def reinforce_loss(theta, arms, weights, baseline):
    log_probs = jax.nn.log_softmax(theta)[arms][None]
    advantages = (reward[arms] - baseline)[None]
    return po.policy_gradient_sums(log_probs, advantages, weights[None])[0]

  # Exact expectation: every arm weighted by its probability; any baseline.
  for baseline in (0.0, 0.7):
    exact = -jax.grad(reinforce_loss)(theta, jnp.arange(ARMS), p, baseline)
    np.testing.assert_allclose(exact, analytic, atol=1e-6)
  # Monte Carlo with the mean reward as baseline: within sampling noise of the analytic one.
  n = 40_000
  arms = jax.random.categorical(jax.random.key(0), theta, shape=(n,))
  estimate = -jax.grad(reinforce_loss)(theta, arms, jnp.full((n,), 1.0 / n), p @ reward)
  np.testing.assert_allclose(estimate, analytic, atol=0.02)


def test_kl_folded_into_the_reward_or_the_loss_gives_the_regularised_gradient():
  theta, reward, ref_logits = _bandit(1)
  alpha = 0.3
  log_q = jax.nn.log_softmax(ref_logits)

  def objective(theta):  # E[r] - alpha KL(pi || ref)
    log_p = jax.nn.log_softmax(theta)
    return jnp.exp(log_p) @ reward - alpha * jnp.exp(log_p) @ (log_p - log_q)

  analytic = jax.grad(objective)(theta)
  p = jax.lax.stop_gradient(jax.nn.softmax(theta))

  # Each arm is a one-token response in its own row, weighted by its probability (the exact
  # expectation); the RM reward sits on that token.
  def per_arm_loss(theta, mode):
    log_p = jax.nn.log_softmax(theta)[:, None]
    config = rl.RLConfig(kl_coef=alpha, kl_penalty=mode, baseline="none",
                         kl_estimator="k1" if mode == "reward" else "k2")
    adv = rl.compute_advantages(log_probs=jax.lax.stop_gradient(log_p),
                                ref_log_probs=log_q[:, None], response_mask=jnp.ones((ARMS, 1)),
                                rewards=reward, values=jnp.zeros((ARMS, 1)), config=config)
    return po.policy_gradient_sums(log_p, adv["advantages"], p[:, None],
                                   ref_log_probs=log_q[:, None], kl_coef=alpha,
                                   kl_estimator=config.kl_estimator,
                                   kl_in_loss=mode == "loss")[0]

  for mode in ("reward", "loss"):
    np.testing.assert_allclose(-jax.grad(per_arm_loss)(theta, mode), analytic, atol=1e-6)


def test_kl_is_zero_when_the_policy_is_the_reference_and_the_baselines():
  rng = np.random.default_rng(0)
  log_probs = jnp.asarray(rng.normal(size=(4, 6)))
  mask = jnp.asarray([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0],
                      [0, 1, 1, 0, 0, 0]], jnp.float32)
  rewards, values = jnp.asarray([1.0, 3.0, -2.0, 0.5]), jnp.asarray(rng.normal(size=(4, 6)))
  for estimator in po.KL_ESTIMATORS:
    assert np.all(po.kl_estimate(log_probs, log_probs, estimator) == 0)
    out = rl.compute_advantages(log_probs=log_probs, ref_log_probs=log_probs,
                                response_mask=mask, rewards=rewards, values=values,
                                config=rl.RLConfig(kl_estimator=estimator, kl_coef=0.5))
    assert np.all(out["kl"] == 0)
    # No KL: the return of every response token is the final reward.
    np.testing.assert_allclose(out["returns"], rewards[:, None] * mask)
    np.testing.assert_allclose(out["advantages"], (rewards[:, None] - values) * mask, atol=1e-6)
  # k1 KL folded into the rewards: G_t = R - alpha * sum_{t' >= t} d_t'.
  ref = log_probs - 0.1
  out = rl.compute_advantages(log_probs=log_probs, ref_log_probs=ref, response_mask=mask,
                              rewards=rewards, values=values, config=rl.RLConfig(kl_coef=0.5))
  np.testing.assert_allclose(out["returns"][1], (3.0 - 0.5 * 0.1 * np.array(
      [0, 5, 4, 3, 2, 1])) * np.asarray(mask[1]), atol=1e-6)
  # Leave-one-out over K = 2 samples per prompt: A_i = total_i - total_other.
  loo = rl.compute_advantages(log_probs=log_probs, ref_log_probs=log_probs, response_mask=mask,
                              rewards=rewards, values=values, config=rl.RLConfig(
                                  baseline="leave_one_out", samples_per_prompt=2))
  np.testing.assert_allclose(loo["advantages"][:, 3], [-2.0, 2.0, -2.5, 0.0])
  with pytest.raises(ValueError, match="needs >= 2 samples"):
    rl.RLConfig(baseline="leave_one_out")


def test_log_probs_of_the_response_window_equal_the_full_pass_and_so_does_the_loss():
  # RL's LM head runs at the last max_new_tokens + 1 positions only (`window_log_probs`,
  # PolicyGradientObjective.response_window): the same log-probs, entropies, loss and
  # gradient as the pass over every position, for responses in the last columns.
  cfg = tiny_config(vocab_size=40, max_len=32)
  lm = LanguageModel(cfg)
  from warm_jax.rm.scoring import unboxed_init
  params = unboxed_init(lm, 0)
  rng = np.random.default_rng(0)
  batch, plen, new = 6, 9, 5
  tokens = jnp.asarray(rng.integers(3, 40, (batch, plen + new)), jnp.int32)
  mask = jnp.asarray(np.arange(plen + new)[None] >= rng.integers(0, 4, (batch, 1)), jnp.int32)
  full = po.token_log_probs(lm.apply({"params": params}, tokens, mask), tokens,
                            temperature=0.7)
  windowed = po.window_log_probs(
      lambda last: lm.apply({"params": params}, tokens, mask, last=last), tokens,
      temperature=0.7, window=new + 1)
  for a, b in zip(full, windowed):
    np.testing.assert_allclose(b[:, plen:], a[:, plen:], rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(b[:, :plen]) == 0)
  response = np.zeros((batch, plen + new), np.int32)
  response[:, plen:] = np.arange(new)[None] < rng.integers(1, new + 1, (batch, 1))
  data = {"tokens": tokens, "mask": mask, "response_mask": jnp.asarray(response),
          "advantages": jnp.asarray(rng.normal(size=(batch, plen + new)), jnp.float32),
          "ref_log_probs": jnp.asarray(rng.normal(size=(batch, plen + new)), jnp.float32)}
  losses = []
  for window in (None, new):
    objective = po.PolicyGradientObjective(cfg, temperature=0.7, kl_coef=0.1, kl_in_loss=True,
                                           response_window=window)
    losses.append(jax.value_and_grad(lambda p: objective.loss(p, data, None)[0])(params))
  np.testing.assert_allclose(losses[1][0], losses[0][0], rtol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         losses[0][1], losses[1][1])
  assert float(jnp.abs(losses[0][0])) > 0


@pytest.mark.parametrize("baseline", ["value", "leave_one_out"])
def test_scoring_in_row_slices_gives_the_whole_batch_numbers(baseline):
  # `Rollouts(score_microbatches=...)`: the model passes over sequential slices of the rows
  # must give the numbers of one pass over the batch (the advantages' baselines span slices).
  import functools
  from warm_jax.core.partitioning import Partitioner
  from warm_jax.models import ValueModel
  from warm_jax.policy.rl import rollout
  from warm_jax.rm.scoring import unboxed_init
  cfg = tiny_config(vocab_size=40, max_len=32)
  rm_cfg = tiny_config(vocab_size=40, max_len=32, reward_readout="hidden_logprob")
  lm, rm, vm = LanguageModel(cfg), RewardModel(rm_cfg), ValueModel(cfg)
  policy, ref, sft = unboxed_init(lm, 0), unboxed_init(lm, 1), unboxed_init(lm, 2)
  rms, value = [unboxed_init(rm, 3), unboxed_init(rm, 4)], unboxed_init(vm, 5)
  rng = np.random.default_rng(0)
  batch, plen, rlen = 8, 6, 5
  prompt_tokens = jnp.asarray(rng.integers(3, 40, (batch, plen)), jnp.int32)
  prompt_mask = jnp.asarray(np.arange(plen)[None] >= rng.integers(0, 3, (batch, 1)), jnp.int32)
  response_tokens = jnp.asarray(rng.integers(3, 40, (batch, rlen)), jnp.int32)
  response_mask = jnp.asarray(np.arange(rlen)[None] < rng.integers(1, rlen + 1, (batch, 1)),
                              jnp.int32)
  config = rl.RLConfig(baseline=baseline, samples_per_prompt=2, kl_coef=0.1)
  score = lambda chunks: jax.jit(functools.partial(
      rollout._score_rollout, lm=lm, rm=rm, vm=vm, temperature=0.9, config=config,
      partitioner=Partitioner(), eos_id=1, reward_combine=("uwo", 0.5), row_slices=chunks))(
          policy, ref, sft, value if baseline == "value" else None, rms, 0.5, 2.0,
          prompt_tokens, prompt_mask, response_tokens, response_mask)
  whole, sliced = score(1), score(4)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                         whole, sliced)
  assert float(jnp.max(jnp.abs(whole[2]["proxy"]))) > 0  # a real reward, not zeros


def _run(tmp_path, name, *, steps, rl_config, data, sft, rm, dataset_hook=None):
  cfg = tiny_config(vocab_size=320, max_len=32, num_layers=1)
  dataset = prompt_dataset(data_dir=data, split="train", prompt_len=PROMPT_LEN)
  if dataset_hook is not None:
    dataset_hook(dataset)
  return rl.train_policy(
      model_dir=str(tmp_path / name), sft_path=sft, reward_model=rm, model_config=cfg,
      optimizer=OptimizerConfig(learning_rate=1e-2),
      trainer_config=TrainerConfig(train_steps=steps, batch_size=8, log_every=1, save_every=2,
                                   keep_checkpoints=None),
      dataset=dataset,
      eval_dataset=prompt_dataset(data_dir=data, split="validation", shuffle=False),
      rl=rl_config, sampling=SamplingConfig(max_new_tokens=6), data_dir=data,
      write_config=False)


@pytest.mark.slow
def test_tiny_rl_run_writes_metrics_checkpoints_and_warms_up_the_value(tmp_path):
  """Value baseline with warm-up, an ENS reward of two RMs, and WARP's EMA anchor."""
  data = make_policy_data_dir(str(tmp_path / "data"))
  cfg = tiny_config(vocab_size=320, max_len=32, num_layers=1)
  sft = save_random_model(LanguageModel(cfg), str(tmp_path / "sft"), 0)
  rms = [save_random_model(RewardModel(cfg), str(tmp_path / f"rm_{i}"), i + 1) for i in (0, 1)]
  from warm_jax.core import flops as flops_lib
  flops_lib.COUNTER.reset()
  last = _run(tmp_path, "rl", steps=3, data=data, sft=sft, rm=rms, rl_config=rl.RLConfig(
      value_warmup_steps=1, anchor="ema", anchor_ema_rate=0.5))
  # The stage profile: 3 value updates and 2 policy updates (after 1 warm-up step) of batch 8
  # at width prompt + 6 new tokens, forward + backward (3x a forward pass whose per-token count
  # is computed here from the SFT params: every non-embedding leaf, attention over the width,
  # and for the policy the tied LM head at the last 6 + 1 positions, where the responses are);
  # every rollout sampled is scored.
  leaves = jax.tree_util.tree_flatten_with_path(ckpt_lib.load_params(sft))[0]
  decoder = sum(int(np.prod(np.shape(x))) for path, x in leaves
                if "embed" not in jax.tree_util.keystr(path))
  width = PROMPT_LEN + 6
  attention = 4 * cfg.num_layers * width * cfg.d_model
  programs = flops_lib.COUNTER.programs()
  assert programs["train step (policy)"] == {"flops": pytest.approx(
      2 * 8 * 3 * (width * (2 * decoder + attention) + 7 * 2 * cfg.vocab_size * cfg.d_model)),
      "calls": 2}
  assert programs["train step (value)"] == {"flops": pytest.approx(
      3 * 8 * width * 3 * (2 * decoder + attention)), "calls": 3}
  assert programs["score rollout"]["calls"] == programs["sample"]["calls"] >= 1 + 3
  assert set(programs) == {"train step (policy)", "train step (value)", "score rollout",
                           "sample"}
  records = read_metrics(str(tmp_path / "rl"))
  assert [r["step"] for r in records] == [0, 1, 2, 3]
  # Step 0: the SFT policy evaluated before any update (eval keys only, KL exactly 0).
  assert set(records[0]) == {"step", *rl.EVAL_KEYS} and records[0]["eval/kl_to_sft"] == 0.0
  records = records[1:]
  for r in records:
    missing = set(rl.METRIC_KEYS + rl.VALUE_METRIC_KEYS) - set(r)
    assert not missing, missing
  assert set(last) == set(rl.EVAL_KEYS) and set(last) <= set(records[-1])
  # alpha * KL beside the reward, in the same (standardised) units.
  for r in records:
    assert r["rewards/total"] == pytest.approx(
        r["rewards/normalized_reward"] - r["rewards/kl_penalty"], abs=1e-6)
  assert last["eval/kl_term"] == pytest.approx(0.003 * last["eval/kl_to_sft"])
  calibration = json.load(open(tmp_path / "rl" / rl.CALIBRATION_FILE))
  assert last["eval/normalized_reward"] == pytest.approx(
      (last["eval/proxy_reward"] - calibration["shift"]) / calibration["scale"], rel=1e-4,
      abs=1e-5)
  # The policy (and the anchor) is the SFT policy until the first update, after the rollout
  # of step 2: the KL terms are exactly zero at init.
  assert [r["policy/updated"] for r in records] == [0.0, 1.0, 1.0]
  for r in records[:2]:
    assert r["rewards/kl_to_sft"] == r["rewards/kl_to_ref"] == r["rewards/kl_penalty"] == 0.0
  assert records[2]["rewards/kl_to_sft"] != 0.0
  assert records[2]["rewards/kl_to_ref"] != records[2]["rewards/kl_to_sft"]
  for sub in ("checkpoints", "value/checkpoints", "anchor"):
    assert sorted(os.listdir(tmp_path / "rl" / sub)) == ["2", "3"]
  assert json.load(open(tmp_path / "rl" / "DONE"))["step"] == 3
  calibration = json.load(open(tmp_path / "rl" / rl.CALIBRATION_FILE))
  assert calibration["scale"] > 0 and calibration["num_samples"] == 8
  assert win_rates.best_checkpoint(str(tmp_path / "rl")).endswith(os.path.join(
      "checkpoints", "3"))  # the only step with both a checkpoint and eval metrics
  # One update so far at step 2: the anchor is (1 - mu) SFT + mu policy.
  anchor = ckpt_lib.load_params(str(tmp_path / "rl" / "anchor" / "2"))
  policy = ckpt_lib.load_params(str(tmp_path / "rl" / "checkpoints" / "2"))
  expected = jax.tree_util.tree_map(lambda s, p: 0.5 * s + 0.5 * p, ckpt_lib.load_params(sft),
                                    policy)
  jax.tree_util.tree_map(lambda a, e: np.testing.assert_allclose(a, e, atol=1e-6), anchor,
                         expected)


@pytest.mark.parametrize("stage,required", [("bon", "OUTPUT_DIR"), ("rl", "DATA_DIR"),
                                            ("win_rates", "OUTPUT_DIR")])
def test_stage_gin_files_bind_their_stage_and_name_missing_inputs(stage, required):
  import gin
  from warm_jax import configurables
  from warm_jax.gin_utils import parse_gin
  configurables.register()
  try:
    parse_gin(["gin/models/tiny.gin", f"gin/{stage}.gin"], [])
    with gin.unlock_config(), pytest.raises(ValueError, match=required):
      gin.get_configurable("run_stage")()
  finally:
    gin.clear_config()


@pytest.mark.slow
def test_policy_learning_rate_warms_up_linearly_over_policy_updates(tmp_path):
  """OptimizerConfig.warmup_steps of the policy's optimiser (gin POLICY_WARMUP_STEPS) counts
  policy updates: after one value-only step, updates 0, 1, 2 use lr * 0/2, 1/2, 2/2; the first
  (lr 0) leaves the policy at SFT (its next rollout's KL is exactly 0)."""
  data = make_policy_data_dir(str(tmp_path / "data"))
  cfg = tiny_config(vocab_size=320, max_len=32, num_layers=1)
  sft = save_random_model(LanguageModel(cfg), str(tmp_path / "sft"), 0)
  rm = save_random_model(RewardModel(cfg), str(tmp_path / "rm"), 1)
  rl.train_policy(
      model_dir=str(tmp_path / "rl"), sft_path=sft, reward_model=rm, model_config=cfg,
      optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=2),
      trainer_config=TrainerConfig(train_steps=4, batch_size=8, log_every=1, save_every=4),
      dataset=prompt_dataset(data_dir=data, split="train", prompt_len=PROMPT_LEN),
      rl=rl.RLConfig(value_warmup_steps=1), sampling=SamplingConfig(max_new_tokens=6),
      data_dir=data, write_config=False)
  records = read_metrics(str(tmp_path / "rl"))
  assert [r["step"] for r in records] == [1, 2, 3, 4]  # no eval prompts: no step-0 eval
  np.testing.assert_allclose([r["policy/learning_rate"] for r in records],
                             [0.0, 0.0, 5e-3, 1e-2], rtol=1e-6)
  assert [r["rewards/kl_to_sft"] == 0.0 for r in records] == [True, True, True, False]
  assert json.load(open(tmp_path / "rl" / "DONE"))["gao_fit"] is None


def test_gao_fits_recover_known_curves_and_match_an_independent_least_squares():
  from warm_jax.policy.gao_fits import gao_fit, rl_eval_fit
  kl = np.array([0.0, 0.3, 1.0, 2.0, 4.0, 7.0, 12.0])
  d = np.sqrt(kl)
  # Noiseless curves: (a, b) recovered, and the peak where a dense grid of the curve tops out.
  grid = np.linspace(1e-6, 60.0, 600_001)
  for form, curve in (("bon", lambda d: d * (2.0 - 0.5 * d)),
                      ("rl", lambda d: d * (2.0 - 0.5 * np.log(d)))):
    with np.errstate(divide="ignore", invalid="ignore"):  # d log d at d = 0: 0
      fit = gao_fit(kl, np.nan_to_num(curve(d)), form=form)
    assert fit["a"] == pytest.approx(2.0) and fit["b"] == pytest.approx(0.5)
    top = int(np.argmax(curve(grid)))
    assert fit["peak_kl"] == pytest.approx(grid[top] ** 2, rel=1e-3)
    assert fit["peak_gain"] == pytest.approx(curve(grid)[top], rel=1e-6)
  # Noisy points: the normal equations, solved by hand, give the same (a, b).
  rng = np.random.default_rng(0)
  gain = d * (1.0 - 0.3 * d) + 0.05 * rng.normal(size=len(d))
  x1, x2 = d, -d * d
  m = np.array([[x1 @ x1, x1 @ x2], [x1 @ x2, x2 @ x2]])
  a, b = np.linalg.solve(m, [x1 @ gain, x2 @ gain])
  fit = gao_fit(kl, gain, form="bon")
  assert (fit["a"], fit["b"]) == (pytest.approx(a), pytest.approx(b))
  assert fit["rmse"] == pytest.approx(np.sqrt(np.mean((a * x1 + b * x2 - gain) ** 2)))
  # A curve that never turns (b <= 0) has no peak; fewer than 2 points with KL > 0: no fit.
  rising = gao_fit(kl, d * (1.0 + 0.1 * d), form="bon")
  assert rising["b"] < 0 and rising["peak_kl"] is None and rising["peak_gain"] is None
  assert gao_fit([0.0, 0.0, 1.0], [0.0, 0.1, 0.3], form="rl") is None
  with pytest.raises(ValueError, match="form='x'"):
    gao_fit(kl, gain, form="x")
  # RL metrics records: the gain is over the step-0 (SFT) evaluation.
  records = [{"step": 0, "eval/oracle_reward": 5.0, "eval/kl_to_sft": 0.0},
             {"step": 1, "rewards/oracle": 1.0}] + [
      {"step": s, "eval/oracle_reward": 5.0 + g, "eval/kl_to_sft": k}
      for s, g, k in zip((10, 20, 30), (0.4, 0.5, 0.1), (1.0, 3.0, 9.0))]
  fit = rl_eval_fit(records)
  ref = gao_fit([1.0, 3.0, 9.0], [0.4, 0.5, 0.1], form="rl")
  assert fit["a"] == pytest.approx(ref["a"]) and fit["sft_oracle"] == 5.0
  assert rl_eval_fit(records[1:]) is None  # no step-0 evaluation


def test_report_reads_the_step0_eval_and_the_rl_fit(tmp_path):
  from warm_jax.pipeline import report_policy
  from warm_jax.policy.gao_fits import gao_fit
  from warm_jax.core.metrics_writer import MetricsWriter
  run = str(tmp_path / "best_member")
  writer = MetricsWriter(run, tensorboard=False)
  evals = [(0, 5.0, 0.0, 10.0), (10, 5.4, 1.0, 11.0), (20, 5.5, 3.0, 12.0), (30, 5.1, 9.0, 13.0)]
  for step, oracle, kl, proxy in evals:
    if step:
      writer.write(step, {"rewards/oracle": oracle, "rewards/proxy": proxy,
                          "rewards/kl_to_sft": kl, "generation/length": 9.0,
                          "generation/entropy": 1.0 / step})
    writer.write(step, {"eval/oracle_reward": oracle, "eval/kl_to_sft": kl,
                        "eval/proxy_reward": proxy, "eval/length": 9.0,
                        "eval/kl_term": 0.003 * kl, "eval/normalized_reward": 0.0})
  writer.close()
  rl_runs = report_policy.collect_rl({"best_member": run})
  got = rl_runs["best_member"]
  assert got["eval"]["step"] == [0, 10, 20, 30] and got["first_oracle"] == 5.0
  assert got["train"]["step"] == [10, 20, 30]
  want = gao_fit([1.0, 3.0, 9.0], [0.4, 0.5, 0.1], form="rl")
  assert got["gao_fit"]["a"] == pytest.approx(want["a"])
  table = "\n".join(report_policy.tables_md({"rl": rl_runs}))
  assert f"| best_member | 5.000 (0) | 5.500 (20) |" in table
  assert f"{want['a']:.3f}, {want['b']:.3f}" in table and "| 0.027 |" in table
  entropy = np.mean([1.0 / 10, 1.0 / 20, 1.0 / 30])  # fewer than 10 updates: one window
  assert f"| {entropy:.3f} -> {entropy:.3f} |" in table


def test_report_entropy_cell_averages_the_first_and_last_updates():
  """The RL table's entropy column: the mean of the first and of the last 10 updates' sampling
  entropy (where it collapses, the policy has stopped exploring)."""
  from warm_jax.pipeline.report_policy import _entropy_text
  values = list(np.linspace(0.3, 0.01, 25))
  assert _entropy_text(values) == f"{np.mean(values[:10]):.3f} -> {np.mean(values[-10:]):.3f}"
  assert _entropy_text([None, 0.2]) == "0.200 -> 0.200"
  assert _entropy_text(None) == "-" and _entropy_text([]) == "-"


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_the_rerun_resumes_bit_identical(tmp_path):
  """A preemption between save steps: policy, value and anchor are checkpointed at that step,
  Preempted is raised (the CLI's exit 143), and the resumed run ends where an uninterrupted one
  does, bit for bit."""
  import signal
  from warm_jax.core.trainer import Preempted
  data = make_policy_data_dir(str(tmp_path / "data"))
  cfg = tiny_config(vocab_size=320, max_len=32, num_layers=1)
  sft = save_random_model(LanguageModel(cfg), str(tmp_path / "sft"), 0)
  rm = save_random_model(RewardModel(cfg), str(tmp_path / "rm"), 1)
  config = rl.RLConfig(value_warmup_steps=1, anchor="ema", anchor_ema_rate=0.5, eval_every=2)
  run = lambda name, dataset_hook=None: _run(tmp_path, name, steps=4, data=data, sft=sft, rm=rm,
                                             rl_config=config, dataset_hook=dataset_hook)
  run("whole")

  def terminate_while_reading_step_2(dataset):
    original = dataset.batch
    def batch(step, *args, **kwargs):
      if step == 2:
        os.kill(os.getpid(), signal.SIGTERM)
      return original(step, *args, **kwargs)
    dataset.batch = batch

  with pytest.raises(Preempted, match="SIGTERM at step 3: checkpoints of the policy, the value "
                                      "and the anchor saved in"):
    run("cut", terminate_while_reading_step_2)
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is given back
  cut = tmp_path / "cut"
  for sub in ("checkpoints", "value/checkpoints", "anchor"):  # save_every=2, and step 3
    assert sorted(os.listdir(cut / sub)) == ["2", "3"], sub
  assert not os.path.exists(cut / "DONE")
  run("cut")  # the same command again: resumes from step 3
  for sub in ("checkpoints/4", "value/checkpoints/4", "anchor/4"):
    whole, resumed = (ckpt_lib.load_params(str(tmp_path / name / sub)) for name in ("whole", "cut"))
    jax.tree_util.tree_map(np.testing.assert_array_equal, resumed, whole)
  records = {name: read_metrics(str(tmp_path / name)) for name in ("whole", "cut")}
  assert [r["step"] for r in records["cut"]] == [0, 1, 2, 3, 4]
  assert records["cut"][-1]["eval/oracle_reward"] == records["whole"][-1]["eval/oracle_reward"]
