"""BLEU / chrF of generated text (metrics.py) and the greedy completions they score (finetune.py)."""

import sys

import pytest
import sacrebleu
import torch

from minipeft import GPTConfig
from minipeft.errors import MiniPeftError
from minipeft.io.tokenizer import CharTokenizer
from minipeft.methods.bitfit import BitFit
from minipeft.methods.prefix import PrefixTuning
from minipeft.methods.prompt import PromptTuning
from minipeft.training.finetune import Codec, e2e_scores, generate_completions, task_data
from minipeft.training.metrics import text_scores
from minipeft.training.tasks import e2e_references

from tests.methods_common import tiny_gpt, tiny_t5

pytestmark = pytest.mark.usefixtures("one_thread")

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


# ---- greedy completions: batched and left-padded == one prompt at a time == argmax by hand -------

TEXT = "name[Zizzi] eatType[pub] food[Italian] => Zizzi is an Italian pub.\n"
PROMPTS = ["name[Zizzi] => ", "eatType[pub] food[Italian] => ", "Zi", "food[Italian] name[Zizzi] eatType[pub] => "]
GPT_MAKERS = {"model": lambda m: m, "bitfit": BitFit, "prefix": lambda m: PrefixTuning(m, 3), "prompt": lambda m: PromptTuning(m, 4)}


def varied(module):
    """Larger random matrices, and nonzero adapter parameters: a small random model's greedy text
    mostly repeats one token, which would make two decodings agree without proving much."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5)
            elif p.requires_grad:
                p.normal_(0, 0.1)                          # BitFit's deltas (zero at the start)
    return module


def gpt_setup(make="model"):
    codec = Codec(CharTokenizer.from_text(TEXT), "gpt")
    model = varied(tiny_gpt(vocab_size=codec.vocab_size))
    return varied(GPT_MAKERS[make](model)) if make != "model" else model, codec


def argmax_by_hand(module, prompt, codec, n):
    """n greedy tokens from the forward's logits, no cache, no padding, no eos."""
    ids = codec.encode(prompt)
    for _ in range(n):
        ids.append(int(module(torch.tensor([ids]))[0, -1].argmax()))
    return codec.decode(ids[len(codec.encode(prompt)):])


@pytest.mark.parametrize("make", sorted(GPT_MAKERS))
def test_gpt_completions_batched_equal_one_by_one_and_by_hand(make):
    module, codec = gpt_setup(make)
    batched = generate_completions(module, PROMPTS, codec, max_new_tokens=8, stop=None, batch_size=3)
    alone = [generate_completions(module, [p], codec, max_new_tokens=8, stop=None)[0] for p in PROMPTS]
    assert batched == alone and all(len(c) == 8 for c in batched)
    assert batched[3] == argmax_by_hand(module, PROMPTS[3], codec, 8)


def test_gpt_completions_stop_at_the_stop_string():
    module, codec = gpt_setup("prefix")
    full = generate_completions(module, PROMPTS, codec, max_new_tokens=12, stop=None)
    at = next(i for i in range(2, 12) if full[0][i] not in full[0][:i])   # a character new to the text there
    for stop in (full[0][at], full[0][at:at + 2]):         # one token (decoding ends there) or two
        assert generate_completions(module, PROMPTS, codec, max_new_tokens=12, stop=stop) == [c.split(stop, 1)[0] for c in full]


def test_gpt_prompts_keep_their_end_within_the_context():
    module, codec = gpt_setup("prefix")                     # 64 positions, 3 of them the prefix
    long = (TEXT * 2)[:70]
    alone = lambda p, **kw: generate_completions(module, [p], codec, max_new_tokens=10, stop=None, **kw)  # noqa: E731
    assert alone(long) == alone(long[-(64 - 3 - 10):])
    assert alone(long, max_len=20) == alone(long[-20:])
    with pytest.raises(MiniPeftError, match="leaves no room for a prompt"):
        generate_completions(module, PROMPTS, codec, max_new_tokens=61)


def test_t5_completions_batched_equal_one_by_one_and_by_hand():
    codec = Codec(CharTokenizer.from_text(TEXT), "t5")
    model = varied(tiny_t5(1, vocab_size=codec.vocab_size))
    batched = generate_completions(model, PROMPTS, codec, max_new_tokens=6, stop=None, batch_size=3)
    assert batched == [generate_completions(model, [p], codec, max_new_tokens=6, stop=None)[0] for p in PROMPTS]
    dec = [0]                                               # the decoder's start token, then argmax to eos (1)
    while len(dec) <= 6 and dec[-1] != 1:
        dec.append(int(model(torch.tensor([codec.encode(PROMPTS[3])]), torch.tensor([dec]))[0, -1].argmax()))
    assert batched[3] == codec.decode([t for t in dec[1:] if t != 1])


def test_completions_refuse_what_they_do_not_support():
    model, codec = gpt_setup()
    for kw, match in [(dict(prompts="a prompt"), "list of non-empty strings"), (dict(prompts=["a", ""]), "list of non-empty"),
                      (dict(max_new_tokens=0), "max_new_tokens must be a positive integer"),
                      (dict(batch_size=2.0), "batch_size must be"), (dict(stop=""), "stop must be"),
                      (dict(codec=Codec(codec.tokenizer, "t5")), "codec is for a t5 model"),
                      (dict(module=PrefixTuning(model, 3, where="infix")), "infix"),
                      (dict(module=PromptTuning(model, 4, n_ensemble=2)), r"member\(k\)")]:
        args = {"module": model, "prompts": PROMPTS, "codec": codec, "max_new_tokens": 4, **kw}
        with pytest.raises(MiniPeftError, match=match):
            generate_completions(args.pop("module"), args.pop("prompts"), args.pop("codec"), **args)


# ---- E2E scores: completions against every reference of their source -----------------------------

class Answers(torch.nn.Module):
    """A stand-in GPT whose generate writes a fixed answer after each prompt (then eos)."""
    arch = "gpt"

    def __init__(self, codec, answers):
        super().__init__()
        self.codec, self.answers, self.config = codec, answers, GPTConfig(n_positions=1024)

    def generate(self, ids, mask, *, max_new_tokens, eos_token_id):
        new = [self.codec.encode(self.answers[self.codec.decode(row[m.bool()].tolist())])[:max_new_tokens] for row, m in zip(ids, mask)]
        width = max(len(n) for n in new)
        return torch.cat([ids, torch.tensor([n + [eos_token_id] * (width - len(n)) for n in new])], 1)


def test_e2e_scores_use_every_reference_of_a_source():
    _, data = task_data(1, 6, seed=0)["e2e"]
    codec = Codec(CharTokenizer.from_text("".join(p + "".join(e2e_references(p[:-4])) for p, _ in data) + "\nmore"), "gpt")
    # another opening than the data's target, then the stop and more text: a perfect score
    other_opening = {p: next(r for r in e2e_references(p[:-4]) if r + "\n" != c) + "\nmore" for p, c in data}
    assert e2e_scores(Answers(codec, other_opening), data, codec) == pytest.approx({"bleu": 100.0, "chrf": 100.0})
    # the first five words of each target: the scores of those against all references
    first_words = {p: " ".join(c.split()[:5]) + "\n" for p, c in data}
    scores = e2e_scores(Answers(codec, first_words), data, codec)
    assert scores == text_scores([first_words[p].strip() for p, _ in data], [e2e_references(p[:-4]) for p, _ in data])
    assert scores["bleu"] < 50
    with pytest.raises(MiniPeftError, match="SOURCE => "):
        e2e_scores(Answers(codec, first_words), [("name[Zizzi]", "x")], codec)
