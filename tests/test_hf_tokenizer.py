"""A pretrained model's tokenizer as a Vocabulary / seqio.Vocabulary: the same ids as
transformers (tokenizer.json) and as seqio's own SentencePiece vocabulary (tokenizer.model),
in Python and inside a seqio/tf.data pipeline."""

import json
import os

import pytest

pytest.importorskip("tokenizers", reason="the hf extra (pip install -e .[hf]) is not installed")
pytest.importorskip("transformers", reason="the hf extra is not installed")

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Reward models get hacked during RL.",
         "TL;DR: weight averaged reward models are more robust — héllo wörld 123."] * 10
PROBES = ["The lazy fox, héllo!", "tl;dr: RL 42 zzz", "averaged rewards"]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
  """A byte-level BPE tokenizer.json (GPT-2 style) with pad/eos/bos in tokenizer_config.json."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  path = tmp_path_factory.mktemp("bpe")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(TEXTS, trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<bos>", "<pad>", "<|endoftext|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
      "pad_token": "<pad>", "bos_token": "<bos>"}))
  return path


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
  """A SentencePiece tokenizer.model (Llama / Gemma style, no tokenizer.json)."""
  import sentencepiece as spm
  path = tmp_path_factory.mktemp("spm")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(TEXTS), model_prefix=str(path / "tokenizer"), vocab_size=90,
      model_type="bpe", pad_id=0, eos_id=1, bos_id=2, unk_id=3, hard_vocab_limit=False,
      minloglevel=2)
  os.remove(path / "tokenizer.vocab")
  return path


def test_tokenizer_json_matches_transformers(bpe_dir):
  import transformers
  from warm_jax.hf.tokenizer import HuggingFaceTokenizer
  ours = HuggingFaceTokenizer(str(bpe_dir))
  theirs = transformers.AutoTokenizer.from_pretrained(str(bpe_dir))
  assert ours.kind == "tokenizer.json" and ours.vocab_size == len(theirs) == 300
  assert (ours.eos_id, ours.pad_id, ours.bos_id) == (
      theirs.eos_token_id, theirs.pad_token_id, theirs.bos_token_id) == (2, 1, 0)
  for text in PROBES:
    ids = ours.encode(text)
    assert ids == theirs.encode(text, add_special_tokens=False)
    assert ours.decode(ids + [ours.eos_id, 7, 8]) == theirs.decode(ids) == text
    assert ours.decode([ours.pad_id] + ids) == text


def test_seqio_vocabulary_in_a_seqio_pipeline(bpe_dir, spm_dir):
  import numpy as np
  import seqio
  import tensorflow as tf
  from warm_jax.hf.seqio_vocab import HuggingFaceVocabulary

  vocab = HuggingFaceVocabulary(str(bpe_dir))
  features = {"text": seqio.Feature(vocab, add_eos=True)}
  ds = tf.data.Dataset.from_tensor_slices({"text": PROBES})
  ds = seqio.preprocessors.append_eos(seqio.preprocessors.tokenize(ds, features), features)
  rows = [row["text"].tolist() for row in ds.as_numpy_iterator()]
  assert rows == [vocab.tokenizer.encode(text) + [vocab.eos_id] for text in PROBES]
  batch = tf.ragged.constant(rows).to_tensor(vocab.pad_id)
  assert [t.decode() for t in vocab.decode_tf(batch).numpy()] == PROBES
  assert vocab.vocab_size == 300 and vocab.pad_id == 1

  # tokenizer.model: the same ids as seqio's own SentencePieceVocabulary (TF-text ops).
  spm_vocab = HuggingFaceVocabulary(str(spm_dir))
  reference = seqio.SentencePieceVocabulary(str(spm_dir / "tokenizer.model"))
  assert spm_vocab.tokenizer.kind == "tokenizer.model"
  assert spm_vocab.vocab_size == reference.vocab_size
  assert (spm_vocab.eos_id, spm_vocab.pad_id, spm_vocab.unk_id) == (1, 0, 3)
  for text in PROBES:
    ids = spm_vocab.encode_tf(tf.constant(text)).numpy().tolist()
    assert ids == spm_vocab.encode(text) == reference.encode(text)
    assert ids == reference.encode_tf(tf.constant(text)).numpy().tolist()
    assert spm_vocab.decode(ids) == reference.decode(ids)
    np.testing.assert_array_equal(spm_vocab.decode_tf(tf.constant(ids)).numpy(),
                                  reference.decode_tf(tf.constant(ids)).numpy())


def test_an_import_carries_its_tokenizer(bpe_dir, tmp_path):
  """The files of an HF dir land in CKPT/tokenizer/ and load from there."""
  pytest.importorskip("torch")
  from hf_tiny_models import build
  from warm_jax.hf import importer
  from warm_jax.hf.tokenizer import HuggingFaceTokenizer
  build("gpt2", vocab_size=300).save_pretrained(tmp_path / "hf")
  for name in ("tokenizer.json", "tokenizer_config.json"):
    (tmp_path / "hf" / name).write_bytes((bpe_dir / name).read_bytes())
  importer.import_hf(input_dir=str(tmp_path / "hf"), output=str(tmp_path / "ckpt"))
  tok = HuggingFaceTokenizer(str(tmp_path / "ckpt" / "tokenizer"))
  assert tok.encode(PROBES[0]) == HuggingFaceTokenizer(str(bpe_dir)).encode(PROBES[0])


def test_missing_or_inconsistent_tokenizers_are_clear_errors(tmp_path, bpe_dir):
  from warm_jax.hf import ConversionError
  from warm_jax.hf.tokenizer import HuggingFaceTokenizer
  with pytest.raises(ConversionError, match="has no tokenizer.json or tokenizer.model"):
    HuggingFaceTokenizer(str(tmp_path))
  (tmp_path / "tokenizer.json").write_bytes((bpe_dir / "tokenizer.json").read_bytes())
  # (the AddedToken form of a special token, as older tokenizer configs store it)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "</s>"}}))
  with pytest.raises(ConversionError, match="the eos token '</s>' of the tokenizer config"):
    HuggingFaceTokenizer(str(tmp_path))
