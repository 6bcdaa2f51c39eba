"""A reward model with the log-prob readout (reward_readout='hidden_logprob', the embedded
default's) exported from a stage dir and scored on raw text by transformers alone, through the
custom class the export ships (modeling_warm_reward.py, trust_remote_code=True).

warm-jax's side is computed independently of the exported class's separator search: the
sequences and their response masks come from warm-jax's own data path for scoring candidates
(`sampling.candidate_sequences`: left-padded prompt ids, then the summary ids and EOS, response
mask 1 on those), scored by `RewardScorer` (as evaluation and best-of-N do) with the config
the members were trained with (a logprob_window as the embedded default's).
"""

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="the hf extra (pip install -e .[hf]) is not installed")
pytest.importorskip("transformers", reason="the hf extra is not installed")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import sentencepiece as spm  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from test_hf_export_text import (PRESETS, TOLERANCE, VOCAB, _model_dir,  # noqa: E402
                                 _readme_snippets, _texts)
from warm_jax import average, convert  # noqa: E402
from warm_jax.core import checkpoints as ckpt  # noqa: F401
from warm_jax.data import world  # noqa: E402
from warm_jax.data.tokenizer import TokenizerConfig, train_sentencepiece  # noqa: E402
from warm_jax.hf import modeling_warm_reward  # noqa: E402
from warm_jax.models import RewardModel, TransformerConfig  # noqa: E402
from warm_jax.models.heads import init_inputs  # noqa: E402
from warm_jax.core.partitioning import Partitioner  # noqa: F401
from warm_jax.policy.sampling import candidate_sequences  # noqa: F401
from warm_jax.rm.scoring import RewardScorer  # noqa: F401

TAU = 0.5  # not TransformerConfig's default 0.25: the export must take it from config.gin
WINDOW = 64
GEMMA = ("gin/models/gemma_tiny.gin", dict(
    d_model=64, num_layers=2, num_heads=4, num_kv_heads=1, head_dim=32, mlp_dim=128,
    max_len=256, norm="rmsnorm", positions="rotary", mlp_activation="geglu",
    tie_embeddings=True, use_bias=False, norm_scale_offset=1.0, scale_embeddings=True))
FAMILIES = {**PRESETS, "gemma": GEMMA}


def _config(family):
  return TransformerConfig(vocab_size=VOCAB, reward_readout="hidden_logprob",
                           logprob_softmin_temperature=TAU, logprob_window=WINDOW,
                           **FAMILIES[family][1])


def _rm_params(config, seed):
  """A RewardModel of the log-prob readout, weights moved off the init, and a reward head
  whose every part matters: a hidden kernel, a log-prob kernel and a bias of order 1."""
  module = RewardModel(config)
  params = nn.unbox(module.init(jax.random.key(seed), *init_inputs(module))["params"])
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda x: (np.asarray(x) + 0.05 * rng.standard_normal(x.shape)
                                   ).astype(np.float32), params)
  params["reward_head"] = {
      "kernel": rng.standard_normal((config.d_model, 1)).astype(np.float32),
      "bias": np.array([0.7 + seed], np.float32),
      "logprob_kernel": np.array([[0.3], [-0.4], [0.02]], np.float32) * (1 + seed)}
  return params


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  data = tmp_path_factory.mktemp("lp_runs") / "demo" / "data" / "clean"
  posts = world.generate_posts(seed=0, n=60)
  train_sentencepiece(texts=[world.format_example(p.text, p.reference) for p in posts],
                      model_prefix=str(data / "spm"), config=TokenizerConfig(vocab_size=VOCAB))
  (data / "meta.json").write_text(json.dumps(
      {"vocab_size": VOCAB, "tasks": {"preferences": "synthetic_tldr_preferences"}}))
  return data


def _member(path, config, seed, data_dir):
  """A member's MODEL_DIR: checkpoint + the operative config.gin lines the export reads."""
  params = _rm_params(config, seed)
  _model_dir(path, params, step=30 + seed, data_dir=data_dir)
  gin = (path / "config.gin").read_text()
  (path / "config.gin").write_text(
      gin + "TransformerConfig.logprob_softmin_temperature = 0.5\n"
      "TransformerConfig.reward_readout = 'hidden_logprob'\n")
  return params


def _pairs():
  """(prompt, summary) of held-out posts of different lengths, one with an odd summary, one
  whose post itself contains the marker (the response starts after the LAST one)."""
  pairs = _texts(4)
  post = "i wrote TL;DR: at the top of my notes. my friend forgot my birthday and i feel sad."
  pairs.append((world.format_prompt(post), "friend forgot birthday, i feel sad"))
  return pairs


def _warm_jax_rewards(config, params_dir, sp, pairs):
  """warm-jax on its own data path: left-padded prompt ids + right-padded summary ids and EOS
  (candidate_sequences), response mask 1 on the summary and EOS, RewardScorer."""
  prompts = [sp.encode(p) for p, _ in pairs]
  responses = [sp.encode(s) + [sp.eos_id()] for _, s in pairs]
  width_p, width_r = max(map(len, prompts)), max(map(len, responses))
  p_tok, p_mask = np.zeros((len(pairs), width_p), np.int32), np.zeros((len(pairs), width_p),
                                                                      np.int32)
  r_tok, r_mask = np.zeros((len(pairs), width_r), np.int32), np.zeros((len(pairs), width_r),
                                                                      np.int32)
  for i, (p, r) in enumerate(zip(prompts, responses)):
    p_tok[i, width_p - len(p):], p_mask[i, width_p - len(p):] = p, 1
    r_tok[i, :len(r)], r_mask[i, :len(r)] = r, 1
  tokens, mask, response = candidate_sequences(p_tok, p_mask, r_tok, r_mask,
                                               eos_id=sp.eos_id())
  scorer = RewardScorer(model_config=config, partitioner=Partitioner(), batch_size=8)
  return scorer.rewards(scorer.place(ckpt.load_params(str(params_dir))), tokens, mask,
                        response)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_log_prob_readout_rm_scores_raw_text_in_transformers_as_warm_jax(
    data_dir, tmp_path, capsys, family):
  """gpt2 (the embedded default's family): WARM of two members (average/warm_2); llama
  (untied lm_head) and gemma: a member's stage dir. Exported with the model preset only (the
  readout and tau come from the checkpoint and the members' config.gin), loaded by
  AutoTokenizer + AutoModelForSequenceClassification(trust_remote_code=True): identical ids,
  rewards equal to warm-jax's to 1e-5, and not without trust_remote_code."""
  config = _config(family)
  root = tmp_path / "demo"
  (root / "commands.sh").parent.mkdir(parents=True)
  (root / "commands.sh").write_text("# stages\n")
  members = [root / "members" / "clean" / f"member_{i}" for i in range(2 if family == "gpt2"
                                                                       else 1)]
  for i, member in enumerate(members):
    _member(member, config, i, data_dir)
  if family == "gpt2":
    stage = root / "average" / "warm_2"
    assert average.main(["--inputs", *map(str, members), "--output",
                         str(stage / "checkpoint")]) == 0
  else:
    stage = members[0]
  out = tmp_path / "hf"
  gin_file, _ = FAMILIES[family]
  assert convert.main(["--to", "hf", "--input", str(stage), "--output", str(out), "--family",
                       family, f"--gin_file={gin_file}", f"--gin.VOCAB_SIZE={VOCAB}"]) == 0, \
      capsys.readouterr().err
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  sp = spm.SentencePieceProcessor(model_file=str(data_dir / "spm.model"))
  marker = sp.encode("TL;DR:")
  assert summary["head"] == "reward_logprob"
  assert summary["readout"]["tau"] == TAU and "config.gin" in summary["readout"]["tau_source"]
  hf_config = json.loads((out / "config.json").read_text())
  assert hf_config["model_type"] == f"warm_reward_{family}"
  assert hf_config["warm_response_separator_ids"] == marker
  assert hf_config["warm_logprob_softmin_temperature"] == TAU
  assert (out / "modeling_warm_reward.py").is_file()
  assert summary["readout"]["modeling_file"] == "modeling_warm_reward.py"
  card = (out / "README.md").read_text()
  assert "trust_remote_code=True" in card and "log-prob readout" in card, card
  if family == "gpt2":
    assert "(uniform) of 2 reward models" in card
    # a gin config that names the readout with another tau than the members were trained with
    assert convert.main(["--to", "hf", "--input", str(stage), "--output", str(tmp_path / "x"),
                         "--family", family, f"--gin_file={gin_file}",
                         f"--gin.VOCAB_SIZE={VOCAB}",
                         "--gin.TransformerConfig.reward_readout='hidden_logprob'"]) == 1
    err = capsys.readouterr().err
    assert "logprob_softmin_temperature=0.25 but the model was trained with 0.5" in err, err
    assert not (tmp_path / "x").exists()

  with pytest.raises(ValueError, match="trust_remote_code"):
    transformers.AutoModelForSequenceClassification.from_pretrained(out,
                                                                    trust_remote_code=False)
  # trust_remote_code for the tokenizer too: AutoTokenizer reads config.json's AutoConfig
  tokenizer = transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=True)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(
      out, trust_remote_code=True).eval()
  assert type(model).__name__ == f"WarmReward{dict(gpt2='GPT2').get(family, family.title())}"
  pairs = _pairs()
  want_ids = [sp.encode(p) + sp.encode(s) + [sp.eos_id()] for p, s in pairs]
  assert tokenizer([f"{p} {s}" for p, s in pairs])["input_ids"] == want_ids
  assert want_ids[-1].count(marker[0]) >= 2  # the post's own marker precedes the prompt's
  batch = tokenizer([f"{p} {s}" for p, s in pairs], padding=True, return_tensors="pt")
  assert len(set(batch["attention_mask"].sum(1).tolist())) > 2  # rows of several lengths
  with torch.no_grad():
    theirs = model(**batch).logits[:, 0].numpy()
  ours = _warm_jax_rewards(config, stage, sp, pairs)
  assert np.ptp(ours) > 0.1
  np.testing.assert_allclose(theirs, ours, atol=TOLERANCE, rtol=0)
  print(f"{family}: max |reward difference| {np.abs(theirs - ours).max():.2e}")

  # every term of the reward matters: without the log-prob term transformers would be far off
  params = ckpt.load_params(str(stage))
  no_lp = dict(params, reward_head=dict(params["reward_head"],
                                        logprob_kernel=np.zeros((3, 1), np.float32)))
  ckpt.save_params(no_lp, str(tmp_path / "no_lp"))
  assert np.abs(_warm_jax_rewards(config, tmp_path / "no_lp", sp, pairs) - ours).min() > 0.1

  if family == "gpt2":  # the embedded default's family: the pipeline and README's block too
    scorer = transformers.pipeline("text-classification", model=str(out), device="cpu",
                                   function_to_apply="none", trust_remote_code=True)
    piped = [r["score"] for r in scorer([f"{p} {s}" for p, s in pairs])]
    np.testing.assert_allclose(piped, ours, atol=TOLERANCE, rtol=0)
    # imported back (an RM of the log-prob readout, its tau) and exported again: same rewards
    assert convert.main(["--from", "hf", "--input", str(out), "--output",
                         str(tmp_path / "imported")]) == 0, capsys.readouterr().err
    gin = (tmp_path / "imported" / "model.gin").read_text()
    assert "TransformerConfig.reward_readout = 'hidden_logprob'" in gin
    assert f"TransformerConfig.logprob_softmin_temperature = {TAU}" in gin
    assert convert.main(["--to", "hf", "--input", str(tmp_path / "imported"), "--output",
                         str(tmp_path / "back")]) == 0, capsys.readouterr().err
    back = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "back", trust_remote_code=True).eval()
    assert json.loads((tmp_path / "back" / "config.json").read_text())[
        "warm_response_separator_ids"] == marker
    with torch.no_grad():
      np.testing.assert_allclose(back(**batch).logits[:, 0].numpy(), ours, atol=TOLERANCE,
                                 rtol=0)
    # README's transformers block, as written, on this export
    _, transformers_block, _ = _readme_snippets(**{'"hf/warm_6"': f'"{out}"'})
    namespace: dict = {}
    exec(transformers_block, namespace)  # noqa: S102 - the README's own code
    np.testing.assert_allclose(
        namespace["rewards"].numpy(), _warm_jax_rewards(
            config, stage, sp, list(zip(namespace["prompts"], namespace["summaries"]))),
        atol=TOLERANCE, rtol=0)


def test_response_mask_starts_after_the_last_separator():
  """The custom class's response: real tokens after the last occurrence of the separator ids
  (the marker inside a post does not start it; a partial match does not count; padding is
  never response); a row without the separator is refused by index."""
  sep = [7, 8]
  ids = torch.tensor([[3, 7, 8, 4, 7, 8, 5, 1, 0, 0],     # marker in the post, then the prompt's
                      [3, 4, 7, 8, 5, 6, 1, 0, 0, 0],     # one marker
                      [7, 3, 8, 7, 8, 5, 8, 7, 1, 0],     # partial matches around it
                      [3, 7, 8, 1, 0, 7, 8, 0, 0, 0]])    # "marker" ids in the padding
  real = torch.tensor([[1] * 8 + [0] * 2, [1] * 7 + [0] * 3, [1] * 9 + [0], [1] * 4 + [0] * 6]
                      ).bool()
  got = modeling_warm_reward.response_mask_from_ids(ids, real, sep).int().tolist()
  assert got == [[0, 0, 0, 0, 0, 0, 1, 1, 0, 0],
                 [0, 0, 0, 0, 1, 1, 1, 0, 0, 0],
                 [0, 0, 0, 0, 0, 1, 1, 1, 1, 0],
                 [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]]
  with pytest.raises(ValueError, match="row 1 has no response separator"):
    modeling_warm_reward.response_mask_from_ids(ids[:2], real[:2], [8, 4])
