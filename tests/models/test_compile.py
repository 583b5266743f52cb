"""torch.compile of the models and every method as a user writes it: one graph for the training
step's forward (fullgraph=True: no graph break), the same loss and gradients as eager.

backend="aot_eager" traces and differentiates exactly what inductor would compile, without the C++
build (seconds, not minutes); the inductor tests, marked slow, run with `python -m pytest -m slow`."""

import pytest
import torch

from minipeft import GPT, T5, BitFit, GPTConfig, PrefixTuning, PromptTuning, T5Config

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = {  # name: model -> the module to train
    "full": lambda m: m,
    "bitfit": BitFit,
    "prefix": lambda m: PrefixTuning(m, 3, hidden=16),
    "prompt": lambda m: PromptTuning(m, 4),
}


def tiny(arch):
    torch.manual_seed(0)
    return GPT(GPTConfig.named("tiny")) if arch == "gpt" else T5(T5Config.named("tiny"))


def batch(model, B=3, T=9):
    """(input_ids, attention_mask, labels) with one right-padded row (no loss on its padding)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, model.config.vocab_size, (B, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = ids.masked_fill(mask == 0, -100) if model.arch == "gpt" else torch.randint(2, model.config.vocab_size, (B, 4), generator=g)
    return ids, mask, labels


def loss_and_grads(module, call):
    module.zero_grad(set_to_none=True)
    loss = call()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}


def compare(arch, method, backend):
    model = tiny(arch)
    module = METHODS[method](model)
    for p in (model.parameters() if method == "full" else ()):
        p.requires_grad_(True)
    ids, mask, labels = batch(model)
    module.train()
    eager = loss_and_grads(module, lambda: module(ids, attention_mask=mask, labels=labels))
    compiled = torch.compile(module, backend=backend, fullgraph=True)  # fullgraph: a graph break is an error
    got = loss_and_grads(module, lambda: compiled(ids, attention_mask=mask, labels=labels))
    torch.testing.assert_close(got[0], eager[0], atol=1e-5, rtol=1e-5)
    assert got[1].keys() == eager[1].keys() and got[1]
    for name in eager[1]:
        torch.testing.assert_close(got[1][name], eager[1][name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("arch", ["gpt", "t5"])
@pytest.mark.parametrize("method", list(METHODS))
def test_compiled_training_step_is_one_graph_with_the_eager_loss_and_gradients(arch, method):
    torch._dynamo.reset()
    compare(arch, method, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt", "t5"])
@pytest.mark.parametrize("method", list(METHODS))
def test_inductor_compiled_training_step_equals_eager(arch, method):
    torch._dynamo.reset()
    compare(arch, method, "inductor")
