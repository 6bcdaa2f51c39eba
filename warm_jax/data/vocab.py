"""Token vocabularies usable without TensorFlow in the training processes.

Where it sits: the data stage (`python -m warm_jax.data.build`) tokenises text once, through
seqio, into fixed-shape arrays; the trainer, best-of-N and RL never import TF. They decode and
encode with the classes here, which give exactly the ids of their seqio twins:
- `SentencePieceVocabulary(path)`: the SentencePiece model a data dir holds (`spm.model`,
  trained by `warm_jax.data.tokenizer`), read with the `sentencepiece` library; the same ids as
  `seqio.SentencePieceVocabulary(path)` (no extra ids), including decode stopping at EOS.
- `ByteVocabulary`: the ids of `seqio.ByteVocabulary` (0 pad, 1 eos, 2 unk, byte b -> b + 3),
  used by the quick in-memory pre-training corpus of `lm_data`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Protocol

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2


class Vocabulary(Protocol):
  vocab_size: int
  pad_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: list[int]) -> str: ...


class ByteVocabulary:
  """UTF-8 bytes as tokens, ids compatible with seqio.ByteVocabulary."""

  _OFFSET = 3
  vocab_size = 256 + _OFFSET
  pad_id = PAD_ID
  eos_id = EOS_ID

  def encode(self, text: str) -> list[int]:
    return [b + self._OFFSET for b in text.encode("utf-8")]

  def decode(self, ids) -> str:
    out = bytearray()
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      if i >= self._OFFSET:
        out.append(i - self._OFFSET)
    return out.decode("utf-8", errors="replace")


class SentencePieceVocabulary:
  """A SentencePiece model as a `Vocabulary`, without TensorFlow.

  Mirrors `seqio.SentencePieceVocabulary(model_path)` (extra_ids=0): `encode` is
  `EncodeAsIds` (no EOS added), `decode` maps ids >= vocab_size to UNK and stops at the first
  EOS. The model must reserve seqio's special ids: pad 0, eos 1, unk 2.
  """

  def __init__(self, model_path: str):
    import sentencepiece as spm  # deferred: ByteVocabulary users need not load it
    if not os.path.isfile(model_path):
      raise FileNotFoundError(
          f"SentencePiece model {model_path} does not exist: pass the spm.model of a data dir "
          "written by `python -m warm_jax.data.build`")
    self.model_path = model_path
    self._processor = spm.SentencePieceProcessor(model_file=model_path)
    self.vocab_size = int(self._processor.get_piece_size())
    self.eos_id = int(self._processor.eos_id())
    self.unk_id = int(self._processor.unk_id())
    self.pad_id = int(self._processor.pad_id())
    if (self.pad_id, self.eos_id, self.unk_id) != (PAD_ID, EOS_ID, UNK_ID):
      raise ValueError(
          f"SentencePiece model {model_path} has pad/eos/unk ids {self.pad_id}/{self.eos_id}/"
          f"{self.unk_id}, but seqio and the trainer expect {PAD_ID}/{EOS_ID}/{UNK_ID}: "
          "train it with warm_jax.data.tokenizer.train_sentencepiece")

  def encode(self, text: str) -> list[int]:
    return list(self._processor.encode(text))

  def decode(self, ids: Iterable[int]) -> str:
    clean = [self.unk_id if int(i) >= self.vocab_size else int(i) for i in ids]
    if self.eos_id in clean:
      clean = clean[:clean.index(self.eos_id)]
    return self._processor.decode(clean)

  def id_to_piece(self, token_id: int) -> str:
    return self._processor.id_to_piece(int(token_id))

  def __getstate__(self):  # picklable (multiprocessing, gin deep copies): reload from the file
    return {"model_path": self.model_path}

  def __setstate__(self, state):
    self.__init__(state["model_path"])

  def __repr__(self) -> str:
    return f"SentencePieceVocabulary({self.model_path!r}, vocab_size={self.vocab_size})"
