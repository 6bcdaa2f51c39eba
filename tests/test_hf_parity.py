"""Logit parity with transformers for GPT-2, Llama and Gemma, both directions.

Each test builds a tiny random transformers model from a config (no download), saves it with
save_pretrained (once as one file, once sharded with a small max_shard_size), converts it with
`python -m warm_jax.convert` (its `main`, in this process) and compares our fp32 outputs with
transformers' on the same tokens, right padding included. The max errors are printed (run with
-s to see them); the tolerance is 1e-4 on logits of order 1.
"""

import json
import os

import numpy as np
import pytest

pytest.importorskip("torch", reason="the hf extra (pip install -e .[hf]) is not installed")
pytest.importorskip("transformers", reason="the hf extra is not installed")

import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from hf_tiny_models import FAMILIES, build, hf_logits  # noqa: E402
from warm_jax import convert  # noqa: E402
from warm_jax.core.checkpoints import load_params  # noqa: F401
from warm_jax.hf import importer  # noqa: E402
from warm_jax.models import LanguageModel, RewardModel  # noqa: E402

TOLERANCE = 1e-4
VOCAB = 97
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               # small, so that all three frequency bands occur at head_dim 16
               "original_max_position_embeddings": 32}
CASES = [("gpt2", {}), ("llama", {}), ("llama", {"rope_parameters": LLAMA3_ROPE}),
         ("gemma", {})]


def _tokens(seed=0):
  """3 rows of 24 tokens (never the pad id 0), the last one right-padded after 17."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, VOCAB, (3, 24))
  mask = np.ones_like(tokens)
  mask[2, 17:] = 0
  tokens[2, 17:] = 0
  return tokens, mask


def _convert(*args):
  assert convert.main(list(args)) == 0


def _ours(ckpt, tokens, mask):
  config = importer.read_model_json(str(ckpt))["transformer_config"]
  params = load_params(str(ckpt))
  if "reward_head" in params:
    return np.asarray(RewardModel(config).apply({"params": params}, jnp.asarray(tokens),
                                                jnp.asarray(mask)))
  return np.asarray(LanguageModel(config).apply({"params": params}, jnp.asarray(tokens),
                                                jnp.asarray(mask)))


def _max_error(got, want, mask):
  real = mask.astype(bool)
  return float(np.abs(got - want)[real].max())


@pytest.mark.parametrize("family,overrides", CASES,
                         ids=["gpt2", "llama", "llama3_rope", "gemma"])
@pytest.mark.slow
def test_imported_logits_equal_transformers(family, overrides, tmp_path):
  model = build(family, vocab_size=VOCAB, initializer_range=0.1, **overrides)
  tokens, mask = _tokens()
  want = hf_logits(model, tokens, mask)
  assert np.abs(want).max() > 0.5  # logits of order 1: an absolute tolerance means something
  for sharded in (False, True):
    src, ckpt = tmp_path / f"hf_{sharded}", tmp_path / f"ckpt_{sharded}"
    model.save_pretrained(src, max_shard_size="40KB" if sharded else "5GB")
    if sharded:
      index = json.loads((src / "model.safetensors.index.json").read_text())
      assert len(set(index["weight_map"].values())) > 3
    _convert("--from", "hf", "--input", str(src), "--output", str(ckpt))
    error = _max_error(_ours(ckpt, tokens, mask), want, mask)
    print(f"\n{family}{'+llama3 rope' if overrides else ''} sharded={sharded}: max |logit "
          f"error| {error:.2e} (max |logit| {np.abs(want).max():.2f})")
    assert error < TOLERANCE


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_policy_loads_in_transformers_with_the_same_logits(family, tmp_path):
  model = build(family, vocab_size=VOCAB, initializer_range=0.1, seed=1)
  tokens, mask = _tokens(1)
  model.save_pretrained(tmp_path / "hf")
  _convert("--from", "hf", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "ckpt"))
  _convert("--to", "hf", "--input", str(tmp_path / "ckpt"), "--output", str(tmp_path / "out"),
           "--max_shard_size", "30KB")
  assert (tmp_path / "out" / "model.safetensors.index.json").exists()
  exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  assert type(exported) is type(model)
  got = hf_logits(exported, tokens, mask)
  error = _max_error(got, _ours(tmp_path / "ckpt", tokens, mask), mask)
  print(f"\n{family} exported policy: max |logit error| vs ours {error:.2e}")
  assert error < TOLERANCE
  # Every original tensor comes back bit for bit (float32 export).
  original = dict(model.state_dict())
  for name, value in exported.state_dict().items():
    assert torch.equal(value, original[name]), name


@pytest.mark.parametrize("family", FAMILIES)
def test_reward_model_export_reimport_round_trip(family, tmp_path):
  """An HF 1-label *ForSequenceClassification imports as our RewardModel with the same
  rewards; exporting it and importing the export gives back identical params, and transformers
  serves the export with the same rewards."""
  model = build(family, head="reward", vocab_size=VOCAB, initializer_range=0.1, seed=2)
  tokens, mask = _tokens(2)
  want = hf_logits(model, tokens, mask)[:, 0]
  model.save_pretrained(tmp_path / "hf")
  _convert("--from", "hf", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "rm"))
  record = importer.read_model_json(str(tmp_path / "rm"))
  assert record["head"] == "reward"
  ours = _ours(tmp_path / "rm", tokens, mask)
  print(f"\n{family} RM import: max |reward error| {np.abs(ours - want).max():.2e}")
  np.testing.assert_allclose(ours, want, atol=TOLERANCE, rtol=0)

  _convert("--to", "hf", "--input", str(tmp_path / "rm"), "--output", str(tmp_path / "export"),
           "--pad_token_id", "0")
  config = json.loads((tmp_path / "export" / "config.json").read_text())
  assert config["architectures"] == [type(model).__name__] and config["pad_token_id"] == 0
  _convert("--from", "hf", "--input", str(tmp_path / "export"), "--output",
           str(tmp_path / "back"))
  before, after = load_params(str(tmp_path / "rm")), load_params(str(tmp_path / "back"))
  flat_before = {k: v for k, v in _flatten(before)}
  flat_after = {k: v for k, v in _flatten(after)}
  assert flat_before.keys() == flat_after.keys()
  for key, value in flat_before.items():
    np.testing.assert_array_equal(flat_after[key], value, err_msg=key)
  served = transformers.AutoModelForSequenceClassification.from_pretrained(
      tmp_path / "export").eval()
  np.testing.assert_allclose(hf_logits(served, tokens, mask)[:, 0], ours, atol=TOLERANCE, rtol=0)


def _flatten(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, f"{prefix}{key}/")
    else:
      yield f"{prefix}{key}", np.asarray(value)


def test_a_bfloat16_checkpoint_imports_exactly_widened(tmp_path):
  """bf16 weights (how most checkpoints ship) widen to float32 without rounding."""
  model = build("llama", vocab_size=VOCAB, seed=3).to(torch.bfloat16)
  model.save_pretrained(tmp_path / "hf")
  _convert("--from", "hf", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "ckpt"))
  params = load_params(str(tmp_path / "ckpt"))
  embed = model.state_dict()["model.embed_tokens.weight"].float().numpy()
  np.testing.assert_array_equal(params["decoder"]["token_embed"]["embedding"], embed)
  q = model.state_dict()["model.layers.1.self_attn.q_proj.weight"].float().numpy()
  np.testing.assert_array_equal(
      params["decoder"]["layer_1"]["attention"]["query"]["kernel"].reshape(64, 64), q.T)
  assert os.path.isdir(tmp_path / "ckpt" / "params")
