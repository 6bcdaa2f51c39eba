"""`python -m warm_jax.train` end to end: outputs, bad inputs, and SIGKILL-resume exactness."""

import json

import numpy as np
import pytest

from conftest import run_cli

BASE = ["-m", "warm_jax.train", "--gin_file=gin/models/tiny.gin", "--gin_file=gin/pretrain.gin",
        "--gin_file=gin/data/inline_bytes.gin",
        "--gin.BATCH_SIZE=8", "--gin.pretraining_dataset.num_docs=60",
        "--gin.eval/pretraining_dataset.num_docs=8",
        "--gin.TrainerConfig.peak_flops_per_device=1e11"]


def _model_dir(path):
  return f"--gin.MODEL_DIR='{path}'"


def _final_params(model_dir):
  from warm_jax.core import checkpoints as ckpt
  return ckpt.load_params(str(model_dir))


@pytest.mark.slow
def test_tiny_pretraining_run_writes_checkpoints_config_and_metrics(tmp_path):
  out = tmp_path / "pretrain"
  flops_file = tmp_path / "STAGE_FLOPS.json"  # the experiment driver's stage profile
  proc = run_cli(BASE + [_model_dir(out), "--gin.TRAIN_STEPS=5",
                         "--gin.TrainerConfig.log_every=5"], check=True,
                 env={"WARM_JAX_STAGE_FLOPS_FILE": str(flops_file),
                      "WARM_JAX_MATMUL_FLOPS": "1e10"})
  assert "[pretrain] step 5/5" in proc.stderr
  assert (out / "checkpoints" / "5" / "params").is_dir()
  config = (out / "config.gin").read_text()
  assert "TRAIN_STEPS = 5" in config and f"'{out}'" in config
  assert "TransformerConfig.d_model = 64" in config
  records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  last_train = [r for r in records if "train/loss" in r][-1]
  assert last_train["step"] == 5 and np.isfinite(last_train["train/loss"])
  assert last_train["perf/tokens_per_s"] > 0 and last_train["perf/mfu"] > 0
  assert any("eval/loss" in r for r in records)
  assert json.loads((out / "DONE").read_text())["step"] == 5
  assert list((out / "tb").iterdir())
  # the stage's model FLOPs: 5 steps x batch 8 x SEQ_LEN tokens x the PaLM per-token count,
  # here from the trained params (every non-embedding leaf, + the tied LM head)
  import jax
  seq = int(next(line for line in config.splitlines()
                 if line.startswith("SEQ_LEN =")).split("=")[1])
  params = _final_params(out)
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  matmul = sum(int(np.prod(np.shape(x))) for path, x in leaves
               if "embed" not in jax.tree_util.keystr(path)) + 259 * 64
  step = 8 * seq * (6 * matmul + 12 * 2 * seq * 64)
  counted = json.loads(flops_file.read_text())
  assert counted["programs"]["train step (pretrain)"] == {"flops": pytest.approx(5 * step),
                                                         "calls": 5}
  evals = counted["programs"]["eval (pretrain)"]
  assert evals["flops"] == pytest.approx(evals["calls"] * step / 3)
  assert counted["flops"] == pytest.approx(5 * step + evals["flops"])
  assert counted["reference_flop_per_s"] == 1e10  # the driver's matmul, not the gin peak


@pytest.mark.parametrize("binding, message", [
    ("--gin.TransformerConfig.d_modle=3", "d_modle"),
    ("--gin.TRAIN_STEP=5", "TRAIN_STEP sets a macro that no configuration uses"),
    ("--gin.OptimizerConfig.learning_rate=", "bad gin configuration"),
])
def test_bad_bindings_are_clear_errors_and_write_nothing(tmp_path, binding, message):
  out = tmp_path / "never"
  proc = run_cli(BASE + [_model_dir(out), binding])
  assert proc.returncode == 2
  assert message in proc.stderr
  assert not out.exists()


def test_mesh_larger_than_device_count_is_a_clear_error(tmp_path):
  out = tmp_path / "never"
  proc = run_cli(BASE + [_model_dir(out), "--gin.Partitioner.mesh_shape={'data': 16}"])
  assert proc.returncode == 1
  assert "needs 16 devices but jax has 8" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not out.exists()


@pytest.mark.slow
def test_missing_gin_file_and_model_dir(tmp_path):
  proc = run_cli(["-m", "warm_jax.train", "--gin_file=gin/nope.gin"])
  assert proc.returncode == 2 and "gin file gin/nope.gin not found" in proc.stderr
  proc = run_cli(BASE + ["--gin.TRAIN_STEPS=1"])
  assert proc.returncode == 1 and "MODEL_DIR is not set" in proc.stderr


@pytest.mark.slow
def test_sigkill_and_resume_ends_bitwise_equal_to_an_uninterrupted_run(tmp_path):
  common = BASE + ["--gin.TRAIN_STEPS=12", "--gin.TrainerConfig.save_every=4",
                   "--gin.TrainerConfig.log_every=4", "--gin.TrainerConfig.eval_every=0",
                   "--gin.DROPOUT_RATE=0.1"]
  run_cli(common + [_model_dir(tmp_path / "straight")], check=True)
  killed = tmp_path / "killed"
  # Killed right after steps 6 and 9 (step 8's async save may still be in flight at 9).
  for kill_at in (6, 9):
    proc = run_cli(common + [_model_dir(killed)],
                   env={"WARM_JAX_FAULT_KILL_AT_STEP": str(kill_at)})
    assert proc.returncode == -9, proc.stderr
    assert not (killed / "DONE").exists()
  run_cli(common + [_model_dir(killed)], check=True)
  a, b = _final_params(tmp_path / "straight"), _final_params(killed)
  import jax
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
  steps = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
  assert steps[-1] == 12
  # The metrics history has no duplicated steps from the killed attempts.
  train_steps = [json.loads(l)["step"] for l in (killed / "metrics.jsonl").read_text().splitlines()
                 if "train/loss" in l]
  assert train_steps == sorted(set(train_steps))
