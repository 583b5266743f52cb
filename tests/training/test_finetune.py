"""The fine-tuning helpers train_char.py and the reproductions share (minipeft.training.finetune)
measure what they say."""

import pytest
import torch
import torch.nn.functional as F

from minipeft import GPT, T5, GPTConfig, MiniPeftError, T5Config
from minipeft.training import finetune as ft
from minipeft.training.state import make_optimizer
from minipeft.models.t5 import shift_right
from minipeft.io.tokenizer import CharTokenizer
from minipeft.training.tasks import e2e, sentiment

CHARS = CharTokenizer.from_text("".join(chr(c) for c in range(32, 127)) + "\n")


def test_pairs_end_prompts_with_the_arrow_and_completions_with_a_newline():
    assert ft.pairs("e2e", 3, 5) == [(s + " => ", t + "\n") for s, t in e2e(3, seed=5)]
    assert ft.pairs("sentiment", 4, 5) == [(t + " => ", label + "\n") for t, label in sentiment(4, seed=5)]
    assert ft.task_data(4, 2, seed=1) == {"e2e": (ft.pairs("e2e", 4, 1), ft.pairs("e2e", 2, 2)),
                                          "sentiment": (ft.pairs("sentiment", 4, 1), ft.pairs("sentiment", 2, 2))}
    with pytest.raises(MiniPeftError, match="unknown task 'qa'; choose from 'e2e', 'sentiment'"):
        ft.pairs("qa", 1, 0)


def test_on_step_sees_every_step_and_the_loss_the_curve_logs():
    codec = ft.Codec(CHARS, "gpt")
    model = GPT(GPTConfig(vocab_size=codec.vocab_size, n_positions=128, n_embd=32, n_layer=1, n_head=2))
    seen = []
    curve = ft.finetune(model, ft.pairs("sentiment", 8, 0), codec, steps=5, lr=1e-3, batch_size=2, log_every=2,
                        on_step=lambda step, loss: seen.append((step, loss)))
    assert [s for s, _ in seen] == [0, 1, 2, 3, 4]
    assert curve == [seen[0], seen[2], seen[4]]


def test_decay_warms_up_over_5_percent_of_the_steps_then_decays_linearly_to_zero(monkeypatch):
    codec = ft.Codec(CHARS, "gpt")
    model = GPT(GPTConfig(vocab_size=codec.vocab_size, n_positions=128, n_embd=32, n_layer=1, n_head=2))
    made, rates = [], []
    monkeypatch.setattr(ft, "make_optimizer", lambda module, lr: made.append(make_optimizer(module, lr)) or made[-1])
    ft.finetune(model, ft.pairs("sentiment", 8, 0), codec, steps=40, lr=1e-3, batch_size=2, decay=True,
                on_step=lambda step, loss: rates.append(made[0].param_groups[0]["lr"]))
    # 2 warmup steps (5% of 40): 1/2, 2/2 of the rate; then (40 - step) / 38 of it, down to 1/38 at step 39
    assert rates[:4] == pytest.approx([0.5e-3, 1e-3, 1e-3, 1e-3 * 37 / 38])
    assert rates[-1] == pytest.approx(1e-3 / 38) and len(rates) == 40


def _summed_completion_loss(model, pair, codec):
    """Hand computation: -log p of each completion token (T5: and eos), summed, and their number."""
    tensors = ft.batch([pair], codec, max_len=160)
    if codec.arch == "t5":
        ids, mask, labels = tensors
        logits, targets = model(ids, shift_right(labels), mask)[0], labels[0]
    else:
        ids, mask, labels, _ = tensors
        logits, targets = model(ids, mask)[0, :-1], labels[0, 1:]  # position t predicts token t + 1
    keep = targets != -100
    return F.cross_entropy(logits[keep], targets[keep], reduction="sum").item(), int(keep.sum())


@pytest.mark.parametrize("arch", ["gpt", "t5"])
def test_evaluate_is_the_mean_over_every_completion_token(arch):
    torch.manual_seed(0)
    codec = ft.Codec(CHARS, arch)
    if arch == "t5":
        model = T5(T5Config(vocab_size=codec.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4))
    else:
        model = GPT(GPTConfig(vocab_size=codec.vocab_size, n_positions=64, n_embd=32, n_layer=1, n_head=2))
    model.eval()
    # batches of 2: completions of 2 + 7 tokens, then 12 + 1, then 3
    data = [("ab => ", "c\n"), ("a => ", "bcdefg\n"), ("xyz => ", "hello there\n"), ("q => ", "\n"), ("k => ", "hi\n")]
    sums, counts = zip(*(_summed_completion_loss(model, pair, codec) for pair in data))
    assert len(set(counts)) > 1
    want = sum(sums) / sum(counts)
    assert ft.evaluate(model, data, codec, batch_size=2) == pytest.approx(want, rel=1e-5)
    per_example_weighted = (sum(sums[:2]) / sum(counts[:2]) * 2 + sum(sums[2:4]) / sum(counts[2:4]) * 2 + sums[4] / counts[4]) / 5
    assert abs(want - per_example_weighted) > 1e-3  # the earlier weighting, which this test tells apart


def test_evaluate_refuses_data_with_nothing_to_predict():
    codec = ft.Codec(CHARS, "gpt")
    model = GPT(GPTConfig(vocab_size=codec.vocab_size, n_positions=64, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(MiniPeftError, match="nothing to evaluate"):
        ft.evaluate(model, [("ab => ", "")], codec)
