"""Hugging Face model dir -> a plain orbax params checkpoint of our model (the import).

Where it sits: before the pipeline's first training stage. `import_hf(input_dir=, output=)`
reads config.json (family, shape, head), maps every safetensors tensor onto our parameter
leaves one tensor at a time (checking dtype, shape and finiteness; only the output tree and the
tensor at hand are in memory), checks that every leaf of our model got a value, and writes
OUTPUT atomically (OUTPUT.tmp-<pid>, then one rename):

  OUTPUT/params/              plain orbax PyTree: what InitFromCheckpoint / load_params read
  OUTPUT/model.gin            TransformerConfig bindings of this exact shape
  OUTPUT/warm_jax_model.json  family, head, our config, the source config.json, tokenizer
  OUTPUT/tokenizer/           the tokenizer files (tokenizer.json / tokenizer.model + configs)

Starting SFT from it: `--gin_file=OUTPUT/model.gin` (or the gin/models preset of that shape)
`--gin_file=gin/sft.gin --gin.PRETRAIN_DIR="'OUTPUT'"` (docs/backbones.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from typing import Any

import numpy as np

from warm_jax.hf import families
from warm_jax.hf.errors import ConversionError
from warm_jax.hf.safetensors_io import SafetensorsReader
from warm_jax.models.config import TransformerConfig

PARAMS_DIR = "params"
MODEL_GIN = "model.gin"
MODEL_JSON = "warm_jax_model.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "generation_config.json", "vocab.json",
                   "merges.txt", "added_tokens.json")


def read_hf_config(input_dir: str) -> dict[str, Any]:
  path = os.path.join(input_dir, "config.json")
  if not os.path.isfile(path):
    raise ConversionError(f"{input_dir} has no config.json: pass a Hugging Face model dir "
                          "(config.json + *.safetensors), e.g. one written by save_pretrained")
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise ConversionError(f"{path} is not valid JSON: {e}") from e


def abstract_leaves(config: TransformerConfig, *, head: str) -> dict[str, tuple[int, ...]]:
  """{leaf path: shape} of our model with `head` ("lm", "reward": the 'hidden' readout,
  "reward_logprob": the 'hidden_logprob' readout), from jax.eval_shape (nothing allocated)."""
  import flax.linen as nn
  import jax

  from warm_jax.core.checkpoints import flatten_params
  from warm_jax.models import LanguageModel, RewardModel
  from warm_jax.models.heads import init_inputs

  if head == "lm":
    module = LanguageModel(config)
  else:
    module = RewardModel(config.replace(
        reward_readout="hidden_logprob" if head == "reward_logprob" else "hidden"))
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), *init_inputs(module)))
  return {path: tuple(leaf.shape)
          for path, leaf in flatten_params(nn.unbox(variables["params"])).items()}


def _backbone_prefix(family: families.Family, names: set[str], source: str) -> str:
  for prefix in family.prefixes:
    if prefix + family.embed_name in names:
      return prefix
  raise ConversionError(
      f"{source}: missing tensor {family.prefixes[0] + family.embed_name} (the token "
      f"embedding; looked for it under the prefixes {list(family.prefixes)})")


def _nest(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def convert_tensors(*, reader: SafetensorsReader, family: families.Family,
                    config: TransformerConfig, head: str, source: str) -> dict[str, Any]:
  """Every tensor of `reader` onto our leaves; returns the nested params tree (float32).

  Errors name the tensor: missing, unexpected, wrong shape, wrong dtype, non-finite.
  """
  names = set(reader.names())
  prefix = _backbone_prefix(family, names, source)
  maps = {m.hf_name: m for m in family.tensor_maps(config, head=head, prefix=prefix)}
  leaf_shapes = abstract_leaves(config, head=head)
  missing = [name for name in maps if name not in names]
  if missing:
    raise ConversionError(f"{source}: missing tensor {missing[0]} ({len(missing)} missing) that "
                          f"a {family.model_type} model of this config.json needs")
  optional = {"score.bias"} if head == "reward" else set()
  if config.tie_embeddings:
    optional.add("lm_head.weight")  # transformers ties it to the embedding whatever is stored
  unexpected = [name for name in reader.names() if name not in maps and name not in optional
                and not name.endswith(family.ignorable)]
  if unexpected:
    raise ConversionError(
        f"{source}: unexpected tensor {unexpected[0]} ({len(unexpected)} unexpected) for a "
        f"{family.model_type} {head} model of this config.json; the weights belong to another "
        "architecture or config.json is wrong")
  flat: dict[str, np.ndarray] = {}
  for name in reader.names():  # storage order: each file read once, front to back
    if name in maps:
      tensor_map = maps[name]
      pieces = tensor_map.to_ours(reader.read(name, expected_shape=tensor_map.hf_shape),
                                  leaf_shapes)
      # Contiguous copies now: a transposed view would keep the source tensor alive until the
      # end, i.e. a second copy of the model.
      flat.update({leaf: np.ascontiguousarray(value) for leaf, value in pieces.items()})
      del pieces
    elif name == "score.bias":
      flat["reward_head/bias"] = reader.read(name, expected_shape=(1,))
  if head == "reward" and "reward_head/bias" not in flat:
    flat["reward_head/bias"] = np.zeros((1,), np.float32)  # HF's score has no bias
  not_filled = sorted(set(leaf_shapes) - set(flat))
  if not_filled:
    raise AssertionError(f"the {family.model_type} tensor map leaves {not_filled} unset")
  for path, value in flat.items():
    if path not in leaf_shapes or tuple(value.shape) != leaf_shapes[path]:
      raise AssertionError(f"{path}: mapped to {value.shape}, model has {leaf_shapes.get(path)}")
  return _nest(flat)


def _family_head_config(hf_config: dict[str, Any], *, source: str
                        ) -> tuple[families.Family, str, TransformerConfig]:
  """(family, head, our config) of a config.json. A warm-jax export of a log-prob-readout RM
  (model_type warm_reward_<family>, `logprob_readout`) imports back as that RM: head
  "reward_logprob", reward_readout='hidden_logprob' with its tau."""
  from warm_jax.hf import logprob_readout
  model_type = hf_config.get("model_type")
  if isinstance(model_type, str) and model_type.startswith(logprob_readout.MODEL_TYPE_PREFIX):
    family = families.get_family(model_type.removeprefix(logprob_readout.MODEL_TYPE_PREFIX),
                                 source=source)
    tau = hf_config.get("warm_logprob_softmin_temperature")
    if hf_config.get("warm_reward_readout") != "hidden_logprob" or not isinstance(
        tau, (int, float)):
      raise ConversionError(f"{source}: model_type {model_type} without "
                            "warm_reward_readout='hidden_logprob' and a numeric "
                            "warm_logprob_softmin_temperature: the file is not a warm-jax "
                            "export (or was edited); export it again")
    config = family.config_from_hf(hf_config).replace(
        reward_readout="hidden_logprob", logprob_softmin_temperature=float(tau))
    return family, "reward_logprob", config
  family = families.get_family(model_type, source=source)
  return family, families.head_of(hf_config, source=source), family.config_from_hf(hf_config)


def model_gin(config: TransformerConfig, *, comment: str) -> str:
  """gin bindings of every TransformerConfig field but dropout (left to the stage/preset)."""
  lines = [f"# {line}" for line in comment.splitlines()]
  for field in dataclasses.fields(TransformerConfig):
    if field.name == "dropout_rate":
      continue
    lines.append(f"TransformerConfig.{field.name} = {getattr(config, field.name)!r}")
  lines += ["TransformerConfig.dropout_rate = %DROPOUT_RATE", "DROPOUT_RATE = 0.0", ""]
  return "\n".join(lines)


def import_hf(*, input_dir: str, output: str, max_len: int | None = None,
              dtype: str | None = None) -> dict[str, Any]:
  """Converts a Hugging Face model dir into OUTPUT (see the module docstring).

  Args:
    input_dir: config.json + model.safetensors or sharded safetensors + index.
    output: the new checkpoint dir; must not exist.
    max_len: overrides the longest sequence (rotary families only: GPT-2's position table
      fixes it); None keeps config.json's max_position_embeddings.
    dtype: compute dtype of the model config ("float32" / "bfloat16"); parameters are float32.
  Returns a summary: family, head, config, tensors, parameters, seconds.
  """
  t0 = time.time()
  source = os.path.abspath(input_dir)
  output = os.path.abspath(output)
  if os.path.lexists(output):
    raise ConversionError(f"output {output} already exists; pick a new path (nothing was "
                          "overwritten)")
  hf_config = read_hf_config(source)
  family, head, config = _family_head_config(hf_config, source=f"{source}/config.json")
  if max_len is not None:
    if config.positions == "learned" and max_len != config.max_len:
      raise ConversionError(f"--max_len {max_len}: a {family.model_type} model has a learned "
                            f"table of {config.max_len} positions; leave max_len unset")
    config = config.replace(max_len=max_len)
  if dtype is not None:
    config = config.replace(dtype=dtype)
  reader = SafetensorsReader(source)
  try:
    params = convert_tensors(reader=reader, family=family, config=config, head=head,
                             source=source)
  finally:
    reader.close()
  num_params = int(sum(leaf.size for leaf in _leaves(params)))

  tmp = f"{output}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    save_params_tree(os.path.join(tmp, PARAMS_DIR), params)
    del params
    tokenizer_files = _copy_tokenizer(source, os.path.join(tmp, TOKENIZER_DIR))
    summary = {"family": family.model_type, "head": head, "source": source,
               "transformer_config": dataclasses.asdict(config), "hf_config": hf_config,
               "tokenizer_files": tokenizer_files, "num_params": num_params,
               "num_tensors": len(reader.names())}
    with open(os.path.join(tmp, MODEL_JSON), "w") as f:
      json.dump(summary, f, indent=2)
    with open(os.path.join(tmp, MODEL_GIN), "w") as f:
      f.write(model_gin(config, comment=(
          f"{family.model_type} {head} model imported from {source}\n"
          "Use: --gin_file=<this file> --gin_file=gin/sft.gin --gin.PRETRAIN_DIR=<this dir>\n"
          "(the data dir must be tokenised with tokenizer/ and VOCAB_SIZE must equal "
          f"{config.vocab_size})")))
    os.rename(tmp, output)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  summary["seconds"] = round(time.time() - t0, 2)
  logging.info("imported %s (%s, %s head, %d params) into %s in %.1fs", source,
               family.model_type, head, num_params, output, summary["seconds"])
  return summary


# Bytes orbax may have in flight while writing (its minimum granularity is 1 GB): without a cap
# TensorStore buffers copies of many leaves at once, a partial second copy of a large model.
SAVE_CONCURRENT_GB = 1


def save_params_tree(path: str, tree: dict[str, Any]) -> None:
  """A plain orbax PyTree checkpoint of host numpy arrays, written synchronously without
  orbax's defensive deep copy of every array (the tree is never mutated) and with at most
  SAVE_CONCURRENT_GB in flight: the model is in memory once, plus a bounded write buffer."""
  import orbax.checkpoint as ocp
  registry = ocp.type_handlers.create_type_handler_registry(
      (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)))
  handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry,
                                        save_concurrent_gb=SAVE_CONCURRENT_GB)
  checkpointer = ocp.Checkpointer(handler)
  try:
    checkpointer.save(path, args=ocp.args.PyTreeSave(tree))
  finally:
    checkpointer.close()


def _leaves(tree):
  for value in tree.values():
    if isinstance(value, dict):
      yield from _leaves(value)
    else:
      yield value


def _copy_tokenizer(source: str, target: str) -> list[str]:
  present = [name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(source, name))]
  if present:
    os.makedirs(target)
    for name in present:
      shutil.copyfile(os.path.join(source, name), os.path.join(target, name))
  return present


def read_model_json(path: str) -> dict[str, Any] | None:
  """The import record of a dir written by `import_hf` (None if `path` has none)."""
  file = os.path.join(path, MODEL_JSON)
  if not os.path.isfile(file):
    return None
  with open(file) as f:
    record = json.load(f)
  cfg = dict(record["transformer_config"])
  if cfg.get("rope_scaling") is not None:
    cfg["rope_scaling"] = tuple(cfg["rope_scaling"])
  record["transformer_config"] = TransformerConfig(**cfg)
  return record
