"""The generated downstream tasks: deterministic, and the targets state what the sources say."""

import hashlib
import json
import re

import pytest

from minipeft.errors import MiniPeftError
from minipeft.training.tasks import SENTIMENT_LABELS, e2e, e2e_references, sentiment


def assert_faithful(source, sentences):
    """Each sentence names every attribute of the source."""
    attrs = dict(re.findall(r"(\w+)\[([^\]]+)\]", source))
    price = {"cheap": "low", "moderate": "moderate", "high": "high"}
    for sentence in sentences:
        assert attrs["name"] in sentence and attrs["food"] in sentence and attrs["eatType"] in sentence
        if "area" in attrs:
            assert attrs["area"] in sentence
        if "priceRange" in attrs:
            assert f"Prices are {price[attrs['priceRange']]}" in sentence  # the first extra clause
        if "familyFriendly" in attrs:
            assert ("not family friendly" in sentence) == (attrs["familyFriendly"] == "no")
        else:
            assert "family friendly" not in sentence


def test_e2e_is_deterministic_and_faithful():
    assert e2e(50, seed=3) == e2e(50, seed=3) and e2e(50, seed=3) != e2e(50, seed=4)
    for source, target in e2e(300):
        assert_faithful(source, [target])


def test_e2e_targets_are_unchanged_for_a_seed():
    # digests of e2e(500, seed) as the generator wrote it before the sentence moved into a helper
    for seed, digest in [(0, "3c2257c5afc7561e4567ebae8a615ec2d5af9b7ec5dc6759c10810b9172f434e"),
                         (7, "4a0ae9352202fb9ba0a4dbabc7d9a9c820148af83cc37429cb8a1049f2f71db5")]:
        assert hashlib.sha256(json.dumps(e2e(500, seed=seed)).encode()).hexdigest() == digest
    assert e2e(2, seed=1)[1] == (
        "name[The Vaults] eatType[pub] food[fast food] priceRange[moderate] area[city centre] familyFriendly[yes]",
        "There is a fast food pub called The Vaults in the city centre. Prices are moderate and it is family friendly.")


def test_e2e_references_hold_the_target_and_only_faithful_sentences():
    openings = set()
    for source, target in e2e(300):
        refs = e2e_references(source)
        assert target in refs and len(set(refs)) == len(refs) == 3
        assert_faithful(source, refs)
        openings.add(refs.index(target))
    assert openings == {0, 1, 2}                                   # the generator uses every opening


def test_e2e_references_refuse_what_is_not_a_source():
    for bad in ["", "name[The Eagle] eatType[pub]", "name[The Eagle] eatType[pub] food[Italian] area[moon]",
                "name[The Eagle] eatType[pub] food[Italian] rating[5]", "name[A] name[B] eatType[pub] food[Italian]",
                "name[The Eagle] eatType[pub] food[Italian] => ", None]:
        with pytest.raises(MiniPeftError, match="not an e2e source"):
            e2e_references(bad)


def test_sentiment_labels_follow_the_majority():
    data = sentiment(400)
    assert {label for _, label in data} == set(SENTIMENT_LABELS)
    good = {"delicious", "friendly", "lovely", "superb", "warm", "excellent", "fresh"}
    for text, label in data:
        words = re.findall(r"was (\w+)", text)
        assert len(words) == 3
        assert (sum(w in good for w in words) >= 2) == (label == "positive")
