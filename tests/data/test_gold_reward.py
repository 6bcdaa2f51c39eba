"""The gold reward on hand-worked summaries, one term at a time, and on garbage text."""

import numpy as np
import pytest

from warm_jax.data import world
from warm_jax.data.gold_reward import (
    TERM_NAMES, count_words, find_mentions, gold_reward, gold_reward_terms)

# A post written by hand, so the expected scores below do not depend on the generator code.
POST = world.Post(
    post_id="hand-0",
    facts={"narrator": "25 f", "relation": "boyfriend", "duration": "one year",
           "event": "forgot my birthday", "feeling": "hurt", "question": "should i break up"},
    surfaces={"narrator": "25 f", "relation": "boyfriend", "duration": "one year",
              "event": "forgot my birthday", "feeling": "hurt", "question": "should i break up"},
    text="25 f here. my boyfriend and i have been close for one year. last week my boyfriend "
         "forgot my birthday. i feel so hurt about it. should i break up?",
    reference="my boyfriend forgot my birthday and i feel hurt. should i break up?",
)

# (summary, expected non-zero terms, expected total); each total is worked out in the comment.
HAND_CASES = [
    # 2 relation + 3 event + 1 feeling + 2 question; 14 words.
    ("my boyfriend forgot my birthday and i feel hurt. should i break up?",
     {"facts": 8.0}, 8.0),
    # Other paraphrases of the same four values score the same.
    ("my bf did not remember my birthday. i am wounded. should i end things?",
     {"facts": 8.0}, 8.0),
    # 0.5 narrator + 0.5 duration + 2 relation + 3 event; 15 words.
    ("25 year old woman here, my bf of a year forgot my birthday", {"facts": 6.0}, 6.0),
    # All six facts in 17 words: the maximum, 9.
    ("25 f. my bf of one year forgot my birthday. i feel hurt. should i break up?",
     {"facts": 9.0}, 9.0),
    # Wrong relation and wrong feeling: 3 event + 2 question - 2 * 2.
    ("my girlfriend forgot my birthday and i feel angry. should i break up?",
     {"facts": 5.0, "wrong_facts": -4.0}, 1.0),
    # Right age, wrong gender is a wrong narrator: -2.
    ("25 m here", {"wrong_facts": -2.0}, -2.0),
    # "half a year" is six months (longest match), not the post's "a year": -2.
    ("we go back half a year", {"wrong_facts": -2.0}, -2.0),
    # Right and wrong relation together: +2 - 2.
    ("my boyfriend and my mom", {"facts": 2.0, "wrong_facts": -2.0}, 0.0),
    # Relation and event said twice (second time paraphrased): 5 - 1 - 1.
    ("my boyfriend forgot my birthday. my bf did not remember my birthday.",
     {"facts": 5.0, "repeats": -2.0}, 3.0),
    # One wrong value said twice: -2 once, -1 for the repeat.
    ("my mom my mother", {"wrong_facts": -2.0, "repeats": -1.0}, -3.0),
    # A repeated feeling word: +1 - 2 repeats.
    ("hurt hurt hurt", {"facts": 1.0, "repeats": -2.0}, -1.0),
    # Two filler sentences: 5 - 2; 18 words.
    ("my boyfriend forgot my birthday. my cat slept on my keyboard all day. i had pizza for lunch.",
     {"facts": 5.0, "filler": -2.0}, 3.0),
    # Two padding phrases: 5 - 0.5 - 0.5.
    ("basically my boyfriend forgot my birthday, to be honest.",
     {"facts": 5.0, "padding": -1.0}, 4.0),
    # 25 words, 5 over the budget of 20: 5 - 0.15 * 5.
    ("my boyfriend forgot my birthday" + " and" * 20, {"facts": 5.0, "length": -0.75}, 4.25),
    # Case and punctuation are ignored: 2 relation + 3 event.
    ("MY BOYFRIEND... forgot--my Birthday!!!", {"facts": 5.0}, 5.0),
    # Partial phrases earn nothing: "forgot my" is not an event, "break up" not a question.
    ("forgot my break up", {}, 0.0),
]


@pytest.mark.parametrize("summary,nonzero,total", HAND_CASES)
def test_hand_worked_cases(summary, nonzero, total):
    terms = gold_reward_terms(post=POST, summary_text=summary)
    for name in TERM_NAMES:
        assert terms[name] == pytest.approx(nonzero.get(name, 0.0)), (name, terms)
    assert terms["total"] == pytest.approx(total)
    assert gold_reward(post=POST, summary_text=summary) == pytest.approx(total)


def test_every_term_is_exercised_by_a_hand_case():
    covered = {name for _, nonzero, _ in HAND_CASES for name in nonzero}
    assert covered == set(TERM_NAMES)


def test_total_is_the_sum_of_the_terms_and_word_count_is_reported():
    summary = "long story short my dad forgot my birthday and my dog barked all night " * 3
    terms = gold_reward_terms(post=POST, summary_text=summary)
    assert terms["total"] == pytest.approx(sum(terms[name] for name in TERM_NAMES))
    assert terms["n_words"] == count_words(summary) == 42
    # By hand: +3 event, -2 wrong dad, repeats: dad x3 and event x3 -> -4, 3 fillers, 3 paddings,
    # 22 words over budget.
    assert terms["total"] == pytest.approx(3 - 2 - 4 - 3 - 1.5 - 0.15 * 22)


def test_reference_tldrs_of_generated_posts_score_about_8():
    posts = world.generate_posts(seed=7, n=200)
    scores = np.array([gold_reward(post=p, summary_text=p.reference) for p in posts])
    assert scores.min() >= 7.5
    assert scores.mean() == pytest.approx(8.0, abs=0.1)


@pytest.mark.parametrize("garbage", [
    "", "   ", "!!! ??? ...", "TL;DR:", "日本語のテキスト", "\n\t\n", "my " * 500,
    "should should should i i i break break", "the the the weather weather",
    "a" * 10_000, "0 1 2 3 25 25 25 f f f", "<pad> <eos> <unk>",
])
def test_garbage_text_gets_a_finite_score(garbage):
    terms = gold_reward_terms(post=POST, summary_text=garbage)
    assert all(np.isfinite(v) for v in terms.values())
    assert terms["total"] <= world.FACT_WEIGHTS["feeling"]  # nothing of value in there


def test_empty_text_scores_zero():
    assert gold_reward(post=POST, summary_text="") == 0.0


def test_random_word_salad_never_crashes_and_stays_below_the_maximum():
    rng = np.random.default_rng(0)
    vocab = sorted({w for p in world.generate_posts(seed=0, n=50) for w in
                    (p.text + " " + p.reference).replace(".", " ").replace("?", " ").split()})
    for _ in range(300):
        words = rng.choice(vocab, size=int(rng.integers(0, 60)))
        score = gold_reward(post=POST, summary_text=" ".join(words))
        assert np.isfinite(score) and score <= sum(world.FACT_WEIGHTS.values())


def test_find_mentions_takes_the_longest_phrase():
    assert find_mentions("half a year") == [("fact", "duration", "six months")]
    assert find_mentions("a year") == [("fact", "duration", "one year")]
    assert find_mentions("at the end of the day") == [("padding", "at the end of the day", "")]
