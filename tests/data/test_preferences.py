"""Preference pairs and splits: labels, corruption, the length knob, the policy hook, stats."""

import dataclasses
import math

import numpy as np
import pytest

from warm_jax.data import preferences as prefs
from warm_jax.data import world
from warm_jax.data.gold_reward import count_words, gold_reward

SMALL = dict(n_pretrain_posts=30, n_sft_posts=20, n_train_posts=400, n_train_pairs=2000,
             n_val_posts=200, n_val_pairs=1000, n_ood_posts=200, n_ood_pairs=1000, n_prompts=25)


def _bt_noise(pairs, temperature):
    """Independent BT prediction: P(label disagrees with gold sign) = sigmoid(-|gap| / T)."""
    return np.mean([1.0 / (1.0 + math.exp(abs(p.gold_a - p.gold_b) / temperature)) for p in pairs])


@pytest.fixture(scope="module")
def splits():
    return prefs.build_splits(config=prefs.WorldConfig(seed=0, corruption_rate=0.25, **SMALL))


@pytest.fixture(scope="module")
def clean_splits():
    return prefs.build_splits(config=prefs.WorldConfig(seed=0, corruption_rate=0.0, **SMALL))


def test_same_config_same_data_other_seed_differs():
    config = prefs.WorldConfig(
        **{**SMALL, "n_train_pairs": 40, "n_val_pairs": 10, "n_ood_pairs": 10})
    a, b = prefs.build_splits(config=config), prefs.build_splits(config=config)
    assert a == b
    c = prefs.build_splits(config=dataclasses.replace(config, seed=1))
    assert [p.summary_a for p in a.rm_train] != [p.summary_a for p in c.rm_train]
    assert a.pretrain_texts != c.pretrain_texts


def test_pairs_are_prefix_stable_in_the_number_of_pairs(clean_splits):
    config = prefs.WorldConfig(**{**SMALL, "n_train_pairs": 30, "n_val_pairs": 5, "n_ood_pairs": 5})
    assert prefs.build_splits(config=config).rm_train == clean_splits.rm_train[:30]


def test_splits_use_disjoint_posts_and_the_expected_sizes(splits):
    config = splits.config
    ids = {name: {p.post_id for p in splits.pairs(name)} for name in prefs.SPLIT_NAMES}
    ids["sft"] = {e.post_id for e in splits.sft_examples}
    ids["prompts"] = {p.post_id for p in splits.prompt_posts}
    names = list(ids)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not ids[a] & ids[b], (a, b)
    assert len(splits.pretrain_texts) == config.n_pretrain_posts
    assert all(" TL;DR: " in t for t in splits.pretrain_texts)
    assert len(splits.rm_train) == config.n_train_pairs
    assert len(splits.id_val) == config.n_val_pairs and len(splits.ood) == config.n_ood_pairs
    assert len(splits.prompt_posts) == config.n_prompts
    for example in splits.sft_examples:
        post = splits.posts[example.post_id]
        assert example.prompt == post.prompt and example.target == post.reference


def test_pair_fields_agree_with_an_independent_recomputation(splits):
    for pair in splits.rm_train[:300] + splits.ood[:100]:
        post = splits.posts[pair.post_id]
        assert pair.prompt == post.prompt
        assert pair.summary_a != pair.summary_b and pair.gold_a != pair.gold_b
        assert pair.gold_a == gold_reward(post=post, summary_text=pair.summary_a)
        assert pair.gold_b == gold_reward(post=post, summary_text=pair.summary_b)
        assert (pair.length_a, pair.length_b) == (count_words(pair.summary_a),
                                                  count_words(pair.summary_b))
        assert {pair.chosen, pair.rejected} == {pair.summary_a, pair.summary_b}
        assert pair.chosen == (pair.summary_a, pair.summary_b)[pair.label]
        assert pair.gold_label == (0 if pair.gold_a > pair.gold_b else 1)


def test_label_noise_matches_the_bradley_terry_prediction(clean_splits):
    for name in prefs.SPLIT_NAMES:
        pairs = clean_splits.pairs(name)
        measured = np.mean([p.clean_label != p.gold_label for p in pairs])
        # 1,000-2,000 Bernoulli draws: 3.5 standard errors is about 0.04.
        assert measured == pytest.approx(_bt_noise(pairs, 1.0), abs=0.04), name
        assert 0.05 < measured < 0.25


def test_temperature_sets_the_noise_level():
    base = {**SMALL, "n_train_pairs": 400, "n_val_pairs": 1, "n_ood_pairs": 1}
    sharp = prefs.build_splits(config=prefs.WorldConfig(**base, temperature=1e-3))
    assert all(p.label == p.gold_label for p in sharp.rm_train)
    flat = prefs.build_splits(config=prefs.WorldConfig(**base, temperature=1e3))
    assert np.mean([p.label != p.gold_label for p in flat.rm_train]) == pytest.approx(0.5, abs=0.08)


def test_corruption_flips_exactly_that_fraction_of_train_labels_only(splits, clean_splits):
    train = splits.rm_train
    corrupted = [p for p in train if p.corrupted]
    assert len(corrupted) == round(0.25 * len(train))
    assert all(p.label == 1 - p.clean_label for p in corrupted)
    assert all(p.label == p.clean_label for p in train if not p.corrupted)
    assert not any(p.corrupted for p in splits.id_val + splits.ood)
    # Corruption only touches labels: the clean labels are the uncorrupted build's.
    assert [p.clean_label for p in train] == [p.label for p in clean_splits.rm_train]
    assert splits.id_val == clean_splits.id_val and splits.ood == clean_splits.ood


@pytest.fixture(scope="module")
def knob_splits():
    """The generator pairs with the length knob on (off by default since world v2)."""
    return prefs.build_splits(config=prefs.WorldConfig(
        seed=0, corruption_rate=0.0, id_longer_is_better_rate=0.8,
        ood_longer_is_better_rate=0.4, **SMALL))


def test_length_knob_holds_in_id_and_is_weaker_in_ood(knob_splits):
    def longer_is_better(pairs):
        return np.mean([(p.length_a > p.length_b) == (p.gold_a > p.gold_b) for p in pairs])

    config = knob_splits.config
    assert all(p.length_a != p.length_b for p in knob_splits.rm_train + knob_splits.ood)
    id_rate, ood_rate = config.id_longer_is_better_rate, config.ood_longer_is_better_rate
    assert longer_is_better(knob_splits.rm_train) == pytest.approx(id_rate, abs=0.04)
    assert longer_is_better(knob_splits.id_val) == pytest.approx(id_rate, abs=0.05)
    assert longer_is_better(knob_splits.ood) == pytest.approx(ood_rate, abs=0.05)
    s = prefs.stats(knob_splits)
    assert s["rm_train/length_label_corr"] > 0.25
    assert s["ood/length_label_corr"] < 0.0
    assert s["rm_train/length_label_corr"] - s["ood/length_label_corr"] > 0.3


def test_every_generator_appears_in_id_and_ood(clean_splits):
    for mix in (prefs.DEFAULT_ID_MIX, prefs.DEFAULT_OOD_MIX):
        assert set(mix) == set(world.GENERATORS) and all(w > 0 for w in mix.values())
    for name in ("rm_train", "ood"):
        seen = {g for p in clean_splits.pairs(name) for g in (p.generator_a, p.generator_b)}
        assert seen == set(world.GENERATORS), name


def test_stats_match_an_independent_point_biserial(splits):
    s = prefs.stats(splits)
    assert s["sizes/rm_train"] == len(splits.rm_train)
    assert s["rm_train/corruption_rate"] == pytest.approx(0.25, abs=1e-3)
    assert s["id_val/corruption_rate"] == s["ood/corruption_rate"] == 0.0
    pairs = splits.rm_train
    x = np.array([p.length_a - p.length_b for p in pairs], dtype=float)
    y = np.array([p.label == 0 for p in pairs])
    # Point-biserial: (mean x | y=1 - mean x | y=0) / std(x) * sqrt(p (1 - p)).
    p1 = y.mean()
    r_pb = (x[y].mean() - x[~y].mean()) / x.std() * math.sqrt(p1 * (1 - p1))
    assert s["rm_train/length_label_corr"] == pytest.approx(r_pb, abs=1e-9)
    assert s["rm_train/label_noise_rate"] == pytest.approx(
        np.mean([p.clean_label != p.gold_label for p in pairs]))
    assert s["gold_by_generator/reference"] == pytest.approx(8.0, abs=0.05)
    gold = {k.split("/")[1]: v for k, v in s.items() if k.startswith("gold_by_generator/")}
    assert gold["drop_3"] < gold["drop_2"] < gold["drop_1"] < gold["reference"]


def test_policy_sampler_feeds_a_share_of_ood_only():
    calls = []

    def fake_policy(prompts, temperature, rng):
        calls.append((len(prompts), temperature))
        return [f"my boyfriend {'forgot my birthday' if rng.random() < 0.5 else 'and'} {i}"
                for i in range(len(prompts))]

    config = prefs.WorldConfig(**{**SMALL, "n_train_pairs": 50, "n_val_pairs": 10,
                                  "n_ood_pairs": 300}, ood_policy_rate=0.5, policy_temperature=1.3)
    out = prefs.build_splits(config=config, policy_sampler=fake_policy)
    assert calls == [(config.n_ood_posts * config.policy_samples_per_post, 1.3)]
    share = np.mean([g == prefs.POLICY_GENERATOR
                     for p in out.ood for g in (p.generator_a, p.generator_b)])
    assert 0.25 < share < 0.75
    assert not any(prefs.POLICY_GENERATOR in (p.generator_a, p.generator_b)
                   for p in out.rm_train + out.id_val)
    with pytest.raises(ValueError, match="one str per prompt"):
        prefs.build_splits(config=config, policy_sampler=lambda prompts, t, rng: ["x"])


def test_impossible_pairs_fail_with_a_message_naming_the_fix():
    config = prefs.WorldConfig(**{**SMALL, "n_train_pairs": 3}, id_mix={"reference": 1.0},
                               max_rejection_tries=20)
    with pytest.raises(RuntimeError, match="id_longer_is_better_rate"):
        prefs.build_splits(config=config)


@pytest.mark.parametrize("field,value,match", [
    ("temperature", 0.0, "temperature"),
    ("corruption_rate", 1.5, "corruption_rate"),
    ("id_longer_is_better_rate", -0.1, "id_longer_is_better_rate"),
    ("n_train_pairs", -1, "n_train_pairs"),
    ("n_train_posts", 0, "n_train_posts >= 1"),
    ("id_mix", {"reference": 1.0, "typo": 1.0}, "unknown generators"),
    ("ood_mix", {"reference": 0.0}, "positive sum"),
    ("policy_samples_per_post", 0, "policy_samples_per_post"),
])
def test_config_validation_names_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        prefs.WorldConfig(**{field: value})


def test_length_knob_can_be_disabled():
    sizes = {**SMALL, "n_train_pairs": 100, "n_val_pairs": 1, "n_ood_pairs": 1}
    config = prefs.WorldConfig(**sizes, id_longer_is_better_rate=None,
                               ood_longer_is_better_rate=None)
    assert len(prefs.build_splits(config=config).rm_train) == 100
