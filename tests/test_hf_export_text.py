"""An exported WARM reward model (and policy) run by transformers alone, on raw text.

The experiment here is a small fake of `warm_jax.experiment`'s layout with real tiny orbax
checkpoints (no training): data/clean holds a SentencePiece model trained on the synthetic
world's text, members/clean/member_<i> are RM MODEL_DIRs whose config.gin names that data dir,
average/warm_2 is their WARM (written by `python -m warm_jax.average`), rl/warm_2 a policy.
Each test exports a stage dir as it is (`python -m warm_jax.convert --to hf --input
runs/demo/average/warm_2 ...`) and compares, on text:
- token ids: transformers' AutoTokenizer vs the sentencepiece library on the same .model file
  (prompt ids + summary ids + EOS, the layout of the data build's preference arrays);
- rewards: AutoModelForSequenceClassification (and pipeline) vs warm-jax's RewardScorer;
- greedy generation: model.generate(do_sample=False) vs warm-jax's Sampler at temperature 0.
"""

import json
import os

import numpy as np
import pytest

pytest.importorskip("torch", reason="the hf extra (pip install -e .[hf]) is not installed")
pytest.importorskip("transformers", reason="the hf extra is not installed")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import sentencepiece as spm  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from hf_tiny_models import build  # noqa: E402
from warm_jax import average, convert  # noqa: E402
from warm_jax.core import checkpoints as ckpt  # noqa: F401
from warm_jax.data import world  # noqa: E402
from warm_jax.data.tokenizer import TokenizerConfig, train_sentencepiece  # noqa: E402
from warm_jax.hf import tokenizer as hf_tokenizer  # noqa: E402
from warm_jax.models import LanguageModel, RewardModel, TransformerConfig  # noqa: E402
from warm_jax.core.partitioning import Partitioner  # noqa: F401
from warm_jax.policy.sampling import Sampler, SamplingConfig  # noqa: F401
from warm_jax.rm.scoring import RewardScorer  # noqa: F401

VOCAB = 512
TOLERANCE = 1e-5
# gin/models/tiny.gin (GPT-2 shaped) and gin/models/llama_tiny.gin at VOCAB pieces
PRESETS = {
    "gpt2": ("gin/models/tiny.gin", dict(d_model=64, num_layers=2, num_heads=4, mlp_dim=256,
                                         max_len=256)),
    "llama": ("gin/models/llama_tiny.gin", dict(
        d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=128, max_len=256,
        norm="rmsnorm", positions="rotary", mlp_activation="swiglu", tie_embeddings=False,
        use_bias=False)),
}


def _config(family):
  return TransformerConfig(vocab_size=VOCAB, **PRESETS[family][1])


def _params(module, config, seed, scale):
  tokens = jnp.ones((1, 4), jnp.int32)
  params = nn.unbox(module(config).init(jax.random.key(seed), tokens, tokens)["params"])
  rng = np.random.default_rng(seed)
  # weights well away from the init (rewards and logits of order 1, a non-zero head)
  return jax.tree.map(lambda x: (np.asarray(x) + scale * rng.standard_normal(x.shape)
                                 ).astype(np.float32), params)


def _model_dir(path, params, step, data_dir):
  ckpt.save_params(params, str(path / "checkpoints" / str(step) / "params"))
  (path / "config.gin").write_text(f"DATA_DIR = '{data_dir}'\nSEQ_LEN = 128\n")
  (path / "DONE").write_text("{}")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs") / "demo"
  data = root / "data" / "clean"
  posts = world.generate_posts(seed=0, n=60)
  train_sentencepiece(texts=[world.format_example(p.text, p.reference) for p in posts],
                      model_prefix=str(data / "spm"), config=TokenizerConfig(vocab_size=VOCAB))
  (data / "meta.json").write_text(json.dumps(
      {"vocab_size": VOCAB, "tasks": {"preferences": "synthetic_tldr_preferences"}}))
  config = _config("gpt2")
  for i in range(2):
    _model_dir(root / "members" / "clean" / f"member_{i}",
               dict(_params(RewardModel, config, i, 0.05),
                    reward_head={"kernel": np.random.default_rng(10 + i).standard_normal(
                        (64, 1)).astype(np.float32), "bias": np.zeros((1,), np.float32)}),
               step=40 + i, data_dir=data)
  assert average.main(["--inputs", str(root / "members" / "clean" / "member_0"),
                       str(root / "members" / "clean" / "member_1"), "--output",
                       str(root / "average" / "warm_2" / "checkpoint")]) == 0
  for family in PRESETS:
    _model_dir(root / "rl" / f"warm_2_{family}", _params(LanguageModel, _config(family), 7, 0.1),
               step=9, data_dir=data)
  (root / "commands.sh").write_text("# stages\n")
  return root


def _export(capsys, *args, family="gpt2"):
  gin_file, _ = PRESETS[family]
  assert convert.main(["--to", "hf", *args, "--family", family, f"--gin_file={gin_file}",
                       f"--gin.VOCAB_SIZE={VOCAB}"]) == 0, capsys.readouterr().err
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _texts(n=5):
  """(prompt, summary) pairs of held-out posts: references and one odd, non-world summary."""
  posts = world.generate_posts(seed=1, n=n)
  # the first sentence of each post: short sequences for the tiny models' 256 positions
  pairs = [(world.format_prompt(p.text.split(". ")[0] + "."), p.reference) for p in posts]
  pairs[-1] = (pairs[-1][0], "Zürich?  an UNSEEN   summary, 42 😀")
  return pairs


def _warm_jax_rewards(params_dir, ids):
  """warm-jax's rewards of right-padded id rows (RewardScorer, as evaluation and BoN use)."""
  length = max(len(r) for r in ids)
  tokens = np.zeros((len(ids), length), np.int32)
  mask = np.zeros_like(tokens)
  for i, row in enumerate(ids):
    tokens[i, :len(row)], mask[i, :len(row)] = row, 1
  scorer = RewardScorer(model_config=_config("gpt2"), partitioner=Partitioner(), batch_size=8)
  return scorer.rewards(scorer.place(ckpt.load_params(str(params_dir))), tokens, mask)


@pytest.mark.slow
def test_warm_stage_dir_exports_with_tokenizer_and_card_and_scores_raw_text(run, tmp_path,
                                                                           capsys):
  out = tmp_path / "warm_2_hf"
  summary = _export(capsys, "--input", str(run / "average" / "warm_2"), "--output", str(out))
  assert summary["tokenizer"] == str(run / "data" / "clean" / "spm.model")
  assert summary["special_ids"] == {"pad": 0, "eos": 1, "bos": None, "unk": 2}

  config = json.loads((out / "config.json").read_text())
  assert config["architectures"] == ["GPT2ForSequenceClassification"]
  assert (config["pad_token_id"], config["eos_token_id"], config["bos_token_id"]) == (0, 1, None)
  card = (out / "README.md").read_text()
  for part in ("a WARM reward model", "(uniform) of 2 reward models", "member_0`, step 40",
               "member_1`, step 41", f"experiment at `{run}`", "`<post> TL;DR: <summary>`",
               "followed by EOS", "pad 0, eos 1", "AutoModelForSequenceClassification"):
    assert part in card, (part, card)

  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
  assert model.config.eos_token_id == tokenizer.eos_token_id == 1
  assert model.config.pad_token_id == tokenizer.pad_token_id == 0
  sp = spm.SentencePieceProcessor(model_file=str(run / "data" / "clean" / "spm.model"))
  pairs = _texts()
  want_ids = [sp.encode(p) + sp.encode(s) + [sp.eos_id()] for p, s in pairs]
  assert tokenizer([f"{p} {s}" for p, s in pairs])["input_ids"] == want_ids
  assert tokenizer([p for p, _ in pairs], [s for _, s in pairs])["input_ids"] == want_ids

  ours = _warm_jax_rewards(run / "average" / "warm_2", want_ids)
  assert np.ptp(ours) > 0.1  # rewards that differ between texts: a mix-up cannot hide
  batch = tokenizer([p for p, _ in pairs], [s for _, s in pairs], padding=True,
                    return_tensors="pt")
  with torch.no_grad():
    theirs = model(**batch).logits[:, 0].numpy()
  np.testing.assert_allclose(theirs, ours, atol=TOLERANCE, rtol=0)
  print(f"max |reward difference| {np.abs(theirs - ours).max():.2e}")

  scorer = transformers.pipeline("text-classification", model=str(out),
                                 function_to_apply="none", device="cpu")
  piped = [r["score"] for r in scorer([f"{p} {s}" for p, s in pairs])]
  np.testing.assert_allclose(piped, ours, atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_exported_tokenizer_gives_sentencepiece_ids_on_any_text(run, tmp_path):
  """The tokenizer files written for the world's SentencePiece model, loaded by AutoTokenizer:
  the ids of the sentencepiece library (plus EOS) on world text and on random strings of
  spaces (runs, leading, trailing), newlines, tabs, unseen characters (byte fallback), the
  marker and the special pieces' own spellings; decoding gives SentencePiece's text back."""
  hf_tokenizer.write_sentencepiece_as_hf(str(run / "data" / "clean" / "spm.model"),
                                         str(tmp_path), append_eos=True, model_max_length=256)
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
  sp = spm.SentencePieceProcessor(model_file=str(run / "data" / "clean" / "spm.model"))
  rng = np.random.default_rng(0)
  alphabet = list("abc TL;DR:\n\t.,!é") + ["😀", "  ", "</s>", "<pad>", "<unk>", "my ", "friend"]
  texts = [world.format_example(p.text, p.reference) for p in world.generate_posts(seed=2, n=20)]
  texts += ["", " ", "  a  b  ", " lead", "trail ", "x \n y", "tl;dr:\u2581x"]
  texts += ["".join(rng.choice(alphabet, size=rng.integers(0, 25))) for _ in range(300)]
  for text in texts:
    ids = tokenizer(text)["input_ids"]
    assert ids == sp.encode(text) + [1], repr(text)
    assert tokenizer.decode(ids, skip_special_tokens=True) == sp.decode(sp.encode(text)), \
        repr(text)


def _greedy_parity(capsys, policy_dir, out, family, new=16):
  """Exports `policy_dir` to `out`, decodes 3 left-padded prompts greedily with transformers'
  generate and with warm-jax's Sampler (temperature 0), asserts the same tokens up to and
  including EOS; returns our Samples."""
  _export(capsys, "--input", str(policy_dir), "--output", str(out), family=family)
  assert "generation equals warm-jax's sampler" in (out / "README.md").read_text()
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert tokenizer.padding_side == "left" and model.generation_config.eos_token_id == 1
  prompts = [p for p, _ in _texts(3)]
  prompts[1] = prompts[1][:20] + " TL;DR:"  # a shorter prompt: real left padding
  batch = tokenizer(prompts, padding=True, return_tensors="pt")
  with torch.no_grad():
    generated = model.generate(**batch, do_sample=False, max_new_tokens=new,
                               pad_token_id=0).numpy()[:, batch["input_ids"].shape[1]:]
  sampler = Sampler(model_config=_config(family), partitioner=Partitioner(),
                    config=SamplingConfig(max_new_tokens=new, temperature=0.0), batch_size=8)
  ours = sampler.sample(sampler.place(ckpt.load_params(str(policy_dir))),
                        batch["input_ids"].numpy(), batch["attention_mask"].numpy(), seed=0)
  for row in range(len(prompts)):
    mine = ours.tokens[row][ours.mask[row] == 1].tolist()
    theirs = generated[row].tolist()
    if 1 in theirs:  # generate pads a finished row with pad_token_id after its EOS
      theirs = theirs[:theirs.index(1) + 1]
    assert theirs == mine, (row, theirs, mine)
  return ours


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(PRESETS))
def test_exported_policy_generates_greedily_as_our_sampler(run, tmp_path, capsys, family):
  """A policy exported from its RL stage dir: model.generate(do_sample=False) continues a
  batch of left-padded prompts with the tokens of warm-jax's Sampler at temperature 0."""
  ours = _greedy_parity(capsys, run / "rl" / f"warm_2_{family}", tmp_path / "hf", family)
  assert len(set(map(tuple, ours.tokens.tolist()))) > 1  # not one constant continuation


@pytest.mark.slow
def test_exported_policy_stops_at_eos_where_our_sampler_does(run, tmp_path, capsys):
  """The same with a policy that emits EOS mid-way: its EOS output column is a scaled copy of
  the column of the token it emits most, so greedy decoding reaches EOS within a few steps
  in some rows; both implementations stop there."""
  params = ckpt.load_params(str(run / "rl" / "warm_2_llama"))
  first = _greedy_parity(capsys, run / "rl" / "warm_2_llama", tmp_path / "hf0", "llama")
  assert not first.ended.any()
  counts = np.bincount(first.tokens[first.mask == 1], minlength=VOCAB)
  kernel = params["lm_head"]["kernel"]
  kernel[:, 1] = 1.5 * kernel[:, int(np.argmax(counts))]
  _model_dir(tmp_path / "eos_policy", params, step=1, data_dir=run / "data" / "clean")
  ours = _greedy_parity(capsys, tmp_path / "eos_policy", tmp_path / "hf1", "llama")
  assert ours.ended.any() and (ours.mask.sum(axis=1) < ours.mask.shape[1]).any()


@pytest.mark.slow
def test_imported_reward_model_exported_back_scores_text_as_before(run, tmp_path, capsys):
  """A Hugging Face Llama RM that ships the world's tokenizer: imported, exported back, and
  scored on text by transformers: the same ids and rewards as the original and as warm-jax."""
  original = build("llama", head="reward", vocab_size=VOCAB, seed=3, bos_token_id=None)
  src = tmp_path / "hf_rm"
  original.save_pretrained(src)
  hf_tokenizer.write_sentencepiece_as_hf(str(run / "data" / "clean" / "spm.model"), str(src),
                                         append_eos=True, model_max_length=256)
  assert convert.main(["--from", "hf", "--input", str(src), "--output",
                       str(tmp_path / "imported")]) == 0
  assert convert.main(["--to", "hf", "--input", str(tmp_path / "imported"), "--output",
                       str(tmp_path / "back")]) == 0, capsys.readouterr().err
  config = json.loads((tmp_path / "back" / "config.json").read_text())
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
  assert (config["pad_token_id"], config["eos_token_id"], config["bos_token_id"]) == (
      tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, None)
  back = transformers.AutoModelForSequenceClassification.from_pretrained(
      tmp_path / "back").eval()
  pairs = _texts(4)
  sp = spm.SentencePieceProcessor(model_file=str(run / "data" / "clean" / "spm.model"))
  want_ids = [sp.encode(p) + sp.encode(s) + [1] for p, s in pairs]
  assert tokenizer([f"{p} {s}" for p, s in pairs])["input_ids"] == want_ids
  batch = tokenizer([f"{p} {s}" for p, s in pairs], padding=True, return_tensors="pt")
  with torch.no_grad():
    rewards_back = back(**batch).logits[:, 0].numpy()
    rewards_original = original(**batch).logits[:, 0].numpy()
  np.testing.assert_allclose(rewards_back, rewards_original, atol=TOLERANCE, rtol=0)
  from warm_jax.hf import importer
  cfg = importer.read_model_json(str(tmp_path / "imported"))["transformer_config"]
  mask = batch["attention_mask"].numpy()
  ours = np.asarray(RewardModel(cfg).apply({"params": ckpt.load_params(
      str(tmp_path / "imported"))}, jnp.asarray(batch["input_ids"].numpy()), jnp.asarray(mask)))
  np.testing.assert_allclose(ours, rewards_original, atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_tokenizer_refusals_and_an_export_without_tokenizer(run, tmp_path, capsys):
  """A tokenizer of another size, and a log-prob-readout RM with no tokenizer to find its
  response marker, are refused by name (nothing is written); a checkpoint with nothing around
  it that names its data dir exports without a tokenizer, its card says so, and config.json has
  no special id (GPT-2's default 50256 is outside the vocabulary)."""
  other = tmp_path / "other"
  train_sentencepiece(texts=[world.format_example(p.text, p.reference)
                             for p in world.generate_posts(seed=0, n=60)],
                      model_prefix=str(other / "spm"), config=TokenizerConfig(vocab_size=400))
  gin_file = PRESETS["gpt2"][0]
  args = ["--family", "gpt2", f"--gin_file={gin_file}", f"--gin.VOCAB_SIZE={VOCAB}"]
  for extra, message in (
      (["--tokenizer", str(other)], "has 400 pieces but the model's vocabulary is 512"),
      (["--tokenizer", str(tmp_path)], "no spm.model there"),
      (["--pad_token_id", "600"], "--pad_token_id 600 is outside the vocabulary (0..511)"),
  ):
    out = tmp_path / "refused"
    assert convert.main(["--to", "hf", "--input", str(run / "average" / "warm_2"), "--output",
                         str(out), *args, *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and "nothing was written" in err, err
    assert not out.exists() and not [f for f in os.listdir(tmp_path) if ".tmp-" in f]
  params = ckpt.load_params(str(run / "average" / "warm_2"))
  params["reward_head"]["logprob_kernel"] = np.zeros((3, 1), np.float32)
  ckpt.save_params(params, str(tmp_path / "logprob_rm"))
  assert convert.main(["--to", "hf", "--input", str(tmp_path / "logprob_rm"), "--output",
                       str(tmp_path / "lp"), *args]) == 1
  err = capsys.readouterr().err
  assert "log-prob readout" in err and "--tokenizer DATA_DIR" in err, err
  assert not (tmp_path / "lp").exists()

  ckpt.save_params(ckpt.load_params(str(run / "average" / "warm_2")), str(tmp_path / "bare"))
  summary = _export(capsys, "--input", str(tmp_path / "bare"), "--output",
                    str(tmp_path / "bare_hf"))
  assert summary["tokenizer"] is None and summary["tokenizer_files"] == []
  config = json.loads((tmp_path / "bare_hf" / "config.json").read_text())
  assert (config["pad_token_id"], config["eos_token_id"], config["bos_token_id"]) == (
      None, None, None)
  assert transformers.AutoConfig.from_pretrained(tmp_path / "bare_hf").eos_token_id is None
  assert "--tokenizer DATA_DIR" in (tmp_path / "bare_hf" / "README.md").read_text()


README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _readme_snippets(**paths):
  """The python blocks of README's "Use a WARM reward model elsewhere" marked as run here, with
  the example paths replaced by the fixture's."""
  import re
  with open(README) as f:
    text = f.read()
  blocks = re.findall(r"<!-- README snippet: tests/test_hf_export_text.py runs this block as "
                      r"written[^>]*-->\n```python\n(.*?)```", text, re.S)
  assert len(blocks) == 3, "README's snippets moved: update this test with them"
  for old in paths:
    assert any(old in block for block in blocks), f"README's snippets no longer use {old}"
  out = []
  for block in blocks:
    for old, new in paths.items():
      block = block.replace(old, new)
    out.append(block)
  return out


@pytest.mark.slow
def test_readme_snippets_run_as_written(run, tmp_path, capsys):
  """README's orbax, transformers and TRL blocks, on exports of the fixture's stage dirs: the
  orbax tree is warm-jax's, the transformers rewards equal warm-jax's, and a TRL GRPO step
  runs with the WARM reward function scoring its completions as warm-jax would."""
  _export(capsys, "--input", str(run / "average" / "warm_2"), "--output", str(tmp_path / "rm"))
  _export(capsys, "--input", str(run / "rl" / "warm_2_gpt2"), "--output", str(tmp_path / "sft"))
  orbax_block, transformers_block, trl_block = _readme_snippets(**{
      '"runs/demo/average/warm_6"': f'"{run}/average/warm_2"',
      '"runs/demo/average/warm_6/checkpoint"': f'"{run}/average/warm_2/checkpoint"',
      '"hf/warm_6"': f'"{tmp_path / "rm"}"',
      '"hf/sft"': f'"{tmp_path / "sft"}"', 'output_dir="grpo"': f'output_dir="{tmp_path}/grpo"'})
  namespace: dict = {}
  exec(orbax_block, namespace)  # noqa: S102 - the README's own code
  want = ckpt.load_params(str(run / "average" / "warm_2"))
  np.testing.assert_array_equal(
      np.asarray(namespace["params"]["reward_head"]["kernel"]), want["reward_head"]["kernel"])

  exec(transformers_block, namespace)  # noqa: S102
  sp = spm.SentencePieceProcessor(model_file=str(run / "data" / "clean" / "spm.model"))
  ids = [sp.encode(p) + sp.encode(s) + [1]
         for p, s in zip(namespace["prompts"], namespace["summaries"])]
  np.testing.assert_allclose(namespace["rewards"].numpy(),
                             _warm_jax_rewards(run / "average" / "warm_2", ids),
                             atol=TOLERANCE, rtol=0)

  pytest.importorskip("trl", reason="the TRL block needs trl (pip install -e .[trl])")
  exec(trl_block, namespace)  # noqa: S102
  trainer = namespace["trainer"]
  assert trainer.state.global_step == 1
  logged = [k for entry in trainer.state.log_history for k in entry if "warm_reward" in k]
  assert logged, trainer.state.log_history  # the step's rewards came from warm_reward
  completions = ["friend forgot birthday", "i feel sad", "my friend"]
  prompts = namespace["prompts"] * 3
  ids = [sp.encode(p) + sp.encode(c) + [1] for p, c in zip(prompts, completions)]
  np.testing.assert_allclose(namespace["warm_reward"](prompts, completions),
                             _warm_jax_rewards(run / "average" / "warm_2", ids),
                             atol=TOLERANCE, rtol=0)
