"""What an exported model is and how to feed it: provenance, tokenizer source and README.md.

Where it sits: inside the export (`warm_jax.hf.exporter`), after the pipeline. From the
checkpoint a user passed (an experiment stage dir such as average/warm_6, a member, an RL run,
or any params dir) it gathers what the files around it record:

  the averager's manifest.json   WARM: method, weights and the members averaged (their stage
                                 dirs and steps)
  MODEL_DIR/config.gin           the stage's DATA_DIR (whose spm.model is the tokenizer the
                                 model was trained with) of a member, an SFT or RL run
  the experiment root            (commands.sh beside the stage dirs): the run, and its
                                 data/clean/spm.model when no config.gin names a data dir

and writes the model card (README.md): what the model is, the input format its data dir used
(post, the `TL;DR:` marker, summary, EOS), the special ids, and how to score or generate with
transformers alone.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from warm_jax.hf.errors import ConversionError

MODEL_CARD = "README.md"
EXPERIMENT_COMMANDS = "commands.sh"  # warm_jax.experiment writes it at the run's root
_DATA_DIR_BINDING = re.compile(r"""^DATA_DIR\s*=\s*(['"])(.+)\1\s*$""", re.MULTILINE)


def _model_dir_of(params_path: str) -> str | None:
  """The training MODEL_DIR (with its config.gin) of a resolved params path:
  MODEL_DIR/checkpoints/<step>/params, or MODEL_DIR/params (the linear probe's); None for a
  plain checkpoint dir."""
  from warm_jax.core.checkpoints import CHECKPOINTS_SUBDIR, PARAMS_ITEM
  path = os.path.abspath(params_path)
  if os.path.basename(path) == PARAMS_ITEM:
    path = os.path.dirname(path)
  if os.path.basename(path).isdigit() and \
      os.path.basename(os.path.dirname(path)) == CHECKPOINTS_SUBDIR:
    path = os.path.dirname(os.path.dirname(path))
  return path if os.path.isfile(os.path.join(path, "config.gin")) else None


def _data_dir_of_model_dir(model_dir: str) -> str | None:
  with open(os.path.join(model_dir, "config.gin")) as f:
    match = _DATA_DIR_BINDING.search(f.read())
  return match.group(2) if match else None


def _experiment_root(path: str) -> str | None:
  path = os.path.abspath(path)
  while True:
    if os.path.isfile(os.path.join(path, EXPERIMENT_COMMANDS)):
      return path
    parent = os.path.dirname(path)
    if parent == path:
      return None
    path = parent


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError:
    return None


def provenance(*, input: str, params_path: str) -> dict[str, Any]:
  """What the files around the checkpoint say about it (keys absent when unknown):

    input, params_path       as given and as resolved
    warm                     the averager's manifest digest: method, weights, members
                             [{"arg", "path", "step"}]
    model_dirs               the training MODEL_DIRs behind it (a member, or the members of
                             an average)
    data_dirs                their DATA_DIR bindings (config.gin), in order, deduplicated
    experiment               the experiment's root dir (commands.sh)
  """
  from warm_jax.merging.output import MANIFEST_NAME
  out: dict[str, Any] = {"input": os.path.abspath(input), "params_path": str(params_path)}
  manifest = _read_json(os.path.join(str(params_path), MANIFEST_NAME))
  sources = [str(params_path)]
  if manifest and manifest.get("inputs"):
    out["warm"] = {"method": manifest.get("method"), "weights": manifest.get("weights"),
                   "members": [{k: m.get(k) for k in ("arg", "path", "step")}
                               for m in manifest["inputs"]],
                   "finished": manifest.get("finished")}
    sources = [m["path"] for m in manifest["inputs"] if m.get("path")]
  model_dirs = [d for d in (_model_dir_of(s) for s in sources) if d]
  if model_dirs:
    out["model_dirs"] = model_dirs
  data_dirs: list[str] = []
  for d in model_dirs:
    data = _data_dir_of_model_dir(d)
    if data and data not in data_dirs:
      data_dirs.append(data)
  if data_dirs:
    out["data_dirs"] = data_dirs
  root = _experiment_root(input) or _experiment_root(str(params_path))
  if root:
    out["experiment"] = root
  return out


def find_spm_model(tokenizer: str | None, prov: dict[str, Any], *,
                   experiment_fallback: bool = True) -> str | None:
  """The SentencePiece model to export: `tokenizer` (a data dir or a .model file) if given,
  else the spm.model of the DATA_DIR the model was trained on (what its data arrays hold),
  else, with `experiment_fallback` (no import tokenizer to copy instead), of its experiment's
  data/clean; None when nothing names one."""
  from warm_jax.data.data_dir import SPM_MODEL_FILE
  if tokenizer:
    path = os.path.join(tokenizer, SPM_MODEL_FILE) if os.path.isdir(tokenizer) else tokenizer
    if not os.path.isfile(path):
      raise ConversionError(f"--tokenizer {tokenizer}: no {SPM_MODEL_FILE} there; pass the data "
                            "dir the model was trained on (it holds spm.model) or the .model "
                            "file itself")
    return path
  candidates = [os.path.join(d, SPM_MODEL_FILE) for d in prov.get("data_dirs", [])]
  if prov.get("experiment") and experiment_fallback:
    candidates.append(os.path.join(prov["experiment"], "data", "clean", SPM_MODEL_FILE))
  return next((c for c in candidates if os.path.isfile(c)), None)


def _data_meta(spm_model: str | None) -> dict[str, Any]:
  from warm_jax.data.data_dir import META_FILE
  if not spm_model:
    return {}
  return _read_json(os.path.join(os.path.dirname(spm_model), META_FILE)) or {}


def input_format(spm_model: str | None) -> tuple[str, str, str]:
  """(description, example prompt, example summary) of the text the model was trained on: the
  synthetic world's `{post} TL;DR: {summary}` or the real TL;DR release's SUBREDDIT/TITLE/POST
  header (`warm_jax.data.world.format_prompt`, `warm_jax.data.tldr.format_prompt`)."""
  from warm_jax.data import world
  tasks = _data_meta(spm_model).get("tasks") or {}
  if tasks.get("preferences") == "tldr_comparisons":  # build.REAL_PREFERENCE_TASK
    # as warm_jax.data.tldr.format_prompt writes it (that module imports TFDS)
    prompt = ("SUBREDDIT: r/relationships\nTITLE: My friend forgot my birthday\nPOST: we have "
              "been friends for years and she forgot it.\nTL;DR:")
    return ("the real TL;DR format: `SUBREDDIT: r/<subreddit>\\nTITLE: <title>\\nPOST: "
            "<post>\\nTL;DR:` then the summary after one space", prompt,
            "my friend forgot my birthday")
  prompt = world.format_prompt("my friend forgot my birthday and i feel sad. should i talk "
                               "to her?")
  return ("the synthetic TL;DR world's format: `<post> TL;DR: <summary>` (one space on each "
          "side of the marker)", prompt, "friend forgot my birthday, i feel sad")


def _warm_lines(prov: dict[str, Any]) -> list[str]:
  warm = prov.get("warm")
  if not warm:
    return []
  members = warm["members"]
  lines = [f"WARM: the weight average ({warm['method']}) of {len(members)} reward models "
           "fine-tuned from one shared initialisation, averaged by `python -m warm_jax.average`:"]
  for member, weight in zip(members, warm.get("weights") or [None] * len(members)):
    step = f", step {member['step']}" if member.get("step") is not None else ""
    w = f", weight {weight:.4g}" if isinstance(weight, (int, float)) else ""
    lines.append(f"- `{member.get('arg') or member.get('path')}`{step}{w}")
  return lines


def render(*, head: str, architecture: str, family: str, config: Any, prov: dict[str, Any],
           spm_model: str | None, tokenizer_files: list[str], special_ids: dict[str, Any],
           dropped_bias: float | None, readout: dict[str, Any] | None = None) -> str:
  """The README.md of an export (see the module docstring). spm_model: the SentencePiece model
  exported as the tokenizer (None: an import's own tokenizer files were copied, or none);
  readout: the log-prob readout's settings (`exporter._logprob_readout`) for head
  "reward_logprob"."""
  is_rm = head != "lm"
  remote = ", trust_remote_code=True" if readout is not None else ""
  title = ("a WARM reward model" if prov.get("warm") else "a reward model") if is_rm \
      else "a policy (language model)"
  lines = [f"# {os.path.basename(os.path.normpath(prov['input']))}: {title} exported by warm-jax",
           "", f"`{architecture}` (transformers, model_type `{family}`): {config.num_layers} "
           f"layers, d_model {config.d_model}, {config.num_heads} heads, vocabulary "
           f"{config.vocab_size}, at most {config.max_len} tokens.", "",
           f"Exported from `{prov['input']}` (params `{prov['params_path']}`).", ""]
  lines += _warm_lines(prov) + ([""] if prov.get("warm") else [])
  if prov.get("experiment"):
    lines += [f"Run: the warm-jax experiment at `{prov['experiment']}` (its report.md and "
              "commands.sh say how each stage was trained).", ""]
  if prov.get("data_dirs"):
    lines += ["Trained on the data dir(s): " + ", ".join(f"`{d}`" for d in prov["data_dirs"]),
              ""]
  description, prompt, summary = input_format(spm_model)
  ids = ", ".join(f"{k} {v}" for k, v in special_ids.items() if v is not None)
  no_bos = " No BOS token is used." if special_ids.get("bos") is None else ""
  lines += ["## Input format", ""]
  if readout is not None:
    lines += [f"One sequence per (post, summary): {description}, followed by EOS.", "",
              "This reward model uses warm-jax's log-prob readout (`reward_readout="
              "'hidden_logprob'`), which no stock transformers class computes: the export ships "
              f"`{readout.get('modeling_file', 'modeling_warm_reward.py')}` and config.json's "
              "`auto_map` points to it, so load it with `trust_remote_code=True` (without it "
              "transformers refuses the model type). The class is the family's *ForCausalLM "
              "plus the reward head: r = `score` (weight . h_last + bias) + `logprob_score` . "
              "[softmin, mean, sum] of log p(token | previous tokens) over the response, h_last "
              "the final hidden state at the last real token (the EOS). The response is every "
              f"token after the LAST occurrence of the marker's ids "
              f"{readout['separator_ids']} (`{readout['separator']}`, "
              "`warm_response_separator_ids` in config.json) up to the EOS: the summary and its "
              "EOS, as warm-jax marks it. softmin = -tau * logsumexp(-lp / tau), tau = "
              f"{readout['tau']} (from {readout['tau_source']}). A summary that itself contains "
              "the marker would be read from its last marker on; a sequence without the marker "
              "is refused.", ""]
  elif is_rm:
    lines += [f"One sequence per (post, summary): {description}, followed by EOS. The reward "
              "is read at the last real token (the EOS): `score` applied to the final hidden "
              "state there (transformers' *ForSequenceClassification reads the last token "
              "that is not the pad id).", ""]
  else:
    lines += [f"The prompt is the post and the `TL;DR:` marker ({description}); the policy "
              "continues it with a summary ended by EOS.", ""]
  if tokenizer_files:
    agree = " (config.json and the tokenizer agree)" if spm_model is not None else \
        " in config.json (the imported model's)"
    lines += [f"Special ids{agree}: {ids}.{no_bos}", ""]
    if is_rm and spm_model is not None:
      lines += ["The tokenizer appends EOS itself (`tokenizer(text)` or "
                "`tokenizer(prompt, summary)`), so its ids are exactly those warm-jax scored "
                "(`encode(prompt) + encode(summary) + [EOS]`). Pad on the right.", ""]
    elif is_rm:
      lines += ["This is the imported model's own tokenizer: warm-jax scored `encode(prompt) + "
                f"encode(summary) + [{special_ids.get('eos')}]` (EOS last); if "
                "`tokenizer(text)` does not end with that id, append it. Pad on the right.",
                ""]
    elif spm_model is not None:
      lines += ["The tokenizer adds no special token; pad prompts on the left for batched "
                "generation.", ""]
  else:
    lines += ["No tokenizer was exported with this model (none was found beside the "
              "checkpoint): tokenise with the one it was trained with, or export again with "
              "`--tokenizer DATA_DIR`.", ""]
  lines += ["## Use it with transformers", "", "```python", "import torch, transformers",
            "path = \"<this dir>\"",
            f"tokenizer = transformers.AutoTokenizer.from_pretrained(path{remote})"]
  if is_rm:
    lines += ["model = transformers.AutoModelForSequenceClassification.from_pretrained("
              f"path{remote})",
              f"prompt = {prompt!r}", f"summary = {summary!r}",
              "batch = tokenizer([prompt], [summary], return_tensors=\"pt\", padding=True)",
              "with torch.no_grad():", "  reward = model(**batch).logits[:, 0]", "```", "",
              "or `transformers.pipeline(\"text-classification\", model=path, "
              f"function_to_apply=\"none\"{remote})` on `prompt + \" \" + summary`. Rewards are "
              "Bradley-Terry logits: compare two summaries of one post (their difference is "
              "the log-odds that the first is preferred); their absolute level means nothing."]
  else:
    lines += ["model = transformers.AutoModelForCausalLM.from_pretrained(path)",
              f"batch = tokenizer([{prompt!r}], return_tensors=\"pt\")",
              "out = model.generate(**batch, do_sample=False, max_new_tokens=48)",
              "print(tokenizer.decode(out[0, batch[\"input_ids\"].shape[1]:], "
              "skip_special_tokens=True))", "```", "",
              "Greedy generation equals warm-jax's sampler at temperature 0."]
  lines += ["", "## Limits", ""]
  if dropped_bias is not None:
    lines.append(f"- The reward head's bias ({dropped_bias:.6g}) was dropped (transformers' "
                 "`score` has none): rewards are shifted by that constant.")
  if readout:
    lines.append("- warm-jax computes the log-prob features only in a window at the end of "
                 "each row when TransformerConfig.logprob_window is set and refuses a longer "
                 "response; this class reads every position, so it gives the same rewards and "
                 "also scores such responses.")
  lines += ["- The log-prob readout needs `trust_remote_code=True` (the custom class in "
            "modeling_warm_reward.py, which imports only torch and transformers)." if readout
            else "- This reward model uses the hidden-state readout (a stock transformers "
            "class); one trained with the log-prob readout is exported with a custom class "
            "(`trust_remote_code=True`)." if is_rm else
            "- Sampling at a temperature draws other random numbers than warm-jax does: only "
            "greedy decoding matches token for token.",
            f"- Sequences longer than {config.max_len} tokens do not fit the model."]
  return "\n".join(lines) + "\n"
