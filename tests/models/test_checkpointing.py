"""Activation checkpointing (model.checkpointing, layers.run_block): with every hook, in training
with dropout, the loss and every trainable gradient equal those without it; outside training with
gradients (eval, no_grad, generation with its KV cache) nothing is checkpointed."""

import pytest
import torch
import torch.utils.checkpoint

from minipeft import GPT, T5, BitFit, GPTConfig, MiniPeftError, PrefixTuning, PromptTuning, T5Config
from minipeft.methods.bank import AdapterBank

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(arch, dropout=0.1):
    torch.manual_seed(0)
    if arch == "gpt":
        return GPT(GPTConfig.named("tiny", dropout=dropout))
    return T5(T5Config.named("tiny", dropout=dropout))


def n_blocks(model):
    return model.config.n_layer if model.arch == "gpt" else model.config.num_layers + model.config.num_decoder_layers


def batch(model, B=4, T=10):
    """(input_ids, attention_mask, labels): row 1 right-padded (no loss on its padding)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, model.config.vocab_size, (B, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    if model.arch == "gpt":
        return ids, mask, ids.masked_fill(mask == 0, -100)
    return ids, mask, torch.randint(2, model.config.vocab_size, (B, 5), generator=g)


def bank(model):
    """Four tasks, one per row of the batch: BitFit, prompt tuning, prefix tuning (MLP and direct)."""
    adapters = {"bitfit": BitFit(model), "prompt": PromptTuning(model, 3), "prefix-mlp": PrefixTuning(model, 2, hidden=16),
                "prefix": PrefixTuning(model, 4, reparam=False)}
    return AdapterBank(model, adapters), {"tasks": list(adapters)}


METHODS = {  # name: model -> (the module to train, extra forward arguments)
    "full": lambda m: (m, {}),
    "bitfit": lambda m: (BitFit(m), {}),
    "prefix-mlp": lambda m: (PrefixTuning(m, 3, hidden=16, dropout=0.1), {}),
    "prefix-direct": lambda m: (PrefixTuning(m, 3, reparam=False), {}),
    "prefix-embedding": lambda m: (PrefixTuning(m, 3, where="embedding", hidden=16), {}),
    "infix": lambda m: (PrefixTuning(m, 3, where="infix", reparam=False), {"infix_at": [4, 6, 5, 2]}),
    "prompt": lambda m: (PromptTuning(m, 4), {}),
    "many-task batch": lambda m: bank(m),
}


def trainable(module):
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def loss_and_grads(module, model, forward, checkpointing):
    model.checkpointing = checkpointing
    module.train()
    module.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks in both runs: checkpointing replays them in its rerun
    loss = forward()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in trainable(module).items()}


@pytest.fixture
def checkpoints(monkeypatch):
    """The use_reentrant argument of every torch.utils.checkpoint.checkpoint call (one per checkpointed block)."""
    calls = []
    real = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real(*args, **kwargs)
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    return calls


CASES = [("gpt", m, 0.1) for m in METHODS] + [("gpt", "prompt", 0.0)] + [
    ("t5", m, 0.1) for m in METHODS if m not in ("infix", "prefix-embedding")]


@pytest.mark.parametrize("arch, method, dropout", CASES, ids=[f"{a}-{m}-dropout{d}" for a, m, d in CASES])
def test_loss_and_every_gradient_equal_those_without_checkpointing(arch, method, dropout, checkpoints):
    model = tiny(arch, dropout)
    module, extra = METHODS[method](model)
    with torch.no_grad():  # every trainable parameter moved a little, as if trained (zero deltas would hide bugs)
        for p in trainable(module).values():
            p.add_(0.1 * torch.randn_like(p))
    ids, mask, labels = batch(model)
    shared_prompt = []  # GPT prompt tuning without dropout runs the prompt once (GPT.keys_values), then the tokens
    if arch == "gpt":
        keys_values = model.keys_values
        model.keys_values = lambda *args: shared_prompt.append(1) or keys_values(*args)

    def forward():
        return module(ids, attention_mask=mask, labels=labels, **extra)

    plain_loss, plain = loss_and_grads(module, model, forward, False)
    assert checkpoints == []
    loss, grads = loss_and_grads(module, model, forward, True)
    assert checkpoints == [False] * n_blocks(model)  # every block, non-reentrant
    assert bool(shared_prompt) == (arch == "gpt" and method == "prompt" and dropout == 0)

    assert plain and plain.keys() == grads.keys()
    assert all(g is not None for g in plain.values()) and any(bool(g.abs().sum() > 0) for g in plain.values())
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=1e-6)
    for name in plain:
        torch.testing.assert_close(grads[name], plain[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("arch", ["gpt", "t5"])
def test_nothing_is_checkpointed_outside_training_with_gradients(arch, checkpoints):
    model = tiny(arch)
    ids, mask, labels = batch(model)
    model.checkpointing = True
    model.eval()
    model(ids, attention_mask=mask, labels=labels).backward()             # eval, with gradients
    model.train()
    with torch.no_grad():
        model(ids, attention_mask=mask, labels=labels)                    # training, without gradients
    model.generate(ids[:, :4], max_new_tokens=3)                          # generation, in training mode
    assert checkpoints == []


@pytest.mark.parametrize("arch", ["gpt", "t5"])
def test_generation_is_the_same_with_checkpointing_on(arch):
    model = tiny(arch)
    adapter = PrefixTuning(model, 3, hidden=16).eval()
    ids = batch(model)[0][:, :5]
    model.checkpointing = False
    want = adapter.generate(ids, max_new_tokens=4)
    model.checkpointing = True
    assert torch.equal(adapter.generate(ids, max_new_tokens=4), want)


@pytest.mark.parametrize("arch", ["gpt", "t5"])
def test_checkpointing_is_off_by_default_and_must_be_true_or_false(arch):
    model = tiny(arch)
    assert model.checkpointing is False
    ids, mask, labels = batch(model)
    model.checkpointing = "yes"
    with pytest.raises(MiniPeftError, match="model.checkpointing must be True or False; got 'yes'"):
        model(ids, attention_mask=mask, labels=labels)
    with pytest.raises(MiniPeftError, match="model.checkpointing must be True or False"):
        model.generate(ids, max_new_tokens=1)
