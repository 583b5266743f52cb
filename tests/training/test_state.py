"""Resumable training: stopping, saving and resuming reaches the same weights as not stopping."""

import re

import pytest
import torch

from minipeft import BitFit, MiniPeftError, PrefixTuning, PromptTuning
from minipeft.training.state import load_training_state, make_optimizer, restore_rng, rng_state, save_training_state, step_seed
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
        loss = module(ids, labels=toy_labels(ids))
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


def _saved_then_edited(tmp_path, edit):
    """A training state written by save_training_state, then changed by edit(dict) and written back."""
    module = MAKERS["prefix-mlp"](tiny_gpt())
    save_training_state(tmp_path / "state.pt", module, make_optimizer(module, 1e-2), step=3)
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    edit(saved)
    torch.save(saved, tmp_path / "state.pt")
    return tmp_path / "state.pt"


@pytest.mark.parametrize("key", ["rng", "optimizer", "step"])
def test_a_state_missing_a_key_names_the_file_and_the_key(tmp_path, key):
    path = _saved_then_edited(tmp_path, lambda saved: saved.pop(key))
    module = MAKERS["prefix-mlp"](tiny_gpt())
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(MiniPeftError, match=f"{re.escape(str(path))}: training state lacks \\['{key}'\\]"):
        load_training_state(path, module, make_optimizer(module, 1e-2))
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # refused before changing anything


def test_a_state_without_the_cpu_rng_is_refused(tmp_path):
    path = _saved_then_edited(tmp_path, lambda saved: saved["rng"].pop("cpu"))
    module = MAKERS["prefix-mlp"](tiny_gpt())
    with pytest.raises(MiniPeftError, match=f"{re.escape(str(path))}: .*'rng' lacks the CPU generator state"):
        load_training_state(path, module, make_optimizer(module, 1e-2))


def test_a_state_whose_optimizer_does_not_fit_leaves_the_module_as_it_was(tmp_path):
    path = _saved_then_edited(tmp_path, lambda saved: saved["optimizer"]["param_groups"][0]["params"].pop())
    module = MAKERS["prefix-mlp"](tiny_gpt(seed=1))  # other values than the saved ones
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(MiniPeftError, match=f"{re.escape(str(path))}: the optimizer state does not fit"):
        load_training_state(path, module, make_optimizer(module, 1e-2))
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_a_state_with_the_earlier_torch_rng_key_resumes_bit_identically(tmp_path):
    """Files written before the CUDA states were saved hold the CPU state alone, as "torch_rng"."""
    torch.manual_seed(0)
    straight = MAKERS["prefix-mlp"](tiny_gpt())
    opt = make_optimizer(straight, 1e-2)
    _steps(straight, opt, 4, 0)

    torch.manual_seed(0)
    first = MAKERS["prefix-mlp"](tiny_gpt())
    opt = make_optimizer(first, 1e-2)
    _steps(first, opt, 2, 0)
    save_training_state(tmp_path / "state.pt", first, opt, step=2)
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    saved["torch_rng"] = saved.pop("rng")["cpu"]
    torch.save(saved, tmp_path / "state.pt")

    torch.manual_seed(123)
    resumed = MAKERS["prefix-mlp"](tiny_gpt())
    opt = make_optimizer(resumed, 1e-2)
    _steps(resumed, opt, 2, load_training_state(tmp_path / "state.pt", resumed, opt)["step"])
    for (n, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), n


def test_rng_state_restores_the_random_stream():
    torch.manual_seed(5)
    rng = rng_state()
    want = torch.rand(8)
    torch.rand(100)  # move on
    restore_rng(rng, "state.pt")
    assert torch.equal(torch.rand(8), want)
    if torch.cuda.is_available():
        assert len(rng["cuda"]) == torch.cuda.device_count()


def test_step_seed_keeps_the_batch_order_of_earlier_runs():
    """Runs made before step_seed existed seeded step k's batch with seed * 1_000_003 + k."""
    assert [step_seed(1337, k) for k in (0, 1, 250)] == [1337 * 1_000_003, 1337 * 1_000_003 + 1, 1337 * 1_000_003 + 250]


def test_a_damaged_state_is_refused_with_torch_s_reason_as_a_whole_sentence(tmp_path):
    module = MAKERS["prefix-mlp"](tiny_gpt())
    save_training_state(tmp_path / "state.pt", module, make_optimizer(module, 1e-2), step=3)
    whole = (tmp_path / "state.pt").read_bytes()
    (tmp_path / "state.pt").write_bytes(whole[:100])  # cut short: torch.load's reason is a long RuntimeError
    with pytest.raises(MiniPeftError) as e:
        load_training_state(tmp_path / "state.pt", module, make_optimizer(module, 1e-2))
    # torch's message runs over 300 characters; the first sentence of it is kept whole, the rest dropped
    assert re.fullmatch(re.escape(f"{tmp_path / 'state.pt'}: not a readable training state: the file is damaged or was "
                                  "not written by torch.save (torch.load: RuntimeError: ") + r"[^.()]+\.\)", str(e.value)), str(e.value)


def test_a_state_of_another_adapter_names_what_differs(tmp_path):
    a = PrefixTuning(tiny_gpt(), 3, hidden=16)
    save_training_state(tmp_path / "state.pt", a, make_optimizer(a, 1e-2), step=1)
    b = PrefixTuning(tiny_gpt(), 4, hidden=16)  # 4 slots: the prefix parameter is longer
    with pytest.raises(MiniPeftError, match=r"does not match this model/adapter \(1 differ in shape, e\.g\. \S+: "
                                            r"saved \[3, \d+\], here \[4, \d+\]\)"):
        load_training_state(tmp_path / "state.pt", b, make_optimizer(b, 1e-2))
    c = PromptTuning(tiny_gpt(), 3)
    with pytest.raises(MiniPeftError, match=r"tensor\(s\) of this one are not in the state, e\.g\. .*saved tensor\(s\) are "
                                            r"not in this one, e\.g\. "):
        load_training_state(tmp_path / "state.pt", c, make_optimizer(c, 1e-2))


def test_a_bitfit_state_of_the_delta_format_says_why_it_cannot_resume(tmp_path):
    from minipeft import BitFit
    from minipeft.training.state import read_training_state, restore_training_state
    model = tiny_gpt()
    adapter = BitFit(model, "paper")
    opt = make_optimizer(adapter, 1e-3)
    save_training_state(tmp_path / "state.pt", adapter, opt, 3)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    state["module"] = {k.replace("biases.", "deltas."): v for k, v in state["module"].items()}  # as format 1 saved it
    torch.save(state, tmp_path / "state.pt")
    with pytest.raises(MiniPeftError, match="BitFit state from before adapter format 2.*start the run again"):
        restore_training_state(read_training_state(tmp_path / "state.pt"), tmp_path / "state.pt", adapter, opt)
