"""BLEU / chrF of generated text (metrics.py) and the greedy completions they score (finetune.py)."""

import sys

import pytest
import sacrebleu

from minipeft.errors import MiniPeftError
from minipeft.training.metrics import text_scores

HYPS = ["the cat sat on the mat", "a dog barked at the postman today"]
REFS = [["the cat sat on a mat", "there is a cat on the mat"],        # two references per hypothesis
        ["the dog barked at the postman", "a dog was barking at the mailman today"]]


def test_text_scores_equal_sacrebleu_on_reference_streams():
    streams = [["the cat sat on a mat", "the dog barked at the postman"],  # every hypothesis's first reference
               ["there is a cat on the mat", "a dog was barking at the mailman today"]]
    scores = text_scores(HYPS, REFS)
    assert scores == {"bleu": sacrebleu.corpus_bleu(HYPS, streams).score, "chrf": sacrebleu.corpus_chrf(HYPS, streams).score}
    assert 0 < scores["bleu"] < 100 and 0 < scores["chrf"] < 100


def test_text_scores_are_100_for_a_hypothesis_equal_to_a_reference():
    assert text_scores([REFS[0][1], REFS[1][0]], REFS) == pytest.approx({"bleu": 100.0, "chrf": 100.0})


def test_text_scores_take_different_numbers_of_references():
    # one reference for the first hypothesis: the same scores as that reference given twice
    # (a repeated reference changes neither BLEU's matches nor its closest length, nor chrF's best)
    short = [REFS[0][:1], REFS[1]]
    assert text_scores(HYPS, short) == text_scores(HYPS, [REFS[0][:1] * 2, REFS[1]])
    assert text_scores(HYPS, short) != text_scores(HYPS, REFS)


@pytest.mark.parametrize("hyps, refs, match", [
    ([], [], "empty"),
    (HYPS, REFS[:1], "2 hypotheses but 1 lists"),
    ("the cat", [["the cat"]], "hypotheses must be a list"),
    (HYPS, "refs", "references must be a list"),
    ([HYPS[0], 3], REFS, r"hypotheses\[1\] must be a string"),
    (HYPS, [REFS[0], "the dog"], r"references\[1\] must be a list of strings, got str \(wrap a single"),
    (HYPS, [REFS[0], []], r"references\[1\] is empty"),
    (HYPS, [REFS[0], ["the dog", None]], r"references\[1\] must hold strings only"),
])
def test_text_scores_refuse_bad_arguments(hyps, refs, match):
    with pytest.raises(MiniPeftError, match=match):
        text_scores(hyps, refs)


def test_text_scores_without_sacrebleu_say_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)                     # import sacrebleu fails
    with pytest.raises(MiniPeftError, match=r"pip install 'minipeft\[eval\]'"):
        text_scores(HYPS, REFS)
