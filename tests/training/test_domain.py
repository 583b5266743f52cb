"""The pretraining text of the tasks' domain: deterministic, in the domain, and never the tasks."""

import re

from minipeft.training.domain import COME_BACK, NEVER_AGAIN, domain_text, pretraining_text, visit
from minipeft.training.tasks import FOODS, NAMES, SENTIMENT_LABELS, SUBJECTS, e2e, sentiment


def test_domain_text_is_deterministic_and_about_the_tasks_places():
    text = domain_text(20_000, seed=1)
    assert text == domain_text(20_000, seed=1) != domain_text(20_000, seed=2)
    assert 20_000 <= len(text) < 21_000
    assert sum(name in text for name in NAMES) > len(NAMES) // 2 and all(food in text for food in FOODS)
    assert any(subject.removeprefix("the ") in text for subject in SUBJECTS)


def test_domain_text_holds_no_task_format_and_no_label():
    text = domain_text(50_000, seed=0)
    assert "[" not in text and "=>" not in text
    assert not any(label in text.lower() for label in SENTIMENT_LABELS)
    paragraphs = set(text.split("\n\n"))
    targets = {t for _, t in e2e(2000)} | {t for t, _ in sentiment(2000)}
    assert not paragraphs & targets and not any(t in text for t in list(targets)[:300])  # no task sentence verbatim


def test_domain_text_speaks_every_word_of_the_e2e_sentences():
    # the backbone should know the tasks' language: every word the targets use, in frames of its own
    text = domain_text(200_000, seed=0).lower()
    words = set(re.findall(r"[a-z]+", " ".join(t for _, t in e2e(3000)).lower()))
    assert len(words) > 50 and not [w for w in words if w not in text]
    for phrase in ("serving", "called", "in the riverside area", "in the city centre", "prices are high", "family friendly"):
        assert phrase in text


def test_a_visit_ends_as_its_majority_of_judgements_says():
    import random
    good = {w for words, _ in SUBJECTS.values() for w in words}
    bad = {w for _, words in SUBJECTS.values() for w in words}
    rng = random.Random(0)
    for _ in range(200):
        v = visit(rng)
        closing = next(c for c in COME_BACK + NEVER_AGAIN if v.endswith(" " + c))
        words = re.findall(r"[a-z]+", v.removesuffix(closing).lower())
        n_good, n_bad = sum(w in good for w in words), sum(w in bad for w in words)
        assert n_good + n_bad == 3
        assert (closing in NEVER_AGAIN) == (n_bad >= 2)


def test_pretraining_mixture_keeps_every_general_paragraph_and_the_domain_share():
    general = "\n\n".join(f"Paragraph {i} about the stdlib." for i in range(2000))
    mixed = pretraining_text(general, domain_fraction=0.35, seed=0)
    assert mixed == pretraining_text(general, domain_fraction=0.35, seed=0)
    parts = mixed.split("\n\n")
    assert sorted(p for p in parts if p.startswith("Paragraph")) == sorted(general.split("\n\n"))
    domain_chars = sum(len(p) for p in parts if not p.startswith("Paragraph"))
    assert 0.3 < domain_chars / len(mixed) < 0.4
    assert parts[:50] != general.split("\n\n")[:50]  # shuffled together, not appended
