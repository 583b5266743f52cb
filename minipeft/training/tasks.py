"""Downstream tasks the project generates itself (no download), deterministic for a seed.

table-to-text, in the spirit of E2E (the prefix-tuning paper's benchmark):
    source  "name[The Eagle] eatType[pub] food[Italian] area[riverside]"
    target  "The Eagle is a pub serving Italian food in the riverside area."
    (one of three openings at random; e2e_references(source) gives all three, BLEU's references)
sentiment, a two-class task with label words (for prompt tuning's class-label init), balanced:
    text    "the soup was bland, the staff was rude and the wine was stale"
    label   "negative" (the majority of the three judgements; by default they all agree)
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
OPENINGS = ("{name} is {a_eat} {eatType} serving {food_dishes}",
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
    dishes = food if food.endswith("food") else f"{food} food"                   # "fast food", not "fast food food"
    sentence = opening.format(name=attrs["name"], eatType=eat, food=food, food_dishes=dishes, a_eat=_article(eat),
                              a_food=_article(food))
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
FOOD = (["delicious", "fresh", "superb"], ["bland", "stale", "cold"])        # (good words, bad words)
PEOPLE = (["friendly", "quick", "excellent"], ["rude", "slow", "careless"])
PLACE = (["lovely", "warm", "cosy"], ["noisy", "cold", "dreary"])
SUBJECTS = {"the soup": FOOD, "the pasta": FOOD, "the wine": FOOD, "the dessert": FOOD, "the bread": FOOD,
            "the service": PEOPLE, "the staff": PEOPLE, "the room": PLACE, "the music": PLACE}


def judgement(rng, subject, good):
    """A word that judges `subject` well (good=True) or badly."""
    return rng.choice(SUBJECTS[subject][0 if good else 1])


def sentiment(n, seed=0, *, against=0.0):
    """(text, label) pairs, the classes balanced (n // 2 of each, the odd one positive): three
    judgements of one visit; with probability `against` one of them disagrees with the other two.
    The label is the majority's polarity.

    By default the three agree: the task is to give a label word the pretrained model has never
    been asked for, from judgement words it has read (training/domain.py). The frozen model scores
    the majority class's 50%; full fine-tuning of the medium backbone ~96% in 150 steps. With one
    dissenting judgement in a quarter of the reviews it reached only ~88% (docs/scripts.md)."""
    rng = random.Random(seed)
    labels = [i % 2 == 0 for i in range(n)]
    rng.shuffle(labels)
    out = []
    for positive in labels:
        polarity = [positive] * 3
        if rng.random() < against:
            polarity[rng.randrange(3)] = not positive
        subjects = rng.sample(list(SUBJECTS), 3)
        clauses = [f"{s} was {judgement(rng, s, good)}" for s, good in zip(subjects, polarity)]
        joiners = [(", ", " and "), (" and ", " and ")] if len(set(polarity)) == 1 else [(" and ", " but "), (" but ", " and ")]
        joiner = rng.choice(joiners)
        text = clauses[0] + joiner[0] + clauses[1] + joiner[1] + clauses[2]
        out.append((text, SENTIMENT_LABELS[0] if positive else SENTIMENT_LABELS[1]))
    return out
