"""TFDS builders for the real TL;DR data: OpenAI's summarize-from-feedback release.

Where this sits in the pipeline: it is the real-data replacement for the synthetic TL;DR world.
`TldrComparisons` ("tldr_comparisons") holds the human preference pairs that reward models are
trained and evaluated on; `TldrPosts` ("tldr_posts") holds the filtered Reddit posts with their
reference TL;DRs for the SFT stage. `warm_jax.data.tldr_tasks` wraps both in seqio tasks: the
preference task is what the `PREFERENCE_TASK` gin macro names for RM training, the SFT task feeds
the SFT stage.

Nothing is downloaded: both builders read files a person has placed in the TFDS manual dir (see
`MANUAL_DOWNLOAD_INSTRUCTIONS`). Every line is validated; a corrupt line raises
`TldrFormatError` (a `ValueError`) naming the file, the 1-based line number and what is wrong,
because a silently dropped comparison changes the label-noise statistics WARM is about.

Choices made here (and why):
- Splits of the comparisons follow the release's `split` field: train <- "train",
  validation <- "valid1", test <- "valid2". OpenAI selected models on valid1 and reported on
  valid2, so valid1 is the in-distribution validation set (RM selection, early stopping) and
  valid2 stays untouched for final numbers.
- Every `comparisons/*.json` file is read, sorted by name (the `batch*.json` files plus
  `cnndm0.json`, `cnndm2.json` and `edit_b2_eval_test.json`), so the counts match the 92,858
  training comparisons the WARM paper refers to. Comparisons of CNN/DM articles (their `info`
  has `article`/`site` instead of `post`) are skipped, and counted in the log: WARM is a TL;DR
  study and those rows have no subreddit or post.
- Summaries are kept verbatim, including the leading space the release puts in front of each
  TL;DR, so `prompt + summary` reads "...TL;DR: text".
- Determinism: files are read in sorted order and each example is keyed by "file:line", so the
  prepared dataset (TFDS orders examples by a hash of the key) is the same on every machine.
"""

from __future__ import annotations

import inspect
import json
import logging
import textwrap
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

__all__ = [
    "COMPARISONS_SUBDIR",
    "COMPARISON_FILES",
    "COMPARISON_SPLITS",
    "MANUAL_DOWNLOAD_INSTRUCTIONS",
    "POSTS_FILES",
    "POSTS_SUBDIR",
    "TldrComparisons",
    "TldrFormatError",
    "TldrPosts",
    "format_prompt",
    "parse_comparison_line",
    "parse_post_line",
    "read_comparisons",
    "read_posts",
]

_BLOB = "https://openaipublic.blob.core.windows.net/summarize-from-feedback"
# Note the release's two roots: comparisons live under `dataset/`, the filtered posts under
# `datasets/` (plural), as in OpenAI's own loader (summarize_from_feedback/datasets/tldr.py).
COMPARISONS_URL = f"{_BLOB}/dataset/comparisons"
POSTS_URL = f"{_BLOB}/datasets/tldr_3_filtered"

COMPARISONS_SUBDIR = "comparisons"
POSTS_SUBDIR = "tldr_3_filtered"

# The comparison files of the public release (there is no batch21). The builder reads whatever
# `*.json` files are present and only warns about missing ones, so a subset also builds.
COMPARISON_FILES = tuple(
    [f"batch{i}.json" for i in range(3, 23) if i != 21]
    + ["batch0_cnndm.json", "cnndm0.json", "cnndm2.json", "edit_b2_eval_test.json"]
)
# TFDS split -> value of the release's `split` field.
COMPARISON_SPLITS: Mapping[str, str] = {"train": "train", "validation": "valid1", "test": "valid2"}
# TFDS split -> file under tldr_3_filtered/.
POSTS_FILES: Mapping[str, str] = {
    "train": "train.jsonl",
    "validation": "valid.jsonl",
    "test": "test.jsonl",
}

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Both TL;DR builders (tldr_comparisons, tldr_posts) read one manual dir, laid out like OpenAI's
public summarize-from-feedback blob:

  <manual_dir>/
    {COMPARISONS_SUBDIR}/
      every *.json file of {COMPARISONS_URL}/ :
      {textwrap.fill(" ".join(COMPARISON_FILES), width=88, subsequent_indent=" " * 6)}
    {POSTS_SUBDIR}/
      train.jsonl valid.jsonl test.jsonl of {POSTS_URL}/

For example (azcopy from https://aka.ms/azcopy, or wget each file listed above):
  azcopy copy "{COMPARISONS_URL}" <manual_dir> --recursive
  for f in train valid test; do
    wget -P <manual_dir>/{POSTS_SUBDIR} {POSTS_URL}/$f.jsonl; done

The manual dir is the `manual_dir=` builder argument (what `register_tldr_tasks(manual_dir=...)`
passes), else `download_config=tfds.download.DownloadConfig(manual_dir=...)`, else TFDS's
default <data_dir>/downloads/manual/.
"""

_CITATION = """\
@inproceedings{stiennon2020learning,
  title={Learning to summarize from human feedback},
  author={Stiennon, Nisan and Ouyang, Long and Wu, Jeff and Ziegler, Daniel M. and Lowe, Ryan
          and Voss, Chelsea and Radford, Alec and Amodei, Dario and Christiano, Paul},
  booktitle={NeurIPS},
  year={2020}
}
"""
_HOMEPAGE = "https://github.com/openai/summarize-from-feedback"


class TldrFormatError(ValueError):
    """A line of a TL;DR data file is corrupt; the message names the file and line."""


def format_prompt(*, subreddit: str, title: str, post: str) -> str:
    """The prompt every stage conditions on: the post in the summarize-from-feedback layout.

    Surrounding whitespace of each field is stripped (inner newlines are kept); the summary is
    appended directly after "TL;DR:" (release summaries start with a space).
    """
    return f"SUBREDDIT: r/{subreddit.strip()}\nTITLE: {title.strip()}\nPOST: {post.strip()}\nTL;DR:"


# ---------------------------------------------------------------------------------------------
# Line parsing and validation.
# ---------------------------------------------------------------------------------------------


def _fail(path: str, line_number: int, what: str) -> TldrFormatError:
    return TldrFormatError(f"{path}:{line_number}: {what}")


def _load_object(line: str, *, path: str, line_number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _fail(path, line_number, f"not valid JSON ({exc})") from None
    if not isinstance(record, dict):
        raise _fail(path, line_number, f"expected a JSON object, got {type(record).__name__}")
    return record


def _get(
    mapping: Mapping[str, Any], key: str, kind: type, *, where: str, path: str, line_number: int
) -> Any:
    """Returns mapping[key], checking presence and type; `where` is the key's dotted path."""
    if key not in mapping:
        raise _fail(path, line_number, f"missing key {where!r}")
    value = mapping[key]
    # bool is an int in Python; a JSON `true` is never a valid choice.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _fail(
            path,
            line_number,
            f"key {where!r} should be {kind.__name__}, got {type(value).__name__} ({value!r:.80})",
        )
    return value


def parse_comparison_line(
    line: str, *, path: str, line_number: int
) -> tuple[str, dict[str, Any]] | None:
    """Parses and validates one line of a `comparisons/*.json` file.

    Args:
      line: the raw JSON line.
      path: the file it came from (only for error messages).
      line_number: its 1-based line number (only for error messages).

    Returns:
      (release split: "train" | "valid1" | "valid2", example with the `TldrComparisons`
      features), or None for a CNN/DM comparison (its `info` has an `article`, no `post`).

    Raises:
      TldrFormatError: bad JSON, a missing key, a wrong type, not exactly two summaries, a
        choice not in {0, 1}, or an unknown split; the message names path:line_number.
    """
    where = dict(path=path, line_number=line_number)
    record = _load_object(line, **where)
    info = _get(record, "info", dict, where="info", **where)
    if "post" not in info and "article" in info:
        return None  # A CNN/DM comparison: see the module docstring.
    post_id = _get(info, "id", str, where="info.id", **where)
    post = _get(info, "post", str, where="info.post", **where)
    title = _get(info, "title", str, where="info.title", **where)
    subreddit = _get(info, "subreddit", str, where="info.subreddit", **where)

    summaries = _get(record, "summaries", list, where="summaries", **where)
    if len(summaries) != 2:
        raise _fail(path, line_number, f"'summaries' should hold 2 summaries, got {len(summaries)}")
    texts, policies = [], []
    for i, summary in enumerate(summaries):
        if not isinstance(summary, dict):
            raise _fail(path, line_number, f"summaries[{i}] should be an object")
        texts.append(_get(summary, "text", str, where=f"summaries[{i}].text", **where))
        policies.append(_get(summary, "policy", str, where=f"summaries[{i}].policy", **where))

    choice = _get(record, "choice", int, where="choice", **where)
    if choice not in (0, 1):
        raise _fail(path, line_number, f"'choice' should be 0 or 1, got {choice}")
    split = _get(record, "split", str, where="split", **where)
    if split not in COMPARISON_SPLITS.values():
        raise _fail(
            path,
            line_number,
            f"'split' should be one of {sorted(COMPARISON_SPLITS.values())}, got {split!r}",
        )
    example = {
        "post_id": post_id,
        "subreddit": subreddit,
        "title": title,
        "post": post,
        "prompt": format_prompt(subreddit=subreddit, title=title, post=post),
        "summary_a": texts[0],
        "summary_b": texts[1],
        "choice": choice,
        "policy_a": policies[0],
        "policy_b": policies[1],
        "worker": _get(record, "worker", str, where="worker", **where),
        "batch": _get(record, "batch", str, where="batch", **where),
    }
    return split, example


def parse_post_line(line: str, *, path: str, line_number: int) -> dict[str, Any]:
    """Parses and validates one line of a `tldr_3_filtered/*.jsonl` file.

    Returns:
      An example with the `TldrPosts` features.

    Raises:
      TldrFormatError: bad JSON, a missing key or a wrong type; the message names
        path:line_number.
    """
    where = dict(path=path, line_number=line_number)
    record = _load_object(line, **where)
    fields = {
        key: _get(record, key, str, where=key, **where)
        for key in ("id", "subreddit", "title", "post", "summary")
    }
    return {
        "post_id": fields["id"],
        "subreddit": fields["subreddit"],
        "title": fields["title"],
        "post": fields["post"],
        "summary": fields["summary"],
        "prompt": format_prompt(
            subreddit=fields["subreddit"], title=fields["title"], post=fields["post"]
        ),
    }


def _numbered_lines(path: epath.Path) -> Iterator[tuple[int, str]]:
    """Yields (1-based line number, line) for the non-blank lines of a JSON-lines file."""
    with path.open("r") as f:
        for line_number, line in enumerate(f, start=1):
            if line.strip():
                yield line_number, line


def read_comparisons(
    paths: list[epath.Path], *, split: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields ("file:line", example) for the TL;DR comparisons of release split `split`."""
    kept = skipped_cnndm = 0
    for path in sorted(paths, key=lambda p: p.name):
        for line_number, line in _numbered_lines(path):
            parsed = parse_comparison_line(line, path=str(path), line_number=line_number)
            if parsed is None:
                skipped_cnndm += 1
                continue
            line_split, example = parsed
            if line_split == split:
                kept += 1
                yield f"{path.name}:{line_number}", example
    logging.info(
        "tldr_comparisons: %d comparisons in split %r (%d CNN/DM lines skipped in all splits)",
        kept,
        split,
        skipped_cnndm,
    )


def read_posts(path: epath.Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields ("file:line", example) for every post of one tldr_3_filtered file."""
    for line_number, line in _numbered_lines(path):
        yield f"{path.name}:{line_number}", parse_post_line(
            line, path=str(path), line_number=line_number
        )


# ---------------------------------------------------------------------------------------------
# Builders.
# ---------------------------------------------------------------------------------------------


def _missing(builder_name: str, what: str, path: epath.Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{builder_name}: {what} not found at {path}. Download OpenAI's files and place them "
        f"as follows.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )


class _ManualDirBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared plumbing: a `manual_dir` builder argument and a clear error when it is absent.

    The builder argument exists because seqio's `TfdsDataSource` prepares datasets through
    `tfds.load`, which forwards builder kwargs but no download config.
    """

    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10's own `code_path` checks `importlib_resources.abc.Traversable`, a backport
        # it only requires on Python < 3.9, so on 3.11 without it preparing any builder defined
        # outside TFDS dies with ModuleNotFoundError. The file of the class is all TFDS needs
        # (it looks for an optional checksums.tsv beside it).
        return epath.Path(inspect.getfile(cls))

    def __init__(self, *, manual_dir: epath.PathLike | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._tldr_manual_dir = epath.Path(manual_dir) if manual_dir else None
        # TFDS pickles a builder as its constructor arguments.
        self._original_state["manual_dir"] = manual_dir

    def _resolve_manual_dir(self, dl_manager: tfds.download.DownloadManager) -> epath.Path:
        """The builder argument if given, else the download config's (or TFDS default) dir."""
        if self._tldr_manual_dir is not None:
            manual_dir = self._tldr_manual_dir
            if not manual_dir.is_dir():
                raise _missing(self.name, "the TL;DR manual dir", manual_dir)
            return manual_dir
        try:
            return dl_manager.manual_dir
        except AssertionError as exc:  # TFDS: "Manual directory ... does not exist or is empty"
            raise FileNotFoundError(f"{self.name}: {exc}") from None


class TldrComparisons(_ManualDirBuilder):
    """OpenAI's TL;DR human comparisons: (prompt, summary_a, summary_b, choice) and metadata.

    Splits: train (release split "train"), validation ("valid1"), test ("valid2").
    `choice` is the index of the summary the labeller preferred: 0 -> summary_a, 1 -> summary_b.
    """

    name = "tldr_comparisons"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "TL;DR comparisons of summarize-from-feedback; CNN/DM skipped."}

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        features = {
            key: text
            for key in (
                "post_id", "subreddit", "title", "post", "prompt", "summary_a", "summary_b",
                "policy_a", "policy_b", "worker", "batch",
            )
        }
        features["choice"] = tfds.features.Scalar(
            dtype=np.int32, doc="index of the preferred summary: 0 = summary_a, 1 = summary_b"
        )
        # DatasetInfo directly (not dataset_info_from_configs), so that a README.md or
        # CITATIONS.bib next to this module never becomes the dataset's description.
        return tfds.core.DatasetInfo(
            builder=self,
            description="Human preferences between two TL;DR summaries of a Reddit post "
            "(Stiennon et al., 2020), from OpenAI's summarize-from-feedback release.",
            features=tfds.features.FeaturesDict(features),
            homepage=_HOMEPAGE,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        comparisons_dir = self._resolve_manual_dir(dl_manager) / COMPARISONS_SUBDIR
        if not comparisons_dir.is_dir():
            raise _missing(self.name, f"the folder '{COMPARISONS_SUBDIR}/'", comparisons_dir)
        paths = sorted(comparisons_dir.glob("*.json"), key=lambda p: p.name)
        if not paths:
            raise _missing(self.name, f"a '{COMPARISONS_SUBDIR}/*.json' file", comparisons_dir)
        absent = sorted(set(COMPARISON_FILES) - {p.name for p in paths})
        if absent:
            logging.warning(
                "tldr_comparisons: building from a subset of the release; absent from %s: %s",
                comparisons_dir,
                ", ".join(absent),
            )
        return {
            tfds_split: self._generate_examples(paths=paths, release_split=release_split)
            for tfds_split, release_split in COMPARISON_SPLITS.items()
        }

    def _generate_examples(self, *, paths: list[epath.Path], release_split: str):
        yield from read_comparisons(paths, split=release_split)


class TldrPosts(_ManualDirBuilder):
    """The filtered TL;DR posts (tldr_3_filtered) with their reference summaries, for SFT.

    Splits: train (train.jsonl), validation (valid.jsonl), test (test.jsonl).
    """

    name = "tldr_posts"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "tldr_3_filtered of summarize-from-feedback."}

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description="Filtered Reddit TL;DR posts with the author's reference summary "
            "(Stiennon et al., 2020; Volske et al., 2017).",
            features=tfds.features.FeaturesDict(
                {
                    key: text
                    for key in ("post_id", "subreddit", "title", "post", "prompt", "summary")
                }
            ),
            supervised_keys=("prompt", "summary"),
            homepage=_HOMEPAGE,
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        posts_dir = self._resolve_manual_dir(dl_manager) / POSTS_SUBDIR
        paths = {split: posts_dir / filename for split, filename in POSTS_FILES.items()}
        for path in paths.values():
            if not path.is_file():
                raise _missing(self.name, f"the file '{POSTS_SUBDIR}/{path.name}'", path)
        return {split: self._generate_examples(path=path) for split, path in paths.items()}

    def _generate_examples(self, *, path: epath.Path):
        yield from read_posts(path)
