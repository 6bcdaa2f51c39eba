"""Token vocabularies usable without TensorFlow in the training processes.

Where it sits: the data stage tokenises text once into fixed-shape arrays; the trainer never
imports TF. `ByteVocabulary` has exactly the ids of `seqio.ByteVocabulary` (0 pad, 1 eos,
2 unk, byte b -> b + 3), so arrays built here and by seqio tasks agree; the SentencePiece
vocabulary trained on the world's corpus (data issue) implements the same small protocol.
"""

from __future__ import annotations

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
