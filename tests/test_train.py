"""Resumable training: stopping, saving and resuming reaches the same weights as not stopping."""

import pytest
import torch

from minipeft import BitFit, MiniPeftError, PrefixTuning, PromptTuning
from minipeft.train import load_training_state, make_optimizer, save_training_state
from tests.methods_common import tiny_gpt, toy_batch, toy_labels

MAKERS = {
    "bitfit": lambda m: BitFit(m),
    "prefix-mlp": lambda m: PrefixTuning(m, 3, hidden=16, dropout=0.1),  # dropout: the RNG state matters too
    "prompt": lambda m: PromptTuning(m, 3),
    "full": lambda m: m,
}


def _steps(module, opt, n, start):
    for step in range(start, start + n):
        ids = toy_batch(61, seed=step)
        module.train()
        _, loss = module(ids, labels=toy_labels(ids))
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("method", list(MAKERS))
def test_resume_is_bit_identical(tmp_path, method):
    torch.manual_seed(0)
    straight = MAKERS[method](tiny_gpt())
    opt = make_optimizer(straight, 1e-2)
    _steps(straight, opt, 6, 0)

    torch.manual_seed(0)
    first = MAKERS[method](tiny_gpt())
    opt = make_optimizer(first, 1e-2)
    _steps(first, opt, 3, 0)
    save_training_state(tmp_path / "state.pt", first, opt, step=3)

    torch.manual_seed(123)  # a new process would not share the RNG: the state file restores it
    resumed = MAKERS[method](tiny_gpt())
    opt = make_optimizer(resumed, 1e-2)
    saved = load_training_state(tmp_path / "state.pt", resumed, opt)
    _steps(resumed, opt, 3, saved["step"])
    for (n, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), n


def test_resume_into_a_different_adapter_is_refused(tmp_path):
    a = BitFit(tiny_gpt())
    opt = make_optimizer(a, 1e-2)
    save_training_state(tmp_path / "state.pt", a, opt, step=1)
    b = BitFit(tiny_gpt(), "paper")
    with pytest.raises(MiniPeftError, match="does not match"):
        load_training_state(tmp_path / "state.pt", b, make_optimizer(b, 1e-2))


def test_nothing_to_train():
    m = tiny_gpt()
    for p in m.parameters():
        p.requires_grad_(False)
    with pytest.raises(MiniPeftError, match="nothing to train"):
        make_optimizer(m, 1e-3)
