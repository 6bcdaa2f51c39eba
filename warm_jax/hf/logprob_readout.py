"""The log-prob readout's export: what config.json and the custom modeling file must carry.

Where it sits: inside the export (`warm_jax.hf.exporter`) of a reward model trained with
`TransformerConfig.reward_readout='hidden_logprob'` (`warm_jax.models.heads.RewardModel`),
after the pipeline. No stock transformers class computes that reward, so the export ships
`modeling_warm_reward.py` (this package's file, copied as it is) and config.json points
`auto_map` at its family class; the fields below tell that class what warm-jax's data path and
config told the RewardModel:

  warm_reward_readout                 "hidden_logprob"
  warm_logprob_features               ["softmin", "mean", "sum"] (logprob_score's inputs)
  warm_logprob_softmin_temperature    tau of the softmin (the training run's config.gin
                                      binding, else the config passed to the exporter)
  warm_response_separator_ids         the ids of the prompt's `TL;DR:` marker as the
                                      exported tokenizer encodes it at the end of a prompt:
                                      the response (summary + EOS) is what follows its last
                                      occurrence, as warm-jax's response_mask
                                      (`data.converters.PreferenceFeatureConverter`)
  warm_response_separator             that marker's text

FIELDS lists them (with auto_map): the exporter drops them from a base config.json, so they
never reach an export that does not ship the class.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from warm_jax.hf.errors import ConversionError
from warm_jax.models.config import TransformerConfig

MODELING_FILE = "modeling_warm_reward.py"
_MODELING_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), MODELING_FILE)
MODEL_TYPE_PREFIX = "warm_reward_"  # config.json's model_type: warm_reward_<family>
MARKER = "TL;DR:"  # warm_jax.data.world.TLDR_MARKER, also the real TL;DR format's
FIELDS = ("auto_map", "warm_reward_readout", "warm_logprob_features",
          "warm_logprob_softmin_temperature", "warm_response_separator_ids",
          "warm_response_separator")
_TAU_BINDING = re.compile(
    r"^TransformerConfig\.logprob_softmin_temperature\s*=\s*(\S+)\s*$", re.MULTILINE)


def trained_temperature(model_dirs: Sequence[str]) -> float | None:
  """tau from the training MODEL_DIRs' config.gin (the operative config: every member of an
  average); None when none binds it. Members that disagree are refused."""
  found: dict[float, str] = {}
  for d in model_dirs:
    path = os.path.join(d, "config.gin")
    if not os.path.isfile(path):
      continue
    with open(path) as f:
      match = _TAU_BINDING.search(f.read())
    if match:
      try:
        found.setdefault(float(match.group(1)), path)
      except ValueError as e:
        raise ConversionError(f"{path}: TransformerConfig.logprob_softmin_temperature = "
                              f"{match.group(1)!r} is not a number") from e
  if len(found) > 1:
    raise ConversionError(
        "the averaged reward models were trained with different log-prob softmin "
        f"temperatures ({', '.join(f'{t} in {p}' for t, p in found.items())}): one exported "
        "model cannot reproduce them; average members of one configuration")
  return next(iter(found), None)


def softmin_temperature(config: TransformerConfig, model_dirs: Sequence[str]
                        ) -> tuple[float, str]:
  """(tau, where it came from). The training run's config.gin wins over a config that does
  not name the readout (a model preset alone); a config that binds reward_readout=
  'hidden_logprob' itself must agree with it."""
  trained = trained_temperature(model_dirs)
  tau = config.logprob_softmin_temperature
  if config.reward_readout == "hidden_logprob":
    if trained is not None and trained != tau:
      raise ConversionError(
          f"the gin config gives TransformerConfig.logprob_softmin_temperature={tau} but the "
          f"model was trained with {trained} (its config.gin): drop the binding or pass "
          f"--gin.TransformerConfig.logprob_softmin_temperature={trained}")
    return tau, "the gin config passed to the export"
  if trained is not None:
    return trained, "the training run's config.gin"
  return tau, ("TransformerConfig's default (no config.gin beside the checkpoint binds it; "
               "pass --gin.TransformerConfig.logprob_softmin_temperature=... if it was trained "
               "with another)")


def separator_ids(encode: Callable[[str], list[int]], decode: Callable[[list[int]], str], *,
                  prompts: Sequence[str], source: str) -> list[int]:
  """The shortest tail of encode(prompts[0]) whose text holds the `TL;DR:` marker: the ids
  the tokenizer gives the marker at the end of a prompt. Every prompt must end with them (a
  tokenizer that merges the marker with the text before it cannot mark the response)."""
  ids = encode(prompts[0])
  sep = next((ids[-k:] for k in range(1, len(ids) + 1) if MARKER in decode(ids[-k:])), None)
  if sep is None:
    raise ConversionError(f"{source}: the tokenizer does not encode the {MARKER!r} marker of "
                          f"the prompt {prompts[0]!r} recoverably; the log-prob readout's "
                          "response cannot be marked: pass --tokenizer DATA_DIR (the data dir "
                          "the model was trained on)")
  for prompt in prompts[1:]:
    if encode(prompt)[-len(sep):] != sep:
      raise ConversionError(
          f"{source}: the prompt {prompt!r} does not end with the marker's ids {sep} (the "
          "tokenizer merges the marker with the text before it), so the exported model could "
          "not find the response after it; pass --tokenizer DATA_DIR (the data dir the model "
          "was trained on)")
  return list(sep)


def config_fields(*, family: str, architecture: str, tau: float,
                  separator: list[int]) -> dict[str, Any]:
  """The config.json fields of a log-prob-readout export (see the module docstring); an
  export's config.json imports back as that RM (`importer`)."""
  module = MODELING_FILE.removesuffix(".py")
  return {"model_type": f"{MODEL_TYPE_PREFIX}{family}",
          "auto_map": {"AutoConfig": f"{module}.{architecture}Config",
                       "AutoModelForSequenceClassification": f"{module}.{architecture}"},
          "warm_reward_readout": "hidden_logprob",
          "warm_logprob_features": ["softmin", "mean", "sum"],
          "warm_logprob_softmin_temperature": tau,
          "warm_response_separator_ids": separator,
          "warm_response_separator": MARKER}


def write_modeling_file(directory: str) -> str:
  """Copies modeling_warm_reward.py into the export dir; returns its name."""
  shutil.copyfile(_MODELING_SOURCE, os.path.join(directory, MODELING_FILE))
  return MODELING_FILE
