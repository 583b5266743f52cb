"""Downstream tasks the project generates itself (no download), deterministic for a seed.

table-to-text, in the spirit of E2E (the prefix-tuning paper's benchmark):
    source  "name[The Eagle] eatType[pub] food[Italian] area[riverside]"
    target  "The Eagle is a pub serving Italian food in the riverside area."
    (one of three openings at random; e2e_references(source) gives all three, BLEU's references)
sentiment, a two-class task with label words (for prompt tuning's class-label init):
    text    "the soup was bland and the staff were friendly but the wine was awful"
    label   "negative" (the majority of the three judgements)
"""

import random
import re

from ..errors import MiniPeftError

NAMES = ["The Eagle", "The Mill", "Blue Spice", "Alimentum", "Zizzi", "The Punter", "Aromi", "Cotto", "Loch Fyne",
         "The Phoenix", "Bibimbap House", "Clowns", "Fitzbillies", "Giraffe", "Midsummer House", "The Rice Boat",
         "Strada", "Taste of Cambridge", "The Wrestlers", "Wildwood", "The Vaults", "Browns", "The Golden Palace"]
EAT_TYPES = ["restaurant", "pub", "coffee shop"]
FOODS = ["Italian", "French", "Chinese", "Indian", "English", "Japanese", "fast food"]
PRICES = ["cheap", "moderate", "high"]
AREAS = ["riverside", "city centre"]
FAMILY = ["yes", "no"]


def _article(word):
    return "an" if word[0].lower() in "aeiou" else "a"


# how a target sentence may open; whichever opens it, the rest of the sentence is the same
OPENINGS = ("{name} is {a_eat} {eatType} serving {food} food",
            "{name} is {a_food} {food} {eatType}",
            "There is {a_food} {food} {eatType} called {name}")
PRICE_CLAUSES = {"cheap": "prices are low", "moderate": "prices are moderate", "high": "prices are high"}


def e2e_example(rng):
    """One (source, target) pair: a random subset of attributes and a sentence that states them all."""
    name, eat, food = rng.choice(NAMES), rng.choice(EAT_TYPES), rng.choice(FOODS)
    attrs = {"name": name, "eatType": eat, "food": food}
    price = rng.choice(PRICES) if rng.random() < 0.6 else None
    area = rng.choice(AREAS) if rng.random() < 0.7 else None
    family = rng.choice(FAMILY) if rng.random() < 0.5 else None
    if price:
        attrs["priceRange"] = price
    if area:
        attrs["area"] = area
    if family:
        attrs["familyFriendly"] = family
    source = " ".join(f"{k}[{v}]" for k, v in attrs.items())
    return source, _sentence(attrs, rng.choice(OPENINGS))


def e2e_references(source):
    """Every target e2e_example could have written for `source` (one per opening): the
    references a hypothesis is scored against, several per source as in E2E."""
    attrs = _parse_source(source)
    return [_sentence(attrs, opening) for opening in OPENINGS]


def _sentence(attrs, opening):
    """The sentence stating attrs {attribute: value}, starting with `opening` (one of OPENINGS)."""
    eat, food = attrs["eatType"], attrs["food"]
    sentence = opening.format(name=attrs["name"], eatType=eat, food=food, a_eat=_article(eat), a_food=_article(food))
    area = attrs.get("area")
    if area:
        sentence += " " + (f"in the {area} area" if area == "riverside" else "in the city centre")
    extras = []
    if "priceRange" in attrs:
        extras.append(PRICE_CLAUSES[attrs["priceRange"]])
    if "familyFriendly" in attrs:
        extras.append("it is family friendly" if attrs["familyFriendly"] == "yes" else "it is not family friendly")
    if extras:
        sentence += ". " + " and ".join(extras).capitalize()
    return sentence + "."


def _parse_source(source):
    """{attribute: value} of a source as e2e_example writes it, else a MiniPeftError."""
    pairs = re.findall(r"(\w+)\[([^\]]+)\]", source) if isinstance(source, str) else []
    attrs = dict(pairs)
    values = {"name": None, "eatType": None, "food": None, "priceRange": PRICES, "area": AREAS, "familyFriendly": FAMILY}
    if not (" ".join(f"{k}[{v}]" for k, v in pairs) == source and len(attrs) == len(pairs)
            and {"name", "eatType", "food"} <= attrs.keys()
            and all(k in values and (values[k] is None or v in values[k]) for k, v in attrs.items())):
        raise MiniPeftError(f"not an e2e source: {source!r:.200}; expected name, eatType and food, then optionally "
                            f"priceRange {PRICES}, area {AREAS}, familyFriendly {FAMILY}, as in "
                            f"'name[The Eagle] eatType[pub] food[Italian] area[riverside]'")
    return attrs


def e2e(n, seed=0):
    rng = random.Random(seed)
    return [e2e_example(rng) for _ in range(n)]


SENTIMENT_LABELS = ("positive", "negative")
_SUBJECTS = ["the soup", "the pasta", "the service", "the staff", "the wine", "the room", "the dessert", "the music", "the bread"]
_GOOD = ["delicious", "friendly", "lovely", "superb", "warm", "excellent", "fresh"]
_BAD = ["bland", "rude", "awful", "cold", "stale", "terrible", "slow"]


def sentiment(n, seed=0):
    """(text, label) pairs: three judgements; the label is the majority's polarity."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        polarity = [rng.random() < 0.5 for _ in range(3)]
        clauses = [f"{s} was {rng.choice(_GOOD if good else _BAD)}" for s, good in zip(rng.sample(_SUBJECTS, 3), polarity)]
        joiner = rng.choice([(" and ", " but "), (", ", " and "), (" but ", " and ")])
        text = clauses[0] + joiner[0] + clauses[1] + joiner[1] + clauses[2]
        out.append((text, SENTIMENT_LABELS[0] if sum(polarity) >= 2 else SENTIMENT_LABELS[1]))
    return out
