"""Training data from a built data dir, without TensorFlow: token arrays -> `ArrayDataset`.

Where it sits: the stage gins bind these functions (gin/pretrain.gin: `lm_dataset`,
gin/sft.gin: `sft_dataset`; the RM stage `preference_dataset`, best-of-N / RL
`prompt_dataset`) to `DATA_DIR`, a dir written once by `python -m warm_jax.data.build`. They
load `DIR/arrays/<kind>.<split>.npz` (made through the seqio tasks) and wrap it in
`batching.ArrayDataset`, whose batch of step s is a pure function of (seed, s): a resumed run
reads the same batches as an uninterrupted one.

Each loader checks the dir against the stage's configuration: `seq_len` (or `prompt_len`)
must equal the arrays' length and `vocab_size` the tokenizer's, so a model and a data dir built
for different shapes fail at start-up with the fix in the message.

Batches (all int32 unless noted; L = SEQ_LEN, P = PROMPT_LEN, masks 1 = real token):
  lm, sft:      tokens, mask, loss_mask [n, L] right-padded (sft: loss_mask 1 exactly on the
                summary tokens and its EOS)
  preferences:  chosen_tokens, chosen_mask, rejected_tokens, rejected_mask [n, L],
                chosen_response_mask, rejected_response_mask [n, L] (1 on the summary and its
                EOS) and the per-pair metadata of `data_dir.PREFERENCE_METADATA` [n] (gold
                rewards float32)
  prompts:      prompt_tokens, prompt_mask [n, P] LEFT-padded, prompt_index [n]
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Sequence

import numpy as np

from warm_jax.data import data_dir as data_dir_lib
from warm_jax.data.batching import ArrayDataset
from warm_jax.data.vocab import SentencePieceVocabulary

LM_FEATURES = ("tokens", "mask", "loss_mask")
PREFERENCE_TOKEN_FEATURES = ("chosen_tokens", "chosen_mask", "rejected_tokens", "rejected_mask")
# 1 on each side's summary tokens and EOS; data dirs built before they existed lack them (the
# log-prob reward readout needs them, `TransformerConfig.reward_readout`)
PREFERENCE_RESPONSE_FEATURES = ("chosen_response_mask", "rejected_response_mask")
PREFERENCE_FEATURES = PREFERENCE_TOKEN_FEATURES + tuple(data_dir_lib.PREFERENCE_METADATA)
PAIR_SELECTIONS = ("all", "corrupted", "clean")
PROMPT_FEATURES = ("prompt_tokens", "prompt_mask", data_dir_lib.PROMPT_INDEX)
_LENGTH_FEATURE = {"lm": "tokens", "sft": "tokens", "preferences": "chosen_tokens",
                   "prompts": "prompt_tokens"}


def load_vocabulary(data_dir: str) -> SentencePieceVocabulary:
  """The data dir's tokenizer (same ids as seqio.SentencePieceVocabulary on its spm.model)."""
  data_dir_lib.read_meta(data_dir)
  return SentencePieceVocabulary(os.path.join(data_dir, data_dir_lib.SPM_MODEL_FILE))


def load_arrays(data_dir: str, *, kind: str, split: str, length: int | None = None,
                vocab_size: int | None = None) -> dict[str, np.ndarray]:
  """All arrays of one split, checked against the expected length and vocab size."""
  meta = data_dir_lib.read_meta(data_dir)
  name = data_dir_lib.dataset_name(kind, split)
  if vocab_size is not None and vocab_size != meta["vocab_size"]:
    raise data_dir_lib.DataDirError(
        f"VOCAB_SIZE is {vocab_size} but the tokenizer of {data_dir} has {meta['vocab_size']} "
        "pieces: set VOCAB_SIZE (gin/data/common.gin or --gin.VOCAB_SIZE) to "
        f"{meta['vocab_size']}, or rebuild the data with --gin.VOCAB_SIZE={vocab_size}")
  path = data_dir_lib.arrays_path(data_dir, name)
  if not os.path.isfile(path):
    raise data_dir_lib.DataDirError(f"{path} does not exist: the data dir is incomplete; "
                                    f"rebuild it with `{data_dir_lib.BUILD_COMMAND}`")
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise data_dir_lib.DataFormatError(f"{path} is not a readable npz file ({e}): rebuild "
                                       f"the data dir with `{data_dir_lib.BUILD_COMMAND}`"
                                       ) from e
  stored = arrays[_LENGTH_FEATURE[kind]].shape[1]
  if length is not None and length != stored:
    macro = "PROMPT_LEN" if kind == "prompts" else "SEQ_LEN"
    raise data_dir_lib.DataDirError(
        f"{macro} is {length} but {path} holds sequences of {stored} tokens: set {macro}="
        f"{stored} (gin/data/common.gin), or rebuild the data with --gin.{macro}={length}")
  return arrays


def _dataset(arrays: dict[str, np.ndarray], features: Sequence[str], *, path: str, seed: int,
             shuffle: bool) -> ArrayDataset:
  missing = [f for f in features if f not in arrays]
  if missing:
    raise data_dir_lib.DataDirError(f"{path} has no feature(s) {missing} (it has "
                                    f"{sorted(arrays)}): choose features among those")
  if not len(arrays[features[0]]):
    raise data_dir_lib.DataDirError(f"{path} has no examples: the build's WorldConfig gave "
                                    "this split zero posts or pairs")
  return ArrayDataset({f: arrays[f] for f in features}, seed=seed, shuffle=shuffle)


def _load(kind: str, *, data_dir: str, split: str, features: Sequence[str], seed: int,
          shuffle: bool, length: int | None, vocab_size: int | None) -> ArrayDataset:
  arrays = load_arrays(data_dir, kind=kind, split=split, length=length, vocab_size=vocab_size)
  path = data_dir_lib.arrays_path(data_dir, data_dir_lib.dataset_name(kind, split))
  return _dataset(arrays, tuple(features), path=path, seed=seed, shuffle=shuffle)


def lm_dataset(*, data_dir: str | None, split: str = "train", seed: int = 0,
               shuffle: bool = True, seq_len: int | None = None,
               vocab_size: int | None = None) -> ArrayDataset:
  """Packed pre-training windows {tokens, mask, loss_mask} [n, L] (every token a target)."""
  return _load("lm", data_dir=data_dir, split=split, features=LM_FEATURES, seed=seed,
               shuffle=shuffle, length=seq_len, vocab_size=vocab_size)


def sft_dataset(*, data_dir: str | None, split: str = "train", seed: int = 0,
                shuffle: bool = True, seq_len: int | None = None,
                vocab_size: int | None = None) -> ArrayDataset:
  """SFT examples {tokens, mask, loss_mask} [n, L]: prompt then summary + EOS, right-padded;
  loss_mask is 1 only on the summary and its EOS."""
  return _load("sft", data_dir=data_dir, split=split, features=LM_FEATURES, seed=seed,
               shuffle=shuffle, length=seq_len, vocab_size=vocab_size)


def preference_dataset(*, data_dir: str | None, split: str = "rm_train", seed: int = 0,
                       shuffle: bool = True, seq_len: int | None = None,
                       vocab_size: int | None = None,
                       features: Sequence[str] | None = None,
                       pairs: str = "all",
                       length_buckets: Sequence[int] | None = None) -> ArrayDataset:
  """Preference pairs: chosen/rejected tokens, masks and response masks [n, L] plus per-pair
  metadata [n].

  split: one of `data_dir.SPLITS['preferences']` (rm_train, id_val, ood; id_policy and
    ood_policy in an on-policy RM data dir). features: the subset to keep (default: tokens,
    masks, the response masks when the dir has them, and every metadata array).
  pairs: 'all', or only the 'corrupted' / 'clean' pairs (label corruption; e.g. the training
    set's corrupted pairs, evaluated along training to see how much of the corruption a reward
    model memorises).
  length_buckets: training batches of pairs of similar length, cut to the bucket's width
    (`batching.ArrayDataset`; a pair's length is its longer side's), e.g. (88, 96, 104, 112,
    128); None: every batch full width.
  """
  if pairs not in PAIR_SELECTIONS:
    raise ValueError(f"preference_dataset pairs={pairs!r}: use one of {PAIR_SELECTIONS}")
  arrays = load_arrays(data_dir, kind="preferences", split=split, length=seq_len,
                       vocab_size=vocab_size)
  path = data_dir_lib.arrays_path(data_dir, data_dir_lib.dataset_name("preferences", split))
  if features is None:
    features = (PREFERENCE_TOKEN_FEATURES
                + tuple(f for f in PREFERENCE_RESPONSE_FEATURES if f in arrays)
                + tuple(data_dir_lib.PREFERENCE_METADATA))
  if pairs != "all":
    corrupted = arrays["corrupted"].astype(bool)
    rows = corrupted if pairs == "corrupted" else ~corrupted
    arrays = {k: v[rows] for k, v in arrays.items()}
    if not rows.any():
      raise data_dir_lib.DataDirError(f"{path} has no {pairs} pairs: build the data with "
                                      "label corruption (CORRUPTION_RATE > 0) or use pairs="
                                      "'all'")
  dataset = _dataset(arrays, tuple(features), path=path, seed=seed, shuffle=shuffle)
  if length_buckets is None:
    return dataset
  lengths = np.maximum(arrays["chosen_mask"].sum(1), arrays["rejected_mask"].sum(1))
  return dataclasses.replace(dataset, length_buckets=tuple(int(w) for w in length_buckets),
                             lengths=lengths)


def prompt_dataset(*, data_dir: str | None, split: str = "train", seed: int = 0,
                   shuffle: bool = True, prompt_len: int | None = None,
                   vocab_size: int | None = None,
                   features: Sequence[str] | None = None) -> ArrayDataset:
  """Prompts for decoding: prompt_tokens, prompt_mask [n, P] LEFT-padded and prompt_index [n]
  (the line of the prompt in text/prompts.<split>.jsonl: its post_id, for the gold reward)."""
  return _load("prompts", data_dir=data_dir, split=split, features=features or PROMPT_FEATURES,
               seed=seed, shuffle=shuffle, length=prompt_len, vocab_size=vocab_size)
