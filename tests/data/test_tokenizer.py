"""The data dir's SentencePiece tokenizer: size, determinism, round trip, TF-free adapter."""

import os
import pickle
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest
import sentencepiece as spm

from warm_jax.data import preferences as prefs
from warm_jax.data.build import tokenizer_corpus
from warm_jax.data.tokenizer import TokenizerConfig, train_sentencepiece
from warm_jax.data.vocab import EOS_ID, PAD_ID, UNK_ID, SentencePieceVocabulary

TINY_WORLD = dict(n_pretrain_posts=200, n_sft_posts=40, n_train_posts=20, n_train_pairs=40,
                  n_val_posts=0, n_val_pairs=0, n_ood_posts=0, n_ood_pairs=0, n_prompts=0)
ODD_TEXTS = ["Hello WORLD! émoji 🙂 naïve 東京", "line one\nline two\ttab", "", "TL;DR:",
             "tl;dr 123 $%^&*()"]


@pytest.fixture(scope="module")
def splits():
  return prefs.build_splits(config=prefs.WorldConfig(**TINY_WORLD))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, splits):
  prefix = tmp_path_factory.mktemp("spm") / "spm"
  train_sentencepiece(texts=tokenizer_corpus(splits), model_prefix=str(prefix),
                      config=TokenizerConfig())
  return f"{prefix}.model"


def test_model_has_the_configured_size_and_seqio_special_ids(model_path):
  vocab = SentencePieceVocabulary(model_path)
  assert vocab.vocab_size == TokenizerConfig().vocab_size == 1024
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (PAD_ID, EOS_ID, UNK_ID) == (0, 1, 2)
  assert os.path.isfile(model_path.replace(".model", ".vocab"))


def test_training_is_deterministic(tmp_path, splits, model_path):
  prefix = tmp_path / "again"
  train_sentencepiece(texts=tokenizer_corpus(splits), model_prefix=str(prefix),
                      config=TokenizerConfig())
  with open(model_path, "rb") as a, open(f"{prefix}.model", "rb") as b:
    assert a.read() == b.read()


def test_world_text_round_trips_with_one_token_per_word(model_path, splits):
  vocab = SentencePieceVocabulary(model_path)
  words = pieces = 0
  for example in splits.sft_examples:
    text = f"{example.prompt} {example.target}"
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text
    assert UNK_ID not in ids
    # Whitespace-split pieces: the prompt and the summary tokenise the same alone or joined.
    assert vocab.encode(example.prompt) + vocab.encode(example.target) == ids
    body = text.replace("TL;DR:", "")
    words += len(re.findall(r"[a-z0-9]+|[.,?:]", body))
    pieces += len(ids) - len(vocab.encode("TL;DR:"))
  assert pieces / words < 1.02  # every world word (and punctuation mark) is ~one token


def test_any_text_encodes_without_unk_thanks_to_byte_fallback(model_path):
  vocab = SentencePieceVocabulary(model_path)
  for text in ODD_TEXTS:
    ids = vocab.encode(text)
    assert UNK_ID not in ids
    assert vocab.decode(ids) == text
  # The one normalisation: runs of spaces collapse (SentencePiece's remove_extra_whitespaces).
  assert vocab.decode(vocab.encode("  two   spaces  ")) == "two spaces"


def test_adapter_gives_the_ids_of_seqio_sentencepiece_vocabulary(model_path, splits):
  import seqio
  import tensorflow as tf
  ours, theirs = SentencePieceVocabulary(model_path), seqio.SentencePieceVocabulary(model_path)
  assert ours.vocab_size == theirs.vocab_size
  assert (ours.eos_id, ours.unk_id) == (theirs.eos_id, theirs.unk_id)
  texts = [*splits.pretrain_texts[:20], *(p.summary_a for p in splits.rm_train[:20]), *ODD_TEXTS]
  for text in texts:
    ids = ours.encode(text)
    assert ids == list(theirs.encode(text)) == theirs.encode_tf(tf.constant(text)).numpy().tolist()
    # decode: stops at the first EOS, maps out-of-range ids to UNK, ignores padding.
    for tail in ([EOS_ID, 5, 6], [PAD_ID, PAD_ID], [5000, 7]):
      assert ours.decode(ids + tail) == theirs.decode(ids + tail)


def test_too_large_vocab_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="set VOCAB_SIZE to a size this corpus supports"):
    train_sentencepiece(texts=["a b", "b c"], model_prefix=str(tmp_path / "spm"),
                        config=TokenizerConfig(vocab_size=1024))
  with pytest.raises(ValueError, match="model_type"):
    TokenizerConfig(model_type="wordpiece")


def test_adapter_refuses_missing_files_and_other_special_ids(tmp_path, splits):
  with pytest.raises(FileNotFoundError, match="python -m warm_jax.data.build"):
    SentencePieceVocabulary(str(tmp_path / "nope.model"))
  # SentencePiece's own defaults (unk 0, bos 1, eos 2) are not seqio's.
  spm.SentencePieceTrainer.train(sentence_iterator=iter(splits.pretrain_texts[:50]),
                                 model_prefix=str(tmp_path / "default"), vocab_size=100,
                                 minloglevel=2)
  with pytest.raises(ValueError, match="pad/eos/unk ids"):
    SentencePieceVocabulary(str(tmp_path / "default.model"))


def test_adapter_pickles(model_path):
  vocab = SentencePieceVocabulary(model_path)
  clone = pickle.loads(pickle.dumps(vocab))
  assert clone.encode("my bf forgot my birthday") == vocab.encode("my bf forgot my birthday")
