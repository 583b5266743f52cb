"""Unlabeled text of the tasks' domain, for pretraining: restaurants, and what people say about them.

A real language model has read about restaurants long before anyone fine-tunes it to turn a
table into a sentence or a review into a label; the papers' findings are about steering such a
model with a few parameters. The character-level backbones here stand in for one: they pretrain
on a mixture of the standard library's docstrings (general English prose, training/corpus.py)
and this text (see pretraining_text).

The text is generated from templates of its own, none of them a fine-tuning task's (tasks.py):
descriptions of places and accounts of visits in running prose, with the tasks' names, foods,
areas, prices and judgements, and every word the E2E sentences use ("serving", "family
friendly", ...). It never holds an attribute table ("name[...]"), the tasks' "=>" separator, or
the label words "positive" / "negative": the backbone learns the language of the domain, not the
tasks.
"""

import random

from .tasks import AREAS, EAT_TYPES, FOODS, NAMES, SUBJECTS, judgement

AREA_WORDS = {"riverside": ["by the river", "on the riverside", "near the water", "in the riverside area"],
              "city centre": ["in the middle of town", "in the city centre", "near the market square"]}
PRICE_WORDS = {"cheap": ["a meal costs very little", "the bill is small", "prices are low"],
               "moderate": ["the prices are fair", "a meal costs a reasonable amount", "prices are moderate"],
               "high": ["it is expensive", "the bill can be large", "prices are high"]}
FAMILY_WORDS = {"yes": ["Children are welcome there.", "Families often eat there with their children.",
                        "It is family friendly, so bring the children."],
                "no": ["It is a quiet place for grown-ups.", "It is not the right place for small children.",
                       "It is not family friendly, so leave the children at home."]}
WHEN = ["last night", "on Sunday", "for lunch on Friday", "after the film", "on a rainy evening", "for a birthday",
        "with two friends", "before the concert", "last week", "on our way home"]
COME_BACK = ["We will certainly come back.", "I would go again tomorrow.", "It was a lovely evening.",
             "We left very happy.", "I can recommend it to anyone."]
NEVER_AGAIN = ["We will not go back.", "I would not go again.", "It was a wasted evening.",
               "We left disappointed.", "I cannot recommend it to anyone."]


def description(rng):
    """A few sentences about one place: what it is, where, what it serves, what it costs, who goes.

    The words are the ones a real model would know for such a place, the tasks' among them
    ("serving", "called", "in the riverside area", "prices are high", "family friendly"), in
    sentence frames of this text's own: no sentence opens or runs as a task's target does."""
    name, eat, food = rng.choice(NAMES), rng.choice(EAT_TYPES), rng.choice(FOODS)
    area, price = rng.choice(AREAS), rng.choice(list(PRICE_WORDS))
    dishes = food if food.endswith("food") else f"{food} food"
    sentences = [rng.choice([f"If you like {food} food, try {name}.",
                             f"The menu at {name} is mostly {food}.",
                             f"People come to {name} for its {food} dishes.",
                             f"{name}, a small {eat}, cooks {food} dishes every day.",
                             f"{name} has been serving {dishes} for years.",
                             f"Ask anyone about the {food} {eat} called {name}.",
                             f"Locals say {name} is the best {eat} in town for {dishes}."]),
                 rng.choice([f"You can find it {rng.choice(AREA_WORDS[area])}.",
                             f"The {eat} sits {rng.choice(AREA_WORDS[area])}."]),
                 f"At {name} {rng.choice(PRICE_WORDS[price])}.",
                 rng.choice(FAMILY_WORDS[rng.choice(["yes", "no"])])]
    rng.shuffle(sentences[1:])
    return " ".join(sentences[:rng.randint(2, 4)])


def visit(rng):
    """An account of one visit: the judgements agree or disagree, the closing line follows the majority."""
    name, subjects = rng.choice(NAMES), rng.sample(list(SUBJECTS), 3)
    good = [rng.random() < 0.5 for _ in subjects]
    words = [judgement(rng, s, g) for s, g in zip(subjects, good)]
    opening = rng.choice([f"We ate at {name} {rng.choice(WHEN)}.", f"I went to {name} {rng.choice(WHEN)}.",
                          f"{_capital(rng.choice(WHEN))} we tried {name}."])
    notes = rng.choice([f"{_capital(subjects[0])} seemed {words[0]}, {subjects[1]} felt {words[1]}, and {subjects[2]} looked {words[2]}.",
                        f"I found {subjects[0]} {words[0]}. {_capital(subjects[1])} struck me as {words[1]}; {subjects[2]} too was {words[2]}.",
                        f"What did we think? {_capital(subjects[0])}: {words[0]}. {_capital(subjects[1])}: {words[1]}. {_capital(subjects[2])}: {words[2]}."])
    closing = rng.choice(COME_BACK if sum(good) >= 2 else NEVER_AGAIN)
    return f"{opening} {notes} {closing}"


def _capital(text):
    return text[:1].upper() + text[1:]


def domain_text(n_chars, seed=0):
    """About n_chars of domain text: paragraphs of descriptions and visits, blank-line separated."""
    rng, parts, total = random.Random(seed), [], 0
    while total < n_chars:
        paragraph = description(rng) if rng.random() < 0.5 else visit(rng)
        parts.append(paragraph)
        total += len(paragraph) + 2
    return "\n\n".join(parts)


def pretraining_text(general, domain_fraction=0.35, seed=0):
    """The pretraining mixture: the paragraphs of `general` text (the docstrings) and generated domain
    paragraphs making up domain_fraction of the characters, shuffled together deterministically.

    Why a mixture and not the domain text alone: the docstrings give the model English in general
    (spelling, grammar, punctuation over a wide vocabulary), as a real language model's web text
    does; the domain share makes the tasks' words and sentences familiar without making them all
    the model knows.
    """
    paragraphs = [p for p in general.split("\n\n") if p.strip()]
    n_general = sum(len(p) + 2 for p in paragraphs)
    domain = domain_text(int(n_general * domain_fraction / (1 - domain_fraction)), seed=seed).split("\n\n")
    mixed = paragraphs + domain
    random.Random(seed).shuffle(mixed)
    return "\n\n".join(mixed)
