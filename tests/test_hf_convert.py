"""`python -m warm_jax.convert`: refusals name the tensor (and write nothing), conversion streams
one tensor at a time, and export works from gin model presets as well as from an import."""

import json
import os
import tracemalloc

import numpy as np
import pytest

pytest.importorskip("torch", reason="the hf extra (pip install -e .[hf]) is not installed")
pytest.importorskip("transformers", reason="the hf extra is not installed")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import flax.linen as nn  # noqa: E402
import transformers  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from conftest import run_cli  # noqa: E402
from hf_tiny_models import build, hf_logits  # noqa: E402
from warm_jax import convert  # noqa: E402
from warm_jax.core.checkpoints import load_params, save_params  # noqa: F401
from warm_jax.hf import importer  # noqa: E402
from warm_jax.hf.safetensors_io import SafetensorsReader  # noqa: E402
from warm_jax.models import LanguageModel, TransformerConfig  # noqa: E402

VOCAB = 97


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("hf") / "llama"
  build("llama", vocab_size=VOCAB).save_pretrained(path)
  return path


def _copy_model(src, dst, *, edit_tensors=None, edit_config=None):
  """A copy of an HF dir with its tensors and/or config.json edited."""
  os.makedirs(dst)
  tensors = load_file(str(src / "model.safetensors"))
  if edit_tensors:
    edit_tensors(tensors)
  save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
  config = json.loads((src / "config.json").read_text())
  if edit_config:
    edit_config(config)
  (dst / "config.json").write_text(json.dumps(config))
  return dst


def _refused(capsys, args, *message_parts, output):
  assert convert.main(args) == 1
  err = capsys.readouterr().err
  for part in message_parts:
    assert part in err, err
  assert "nothing was written" in err
  parent = os.path.dirname(output)
  assert not os.path.exists(output)
  assert not [f for f in os.listdir(parent) if ".tmp-" in f], os.listdir(parent)
  return err


def _import(src, out):
  return ["--from", "hf", "--input", str(src), "--output", str(out)]


LAYER1_UP = "model.layers.1.mlp.up_proj.weight"


@pytest.mark.parametrize("case,edit_tensors,edit_config,message", [
    ("unknown_architecture", None, lambda c: c.update(model_type="mistral"),
     "model_type 'mistral' is not supported"),
    ("missing", lambda t: t.pop(LAYER1_UP), None, f"missing tensor {LAYER1_UP}"),
    ("shape", lambda t: t.update({LAYER1_UP: t[LAYER1_UP][:-1]}), None,
     f"tensor {LAYER1_UP} (model.safetensors) has shape (127, 64) but config.json implies "
     "(128, 64)"),
    ("dtype", lambda t: t.update({LAYER1_UP: t[LAYER1_UP].astype(np.int8)}), None,
     f"tensor {LAYER1_UP} (model.safetensors) has dtype I8"),
    ("non_finite", lambda t: t[LAYER1_UP].__setitem__((3, 4), np.nan), None,
     f"tensor {LAYER1_UP} (model.safetensors) holds non-finite values"),
    ("unexpected", lambda t: t.update({"model.layers.0.self_attn.q_norm.weight":
                                       np.ones(16, np.float32)}), None,
     "unexpected tensor model.layers.0.self_attn.q_norm.weight"),
    ("unsupported_option", None, lambda c: c.update(attention_bias=True),
     "llama config.json has attention_bias=True"),
    ("config_shape", None, lambda c: c.update(intermediate_size=96),
     "tensor model.layers.0.mlp.down_proj.weight (model.safetensors) has shape (64, 128) but "
     "config.json implies (64, 96)"),
], ids=lambda v: v if isinstance(v, str) and " " not in v else "")
def test_bad_model_dirs_are_refused_naming_the_tensor(llama_dir, tmp_path, capsys, case,
                                                       edit_tensors, edit_config, message):
  src = _copy_model(llama_dir, tmp_path / "src", edit_tensors=edit_tensors,
                    edit_config=edit_config)
  before = {f: os.path.getmtime(src / f) for f in os.listdir(src)}
  _refused(capsys, _import(src, tmp_path / "out"), message, output=str(tmp_path / "out"))
  assert before == {f: os.path.getmtime(src / f) for f in os.listdir(src)}  # input untouched


def test_an_incomplete_sharded_download_is_refused(tmp_path, capsys):
  build("gemma", vocab_size=VOCAB).save_pretrained(tmp_path / "src", max_shard_size="40KB")
  index = json.loads((tmp_path / "src" / "model.safetensors.index.json").read_text())
  shard = sorted(set(index["weight_map"].values()))[1]
  os.remove(tmp_path / "src" / shard)
  _refused(capsys, _import(tmp_path / "src", tmp_path / "out"), f"lists shard {shard}",
           output=str(tmp_path / "out"))


def test_missing_config_existing_output_and_usage_errors(llama_dir, tmp_path, capsys):
  os.makedirs(tmp_path / "empty")
  _refused(capsys, _import(tmp_path / "empty", tmp_path / "out"), "has no config.json",
           output=str(tmp_path / "out"))
  os.makedirs(tmp_path / "taken")
  (tmp_path / "taken" / "keep").write_text("x")
  assert convert.main(_import(llama_dir, tmp_path / "taken")) == 1
  assert "already exists" in capsys.readouterr().err
  assert os.listdir(tmp_path / "taken") == ["keep"]
  for args in (["--input", "a", "--output", "b"], ["--from", "hf", "--to", "hf"],
               ["--from", "hf", "--input", "a"], ["--to", "hf", "--input", "a", "--output", "b",
                                                  "--max_shard_size", "lots"]):
    assert convert.main(args) == 2
    assert "error:" in capsys.readouterr().err


def test_conversion_streams_one_tensor_at_a_time(tmp_path, monkeypatch):
  """Each tensor is read once, in storage order, and the Python heap never holds the source
  model beside the converted one: peak traced memory stays well under two float32 copies."""
  model = build("llama", vocab_size=4096, hidden_size=128, intermediate_size=256,
                num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=6)
  model.save_pretrained(tmp_path / "src", max_shard_size="300KB")
  model_bytes = 4 * sum(p.numel() for p in model.parameters())
  reads = []
  original = SafetensorsReader.read

  def counting_read(self, name, **kw):
    reads.append(name)
    return original(self, name, **kw)

  monkeypatch.setattr(SafetensorsReader, "read", counting_read)
  # jax's tracing machinery allocates once on first use: warm it outside the measurement.
  importer.abstract_leaves(TransformerConfig(vocab_size=8, d_model=8, num_layers=1, num_heads=1,
                                             mlp_dim=8, max_len=8), head="lm")
  tracemalloc.start()
  summary = importer.import_hf(input_dir=str(tmp_path / "src"), output=str(tmp_path / "out"))
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  stored = SafetensorsReader(str(tmp_path / "src")).names()
  assert reads == stored and len(set(reads)) == len(reads) == summary["num_tensors"]
  print(f"\nstreaming import: model {model_bytes / 2**20:.1f} MiB float32, peak traced "
        f"{peak / 2**20:.1f} MiB")
  assert peak < 1.5 * model_bytes


@pytest.mark.slow
def test_export_from_gin_presets_of_a_model_trained_here(tmp_path, capsys):
  """A model that never came from Hugging Face (params initialised here with the llama_tiny
  preset) exports with --family and gin flags; transformers computes the same logits."""
  config = TransformerConfig(vocab_size=VOCAB, d_model=64, num_layers=2, num_heads=4,
                             num_kv_heads=2, mlp_dim=128, max_len=256, norm="rmsnorm",
                             positions="rotary", mlp_activation="swiglu",
                             tie_embeddings=False, use_bias=False)
  model = LanguageModel(config)
  tokens = np.random.default_rng(0).integers(1, VOCAB, (2, 20))
  params = nn.unbox(model.init(jax.random.key(0), jnp.asarray(tokens))["params"])
  params = jax.tree.map(lambda x: np.asarray(x) * 5, params)  # logits of order 1
  save_params(params, str(tmp_path / "run"))
  args = ["--to", "hf", "--input", str(tmp_path / "run"), "--output", str(tmp_path / "hf"),
          "--family", "llama", "--gin_file=gin/models/llama_tiny.gin", f"--gin.VOCAB_SIZE={VOCAB}"]
  assert convert.main(args) == 0, capsys.readouterr().err
  exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(tokens)))
  want = hf_logits(exported, tokens)
  assert np.abs(want).max() > 0.5
  np.testing.assert_allclose(ours, want, atol=1e-4, rtol=0)

  # The same checkpoint described as another family, or with the wrong shape, is refused.
  _refused(capsys, ["--to", "hf", "--input", str(tmp_path / "run"), "--output",
                    str(tmp_path / "g"), "--family", "gemma",
                    "--gin_file=gin/models/llama_tiny.gin", f"--gin.VOCAB_SIZE={VOCAB}"],
           "TransformerConfig.mlp_activation='swiglu' cannot be written as a gemma model",
           output=str(tmp_path / "g"))
  _refused(capsys, ["--to", "hf", "--input", str(tmp_path / "run"), "--output",
                    str(tmp_path / "w"), "--family", "llama",
                    "--gin_file=gin/models/llama_tiny.gin", "--gin.VOCAB_SIZE=98"],
           "leaf decoder/token_embed/embedding has shape (97, 64) but the config gives (98, 64)",
           output=str(tmp_path / "w"))
  _refused(capsys, ["--to", "hf", "--input", str(tmp_path / "run"), "--output",
                    str(tmp_path / "n")], "pass --base", output=str(tmp_path / "n"))


def test_export_refuses_value_models_and_biased_reward_heads(llama_dir, tmp_path, capsys):
  assert convert.main(_import(llama_dir, tmp_path / "lm")) == 0
  lm = load_params(str(tmp_path / "lm"))
  d = lm["decoder"]["final_norm"]["scale"].shape[0]
  head = {"kernel": np.full((d, 1), 0.1, np.float32), "bias": np.zeros((1,), np.float32)}
  save_params({"decoder": lm["decoder"], "value_head": head}, str(tmp_path / "value"))
  _refused(capsys, ["--to", "hf", "--input", str(tmp_path / "value"), "--output",
                    str(tmp_path / "v_out"), "--base", str(tmp_path / "lm")],
           "is a value model (value_head)", output=str(tmp_path / "v_out"))
  biased = dict(head, bias=np.array([0.5], np.float32))
  save_params({"decoder": lm["decoder"], "reward_head": biased}, str(tmp_path / "rm"))
  rm_args = ["--to", "hf", "--input", str(tmp_path / "rm"), "--output", str(tmp_path / "rm_out"),
             "--base", str(tmp_path / "lm")]
  _refused(capsys, rm_args, "reward_head/bias is 0.5", "--drop_reward_bias",
           output=str(tmp_path / "rm_out"))
  assert convert.main(rm_args + ["--drop_reward_bias"]) == 0
  config = json.loads((tmp_path / "rm_out" / "config.json").read_text())
  assert config["architectures"] == ["LlamaForSequenceClassification"]
  assert config["id2label"] == {"0": "LABEL_0"}


@pytest.mark.slow
def test_the_console_entry_point_runs(llama_dir, tmp_path):
  proc = run_cli(["-m", "warm_jax.convert", "--from", "hf", "--input", str(llama_dir),
                  "--output", str(tmp_path / "ckpt")], check=True)
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["family"] == "llama" and summary["head"] == "lm"
  assert summary["num_params"] == sum(
      np.asarray(x).size for x in jax.tree.leaves(load_params(str(tmp_path / "ckpt"))))
  # CKPT/model.gin binds exactly the imported model's config (usable as --gin_file).
  import gin
  from warm_jax import configurables
  from warm_jax.gin_utils import parse_gin
  configurables.register()
  gin.clear_config()
  try:
    parse_gin([str(tmp_path / "ckpt" / "model.gin")], [])
    with gin.unlock_config():
      from_gin = gin.get_configurable("TransformerConfig")()
  finally:
    gin.clear_config()
  assert from_gin == importer.read_model_json(str(tmp_path / "ckpt"))["transformer_config"]
