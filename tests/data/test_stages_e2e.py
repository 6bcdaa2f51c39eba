"""End to end: build a tiny data dir, pre-train on it, then SFT from the pre-trained checkpoint,
all through `python -m warm_jax.train` with the stage gins (gin/pretrain.gin, gin/sft.gin)."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

from conftest import run_cli
from warm_jax.data import datasets

TINY_WORLD = dict(n_pretrain_posts=120, n_sft_posts=32, n_train_posts=8, n_train_pairs=8,
                  n_val_posts=8, n_val_pairs=8, n_ood_posts=8, n_ood_pairs=8, n_prompts=8)
COMMON = ["-m", "warm_jax.train", "--gin_file=gin/models/tiny.gin", "--gin.BATCH_SIZE=8",
          "--gin.TrainerConfig.peak_flops_per_device=1e11"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from warm_jax.data import build, preferences
  out = str(tmp_path_factory.mktemp("e2e") / "data")
  build.build_dataset(output_dir=out, world=preferences.WorldConfig(**TINY_WORLD))
  return out


def _records(model_dir):
  return [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_pretrain_then_sft_from_it(data_dir, tmp_path):
  pretrain = tmp_path / "pretrain"
  run_cli(COMMON + ["--gin_file=gin/pretrain.gin", f"--gin.DATA_DIR='{data_dir}'",
                    f"--gin.MODEL_DIR='{pretrain}'", "--gin.TRAIN_STEPS=3"], check=True)
  assert json.loads((pretrain / "DONE").read_text())["step"] == 3
  records = _records(pretrain)
  assert np.isfinite([r["train/loss"] for r in records if "train/loss" in r]).all()
  lm_eval = [r for r in records if "eval/loss" in r][-1]
  lm_val = datasets.lm_dataset(data_dir=data_dir, split="validation").features["loss_mask"]
  assert lm_eval["eval/weight"] == lm_val[:, 1:].sum()  # every token but a window's first

  sft = tmp_path / "sft"
  run_cli(COMMON + ["--gin_file=gin/sft.gin", f"--gin.DATA_DIR='{data_dir}'",
                    f"--gin.PRETRAIN_DIR='{pretrain}'", f"--gin.MODEL_DIR='{sft}'",
                    "--gin.TRAIN_STEPS=4", "--gin.SAVE_EVERY=2"], check=True)
  assert json.loads((sft / "DONE").read_text())["step"] == 4
  kept = {int(p.name) for p in (sft / "checkpoints").iterdir() if p.name.isdigit()}
  assert {2, 4} <= kept  # keep_checkpoints=None: the Baklava inits survive
  config = (sft / "config.gin").read_text()
  assert "InitFromCheckpoint.path = %PRETRAIN_DIR" in config and str(pretrain) in config
  assert "sft_dataset.split = 'train'" in config
  records = _records(sft)
  train = [r for r in records if "train/loss" in r]
  assert train and np.isfinite([r["train/loss"] for r in train]).all()
  # The SFT loss counts exactly the summary tokens and EOS of each example.
  sft_val = datasets.sft_dataset(data_dir=data_dir, split="validation").features["loss_mask"]
  sft_eval = [r for r in records if "eval/loss" in r][-1]
  assert sft_eval["eval/weight"] == sft_val.sum()
  assert np.isfinite(sft_eval["eval/loss"])


@pytest.mark.slow
def test_a_missing_data_dir_says_to_run_the_build(tmp_path):
  proc = run_cli(COMMON + ["--gin_file=gin/pretrain.gin", f"--gin.MODEL_DIR='{tmp_path / 'm'}'",
                           f"--gin.DATA_DIR='{tmp_path / 'nope'}'", "--gin.TRAIN_STEPS=1"])
  assert proc.returncode == 1, proc.stderr
  assert "does not exist: build it with `python -m warm_jax.data.build" in proc.stderr
  assert "Traceback" not in proc.stderr
