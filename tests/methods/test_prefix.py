"""Prefix Tuning on GPT-2: reparameterisation, bake, real-word init, infix, embedding-only, files."""

import pytest
import torch

from minipeft import BitFit, MiniPeftError, PrefixTuning
from tests.methods_common import GPT_TINY, snapshot, tiny_gpt, toy_batch, train

L, H, C = GPT_TINY["n_layer"], GPT_TINY["n_head"], GPT_TINY["n_embd"]
WIDTH = L * 2 * C  # every layer's key and value for one slot


def test_trainable_counts():
    P, hidden = 5, 16
    assert sum(p.numel() for p in PrefixTuning(tiny_gpt(), P, hidden=hidden).trainable_parameters()) == \
        P * C + (C * hidden + hidden) + (hidden * WIDTH + WIDTH)
    assert sum(p.numel() for p in PrefixTuning(tiny_gpt(), P, reparam=False).trainable_parameters()) == P * WIDTH


def test_base_gets_no_gradient_and_stays_bit_identical():
    model = tiny_gpt()
    before = snapshot(model)
    adapter = PrefixTuning(model, 4, hidden=16)
    ids = toy_batch(61)
    mlp_before = {n: p.detach().clone() for n, p in adapter.mlp.named_parameters()}
    train(adapter, ids, steps=5)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(not torch.equal(mlp_before[n], p) for n, p in adapter.mlp.named_parameters())


def test_bake_gives_the_same_logits_and_drops_the_mlp():
    adapter = PrefixTuning(tiny_gpt(), 4, hidden=16)
    ids = toy_batch(61)
    train(adapter, ids, steps=3)
    with torch.no_grad():
        before = adapter(ids)
        adapter.bake()
        after = adapter(ids)
    assert torch.equal(before, after)
    assert len(adapter.mlp) == 0 and sum(p.numel() for p in adapter.trainable_parameters()) == 4 * WIDTH


@pytest.mark.parametrize("reparam", [True, False])
def test_real_word_init_equals_those_words_in_front(reparam):
    model = tiny_gpt()
    words = torch.tensor([[3, 14, 15, 9]])
    adapter = PrefixTuning(model, 4, reparam=reparam, hidden=16, init_ids=words)
    ids = toy_batch(61, batch=2)
    with torch.no_grad():
        want = model(torch.cat([words.expand(2, -1), ids], 1))[:, 4:]
        assert (adapter(ids) - want).abs().max() < 1e-5


def test_infix_is_invisible_before_and_visible_after():
    model = tiny_gpt()
    adapter = PrefixTuning(model, 3, where="infix", reparam=False)
    ids = toy_batch(61, batch=2)
    at = torch.tensor([5, 8])
    with torch.no_grad():
        got, plain = adapter(ids, infix_at=at), model(ids)
    for row, a in enumerate(at.tolist()):
        assert (got[row, :a] - plain[row, :a]).abs().max() < 1e-5   # x cannot see the infix
        assert (got[row, a:] - plain[row, a:]).abs().max() > 1e-3   # y does
    with pytest.raises(MiniPeftError, match="needs infix_at"):
        adapter(ids)


def test_embedding_only_with_real_words_equals_those_words_as_input():
    model = tiny_gpt()
    words = torch.tensor([[3, 14, 15]])
    adapter = PrefixTuning(model, 3, where="embedding", hidden=16, init_ids=words)
    ids = toy_batch(61, batch=2)
    assert set(adapter.model_kwargs(2)) == {"prompt"}
    with torch.no_grad():
        assert (adapter(ids) - model(torch.cat([words.expand(2, -1), ids], 1))[:, 3:]).abs().max() < 1e-5


def test_prefix_dropout_only_in_training():
    adapter = PrefixTuning(tiny_gpt(), 4, hidden=16, dropout=0.5)
    ids = toy_batch(61, batch=2)
    with torch.no_grad():
        adapter.eval()
        a, b = adapter(ids), adapter(ids)
        adapter.train()
        c = adapter(ids)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("reparam", [True, False])
def test_training_lowers_the_loss(reparam):
    adapter = PrefixTuning(tiny_gpt(), 5, hidden=32, reparam=reparam)
    first, last = train(adapter, toy_batch(61), steps=60, lr=1e-2 if reparam else 5e-2)
    assert last < 0.6 * first


def test_generate_uses_the_prefix():
    adapter = PrefixTuning(tiny_gpt(), 4, reparam=False)
    ids = toy_batch(61, batch=2)[:, :5]
    with torch.no_grad():
        want = adapter.model.generate(ids, max_new_tokens=6, **adapter.model_kwargs(2))
    assert torch.equal(adapter.generate(ids, max_new_tokens=6), want)
    with torch.no_grad():
        assert (adapter(ids) - adapter.model(ids)).abs().max() > 1e-3  # the prefix matters


def test_saved_adapter_holds_the_baked_prefix(tmp_path):
    adapter = PrefixTuning(tiny_gpt(), 4, hidden=16)
    ids = toy_batch(61)
    train(adapter, ids, steps=3)
    adapter.save(tmp_path / "p.safetensors")
    from minipeft.io import safetensors
    tensors, meta = safetensors.load(tmp_path / "p.safetensors")
    assert list(tensors) == ["prefix.self"] and tensors["prefix.self"].shape == (4, WIDTH)
    loaded = PrefixTuning.load(tiny_gpt(), tmp_path / "p.safetensors")
    with torch.no_grad():
        assert (loaded(ids) - adapter(ids)).abs().max() < 1e-6
    with pytest.raises(MiniPeftError, match="this is a 'prefix' adapter"):
        BitFit.load(tiny_gpt(), tmp_path / "p.safetensors")


def test_bad_arguments():
    with pytest.raises(MiniPeftError, match="unknown prefix placement"):
        PrefixTuning(tiny_gpt(), 4, where="middle")
    with pytest.raises(MiniPeftError, match="n_prefix must be >= 1"):
        PrefixTuning(tiny_gpt(), 0)


@pytest.mark.parametrize("arch", ["gpt", "t5"])
def test_bf16_autocast_gives_the_fp32_loss_and_gradients(arch):
    """Under autocast the prefix MLP computes in bf16; the prefix reaches the fp32 model in the model's
    dtype (not refused as bf16), and loss and gradients stay within bf16 rounding of the fp32 ones."""
    from tests.methods_common import tiny_t5, toy_seq2seq
    if arch == "gpt":
        adapter = PrefixTuning(tiny_gpt(), 4, hidden=16)
        ids = toy_batch(61)
        call = lambda: adapter(ids, labels=ids)  # noqa: E731
    else:
        adapter = PrefixTuning(tiny_t5(), 4, hidden=16)
        ids, labels = toy_seq2seq(61)
        call = lambda: adapter(ids, labels=labels)  # noqa: E731
    results = []
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = call()
        adapter.zero_grad()
        loss.backward()
        results.append((loss.detach(), adapter.mlp[next(iter(adapter.mlp))][3].weight.grad.clone()))
    (loss32, grad32), (loss16, grad16) = results
    assert loss16.dtype == torch.float32
    torch.testing.assert_close(loss16, loss32, rtol=2e-2, atol=0)
    assert torch.nn.functional.cosine_similarity(grad16.flatten(), grad32.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("arch, kwargs", [
    ("gpt", dict(hidden=16)), ("gpt", dict(reparam=False)), ("gpt", dict(where="embedding", hidden=16)),
    ("gpt", dict(hidden=16, init_ids=[3, 14])), ("t5", dict(hidden=16)), ("t5", dict(reparam=False)),
])
def test_bf16_model_trains_and_generates_like_fp32(arch, kwargs):
    from tests.methods_common import check_bf16_model, tiny_t5
    _, a16 = check_bf16_model(lambda m: PrefixTuning(m, 3, **kwargs), tiny_gpt() if arch == "gpt" else tiny_t5())
    assert all(p.dtype == torch.float32 for p in a16.trainable_parameters())
    assert all(t.dtype == torch.float32 for t in a16.adapter_state().values())  # files hold the fp32 prefix


def test_infix_at_is_one_int_or_one_per_row_and_checked():
    adapter = PrefixTuning(tiny_gpt(), 3, where="infix", reparam=False)
    ids = toy_batch(61, batch=2)
    with torch.no_grad():
        assert torch.equal(adapter(ids, infix_at=5), adapter(ids, infix_at=torch.tensor([5, 5])))
        assert torch.equal(adapter(ids, infix_at=[5, 8]), adapter(ids, infix_at=torch.tensor([5, 8])))
    need = r"infix_at: the index \(0 to 16\) of the first token of y, one int for all rows or 2 ints \(one per row\)"
    for bad, got in [([5, 8, 9], r"torch.int64 of shape \[3\]"), ([5.0, 8.0], r"torch.float32 of shape \[2\]"),
                     (torch.tensor([[5, 8]]), r"torch.int64 of shape \[1, 2\]"), ("5", "'5'"), ([-1, 3], r"\[-1, 3\]"),
                     (17, "17")]:
        with pytest.raises(MiniPeftError, match=f"{need}; got (a )?{got}"):
            adapter(ids, infix_at=bad)
    with pytest.raises(MiniPeftError, match=f"needs {need}"):
        adapter.generate(ids)
