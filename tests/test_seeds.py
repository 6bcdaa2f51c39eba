"""The seeds sweep: per-finding intervals over seeds (checked against a hand computation),
resume, and its report."""

import json
import math
import os
import sys

import numpy as np
import pytest

from warm_jax import seeds as seeds_lib


def _metrics(effects):
  kinds = {"wa_vs_best": "positive", "wa_vs_ens": "not_below", "members": "threshold",
           "late": "positive"}
  return {"findings": [
      {"id": fid, "finding": fid.replace("_", " "), "rule": "r", "kind": kinds[fid],
       "threshold": 0.8 if fid == "members" else 0.0, "effect": e, "low": e - 0.01,
       "high": e + 0.01, "verdict": "x", "numbers": "n"} for fid, e in effects.items()]
      + [{"finding": "a policy finding without an effect", "verdict": "inconclusive"}],
      "timings": {"total": 100.0}}


def test_aggregate_gives_the_t_interval_and_the_rules_verdicts():
  per_seed = {0: _metrics({"wa_vs_best": 0.020, "wa_vs_ens": -0.004, "members": 0.86}),
              1: _metrics({"wa_vs_best": 0.030, "wa_vs_ens": 0.002, "members": 0.84}),
              2: _metrics({"wa_vs_best": 0.025, "wa_vs_ens": -0.001, "members": 0.85}),
              7: _metrics({"wa_vs_best": -0.010, "wa_vs_ens": 0.000, "members": 0.70})}
  summary = seeds_lib.aggregate(per_seed)
  assert summary["seeds"] == [0, 1, 2, 7] and summary["held_out_seeds"] == [7]
  by_id = {f["id"]: f for f in summary["findings"]}
  assert set(by_id) == {"wa_vs_best", "wa_vs_ens", "members"}
  tuning = [0.020, 0.030, 0.025]
  mean, sd = np.mean(tuning), np.std(tuning, ddof=1)
  half = 4.303 * sd / math.sqrt(3)  # Student's t, 2 degrees of freedom
  got = by_id["wa_vs_best"]["tuning"]
  assert got["mean"] == pytest.approx(mean) and got["high"] == pytest.approx(mean + half, rel=1e-3)
  assert got["verdict"] == "reproduced"
  assert by_id["wa_vs_best"]["all"]["verdict"] == "inconclusive"  # seed 7 reverses it
  held = by_id["wa_vs_best"]["held_out"]  # one held-out seed: its value, no interval
  assert held["mean"] == pytest.approx(-0.010) and held["verdict"] == "inconclusive (no interval)"
  assert by_id["wa_vs_ens"]["tuning"]["verdict"] == "reproduced"  # within the 2-point margin
  assert by_id["members"]["tuning"]["verdict"] == "reproduced"  # interval above 0.80
  assert summary["per_seed"]["7"]["verdicts"]["wa_vs_best"] == "x"


def test_report_puts_tuning_and_held_out_seeds_side_by_side(tmp_path):
  per_seed = {0: _metrics({"wa_vs_best": 0.020}), 1: _metrics({"wa_vs_best": 0.030}),
              2: _metrics({"wa_vs_best": 0.025}),
              # registered after the tuning seeds: only the held-out seeds have it
              7: _metrics({"wa_vs_best": -0.010, "late": 0.04}),
              8: _metrics({"wa_vs_best": 0.000, "late": 0.06})}
  seeds_lib.write_report(str(tmp_path), seeds_lib.aggregate(per_seed))
  text = open(tmp_path / "report.md").read()
  tuning = [2.0, 3.0, 2.5]
  half = 4.303 * np.std(tuning, ddof=1) / math.sqrt(3)
  all_five = [2.0, 3.0, 2.5, -1.0, 0.0]
  all_half = 2.776 * np.std(all_five, ddof=1) / math.sqrt(5)
  held_half = 12.706 * np.std([-1.0, 0.0], ddof=1) / math.sqrt(2)
  assert "| finding | per seed (0, 1, 2 \\| 7, 8) |" in text
  assert (f"| wa vs best | +2.0, +3.0, +2.5 \\| -1.0, +0.0 | +2.5 [{2.5 - half:+.1f}, "
          f"{2.5 + half:+.1f}] | reproduced | -0.5 [{-0.5 - held_half:+.1f}, "
          f"{-0.5 + held_half:+.1f}] | inconclusive | {np.mean(all_five):+.1f} "
          f"[{np.mean(all_five) - all_half:+.1f}, {np.mean(all_five) + all_half:+.1f}] | "
          "inconclusive |") in text
  late_half = 12.706 * np.std([4.0, 6.0], ddof=1) / math.sqrt(2)
  assert (f"| late | - \\| +4.0, +6.0 | - | - | +5.0 [{5.0 - late_half:+.1f}, "
          f"{5.0 + late_half:+.1f}] | inconclusive | +5.0 [{5.0 - late_half:+.1f}, "
          f"{5.0 + late_half:+.1f}] | inconclusive |") in text


@pytest.mark.slow
def test_seeds_cli_runs_each_seed_once_and_resumes(tmp_path, monkeypatch):
  """A stand-in experiment (a script writing metrics.json) checks the driver: every seed run
  with its SEED/WORLD_SEED, every seed resumed on the rerun (the real experiment skips its
  done stages and runs the ones its plan gained), then the aggregate."""
  fake = tmp_path / "fake_experiment.py"
  fake.write_text(
      "import json, os, sys\n"
      "args = dict(a.split('=', 1) for a in sys.argv[1:] if '=' in a)\n"
      "out = args['--output_dir']; seed = int(args['--gin.SEED'])\n"
      "assert int(args['--gin.WORLD_SEED']) == seed\n"
      "os.makedirs(out, exist_ok=True)\n"
      "open(os.path.join(out, 'ran'), 'a').write('x')\n"
      "open(os.path.join(out, 'cache_dir'), 'w').write(os.environ['JAX_COMPILATION_CACHE_DIR'])\n"
      f"m = {_metrics({'wa_vs_best': 0.0})!r}\n"
      "m['findings'][0]['effect'] = 0.01 * (seed + 1)\n"
      "json.dump(m, open(os.path.join(out, 'metrics.json'), 'w'))\n")
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setattr(seeds_lib, "experiment_command", lambda *, seed, output_dir, gin_args: [
      sys.executable, str(fake), f"--output_dir={seeds_lib.seed_dir(output_dir, seed)}",
      f"--gin.SEED={seed}", f"--gin.WORLD_SEED={seed}", *gin_args])
  out = str(tmp_path / "sweep")
  assert seeds_lib.main([f"--output_dir={out}", "--seeds=0-2", "--parallel=2"]) == 0
  assert seeds_lib.main([f"--output_dir={out}", "--seeds=0,1,2"]) == 0  # all resumed
  for k in range(3):
    assert open(os.path.join(out, f"seed_{k}", "ran")).read() == "xx"
    # every seed compiles into (and reads from) the sweep's one cache
    assert open(os.path.join(out, f"seed_{k}", "cache_dir")).read() == os.path.join(
        os.path.abspath(out), "cache", "jax")
  summary = json.load(open(os.path.join(out, "metrics.json")))["seeds"]
  assert summary["findings"][0]["all"]["mean"] == pytest.approx(0.02)
  report = open(os.path.join(out, "report.md")).read()
  assert "# WARM findings over seeds" in report and "wa vs best" in report
  assert seeds_lib.main([f"--output_dir={tmp_path / 'none'}", "--aggregate_only"]) == 1
  assert seeds_lib.main([f"--output_dir={out}", "--bogus"]) == 2
  assert seeds_lib.parse_seeds("0-2,7") == [0, 1, 2, 7]
  with pytest.raises(ValueError):
    seeds_lib.parse_seeds("3-1")


def test_policy_findings_aggregate_in_their_own_unit(tmp_path):
  """An oracle-reward difference is averaged like an accuracy difference but printed as a
  reward (not x100); a finding without an effect (an uninformative win rate) is left out."""
  def metrics(e):
    return {"findings": [
        {"id": "bon/warm_6_vs_best", "finding": "BoN: WARM M=6 selects better", "rule": "r",
         "kind": "positive", "unit": "reward", "effect": e, "verdict": "x", "numbers": "n"},
        {"id": "rl/win_rate/warm_6", "finding": "win rate", "rule": "r", "kind": "positive",
         "unit": "points", "effect": None, "verdict": "not informative", "numbers": "n"}],
        "timings": {"total": 10.0}}
  summary = seeds_lib.aggregate({0: metrics(0.30), 1: metrics(0.50), 2: metrics(0.40)})
  (bon,) = summary["findings"]
  assert bon["unit"] == "reward" and bon["all"]["mean"] == pytest.approx(0.40)
  half = 4.303 * 0.1 / math.sqrt(3)
  assert bon["all"]["low"] == pytest.approx(0.40 - half, rel=1e-3)
  assert bon["all"]["verdict"] == "reproduced"
  seeds_lib.write_report(str(tmp_path), summary)
  text = open(tmp_path / "report.md").read()
  assert f"| +0.40 [{0.40 - half:+.2f}, {0.40 + half:+.2f}] | +0.30, +0.50, +0.40 |" in text
