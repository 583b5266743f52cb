"""The generated downstream tasks: deterministic, and the targets state what the sources say."""

import re

from minipeft.training.tasks import SENTIMENT_LABELS, e2e, sentiment


def test_e2e_is_deterministic_and_faithful():
    assert e2e(50, seed=3) == e2e(50, seed=3) and e2e(50, seed=3) != e2e(50, seed=4)
    for source, target in e2e(300):
        attrs = dict(re.findall(r"(\w+)\[([^\]]+)\]", source))
        assert attrs["name"] in target and attrs["food"] in target and attrs["eatType"] in target
        if "area" in attrs:
            assert attrs["area"] in target
        if "familyFriendly" in attrs:
            assert ("not family friendly" in target) == (attrs["familyFriendly"] == "no")


def test_sentiment_labels_follow_the_majority():
    data = sentiment(400)
    assert {label for _, label in data} == set(SENTIMENT_LABELS)
    good = {"delicious", "friendly", "lovely", "superb", "warm", "excellent", "fresh"}
    for text, label in data:
        words = re.findall(r"was (\w+)", text)
        assert len(words) == 3
        assert (sum(w in good for w in words) >= 2) == (label == "positive")
