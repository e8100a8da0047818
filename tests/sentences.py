"""A small, fixed, labelled sentence set for tests on the real pretrained MiniLM (1 = positive)."""

from __future__ import annotations

import datasets

_SUBJECTS = ["the movie", "this book", "the food", "our trip", "the concert", "that game", "the hotel", "the show"]
_POSITIVE = ["was wonderful", "made me happy", "was a delight", "is excellent", "felt great"]
_NEGATIVE = ["was terrible", "made me angry", "was a disaster", "is awful", "felt miserable"]


def sentence_dataset(tokenizer, split: str = "train", max_length: int = 16) -> datasets.Dataset:
    """Template sentences, tokenized; ``train`` and ``eval`` use disjoint subjects."""
    subjects = _SUBJECTS[:6] if split == "train" else _SUBJECTS[6:]
    texts, labels = [], []
    for subject in subjects:
        for label, endings in ((1, _POSITIVE), (0, _NEGATIVE)):
            for ending in endings:
                texts.append(f"{subject} {ending}")
                labels.append(label)
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length)
    return datasets.Dataset.from_dict({**encoded, "labels": labels})
