"""An imported Hugging Face backbone runs through the same stage commands as the embedded
default: SFT from the converted checkpoint (gin/sft.gin, PRETRAIN_DIR = the import), the linear
probe, two RM members (gin/rm_members.gin), WARM averaging (`python -m warm_jax.average`), and
the averaged RM exported back to transformers scores like ours. Each command line goes to its
entry point's `main` in this process (what `python -m` calls), which saves a Python, jax and
TensorFlow start-up per stage; gin's global config is cleared around each one.

The tiny Llama has the llama_tiny preset's shape and the data dir's vocabulary size (1024), so
the data built by `warm_jax.data.build` (its own SentencePiece) fits it unchanged.
"""

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="the hf extra (pip install -e .[hf]) is not installed")
pytest.importorskip("transformers", reason="the hf extra is not installed")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import transformers  # noqa: E402

import gin  # noqa: E402
from hf_tiny_models import build, hf_logits  # noqa: E402
from warm_jax import average, convert, train  # noqa: E402
from warm_jax.core.checkpoints import load_params  # noqa: F401
from warm_jax.data import datasets  # noqa: E402
from warm_jax.hf import importer  # noqa: E402
from warm_jax.models import RewardModel  # noqa: E402

TINY_WORLD = dict(n_pretrain_posts=120, n_sft_posts=32, n_train_posts=8, n_train_pairs=16,
                  n_val_posts=8, n_val_pairs=8, n_ood_posts=8, n_ood_pairs=8, n_prompts=8)
TRAIN = ["--gin_file=gin/models/llama_tiny.gin", "--gin.BATCH_SIZE=8",
         "--gin.TrainerConfig.peak_flops_per_device=1e11"]


def _run(main, args):
  """`python -m <module> ARGS` as its main(ARGS), with a clean gin config around it."""
  gin.clear_config()
  try:
    assert main(args) == 0, args
  finally:
    gin.clear_config()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from warm_jax.data import build, preferences
  out = str(tmp_path_factory.mktemp("hf_stages") / "data")
  build.build_dataset(output_dir=out, world=preferences.WorldConfig(**TINY_WORLD))
  return out


def _flat(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flat(value, f"{prefix}{key}/")
    else:
      yield f"{prefix}{key}", np.asarray(value)


@pytest.mark.slow
def test_imported_llama_runs_sft_rm_members_and_warm_averaging(data_dir, tmp_path):
  hf = build("llama", vocab_size=1024, initializer_range=0.1)
  hf.save_pretrained(tmp_path / "hf")
  ckpt, sft, probe = tmp_path / "ckpt", tmp_path / "sft", tmp_path / "probe"
  members, warm = tmp_path / "members", tmp_path / "warm_2"
  assert convert.main(["--from", "hf", "--input", str(tmp_path / "hf"),
                       "--output", str(ckpt)]) == 0

  _run(train.main, TRAIN + ["--gin_file=gin/sft.gin", f"--gin.DATA_DIR='{data_dir}'",
                            f"--gin.PRETRAIN_DIR='{ckpt}'", f"--gin.MODEL_DIR='{sft}'",
                            "--gin.TRAIN_STEPS=2", "--gin.SAVE_EVERY=2"])
  assert json.loads((sft / "DONE").read_text())["step"] == 2
  # SFT started from the imported weights: two warm-up steps move them only slightly.
  imported, tuned = dict(_flat(load_params(str(ckpt)))), dict(_flat(load_params(str(sft))))
  assert imported.keys() == tuned.keys()
  moved = max(np.abs(tuned[k] - imported[k]).max() for k in imported)
  assert 0 < moved < 0.01 < min(np.abs(v).max() for v in imported.values() if v.size > 64)

  _run(train.main, ["--gin_file=gin/models/llama_tiny.gin", "--gin_file=gin/linear_probe.gin",
                    f"--gin.DATA_DIR='{data_dir}'", f"--gin.SFT_DIR='{sft}'",
                    f"--gin.MODEL_DIR='{probe}'"])
  _run(train.main, TRAIN + ["--gin_file=gin/rm_members.gin", f"--gin.DATA_DIR='{data_dir}'",
                            f"--gin.SFT_DIR='{sft}'", f"--gin.PROBE_DIR='{probe}'",
                            f"--gin.MEMBERS_DIR='{members}'", "--gin.NUM_MEMBERS=2",
                            "--gin.TRAIN_STEPS=2"])
  _run(average.main, ["--inputs", str(members / "member_0"), str(members / "member_1"),
                      "--output", str(warm)])

  # WARM: the uniform average of the two members, leaf by leaf.
  m0, m1 = (dict(_flat(load_params(str(members / f"member_{i}")))) for i in (0, 1))
  averaged = dict(_flat(load_params(str(warm))))
  assert averaged.keys() == m0.keys() and "reward_head/kernel" in averaged
  for key, value in averaged.items():
    np.testing.assert_allclose(value, (m0[key] + m1[key]) / 2, rtol=1e-6, atol=1e-7)

  # The averaged RM exported for other tools: transformers scores real pairs like we do.
  assert convert.main(["--to", "hf", "--input", str(warm), "--base", str(ckpt),
                       "--output", str(tmp_path / "warm_hf"), "--pad_token_id", "0"]) == 0
  served = transformers.AutoModelForSequenceClassification.from_pretrained(
      tmp_path / "warm_hf").eval()
  pairs = datasets.preference_dataset(data_dir=data_dir, split="id_val", shuffle=False)
  tokens, mask = pairs.features["chosen_tokens"][:4], pairs.features["chosen_mask"][:4]
  assert (tokens[mask == 0] == 0).all() and (tokens[mask == 1] != 0).all()  # right-padded
  config = importer.read_model_json(str(ckpt))["transformer_config"]
  params = load_params(str(warm))
  ours = np.asarray(jax.jit(lambda p: RewardModel(config).apply(
      {"params": p}, jnp.asarray(tokens), jnp.asarray(mask)))(params))
  theirs = hf_logits(served, tokens, mask)[:, 0]
  print(f"\nWARM RM served by transformers: max |reward error| {np.abs(ours - theirs).max():.2e}")
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)

  # The export carries the tokenizer the data was built with (found through the members'
  # DATA_DIR): the raw text of those pairs, tokenised by transformers alone, gives the ids the
  # data build (seqio) wrote, and the same rewards.
  from warm_jax.data import data_dir as data_dir_lib
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "warm_hf")
  records = data_dir_lib.load_records(data_dir, kind="preferences", split="id_val")
  rows = [records[int(i)] for i in pairs.features["pair_index"][:4]]
  chosen = [r["summary_a"] if r["label"] == 0 else r["summary_b"] for r in rows]
  encoded = tokenizer([r["prompt"] for r in rows], chosen)["input_ids"]
  assert encoded == [list(t[m == 1]) for t, m in zip(tokens, mask)]
  assert served.config.pad_token_id == tokenizer.pad_token_id == 0
  assert served.config.eos_token_id == tokenizer.eos_token_id == 1
