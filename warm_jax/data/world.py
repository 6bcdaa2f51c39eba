"""The synthetic TL;DR world: posts with latent facts, reference TL;DRs and candidate summaries.

Where it sits in the pipeline: this module is the source of every text the project trains on.
`preferences.build_splits` turns it into the pre-training corpus (posts + reference TL;DRs), the
SFT examples (post -> reference), and the reward-model preference pairs (train / ID val / OOD);
`gold_reward.gold_reward` parses any text against a post's latent facts and is the oracle for
best-of-N, RL, win rates and the pairs' labels. Pure Python + numpy, deterministic per seed.

Design (docs/data.md, "The world" and its history):
- A post has six latent facts, each a value from a pool of 12-14 values with 1-3 paraphrases
  (`FACT_POOLS`; the first paraphrase is the canonical value). Importance weights
  (`FACT_WEIGHTS`): narrator (age + gender) 0.5, relation 2, duration 0.5, event 3 (multi-word),
  feeling 1, question 2. Ages are written with digits, every other number with words, so the
  phrases of different fact types never collide (`gold_reward` checks this at import).
- The post text is one Reddit-like sentence per fact group (narrator first, question last) with
  2-4 irrelevant filler sentences (weather, pets, food, work) shuffled in between. All lowercase,
  punctuation limited to `. , ? :`.
- The reference TL;DR mentions relation, event, feeling and question (sum of weights 8) and
  leaves out the background facts narrator and duration; a summary that adds them concisely can
  reach 9. Each fact is written with the post's own paraphrase with probability
  `REFERENCE_COPY_PROB` (copy-friendly for a small policy), otherwise with another paraphrase.
- Candidate generators (`GENERATORS`, by name): reference, drop_1/2/3 (leave out that many of
  the reference's facts), truncate (first 35-75% of the reference's words), hallucinate (one
  fact swapped for a wrong value of its type), hallucinate_long (narrator + duration + 1-2 extra
  wrong facts), filler (+1-2 filler sentences), repeat (+1-2 repeated sentences), verbose
  (narrator + duration + 1-3 padding phrases). Longer-and-better (reference vs drop/truncate)
  and longer-and-worse (filler/repeat/verbose/hallucinate_long vs reference) both exist, which is
  what lets `preferences` dial how much summary length predicts the label.

Measured lengths (words as counted by `gold_reward.count_words`, seed 0, 5,000 posts): post
38-74 words (mean 55, p99 68); reference TL;DR 11-20 words (mean 15.2); post + "TL;DR:" +
reference mean 72, max 93. Generated summaries, mean / max words: drop_1 12/19, drop_2 9/14,
drop_3 5/8, truncate 9/15, hallucinate 15/20, filler 24/34, repeat 25/48, verbose 29/40,
hallucinate_long 30/43; post + "TL;DR:" + any generated summary is at most 119 words (p99 107).
With punctuation as separate tokens a post + reference is ~86 tokens (max 108).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------
# Pools
# ---------------------------------------------------------------------------------------------
TLDR_MARKER = "TL;DR:"
FACT_TYPES = ("narrator", "relation", "duration", "event", "feeling", "question")
FACT_WEIGHTS: Mapping[str, float] = {
    "narrator": 0.5, "relation": 2.0, "duration": 0.5,
    "event": 3.0, "feeling": 1.0, "question": 2.0,
}
# The facts a reference TL;DR states; narrator and duration are background it leaves out.
SUMMARY_FACT_TYPES = ("relation", "event", "feeling", "question")
BACKGROUND_FACT_TYPES = ("narrator", "duration")

_AGES = (19, 21, 23, 25, 27, 29, 32)
_GENDER_WORDS = {"f": ("woman", "girl"), "m": ("man", "guy")}
_NARRATOR_POOL = tuple(
    (f"{age} {g}", f"{age} year old {_GENDER_WORDS[g][0]}", f"{age} yo {_GENDER_WORDS[g][1]}")
    for age in _AGES for g in ("f", "m")
)
# Each value is a tuple of paraphrases; the first one is the canonical value stored in Post.facts.
FACT_POOLS: Mapping[str, tuple[tuple[str, ...], ...]] = {
    "narrator": _NARRATOR_POOL,
    "relation": (
        ("boyfriend", "bf"), ("girlfriend", "gf"), ("husband", "hubby"), ("wife",),
        ("roommate", "flatmate"), ("boss", "manager"), ("coworker", "colleague"),
        ("mom", "mother"), ("dad", "father"), ("sister",), ("brother",),
        ("best friend", "bff"), ("landlord",), ("neighbor", "neighbour"),
    ),
    "duration": (
        ("two weeks", "a couple of weeks"), ("three months",), ("six months", "half a year"),
        ("eight months",), ("one year", "a year"), ("two years", "a couple of years"),
        ("three years",), ("four years",), ("five years",), ("seven years",),
        ("ten years", "a decade"), ("fifteen years",),
    ),
    "event": (
        ("forgot my birthday", "did not remember my birthday"),
        ("borrowed money and never paid it back", "never paid back the money i lent"),
        ("read my private messages", "went through my phone"),
        ("cancelled our trip last minute", "bailed on our trip"),
        ("lied about where they were", "lied to me about their whereabouts"),
        ("took credit for my work", "claimed my work as their own"),
        ("ate my leftovers again", "keeps eating my food"),
        ("yelled at me in public", "screamed at me in front of everyone"),
        ("invited my ex to a party", "invited my ex over"),
        ("missed my graduation", "skipped my graduation"),
        ("raised the rent without warning", "hiked the rent with no notice"),
        ("told my secret to everyone", "spread my secret around"),
        ("ignored my texts for days", "left me on read for days"),
        ("broke my laptop", "smashed my laptop"),
    ),
    "feeling": (
        ("hurt", "wounded"), ("angry", "furious"), ("confused", "puzzled"),
        ("betrayed", "backstabbed"), ("anxious", "nervous"), ("embarrassed", "humiliated"),
        ("jealous", "envious"), ("guilty", "ashamed"), ("lonely", "isolated"),
        ("sad", "heartbroken"), ("stressed", "overwhelmed"), ("disrespected", "insulted"),
    ),
    "question": (
        ("should i break up", "should i end things"), ("am i overreacting", "am i being dramatic"),
        ("how do i bring it up", "how do i raise this"),
        ("should i move out", "should i find a new place"),
        ("should i confront them", "should i call them out"),
        ("is this normal", "is this behavior normal"),
        ("should i forgive them", "should i let it go"),
        ("should i cut contact", "should i go no contact"),
        ("how do i get over it", "how do i move on"),
        ("should i ask for an apology", "should i demand an apology"),
        ("am i the jerk here", "am i in the wrong"),
        ("should i report this", "should i tell someone"),
    ),
}
# Each filler sentence contains exactly one of FILLER_MARKERS (the gold reward counts markers).
FILLER_MARKERS = (
    "the weather", "it rained", "my cat", "my dog",
    "for lunch", "for dinner", "at work", "my shift",
)
FILLER_SENTENCES = (
    "the weather has been awful all week.", "the weather is finally nice here.",
    "it rained all weekend.", "it rained again this morning.",
    "my cat knocked over a plant today.", "my cat slept on my keyboard all day.",
    "my dog chewed my favorite shoes.", "my dog barked all night.",
    "i had pizza for lunch.", "i had a salad for lunch today.",
    "we ordered tacos for dinner.", "i made pasta for dinner.",
    "things at work are busy.", "it is a slow week at work.",
    "i just got back from my shift.", "my shift ran late again.",
)
PADDING_PHRASES = (
    "to be honest", "long story short", "basically", "in short", "so yeah", "for context",
    "i guess", "at the end of the day", "all in all", "if that makes sense",
)

# Post sentence templates, one group per fact group.
_NARRATOR_POST = ("{narrator} here, first time posting.", "so i am {narrator} and need advice.",
                  "throwaway account, {narrator}.")
_RELATION_POST = ("i have known my {relation} for {duration}.",
                  "my {relation} and i have been close for {duration}.",
                  "me and my {relation} go back {duration}.")
_EVENT_POST = ("last week my {relation} {event}.", "a few days ago my {relation} {event}.",
               "so yesterday my {relation} {event}.")
_FEELING_POST = ("i feel so {feeling} about it.", "i am really {feeling} right now.",
                 "i cannot stop feeling {feeling}.")
_QUESTION_POST = ("{question}?", "so reddit, {question}?", "my question is, {question}?")
_NARRATOR_SUMMARY = ("i am {narrator}.", "{narrator} here.")
_FEELING_SUMMARY = ("i feel", "i am", "now i am")

# ---------------------------------------------------------------------------------------------
# Knobs of the generators
# ---------------------------------------------------------------------------------------------
REFERENCE_COPY_PROB = 0.75  # chance a summary reuses the post's paraphrase of a fact
N_FILLER_POST_RANGE = (2, 4)  # filler sentences per post, inclusive
MERGE_FEELING_PROB = 0.5  # "my bf forgot my birthday and i feel hurt." vs two sentences
QUESTION_FIRST_PROB = 0.2  # summary opens with the question
TRUNCATE_FRACTION_RANGE = (0.35, 0.75)
N_FILLER_SUMMARY_RANGE = (1, 2)
N_REPEAT_RANGE = (1, 2)
N_PADDING_RANGE = (1, 3)
N_EXTRA_WRONG_RANGE = (1, 2)
_EXTRA_WRONG_TYPES = ("event", "feeling", "question")
_RNG_STREAM_POSTS = 1  # seed-sequence stream for posts (preferences uses other streams)

_PARAPHRASES: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    t: {para[0]: para for para in pool} for t, pool in FACT_POOLS.items()
}
_VALUES: Mapping[str, tuple[str, ...]] = {
    t: tuple(p[0] for p in pool) for t, pool in FACT_POOLS.items()
}


@dataclasses.dataclass(frozen=True)
class Post:
  """One post of the world.

  facts: fact type -> canonical value (first paraphrase in FACT_POOLS).
  surfaces: fact type -> the paraphrase the post text uses.
  text: the post body (lowercase); reference: its reference TL;DR.
  """

  post_id: str
  facts: Mapping[str, str]
  surfaces: Mapping[str, str]
  text: str
  reference: str

  @property
  def prompt(self) -> str:
    """What a policy is conditioned on: the post followed by the TL;DR marker."""
    return format_prompt(self.text)


def format_prompt(post_text: str) -> str:
  return f"{post_text} {TLDR_MARKER}"


def format_example(post_text: str, summary: str) -> str:
  """Pre-training / SFT text: post, TL;DR marker, summary."""
  return f"{format_prompt(post_text)} {summary}"


def fact_values(fact_type: str) -> tuple[str, ...]:
  """Canonical values of a fact type's pool."""
  return _VALUES[fact_type]


def paraphrases(fact_type: str, value: str) -> tuple[str, ...]:
  """All surface forms of a fact value (the canonical one first)."""
  return _PARAPHRASES[fact_type][value]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, options: Sequence):
  return options[int(rng.integers(len(options)))]


def _randint(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
  return int(rng.integers(bounds[0], bounds[1] + 1))


def _say(fact_type: str, value: str, *, facts: Mapping[str, str], surfaces: Mapping[str, str],
         rng: np.random.Generator) -> str:
  """A paraphrase of `value`: the post's own wording with REFERENCE_COPY_PROB, else any."""
  if value == facts[fact_type] and rng.random() < REFERENCE_COPY_PROB:
    return surfaces[fact_type]
  return _pick(rng, paraphrases(fact_type, value))


def _wrong_value(fact_type: str, *, exclude: Sequence[str], rng: np.random.Generator) -> str:
  options = [v for v in _VALUES[fact_type] if v not in exclude]
  return _pick(rng, options)


def _split_sentences(text: str) -> list[str]:
  """Split a generated summary after each '.' or '?' (generators only emit these ends)."""
  out, start = [], 0
  for i, ch in enumerate(text):
    if ch in ".?" and (i + 1 == len(text) or text[i + 1] == " "):
      out.append(text[start:i + 1].strip())
      start = i + 1
  tail = text[start:].strip()
  if tail:
    out.append(tail)
  return out


def _compose_summary(*, facts: Mapping[str, str], surfaces: Mapping[str, str],
                     rng: np.random.Generator, include: Sequence[str],
                     swaps: Mapping[str, str] | None = None,
                     extras: Mapping[str, str] | None = None, n_padding: int = 0) -> str:
  """Write a summary stating the facts in `include`.

  swaps: fact type -> wrong value stated instead of the post's. extras: fact type -> a wrong
  value stated in addition. n_padding: padding phrases prefixed to random sentences.
  """
  swaps, extras = swaps or {}, extras or {}

  def say(fact_type: str) -> str:
    value = swaps.get(fact_type, facts[fact_type])
    return _say(fact_type, value, facts=facts, surfaces=surfaces, rng=rng)

  def say_extra(fact_type: str) -> str:
    return _pick(rng, paraphrases(fact_type, extras[fact_type]))

  statements: list[str] = []
  if "narrator" in include:
    statements.append(_pick(rng, _NARRATOR_SUMMARY).format(narrator=say("narrator"))[:-1])
  has_rel, has_event, has_dur = ("relation" in include, "event" in include, "duration" in include)
  main = ""
  if has_rel and has_event:
    of_dur = f" of {say('duration')}" if has_dur else ""
    main = f"my {say('relation')}{of_dur} {say('event')}"
  elif has_event:
    main = (f"after {say('duration')}, " if has_dur else "") + f"they {say('event')}"
  elif has_rel:
    main = f"this is about my {say('relation')}" + (f" of {say('duration')}" if has_dur else "")
  elif has_dur:
    main = f"we go back {say('duration')}"
  if "event" in extras:
    main = (main + " and also " if main else "they ") + say_extra("event")
  feel = ""
  if "feeling" in include:
    feel = f"{_pick(rng, _FEELING_SUMMARY)} {say('feeling')}"
    if "feeling" in extras:
      feel += f" and {say_extra('feeling')}"
  elif "feeling" in extras:
    feel = f"i feel {say_extra('feeling')}"
  if main and feel and rng.random() < MERGE_FEELING_PROB:
    statements.append(f"{main} and {feel}")
  else:
    statements.extend(s for s in (main, feel) if s)
  sentences = [s + "." for s in statements]
  questions = []
  if "question" in include:
    questions.append(f"{say('question')}?")
  if "question" in extras:
    questions.append(f"or {say_extra('question')}?")
  if questions and rng.random() < QUESTION_FIRST_PROB and "question" not in extras:
    sentences = questions + sentences
  else:
    sentences = sentences + questions
  if n_padding and sentences:
    pads = rng.choice(len(PADDING_PHRASES), size=n_padding, replace=False)
    for pad in pads:
      k = int(rng.integers(len(sentences)))
      sentences[k] = f"{PADDING_PHRASES[int(pad)]}, {sentences[k]}"
  return " ".join(sentences)


# ---------------------------------------------------------------------------------------------
# Posts
# ---------------------------------------------------------------------------------------------
def generate_post(*, seed: int, index: int) -> Post:
  """Post number `index` of world `seed`; independent of how many posts are generated."""
  rng = np.random.default_rng([seed, _RNG_STREAM_POSTS, index])
  facts = {t: _pick(rng, _VALUES[t]) for t in FACT_TYPES}
  surfaces = {t: _pick(rng, paraphrases(t, facts[t])) for t in FACT_TYPES}
  fmt = dict(surfaces)
  middle = [
      _pick(rng, _RELATION_POST).format(**fmt),
      _pick(rng, _EVENT_POST).format(**fmt),
      _pick(rng, _FEELING_POST).format(**fmt),
  ]
  n_filler = _randint(rng, N_FILLER_POST_RANGE)
  fillers = [FILLER_SENTENCES[int(i)] for i in
             rng.choice(len(FILLER_SENTENCES), size=n_filler, replace=False)]
  for filler in fillers:  # insert at a random gap, so fact order is kept and fillers scatter
    middle.insert(int(rng.integers(len(middle) + 1)), filler)
  sentences = [_pick(rng, _NARRATOR_POST).format(**fmt), *middle,
               _pick(rng, _QUESTION_POST).format(**fmt)]
  reference = _compose_summary(facts=facts, surfaces=surfaces, rng=rng, include=SUMMARY_FACT_TYPES)
  return Post(post_id=f"s{seed}-{index}", facts=facts, surfaces=surfaces,
              text=" ".join(sentences), reference=reference)


def generate_posts(*, seed: int, n: int, start: int = 0) -> list[Post]:
  """Posts number start .. start + n - 1 of world `seed` (prefix-stable in n)."""
  if n < 0 or start < 0:
    raise ValueError(f"generate_posts got n={n}, start={start}: both must be >= 0")
  return [generate_post(seed=seed, index=i) for i in range(start, start + n)]


# ---------------------------------------------------------------------------------------------
# Candidate-summary generators: (post, rng) -> summary text
# ---------------------------------------------------------------------------------------------
def _compose(post: Post, rng: np.random.Generator, **kwargs) -> str:
  return _compose_summary(facts=post.facts, surfaces=post.surfaces, rng=rng, **kwargs)


def reference(post: Post, rng: np.random.Generator) -> str:
  del rng
  return post.reference


def _drop(k: int) -> Callable[[Post, np.random.Generator], str]:
  def drop(post: Post, rng: np.random.Generator) -> str:
    dropped = set(rng.choice(len(SUMMARY_FACT_TYPES), size=k, replace=False).tolist())
    include = [t for i, t in enumerate(SUMMARY_FACT_TYPES) if i not in dropped]
    return _compose(post, rng, include=include)
  drop.__name__ = f"drop_{k}"
  drop.__doc__ = f"A summary of the reference's facts minus {k} of them."
  return drop


def truncate(post: Post, rng: np.random.Generator) -> str:
  """The first 35-75% of the reference's words."""
  words = post.reference.split()
  fraction = rng.uniform(*TRUNCATE_FRACTION_RANGE)
  return " ".join(words[:max(1, math.ceil(fraction * len(words)))])


def hallucinate(post: Post, rng: np.random.Generator) -> str:
  """The reference's facts with one swapped for a wrong value of the same type."""
  fact_type = _pick(rng, SUMMARY_FACT_TYPES)
  wrong = _wrong_value(fact_type, exclude=[post.facts[fact_type]], rng=rng)
  return _compose(post, rng, include=SUMMARY_FACT_TYPES, swaps={fact_type: wrong})


def hallucinate_long(post: Post, rng: np.random.Generator) -> str:
  """All six facts plus 1-2 extra wrong facts: long, informative-looking and wrong."""
  n_extra = _randint(rng, N_EXTRA_WRONG_RANGE)
  types = rng.choice(len(_EXTRA_WRONG_TYPES), size=n_extra, replace=False)
  extras = {}
  for i in sorted(types.tolist()):
    t = _EXTRA_WRONG_TYPES[i]
    extras[t] = _wrong_value(t, exclude=[post.facts[t]], rng=rng)
  return _compose(post, rng, include=FACT_TYPES, extras=extras)


def filler(post: Post, rng: np.random.Generator) -> str:
  """The reference with 1-2 filler sentences inserted."""
  sentences = _split_sentences(post.reference)
  n = _randint(rng, N_FILLER_SUMMARY_RANGE)
  for i in rng.choice(len(FILLER_SENTENCES), size=n, replace=False):
    sentences.insert(int(rng.integers(len(sentences) + 1)), FILLER_SENTENCES[int(i)])
  return " ".join(sentences)


def repeat(post: Post, rng: np.random.Generator) -> str:
  """The reference with 1-2 of its sentences said again right after themselves."""
  sentences = _split_sentences(post.reference)
  for _ in range(_randint(rng, N_REPEAT_RANGE)):
    k = int(rng.integers(len(sentences)))
    sentences.insert(k + 1, sentences[k])
  return " ".join(sentences)


def verbose(post: Post, rng: np.random.Generator) -> str:
  """All six facts (narrator and duration too) with 1-3 padding phrases."""
  return _compose(post, rng, include=FACT_TYPES, n_padding=_randint(rng, N_PADDING_RANGE))


GENERATORS: Mapping[str, Callable[[Post, np.random.Generator], str]] = {
    "reference": reference,
    "drop_1": _drop(1),
    "drop_2": _drop(2),
    "drop_3": _drop(3),
    "truncate": truncate,
    "hallucinate": hallucinate,
    "hallucinate_long": hallucinate_long,
    "filler": filler,
    "repeat": repeat,
    "verbose": verbose,
}


def generate_summary(*, post: Post, generator_name: str, rng: np.random.Generator) -> str:
  """A candidate summary of `post` written by the generator registered as `generator_name`."""
  try:
    generator = GENERATORS[generator_name]
  except KeyError:
    raise ValueError(f"unknown generator_name {generator_name!r}: use one of "
                     f"{sorted(GENERATORS)}") from None
  return generator(post, rng)
