"""BitFit on GPT-2: what trains, what stays frozen, the paper's facts, merge and files."""

import pytest
import torch

from minipeft import GPT, BitFit, GPTConfig, MiniPeftError
from minipeft.layers import bias_slots
from tests.methods_common import GPT_TINY, snapshot, tiny_gpt, toy_batch, train


def test_gpt2_small_report_is_the_real_bias_count():
    adapter = BitFit(GPT(GPTConfig.named("gpt2")))
    assert adapter.report() == "trainable 102,144 of 124,439,808 (0.082%)"


@pytest.mark.parametrize("terms, per_layer", [
    ("all", 3 * 32 + 32 + 128 + 32 + 2 * 32),   # q, k, v, attn_out, mlp_in, mlp_out, two norms
    ("paper", 32 + 128),                        # query + mlp_in
    (["query"], 32),
    (["norm"], 2 * 32),
])
def test_trainable_count_matches_hand_count(terms, per_layer):
    adapter = BitFit(tiny_gpt(), terms)
    final_norm = 32 if terms in ("all", ["norm"]) else 0
    assert sum(p.numel() for p in adapter.trainable_parameters()) == GPT_TINY["n_layer"] * per_layer + final_norm


def test_only_chosen_biases_change_and_base_is_untouched():
    model = tiny_gpt()
    before = snapshot(model)
    adapter = BitFit(model, ["query", "mlp_in"])
    ids = toy_batch(61)
    _, loss = adapter(ids, labels=ids)
    loss.backward()
    assert all(p.grad is None for p in model.parameters())  # the base gets no gradient at all
    train(adapter, ids, steps=5)
    after = snapshot(model)
    assert all(torch.equal(before[n], after[n]) for n in before)  # bit-identical base
    merged = dict(adapter.merged().named_parameters())
    changed = {n for n in before if not torch.equal(before[n], merged[n])}
    assert changed == {f"h.{i}.attn.c_attn.bias_query" for i in range(2)} | {f"h.{i}.mlp.c_fc.bias" for i in range(2)}


def test_query_only_trains_exactly_the_query_slice_of_the_fused_projection(tmp_path):
    model = tiny_gpt()
    adapter = BitFit(model, ["query"])
    ids = toy_batch(61)
    train(adapter, ids, steps=5)
    merged = adapter.merged()
    merged.save_pretrained(tmp_path)  # the Hugging Face layout fuses q/k/v biases into c_attn.bias
    from minipeft import safetensors
    fused_before = torch.cat([model.h[0].attn.c_attn.bias_query, model.h[0].attn.c_attn.bias_key, model.h[0].attn.c_attn.bias_value])
    fused_after = safetensors.load(tmp_path / "model.safetensors")[0]["h.0.attn.c_attn.bias"]
    C = 32
    assert not torch.equal(fused_after[:C], fused_before[:C])
    assert torch.equal(fused_after[C:], fused_before[C:])


def test_key_bias_gets_zero_gradient():
    """Softmax ignores a constant added to every score of a query, and q . b_k is such a constant."""
    model = tiny_gpt()
    with torch.no_grad():  # sharp attention, so that the query bias matters
        for block in model.h:
            block.attn.c_attn.weight.normal_(0, 0.5)
    adapter = BitFit(model, ["query", "key"])
    ids = toy_batch(61)
    _, loss = adapter(ids, labels=ids)
    loss.backward()
    grads = dict(zip(adapter.slots, (p.grad for p in adapter.deltas)))
    for i in range(2):
        key, query = grads[f"h.{i}.attn.c_attn.bias_key"], grads[f"h.{i}.attn.c_attn.bias_query"]
        assert query.abs().max() > 1e-3
        assert key.abs().max() < 1e-5 * query.abs().max()


def test_merge_gives_the_same_outputs():
    adapter = BitFit(tiny_gpt())
    ids = toy_batch(61)
    train(adapter, ids, steps=5)
    with torch.no_grad():
        assert (adapter.merged()(ids) - adapter(ids)).abs().max() < 1e-5


def test_training_lowers_the_loss():
    adapter = BitFit(tiny_gpt())
    first, last = train(adapter, toy_batch(61), steps=60, lr=5e-2)
    assert last < 0.3 * first


def test_save_load_round_trip_and_wrong_base(tmp_path):
    adapter = BitFit(tiny_gpt(), "paper")
    ids = toy_batch(61)
    train(adapter, ids, steps=3)
    adapter.save(tmp_path / "a.safetensors")
    assert (tmp_path / "a.safetensors").stat().st_size < 10_000  # a tiny bias-only file
    again = BitFit.load(tiny_gpt(), tmp_path / "a.safetensors")
    with torch.no_grad():
        assert torch.equal(again(ids), adapter(ids))
    with pytest.raises(MiniPeftError, match="different base model"):
        BitFit.load(tiny_gpt(seed=1), tmp_path / "a.safetensors")


def test_bad_terms():
    with pytest.raises(MiniPeftError, match="unknown BitFit term"):
        BitFit(tiny_gpt(), ["querry"])


def test_every_slot_has_a_role():
    roles = {role for _, _, _, role in bias_slots(tiny_gpt())}
    assert roles == {"query", "key", "value", "attn_out", "mlp_in", "mlp_out", "norm"}


def test_task_head_trains_with_the_biases_and_round_trips(tmp_path):
    model = tiny_gpt()
    adapter = BitFit(model, "paper", n_classes=3)
    ids = toy_batch(61, batch=6)
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    from minipeft.train import make_optimizer
    opt = make_optimizer(adapter, 5e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(adapter.classify(ids, mask), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    with torch.no_grad():  # the head reads the last real token's final hidden state
        h = model(ids[1:2, :12], hidden=True, bias_delta=adapter.hooks(1)["bias_delta"])[0, -1]
        assert (adapter.classify(ids, mask)[1] - adapter.head(h)).abs().max() < 1e-5
    adapter.save(tmp_path / "h.safetensors")
    again = BitFit.load(model, tmp_path / "h.safetensors")
    assert torch.equal(again.classify(ids, mask), adapter.classify(ids, mask))
    assert sum(p.numel() for p in adapter.trainable_parameters()) == 2 * (32 + 128) + 32 * 3 + 3
