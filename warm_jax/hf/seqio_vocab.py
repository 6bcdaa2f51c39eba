"""`HuggingFaceVocabulary`: a pretrained model's tokenizer as a `seqio.Vocabulary`.

Where it sits: the data stage's seqio tasks (`warm_jax.data.synthetic_tasks`,
`warm_jax.data.tldr_tasks` take a `vocabulary=`) tokenise with it, so the arrays hold the ids
of the imported backbone's embedding. Python encoding and decoding go through
`warm_jax.hf.tokenizer.HuggingFaceTokenizer`; the TF versions call the same code through
`tf.numpy_function`, so both give identical ids. This module imports TensorFlow (seqio).
"""

from __future__ import annotations

import numpy as np
import seqio
import tensorflow as tf

from warm_jax.hf.tokenizer import HuggingFaceTokenizer


class HuggingFaceVocabulary(seqio.Vocabulary):
  """seqio view of `HuggingFaceTokenizer(path)` (tokenizer.json or tokenizer.model)."""

  def __init__(self, path: str, extra_ids: int = 0):
    self.tokenizer = HuggingFaceTokenizer(path)
    self.path = path
    super().__init__(extra_ids=extra_ids)

  @property
  def eos_id(self) -> int:
    return self.tokenizer.eos_id

  @property
  def pad_id(self) -> int:
    return self.tokenizer.pad_id

  @property
  def unk_id(self) -> int | None:
    return self.tokenizer.unk_id

  @property
  def bos_id(self) -> int | None:
    return self.tokenizer.bos_id

  @property
  def _base_vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def _encode(self, s: str) -> list[int]:
    return self.tokenizer.encode(s)

  def _decode(self, ids) -> str:
    return self.tokenizer.decode_ids(i for i in ids if int(i) != self.pad_id
                                     and int(i) != self.eos_id)

  def _encode_one(self, s) -> np.ndarray:
    text = s.item() if isinstance(s, np.ndarray) else s  # numpy_function passes a 0-d array
    return np.asarray(self._encode(text.decode("utf-8")), np.int32)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """A scalar string -> [length] int32; a vector of strings -> a RaggedTensor."""
    def one(text):
      ids = tf.numpy_function(self._encode_one, [text], tf.int32, stateful=False)
      ids.set_shape([None])
      return ids
    if s.shape.rank == 0:
      return one(s)
    return tf.map_fn(one, s, fn_output_signature=tf.RaggedTensorSpec([None], tf.int32))

  def _decode_one(self, ids: np.ndarray) -> bytes:
    return self._decode([int(i) for i in ids]).encode("utf-8")

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """[length] ids -> a scalar string; [batch, length] -> [batch] strings."""
    def one(row):
      text = tf.numpy_function(self._decode_one, [row], tf.string, stateful=False)
      text.set_shape([])
      return text
    if ids.shape.rank == 1:
      return one(ids)
    return tf.map_fn(one, ids, fn_output_signature=tf.TensorSpec([], tf.string))

  def __eq__(self, other) -> bool:
    return (isinstance(other, HuggingFaceVocabulary)
            and self.tokenizer.path == other.tokenizer.path and self.extra_ids == other.extra_ids)

  def __hash__(self) -> int:
    return hash((self.tokenizer.path, self.extra_ids))
