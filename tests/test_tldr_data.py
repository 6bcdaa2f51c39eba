"""The real TL;DR data path: TFDS builders over fixture files in OpenAI's format, seqio tasks."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from warm_jax.data import tldr
from warm_jax.data import tldr_tasks

tf.config.set_visible_devices([], "GPU")  # The input pipeline stays on the CPU.


def _comparison(post_id, subreddit, title, post, texts, choice, split, batch):
    """One comparison line in the release's format (policies: a PPO sample vs the reference)."""
    return {
        "info": {"id": post_id, "post": post, "title": title, "subreddit": subreddit},
        "summaries": [
            {"text": texts[0], "policy": "sup4_ppo_rm3_kl10", "note": None},
            {"text": texts[1], "policy": "ref"},
        ],
        "choice": choice,
        "worker": f"worker_{post_id}",
        "batch": batch,
        "split": split,
        "extra": {"confidence": 7},
    }


CNNDM_COMPARISON = {
    "info": {"id": "abc123", "article": "Newcastle lost.", "site": "dailymail", "title": "Match"},
    "summaries": [{"text": "lost", "policy": "ref"}, {"text": "won", "policy": "sup"}],
    "choice": 0,
    "worker": "w",
    "batch": "batch0_cnndm",
    "split": "valid2",
}
# (file, record) in file order; the builder must skip the CNN/DM line.
COMPARISONS = [
    ("batch3.json", _comparison(
        "t3_a", "relationships", "My bf forgot", "He forgot my birthday.\n\nShould I be mad?",
        (" bf forgot my birthday", " am i overreacting"), 0, "train", "batch3")),
    ("batch3.json", _comparison(
        "t3_b", "legaladvice", "Car accident", "Other driver was speeding.",
        (" other car sped", " accident, need help"), 1, "train", "batch3")),
    ("batch3.json", _comparison(
        "t3_c", "personalfinance", "Roommate owes me", "He borrowed $500.",
        (" roommate owes 500", " money problems"), 1, "valid1", "batch3")),
    ("batch0_cnndm.json", CNNDM_COMPARISON),
    ("batch9.json", _comparison(
        "t3_d", "AskReddit", "Boss yelled", "My boss yelled at me.",
        (" boss yelled", " work was bad"), 0, "train", "batch9")),
    ("batch9.json", _comparison(
        "t3_e", "relationships", "Mom visits", "Mom visits too often.",
        (" mom visits a lot", " family stuff"), 0, "valid2", "batch9")),
    ("batch9.json", _comparison(
        "t3_f", "dating", "First date", "Date went badly.",
        (" bad date", " date was bad, what now"), 1, "valid2", "batch9")),
]
RELEASE_SPLIT = {"train": "train", "validation": "valid1", "test": "valid2"}


def _post(post_id, subreddit, title, post, summary):
    return {"id": post_id, "subreddit": subreddit, "title": title, "post": post, "summary": summary}


POSTS = {
    "train": [
        _post("t3_p1", "relationships", "Gf is distant", "She stopped texting.", " gf stopped"),
        _post("t3_p2", "tifu", "TIFU cooking", "Burnt the rice.", " burnt rice"),
    ],
    "validation": [_post("t3_p3", "pets", "Dog", "Dog ate socks.", " dog ate socks")],
    "test": [_post("t3_p4", "jobs", "Offer", "Got two offers.", " which offer?")],
}


def _expected_prompt(info):
    return f"SUBREDDIT: r/{info['subreddit']}\nTITLE: {info['title']}\nPOST: {info['post']}\nTL;DR:"


def _write_lines(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _write_manual_dir(root):
    by_file = {}
    for filename, record in COMPARISONS:
        by_file.setdefault(filename, []).append(record)
    for filename, records in by_file.items():
        _write_lines(root / "comparisons" / filename, records)
    for split, records in POSTS.items():
        _write_lines(root / "tldr_3_filtered" / tldr.POSTS_FILES[split], records)
    return root


def _prepare(builder_cls, *, data_dir, manual_dir):
    builder = builder_cls(data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def _examples(builder, split):
    return [
        {k: (v.decode() if isinstance(v, bytes) else int(v)) for k, v in ex.items()}
        for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
    ]


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
    return _write_manual_dir(tmp_path_factory.mktemp("manual"))


@pytest.fixture(scope="module")
def comparisons_builder(tmp_path_factory, manual_dir):
    data_dir = tmp_path_factory.mktemp("tfds")
    return _prepare(tldr.TldrComparisons, data_dir=data_dir, manual_dir=manual_dir)


def test_comparisons_examples_match_fixture(comparisons_builder):
    for split, release_split in RELEASE_SPLIT.items():
        expected = {
            r["info"]["id"]: r
            for _, r in COMPARISONS
            if r["split"] == release_split and r is not CNNDM_COMPARISON
        }
        got = {ex["post_id"]: ex for ex in _examples(comparisons_builder, split)}
        assert set(got) == set(expected), split
        assert comparisons_builder.info.splits[split].num_examples == len(expected)
        for post_id, record in expected.items():
            ex, info = got[post_id], record["info"]
            assert ex["summary_a"] == record["summaries"][0]["text"]  # Leading space kept.
            assert ex["summary_b"] == record["summaries"][1]["text"]
            assert ex["choice"] == record["choice"]
            assert (ex["policy_a"], ex["policy_b"]) == ("sup4_ppo_rm3_kl10", "ref")
            assert (ex["worker"], ex["batch"]) == (record["worker"], record["batch"])
            for key in ("subreddit", "title", "post"):
                assert ex[key] == info[key]
            assert ex["prompt"] == _expected_prompt(info)
    # The CNN/DM comparison (valid2) is skipped.
    assert "abc123" not in {ex["post_id"] for ex in _examples(comparisons_builder, "test")}


def test_comparisons_are_deterministic(tmp_path, manual_dir, comparisons_builder):
    again = _prepare(tldr.TldrComparisons, data_dir=tmp_path, manual_dir=manual_dir)
    for split in RELEASE_SPLIT:
        assert _examples(again, split) == _examples(comparisons_builder, split)


def test_posts_examples_match_fixture(tmp_path, manual_dir):
    builder = _prepare(tldr.TldrPosts, data_dir=tmp_path, manual_dir=manual_dir)
    for split, records in POSTS.items():
        got = {ex["post_id"]: ex for ex in _examples(builder, split)}
        assert set(got) == {r["id"] for r in records}
        for r in records:
            assert got[r["id"]]["summary"] == r["summary"]
            assert got[r["id"]]["prompt"] == _expected_prompt(r)


def test_format_prompt_strips_surrounding_whitespace():
    prompt = tldr.format_prompt(subreddit="tifu", title=" A title \n", post="\nLine 1\n\nLine 2\n")
    assert prompt == "SUBREDDIT: r/tifu\nTITLE: A title\nPOST: Line 1\n\nLine 2\nTL;DR:"


def test_seqio_tasks_yield_tokenized_features(tmp_path, manual_dir):
    vocab = seqio.ByteVocabulary()
    register = lambda: tldr_tasks.register_tldr_tasks(
        vocab, data_dir=tmp_path, manual_dir=manual_dir
    )
    register()
    preference, sft = register()
    assert seqio.get_mixture_or_task("tldr_comparisons") is preference  # Re-registering replaces.

    lengths = {"inputs": 64, "chosen": 16, "rejected": 16}
    ds = preference.get_dataset(lengths, split="train", shuffle=False)
    examples = {ex["inputs_pretokenized"].decode(): ex for ex in tfds.as_numpy(ds)}
    train = [r for _, r in COMPARISONS if r["split"] == "train"]
    assert len(examples) == len(train)
    for record in train:
        ex = examples[_expected_prompt(record["info"])]
        chosen = record["summaries"][record["choice"]]["text"]
        rejected = record["summaries"][1 - record["choice"]]["text"]
        for key, text in (("chosen", chosen), ("rejected", rejected)):
            assert ex[key].dtype == "int32" and ex[key].ndim == 1
            assert ex[key].shape[0] <= lengths[key]
            # Trimmed to the length minus one, then EOS (id 1) appended.
            expected = list(vocab.encode(text))[: lengths[key] - 1] + [vocab.eos_id]
            assert ex[key].tolist() == expected
        assert ex["inputs"].shape[0] == lengths["inputs"]  # Prompts are longer: trimmed, no EOS.
        assert vocab.eos_id not in ex["inputs"].tolist()

    ds = sft.get_dataset({"inputs": 128, "targets": 32}, split="validation", shuffle=False)
    (ex,) = list(tfds.as_numpy(ds))
    record = POSTS["validation"][0]
    assert ex["targets"].tolist() == list(vocab.encode(record["summary"])) + [vocab.eos_id]
    assert vocab.decode(ex["inputs"].tolist()).endswith("TL;DR:")


# --------------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------------


def test_missing_manual_dir_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        _prepare(tldr.TldrComparisons, data_dir=tmp_path / "tfds", manual_dir=tmp_path / "absent")
    message = str(info.value)
    assert str(tmp_path / "absent") in message
    assert "summarize-from-feedback/dataset/comparisons" in message
    assert "tldr_3_filtered" in message


def test_missing_posts_file_is_named(tmp_path):
    manual = _write_manual_dir(tmp_path / "manual")
    (manual / "tldr_3_filtered" / "valid.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"tldr_3_filtered/valid\.jsonl"):
        _prepare(tldr.TldrPosts, data_dir=tmp_path / "tfds", manual_dir=manual)


def test_missing_comparisons_folder_is_named(tmp_path):
    manual = tmp_path / "manual"
    _write_lines(manual / "tldr_3_filtered" / "train.jsonl", POSTS["train"])
    with pytest.raises(FileNotFoundError, match="comparisons"):
        _prepare(tldr.TldrComparisons, data_dir=tmp_path / "tfds", manual_dir=manual)


def test_corrupt_json_line_names_file_and_line(tmp_path):
    manual = _write_manual_dir(tmp_path / "manual")
    path = manual / "comparisons" / "batch9.json"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1][: len(lines[1]) // 2] + "\n"  # Truncated record on line 2.
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"batch9\.json:2: not valid JSON"):
        _prepare(tldr.TldrComparisons, data_dir=tmp_path / "tfds", manual_dir=manual)


def test_missing_key_names_file_line_and_key(tmp_path):
    manual = _write_manual_dir(tmp_path / "manual")
    record = dict(POSTS["test"][0])
    del record["summary"]
    _write_lines(manual / "tldr_3_filtered" / "test.jsonl", [POSTS["test"][0], record])
    with pytest.raises(ValueError, match=r"test\.jsonl:2: missing key 'summary'"):
        _prepare(tldr.TldrPosts, data_dir=tmp_path / "tfds", manual_dir=manual)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.update(choice=2), "'choice' should be 0 or 1, got 2"),
        (lambda r: r.update(choice=True), "'choice' should be int, got bool"),
        (lambda r: r["summaries"][1].pop("policy"), "missing key 'summaries[1].policy'"),
        (lambda r: r["info"].pop("subreddit"), "missing key 'info.subreddit'"),
        (lambda r: r["summaries"].pop(), "'summaries' should hold 2 summaries, got 1"),
        (lambda r: r.update(split="test"), "'split' should be one of"),
    ],
)
def test_parse_comparison_line_rejects(mutate, message):
    record = json.loads(json.dumps(COMPARISONS[0][1]))
    mutate(record)
    with pytest.raises(tldr.TldrFormatError) as info:
        tldr.parse_comparison_line(
            json.dumps(record), path="comparisons/batch3.json", line_number=7
        )
    assert str(info.value).startswith("comparisons/batch3.json:7: ")
    assert message in str(info.value)


def test_parse_comparison_line_skips_cnndm_and_maps_fields():
    parse = lambda record: tldr.parse_comparison_line(json.dumps(record), path="f", line_number=1)
    assert parse(CNNDM_COMPARISON) is None
    split, example = parse(COMPARISONS[1][1])
    assert split == "train"
    assert (example["choice"], example["summary_b"]) == (1, " accident, need help")
