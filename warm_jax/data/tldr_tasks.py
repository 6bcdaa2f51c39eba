"""seqio tasks over the real TL;DR data: the preference task for RMs and the SFT task.

Where this sits in the pipeline: the real-data replacement for the synthetic world's tasks.
`register_tldr_tasks` registers
- "tldr_comparisons" (`PREFERENCE_TASK_NAME`): features `inputs` (the prompt), `chosen` and
  `rejected` (the labeller's preferred and other summary). Point the data build's
  `PREFERENCE_TASK` gin macro at it (`--gin.PREFERENCE_TASK="'tldr_comparisons'"`, see
  docs/data.md) to train and evaluate reward models on human labels.
- "tldr_sft" (`SFT_TASK_NAME`): features `inputs` (the prompt) and `targets` (the reference
  TL;DR), for the SFT stage (the build's `SFT_TASK` macro).
Both read the TFDS builders of `warm_jax.data.tldr` (prepared on first use from the manual dir)
and tokenize with whatever `seqio.Vocabulary` the model uses. `inputs` gets no EOS (the summary
continues the prompt); `chosen`, `rejected` and `targets` end in EOS, so a reward model reads its
score at the same kind of token for every summary.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import seqio
import tensorflow as tf
from etils import epath

from warm_jax.data import tldr  # Registers the TFDS builders "tldr_comparisons", "tldr_posts".

__all__ = [
    "PREFERENCE_TASK_NAME",
    "SFT_TASK_NAME",
    "comparison_to_preference",
    "preference_output_features",
    "register_tldr_tasks",
    "sft_output_features",
]

PREFERENCE_TASK_NAME = "tldr_comparisons"
SFT_TASK_NAME = "tldr_sft"
_SPLITS = ("train", "validation", "test")


def preference_output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    """Output features of the preference task: inputs (no EOS), chosen and rejected (EOS)."""
    return {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=False),
        "chosen": seqio.Feature(vocabulary=vocabulary, add_eos=True),
        "rejected": seqio.Feature(vocabulary=vocabulary, add_eos=True),
    }


def sft_output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    """Output features of the SFT task: inputs (no EOS) and targets (EOS)."""
    return {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=False),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
    }


@seqio.map_over_dataset
def comparison_to_preference(example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """A `tldr_comparisons` example -> {inputs, chosen, rejected}; choice 0 prefers summary_a."""
    a_preferred = tf.equal(example["choice"], 0)
    return {
        "inputs": example["prompt"],
        "chosen": tf.where(a_preferred, example["summary_a"], example["summary_b"]),
        "rejected": tf.where(a_preferred, example["summary_b"], example["summary_a"]),
    }


def _source(
    tfds_name: str, *, data_dir: epath.PathLike | None, manual_dir: epath.PathLike | None
) -> seqio.TfdsDataSource:
    # seqio prepares a missing dataset with `tfds.load(..., download=True)`, which passes builder
    # kwargs but no DownloadConfig: the manual dir therefore travels as a builder argument.
    builder_kwargs: dict[str, Any] | None = (
        {"manual_dir": str(manual_dir)} if manual_dir is not None else None
    )
    return seqio.TfdsDataSource(
        tfds_name=tfds_name,
        tfds_data_dir=str(data_dir) if data_dir is not None else None,
        # Explicit splits: without them seqio asks the builder's info for its splits, which
        # is empty until the dataset has been prepared.
        splits=_SPLITS,
        tfds_builder_kwargs=builder_kwargs,
    )


def _add_task(name: str, **task_kwargs: Any) -> seqio.Task:
    seqio.TaskRegistry.remove(name)  # Re-registering (a notebook, a second gin run) replaces.
    return seqio.TaskRegistry.add(name, **task_kwargs)


def register_tldr_tasks(
    vocabulary: seqio.Vocabulary,
    *,
    data_dir: epath.PathLike | None = None,
    manual_dir: epath.PathLike | None = None,
) -> tuple[seqio.Task, seqio.Task]:
    """Registers (or re-registers) the "tldr_comparisons" and "tldr_sft" seqio tasks.

    Args:
      vocabulary: the model's vocabulary; tokenizes every text feature.
      data_dir: the TFDS data dir holding (or to hold) the prepared datasets; None for the TFDS
        default (TFDS_DATA_DIR or ~/tensorflow_datasets).
      manual_dir: the folder with OpenAI's files (`tldr.MANUAL_DOWNLOAD_INSTRUCTIONS`); None
        for TFDS's default, <data_dir>/downloads/manual. Only read when a dataset is prepared.

    Returns:
      (preference task, SFT task).
    """
    preference = _add_task(
        PREFERENCE_TASK_NAME,
        source=_source(
            f"{tldr.TldrComparisons.name}:{tldr.TldrComparisons.VERSION}",
            data_dir=data_dir,
            manual_dir=manual_dir,
        ),
        preprocessors=[
            comparison_to_preference,
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=preference_output_features(vocabulary),
    )
    sft = _add_task(
        SFT_TASK_NAME,
        source=_source(
            f"{tldr.TldrPosts.name}:{tldr.TldrPosts.VERSION}",
            data_dir=data_dir,
            manual_dir=manual_dir,
        ),
        preprocessors=[
            functools.partial(
                seqio.preprocessors.rekey, key_map={"inputs": "prompt", "targets": "summary"}
            ),
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=sft_output_features(vocabulary),
    )
    return preference, sft
