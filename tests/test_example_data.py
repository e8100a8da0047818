"""The offline default data: the VADER lexicon as binary sentiment with a fixed, stratified, seeded split."""

from __future__ import annotations

import pytest

from hf_freeze.errors import UsageError
from hf_freeze.example_data import (
    LABEL_NAMES,
    parse_line,
    polarity_label,
    read_lexicon,
    token_means,
    vader_sentiment,
)


@pytest.fixture(scope="module")
def data():
    return vader_sentiment()


def test_lexicon_is_the_published_one():
    entries = read_lexicon()
    assert len(entries) == 7520
    assert all(len(entry.ratings) == 10 for entry in entries)
    assert len(token_means(entries)) == 7520 - 14  # 14 tokens are listed twice, with two readings


def test_default_split_sizes_and_labels(data):
    assert set(data) == {"train", "test"}
    assert (len(data["train"]), len(data["test"])) == (4441, 1111)
    assert data["train"].column_names == ["text", "label"]
    assert tuple(data["train"].features["label"].names) == LABEL_NAMES
    assert sum(data["train"]["label"]) + sum(data["test"]["label"]) == 2462  # positive entries


def test_split_is_held_out_stratified_and_fixed(data):
    assert len(set(data["train"]["text"])) == len(data["train"])
    assert not set(data["train"]["text"]) & set(data["test"]["text"])
    share = [sum(split["label"]) / len(split) for split in (data["train"], data["test"])]
    assert abs(share[0] - share[1]) < 0.01
    again = vader_sentiment()
    assert again["test"]["text"] == data["test"]["text"]
    assert vader_sentiment(seed=1)["test"]["text"] != data["test"]["text"]


def test_labels_follow_the_human_ratings(data):
    means = token_means(read_lexicon())
    for text, label in zip(data["test"]["text"], data["test"]["label"], strict=True):
        assert (means[text] > 1.0) if label == 1 else (means[text] < -1.0)


def test_threshold_drops_near_neutral_entries():
    assert polarity_label(1.5, 1.0) == 1
    assert polarity_label(-1.5, 1.0) == 0
    assert polarity_label(0.4, 1.0) is None
    wide = vader_sentiment(threshold=0.0)
    assert len(wide["train"]) + len(wide["test"]) > 5552
    with pytest.raises(UsageError, match="threshold"):
        vader_sentiment(threshold=-1)


def test_malformed_line_is_one_clear_error():
    with pytest.raises(UsageError, match="line 3 has 2 tab-separated fields"):
        parse_line("good\t1.9", 3)
    with pytest.raises(UsageError, match="line 4 has 2 ratings"):
        parse_line("good\t1.9\t0.5\t[2, 2]", 4)
