"""Member disagreement along RL (issue 14, part 7): the eval statistics against independent
computations, a tiny RL run that logs them, the report with and without them, and the
experiment's RL stages passing the members."""

import itertools
import json
import os

import numpy as np
import pytest

from warm_jax.policy import disagreement as dis


def _brute_auroc(scores, labels):
  """P(score of a positive > score of a negative) + P(tie) / 2 over every pair."""
  pos = [s for s, l in zip(scores, labels) if l]
  neg = [s for s, l in zip(scores, labels) if not l]
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


def test_rl_eval_stats_match_an_independent_computation():
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  m, n = 3, 40
  # Step 0 (the reference) and a later eval whose rewards drifted; rounded so that ties occur.
  members0 = np.round(rng.normal(size=(m, n)) * [[1.0], [3.0], [0.5]] + [[0.0], [5.0], [-2.0]], 1)
  proxy0, oracle0 = rng.normal(size=n), rng.normal(2.0, 4.0, size=n)
  members = np.round(members0 + rng.normal(0.5, 1.0, size=(m, n)), 1)
  members[:, 5] = members[:, 6]  # two responses with the same disagreement
  proxy, oracle = proxy0 + 0.8 + 0.3 * rng.normal(size=n), oracle0 - 1.0
  ref = dis.eval_reference(members0, proxy0, oracle0)
  assert ref["num_responses"] == n and json.loads(json.dumps(ref)) == ref
  got = dis.eval_disagreement_stats(members, proxy, oracle, ref)

  # Independently: per-member z with the step-0 mean / population sd, loops over responses.
  mu0 = [sum(row) / n for row in members0]
  sd0 = [np.sqrt(sum((x - mu) ** 2 for x in row) / n) for row, mu in zip(members0, mu0)]
  z_p = lambda p: (p - np.mean(proxy0)) / np.std(proxy0)
  z_o = lambda o: (o - np.mean(oracle0)) / np.std(oracle0)
  d = np.array([np.std([(members[j, i] - mu0[j]) / sd0[j] for j in range(m)])
                for i in range(n)])
  err = np.array([z_p(proxy[i]) - z_o(oracle[i]) for i in range(n)])
  median0 = np.median([z_p(proxy0[i]) - z_o(oracle0[i]) for i in range(n)])
  assert ref["median_error"] == pytest.approx(median0)
  assert got["disagreement"] == pytest.approx(d.mean())
  assert got["spearman"] == pytest.approx(stats.spearmanr(d, err).statistic)
  labels = err > median0
  assert 0 < labels.sum() < n
  assert got["auroc"] == pytest.approx(_brute_auroc(d, labels))
  assert got["auroc"] == pytest.approx(stats.mannwhitneyu(d[labels], d[~labels]).statistic /
                                       (labels.sum() * (~labels).sum()))
  # At step 0 itself, about half the responses are flagged (strictly above the median).
  at0 = dis.eval_disagreement_stats(members0, proxy0, oracle0, ref)
  assert at0["disagreement"] == pytest.approx(np.mean(dis.response_disagreement(members0, ref)))


def test_rl_eval_stats_on_a_hand_computed_example_and_their_refusals():
  # Two members that agree up to scale: every standardised disagreement is 0 -> Spearman
  # undefined (None), AUROC one half (every pair tied).
  members = np.array([[0.0, 1.0, 2.0, 3.0], [10.0, 12.0, 14.0, 16.0]])
  proxy, oracle = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 2.0, 1.0, 3.0])
  ref = dis.eval_reference(members, proxy, oracle)
  got = dis.eval_disagreement_stats(members, proxy, oracle, ref)
  assert got == {"disagreement": 0.0, "spearman": None, "auroc": 0.5}
  # Member 1 moves up by one step-0 sd on the last response only: d = 1/2 there, 0 elsewhere;
  # errors (z-scores with sd sqrt(1.25)): [0, -1, 1, 0] / sqrt(1.25); median 0 -> response 2
  # alone is over-rated, and its d (0) ties with two others below response 3's: AUROC 1/3.
  moved = members.copy()
  moved[1, 3] += np.sqrt(1.25) * 2
  got = dis.eval_disagreement_stats(moved, proxy, oracle, ref)
  assert got["disagreement"] == pytest.approx(0.5 / 4)
  assert got["auroc"] == pytest.approx(_brute_auroc([0, 0, 0, 0.5], [0, 0, 1, 0]))
  assert got["auroc"] == pytest.approx(1 / 3)
  with pytest.raises(ValueError, match="one reward to every step-0"):
    dis.eval_reference(np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 2.0]]), [0, 1, 2], [2, 1, 0])
  with pytest.raises(ValueError, match="two members"):
    dis.eval_reference(members[:1], proxy, oracle)


@pytest.mark.slow
def test_tiny_rl_run_logs_the_member_disagreement_at_every_eval(tmp_path):
  from conftest import tiny_config
  from test_bon import PROMPT_LEN, make_policy_data_dir, save_random_model
  from warm_jax.policy import rl
  from warm_jax.data.datasets import prompt_dataset
  from warm_jax.core.metrics_writer import read_metrics
  from warm_jax.models import LanguageModel, RewardModel
  from warm_jax.core.optimizers import OptimizerConfig
  from warm_jax.policy.sampling import SamplingConfig
  from warm_jax.core.trainer import TrainerConfig
  data = make_policy_data_dir(str(tmp_path / "data"))
  cfg = tiny_config(vocab_size=320, max_len=32, num_layers=1)
  sft = save_random_model(LanguageModel(cfg), str(tmp_path / "sft"), 0)
  members = [save_random_model(RewardModel(cfg), str(tmp_path / f"rm_{i}"), i + 1)
             for i in range(3)]

  class TokenOracle:  # varies with the response (the gold reward of random tokens is flat)
    name = "tokens"

    def score(self, *, response_tokens, response_mask, **_):
      return ((np.asarray(response_tokens) * response_mask).sum(1) % 11).astype(np.float32)

  def run(steps, disagreement_members):
    return rl.train_policy(
        model_dir=str(tmp_path / "rl"), sft_path=sft, reward_model=members[0], model_config=cfg,
        optimizer=OptimizerConfig(learning_rate=3e-2),
        trainer_config=TrainerConfig(train_steps=steps, batch_size=8, log_every=1,
                                     save_every=2),
        dataset=prompt_dataset(data_dir=data, split="train", prompt_len=PROMPT_LEN),
        eval_dataset=prompt_dataset(data_dir=data, split="validation", shuffle=False),
        rl=rl.RLConfig(baseline="none", eval_every=1), sampling=SamplingConfig(max_new_tokens=6),
        data_dir=data, write_config=False, eval_oracle=TokenOracle(),
        disagreement_members=disagreement_members)

  with pytest.raises(ValueError, match=">= 2 member checkpoint paths"):
    run(2, members[:1])
  run(2, members)
  evals = [r for r in read_metrics(str(tmp_path / "rl")) if "eval/oracle_reward" in r]
  assert [r["step"] for r in evals] == [0, 1, 2]
  for r in evals:
    assert set(rl.EVAL_KEYS) | set(rl.DISAGREEMENT_EVAL_KEYS) <= set(r)
    assert all(isinstance(r[k], float) and np.isfinite(r[k]) for k in rl.DISAGREEMENT_EVAL_KEYS)
    assert r["eval/disagreement"] > 0 and 0 <= r["eval/disagreement_auroc"] <= 1
    assert -1 <= r["eval/disagreement_spearman"] <= 1
  ref_path = tmp_path / "rl" / rl.DISAGREEMENT_REFERENCE_FILE
  ref = json.loads(ref_path.read_text())
  assert ref["members"] == members and ref["num_responses"] == 8
  # The RM is member 0: the members are scored by the RL reward's own code (same rewards).
  assert ref["member_mean"][0] == pytest.approx(ref["proxy_mean"], rel=1e-5, abs=1e-6)
  assert ref["member_sd"][0] == pytest.approx(ref["proxy_sd"], rel=1e-4)
  # A resumed run rebuilds the same step-0 scales from the SFT policy's eval responses.
  os.remove(ref_path)
  run(3, members)
  rebuilt = json.loads(ref_path.read_text())
  np.testing.assert_allclose(rebuilt["member_sd"], ref["member_sd"], rtol=1e-5)
  assert rebuilt["median_error"] == pytest.approx(ref["median_error"], rel=1e-4, abs=1e-5)
  assert set(rl.DISAGREEMENT_EVAL_KEYS) <= set(read_metrics(str(tmp_path / "rl"))[-1])


def test_report_tables_rl_disagreement_with_and_without_the_keys(tmp_path):
  from warm_jax.pipeline import policy_plots, report_policy
  from warm_jax.core.metrics_writer import MetricsWriter
  dirs = {}
  for name, with_keys in (("best_member", False), ("warm_2", True)):
    dirs[name] = str(tmp_path / name)
    writer = MetricsWriter(dirs[name], tensorboard=False)
    for step, kl in ((0, 0.0), (10, 1.0), (20, 3.0)):
      record = {"eval/oracle_reward": 5.0, "eval/kl_to_sft": kl, "eval/proxy_reward": 1.0,
                "eval/length": 9.0}
      if with_keys:
        record.update({"eval/disagreement": 0.4 + 0.1 * kl, "eval/disagreement_spearman": 0.1})
        if step != 10:  # undefined at one eval: left out
          record["eval/disagreement_auroc"] = 0.5 + 0.05 * kl
      writer.write(step, record)
    writer.close()
  rl_runs = report_policy.collect_rl(dirs)
  assert rl_runs["best_member"]["eval"]["eval/disagreement"] == [None, None, None]
  assert rl_runs["warm_2"]["eval"]["eval/disagreement_auroc"] == [0.5, None, 0.65]
  table = "\n".join(report_policy.tables_md({"rl": rl_runs}))
  assert "Member disagreement along RL" in table
  assert "| warm_2 | 0.400 (0) | 0.700 (20) | 0.50 | 0.65 | 0.10 | 0.10 |" in table
  assert "| best_member | 0.4" not in table
  paths = policy_plots.plot_rl_disagreement(rl_runs, str(tmp_path / "plots"))
  assert [os.path.basename(p) for p in paths] == ["rl_disagreement_vs_kl.png"]
  assert os.path.getsize(paths[0]) > 1000
  old = {"best_member": rl_runs["best_member"]}
  assert "Member disagreement along RL" not in "\n".join(report_policy.tables_md({"rl": old}))
  assert policy_plots.plot_rl_disagreement(old, str(tmp_path / "plots2")) == []


def test_experiment_rl_stages_pass_the_disagreement_members(tmp_path, monkeypatch):
  from warm_jax.experiment import ExperimentPlan, ExperimentScale
  scale = ExperimentScale(model_gin="m", data_gin="d", pretrain_steps=2, pretrain_batch=2,
                          sft_steps=10, sft_batch=2, baklava_steps=(5, 10), rm_steps=6,
                          rm_batch=2, num_members=3, learning_rates=(1e-4, 1e-3),
                          dropout_rates=(0.1,), warm_ms=(2, 3), scratch_rm_steps=2,
                          rl_rewards=("best_member", "warm_3", "ens_2", "uwo_3"))
  plan = ExperimentPlan(output_dir=str(tmp_path), scale=scale)
  ranked = ["/m/member_2", "/m/member_0", "/m/member_1"]
  monkeypatch.setattr(plan, "ranked_members", lambda setting="clean": ranked)
  want = {"best_member": ranked[:2], "warm_3": ranked, "ens_2": ranked[:2], "uwo_3": ranked}
  stages = {s.name: s for s in plan._policy_stages()}
  for reward, members in want.items():
    flags = [a for a in stages[f"rl/{reward}"].argv()
             if a.startswith("--gin.DISAGREEMENT_MEMBERS=")]
    assert len(flags) == 1 and eval(flags[0].split("=", 1)[1]) == members
