"""A quick in-memory language-modelling corpus: world text -> packed byte-token windows.

Where it sits: the pre-training stage reads a built data dir (`gin/pretrain.gin` binds
`datasets.lm_dataset` to DATA_DIR, SentencePiece tokens made through seqio by
`python -m warm_jax.data.build`). This module is the no-build shortcut for ad-hoc runs and
tests: `pretraining_dataset` tokenises posts of the synthetic world (with their reference
TL;DRs, see `warm_jax.data.world`) with `ByteVocabulary`, joins the documents with EOS and cuts
the stream into windows of `seq_len` tokens, every token a target. Bind it in place of
`lm_dataset` with `train.dataset = @pretraining_dataset()` and VOCAB_SIZE = 259.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from warm_jax.data.batching import ArrayDataset
from warm_jax.data.vocab import ByteVocabulary, Vocabulary


def world_corpus(*, seed: int, num_docs: int, first_index: int = 0) -> list[str]:
  """Posts of the synthetic world followed by their reference TL;DR, one document each."""
  from warm_jax.data import world  # deferred: only corpus builders need the world
  return [world.format_example(p.text, p.reference)
          for p in (world.generate_post(seed=seed, index=first_index + i)
                    for i in range(num_docs))]


def pack_documents(docs: Iterable[str], *, vocabulary: Vocabulary, seq_len: int
                   ) -> dict[str, np.ndarray]:
  """Concatenate [doc tokens, EOS, ...] and cut into [n, seq_len] windows (remainder dropped)."""
  stream: list[int] = []
  for doc in docs:
    stream.extend(vocabulary.encode(doc))
    stream.append(vocabulary.eos_id)
  n = len(stream) // seq_len
  if n == 0:
    raise ValueError(f"the corpus has {len(stream)} tokens, fewer than one window of "
                     f"seq_len={seq_len}: add documents or shorten seq_len")
  tokens = np.asarray(stream[:n * seq_len], np.int32).reshape(n, seq_len)
  if tokens.max() >= vocabulary.vocab_size:
    raise ValueError(f"token id {tokens.max()} >= vocab_size {vocabulary.vocab_size}")
  ones = np.ones_like(tokens)
  return {"tokens": tokens, "mask": ones, "loss_mask": ones}


def pretraining_dataset(*, seq_len: int, num_docs: int = 4000, world_seed: int = 0,
                        data_seed: int = 0, first_index: int = 0, shuffle: bool = True,
                        vocabulary: Vocabulary | None = None) -> ArrayDataset:
  """The pre-training ArrayDataset over posts [first_index, first_index + num_docs)."""
  vocabulary = vocabulary or ByteVocabulary()
  docs = world_corpus(seed=world_seed, num_docs=num_docs, first_index=first_index)
  return ArrayDataset(pack_documents(docs, vocabulary=vocabulary, seq_len=seq_len),
                      seed=data_seed, shuffle=shuffle)
