"""A pretrained model's tokenizer (tokenizer.json or SentencePiece tokenizer.model) as a
`Vocabulary`, without TensorFlow.

Where it sits: beside an imported backbone. The data stage must tokenise with the model's own
tokenizer (the imported embedding rows are its ids); `warm_jax.hf.seqio_vocab` wraps this class
as a `seqio.Vocabulary` for seqio tasks, and the TF-free training side (sampling, best-of-N,
RL) can decode with this class directly (`warm_jax.data.vocab.Vocabulary` protocol).

Semantics follow seqio: `encode` adds no special tokens (no BOS, no EOS; seqio features add EOS
themselves), `decode` stops at the first EOS and drops pad ids. Special ids come from
tokenizer_config.json / special_tokens_map.json (token strings looked up in the vocabulary),
else from the SentencePiece model. A tokenizer without a pad token gets pad_id 0, seqio's
convention (padding is always masked, so its id never reaches the model's output).
"""

from __future__ import annotations

import json
import os
from typing import Any

from warm_jax.hf.errors import ConversionError

TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_MODEL = "tokenizer.model"
_SPECIAL = ("pad", "eos", "bos", "unk")


def _token_string(value: Any) -> str | None:
  if isinstance(value, dict):  # AddedToken serialised as {"content": ..., ...}
    value = value.get("content")
  return value if isinstance(value, str) else None


def _special_tokens(directory: str) -> dict[str, str]:
  """{"eos": "<|endoftext|>", ...} from tokenizer_config.json then special_tokens_map.json."""
  found: dict[str, str] = {}
  for name in ("special_tokens_map.json", "tokenizer_config.json"):
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      continue
    with open(path) as f:
      data = json.load(f)
    for kind in _SPECIAL:
      token = _token_string(data.get(f"{kind}_token"))
      if token is not None:
        found[kind] = token
  return found


class HuggingFaceTokenizer:
  """The tokenizer of a model dir (or an import's tokenizer/ dir).

  Args:
    path: a directory holding tokenizer.json (preferred: transformers' fast tokenizer, exact
      ids) or tokenizer.model (SentencePiece), or the path of either file.

  Attributes: vocab_size, pad_id, eos_id, bos_id (None if absent), unk_id (None if absent),
    kind ("tokenizer.json" or "tokenizer.model"), path (the file read).
  """

  def __init__(self, path: str):
    directory, file = (path, None) if os.path.isdir(path) else (os.path.dirname(path), path)
    if file is None:
      for name in (TOKENIZER_JSON, SENTENCEPIECE_MODEL):
        if os.path.isfile(os.path.join(directory, name)):
          file = os.path.join(directory, name)
          break
    if file is None or not os.path.isfile(file):
      raise ConversionError(f"{path} has no {TOKENIZER_JSON} or {SENTENCEPIECE_MODEL}: pass the "
                            "model dir (or the tokenizer/ dir of an import)")
    self.path = file
    self.kind = os.path.basename(file)
    specials = _special_tokens(directory)
    if file.endswith(".json"):
      try:
        import tokenizers
      except ImportError as e:  # pragma: no cover - the hf extra is missing
        raise ConversionError("tokenizer.json needs the `tokenizers` package: pip install -e "
                              "'.[hf]'") from e
      self._tok = tokenizers.Tokenizer.from_file(file)
      self._spm = None
      self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
      lookup = self._tok.token_to_id
      native: dict[str, int | None] = {}
    else:
      import sentencepiece as spm
      self._spm = spm.SentencePieceProcessor(model_file=file)
      self._tok = None
      self.vocab_size = int(self._spm.get_piece_size())
      lookup = self._spm_lookup
      native = {kind: getattr(self._spm, f"{kind}_id")() for kind in _SPECIAL}
      native = {k: (v if v is not None and v >= 0 else None) for k, v in native.items()}
    ids: dict[str, int | None] = {}
    for kind in _SPECIAL:
      token = specials.get(kind)
      ids[kind] = lookup(token) if token is not None else native.get(kind)
      if token is not None and ids[kind] is None:
        raise ConversionError(f"{directory}: the {kind} token {token!r} of the tokenizer config "
                              f"is not in {self.kind}; the tokenizer files disagree")
    if ids["eos"] is None:
      raise ConversionError(f"{directory}: the tokenizer has no EOS token (eos_token in "
                            "tokenizer_config.json); sequences need one to end")
    self.eos_id: int = ids["eos"]
    self.pad_id: int = ids["pad"] if ids["pad"] is not None else 0
    self.bos_id: int | None = ids["bos"]
    self.unk_id: int | None = ids["unk"]

  def _spm_lookup(self, token: str) -> int | None:
    piece = self._spm.piece_to_id(token)
    return piece if self._spm.id_to_piece(piece) == token else None

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, no special tokens added."""
    if self._tok is not None:
      return list(self._tok.encode(text, add_special_tokens=False).ids)
    return list(self._spm.encode_as_ids(text))

  def decode_ids(self, ids) -> str:
    """The text of exactly these ids (special tokens skipped)."""
    ids = [int(i) for i in ids]
    if self._tok is not None:
      return self._tok.decode(ids, skip_special_tokens=True)
    return self._spm.decode_ids(ids)

  def decode(self, ids) -> str:
    """seqio semantics: up to (not including) the first EOS, pad ids dropped."""
    out = []
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      if i != self.pad_id:
        out.append(i)
    return self.decode_ids(out)
