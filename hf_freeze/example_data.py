"""The offline default data of ``scripts/train.py``: the VADER sentiment lexicon as binary sentiment classification.

What it is
    VADER's lexicon (Hutto & Gilbert, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social
    Media Text", ICWSM 2014), shipped as ``vader_lexicon.txt`` inside the PyPI package ``vaderSentiment``
    (MIT licence). 7,520 lines -- English words, slang, acronyms and emoticons -- each rated by ten independent
    human raters on a scale from -4 (extremely negative) to +4 (extremely positive). Every line holds the token,
    the mean rating, its standard deviation and the ten raw ratings. 14 tokens are listed twice with two
    readings (``d:`` as the emoticon D: and as a tongue-out face, ``sob`` as crying and as an insult); each
    such token is kept once, with the mean of its two means.

The task
    ``label`` 1 (``positive``) when the mean rating is above ``+threshold``, 0 (``negative``) when it is below
    ``-threshold``; entries in between are dropped as near-neutral. With the default threshold 1.0 that leaves
    5,552 entries: 2,462 positive and 3,090 negative (majority class: negative, 55.7%).

The split
    A fixed, stratified hold-out: ``test_size`` (20%) of the entries go to ``test``, the rest to ``train``,
    chosen by ``datasets.Dataset.train_test_split`` with ``seed`` (0). Same arguments, same split, on every
    machine: with the defaults, 4,441 train and 1,111 test entries (test: 618 negative, 493 positive, so the
    majority-class baseline is 55.6%). The split is by entry, so related forms of one word (``destruction``,
    ``destructive``) can fall on both sides: held-out accuracy measures generalisation to unseen tokens, not
    to unseen word families.

Nothing is downloaded: the file is read from the installed package.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import datasets

from hf_freeze.errors import UsageError

LABEL_NAMES = ("negative", "positive")
LEXICON_PACKAGE = "vaderSentiment"
LEXICON_FILE = "vader_lexicon.txt"
DEFAULT_THRESHOLD = 1.0
DEFAULT_TEST_SIZE = 0.2
DEFAULT_SEED = 0
RATERS = 10


@dataclass(frozen=True)
class LexiconEntry:
    """One line of the VADER lexicon: the token, its mean human rating and the raw ratings."""

    token: str
    mean: float
    ratings: tuple[int, ...]


def lexicon_path() -> Path:
    """Where the installed ``vaderSentiment`` package keeps ``vader_lexicon.txt`` (the package is not imported)."""
    spec = importlib.util.find_spec(LEXICON_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            "The default data needs the vaderSentiment package; install it with `pip install hf-freeze[train]` "
            "or pass --train_file/--dataset_name."
        )
    path = Path(next(iter(spec.submodule_search_locations)), LEXICON_FILE)
    if not path.is_file():
        raise UsageError(f"The vaderSentiment package has no {LEXICON_FILE} at {path}; reinstall vaderSentiment.")
    return path


def parse_line(line: str, number: int) -> LexiconEntry:
    """Parse ``token<TAB>mean<TAB>std<TAB>[r1, ..., r10]``."""
    fields = line.rstrip("\n").split("\t")
    if len(fields) != 4:
        raise UsageError(f"{LEXICON_FILE} line {number} has {len(fields)} tab-separated fields, not 4.")
    token, mean, _std, raw = fields
    ratings = tuple(int(value) for value in raw.strip("[]").split(","))
    if len(ratings) != RATERS:
        raise UsageError(f"{LEXICON_FILE} line {number} has {len(ratings)} ratings, not {RATERS}.")
    return LexiconEntry(token=token, mean=float(mean), ratings=ratings)


def read_lexicon(path: Path | None = None) -> list[LexiconEntry]:
    """Every entry of the VADER lexicon, in file order."""
    text = (path or lexicon_path()).read_text(encoding="utf-8")
    return [parse_line(line, number) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def polarity_label(mean: float, threshold: float) -> int | None:
    """1 above ``+threshold``, 0 below ``-threshold``, ``None`` (dropped) in between."""
    if mean > threshold:
        return 1
    if mean < -threshold:
        return 0
    return None


def token_means(entries: list[LexiconEntry]) -> dict[str, float]:
    """Mean rating per distinct token, in first-seen order; a token listed twice gets the mean of its two means."""
    means: dict[str, list[float]] = {}
    for entry in entries:
        means.setdefault(entry.token, []).append(entry.mean)
    return {token: sum(values) / len(values) for token, values in means.items()}


def vader_sentiment(
    threshold: float = DEFAULT_THRESHOLD, test_size: float = DEFAULT_TEST_SIZE, seed: int = DEFAULT_SEED
) -> datasets.DatasetDict:
    """The VADER lexicon as binary sentiment: ``train`` and ``test`` splits with ``text`` and ``label`` columns.

    ``label`` is a ``ClassLabel`` with names ``negative``/``positive``; see the module docstring for the source,
    licence, labelling rule and the fixed, stratified, seeded split.
    """
    if threshold < 0:
        raise UsageError(f"The polarity threshold must be >= 0, not {threshold}.")
    texts, labels = [], []
    for token, mean in token_means(read_lexicon()).items():
        label = polarity_label(mean, threshold)
        if label is not None:
            texts.append(token)
            labels.append(label)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=LABEL_NAMES)})
    full = datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)
    return full.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")
