"""`python -m warm_jax.convert`: Hugging Face checkpoints in and out (GPT-2, Llama, Gemma).

  python -m warm_jax.convert --from hf --input HF_DIR --output CKPT [--max_len N] [--dtype D]
  python -m warm_jax.convert --to hf --input RUN --output HF_DIR [--base CKPT]
      [--family F --gin_file=gin/models/P.gin --gin.VOCAB_SIZE=N] [--dtype float32]
      [--max_shard_size 5GB] [--pad_token_id N] [--drop_reward_bias] [--tokenizer DATA_DIR]

Where it sits: before the first training stage (import a pretrained backbone, then SFT from
it: docs/backbones.md) and after the last (serve a WARM reward model or an RL policy with other
tools). Import (`warm_jax.hf.importer`): HF_DIR holds config.json and model.safetensors or
shards with model.safetensors.index.json; CKPT gets params/ (plain orbax), model.gin,
warm_jax_model.json and tokenizer/. Export (`warm_jax.hf.exporter`): RUN is any params
checkpoint (an experiment stage dir such as average/warm_6, members/clean/member_0, rl/warm_6
or sft; a stage's model dir, a step dir, an import dir); a RewardModel
becomes <Family>ForSequenceClassification (num_labels=1, `score`), one with the log-prob
readout (reward_readout='hidden_logprob') the custom class of modeling_warm_reward.py shipped
in the export (load it with trust_remote_code=True), a LanguageModel <Family>ForCausalLM; the
shape and family come from --base (the import it started from) or from --family plus model gin
files. The export carries the tokenizer (the import's, or the
world's SentencePiece model of the data dir the model was trained on, found from the stage dir
or given by --tokenizer) with config.json's special ids set to its own, and a model card
(README.md: what the model is, its input format, how to score it with transformers).

  --from hf | --to hf     the direction
  --input, --output       source and new destination (never overwritten; written atomically)
  --max_len N             import: longest sequence of a rotary model (default config.json's)
  --dtype D               import: compute dtype of model.gin (float32, bfloat16); export: the
                          tensors' dtype (float32 default, exact; bfloat16; float16)
  --base CKPT             export: the import dir whose family, config.json and tokenizer to use
  --family F              export: gpt2, llama or gemma (with --gin_file model presets)
  --max_shard_size S      export: e.g. 5GB (default), 500MB, 100000 (bytes)
  --pad_token_id N        export: written to config.json (RMs read the last non-pad token)
  --drop_reward_bias      export: allow an RM with a non-zero reward_head/bias (see --help)
  --tokenizer DATA_DIR    export: the data dir (or its spm.model) the model was trained on;
                          default: found from the stage dir (config.gin's DATA_DIR, the
                          averaged members', the experiment's data/clean)

Prints one JSON line (what was written, seconds, peak RSS). Exit status 1 when the input is
refused (nothing is written), 2 for a malformed command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence

from warm_jax.cli_errors import print_error

USAGE_EXIT_CODE = 2
REFUSED_EXIT_CODE = 1
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10,
               "MIB": 2**20, "GIB": 2**30}


class _UsageError(Exception):
  pass


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog="python -m warm_jax.convert", add_help=False)
  p.add_argument("--help", "-h", action="store_true")
  p.add_argument("--from", dest="source_format", choices=["hf"])
  p.add_argument("--to", dest="target_format", choices=["hf"])
  p.add_argument("--input")
  p.add_argument("--output")
  p.add_argument("--max_len", type=int)
  p.add_argument("--dtype")
  p.add_argument("--base")
  p.add_argument("--family")
  p.add_argument("--max_shard_size", default="5GB")
  p.add_argument("--pad_token_id", type=int)
  p.add_argument("--drop_reward_bias", action="store_true")
  p.add_argument("--tokenizer")
  return p


def parse_size(text: str) -> int:
  """'5GB' -> 5_000_000_000, '500MiB' -> 524288000, '1000' -> 1000."""
  match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
  if not match or match.group(2).upper() not in _SIZE_UNITS:
    raise _UsageError(f"--max_shard_size {text!r}: use a size like 5GB, 500MB or 100000")
  return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def main(argv: Sequence[str] | None = None) -> int:
  from warm_jax.gin_utils import GinConfigError, host_program, setup_logging, split_gin_args
  argv = list(sys.argv[1:] if argv is None else argv)
  setup_logging(quiet_absl=True)
  try:
    files, bindings, paths, rest = split_gin_args(argv)
    args = _parser().parse_args(rest)
    if args.help:
      print(__doc__)
      return 0
    if (args.source_format is None) == (args.target_format is None):
      raise _UsageError("pass exactly one of --from hf (import) and --to hf (export)")
    for name in ("input", "output"):
      if not getattr(args, name):
        raise _UsageError(f"--{name} is required")
    shard_bytes = parse_size(args.max_shard_size)
    if args.source_format and (files or bindings or args.base or args.family
                               or args.tokenizer):
      raise _UsageError("--base, --family, --tokenizer and gin flags are for --to hf (export) "
                        "only")
  except (GinConfigError, _UsageError) as e:
    print_error(f"{e}\n(see python -m warm_jax.convert --help)")
    return USAGE_EXIT_CODE

  host_program()  # jax (orbax, eval_shape) off any accelerator; freed memory back to the OS
  from warm_jax.core.checkpoints import CheckpointError
  from warm_jax.hf import ConversionError, exporter, importer
  from warm_jax.merging import memory
  t0 = time.time()
  try:
    if args.source_format:
      summary = importer.import_hf(input_dir=args.input, output=args.output,
                                   max_len=args.max_len, dtype=args.dtype)
      summary = {k: summary[k] for k in ("family", "head", "num_params", "num_tensors")}
    else:
      config = None
      if files or bindings:
        config = _config_from_gin(files, bindings, paths)
      summary = exporter.export_hf(
          input=args.input, output=args.output, family=args.family, config=config,
          base=args.base, dtype=args.dtype or "float32", max_shard_bytes=shard_bytes,
          pad_token_id=args.pad_token_id, drop_reward_bias=args.drop_reward_bias,
          tokenizer=args.tokenizer)
  except GinConfigError as e:
    print_error(str(e))
    return USAGE_EXIT_CODE
  except (ConversionError, CheckpointError, ValueError) as e:
    logging.debug("conversion refused", exc_info=True)
    print_error(f"{type(e).__name__}: {e}\nnothing was written")
    return REFUSED_EXIT_CODE
  summary.update(output=os.path.abspath(args.output), wall_s=round(time.time() - t0, 2),
                 peak_rss_bytes=memory.peak_rss_bytes())
  print(json.dumps(summary))
  return 0


def _config_from_gin(files, bindings, paths):
  """The TransformerConfig the model gin files bind (as `python -m warm_jax.train` would)."""
  import gin
  from warm_jax import configurables
  from warm_jax.gin_utils import parse_gin
  configurables.register()
  gin.clear_config()
  try:
    parse_gin(files, bindings, paths)
    with gin.unlock_config():
      return gin.get_configurable("TransformerConfig")()
  finally:
    gin.clear_config()  # only the model config was wanted: leave no bindings behind


if __name__ == "__main__":
  sys.exit(main())
