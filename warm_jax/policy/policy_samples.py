"""What the two stages that sample a policy into preference data share: sampling, input checks,
the output dir's resume rule and the token arrays.

Where it sits: under `data.policy_pairs` (OOD pairs of SFT samples at high temperature, an
evaluation split) and `data.on_policy` (the RMs' training and validation pairs of policy
samples). Both sample a LanguageModel checkpoint through `ModelPolicySampler` (the KV-cache
`Sampler` behind the world's `preferences.PolicySampler` interface), check DATA_DIR (a
synthetic-world build), POLICY_DIR (a policy trained with DATA_DIR's tokenizer) and its params
(`check_policy_params`), follow one resume rule for OUTPUT_DIR (`check_output_dir`) and make
their token arrays with the data build's own seqio task and converter
(`export_preference_arrays`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from warm_jax.core import run_dir
from warm_jax.data import data_dir as data_dir_lib

KIND = "policy_pairs"  # meta.json's kind of a policy-pairs output dir
SPLIT = "ood"  # the on-disk split name of the policy pairs (the preference loaders accept it)
PROGRESS_EVERY_BATCHES = 4  # a progress line every this many sampling calls


class PolicyPairsError(ValueError):
  """An input of the policy-pairs stage is missing or does not match; nothing was written."""


# ---------------------------------------------------------------------------------------------
# Prompts and the model-backed PolicySampler
# ---------------------------------------------------------------------------------------------
def encode_prompts(vocabulary: Any, prompts: Sequence[str], *, prompt_len: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Prompts -> (tokens, mask) [n, prompt_len] LEFT-padded and num_truncated [n], exactly as
  the data build's prompt arrays (`converters.PromptFeatureConverter`: the start of a long
  post is cut, `TL;DR:` always stays)."""
  tokens = np.zeros((len(prompts), prompt_len), np.int32)
  mask = np.zeros_like(tokens)
  truncated = np.zeros(len(prompts), np.int32)
  for i, prompt in enumerate(prompts):
    ids = vocabulary.encode(prompt)
    if not ids:
      raise ValueError(f"prompt {i} encodes to no tokens: {prompt!r}")
    kept = ids[-prompt_len:]
    tokens[i, prompt_len - len(kept):] = kept
    mask[i, prompt_len - len(kept):] = 1
    truncated[i] = len(ids) - len(kept)
  return tokens, mask, truncated


class ModelPolicySampler:
  """A `preferences.PolicySampler` backed by a LanguageModel: text prompts in, text out.

  Samples with the KV-cache `Sampler` at the temperature it is called with; the sampling seed
  is drawn from the rng it is given (so the pool is a function of the caller's seed). After a
  call, `last_lengths` / `last_ended` hold the generated tokens per sample (EOS included) and
  whether each ended with EOS (else it was cut at max_new_tokens).

  Args:
    params: the policy's params (host or device arrays).
    model_config: its shape.
    vocabulary: the data dir's tokenizer (`datasets.load_vocabulary`).
    prompt_len: P of the left-padded prompts (the data dir's PROMPT_LEN).
    max_new_tokens: most tokens per sample (EOS included).
    partitioner: mesh and rules; batch_size: rows per compiled call.
    max_positions: the positions the policy (and the reward models that will read its
      samples) were trained on, the data dir's SEQ_LEN (`sampling.trained_positions`): a
      sample is cut where its prompt + summary + the EOS that closes it in the preference
      arrays reach it (`sampling.check_positions`, `Sampler(max_positions=...)`). None: the
      model's max_len.
  """

  def __init__(self, *, params: Any, model_config: Any, vocabulary: Any, prompt_len: int,
               max_new_tokens: int = 48, partitioner: Any = None, batch_size: int = 64,
               max_positions: int | None = None):
    from warm_jax.core.partitioning import Partitioner
    self.params, self.model_config, self.vocabulary = params, model_config, vocabulary
    self.prompt_len, self.max_new_tokens = prompt_len, max_new_tokens
    self.max_positions = max_positions
    self.partitioner = partitioner or Partitioner()
    self.batch_size = batch_size
    self.last_lengths = np.zeros(0, np.int32)
    self.last_ended = np.zeros(0, bool)
    self.seconds = 0.0

  def __call__(self, prompts: Sequence[str], temperature: float,
               rng: np.random.Generator) -> list[str]:
    from warm_jax.policy.oracle import decode_responses
    from warm_jax.policy.sampling import Sampler, SamplingConfig
    tokens, mask, _ = encode_prompts(self.vocabulary, prompts, prompt_len=self.prompt_len)
    sampler = Sampler(model_config=self.model_config, partitioner=self.partitioner,
                      config=SamplingConfig(max_new_tokens=self.max_new_tokens,
                                            temperature=temperature),
                      batch_size=self.batch_size, max_positions=self.max_positions,
                      closing_eos=self.max_positions is not None)
    from warm_jax.core.metrics_writer import Progress
    seed = int(rng.integers(0, 2 ** 31 - 1))
    params = sampler.place(self.params)
    t0 = time.perf_counter()
    n, chunk = len(prompts), self.batch_size * PROGRESS_EVERY_BATCHES
    progress = Progress(name="policy_pairs", total_steps=n)
    texts, lengths, ended = [], [], []
    for start in range(0, n, chunk):  # row ids = global indices: chunking changes nothing
      rows = np.arange(start, min(start + chunk, n), dtype=np.int32)
      samples = sampler.sample(params, tokens[rows], mask[rows], seed=seed, row_ids=rows)
      texts += decode_responses(self.vocabulary, samples.tokens, samples.mask)
      lengths.append(samples.lengths)
      ended.append(samples.ended)
      progress.update(int(rows[-1]) + 1, {"tokens/s": float(np.concatenate(lengths).sum()) /
                                          (time.perf_counter() - t0)})
    self.seconds = time.perf_counter() - t0
    self.last_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int32)
    self.last_ended = np.concatenate(ended) if ended else np.zeros(0, bool)
    logging.info("sampled %d summaries at temperature %g in %.1fs (%.0f tokens/s)", n,
                 temperature, self.seconds, self.last_lengths.sum() / max(self.seconds, 1e-9))
    return texts


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------
def file_digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def real_path(path: str) -> str:
  return os.path.realpath(os.path.abspath(path))


def check_data_dir(data_dir: str | None) -> dict[str, Any]:
  """meta.json of DATA_DIR if it is a complete synthetic-world data build, else an error."""
  if not data_dir:
    raise PolicyPairsError("DATA_DIR is not set: pass --gin.DATA_DIR=\"'/path'\" (the data dir "
                           "the SFT policy was trained on)")
  meta = data_dir_lib.read_meta(data_dir)
  if meta.get("kind") == KIND:
    source = meta.get("source", {}).get("data_dir")
    raise PolicyPairsError(f"DATA_DIR {data_dir} is a policy-pairs output, not a data build: "
                           f"pass the data dir it was built from ({source})")
  task = meta.get("tasks", {}).get("preferences")
  if task != "synthetic_tldr_preferences":
    raise PolicyPairsError(f"DATA_DIR {data_dir} holds the preference task {task!r}: policy "
                           "pairs need the synthetic world's gold reward (real TL;DR data has "
                           "none); build one with `python -m warm_jax.data.build "
                           "--gin_file=gin/data/synthetic_tldr.gin --output_dir=DIR`")
  if "world_config" not in meta:
    raise PolicyPairsError(f"{data_dir}/meta.json has no world_config: rebuild the data dir")
  return meta


def _config_gin_data_dir(policy_dir: str) -> str | None:
  """The DATA_DIR macro (or sft_dataset.data_dir) of a run dir's config.gin, if any."""
  path = os.path.join(policy_dir, "config.gin")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    text = f.read()
  for pattern in (r"^DATA_DIR\s*=\s*'([^']*)'\s*$", r"^sft_dataset\.data_dir\s*=\s*'([^']*)'"):
    m = re.search(pattern, text, flags=re.MULTILINE)
    if m:
      return m.group(1)
  return None


def check_policy_dir(policy_dir: str | None, *, data_dir: str) -> str:
  """Resolves POLICY_DIR to its params checkpoint dir; refuses a missing one or one trained on
  a data dir whose tokenizer differs from DATA_DIR's."""
  from warm_jax.core import checkpoints as ckpt_lib
  if not policy_dir:
    raise PolicyPairsError("POLICY_DIR is not set: pass --gin.POLICY_DIR=\"'/path'\" (the SFT "
                           "stage's MODEL_DIR, a checkpoints/<step> dir or a params dir)")
  if not os.path.exists(policy_dir):
    raise PolicyPairsError(f"POLICY_DIR {policy_dir} does not exist: pass the SFT stage's "
                           "MODEL_DIR (train it with gin/sft.gin)")
  try:
    params_path = str(ckpt_lib.resolve_params_path(policy_dir))
  except ckpt_lib.CheckpointError as e:
    raise PolicyPairsError(f"POLICY_DIR {policy_dir}: {e}") from None
  if (os.path.isdir(os.path.join(policy_dir, "checkpoints"))
      and not run_dir.is_done(policy_dir)):
    logging.warning("POLICY_DIR %s has no DONE marker: sampling its latest checkpoint (%s) of "
                    "an unfinished run", policy_dir, params_path)
  # The run dir holding config.gin: POLICY_DIR itself, or the run of a
  # RUN/checkpoints/<step>/params path.
  policy_run = policy_dir
  m = re.fullmatch(r"(.*)/checkpoints/\d+/params/?", real_path(params_path))
  if not os.path.isfile(os.path.join(policy_run, "config.gin")) and m:
    policy_run = m.group(1)
  trained_on = _config_gin_data_dir(policy_run)
  spm = os.path.join(data_dir, data_dir_lib.SPM_MODEL_FILE)
  if trained_on is None:
    logging.warning("POLICY_DIR %s has no config.gin naming its DATA_DIR: cannot check that it "
                    "was trained with the tokenizer of %s", policy_dir, data_dir)
  elif real_path(trained_on) != real_path(data_dir):
    other = os.path.join(trained_on, data_dir_lib.SPM_MODEL_FILE)
    if not os.path.isfile(other):
      logging.warning("POLICY_DIR %s was trained on %s, which no longer exists: cannot check "
                      "its tokenizer against %s", policy_dir, trained_on, data_dir)
    elif file_digest(other) != file_digest(spm):
      raise PolicyPairsError(
          f"POLICY_DIR {policy_dir} was trained on data dir {trained_on}, whose tokenizer "
          f"differs from DATA_DIR {data_dir}'s: its samples would be decoded with the wrong "
          f"vocabulary. Pass --gin.DATA_DIR=\"'{trained_on}'\" (or a data dir built with the "
          "same world and tokenizer)")
  return params_path


def check_policy_params(params: Any, *, model_config: Any, params_path: str) -> None:
  """Refuses params that are not a LanguageModel of `model_config`, naming the first leaf."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from warm_jax.core.checkpoints import flatten_params
  from warm_jax.models import LanguageModel
  model = LanguageModel(model_config)
  expected = flatten_params(jax.eval_shape(lambda: nn.unbox(model.init(
      jax.random.key(0), jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32)))["params"]))
  found = flatten_params(params)
  hint = ("; it holds a reward model (reward_head): pass the SFT policy's dir"
          if any("reward_head" in k or "value_head" in k for k in found) else
          "; pass the model gin file it was trained with (e.g. gin/models/small.gin)")
  for name in sorted(set(expected) | set(found)):
    if name not in found:
      raise PolicyPairsError(f"POLICY_DIR checkpoint {params_path} lacks the LanguageModel "
                             f"leaf {name}{hint}")
    if name not in expected:
      raise PolicyPairsError(f"POLICY_DIR checkpoint {params_path} has leaf {name}, which the "
                             f"configured LanguageModel does not{hint}")
    if tuple(found[name].shape) != tuple(expected[name].shape):
      raise PolicyPairsError(
          f"POLICY_DIR checkpoint {params_path} has {name} of shape "
          f"{tuple(found[name].shape)} but the configured model's is "
          f"{tuple(expected[name].shape)}: the policy has another architecture{hint}")


def check_model_fits(meta: Mapping[str, Any], *, model_config: Any, max_new_tokens: int,
                     data_dir: str, error: type[ValueError]) -> tuple[int, int]:
  """(PROMPT_LEN, SEQ_LEN) of DATA_DIR's meta.json, after checking that the policies' model
  reads its tokenizer (vocab size) and holds a prompt + MAX_NEW_TOKENS (max_len); `error`
  names the fix otherwise."""
  if model_config.vocab_size != meta["vocab_size"]:
    raise error(f"the model's vocab_size is {model_config.vocab_size} but DATA_DIR "
                f"{data_dir} has {meta['vocab_size']} pieces: set VOCAB_SIZE to "
                f"{meta['vocab_size']} or pass the policy's own data dir")
  prompt_len, seq_len = int(meta["prompt_len"]), int(meta["seq_len"])
  if prompt_len + max_new_tokens > model_config.max_len:
    raise error(f"PROMPT_LEN {prompt_len} + MAX_NEW_TOKENS {max_new_tokens} exceeds the "
                f"model's max_len {model_config.max_len}: lower MAX_NEW_TOKENS")
  return prompt_len, seq_len


def world_posts(data_dir: str, *, meta: Mapping[str, Any], split: str) -> list[Any]:
  """The posts of the world's `split` ('rm_train', 'id_val' or 'ood') in the world's order,
  read from DATA_DIR/text/posts.jsonl ([] when the world has none in that split)."""
  from warm_jax.data import preferences as prefs
  from warm_jax.data import world
  config = prefs.WorldConfig(**meta["world_config"])
  start, n = config.post_ranges()[split]
  ids = [p.post_id for p in world.generate_posts(seed=config.seed, n=n, start=start)]
  posts = data_dir_lib.load_posts(data_dir) if ids else {}
  missing = [i for i in ids if i not in posts]
  if missing:
    raise data_dir_lib.DataDirError(
        f"{data_dir}/text/posts.jsonl lacks post {missing[0]} of the {split} split its "
        "meta.json's world_config defines: the data dir comes from another version of the "
        "world; rebuild it")
  return [posts[i] for i in ids]


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def export_preference_arrays(tmp_dir: str, *, generators: Sequence[str], seq_len: int,
                             prompt_len: int, split: str = SPLIT) -> dict[str, np.ndarray]:
  """arrays/preferences.<split>.npz from text/preferences.<split>.jsonl of `tmp_dir` (which
  holds spm.model) through the data build's seqio task and converter (the canonical
  tokenisation path), plus pair_index."""
  import seqio
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # the input pipeline never takes accelerators
  from warm_jax.data import converters, synthetic_tasks
  vocabulary = seqio.SentencePieceVocabulary(os.path.join(tmp_dir, data_dir_lib.SPM_MODEL_FILE))
  tasks = synthetic_tasks.register_synthetic_tasks(tmp_dir, vocabulary=vocabulary,
                                                   generators=generators)
  arrays = converters.task_arrays(tasks["preferences"], kind="preferences", split=split,
                                  seq_len=seq_len, prompt_len=prompt_len,
                                  passthrough_features=synthetic_tasks.metadata_feature_specs())
  arrays["pair_index"] = np.arange(len(arrays["chosen_tokens"]), dtype=np.int32)
  name = data_dir_lib.dataset_name("preferences", split)
  path = data_dir_lib.arrays_path(tmp_dir, name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez_compressed(path, **arrays)
  return arrays


def check_output_dir(output_dir: str | None, *, inputs: Mapping[str, str], kind: str,
                     what: str, request: Mapping[str, Any], overwrite: bool,
                     error: type[ValueError] = PolicyPairsError) -> dict[str, Any] | None:
  """The resume rule of a stage that writes one dir (policy pairs, on-policy RM data): None if
  OUTPUT_DIR may be (re)written; its stats.json if it already holds this exact `request` (a
  finished dir of `kind`); otherwise an `error` naming the fix. `inputs` ({macro: path}) may
  not overlap OUTPUT_DIR; `what` names the stage's output in messages."""
  if not output_dir:
    raise error("OUTPUT_DIR is not set: pass --gin.OUTPUT_DIR=\"'/path'\" (a new dir; the "
                "inputs are never modified)")
  for name, other in inputs.items():
    if run_dir.overlaps(output_dir, other):
      raise error(f"OUTPUT_DIR {output_dir} overlaps {name} {other}: write the {what} to a "
                  "dir of its own")
  if not os.path.lexists(output_dir):
    return None
  if not os.path.isdir(output_dir):
    raise error(f"OUTPUT_DIR {output_dir} exists and is not a directory")
  if not os.listdir(output_dir):
    return None
  meta_path = os.path.join(output_dir, data_dir_lib.META_FILE)
  meta = None
  if os.path.isfile(meta_path):
    with open(meta_path, encoding="utf-8") as f:
      meta = json.load(f)
  if not meta or meta.get("kind") != kind:
    raise error(f"OUTPUT_DIR {output_dir} exists, is not empty and is not a {what} dir: "
                "choose another path (nothing was written)")
  wanted = json.loads(json.dumps(run_dir.finite_or_none(dict(request))))  # as stored in meta.json
  done = os.path.isfile(os.path.join(output_dir, run_dir.DONE))
  if done and meta.get("request") == wanted and not overwrite:
    logging.info("%s already built in %s for this request: nothing to do", what, output_dir)
    with open(os.path.join(output_dir, data_dir_lib.STATS_FILE), encoding="utf-8") as f:
      return json.load(f)
  if not overwrite:
    stored = meta.get("request") or {}
    changed = [k for k in wanted if stored.get(k) != wanted[k]]
    state = (f"{what} built with other settings (differing: {', '.join(changed)})"
             if done else f"an unfinished {what} dir (no {run_dir.DONE})")
    raise error(f"OUTPUT_DIR {output_dir} already holds {state}: pass --gin.OVERWRITE=True "
                "to replace it (the old dir stays until the new one is complete), or choose "
                "another OUTPUT_DIR")
  return None


