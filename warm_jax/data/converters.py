"""seqio feature converters to the model's batches, and task -> numpy array export.

Where it sits: the data build reads each seqio task (the synthetic world's, `synthetic_tasks`,
or the real TL;DR ones, `tldr_tasks`) through one of these converters and stores the result as
fixed-shape arrays (`DIR/arrays/*.npz`) that the TF-free training stages load
(`warm_jax.data.datasets`). The converters are where the batch layout is defined:

- `LMFeatureConverter` (pre-training): task feature `targets` (a document + EOS) ->
  `tokens`, `mask`, `loss_mask` [L]. Documents are concatenated and cut into windows of L
  tokens (GPT-style packing: every token is real and a target; the last partial window is
  dropped; attention is not reset between documents).
- `PromptCompletionFeatureConverter` (SFT): `inputs` (prompt, no EOS) + `targets` (summary +
  EOS) -> `tokens` = prompt then summary, right-padded to L; `mask` 1 on real tokens;
  `loss_mask` 1 exactly on the summary tokens and its EOS.
- `PreferenceFeatureConverter` (reward models): `inputs`, `chosen`, `rejected` ->
  `chosen_tokens`, `chosen_mask`, `rejected_tokens`, `rejected_mask` [L], right-padded, the
  same prompt in both, and `chosen_response_mask`, `rejected_response_mask` [L]: 1 exactly on
  each side's summary tokens and its EOS (what a log-prob reward readout reads,
  `TransformerConfig.reward_readout`); per-pair metadata passes through.
- `PromptFeatureConverter` (best-of-N, RL): `inputs` -> `prompt_tokens`, `prompt_mask` [P],
  LEFT-padded so that every row's last prompt token sits at position P - 1, ready for decoding.
Every converter except the LM one also emits `num_truncated` (a scalar): a prompt too long to
fit is truncated from the LEFT (the start of the post goes, "TL;DR:" and the summaries are
always kept), and this counts the prompt tokens removed. A summary alone longer than L is cut
to L tokens (the task keeps its EOS last) and the whole prompt counts as truncated.

Because the converters truncate the prompt themselves, tasks must be read with
`trim_output_features=False` (seqio's default trim would cut prompts from the right):
`task_arrays` and `get_model_dataset` below do this.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import seqio
import tensorflow as tf

FeatureSpec = seqio.FeatureConverter.FeatureSpec
_EXPORT_BATCH = 4096  # rows per tf.data batch when exporting to numpy
_PACK_DOCUMENTS = 1024  # documents concatenated per packing step (speed only: same windows)


def _scalar(dtype=tf.int32) -> FeatureSpec:
  return FeatureSpec(dtype=dtype, rank=0)


def _right_pad(x: tf.Tensor, length: int) -> tf.Tensor:
  return tf.ensure_shape(tf.pad(x, [[0, length - tf.size(x)]]), [length])


def _join(prompt: tf.Tensor, completions: list[tf.Tensor], length: int
          ) -> tuple[list[tuple[tf.Tensor, tf.Tensor, tf.Tensor]], tf.Tensor]:
  """[(tokens, mask, loss_mask)] per completion, each prompt + completion right-padded to
  `length`; the prompt (shared) is left-truncated to fit the longest completion."""
  completions = [c[:length] for c in completions]
  longest = tf.reduce_max(tf.stack([tf.size(c) for c in completions]))
  keep = tf.minimum(tf.size(prompt), length - longest)
  prompt_kept = prompt[tf.size(prompt) - keep:]
  out = []
  for c in completions:
    tokens = tf.concat([prompt_kept, c], axis=0)
    ones = tf.ones_like(tokens)
    loss = tf.concat([tf.zeros_like(prompt_kept), tf.ones_like(c)], axis=0)
    out.append((_right_pad(tokens, length), _right_pad(ones, length), _right_pad(loss, length)))
  return out, tf.size(prompt) - keep


class _Converter(seqio.FeatureConverter):
  """Padding converters: no seqio packing; lengths are enforced in `_convert_features`."""

  PACKING_FEATURE_DTYPES: Mapping[str, tf.dtypes.DType] = {}

  def __init__(self, *, passthrough_features: Mapping[str, FeatureSpec] | None = None):
    # The length check would reject prompts longer than L before they are left-truncated.
    super().__init__(pack=False, apply_length_check=False,
                     passthrough_features=dict(passthrough_features or {}) or None)

  def _passthrough(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {k: features[k] for k in self._passthrough_features}

  def _passthrough_lengths(self) -> dict[str, int]:
    return {k: 0 for k in self._passthrough_features}


class LMFeatureConverter(_Converter):
  """Documents ending in EOS -> packed windows {tokens, mask, loss_mask} of L = targets len."""

  TASK_FEATURES = {"targets": FeatureSpec(dtype=tf.int32)}
  MODEL_FEATURES = {"tokens": FeatureSpec(dtype=tf.int32), "mask": FeatureSpec(dtype=tf.int32),
                    "loss_mask": FeatureSpec(dtype=tf.int32)}

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    length = task_feature_lengths["targets"]

    def cut(leftover, documents):  # carry the tail that does not fill a window to the next batch
      stream = tf.concat([leftover, documents.flat_values], axis=0)
      n = tf.size(stream) // length
      return stream[n * length:], tf.reshape(stream[:n * length], [n, length])

    windows = (ds.map(lambda ex: ex["targets"]).ragged_batch(_PACK_DOCUMENTS)
               .scan(tf.zeros([0], tf.int32), cut).unbatch())

    def features(tokens):
      tokens = tf.ensure_shape(tokens, [length])
      return {"tokens": tokens, "mask": tf.ones_like(tokens), "loss_mask": tf.ones_like(tokens)}

    return windows.map(features)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> dict[str, int]:
    length = task_feature_lengths["targets"]
    return {"tokens": length, "mask": length, "loss_mask": length}


class PromptCompletionFeatureConverter(_Converter):
  """{inputs, targets} -> {tokens, mask, loss_mask} [L = targets length], num_truncated."""

  TASK_FEATURES = {"inputs": FeatureSpec(dtype=tf.int32), "targets": FeatureSpec(dtype=tf.int32)}
  MODEL_FEATURES = {"tokens": FeatureSpec(dtype=tf.int32), "mask": FeatureSpec(dtype=tf.int32),
                    "loss_mask": FeatureSpec(dtype=tf.int32), "num_truncated": _scalar()}

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    length = task_feature_lengths["targets"]

    def convert(ex):
      [(tokens, mask, loss_mask)], num_truncated = _join(ex["inputs"], [ex["targets"]], length)
      return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask,
              "num_truncated": num_truncated, **self._passthrough(ex)}

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> dict[str, int]:
    length = task_feature_lengths["targets"]
    return {"tokens": length, "mask": length, "loss_mask": length, "num_truncated": 0,
            **self._passthrough_lengths()}


class PreferenceFeatureConverter(_Converter):
  """{inputs, chosen, rejected} -> {chosen,rejected}_{tokens,mask} [L = chosen length]."""

  TASK_FEATURES = {"inputs": FeatureSpec(dtype=tf.int32), "chosen": FeatureSpec(dtype=tf.int32),
                   "rejected": FeatureSpec(dtype=tf.int32)}
  MODEL_FEATURES = {"chosen_tokens": FeatureSpec(dtype=tf.int32),
                    "chosen_mask": FeatureSpec(dtype=tf.int32),
                    "rejected_tokens": FeatureSpec(dtype=tf.int32),
                    "rejected_mask": FeatureSpec(dtype=tf.int32),
                    "chosen_response_mask": FeatureSpec(dtype=tf.int32),
                    "rejected_response_mask": FeatureSpec(dtype=tf.int32),
                    "num_truncated": _scalar()}

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    length = task_feature_lengths["chosen"]

    def convert(ex):
      joined, num_truncated = _join(ex["inputs"], [ex["chosen"], ex["rejected"]], length)
      (chosen, chosen_mask, chosen_response), (rejected, rejected_mask, rejected_response) = \
          joined
      return {"chosen_tokens": chosen, "chosen_mask": chosen_mask, "rejected_tokens": rejected,
              "rejected_mask": rejected_mask, "chosen_response_mask": chosen_response,
              "rejected_response_mask": rejected_response, "num_truncated": num_truncated,
              **self._passthrough(ex)}

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> dict[str, int]:
    length = task_feature_lengths["chosen"]
    return {"chosen_tokens": length, "chosen_mask": length, "rejected_tokens": length,
            "rejected_mask": length, "chosen_response_mask": length,
            "rejected_response_mask": length, "num_truncated": 0,
            **self._passthrough_lengths()}


class PromptFeatureConverter(_Converter):
  """{inputs} -> {prompt_tokens, prompt_mask} [P = inputs length], LEFT-padded."""

  TASK_FEATURES = {"inputs": FeatureSpec(dtype=tf.int32)}
  MODEL_FEATURES = {"prompt_tokens": FeatureSpec(dtype=tf.int32),
                    "prompt_mask": FeatureSpec(dtype=tf.int32), "num_truncated": _scalar()}

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    length = task_feature_lengths["inputs"]

    def convert(ex):
      prompt = ex["inputs"]
      kept = prompt[tf.maximum(tf.size(prompt) - length, 0):]
      pad = [[length - tf.size(kept), 0]]
      return {"prompt_tokens": tf.ensure_shape(tf.pad(kept, pad), [length]),
              "prompt_mask": tf.ensure_shape(tf.pad(tf.ones_like(kept), pad), [length]),
              "num_truncated": tf.size(prompt) - tf.size(kept), **self._passthrough(ex)}

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> dict[str, int]:
    length = task_feature_lengths["inputs"]
    return {"prompt_tokens": length, "prompt_mask": length, "num_truncated": 0,
            **self._passthrough_lengths()}


def converter_and_lengths(*, kind: str, seq_len: int, prompt_len: int,
                          passthrough_features: Mapping[str, FeatureSpec] | None = None
                          ) -> tuple[seqio.FeatureConverter, dict[str, int]]:
  """The converter of a data kind (lm, sft, preferences, prompts) and its task lengths."""
  passthrough = dict(passthrough_features or {})
  lengths = {k: 0 for k in passthrough}
  if kind == "lm":
    if passthrough:
      raise ValueError("the lm converter packs documents and cannot pass features through")
    return LMFeatureConverter(), {"targets": seq_len}
  if kind == "sft":
    return (PromptCompletionFeatureConverter(passthrough_features=passthrough),
            {"inputs": seq_len, "targets": seq_len, **lengths})
  if kind == "preferences":
    return (PreferenceFeatureConverter(passthrough_features=passthrough),
            {"inputs": seq_len, "chosen": seq_len, "rejected": seq_len, **lengths})
  if kind == "prompts":
    return (PromptFeatureConverter(passthrough_features=passthrough),
            {"inputs": prompt_len, **lengths})
  raise ValueError(f"unknown data kind {kind!r}: use lm, sft, preferences or prompts")


def get_model_dataset(task: str | seqio.Task, *, split: str, converter: seqio.FeatureConverter,
                      task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
  """The model-feature dataset of one task split, in source order (no shuffling)."""
  return seqio.get_dataset(task, task_feature_lengths=dict(task_feature_lengths),
                           feature_converter=converter, dataset_split=split, shuffle=False,
                           trim_output_features=False, verbose=False)


def dataset_to_arrays(ds: tf.data.Dataset) -> dict[str, np.ndarray]:
  """Stacks a dataset of fixed-shape examples into {feature: [n, ...]} numpy arrays."""
  spec = ds.element_spec
  parts: dict[str, list[np.ndarray]] = {k: [] for k in spec}
  for batch in ds.batch(_EXPORT_BATCH).as_numpy_iterator():
    for k, v in batch.items():
      parts[k].append(v)
  return {k: (np.concatenate(v) if v else
              np.zeros((0, *spec[k].shape), spec[k].dtype.as_numpy_dtype))
          for k, v in parts.items()}


def task_arrays(task: str | seqio.Task, *, kind: str, split: str, seq_len: int,
                prompt_len: int, passthrough_features: Mapping[str, FeatureSpec] | None = None
                ) -> dict[str, np.ndarray]:
  """One split of a seqio task converted to the model's fixed-shape numpy arrays."""
  converter, lengths = converter_and_lengths(kind=kind, seq_len=seq_len, prompt_len=prompt_len,
                                             passthrough_features=passthrough_features)
  return dataset_to_arrays(get_model_dataset(task, split=split, converter=converter,
                                             task_feature_lengths=lengths))


def lm_task_arrays(task: str | seqio.Task, *, split: str, seq_len: int
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """`task_arrays` for an LM task, plus each document's token count (EOS included) before
  packing, from the same tokenisation pass (for the build's statistics)."""
  converter, lengths = converter_and_lengths(kind="lm", seq_len=seq_len, prompt_len=seq_len)
  task = seqio.get_mixture_or_task(task) if isinstance(task, str) else task
  documents = task.get_dataset(sequence_length=lengths, split=split, shuffle=False,
                               trim_output_features=False).cache()
  sizes = documents.map(lambda ex: tf.size(ex["targets"])).batch(_EXPORT_BATCH)
  doc_tokens = np.concatenate([np.zeros(0, np.int64), *sizes.as_numpy_iterator()])
  return dataset_to_arrays(converter(documents, lengths)), doc_tokens
