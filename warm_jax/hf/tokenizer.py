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

The other direction, for the export (after the pipeline): `write_sentencepiece_as_hf` writes a
data dir's SentencePiece model (`warm_jax.data.tokenizer`) as tokenizer.json +
tokenizer_config.json that transformers' AutoTokenizer loads with identical ids.
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


# --- The world's SentencePiece model as Hugging Face tokenizer files (the export) --------------

HF_TOKENIZER_CONFIG = "tokenizer_config.json"
_SPM_NORMAL, _SPM_UNKNOWN, _SPM_CONTROL, _SPM_BYTE = 1, 2, 3, 6  # SentencePiece piece types


def _spm_proto(model_path: str):
  from sentencepiece import sentencepiece_model_pb2
  proto = sentencepiece_model_pb2.ModelProto()
  with open(model_path, "rb") as f:
    proto.ParseFromString(f.read())
  return proto


def sentencepiece_tokenizer_json(model_path: str, *, append_eos: bool):
  """A `tokenizers.Tokenizer` that gives exactly the ids of the SentencePiece BPE model
  `model_path` (`warm_jax.data.tokenizer`: identity normalisation, byte fallback, pieces that
  never cross whitespace), with EOS appended when `append_eos` (how a reward model reads a
  sequence: post, TL;DR:, summary, EOS).

  SentencePiece's own normalisation is rebuilt from the model's normalizer_spec: spaces at the
  ends dropped and runs of spaces collapsed (remove_extra_whitespaces), one leading space added
  (add_dummy_prefix), spaces written as U+2581; then words split before each U+2581, and BPE
  merges ranked like SentencePiece's piece scores (a piece earlier in the vocabulary merges
  first). Characters outside the vocabulary become their UTF-8 byte pieces.
  """
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
  from tokenizers import pre_tokenizers, processors
  proto = _spm_proto(model_path)
  trainer, norm = proto.trainer_spec, proto.normalizer_spec
  if trainer.model_type != 2:  # BPE
    raise ConversionError(f"{model_path} is a SentencePiece model of type {trainer.model_type}, "
                          "not BPE: only the BPE tokenizers warm_jax.data.tokenizer trains "
                          "(TokenizerConfig.model_type='bpe') can be exported")
  if norm.name != "identity" or norm.precompiled_charsmap or not norm.escape_whitespaces \
      or trainer.treat_whitespace_as_suffix or not trainer.split_by_whitespace:
    raise ConversionError(f"{model_path}: normalisation {norm.name!r} (or whitespace handling) "
                          "is not the identity BPE of warm_jax.data.tokenizer; this exporter "
                          "cannot reproduce its ids")
  pieces = list(proto.pieces)
  vocab = {p.piece: i for i, p in enumerate(pieces)}
  normal = {p.piece for p in pieces if p.type == _SPM_NORMAL}
  merges = []
  for i, piece in enumerate(pieces):
    if piece.type != _SPM_NORMAL:
      continue
    text = piece.piece
    merges.extend((text[:k], text[k:]) for k in range(1, len(text))
                  if text[:k] in normal and text[k:] in normal)
  # rank = the merged piece's position (SentencePiece merges the highest-scoring piece first,
  # and its BPE scores fall with the id); splits of one piece in their order above
  merges.sort(key=lambda m: vocab[m[0] + m[1]])
  unk = pieces[trainer.unk_id].piece
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                             byte_fallback=trainer.byte_fallback))
  steps = []
  if norm.remove_extra_whitespaces:
    # \A and \z: the ends of the text (onig's ^ and $ would also match at every newline)
    steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""),
              normalizers.Replace(Regex(" {2,}"), " ")]
  if norm.add_dummy_prefix:
    steps.append(normalizers.Prepend(" "))
  steps.append(normalizers.Replace(" ", "\u2581"))
  tok.normalizer = normalizers.Sequence(steps)
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never",
                                               split=True)
  tok.decoder = decoders.Sequence([
      decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
      *([decoders.Strip(" ", 1, 0)] if norm.add_dummy_prefix else [])])
  specials = [p.piece for p in pieces if p.type in (_SPM_CONTROL, _SPM_UNKNOWN)]
  tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
  if append_eos:
    eos = pieces[trainer.eos_id].piece
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A:0 {eos}:0", pair=f"$A:0 $B:0 {eos}:0",
        special_tokens=[(eos, trainer.eos_id)])
  return tok


def write_sentencepiece_as_hf(model_path: str, directory: str, *, append_eos: bool,
                              model_max_length: int) -> tuple[list[str], dict[str, int | None]]:
  """Writes tokenizer.json, tokenizer_config.json, special_tokens_map.json and the SentencePiece
  model itself (tokenizer.model) into `directory`, for `AutoTokenizer.from_pretrained`.

  Where it sits: the export (`warm_jax.hf.exporter`) of a model trained on a data dir's
  spm.model. Returns (the file names, the special ids {pad, eos, bos, unk}) that config.json
  must agree with."""
  import shutil
  proto = _spm_proto(model_path)
  trainer = proto.trainer_spec
  piece = lambda i: proto.pieces[i].piece if 0 <= i < len(proto.pieces) else None  # noqa: E731
  ids = {"pad": trainer.pad_id, "eos": trainer.eos_id, "bos": trainer.bos_id,
         "unk": trainer.unk_id}
  ids = {k: (v if v is not None and 0 <= v < len(proto.pieces) else None) for k, v in ids.items()}
  tok = sentencepiece_tokenizer_json(model_path, append_eos=append_eos)
  tok.save(os.path.join(directory, TOKENIZER_JSON))
  special = {f"{k}_token": piece(v) for k, v in ids.items() if v is not None}
  config = {"tokenizer_class": "PreTrainedTokenizerFast", **special,
            "bos_token": special.get("bos_token"),
            "model_max_length": model_max_length,
            # GPT-2's *ForSequenceClassification would add token-type embeddings if given them
            "model_input_names": ["input_ids", "attention_mask"],
            # a reward model reads the last real token, the policy continues the last one
            "padding_side": "right" if append_eos else "left",
            "clean_up_tokenization_spaces": False,
            # SentencePiece reads "</s>" in a text as characters, not as EOS: so does this
            "split_special_tokens": True}
  with open(os.path.join(directory, HF_TOKENIZER_CONFIG), "w") as f:
    json.dump(config, f, indent=2)
  with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
    json.dump(special, f, indent=2)
  shutil.copyfile(model_path, os.path.join(directory, SENTENCEPIECE_MODEL))
  return [TOKENIZER_JSON, HF_TOKENIZER_CONFIG, "special_tokens_map.json",
          SENTENCEPIECE_MODEL], ids
