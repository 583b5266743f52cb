"""The three methods on T5: the same checks as on GPT-2, plus what is T5's own
(absent bias slots, three prefix sites, the prompt on the encoder input)."""

import pytest
import torch

from minipeft import BitFit, PrefixTuning, PromptTuning
from minipeft.methods.bank import AdapterBank
from minipeft.models.t5 import shift_right
from tests.methods_common import snapshot, tiny_t5, toy_seq2seq, train_seq2seq


def test_bitfit_starts_exactly_at_the_model_and_trains_only_biases():
    model = tiny_t5()
    ids, labels = toy_seq2seq(61)
    before = snapshot(model)
    with torch.no_grad():
        plain = model(ids, decoder_input_ids=shift_right(labels))
    adapter = BitFit(model)
    with torch.no_grad():
        assert torch.equal(adapter(ids, decoder_input_ids=shift_right(labels)), plain)  # zero-initialised slots change nothing
    first, last = train_seq2seq(adapter, ids, labels, steps=40, lr=3e-2)
    assert last < 0.5 * first
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(getattr(m, "bias", None) is None for m in model.modules() if hasattr(m, "parts"))  # base slots still absent
    d, inner, ff, L, Ld = 32, 32, 64, 2, 3
    per_enc = 4 * inner - inner + d + ff + d + 2 * d          # q, k, v (inner each), o (d), wi (ff), wo (d), 2 norms
    per_dec = 2 * (3 * inner + d) + ff + d + 3 * d            # self + cross attention, MLP, 3 norms
    assert sum(p.numel() for p in adapter.trainable_parameters()) == L * per_enc + Ld * per_dec + 2 * d  # + final norms
    merged = adapter.merged()
    with torch.no_grad():
        assert (merged(ids, decoder_input_ids=shift_right(labels)) - adapter(ids, decoder_input_ids=shift_right(labels))).abs().max() < 1e-5


def test_bitfit_key_bias_gets_zero_gradient_in_every_attention():
    adapter = BitFit(tiny_t5(), ["query", "key"])
    ids, labels = toy_seq2seq(61)
    adapter(ids, labels=labels).backward()
    grads = dict(zip(adapter.slots, (p.grad for p in adapter.biases)))
    keys = [n for n in grads if n.endswith(".k.bias")]
    assert len(keys) == 2 + 2 * 3  # encoder self, decoder self and cross
    for name in keys:
        query = grads[name.replace(".k.bias", ".q.bias")]
        assert grads[name].abs().max() < 1e-5 * query.abs().max()


def test_prefix_has_three_sites_and_bake_keeps_the_logits():
    adapter = PrefixTuning(tiny_t5(), 3, hidden=16)
    assert set(adapter.mlp) == {"encoder", "decoder", "cross"}
    ids, labels = toy_seq2seq(61)
    first, last = train_seq2seq(adapter, ids, labels, steps=40, lr=1e-2)
    assert last < 0.5 * first
    with torch.no_grad():
        before = adapter(ids, decoder_input_ids=shift_right(labels))
        adapter.bake()
        assert torch.equal(adapter(ids, decoder_input_ids=shift_right(labels)), before)


def test_prefix_real_word_init_runs_the_model_on_the_words():
    model = tiny_t5()
    words = torch.tensor([[5, 9, 12]])
    adapter = PrefixTuning(model, 3, reparam=False, init_ids=words)
    acts = model.prefix_from_tokens(words)
    k, v = acts["cross"][1]
    L, H, D = model.prefix_sites()["cross"]
    flat = adapter.prefix["cross"].view(3, L, 2, H, D)
    assert torch.equal(flat[:, 1, 0].transpose(0, 1), k[0]) and torch.equal(flat[:, 1, 1].transpose(0, 1), v[0])


def test_prompt_goes_on_the_encoder_input_and_ensembles_match_separate_runs():
    model = tiny_t5()
    ids, labels = toy_seq2seq(61, batch=3)
    text = [4, 6, 8]
    adapter = PromptTuning(model, 3, "text", text_ids=text)
    with torch.no_grad():
        want = model(torch.cat([torch.tensor([text] * 3), ids], 1), decoder_input_ids=shift_right(labels))
        assert (adapter(ids, decoder_input_ids=shift_right(labels)) - want).abs().max() < 1e-5
    ensemble = PromptTuning(model, 4, "vocab", n_ensemble=3)
    with torch.no_grad():
        together = ensemble(ids, decoder_input_ids=shift_right(labels)).view(3, 3, labels.shape[1], -1)
        for k in range(3):
            assert (together[k] - ensemble.member(k)(ids, decoder_input_ids=shift_right(labels))).abs().max() < 1e-5
    per_prompt, voted = ensemble.classify(ids, None, [[7], [8], [9]])
    assert per_prompt.shape == (3, 3) and voted.shape == (3,)


def test_prompt_training_lowers_the_loss():
    adapter = PromptTuning(tiny_t5(), 5, "vocab")
    ids, labels = toy_seq2seq(61)
    first, last = train_seq2seq(adapter, ids, labels, steps=60, lr=0.3)
    assert last < 0.6 * first


def test_mixed_task_batch_on_t5_equals_each_task_alone():
    model = tiny_t5()
    adapters = {"bitfit": BitFit(model, "paper"), "prompt-2": PromptTuning(model, 2), "prompt-4": PromptTuning(model, 4, "vocab"),
                "prefix-3": PrefixTuning(model, 3, reparam=False), "prefix-2": PrefixTuning(model, 2, hidden=8)}
    ids, labels = toy_seq2seq(61, batch=6, seed=1)
    for a in adapters.values():
        train_seq2seq(a, ids, labels, steps=2)
    bank = AdapterBank(model, adapters)
    tasks = list(adapters) + ["prefix-3"]
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        together = bank(ids, attention_mask=mask, decoder_input_ids=shift_right(labels), tasks=tasks)
        out = bank.generate(ids, mask, tasks=tasks, max_new_tokens=6, eos_token_id=None)
        for row, task in enumerate(tasks):
            sl = slice(row, row + 1)
            alone = adapters[task](ids[sl], attention_mask=mask[sl], decoder_input_ids=shift_right(labels[sl]))
            assert (together[row] - alone[0]).abs().max() < 1e-5, task
            assert torch.equal(out[row], adapters[task].generate(ids[sl], mask[sl], max_new_tokens=6, eos_token_id=None)[0]), task


@pytest.mark.parametrize("method", ["bitfit", "prefix", "prompt"])
def test_save_load_on_t5(tmp_path, method):
    model = tiny_t5()
    make = {"bitfit": lambda: BitFit(model), "prefix": lambda: PrefixTuning(model, 2, hidden=8), "prompt": lambda: PromptTuning(model, 3)}[method]
    adapter = make()
    ids, labels = toy_seq2seq(61, batch=2)
    train_seq2seq(adapter, ids, labels, steps=2)
    adapter.save(tmp_path / "a.safetensors")
    loaded = type(adapter).load(tiny_t5(), tmp_path / "a.safetensors")
    with torch.no_grad():
        assert (loaded(ids, decoder_input_ids=shift_right(labels)) - adapter(ids, decoder_input_ids=shift_right(labels))).abs().max() < 1e-6
