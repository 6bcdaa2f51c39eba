"""The experiment driver end to end at the tiny smoke scale (every stage of the pipeline, the
schema of metrics.json, report.md and the plots), its resume/skip logic and failure handling,
and the policy findings' rules on hand-made numbers."""

import copy
import dataclasses
import json
import math
import os
import re
import shlex
import sys

import pytest

from conftest import REPO_ROOT, run_cli

TINY_GIN = "--gin_file=gin/experiments/warm_synthetic_tldr_tiny.gin"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("experiment") / "run")
  proc = run_cli(["-m", "warm_jax.experiment", TINY_GIN, f"--output_dir={out}"], timeout=900,
                 env={"XLA_FLAGS": ""})  # one CPU device, as a user's run
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(os.path.join(out, "metrics.json")) as f:
    return out, json.load(f), proc.stderr


def _planned_stages(out):
  """The stage names the tiny preset's plan lists for `out`, in order (from the plan itself,
  not a count written into the test)."""
  import gin
  from warm_jax import configurables, gin_utils
  gin.clear_config()
  try:
    configurables.register()
    gin_utils.parse_gin([os.path.join(REPO_ROOT, TINY_GIN.split("=", 1)[1])], [])
    with gin.unlock_config():  # the preset's own bindings; dry_run: nothing runs or is written
      plan = gin.get_configurable("run_experiment")(output_dir=out, dry_run=True)
  finally:
    gin.clear_config()
  return [stage.name for stage in plan.stages()]


def _finite(x):
  return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.mark.slow
def test_tiny_experiment_writes_the_documented_schema(tiny_run):
  out, metrics, _ = tiny_run
  assert {"rm", "lmc", "bon", "rl", "win_rates", "timings", "findings"} <= set(metrics)
  # RM tables: members, WARM M and ENS M per setting, accuracies in [0, 1]
  for setting, subsets in (("clean", {"train_clean", "id_val", "id_policy", "ood",
                                      "ood_policy"}),
                           ("corrupt", {"train_clean", "train_corrupt", "id_val", "id_policy",
                                        "ood", "ood_policy"})):
    table = metrics["rm"][setting]["table"]
    assert {"member_0", "member_1", "member_2", "warm_2", "warm_3", "ens_2", "ens_3"} <= set(table)
    for row in table.values():
      assert set(row) == subsets
      assert all(0.0 <= v <= 1.0 for v in row.values())
  lmc = metrics["lmc"]["clean"]
  assert {"checkpoints_of_one_run", "two_data_orders", "two_learning_rates",
          "two_baklava_inits", "from_scratch"} <= set(lmc)
  for curve in lmc.values():  # the tiny scale's lmc_lambdas
    assert curve["lambdas"] == [0.0, 0.5, 1.0]
  # the pretraining pair: its curve beside the data-order pair's, on the same pairs
  pair = metrics["lmc"]["pretraining_pair"]
  assert set(pair) == {"two_data_orders", "two_pretrainings"}
  assert pair["two_data_orders"]["wa"]["id_val"][0] == pair["two_pretrainings"]["wa"]["id_val"][0]
  assert "two_pretrainings-two_data_orders" in metrics["lmc_bump_differences"]["pretraining_pair"]
  assert {"lmc_two_pretrainings", "lmc_two_pretrainings_vs_shared"} <= {
      f["id"] for f in metrics["findings"]}
  with open(os.path.join(out, "report.md")) as f:
    text = f.read()
  assert "| two_pretrainings (eval/pretraining_pair) |" in text
  assert "Two pre-trainings (member 0 and the same recipe" in text
  assert os.path.getsize(os.path.join(out, "plots", "lmc_two_pretrainings_id_policy.png")) > 0
  # best-of-N: every selector has one value per N, finite
  bon = metrics["bon"]
  assert bon["n"] == [1, 2, 4]
  assert {"member_0", "warm_2", "warm_3", "ens_2", "ens_3", "oracle_best"} <= set(bon["selectors"])
  for entry in bon["selectors"].values():
    assert len(entry["oracle"]) == 3 and all(_finite(v) for v in entry["oracle"])
  # oracle_best is an upper bound of every selector at every N
  for name, entry in bon["selectors"].items():
    for v, best in zip(entry["oracle"], bon["selectors"]["oracle_best"]["oracle"]):
      assert v <= best + 1e-9, name
  # the same pools judged by the corrupted setting's selectors (bon_corrupt): the same SFT
  # sample mean and oracle-best curve (same pools), their own selectors' choices
  corrupt_bon = metrics["bon_corrupt"]
  assert corrupt_bon["sft_sample_oracle"] == bon["sft_sample_oracle"]
  assert (corrupt_bon["selectors"]["oracle_best"]["oracle"]
          == bon["selectors"]["oracle_best"]["oracle"])
  assert {"member_0", "warm_2", "warm_3", "ens_3"} <= set(corrupt_bon["selectors"])
  assert "bon_corrupt/warm_3_vs_ens_3" in {f["id"] for f in metrics["findings"]}
  # Coste et al.'s objectives select beside ENS and WARM, each with its Gao fit key.
  assert {"wco_2", "uwo_2", "wco_3", "uwo_3"} <= set(bon["selectors"])
  assert all("gao_fit" in bon["selectors"][n] for n in ("member_0", "warm_2", "uwo_3"))
  # RL: both runs evaluated at step 0 (the SFT policy) and every 2 steps, curves finite
  # (and the same rewards from the corrupted setting's members, rl/<reward>_corrupt)
  assert set(metrics["rl"]) == {"best_member", "warm_2", "best_member_corrupt", "warm_2_corrupt"}
  for run in metrics["rl"].values():
    assert run["eval"]["step"] == [0, 2, 4] and run["eval"]["eval/kl_to_sft"][0] == 0.0
    assert all(_finite(v) for v in run["eval"]["eval/oracle_reward"])
    assert run["best_step"] in (0, 2, 4) and "gao_fit" in run
    assert len(run["train"]["step"]) == 4
  # win rates: every ordered pair, complementary, rates inside their intervals
  # (each RL run at its best and at its final step)
  wins = metrics["win_rates"]["win_rates"]
  policies = ("sft",) + tuple(f"{r}{c}{f}" for r in ("best_member", "warm_2")
                              for c in ("", "_corrupt") for f in ("", "_final"))
  assert set(wins) == {f"{a}_vs_{b}" for a in policies for b in policies if a != b}
  assert metrics["win_rates"]["policies"]["warm_2_final"].endswith(os.path.join("rl", "warm_2"))
  fall = {f["id"]: f for f in metrics["findings"]}["rl/single_fall_after_peak"]
  assert fall["effect"] == pytest.approx(wins["best_member_vs_best_member_final"]["rate"] - 0.5)
  for key, rate in wins.items():
    assert 0.0 <= rate["low"] <= rate["rate"] <= rate["high"] <= 1.0
    a, b = key.split("_vs_")
    assert rate["rate"] + wins[f"{b}_vs_{a}"]["rate"] == pytest.approx(1.0)
  assert metrics["win_rates"]["num_prompts"] == 8
  # the corrupted runs read the corrupted setting's members: the ID-val-best of members/corrupt
  # and the average of its top 2, whose inputs are those members
  with open(os.path.join(out, "commands.sh")) as f:
    commands = f.read()
  with open(os.path.join(out, "eval", "corrupt", "eval.json")) as f:
    best = json.load(f)["table"]["ranking"][0]
  rl_corrupt = next(line for line in commands.splitlines()
                    if "--gin.MODEL_DIR=" in line and "best_member_corrupt" in line)
  assert (f"--gin.REWARD_MODEL={os.path.join(out, 'members', 'corrupt', best)!r}"
          in shlex.split(rl_corrupt))
  assert os.path.join(out, "members", "clean", "") not in rl_corrupt
  average = next(line for line in commands.splitlines() if "warm_2_corrupt" in line
                 and "warm_jax.average" in line)
  assert os.path.join(out, "members", "corrupt", "") in average
  assert os.path.join(out, "members", "clean", "") not in average
  assert "rl_corrupt/single_final_vs_first" in {f["id"] for f in metrics["findings"]}
  # timings: every stage and the total
  assert {"data/clean", "pretrain", "sft", "members/clean", "eval/clean", "average/warm_2",
          "bon", "rl/best_member", "win_rates", "total", "average/warm_2_corrupt",
          "rl/warm_2_corrupt", "bon_corrupt", "average/warm_3_corrupt"} <= set(
              metrics["timings"])
  # the on-policy RM data: every evaluated split is the built one, corruption exact
  rm_data = metrics["rm_data"]["settings"]
  for split in ("id_val", "id_policy", "ood_policy"):
    assert rm_data["clean"][split]["num_pairs"] == metrics["rm"]["clean"]["subset_sizes"][split]
  assert rm_data["corrupt"]["rm_train"]["corruption_rate"] == pytest.approx(
      round(0.25 * rm_data["corrupt"]["rm_train"]["num_pairs"])
      / rm_data["corrupt"]["rm_train"]["num_pairs"])
  assert rm_data["clean"]["rm_train"]["corruption_rate"] == 0.0
  # paired statistics beside the accuracies, and memorisation logged along training
  paired = metrics["rm"]["clean"]["paired"]["warm_2-ens_2"]["id_policy"]
  assert paired["low"] <= paired["diff"] <= paired["high"]
  memo = metrics["rm"]["corrupt"]["memorisation"]
  assert set(memo) == {"member_0", "member_1", "member_2"}
  assert all(0.0 <= a <= 1.0 for row in memo.values() for a in row["accuracy"])
  # every stage and the total; in-process stages run one at a time, so the total is their sum
  assert set(metrics["cpu_s"]) == set(metrics["timings"]) - {"stages_sum"}
  assert metrics["timings"]["total"] == pytest.approx(metrics["timings"]["stages_sum"], abs=0.1)
  assert all(v > 0 for v in metrics["cpu_s"].values()) and len(metrics["load_average"]) == 3
  for f in metrics["findings"]:
    assert f["verdict"] and f["numbers"]
  # the stage profile: model FLOPs and MFU for every stage that runs a model program, none for
  # the data build and the weight averages (no model program: unknown)
  counted = set(metrics["flops"]) - {"total"}
  assert {"pretrain", "sft", "rm_data", "probe/clean", "members/clean", "pairs/scratch",
          "eval/clean", "bon", "rl/best_member", "win_rates"} <= counted
  assert not counted & {"data/clean", "average/warm_2"}
  assert metrics["flops"]["total"] == pytest.approx(sum(metrics["flops"][k] for k in counted))
  assert set(metrics["mfu"]) == set(metrics["flops"])
  assert all(0 < v < 1 for v in metrics["mfu"].values())


@pytest.mark.slow
def test_tiny_experiment_writes_report_plots_and_commands(tiny_run):
  out, metrics, stderr = tiny_run
  report = open(os.path.join(out, "report.md")).read()
  for heading in ("## Findings", "## Reward-model accuracy, clean labels", "## Best-of-N",
                  "## RL", "## Oracle win rates", "## Wall time per stage"):
    assert heading in report
  assert "| stage | wall s | % wall | CPU s | % CPU | FLOPs | MFU |" in report
  assert "Slowest stages: **" in report
  assert re.search(r"\| (\*\*)?data/clean(\*\*)? \|", report)  # in bold if among the slowest
  # each counting stage's per-program split beside its STAGE_DONE
  split = json.load(open(os.path.join(out, "pretrain", "STAGE_FLOPS.json")))
  assert split["programs"]["train step (pretrain)"]["calls"] >= 1
  assert split["flops"] == pytest.approx(metrics["flops"]["pretrain"])
  plots = set(os.listdir(os.path.join(out, "plots")))
  assert {"fig3_lmc_diversity_ood.png", "fig6_bon_oracle_vs_kl.png",
          "fig7_bon_win_rate_vs_n.png", "fig8_rl_reward_vs_step.png",
          "fig8_rl_reward_vs_kl.png", "fig9_rl_win_rates.png",
          "fig8_rl_corrupt_reward_vs_step.png", "fig8_rl_corrupt_reward_vs_kl.png",
          "fig6_bon_corrupt_oracle_vs_kl.png"} <= plots
  for name in plots:
    assert os.path.getsize(os.path.join(out, "plots", name)) > 1000
  commands = open(os.path.join(out, "commands.sh")).read()
  assert "written when it starts" not in commands  # every stage resolved after the run
  assert "warm_jax.average --inputs" in commands and "gin/win_rates.gin" in commands
  stages = _planned_stages(out)
  assert len(stages) >= 15 and stages[-1] == "win_rates"
  assert f"[experiment] stage {len(stages)}/{len(stages)} win_rates: running" in stderr


@pytest.mark.slow
def test_rerun_skips_finished_stages_and_rebuilds_the_same_report(tiny_run):
  out, metrics, _ = tiny_run
  proc = run_cli(["-m", "warm_jax.experiment", TINY_GIN, f"--output_dir={out}"], timeout=300,
                 env={"XLA_FLAGS": ""})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stderr.count("skipped") == len(_planned_stages(out))  # every stage of the plan
  with open(os.path.join(out, "metrics.json")) as f:
    again = json.load(f)
  assert again["rm"] == metrics["rm"] and again["bon"] == metrics["bon"]
  assert again["win_rates"] == metrics["win_rates"]
  assert again["flops"] == metrics["flops"]  # kept in the skipped stages' STAGE_DONE


@pytest.mark.slow
def test_the_experiment_killed_at_a_random_moment_reruns_to_the_same_metrics(tiny_run, tmp_path):
  """The whole-pipeline kill drill at the suite's size (launch/drills/pipeline_sigkill.py is the
  full one, with kills anywhere in a run): a copy of the finished tiny run loses its policy-side
  stages (best-of-N, RL, win rates: RL resumes from its checkpoints), is rerun and SIGKILLed at
  a random moment of that rerun, then rerun to the end. No stage dir looks complete but is not,
  and metrics.json equals the uninterrupted run's in everything but time and load."""
  import shutil
  import signal
  import subprocess
  import time

  import numpy as np
  sys.path.insert(0, os.path.join(REPO_ROOT, "launch", "drills"))
  import pipeline_sigkill as drill
  out, metrics, _ = tiny_run
  run = str(tmp_path / "run")
  shutil.copytree(out, run, symlinks=True)
  for name in ("bon", "bon_corrupt", "rl", "win_rates", "plots", "metrics.json", "report.md"):
    path = os.path.join(run, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  seed = int.from_bytes(os.urandom(4), "little")
  delay = float(np.random.default_rng(seed).uniform(2.0, 25.0))
  command = [sys.executable, "-m", "warm_jax.experiment", TINY_GIN, f"--output_dir={run}"]
  env = dict(os.environ, XLA_FLAGS="")
  proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
  try:
    proc.wait(timeout=delay)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  time.sleep(0.1)
  reference = drill.stage_dirs(out)
  for name, path in drill.stage_dirs(run).items():  # every STAGE_DONE stage is whole
    assert drill.top_level(reference[name]) <= drill.top_level(path), (name, seed, delay)
  again = run_cli(command[1:], timeout=600, env={"XLA_FLAGS": ""})
  assert again.returncode == 0, (seed, delay, again.stderr[-3000:])
  got = json.load(open(os.path.join(run, "metrics.json")))
  assert drill.differences(drill.results_only(metrics, out), drill.results_only(got, run)) == [], \
      (seed, delay)


def test_a_failing_stage_stops_the_driver_with_its_log_and_no_done_marker(tmp_path):
  from warm_jax import experiment
  stage = experiment.Stage("boom", [sys.executable, "-c", "import sys; sys.exit(3)"],
                           str(tmp_path / "boom"))
  ok = experiment.Stage("ok", [sys.executable, "-c", "print('fine')"], str(tmp_path / "ok"))
  with pytest.raises(experiment.StageFailed, match="stage boom failed \\(exit 3\\).*boom.log"):
    experiment.run_stages([ok, stage], log_dir=str(tmp_path / "logs"))
  assert os.path.exists(ok.done_path) and not os.path.exists(stage.done_path)
  assert open(tmp_path / "logs" / "ok.log").read() == "fine\n"


def test_lazy_stage_arguments_are_resolved_when_the_stage_starts(tmp_path):
  from warm_jax import experiment
  calls = []

  def argv():
    calls.append(1)
    return [sys.executable, "-c", "pass"]

  stage = experiment.Stage("lazy", argv, str(tmp_path / "lazy"))
  experiment.write_commands([stage], str(tmp_path / "commands.sh"))
  assert "written when it starts" in open(tmp_path / "commands.sh").read()
  assert not calls
  experiment.run_stages([stage], log_dir=str(tmp_path / "logs"),
                        on_resolve=lambda: experiment.write_commands(
                            [stage], str(tmp_path / "commands.sh")))
  assert calls == [1] and stage.resolved
  assert "python -c pass" in open(tmp_path / "commands.sh").read()
  # A rerun of the finished experiment (e.g. to rewrite its report) skips the stage but still
  # writes its command: the rewritten commands.sh must not lose what a finished stage ran.
  again = experiment.Stage("lazy", argv, str(tmp_path / "lazy"))
  experiment.write_commands([again], str(tmp_path / "commands.sh"))
  experiment.run_stages([again], log_dir=str(tmp_path / "logs"),
                        on_resolve=lambda: experiment.write_commands(
                            [again], str(tmp_path / "commands.sh")))
  assert calls == [1, 1] and again.resolved
  assert "python -c pass" in open(tmp_path / "commands.sh").read()
  # A finished stage whose inputs are gone keeps the placeholder (and the run goes on).
  def gone():
    raise FileNotFoundError("eval/clean/ranking.json")
  broken = experiment.Stage("lazy", gone, str(tmp_path / "lazy"))
  experiment.run_stages([broken], log_dir=str(tmp_path / "logs"))
  assert not broken.resolved


@pytest.mark.parametrize("override, message", [
    ({"warm_ms": (2, 9)}, "each M must be in 2..num_members"),
    ({"rl_rewards": ("warm_1",)}, "is not 'best_member'"),
    ({"rl_rewards": ("greedy",)}, "is not 'best_member'"),
    ({"baklava_steps": (5, 7)}, "must include the last SFT step"),
    ({"rm_steps": 7}, "must be even"),
    ({"num_members": 0}, "must be positive"),
    ({"rm_microbatches": 3}, "must be >= 1 and divide rm_batch"),
    ({"lm_microbatches": 0}, "must be >= 1 and divide pretrain_batch"),
    ({"lmc_lambdas": (0.0, 1.0)}, "with at least one interior point"),
    ({"lmc_lambdas": (0.0, 0.7, 0.3, 1.0)}, "increasing, from 0.0"),
    ({"reward_readout": "mean"}, "'hidden' or 'hidden_logprob'"),
    ({"rm_samples_per_post": 1}, "at least one sample per Baklava step"),
    ({"rl_rewards": ("uwo_4",)}, "is not 'best_member'"),
    ({"rl_corrupt_rewards": ("warm_9",)}, "rl_corrupt_rewards: 'warm_9' is not"),
    ({"rl_corrupt_rewards": ("warm_2",), "corruption_rate": 0.0}, "needs the corrupted setting"),
    ({"bon_corrupt": True, "corruption_rate": 0.0}, "bon_corrupt=True: needs the corrupted"),
    ({"rl_corrupt_kl_coef": -0.1}, "rl_corrupt_kl_coef=-0.1: must be >= 0"),
    ({"rl_policy_warmup": -1}, "rl_policy_warmup=-1: must be >= 0"),
    ({"rl_baseline": "mean"}, "rl_baseline='mean': use 'value'"),
    ({"rl_baseline": "leave_one_out", "rl_samples_per_prompt": 1, "rl_value_warmup": 0},
     "needs rl_samples_per_prompt >= 2"),
    ({"rl_baseline": "leave_one_out", "rl_samples_per_prompt": 4, "rl_value_warmup": 10},
     "rl_value_warmup=0"),
    ({"rl_batch": 30, "rl_samples_per_prompt": 4, "rl_value_warmup": 0,
      "rl_baseline": "leave_one_out"}, "must be a multiple of rl_samples_per_prompt=4"),
    ({"decode_loop_rows": 24}, "decode_loop_rows=24: must be >= 1 and divide policy_batch=64"),
    ({"decode_loop_rows": 0}, "decode_loop_rows=0: must be >= 1"),
    ({"bon_score_batch": 0}, "bon_score_batch=0: >= 1 or None"),
])
def test_experiment_scale_refuses_inconsistent_presets(override, message):
  from warm_jax.experiment import ExperimentScale
  fields = dict(model_gin="m", data_gin="d", pretrain_steps=2, pretrain_batch=2, sft_steps=10,
                sft_batch=2, baklava_steps=(5, 10), rm_steps=6, rm_batch=2, num_members=3,
                learning_rates=(1e-4, 1e-3), dropout_rates=(0.1,), warm_ms=(2, 3),
                scratch_rm_steps=2, rl_rewards=("best_member", "warm_2"))
  fields.update(override)
  with pytest.raises(ValueError, match=message):
    ExperimentScale(**fields)


def test_ensemble_reward_names_give_coste_specs_with_the_stage_lambda(tmp_path, monkeypatch):
  """'wco_M' / 'uwo_M' name Coste et al.'s objectives over the top M members (UWO's lambda:
  0.5 for best-of-N, 0.1 for RL); the best-of-N stage selects with them beside ENS and WARM."""
  from warm_jax.experiment import ExperimentPlan, ExperimentScale
  scale = ExperimentScale(model_gin="m", data_gin="d", pretrain_steps=2, pretrain_batch=2,
                          sft_steps=10, sft_batch=2, baklava_steps=(5, 10), rm_steps=6,
                          rm_batch=2, num_members=3, learning_rates=(1e-4, 1e-3),
                          dropout_rates=(0.1,), warm_ms=(2,), scratch_rm_steps=2,
                          rl_rewards=("best_member", "wco_3", "uwo_2"))
  plan = ExperimentPlan(output_dir=str(tmp_path), scale=scale)
  ranked = ["/m/member_2", "/m/member_0", "/m/member_1"]
  monkeypatch.setattr(plan, "ranked_members", lambda setting="clean": ranked)
  assert plan.reward_spec("wco_3") == {"wco": ranked}
  assert plan.reward_spec("uwo_2") == {"uwo": ranked[:2], "lambda": 0.1}
  assert plan.reward_spec("uwo_2", stage="bon") == {"uwo": ranked[:2], "lambda": 0.5}
  bon = next(stage for stage in plan._policy_stages() if stage.name == "bon")
  models = _gin_value(bon.argv(), "REWARD_MODELS")  # the literal the stage passes to gin
  assert models["wco_2"] == {"wco": ranked[:2]} and models["ens_2"] == ranked[:2]
  assert models["uwo_2"] == {"uwo": ranked[:2], "lambda": 0.5}
  # Member disagreement: WARM 2 by the 2 members it averages, the best member by the top 2.
  assert _gin_value(bon.argv(), "DISAGREEMENT_MEMBERS") == {"warm_2": ranked[:2],
                                                            "member_2": ranked[:2]}
  assert models["warm_2"] == plan.warm_dir(2) and models["member_2"] == ranked[0]
  rl_uwo = next(stage for stage in plan._policy_stages() if stage.name == "rl/uwo_2")
  assert f"--gin.REWARD_MODEL={plan.reward_spec('uwo_2')!r}" in rl_uwo.argv()
  assert "--gin.MAX_NEW_TOKENS=48" in rl_uwo.argv()
  # The policy side's own length (the on-policy RM data keeps max_new_tokens).
  plan.scale = dataclasses.replace(scale, policy_max_new_tokens=44)
  for stage in plan._policy_stages():
    if stage.name.startswith(("bon", "rl/")):
      assert "--gin.MAX_NEW_TOKENS=44" in stage.argv()
  # The RL baseline and the responses per prompt reach gin/rl.gin (the default's RLOO).
  plan.scale = dataclasses.replace(scale, rl_baseline="leave_one_out", rl_samples_per_prompt=4,
                                   rl_value_warmup=0, rl_batch=32)
  rl_best = next(stage for stage in plan._policy_stages() if stage.name == "rl/best_member")
  argv = rl_best.argv()
  assert "--gin.BASELINE='leave_one_out'" in argv and "--gin.SAMPLES_PER_PROMPT=4" in argv
  assert "--gin.VALUE_WARMUP_STEPS=0" in argv and "--gin.BATCH_SIZE=32" in argv


def test_corrupted_rl_stages_read_the_corrupted_members_at_their_alpha(tmp_path, monkeypatch):
  """rl_corrupt_rewards: rl/<reward>_corrupt trains against the corrupted setting's members (its
  own ID-val ranking), WARM M from average/warm_<M>_corrupt, at rl_corrupt_kl_coef; the clean
  runs and best-of-N keep the clean members."""
  from warm_jax.experiment import ExperimentPlan, ExperimentScale
  scale = ExperimentScale(model_gin="m", data_gin="d", pretrain_steps=2, pretrain_batch=2,
                          sft_steps=10, sft_batch=2, baklava_steps=(5, 10), rm_steps=6,
                          rm_batch=2, num_members=3, learning_rates=(1e-4, 1e-3),
                          dropout_rates=(0.1,), warm_ms=(2,), scratch_rm_steps=2,
                          rl_rewards=("best_member", "warm_2"), rl_kl_coef=0.003,
                          rl_corrupt_rewards=("best_member", "ens_3", "warm_3"),
                          rl_corrupt_kl_coef=0.01, bon_corrupt=True)
  plan = ExperimentPlan(output_dir=str(tmp_path), scale=scale)
  ranked = {"clean": ["/c/member_2", "/c/member_0", "/c/member_1"],
            "corrupt": ["/x/member_1", "/x/member_2", "/x/member_0"]}
  monkeypatch.setattr(plan, "ranked_members", lambda setting="clean": ranked[setting])
  stages = {stage.name: stage for stage in plan._policy_stages()}
  assert {"average/warm_2", "average/warm_3_corrupt", "rl/best_member_corrupt",
          "rl/ens_3_corrupt", "rl/warm_3_corrupt"} <= set(stages)
  assert "average/warm_3" not in stages
  # best-of-N: the same pools (prompts, N, seed, batch) judged by each setting's selectors
  bon, bon_corrupt = stages["bon"].argv(), stages["bon_corrupt"].argv()
  for name in ("N_MAX", "NUM_PROMPTS", "SEED", "BATCH_SIZE", "SFT_DIR", "DATA_DIR"):
    assert _gin_value(bon, name) == _gin_value(bon_corrupt, name), name
  assert _gin_value(bon_corrupt, "OUTPUT_DIR") == plan.path("bon_corrupt")
  models = _gin_value(bon_corrupt, "REWARD_MODELS")
  assert models["warm_2"] == plan.warm_dir(2, "corrupt") and models["ens_2"] == ranked[
      "corrupt"][:2]
  assert {models[f"member_{i}"] for i in range(3)} == set(ranked["corrupt"])
  assert _gin_value(bon, "REWARD_MODELS")["warm_2"] == plan.warm_dir(2)
  assert _gin_value(bon_corrupt, "DISAGREEMENT_MEMBERS")["member_1"] == ranked["corrupt"][:2]
  average = stages["average/warm_3_corrupt"].argv()
  assert average[average.index("--inputs") + 1:average.index("--output")] == ranked["corrupt"]
  assert average[average.index("--output") + 1] == plan.warm_dir(3, "corrupt")
  assert plan.warm_dir(3, "corrupt") != plan.warm_dir(3)
  for name, model, flags in (("best_member", ranked["corrupt"][0], ranked["corrupt"][:2]),
                             ("ens_3", ranked["corrupt"], ranked["corrupt"]),
                             ("warm_3", plan.warm_dir(3, "corrupt"), ranked["corrupt"])):
    argv = stages[f"rl/{name}_corrupt"].argv()
    assert _gin_value(argv, "REWARD_MODEL") == model, name
    assert _gin_value(argv, "DISAGREEMENT_MEMBERS") == flags, name
    assert _gin_value(argv, "KL_COEF") == 0.01
    assert _gin_value(argv, "MODEL_DIR") == plan.path("rl", f"{name}_corrupt")
  clean = stages["rl/best_member"].argv()
  assert _gin_value(clean, "REWARD_MODEL") == ranked["clean"][0]
  assert _gin_value(clean, "KL_COEF") == 0.003
  assert plan.rl_run_names() == ["best_member", "warm_2", "best_member_corrupt",
                                 "ens_3_corrupt", "warm_3_corrupt"]
  # the scheduler starts ready stages in plan order: the policy stages come longest first
  # (RL, ENS M's runs with their M reward-model passes first, then best-of-N)
  order = [stage.name for stage in plan._policy_stages()]
  rl_order = [name for name in order if name.startswith("rl/")]
  assert rl_order[0] == "rl/ens_3_corrupt"
  assert sorted(rl_order[1:]) == sorted(f"rl/{run}" for run in plan.rl_run_names()
                                        if run != "ens_3_corrupt")
  assert max(map(order.index, rl_order)) < min(order.index("bon"), order.index("bon_corrupt"))
  # without RL, only best-of-N's WARM M are averaged, in both settings; without either, none
  no_rl = ExperimentPlan(output_dir=str(tmp_path),
                         scale=dataclasses.replace(scale, rl_steps=0, warm_ms=(2,)))
  assert no_rl._warm_ms_needed("clean") == no_rl._warm_ms_needed("corrupt") == [2]
  no_policy = ExperimentPlan(output_dir=str(tmp_path), scale=dataclasses.replace(
      scale, rl_steps=0, bon_prompts=0, rl_corrupt_rewards=(), bon_corrupt=False))
  assert no_policy._warm_ms_needed("clean") == no_policy._warm_ms_needed("corrupt") == []


def _rl_run(oracle, proxy, kl):
  steps = [10 * (i + 1) for i in range(len(oracle))]
  best = max(range(len(oracle)), key=lambda i: (oracle[i], -i))
  return {"eval": {"step": steps, "eval/oracle_reward": oracle, "eval/proxy_reward": proxy,
                   "eval/kl_to_sft": kl},
          "best_step": steps[best], "best_oracle": oracle[best], "final_oracle": oracle[-1],
          "final_proxy": proxy[-1], "first_oracle": oracle[0], "kl_at_best": kl[best],
          "final_kl": kl[-1]}


def test_policy_findings_follow_their_rules_on_hand_made_numbers():
  from warm_jax.pipeline.report_policy import policy_findings
  rate = lambda r, lo, hi: {"rate": r, "low": lo, "high": hi, "n": 100}
  metrics = {
      "rm": {"clean": {"best_member": "member_1"}},
      "bon": {"n": [1, 4], "sft_sample_oracle": 0.0, "win_rates_at_n_max": {
          "warm_2_vs_member_1": rate(0.6, 0.55, 0.65)},
              "selectors": {
                  "member_1": {"oracle": [0, 1.0], "oracle_sem": [0.1, 0.1],
                               "oracle_all_subsets": [0, 1.0]},
                  "warm_2": {"oracle": [0, 1.5], "oracle_sem": [0.1, 0.1],
                             "oracle_all_subsets": [0, 1.5]},
                  "ens_2": {"oracle": [0, 1.55], "oracle_sem": [0.1, 0.1],
                            "oracle_all_subsets": [0, 1.55]}}},
      "rl": {"best_member": _rl_run([1.0, 2.0, 0.5], [0.0, 1.0, 3.0], [0.0, 1.0, 4.0]),
             "warm_2": _rl_run([1.0, 2.5, 2.2], [0.0, 0.8, 1.5], [0.0, 1.0, 3.0])},
      "win_rates": {"win_rates": {"warm_2_vs_best_member": rate(0.7, 0.6, 0.8),
                                  "best_member_vs_warm_2": rate(0.3, 0.2, 0.4)}},
  }
  verdicts = {f["finding"]: f["verdict"] for f in policy_findings(metrics)}
  by_start = lambda prefix: next(v for k, v in verdicts.items() if k.startswith(prefix))
  # without paired differences (an older bon.json): the means against one standard error
  assert by_start("BoN: WARM M=2 selects better than the best") == "reproduced"  # 0.5 > 0.1
  assert by_start("BoN: WARM M=2 selects better than ENS").startswith("inconclusive")
  assert by_start("RL with a single RM") == "observed in this run"  # 2.0 -> 0.5, proxy up
  assert by_start("RL: WARM M=2 delays") == "reproduced"  # 2.2 > 0.5 and 2.5 > 2.0
  assert by_start("RL: the WARM M=2 policy beats") == "reproduced"  # [0.6, 0.8] > 0.5
  metrics["win_rates"]["win_rates"]["warm_2_vs_best_member"] = rate(0.52, 0.45, 0.6)
  metrics["rl"]["warm_2"] = _rl_run([1.0, 1.5, 0.4], [0.0, 0.8, 1.5], [0.0, 1.0, 3.0])
  verdicts = {f["finding"]: f["verdict"] for f in policy_findings(metrics)}
  assert by_start("RL: the WARM M=2 policy beats").startswith("inconclusive")
  assert by_start("RL: WARM M=2 delays") == "not reproduced"
  # a WARM run whose best step is still the SFT policy (KL 0) makes the win rate uninformative
  metrics["rl"]["warm_2"] = _rl_run([1.0, 0.5, 0.4], [0.0, 0.8, 1.5], [0.0, 1.0, 3.0])
  metrics["win_rates"]["win_rates"]["warm_2_vs_best_member"] = rate(0.7, 0.6, 0.8)
  found = policy_findings(metrics)
  verdicts = {f["finding"]: f["verdict"] for f in found}
  assert by_start("RL: the WARM M=2 policy beats").startswith("not informative")
  # ... and has no effect, so the seeds sweep leaves it out; the others carry theirs
  effects = {f["id"]: f["effect"] for f in found}
  assert effects["rl/win_rate/warm_2"] is None
  assert effects["rl/warm_2_final_vs_single"] == pytest.approx(0.4 - 0.5)
  assert effects["rl/warm_2_peak_vs_single"] == pytest.approx(1.0 - 2.0)
  # the whole run: every eval after step 0 (here all three, at steps 10-30)
  assert effects["rl/warm_2_mean_vs_single"] == pytest.approx((1.9 - 3.5) / 3)
  shifted = copy.deepcopy(metrics)
  for run in shifted["rl"].values():  # a step-0 eval (the SFT policy) is left out
    run["eval"]["step"] = [0, 10, 20]
  shifted_effects = {f["id"]: f["effect"] for f in policy_findings(shifted)}
  assert shifted_effects["rl/warm_2_mean_vs_single"] == pytest.approx((0.9 - 2.5) / 2)
  shifted["rl"]["warm_2"]["eval"]["step"] = [0, 10, 30]  # evaluated at other steps: no finding
  assert "rl/warm_2_mean_vs_single" not in {f["id"] for f in policy_findings(shifted)}
  assert effects["rl/single_final_vs_first"] == pytest.approx(0.5 - 1.0)
  assert effects["bon/warm_2_vs_best"] == pytest.approx(0.5)
  # the fall after the peak, from the win rate of each run's best step over its final step on
  # held-out prompts; absent when the stage did not compare them
  assert "rl/single_fall_after_peak" not in effects
  metrics["win_rates"]["win_rates"].update({
      "best_member_vs_best_member_final": rate(0.62, 0.55, 0.69),
      "warm_2_vs_warm_2_final": rate(0.51, 0.45, 0.57)})
  by_id = {f["id"]: f for f in policy_findings(metrics)}
  fall = by_id["rl/single_fall_after_peak"]
  assert (fall["effect"], fall["low"], fall["high"]) == pytest.approx((0.12, 0.05, 0.19))
  assert fall["verdict"] == "reproduced"
  assert by_id["rl/warm_2_falls_less"]["effect"] == pytest.approx(0.62 - 0.51)
  assert by_id["rl/warm_2_falls_less"]["verdict"] == "reproduced in this run"
  # WARM "falls less" than a single RM that did not measurably fall says nothing
  metrics["win_rates"]["win_rates"]["best_member_vs_best_member_final"] = rate(0.53, 0.47, 0.6)
  less = {f["id"]: f for f in policy_findings(metrics)}["rl/warm_2_falls_less"]
  assert less["effect"] == pytest.approx(0.02) and less["verdict"].startswith("inconclusive")
  # a run still at its peak at the end ties itself: no fall, said so
  metrics["rl"]["best_member"] = _rl_run([1.0, 2.0, 2.5], [0.0, 1.0, 3.0], [0.0, 1.0, 4.0])
  metrics["win_rates"]["win_rates"]["best_member_vs_best_member_final"] = rate(0.5, 0.5, 0.5)
  fall = {f["id"]: f for f in policy_findings(metrics)}["rl/single_fall_after_peak"]
  assert fall["effect"] == 0.0 and fall["verdict"].startswith("not observed")
  metrics["rl"]["best_member"] = _rl_run([1.0, 2.0, 0.5], [0.0, 1.0, 3.0], [0.0, 1.0, 4.0])
  # with paired per-prompt differences (stored once per pair, either order) the verdict is
  # the paired interval's
  metrics["bon"]["paired_differences_at_n_max"] = {
      "member_1-warm_2": {"diff": -0.5, "low": -0.9, "high": -0.1, "se": 0.2, "n": 64},
      "warm_2-ens_2": {"diff": -0.05, "low": -0.3, "high": 0.2, "se": 0.12, "n": 64}}
  by_id = {f["id"]: f for f in policy_findings(metrics)}
  assert (by_id["bon/warm_2_vs_best"]["low"], by_id["bon/warm_2_vs_best"]["high"]) == (0.1, 0.9)
  assert by_id["bon/warm_2_vs_best"]["verdict"] == "reproduced"
  assert by_id["bon/warm_2_vs_ens_2"]["verdict"] == "inconclusive"
  metrics["bon"]["paired_differences_at_n_max"]["warm_2-ens_2"].update(low=-0.3, high=-0.01)
  by_id = {f["id"]: f for f in policy_findings(metrics)}
  assert by_id["bon/warm_2_vs_ens_2"]["verdict"] == "opposite"


def test_rl_findings_of_the_corrupted_setting_and_warm_vs_ens_are_their_own_group():
  """RL runs on the corrupted setting's members (rl/<reward>_corrupt) get their own findings
  (ids rl_corrupt/...), and WARM M against ENS M of the same members is compared where both
  ran: the final oracle reward and the held-out win rate of the final policies."""
  from warm_jax.pipeline.report_policy import policy_findings, rl_groups
  rate = lambda r, lo, hi: {"rate": r, "low": lo, "high": hi, "n": 256}
  clean_single = _rl_run([1.0, 2.0, 1.8], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0])
  corrupt = {"best_member": _rl_run([1.0, 0.8, 0.2], [0.0, 1.0, 3.0], [0.0, 2.0, 6.0]),
             "warm_6": _rl_run([1.0, 1.4, 1.1], [0.0, 0.9, 1.6], [0.0, 2.0, 5.0]),
             "ens_6": _rl_run([1.0, 0.3, -1.5], [0.0, 1.5, 3.5], [0.0, 3.0, 9.0])}
  rl = {"best_member": clean_single, "best_member_kl0.01": clean_single,
        **{f"{name}_corrupt": run for name, run in corrupt.items()}}
  groups = rl_groups(rl)
  assert set(groups) == {"", "_kl0.01", "_corrupt"}
  assert groups["_corrupt"] == corrupt
  metrics = {"rl": rl, "win_rates": {"win_rates": {
      "warm_6_corrupt_final_vs_ens_6_corrupt_final": rate(0.8, 0.75, 0.85),
      "warm_6_corrupt_vs_best_member_corrupt": rate(0.55, 0.48, 0.62)}}}
  by_id = {f["id"]: f for f in policy_findings(metrics)}
  hacked = by_id["rl_corrupt/single_final_vs_first"]
  assert hacked["effect"] == pytest.approx(0.2 - 1.0)
  assert hacked["verdict"] == "observed in this run"  # 1.0 -> 0.2 while the proxy rose
  assert "corrupted labels" in hacked["finding"]
  assert by_id["rl/single_final_vs_first"]["effect"] == pytest.approx(1.8 - 1.0)
  final = by_id["rl_corrupt/warm_6_final_vs_ens_6"]
  assert final["effect"] == pytest.approx(1.1 - (-1.5))
  assert final["verdict"] == "reproduced in this run"
  win = by_id["rl_corrupt/win_rate/warm_6_vs_ens_6_final"]
  assert (win["effect"], win["low"], win["high"]) == pytest.approx((0.3, 0.25, 0.35))
  assert win["verdict"] == "reproduced"
  # the single RM's best eval is its first (KL 0): the best-step win rate says nothing
  assert by_id["rl_corrupt/win_rate/warm_6"]["verdict"].startswith("not informative")
  assert by_id["rl_corrupt/warm_6_final_vs_single"]["effect"] == pytest.approx(1.1 - 0.2)
  # ENS ahead: the finding turns, and without the win rate only the final-reward finding stays
  metrics["rl"]["ens_6_corrupt"] = _rl_run([1.0, 2.0, 1.9], [0.0, 1.0, 2.0], [0.0, 2.0, 4.0])
  metrics["win_rates"]["win_rates"] = {}
  by_id = {f["id"]: f for f in policy_findings(metrics)}
  assert by_id["rl_corrupt/warm_6_final_vs_ens_6"]["verdict"] == "not reproduced in this run"
  assert "rl_corrupt/win_rate/warm_6_vs_ens_6_final" not in by_id
  # a clean group without ENS M has no WARM-vs-ENS finding
  assert not any(i.startswith("rl/") and "_vs_ens_" in i for i in by_id)
  # best-of-N judged by the corrupted members: its own ids, against the corrupted setting's
  # ID-val-best member (not the clean one)
  curve = lambda v: {"oracle": [0.0, v], "oracle_sem": [0.1, 0.1], "oracle_all_subsets": [0.0, v]}
  metrics.update(rm={"clean": {"best_member": "member_0"}, "corrupt": {"best_member": "member_1"}},
                 bon_corrupt={"n": [1, 4], "sft_sample_oracle": 0.0, "selectors": {
                     "member_0": curve(9.0), "member_1": curve(1.0), "warm_2": curve(1.6),
                     "ens_2": curve(0.4)}, "paired_differences_at_n_max": {
                         "warm_2-member_1": {"diff": 0.6, "low": 0.2, "high": 1.0}}})
  by_id = {f["id"]: f for f in policy_findings(metrics)}
  assert by_id["bon_corrupt/warm_2_vs_best"]["effect"] == pytest.approx(0.6)
  assert by_id["bon_corrupt/warm_2_vs_best"]["verdict"] == "reproduced"
  assert by_id["bon_corrupt/warm_2_vs_ens_2"]["effect"] == pytest.approx(1.2)
  assert "corrupted labels" in by_id["bon_corrupt/warm_2_vs_ens_2"]["finding"]
  assert not any(i.startswith("bon/") for i in by_id)  # no clean best-of-N here


EXPERIMENT_GINS = {
    "gin/experiments/warm_synthetic_tldr.gin": (33, {"rl/warm_6", "rl/ens_2", "eval/corrupt",
                                                     "rm_data", "rm_pretrain", "rm_sft",
                                                     "eval/pretraining_pair",
                                                     "average/warm_6_corrupt",
                                                     "rl/ens_6_corrupt", "bon_corrupt"}),
    "gin/experiments/warm_synthetic_tldr_tiny.gin": (30, {"rl/warm_2", "win_rates", "rm_sft",
                                                          "pairs/two_pretrainings",
                                                          "rl/warm_2_corrupt"}),
    "gin/experiments/ablations/alpha_sweep.gin": (29, {"rl/best_member_kl0.001",
                                                       "rl/warm_6_kl0.01"}),
    "gin/experiments/ablations/corruption.gin": (19, {"eval/corrupt", "rm_sft"}),
    "gin/experiments/ablations/m_sweep.gin": (30, {"average/warm_4", "rl/warm_4"}),
    "gin/experiments/ablations/selection_order.gin": (19, {"members/clean"}),
    "gin/experiments/ablations/diversity_data_order.gin": (19, {"members/clean"}),
    "gin/experiments/ablations/diversity_learning_rate.gin": (19, {"members/clean"}),
    "gin/experiments/ablations/diversity_baklava.gin": (19, {"members/clean"}),
    "gin/experiments/ablations/rm_own_start.gin": (33, {"rm_pretrain", "rm_sft", "rl/warm_6"}),
    # the paper's setup: one chain, the RMs from the policy's SFT
    "gin/experiments/ablations/rm_policy_start.gin": (31, {"rl/warm_6", "rm_data",
                                                                 "rl/best_member_corrupt"}),
}


def _dry_run(capsys, *args):
  import gin
  from warm_jax import experiment
  gin.clear_config()
  try:
    code = experiment.main(list(args) + ["--dry_run"])
  finally:
    gin.clear_config()
  captured = capsys.readouterr()
  return code, captured.out, captured.err


@pytest.mark.parametrize("gin_file", sorted(EXPERIMENT_GINS))
def test_every_experiment_gin_plans_its_stages(gin_file, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(REPO_ROOT)
  code, out, err = _dry_run(capsys, f"--gin_file={gin_file}", f"--output_dir={tmp_path / 'x'}")
  assert code == 0, err
  count, expected = EXPERIMENT_GINS[gin_file]
  names = {line[2:] for line in out.splitlines()[1:] if line.startswith("# ")}
  assert out.splitlines()[0].startswith(f"# {count} stages")
  assert expected <= names
  assert not os.path.exists(tmp_path / "x")  # a dry run writes nothing


def test_diversity_ablation_fixes_all_but_one_source(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(REPO_ROOT)
  _, out, _ = _dry_run(capsys, "--gin_file=gin/experiments/ablations/diversity_learning_rate.gin",
                       f"--output_dir={tmp_path}")
  members = next(line for line in out.splitlines() if "gin/rm_members.gin" in line)
  assert "--gin.LEARNING_RATES=(0.0001, 0.0002, 0.0004)" in members
  assert "--gin.MemberSweep.vary_data_order=False" in members
  assert "--gin.MemberSweep.cycle_pools=True" in members
  import re
  # later bindings win in gin: the last DROPOUT_RATES / SFT_STEPS is the fixed single value
  for macro in ("DROPOUT_RATES", "SFT_STEPS"):
    last = re.findall(rf"--gin.{macro}=\(([^)]*)\)", members)[-1]
    assert len([v for v in last.split(",") if v.strip()]) == 1, (macro, last)
  assert "--gin.NUM_MEMBERS=3" in members


def test_diversity_ablation_members_are_distinct_and_a_short_pool_is_refused(
    tmp_path, capsys, monkeypatch):
  from warm_jax.rm.members import MemberSweep, draw_member
  # cycled pools: M members take M distinct values; independent draws repeat one of 3 in 3 here
  cycled = MemberSweep(learning_rates=(1e-4, 2e-4, 4e-4), dropout_rates=(0.1,),
                       vary_data_order=False, cycle_pools=True)
  drawn = [draw_member(cycled, i) for i in range(3)]
  assert [m.learning_rate for m in drawn] == [1e-4, 2e-4, 4e-4]
  assert len({m.data_seed for m in drawn}) == 1 and len({m.dropout_rate for m in drawn}) == 1
  free = MemberSweep(learning_rates=(1e-4, 2e-4, 4e-4), seed=0)
  assert len({draw_member(free, i).learning_rate for i in range(3)}) < 3
  monkeypatch.chdir(REPO_ROOT)
  code, _, err = _dry_run(
      capsys, "--gin_file=gin/experiments/ablations/diversity_learning_rate.gin",
      f"--output_dir={tmp_path}", "--gin.OVERRIDES={'member_diversity': 'learning_rate', "
      "'num_members': 3, 'warm_ms': (2, 3), 'learning_rates': (1e-4, 4e-4), 'rl_rewards': (), "
      "'rl_corrupt_rewards': ()}")
  assert code != 0 and "fewer distinct values than members" in err, err


def test_real_tldr_experiment_needs_the_manual_dir_and_has_no_oracle_stages(tmp_path, capsys,
                                                                            monkeypatch):
  monkeypatch.chdir(REPO_ROOT)
  code, _, err = _dry_run(capsys, "--gin_file=gin/experiments/warm_tldr_real.gin",
                          f"--output_dir={tmp_path / 'x'}")
  assert code == 1 and "TLDR_MANUAL_DIR" in err
  code, out, err = _dry_run(capsys, "--gin_file=gin/experiments/warm_tldr_real.gin",
                            f"--output_dir={tmp_path / 'x'}",
                            f"--gin.TLDR_MANUAL_DIR='{tmp_path}'")
  assert code == 0, err
  assert "data/corrupt" not in out and "rl/" not in out and "# bon" not in out
  assert "# policy_pairs" not in out and "# rm_data" not in out  # no oracle to label them
  assert "--gin.PREFERENCE_TASK=" in out and "tldr_comparisons" in out


def test_unknown_override_fields_are_refused(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(REPO_ROOT)
  code, _, err = _dry_run(capsys, "--gin_file=gin/experiments/warm_synthetic_tldr.gin",
                          f"--output_dir={tmp_path}", "--gin.OVERRIDES={'rl_stepz': 3}")
  assert code == 1 and "rl_stepz" in err


def test_sft_keeps_every_baklava_step(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(REPO_ROOT)
  code, out, err = _dry_run(capsys, "--gin_file=gin/experiments/warm_synthetic_tldr.gin",
                            f"--output_dir={tmp_path}", "--gin.SCALE='small'")
  assert code == 0, err
  sft = next(line for line in out.splitlines() if "gin/sft.gin" in line)
  assert "--gin.SAVE_EVERY=100" in sft  # gcd of (200, 300, 400): 300 is kept too


def _sleeper(tmp_path, name, seconds, after=(), code=0):
  from warm_jax import experiment
  return experiment.Stage(name, [sys.executable, "-c",
                                 f"import sys, time; time.sleep({seconds}); sys.exit({code})"],
                          str(tmp_path / name), after=tuple(after))


def test_parallel_stages_overlap_and_wait_for_their_dependencies(tmp_path):
  from warm_jax import experiment
  a = _sleeper(tmp_path, "a", 1.5)
  b = _sleeper(tmp_path, "b", 1.5)
  c = _sleeper(tmp_path, "c", 0.1, after=("a",))
  d = _sleeper(tmp_path, "d", 0.1, after=("b", "c"))
  records = experiment.run_stages([a, b, c, d], log_dir=str(tmp_path / "logs"), parallel=2)
  assert set(records) == {"a", "b", "c", "d"}
  assert records["b"]["start"] < records["a"]["end"]  # a and b ran together
  assert records["c"]["start"] >= records["a"]["end"]
  assert records["d"]["start"] >= max(records["b"]["end"], records["c"]["end"])
  for stage in (a, b, c, d):
    assert json.load(open(stage.done_path)) == records[stage.name]
  wall = experiment.experiment_wall_seconds(records)
  stages_sum = sum(r["wall_s"] for r in records.values())
  span = max(r["end"] for r in records.values()) - min(r["start"] for r in records.values())
  assert wall == pytest.approx(span, abs=0.05) and wall < stages_sum - 1.0
  # a rerun skips them all and reports the same records
  again = experiment.run_stages([a, b, c, d], log_dir=str(tmp_path / "logs"), parallel=2)
  assert again == records


def test_a_failing_parallel_stage_stops_its_sibling_without_done_markers(tmp_path):
  import time
  from warm_jax import experiment
  slow = _sleeper(tmp_path, "slow", 60)
  boom = _sleeper(tmp_path, "boom", 0.5, code=3)
  later = _sleeper(tmp_path, "later", 0.1, after=("boom",))
  t0 = time.time()
  with pytest.raises(experiment.StageFailed, match="stage boom failed \\(exit 3\\)"):
    experiment.run_stages([slow, boom, later], log_dir=str(tmp_path / "logs"), parallel=2)
  assert time.time() - t0 < 30  # the sibling was terminated, not waited for
  for stage in (slow, boom, later):
    assert not os.path.exists(stage.done_path)


def test_stage_flops_files_reach_stage_done_and_the_profile(tmp_path):
  """The driver points each stage at its STAGE_FLOPS.json (WARM_JAX_STAGE_FLOPS_FILE), folds
  the count into STAGE_DONE, drops a stale file of an interrupted run, and `stage_profile`
  gives FLOPs / wall / reference; a stage that counted nothing has no FLOPs (unknown)."""
  from warm_jax import experiment
  write = ("import json, os, time; path = os.environ['WARM_JAX_STAGE_FLOPS_FILE']; "
           "os.makedirs(os.path.dirname(path), exist_ok=True); time.sleep(0.2); "
           "open(path, 'w').write(json.dumps({'flops': 3e9, 'programs': {}, "
           "'reference_flop_per_s': 1e10}))")
  counted = experiment.Stage("counted", [sys.executable, "-c", write], str(tmp_path / "counted"))
  silent = experiment.Stage("silent", [sys.executable, "-c", "pass"], str(tmp_path / "silent"))
  os.makedirs(silent.output)
  with open(os.path.join(silent.output, "STAGE_FLOPS.json"), "w") as f:
    f.write('{"flops": 1e20}')  # left by an interrupted earlier run: not this run's count
  records = experiment.run_stages([counted, silent], log_dir=str(tmp_path / "logs"))
  assert records["counted"]["flops"] == 3e9
  assert records["counted"]["reference_flop_per_s"] == 1e10
  assert json.load(open(counted.done_path)) == records["counted"]
  assert "flops" not in records["silent"]
  assert not os.path.exists(os.path.join(silent.output, "STAGE_FLOPS.json"))
  profile = experiment.stage_profile(records, ["counted", "silent"], total_wall_s=10.0)
  wall = records["counted"]["wall_s"]
  assert profile["flops"] == {"counted": 3e9, "total": 3e9}
  assert profile["mfu"] == {"counted": pytest.approx(3e9 / wall / 1e10),
                            "total": pytest.approx(3e9 / 10.0 / 1e10)}
  # records of a run from before the profile (no FLOPs anywhere): empty, not zero
  assert experiment.stage_profile({"old": {"wall_s": 5}}, ["old"], 5.0) == {"flops": {},
                                                                            "mfu": {}}


def test_profile_table_shows_shares_flops_mfu_and_the_slowest_stages():
  from warm_jax.pipeline import report
  metrics = {"timings": {"data/clean": 10, "pretrain": 100, "members/clean": 250,
                         "average/warm_2": 2, "rl/warm_2": 40, "stages_sum": 402, "total": 380},
             "cpu_s": {"data/clean": 12, "pretrain": 150, "members/clean": 240,
                       "average/warm_2": 2, "rl/warm_2": 46, "total": 450},
             "flops": {"pretrain": 2e12, "members/clean": 1.5e13, "rl/warm_2": 4e11,
                       "total": 1.74e13},
             "mfu": {"pretrain": 0.25, "members/clean": 0.6, "rl/warm_2": 0.0004,
                     "total": 0.5}}
  lines = report.profile_md(metrics)
  rows = {line.split(" | ")[0].strip("| *"): line for line in lines if line.startswith("| ")}
  assert rows["stage"] == "| stage | wall s | % wall | CPU s | % CPU | FLOPs | MFU |"
  # the three slowest by wall in bold, with their shares of the summed wall and CPU seconds
  assert rows["members/clean"] == ("| **members/clean** | **250** | 62% | 240 | 53% | 1.5e+13 | "
                                   "60.0% |")
  assert rows["pretrain"] == "| **pretrain** | **100** | 25% | 150 | 33% | 2e+12 | 25.0% |"
  assert rows["rl/warm_2"] == "| **rl/warm_2** | **40** | 10% | 46 | 10% | 4e+11 | 0.04% |"
  # stages without a model FLOPs count: '-'
  assert rows["data/clean"] == "| data/clean | 10 | 2% | 12 | 3% | - | - |"
  assert rows["average/warm_2"] == "| average/warm_2 | 2 | 0% | 2 | 0% | - | - |"
  assert rows["total (union of intervals)"] == (
      "| total (union of intervals) | 380 | - | 450 | 100% | 1.74e+13 | 50.0% |")
  slowest = next(line for line in lines if line.startswith("Slowest stages"))
  assert slowest.startswith("Slowest stages: **members/clean** 250 s (62% of wall, 53% of CPU)"
                            ", **pretrain** 100 s")
  # a metrics.json from before the profile (no flops / mfu / cpu_s): every new cell is '-'
  old = report.profile_md({"timings": {"pretrain": 100, "total": 100}})
  assert "| **pretrain** | **100** | 100% | - | - | - | - |" in old


def test_experiment_wall_seconds_counts_overlaps_once_and_old_markers_by_wall():
  from warm_jax.experiment import experiment_wall_seconds
  records = {"a": {"wall_s": 10, "start": 0, "end": 10}, "b": {"wall_s": 5, "start": 5, "end": 12},
             "c": {"wall_s": 3, "start": 100, "end": 103}, "old": {"wall_s": 7}}
  assert experiment_wall_seconds(records) == 12 + 3 + 7


def test_every_stage_of_the_plans_waits_only_for_earlier_stages(tmp_path):
  from warm_jax import experiment
  for overrides in ({}, {"rl_kl_coefs": (0.001, 0.01)}, {"vmapped_members": False},
                    {"rm_pretrain_steps": None}, {"pretraining_pair": True},
                    {"pretraining_pair": True, "vmapped_members": False}):
    plan = experiment.run_experiment(
        output_dir=str(tmp_path / "x"), scale="default", scales=_scales(),
        overrides=overrides, dry_run=True)
    stages = plan.stages()
    seen = set()
    for stage in stages:
      assert set(stage.after) <= seen, (stage.name, stage.after)
      seen.add(stage.name)
    after = {stage.name: set(stage.after) for stage in stages}
    assert {n for n in after if n.startswith("pairs/")} - {"pairs/two_pretrainings"} <= after[
        "eval/clean"]
    if "pairs/two_pretrainings" in after:  # evaluated on its own (eval/pretraining_pair)
      assert "pairs/two_pretrainings" in after["eval/pretraining_pair"]
    assert "rm_data" in after["eval/corrupt"] and "rm_data" in after["probe/corrupt"]
    assert {"sft", "pretrain"} <= after["rm_data"]
    # an RL run waits for its own setting's ranking and averages, no other's
    for n, deps in after.items():
      if n.startswith("rl/"):
        own, other = (("eval/corrupt", "eval/clean") if n.endswith("_corrupt") else
                      ("eval/clean", "eval/corrupt"))
        averages = {d for d in deps if d.startswith("average/")}
        assert own in deps and other not in deps, (n, deps)
        assert all(a.endswith("_corrupt") == n.endswith("_corrupt") for a in averages), n
    assert "eval/corrupt" in after["average/warm_6_corrupt"]
    assert "eval/clean" not in after["average/warm_6_corrupt"]
    assert not any(d.endswith("_corrupt") for d in after["bon"])
    assert {n for n in after if n.startswith("rl/")} <= after["win_rates"]
  with pytest.raises(ValueError, match="no entry in experiment.stage_dependencies"):
    experiment.stage_dependencies("mystery", ["mystery"])


def _gin_value(argv, name):
  """The value of --gin.NAME=... in a stage's argv (the last one given), as a Python literal."""
  import ast
  values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--gin.{name}=")]
  assert values, (name, argv)
  return ast.literal_eval(values[-1])


def test_reward_models_own_start_feeds_every_rm_stage_and_no_policy_stage(tmp_path):
  """rm_pretrain_steps (the default's 1,500; 2,400 here): a second pre-training + SFT chain
  (same corpus, seed and SFT recipe) is the start of the probe, the members and the LMC pairs;
  the RM data, best-of-N, RL and win rates still read the policy's chain; with None the plan is
  the paper's (one chain)."""
  from warm_jax import experiment
  out = tmp_path / "x"
  plain = experiment.run_experiment(output_dir=str(out), scale="default", scales=_scales(),
                                    overrides={"rm_pretrain_steps": None}, dry_run=True)
  own = experiment.run_experiment(output_dir=str(out), scale="default", scales=_scales(),
                                  overrides={"rm_pretrain_steps": 2400}, dry_run=True)
  default = experiment.run_experiment(output_dir=str(out), scale="default", scales=_scales(),
                                      dry_run=True)
  assert default.scale.rm_pretrain_steps == 1500 and default.rm_sft_dir == str(out / "rm_sft")
  plain_stages = {s.name: s for s in plain.stages()}
  stages = {s.name: s for s in own.stages()}
  assert set(stages) - set(plain_stages) == {"rm_pretrain", "rm_sft"}
  assert plain.rm_sft_dir == str(out / "sft") and own.rm_sft_dir == str(out / "rm_sft")
  # the RM chain: the policy chain's commands with its own dirs and step count
  assert _gin_value(stages["rm_pretrain"].argv, "TRAIN_STEPS") == 2400
  assert _gin_value(stages["rm_pretrain"].argv, "MODEL_DIR") == str(out / "rm_pretrain")
  assert _gin_value(stages["pretrain"].argv, "TRAIN_STEPS") == 1200
  assert _gin_value(stages["rm_sft"].argv, "PRETRAIN_DIR") == str(out / "rm_pretrain")
  assert [a for a in stages["rm_sft"].argv if "_DIR=" not in a] == [
      a for a in stages["sft"].argv if "_DIR=" not in a]
  for name in ("probe/clean", "probe/corrupt", "members/clean", "members/corrupt",
               "pairs/shared_start"):
    assert _gin_value(stages[name].argv, "SFT_DIR") == str(out / "rm_sft"), name
    assert _gin_value(plain_stages[name].argv, "SFT_DIR") == str(out / "sft"), name
    assert "rm_sft" in stages[name].after or name.startswith(("members", "pairs"))
  # the policy side is untouched: the RM data samples the policy's checkpoints
  assert stages["rm_data"].argv == plain_stages["rm_data"].argv
  sources = own.on_policy_sources()
  assert all(path.startswith((str(out / "sft"), str(out / "pretrain")))
             for group in sources.values() for _, path, _, _ in group)
  assert {"rm_pretrain"} == set(stages["rm_sft"].after)
  with pytest.raises(ValueError, match="rm_pretrain_steps=0: must be positive"):
    experiment.run_experiment(output_dir=str(out), scale="default", scales=_scales(),
                              overrides={"rm_pretrain_steps": 0}, dry_run=True)


@pytest.mark.parametrize("rm_pretrain_steps", [1500, None])
def test_pretraining_pair_is_member_0s_recipe_from_a_second_pre_training(tmp_path,
                                                                         rm_pretrain_steps):
  """pretraining_pair: a second pre-training + SFT of the RMs' start with its own seed, its
  probe, member 0's recipe from it, and one evaluation of its LMC curve beside the data-order
  pair; every other stage is the plan without it."""
  from warm_jax import experiment
  from warm_jax.pipeline.presets import PRETRAINING_PAIR_SEED_OFFSET
  out = tmp_path / "x"
  common = dict(output_dir=str(out), scale="default", scales=_scales(), seed=3, dry_run=True)
  without = experiment.run_experiment(
      overrides={"rm_pretrain_steps": rm_pretrain_steps, "pretraining_pair": False}, **common)
  plan = experiment.run_experiment(
      overrides={"rm_pretrain_steps": rm_pretrain_steps, "pretraining_pair": True}, **common)
  base = {s.name: s for s in without.stages()}
  stages = {s.name: s for s in plan.stages()}
  new = {"pretraining_pair/pretrain", "pretraining_pair/sft", "pretraining_pair/probe",
         "pairs/two_pretrainings", "eval/pretraining_pair"}
  assert set(stages) - set(base) == new and set(base) <= set(stages)
  for name in base:  # (stages resolved later, from earlier stages' outputs, by their deps)
    assert stages[name].after == base[name].after, name
    if base[name].resolved:
      assert stages[name].argv == base[name].argv, name
  # the chain: the RMs' start chain's commands with its own dirs and seed
  start = "rm_" if rm_pretrain_steps else ""
  pair = out / "pretraining_pair"
  for kind, own in (("pretrain", pair / "pretrain"), ("sft", pair / "sft")):
    argv, ref = stages[f"pretraining_pair/{kind}"].argv, base[f"{start}{kind}"].argv
    assert _gin_value(argv, "SEED") == 3 + PRETRAINING_PAIR_SEED_OFFSET
    assert _gin_value(ref, "SEED") == 3
    assert _gin_value(argv, "MODEL_DIR") == str(own)
    assert [a for a in argv if "_DIR=" not in a and "SEED=" not in a] == [
        a for a in ref if "_DIR=" not in a and "SEED=" not in a]
  assert _gin_value(stages["pretraining_pair/pretrain"].argv, "TRAIN_STEPS") == (
      rm_pretrain_steps or 1200)
  assert _gin_value(stages["pretraining_pair/sft"].argv, "PRETRAIN_DIR") == str(pair / "pretrain")
  probe = stages["pretraining_pair/probe"].argv
  assert _gin_value(probe, "SFT_DIR") == str(pair / "sft")
  assert [a for a in probe if not a.startswith(("--gin.SFT_DIR", "--gin.MODEL_DIR"))] == [
      a for a in base["probe/clean"].argv
      if not a.startswith(("--gin.SFT_DIR", "--gin.MODEL_DIR"))]
  # member 0's recipe (the sweep's draw, no overrides) from the second start
  member = stages["pairs/two_pretrainings"].argv
  assert _gin_value(member, "SFT_DIR") == str(pair / "sft")
  assert _gin_value(member, "PROBE_DIR") == str(pair / "probe")
  assert _gin_value(member, "MEMBER_VARIANTS") == {"two_pretrainings": {}}
  keep = lambda argv: [a for a in argv if not a.startswith(
      ("--gin.SFT_DIR", "--gin.PROBE_DIR", "--gin.MEMBER_VARIANTS"))]
  assert keep(member) == keep(base["pairs/shared_start"].argv)
  evaluation = stages["eval/pretraining_pair"].argv
  member0 = str(out / "members" / "clean" / "member_0")
  assert _gin_value(evaluation, "LMC_PAIRS") == {
      "two_data_orders": (member0, str(out / "pairs" / "data_order")),
      "two_pretrainings": (member0, str(out / "pairs" / "two_pretrainings"))}
  assert not any(a.startswith("--gin.MEMBERS_DIR") for a in evaluation)
  assert _gin_value(evaluation, "MAX_PAIRS") == _gin_value(base["eval/clean"].argv, "MAX_PAIRS")
  after = {n: set(s.after) for n, s in stages.items()}
  assert after["pretraining_pair/sft"] == {"pretraining_pair/pretrain"}
  assert after["pairs/two_pretrainings"] == {"pretraining_pair/probe"}
  assert {"members/clean", "pairs/shared_start", "pairs/two_pretrainings"} <= after[
      "eval/pretraining_pair"] and "pairs/scratch" not in after["eval/pretraining_pair"]
  assert not new & after["eval/clean"]
  sequential = experiment.run_experiment(
      overrides={"rm_pretrain_steps": rm_pretrain_steps, "pretraining_pair": True,
                 "vmapped_members": False}, **common)
  member = {s.name: s for s in sequential.stages()}["pairs/two_pretrainings"].argv
  assert "--gin_file=gin/rm.gin" in member and _gin_value(member, "MEMBER_OVERRIDES") == {}
  assert _gin_value(member, "MEMBER_DIR") == str(out / "pairs" / "two_pretrainings")


def test_pretraining_pair_findings_and_report_lines(tmp_path):
  from warm_jax.pipeline import report

  def stats(diff, low, high):
    return {"diff": diff, "low": low, "high": high, "se": 0.01, "n": 100, "clusters": 50}

  def curve(wa, bump):
    return {"lambdas": [0.0, 0.5, 1.0], "wa": {"id_policy": wa},
            "line": {"id_policy": [wa[0], (wa[0] + wa[2]) / 2, wa[2]]},
            "bump": {"id_policy": bump[0]}, "bump_paired": {"id_policy": stats(*bump)}}

  metrics = {"rm": {}, "lmc": {"pretraining_pair": {
      "two_data_orders": curve([0.95, 0.95, 0.94], (0.002, -0.003, 0.007)),
      "two_pretrainings": curve([0.95, 0.52, 0.93], (-0.42, -0.45, -0.39))}},
      "lmc_bump_differences": {"pretraining_pair": {
          "two_pretrainings-two_data_orders": {"id_policy": stats(-0.422, -0.45, -0.39)}}}}
  by_id = {f["id"]: f for f in report.rm_findings(metrics)}
  assert by_id["lmc_two_pretrainings"]["verdict"] == "reproduced"
  assert "accuracy at lambda 0, 0.5, 1: 95.0, 52.0, 93.0" in by_id["lmc_two_pretrainings"][
      "numbers"]
  assert by_id["lmc_two_pretrainings_vs_shared"]["verdict"] == "reproduced"
  assert by_id["lmc_two_pretrainings_vs_shared"]["effect"] == -0.422
  # a pair that stays on its line: inconclusive; none: no finding
  metrics["lmc"]["pretraining_pair"]["two_pretrainings"] = curve([0.95, 0.95, 0.93],
                                                                 (0.001, -0.004, 0.006))
  assert {f["id"]: f for f in report.rm_findings(metrics)}["lmc_two_pretrainings"][
      "verdict"] == "inconclusive"
  del metrics["lmc"]["pretraining_pair"]
  assert not [f for f in report.rm_findings(metrics) if "pretrainings" in f["id"]]
  # the bump's growth reads its paired difference the same way
  metrics["lmc"]["clean"] = {"checkpoints_of_one_run": curve([0.9, 0.9, 0.9], (0.0, -0.01, 0.01)),
                             "two_baklava_inits": curve([0.9, 0.92, 0.9], (0.02, 0.01, 0.03))}
  metrics["lmc_bump_differences"]["clean"] = {"two_baklava_inits-checkpoints_of_one_run": {
      "id_policy": stats(0.02, 0.005, 0.035)}}
  grows = {f["id"]: f for f in report.rm_findings(metrics)}["lmc_bump_grows"]
  assert (grows["effect"], grows["verdict"]) == (0.02, "reproduced")


@pytest.mark.parametrize("rm_pretrain_steps", [None, 2400])
def test_report_says_where_the_reward_models_start(tmp_path, rm_pretrain_steps):
  from warm_jax import experiment
  from warm_jax.pipeline import report
  overrides = {"rm_pretrain_steps": rm_pretrain_steps}
  plan = experiment.run_experiment(output_dir=str(tmp_path), scale="default", scales=_scales(),
                                   overrides=overrides, dry_run=True)
  metrics = report.collect_metrics(plan, timings={"total": 1.0}, scale_name="default")
  assert metrics["rm_start"] == {"shared_with_policy": rm_pretrain_steps is None,
                                 "pretrain_steps": rm_pretrain_steps or 1200,
                                 "policy_pretrain_steps": 1200, "sft_steps": 400}
  report.write_report(str(tmp_path), metrics)
  with open(tmp_path / "report.md") as f:
    text = f.read()
  if rm_pretrain_steps is None:
    assert "Reward models start from the policy's SFT (pre-training 1200 steps, SFT 400)" in text
  else:
    assert ("Reward models start from **their own** shared SFT model (pre-training 2400 steps, "
            "SFT 400); the policy that writes their data and that best-of-N and RL start from "
            "is pre-trained 1200 steps") in text


@pytest.mark.parametrize("scale", ["default", "tiny"])
def test_decoding_loops_and_the_bon_scoring_batch_reach_the_policy_stages(tmp_path, scale):
  # ExperimentScale.decode_loop_rows -> LOOP_ROWS of best-of-N, RL and win rates (their
  # SamplingConfig.loop_rows); bon_score_batch -> best-of-N's SCORE_BATCH_SIZE. The tiny preset
  # leaves both unset (the programs' defaults: the whole batch).
  from warm_jax import experiment
  plan = experiment.run_experiment(output_dir=str(tmp_path), scale=scale, scales=_scales(),
                                   dry_run=True)
  members = [f"member_{i}" for i in range(plan.scale.num_members)]
  for setting in ("clean", "corrupt"):
    os.makedirs(tmp_path / "eval" / setting)
    with open(tmp_path / "eval" / setting / "eval.json", "w") as f:
      json.dump({"table": {"ranking": members}}, f)
  stages = {s.name: s for s in plan.stages()}
  value = lambda argv, name: (_gin_value(argv, name) if any(
      a.startswith(f"--gin.{name}=") for a in argv) else None)
  policy = [stages["bon"], *(v for k, v in stages.items() if k.startswith("rl/"))]
  assert len(policy) == 1 + len(plan.scale.rl_rewards) + len(plan.scale.rl_corrupt_rewards)
  for stage in policy:
    argv = stage.resolve()
    assert value(argv, "LOOP_ROWS") == (32 if scale == "default" else None), stage.name
  bon = stages["bon"].argv
  assert value(bon, "SCORE_BATCH_SIZE") == (16 if scale == "default" else None)
  assert _gin_value(bon, "BATCH_SIZE") == plan.scale.policy_batch
  # the rm_data stage samples as before: its pairs (and every RM) do not change
  assert value(stages["rm_data"].argv, "LOOP_ROWS") is None


def _scales():
  import gin
  from warm_jax import configurables
  configurables.register()  # as gin_main does
  gin.clear_config()
  gin.parse_config_file(os.path.join(REPO_ROOT, "gin/experiments/warm_synthetic_tldr.gin"))
  scales = gin.query_parameter("run_experiment.scales")
  gin.clear_config()
  return scales
