"""The generated downstream tasks: deterministic, and the targets state what the sources say."""

import re

import pytest

from minipeft.errors import MiniPeftError
from minipeft.training.tasks import SUBJECTS, e2e, e2e_references, sentiment


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


def test_e2e_names_fast_food_once():
    targets = [t for s, t in e2e(400) if "food[fast food]" in s]
    assert targets and not any("food food" in t for t in targets)


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


@pytest.mark.parametrize("against, dissenting", [(0.0, (0.0, 0.0)), (0.5, (0.4, 0.6))])
def test_sentiment_labels_follow_the_majority_and_the_classes_are_balanced(against, dissenting):
    data = sentiment(401, against=against)
    assert sentiment(50, seed=3) == sentiment(50, seed=3) != sentiment(50, seed=4)
    labels = [label for _, label in data]
    assert labels.count("positive") == 201 and labels.count("negative") == 200
    good = {w for words, _ in SUBJECTS.values() for w in words}
    bad = {w for _, words in SUBJECTS.values() for w in words}
    against = 0
    for text, label in data:
        judged = re.findall(r"(the \w+) was (\w+)", text)
        assert len(judged) == 3 and all(word in good | bad for _, word in judged)
        assert all(word in SUBJECTS[subject][0] + SUBJECTS[subject][1] for subject, word in judged)  # words fit their subject
        n_good = sum(word in SUBJECTS[subject][0] for subject, word in judged)
        assert (n_good >= 2) == (label == "positive")
        against += n_good in (1, 2)
        assert (" but " in text) == (n_good in (1, 2))  # "but" joins only judgements that disagree
    low, high = dissenting  # by default all three agree; against=0.5: about half the reviews hold one dissent
    assert low <= against / len(data) <= high
