"""The synthetic world: determinism, post shape, and what each candidate generator writes."""

import re

import numpy as np
import pytest

from warm_jax.data import world
from warm_jax.data.gold_reward import count_words, find_mentions, gold_reward_terms

N_POSTS = 300
EXPECTED_GENERATORS = {
    "reference", "drop_1", "drop_2", "drop_3", "truncate", "hallucinate", "hallucinate_long",
    "filler", "repeat", "verbose",
}


@pytest.fixture(scope="module")
def posts():
    return world.generate_posts(seed=0, n=N_POSTS)


def _fact_mentions(text):
    return [(m[1], m[2]) for m in find_mentions(text) if m[0] == "fact"]


def test_same_seed_same_posts_and_other_seed_differs():
    a = world.generate_posts(seed=3, n=20)
    b = world.generate_posts(seed=3, n=20)
    c = world.generate_posts(seed=4, n=20)
    assert a == b
    assert [p.text for p in a] != [p.text for p in c]
    assert len({p.text for p in a}) == 20  # posts of one world differ from each other


def test_posts_are_prefix_stable_and_start_offsets():
    many = world.generate_posts(seed=1, n=12)
    assert world.generate_posts(seed=1, n=5) == many[:5]
    assert world.generate_posts(seed=1, n=4, start=8) == many[8:]
    assert world.generate_post(seed=1, index=7) == many[7]
    assert len({p.post_id for p in many}) == 12


def test_generate_posts_rejects_negative_sizes():
    with pytest.raises(ValueError, match="n=-1"):
        world.generate_posts(seed=0, n=-1)


def test_pools_have_8_to_14_values_and_weights_sum_to_9():
    for fact_type in world.FACT_TYPES:
        assert 8 <= len(world.fact_values(fact_type)) <= 14, fact_type
    assert sum(world.FACT_WEIGHTS.values()) == pytest.approx(9.0)
    assert sum(world.FACT_WEIGHTS[t] for t in world.SUMMARY_FACT_TYPES) == pytest.approx(8.0)


def test_post_text_states_every_fact_with_2_to_4_fillers(posts):
    for post in posts:
        assert re.fullmatch(r"[a-z0-9 ,.?:]+", post.text), post.text
        mentioned = set(_fact_mentions(post.text))
        for fact_type, value in post.facts.items():
            assert (fact_type, value) in mentioned, (fact_type, post.text)
            assert post.surfaces[fact_type] in world.paraphrases(fact_type, value)
        # No wrong value of any fact type slips into a post.
        assert all(post.facts[t] == v for t, v in mentioned)
        n_filler = sum(1 for m in find_mentions(post.text) if m[0] == "filler")
        assert world.N_FILLER_POST_RANGE[0] <= n_filler <= world.N_FILLER_POST_RANGE[1]
        assert post.text.endswith("?")  # the question closes the post


def test_post_plus_any_summary_fits_120_words(posts):
    rng = np.random.default_rng(0)
    for post in posts:
        assert post.prompt == f"{post.text} TL;DR:"
        for name in world.GENERATORS:
            summary = world.generate_summary(post=post, generator_name=name, rng=rng)
            assert count_words(world.format_example(post.text, summary)) <= 120, name


def test_reference_states_the_four_summary_facts_in_20_words(posts):
    for post in posts:
        assert set(_fact_mentions(post.reference)) == {
            (t, post.facts[t]) for t in world.SUMMARY_FACT_TYPES}
        assert count_words(post.reference) <= 20


def test_generator_registry_is_complete_and_unknown_names_fail(posts):
    assert set(world.GENERATORS) == EXPECTED_GENERATORS
    with pytest.raises(ValueError, match="unknown generator_name 'nope'"):
        world.generate_summary(post=posts[0], generator_name="nope", rng=np.random.default_rng(0))


def test_generators_are_deterministic_given_the_rng(posts):
    for name in world.GENERATORS:
        a = [world.generate_summary(post=p, generator_name=name, rng=np.random.default_rng(5))
             for p in posts[:20]]
        b = [world.generate_summary(post=p, generator_name=name, rng=np.random.default_rng(5))
             for p in posts[:20]]
        assert a == b, name


@pytest.mark.parametrize("k", [1, 2, 3])
def test_drop_k_states_4_minus_k_right_facts_and_nothing_else(posts, k):
    rng = np.random.default_rng(k)
    for post in posts[:100]:
        text = world.generate_summary(post=post, generator_name=f"drop_{k}", rng=rng)
        mentioned = _fact_mentions(text)
        assert len(mentioned) == len(set(mentioned)) == 4 - k, text
        assert all(post.facts[t] == v and t in world.SUMMARY_FACT_TYPES for t, v in mentioned)
        terms = gold_reward_terms(post=post, summary_text=text)
        expected = sum(world.FACT_WEIGHTS[t] for t, _ in mentioned)
        assert terms["total"] == pytest.approx(expected)


def test_truncate_keeps_35_to_75_percent_of_the_reference_words(posts):
    rng = np.random.default_rng(0)
    low, high = world.TRUNCATE_FRACTION_RANGE
    for post in posts[:100]:
        words = post.reference.split()
        text = world.generate_summary(post=post, generator_name="truncate", rng=rng)
        kept = text.split()
        assert kept == words[:len(kept)]
        assert np.ceil(low * len(words)) <= len(kept) <= np.ceil(high * len(words))


def test_hallucinate_swaps_exactly_one_fact(posts):
    rng = np.random.default_rng(0)
    for post in posts[:100]:
        mentioned = _fact_mentions(
            world.generate_summary(post=post, generator_name="hallucinate", rng=rng))
        wrong = [(t, v) for t, v in mentioned if post.facts[t] != v]
        right = [(t, v) for t, v in mentioned if post.facts[t] == v]
        assert len(wrong) == 1 and len(right) == 3
        assert {t for t, _ in mentioned} == set(world.SUMMARY_FACT_TYPES)


def test_hallucinate_long_states_all_six_facts_plus_1_or_2_wrong(posts):
    rng = np.random.default_rng(0)
    for post in posts[:100]:
        text = world.generate_summary(post=post, generator_name="hallucinate_long", rng=rng)
        mentioned = _fact_mentions(text)
        right = {(t, v) for t, v in mentioned if post.facts[t] == v}
        wrong = [(t, v) for t, v in mentioned if post.facts[t] != v]
        assert right == set(post.facts.items())
        assert 1 <= len(wrong) <= 2
        assert count_words(text) > count_words(post.reference)


def _terms(post, generator_name, rng):
    summary = world.generate_summary(post=post, generator_name=generator_name, rng=rng)
    return gold_reward_terms(post=post, summary_text=summary)


def test_filler_repeat_verbose_add_exactly_their_defect(posts):
    rng = np.random.default_rng(0)
    for post in posts[:100]:
        terms = _terms(post, "filler", rng)
        assert terms["facts"] == 8.0 and terms["filler"] in (-1.0, -2.0)
        assert terms["wrong_facts"] == terms["repeats"] == terms["padding"] == 0.0

        terms = _terms(post, "repeat", rng)
        assert terms["facts"] == 8.0 and terms["repeats"] <= -1.0
        assert terms["wrong_facts"] == terms["filler"] == terms["padding"] == 0.0

        terms = _terms(post, "verbose", rng)
        assert terms["facts"] == 9.0 and terms["padding"] in (-0.5, -1.0, -1.5)
        assert terms["wrong_facts"] == terms["filler"] == terms["repeats"] == 0.0


def test_filler_sentences_and_padding_phrases_are_detected_once_each():
    for sentence in world.FILLER_SENTENCES:
        assert [m[0] for m in find_mentions(sentence)] == ["filler"], sentence
    for phrase in world.PADDING_PHRASES:
        assert [m[0] for m in find_mentions(phrase)] == ["padding"], phrase
