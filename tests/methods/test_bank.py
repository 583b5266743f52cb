"""Many tasks in one batch: each row equals its task run alone, in forward and in generation."""

import pytest
import torch

from minipeft import BitFit, MiniPeftError, PrefixTuning, PromptTuning
from minipeft.methods.bank import AdapterBank
from tests.methods_common import tiny_gpt, toy_batch, train


@pytest.fixture(scope="module")
def bank():
    model = tiny_gpt()
    adapters = {
        "bitfit-paper": BitFit(model, "paper"),
        "bitfit-all": BitFit(model),
        "prompt-3": PromptTuning(model, 3),
        "prompt-5": PromptTuning(model, 5, "vocab"),
        "prefix-4": PrefixTuning(model, 4, reparam=False),
        "prefix-2-mlp": PrefixTuning(model, 2, hidden=16),
        "embedding-3": PrefixTuning(model, 3, where="embedding", hidden=16),
    }
    ids = toy_batch(61)
    for a in adapters.values():  # move every adapter away from its initial values
        train(a, ids, steps=2, lr=1e-2)
    return model, adapters, AdapterBank(model, adapters)


def test_mixed_task_forward_equals_each_task_alone(bank):
    model, adapters, b = bank
    tasks = list(adapters) + ["prefix-4", "bitfit-all"]
    ids = toy_batch(61, batch=len(tasks), seed=3)
    mask = torch.ones_like(ids)
    mask[2, 11:] = 0
    mask[4, 9:] = 0
    with torch.no_grad():
        together = b(ids, mask, tasks=tasks)
        for row, task in enumerate(tasks):
            alone = adapters[task](ids[row:row + 1], mask[row:row + 1])[0]
            real = mask[row].bool()
            assert (together[row][real] - alone[real]).abs().max() < 1e-5, task


def test_mixed_task_generation_equals_each_task_alone(bank):
    model, adapters, b = bank
    tasks = list(adapters)
    ids = toy_batch(61, batch=len(tasks), seed=4)[:, :6]
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    ids[1, :2] = 0
    together = b.generate(ids, mask, tasks=tasks, max_new_tokens=8)
    for row, task in enumerate(tasks):
        real = mask[row].bool()
        alone = adapters[task].generate(ids[row:row + 1, real], max_new_tokens=8)[0]
        assert torch.equal(together[row, -8:], alone[-8:]), task


def test_bank_errors(bank):
    model, adapters, b = bank
    ids = toy_batch(61, batch=2)
    with pytest.raises(MiniPeftError, match="unknown task"):
        b(ids, tasks=["bitfit-all", "nope"])
    with pytest.raises(MiniPeftError, match="tasks names 1 rows but the batch has 2"):
        b(ids, tasks=["bitfit-all"])
    with pytest.raises(MiniPeftError, match="different base model"):
        AdapterBank(model, {"x": BitFit(tiny_gpt(seed=5))})


def test_bank_is_a_module_over_its_adapters():
    """eval()/train(), .to() and .parameters() reach every adapter; task names are free text."""
    model = tiny_gpt()
    noisy = PrefixTuning(model, 3, hidden=16, dropout=0.5)
    b = AdapterBank(model, {"e2e.v1": noisy, "sst-2/bitfit": BitFit(model)})
    ids = toy_batch(61, batch=2)
    b.train()
    assert noisy.training and b.adapters["e2e.v1"] is noisy
    b.eval()
    assert not noisy.training
    with torch.no_grad():  # dropout off: two calls agree, and equal the adapter alone
        first, second = b(ids, tasks=["e2e.v1"] * 2), b(ids, tasks=["e2e.v1"] * 2)
        assert torch.equal(first, second)
        assert (first - noisy(ids)).abs().max() < 1e-5
    trainable = {id(p) for p in b.parameters() if p.requires_grad}
    assert trainable == {id(p) for a in b.adapters.values() for p in a.trainable_parameters()}
    assert b.to(torch.float64).adapters["sst-2/bitfit"].biases[0].dtype == torch.float64


def test_bank_takes_a_copy_of_its_model_but_not_one_in_another_dtype():
    import copy
    model = tiny_gpt()
    same = BitFit(copy.deepcopy(model))
    b = AdapterBank(model, {"copy": same})
    ids = toy_batch(61, batch=1)
    with torch.no_grad():
        assert torch.equal(b(ids, tasks=["copy"]), same(ids))
    with pytest.raises(MiniPeftError, match="its adapter runs a torch.bfloat16 copy of the model, the bank a torch.float32 one"):
        AdapterBank(model, {"bf16": BitFit(copy.deepcopy(model).to(torch.bfloat16))})
