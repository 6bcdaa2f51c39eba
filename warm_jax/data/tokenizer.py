"""The SentencePiece tokenizer of a data dir, trained on the synthetic world's own text.

Where it sits: `python -m warm_jax.data.build` trains it once (no download) on the training
texts of the world (pre-training corpus, SFT examples, RM-train summaries), writes
`DIR/spm.model` + `DIR/spm.vocab`, and every later program reads the same file: seqio tasks
through `seqio.SentencePieceVocabulary`, the TF-free trainer through
`warm_jax.data.vocab.SentencePieceVocabulary` (identical ids).

The choice (measured on the default world, see docs/data.md):
- BPE with byte fallback, 1024 pieces: 3 specials (pad 0, eos 1, unk 2, seqio's convention;
  no BOS), 256 byte pieces (so ANY text, e.g. real Reddit posts or odd unicode, encodes without
  UNK) and ~765 merges. The world writes only ~280 distinct words, so 1024 BPE pieces make every
  one of them a single token: a post + "TL;DR:" + reference is ~86 tokens, one per word or
  punctuation mark, which is what a small copy-friendly policy wants.
- Unigram was rejected: on this corpus it cannot reach 1024 pieces when pieces stop at
  whitespace (it caps at ~616) and at 616 it splits words (~122 tokens per SFT example).
  Pieces crossing whitespace were rejected too: with them encode(prompt) + encode(summary)
  differs from encode(prompt + " " + summary), so a summary scored after its prompt would not
  be tokenised like the same text in the pre-training corpus.
- Identity normalisation (the text is kept byte for byte; "TL;DR:" keeps its case), one
  training thread, and a model trained in memory (SentencePiece would otherwise record the
  output path in it): the same texts give a byte-identical spm.model wherever it is built.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Iterable

from warm_jax.data.vocab import EOS_ID, PAD_ID, UNK_ID, SentencePieceVocabulary

MODEL_TYPES = ("bpe", "unigram")
# Longest training sentence in bytes: above SentencePiece's 4192 default so real TL;DR posts
# (up to ~10k characters) are not skipped when a tokenizer is trained on them.
MAX_SENTENCE_BYTES = 16384


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  """How the data dir's SentencePiece model is trained.

  Attributes:
    vocab_size: exact number of pieces (including pad, eos, unk and, with byte_fallback, the
      256 byte pieces); the stage gins' VOCAB_SIZE must equal it (gin/data/common.gin).
    model_type: "bpe" (default) or "unigram".
    byte_fallback: encode characters never seen in training as UTF-8 bytes instead of UNK.
  """

  vocab_size: int = 1024
  model_type: str = "bpe"
  byte_fallback: bool = True

  def __post_init__(self):
    if self.model_type not in MODEL_TYPES:
      raise ValueError(f"TokenizerConfig.model_type={self.model_type!r}: use one of "
                       f"{MODEL_TYPES}")
    specials = 3 + (256 if self.byte_fallback else 0)
    if not isinstance(self.vocab_size, int) or self.vocab_size <= specials:
      raise ValueError(f"TokenizerConfig.vocab_size={self.vocab_size!r}: must be an int above "
                       f"the {specials} special and byte pieces")


def train_sentencepiece(*, texts: Iterable[str], model_prefix: str,
                        config: TokenizerConfig) -> SentencePieceVocabulary:
  """Trains on `texts`, writes `<model_prefix>.model` and `.vocab`, returns the vocabulary.

  Raises ValueError if the corpus cannot support `config.vocab_size` pieces (the message says
  the largest size it supports) or if the trained model's size or special ids are off.
  """
  import sentencepiece as spm  # deferred: only the data build trains tokenizers

  texts = [t for t in texts if t]
  if not texts:
    raise ValueError("train_sentencepiece got no non-empty texts: the world config produced "
                     "an empty corpus; raise WorldConfig.n_pretrain_posts")
  os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
  # Trained into memory: with `model_prefix` SentencePiece would record the output path in the
  # model, and two builds in different dirs would write different bytes.
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model,
        vocab_size=config.vocab_size, model_type=config.model_type,
        byte_fallback=config.byte_fallback, character_coverage=1.0,
        normalization_rule_name="identity", pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID,
        bos_id=-1, num_threads=1, max_sentence_length=MAX_SENTENCE_BYTES, minloglevel=2)
  except RuntimeError as e:
    raise ValueError(
        f"SentencePiece could not train a {config.vocab_size}-piece {config.model_type} model "
        f"on {len(texts)} texts ({e}): set VOCAB_SIZE to a size this corpus supports (the "
        "bound is in SentencePiece's message; VOCAB_SIZE lives in gin/data/common.gin, shared "
        "with the stage gins) or build a larger world") from e
  with open(f"{model_prefix}.model", "wb") as f:
    f.write(model.getvalue())
  processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
  with open(f"{model_prefix}.vocab", "w", encoding="utf-8") as f:  # for people: piece, score
    for i in range(processor.get_piece_size()):
      f.write(f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n")
  vocabulary = SentencePieceVocabulary(f"{model_prefix}.model")
  if vocabulary.vocab_size != config.vocab_size:
    raise ValueError(f"trained SentencePiece model {model_prefix}.model has "
                     f"{vocabulary.vocab_size} pieces, not the configured {config.vocab_size}")
  return vocabulary
