"""Our params checkpoint -> a Hugging Face model dir (the export), for the policy and the RM.

Where it sits: after the pipeline (a WARM reward model or an RL policy served by other
tools). `export_hf(input=, output=, ...)` reads the checkpoint leaf by leaf (orbax/TensorStore,
`warm_jax.merging.reader`), maps the leaves onto the family's tensor names and writes
safetensors shards of at most `max_shard_bytes` (one shard in memory at a time) plus
config.json and the tokenizer files, atomically (OUTPUT.tmp-<pid>, then one rename).

  LanguageModel params (a policy)   -> <Family>ForCausalLM (GPT2LMHeadModel)
  RewardModel params (an RM, WARM)  -> <Family>ForSequenceClassification, num_labels=1: the
                                       backbone plus `score.weight` = reward_head/kernel^T,
                                       read by transformers at the last non-pad token
  RewardModel params with the       -> WarmReward<Family> of modeling_warm_reward.py, copied
  log-prob readout (reward_head/       into the export (config.json's auto_map: load it with
  logprob_kernel)                      trust_remote_code=True): the family's *ForCausalLM
                                       (backbone + LM head) plus `score` (weight and bias)
                                       and `logprob_score` = reward_head/logprob_kernel^T;
                                       config.json carries tau and the ids of the `TL;DR:`
                                       marker that starts the response (`logprob_readout`)

The model's shape and family come from an import record (`warm_jax_model.json`, written by
`importer.import_hf` into the imported dir: pass that dir as `base`), or from a
`TransformerConfig` and a family name.

The tokenizer goes with the weights: an import's own tokenizer files, or, for a model trained
here, the world's SentencePiece model (the spm.model of the data dir it was trained on, found
through `model_card.provenance` or given as `tokenizer=`) written as tokenizer.json +
tokenizer_config.json (`tokenizer.write_sentencepiece_as_hf`: identical ids, EOS appended for a
reward model). config.json's pad/eos/bos ids are the tokenizer's, and no special id outside
the vocabulary is written (GPT-2's default 50256 would be one). README.md (`model_card`) says
what the model is, its input format and how to score or generate with transformers.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import numpy as np

from warm_jax.hf import families
from warm_jax.hf import importer
from warm_jax.hf import logprob_readout
from warm_jax.hf import model_card
from warm_jax.hf import tokenizer as tokenizer_lib
from warm_jax.hf.errors import ConversionError
from warm_jax.hf.safetensors_io import EXPORT_DTYPES, nbytes, write_safetensors
from warm_jax.models.config import TransformerConfig


def _head_of_leaves(paths: set[str], source: str) -> str:
  """"lm", "reward" (the 'hidden' readout) or "reward_logprob" (reward_head/logprob_kernel:
  TransformerConfig.reward_readout='hidden_logprob')."""
  if "reward_head/logprob_kernel" in paths:
    return "reward_logprob"
  if any(p.startswith("reward_head/") for p in paths):
    return "reward"
  if any(p.startswith("value_head/") for p in paths):
    raise ConversionError(f"{source} is a value model (value_head): only policies "
                          "(LanguageModel) and reward models (RewardModel) can be exported")
  return "lm"


def _logprob_readout(*, config: TransformerConfig, prov: dict[str, Any],
                     spm_model: str | None, record: dict[str, Any] | None, tokenizer_dir: str,
                     source: str) -> dict[str, Any]:
  """What the log-prob readout's custom class needs (`logprob_readout`): tau (and where it
  came from) and the ids of the `TL;DR:` marker under the tokenizer that is exported with it,
  checked on the card's example prompt and on world prompts."""
  from warm_jax.data import world
  if spm_model is not None:
    tok = tokenizer_lib.HuggingFaceTokenizer(spm_model)
  elif (record or {}).get("tokenizer_files"):
    tok = tokenizer_lib.HuggingFaceTokenizer(tokenizer_dir)
  else:
    raise ConversionError(
        f"{source} is a reward model with the log-prob readout, which reads the summary after "
        "the prompt's `TL;DR:` marker: the export needs the tokenizer to find the marker's "
        "ids, and none was found beside the checkpoint; pass --tokenizer DATA_DIR (the data "
        "dir it was trained on)")
  tau, tau_source = logprob_readout.softmin_temperature(config, prov.get("model_dirs", []))
  _, prompt, _ = model_card.input_format(spm_model)
  prompts = [prompt]
  if prompt.endswith(f" {logprob_readout.MARKER}"):  # the synthetic world's format
    prompts += [world.format_prompt(p.text) for p in world.generate_posts(seed=0, n=8)]
  separator = logprob_readout.separator_ids(tok.encode, tok.decode_ids, prompts=prompts,
                                            source=source)
  return {"readout": "hidden_logprob", "tau": tau, "tau_source": tau_source,
          "separator_ids": separator, "separator": logprob_readout.MARKER}


def hf_config_for(*, family: families.Family, config: TransformerConfig, head: str,
                  base: dict[str, Any] | None, dtype: str,
                  pad_token_id: int | None) -> dict[str, Any]:
  """config.json for the export: the base model's (if any) with our shape written over it."""
  out = dict(base or {})
  for key in ("rope_scaling", "rope_theta", "architectures", "id2label", "label2id",
              "num_labels", "torch_dtype", "dtype", "_name_or_path", "transformers_version",
              *logprob_readout.FIELDS):
    out.pop(key, None)
  out.update(family.config_to_hf(config))
  out["architectures"] = [family.classes[head]]
  out["dtype"] = dtype
  if head != "lm":
    out["id2label"] = {"0": "LABEL_0"}
    out["label2id"] = {"LABEL_0": 0}
  if pad_token_id is not None:
    out["pad_token_id"] = pad_token_id
  return out


_SPECIAL_ID_KEYS = ("pad_token_id", "eos_token_id", "bos_token_id")


def _ids_in_vocab(value: Any, vocab_size: int) -> bool:
  values = value if isinstance(value, (list, tuple)) else [value]
  return all(isinstance(v, int) and 0 <= v < vocab_size for v in values)


def set_special_ids(hf_config: dict[str, Any], *, vocab_size: int,
                    tokenizer_ids: dict[str, int | None] | None,
                    pad_token_id: int | None) -> list[str]:
  """Writes pad/eos/bos_token_id into config.json: the exported tokenizer's (when warm-jax
  wrote it), else the base config's; an explicit pad_token_id wins. Every key is written (None
  when unknown) so transformers' class defaults (GPT-2's 50256) never apply; an id outside the
  vocabulary is dropped to None. Returns the keys dropped."""
  if tokenizer_ids is not None:
    for kind in ("pad", "eos", "bos"):
      hf_config[f"{kind}_token_id"] = tokenizer_ids.get(kind)
  if pad_token_id is not None:
    hf_config["pad_token_id"] = pad_token_id
  dropped = []
  for key in _SPECIAL_ID_KEYS:
    value = hf_config.get(key)
    if value is not None and not _ids_in_vocab(value, vocab_size):
      dropped.append(f"{key}={value}")
      value = None
    hf_config[key] = value
  return dropped


def export_hf(*, input: str, output: str, family: str | None = None,
              config: TransformerConfig | None = None, base: str | None = None,
              dtype: str = "float32", max_shard_bytes: int | None = 5 * 2**30,
              pad_token_id: int | None = None, drop_reward_bias: bool = False,
              tokenizer: str | None = None) -> dict[str, Any]:
  """Writes the checkpoint `input` as a Hugging Face model dir `output` (must not exist).

  Args:
    input: a params checkpoint (an experiment stage dir such as average/warm_6, a stage's
      model dir, a plain orbax dir, an import dir, ...: `checkpoints.resolve_params_path`).
    family, config: the model's family and shape; default: from the import record of `base`
      (or of `input` itself when it is an import dir).
    base: an import dir (`warm_jax_model.json`): family, shape, the source config.json (its
      token ids and other fields are kept) and the tokenizer files copied to the output.
    dtype: of the written tensors: float32 (exact), bfloat16 or float16.
    max_shard_bytes: shard size (None: one file).
    pad_token_id: written to config.json (a reward model needs one for batches: transformers
      reads the reward at the last token that is not pad_token_id).
    drop_reward_bias: export an RM whose reward_head/bias is not 0 (transformers' score has no
      bias, so the served rewards shift by that constant); a log-prob-readout RM keeps its
      bias (the custom class's score has one) and ignores this flag.
    tokenizer: the data dir (or its spm.model) whose SentencePiece model to export; default:
      the data dir the model was trained on (config.gin's DATA_DIR of the stage dir, or of the
      averaged members), else an import's own tokenizer files, else the experiment's
      data/clean. With none found the export has no tokenizer (the summary and README say so).
  """
  t0 = time.time()
  from warm_jax.merging.reader import CheckpointReader
  if dtype not in EXPORT_DTYPES:
    raise ConversionError(f"--dtype {dtype!r}: use one of {sorted(EXPORT_DTYPES)}")
  output = os.path.abspath(output)
  if os.path.lexists(output):
    raise ConversionError(f"output {output} already exists; pick a new path (nothing was "
                          "overwritten)")
  record = importer.read_model_json(base) if base else importer.read_model_json(input)
  if base and record is None:
    raise ConversionError(f"--base {base} has no {importer.MODEL_JSON}: pass the dir written "
                          "by `python -m warm_jax.convert --from hf`")
  if config is None:
    if record is None:
      raise ConversionError(f"{input} has no {importer.MODEL_JSON}: pass --base IMPORTED_DIR "
                            "(the import of the model it was trained from) or --gin_file with "
                            "the model preset and --family")
    config = record["transformer_config"]
  if pad_token_id is not None and not 0 <= pad_token_id < config.vocab_size:
    raise ConversionError(f"--pad_token_id {pad_token_id} is outside the vocabulary "
                          f"(0..{config.vocab_size - 1})")
  family_name = family or (record or {}).get("family")
  if family_name is None:
    raise ConversionError("the family is unknown: pass --family (gpt2, llama, gemma) or --base")
  fam = families.get_family(family_name, source="--family")

  reader = CheckpointReader(input)
  leaves = reader.leaves_by_path
  head = _head_of_leaves(set(leaves), input)
  prov = model_card.provenance(input=input, params_path=str(reader.path))
  # the tokenizer the model's data was tokenised with: --tokenizer, else its DATA_DIR's, else
  # an import's own files, else the experiment's data/clean
  spm_model = model_card.find_spm_model(
      tokenizer, prov, experiment_fallback=not (record or {}).get("tokenizer_files"))
  if spm_model is not None:
    pieces = tokenizer_lib.HuggingFaceTokenizer(spm_model).vocab_size
    if pieces != config.vocab_size:
      raise ConversionError(
          f"the tokenizer {spm_model} has {pieces} pieces but the model's vocabulary is "
          f"{config.vocab_size}: pass --tokenizer with the data dir the model was trained on")
  expected = importer.abstract_leaves(config, head=head)
  for path, shape in expected.items():
    if path not in leaves:
      raise ConversionError(f"{input} has no leaf {path}, which a {fam.model_type} {head} model "
                            "of this config needs: the checkpoint has another architecture")
    if tuple(leaves[path].shape) != shape:
      raise ConversionError(f"{input} leaf {path} has shape {tuple(leaves[path].shape)} but "
                            f"the config gives {shape}: pass the config it was trained with")
  extra = sorted(set(leaves) - set(expected))
  if extra:
    raise ConversionError(f"{input} has leaf {extra[0]}, which a {fam.model_type} {head} model "
                          "of this config does not have: the checkpoint has another architecture")
  readout = None
  if head == "reward_logprob":
    readout = _logprob_readout(config=config, prov=prov, spm_model=spm_model,
                               record=record, tokenizer_dir=os.path.join(
                                   base or input, importer.TOKENIZER_DIR), source=input)
    config = config.replace(reward_readout="hidden_logprob",
                            logprob_softmin_temperature=readout["tau"])
  dropped_bias = None
  if head == "reward":
    bias = float(np.asarray(reader.read_now(leaves["reward_head/bias"])).reshape(-1)[0])
    dropped_bias = bias if bias != 0.0 else None
    if bias != 0.0 and not drop_reward_bias:
      raise ConversionError(
          f"{input}: reward_head/bias is {bias}, but transformers' score layer has no bias; "
          "pass --drop_reward_bias to export anyway (rewards shift by that constant, which "
          "preferences and best-of-N ignore)")

  maps = fam.tensor_maps(config, head=head, prefix=fam.prefixes[0])
  by_name = {m.hf_name: m for m in maps}
  np_dtype = EXPORT_DTYPES[dtype]
  sizes = [(m.hf_name, nbytes(m.hf_shape, np_dtype)) for m in maps]

  def produce(names):
    for name in names:
      tensor_map = by_name[name]
      values = {leaf: np.asarray(reader.read_now(leaves[leaf])) for leaf in tensor_map.leaves}
      for leaf in tensor_map.leaves:
        reader.release(leaves[leaf])
      yield name, tensor_map.to_hf(values).astype(np_dtype)

  hf_config = hf_config_for(family=fam, config=config, head=head,
                            base=(record or {}).get("hf_config"), dtype=dtype,
                            pad_token_id=pad_token_id)
  if readout is not None:
    hf_config.update(logprob_readout.config_fields(
        family=fam.model_type, architecture=hf_config["architectures"][0], tau=readout["tau"],
        separator=readout["separator_ids"]))
  tmp = f"{output}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    files = write_safetensors(tmp, sizes=sizes, produce=produce,
                              max_shard_bytes=max_shard_bytes)
    if readout is not None:
      readout["modeling_file"] = logprob_readout.write_modeling_file(tmp)
    tokenizer_files, tokenizer_ids = [], None
    if spm_model is not None:
      tokenizer_files, tokenizer_ids = tokenizer_lib.write_sentencepiece_as_hf(
          spm_model, tmp, append_eos=head != "lm", model_max_length=config.max_len)
    elif record is not None:
      tok_dir = os.path.join(base or input, importer.TOKENIZER_DIR)
      for name in record.get("tokenizer_files", []):
        shutil.copyfile(os.path.join(tok_dir, name), os.path.join(tmp, name))
        tokenizer_files.append(name)
    dropped_ids = set_special_ids(hf_config, vocab_size=config.vocab_size,
                                  tokenizer_ids=tokenizer_ids, pad_token_id=pad_token_id)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2)
    special_ids = {k.removesuffix("_token_id"): hf_config[k] for k in _SPECIAL_ID_KEYS}
    if tokenizer_ids is not None:
      special_ids["unk"] = tokenizer_ids.get("unk")
    with open(os.path.join(tmp, model_card.MODEL_CARD), "w") as f:
      f.write(model_card.render(
          head=head, architecture=hf_config["architectures"][0],
          family=hf_config.get("model_type", fam.model_type),
          config=config, prov=prov, spm_model=spm_model, tokenizer_files=tokenizer_files,
          special_ids=special_ids, dropped_bias=dropped_bias, readout=readout))
    os.rename(tmp, output)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return {"family": fam.model_type, "head": head, "architecture": hf_config["architectures"][0],
          "files": files, "tokenizer_files": tokenizer_files,
          "tokenizer": spm_model or ("import" if tokenizer_files else None),
          "special_ids": special_ids, "special_ids_dropped": dropped_ids,
          "model_card": model_card.MODEL_CARD, "num_tensors": len(maps),
          **({"readout": readout} if readout is not None else {}),
          "seconds": round(time.time() - t0, 2)}
