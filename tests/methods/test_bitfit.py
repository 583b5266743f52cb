"""BitFit on GPT-2: what trains, what stays frozen, the paper's facts, merge and files."""

import copy

import pytest
import torch

from minipeft import GPT, BitFit, GPTConfig, MiniPeftError
from minipeft.io.adapter_file import fingerprint, same_base
from minipeft.methods.adapter import last_token_index
from minipeft.models.layers import bias_slots
from tests.methods_common import GPT_TINY, nudge, snapshot, tiny_gpt, tiny_t5, toy_batch, train


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
    loss = adapter(ids, labels=ids)
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
    from minipeft.io import safetensors
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
    loss = adapter(ids, labels=ids)
    loss.backward()
    grads = dict(zip(adapter.slots, (p.grad for p in adapter.biases)))
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
    from minipeft.training.state import make_optimizer
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
        h = model.hidden_states(ids[1:2, :12], bias_delta=adapter.model_kwargs(1)["bias_delta"])[0, -1]
        assert (adapter.classify(ids, mask)[1] - adapter.head(h)).abs().max() < 1e-5
    adapter.save(tmp_path / "h.safetensors")
    again = BitFit.load(model, tmp_path / "h.safetensors")
    assert torch.equal(again.classify(ids, mask), adapter.classify(ids, mask))
    assert sum(p.numel() for p in adapter.trainable_parameters()) == 2 * (32 + 128) + 32 * 3 + 3


@pytest.mark.parametrize("arch", ["gpt", "t5"])
def test_bf16_model_trains_and_generates_like_fp32(arch):
    from tests.methods_common import check_bf16_model, tiny_t5
    a32, a16 = check_bf16_model(lambda m: BitFit(m, n_classes=3), tiny_gpt() if arch == "gpt" else tiny_t5())
    assert all(p.dtype == torch.float32 for p in a16.trainable_parameters())  # the optimizer steps fp32 values
    ids = toy_batch(61, batch=4)
    c32, c16 = a32.classify(ids), a16.classify(ids)  # the bf16 hidden state goes into the fp32 head
    assert c16.dtype == torch.float32
    torch.testing.assert_close(c16, c32, rtol=5e-2, atol=5e-2)
    c16.sum().backward()
    assert a16.head.weight.grad.dtype == torch.float32 and bool(a16.head.weight.grad.isfinite().all())


def test_classify_reads_the_last_real_token_with_left_or_right_padding():
    adapter = nudge(BitFit(tiny_gpt(), "paper", n_classes=3))
    ids = toy_batch(61, batch=2)
    short = ids[0, :10]
    right = torch.stack([torch.cat([short, torch.zeros(6, dtype=torch.long)]), ids[1]])
    left = torch.stack([torch.cat([torch.zeros(6, dtype=torch.long), short]), ids[1]])
    mask_right, mask_left = torch.ones_like(ids), torch.ones_like(ids)
    mask_right[0, 10:] = 0
    mask_left[0, :6] = 0
    with torch.no_grad():
        alone = adapter.classify(short[None])[0]
        for batch, mask in ((right, mask_right), (left, mask_left)):
            assert (adapter.classify(batch, mask)[0] - alone).abs().max() < 1e-5
            assert (adapter.classify(batch, mask)[1] - adapter.classify(ids[1:])[0]).abs().max() < 1e-5
        mask_left[0] = 0
        with pytest.raises(MiniPeftError, match=r"attention_mask has rows \[0\] without any real token"):
            adapter.classify(left, mask_left)


def test_last_token_index_by_hand():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert last_token_index(torch.zeros(4, 5, dtype=torch.long), mask).tolist() == [2, 4, 2, 4]
    assert last_token_index(torch.zeros(2, 5, dtype=torch.long)).tolist() == [4, 4]
    with pytest.raises(MiniPeftError, match=r"attention_mask must have the shape of its ids \[4, 4\]"):
        last_token_index(torch.zeros(4, 4, dtype=torch.long), mask)
    with pytest.raises(MiniPeftError, match="input_ids is empty"):
        last_token_index(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0))


def test_bad_head_and_slot_arguments():
    model = tiny_gpt()
    for n_classes in (0, 1, -1, 2.0, True, "3"):
        with pytest.raises(MiniPeftError, match=rf"n_classes must be an int >= 2 .*got {n_classes!r}"):
            BitFit(model, n_classes=n_classes)
    one = BitFit(model, slots="ln_f.bias")  # a single name is one slot, not its characters
    assert one.slots == ["ln_f.bias"] and [p.shape for p in one.trainable_parameters()] == [(32,)]
    with pytest.raises(MiniPeftError, match=r"not bias slots of this model: \['ln_f'\]"):
        BitFit(model, slots="ln_f")
    with pytest.raises(MiniPeftError, match=r"given more than once: \['ln_f.bias'\]"):
        BitFit(model, slots=["ln_f.bias", "h.0.mlp.c_fc.bias", "ln_f.bias"])
    with pytest.raises(MiniPeftError, match="needs at least one bias slot"):
        BitFit(model, slots=[])


def _fingerprint_v1(model):
    """The fingerprint files written before the weight sample: four keys, the hash over the weights as stored."""
    import hashlib
    import json
    params = dict(model.named_parameters())
    h = hashlib.sha256()
    for name in sorted(params)[:: max(1, len(params) // 8)]:
        h.update(name.encode())
        h.update(params[name].detach().reshape(-1)[:256].float().numpy().tobytes())
    shapes = json.dumps({n: list(p.shape) for n, p in params.items()}, sort_keys=True).encode()
    return {"arch": model.arch, "n_parameters": sum(p.numel() for p in params.values()),
            "shapes_sha256": hashlib.sha256(shapes).hexdigest()[:16], "weights_sha256": h.hexdigest()[:16]}


def test_adapter_loads_onto_its_base_in_another_dtype_but_not_onto_other_weights(tmp_path):
    model = tiny_gpt()
    adapter = nudge(BitFit(model, "paper"))
    adapter.save(tmp_path / "a.safetensors")
    ids = toy_batch(61, batch=2)
    for dtype in (torch.bfloat16, torch.float16):
        again = BitFit.load(copy.deepcopy(model).to(dtype), tmp_path / "a.safetensors")
        assert all(torch.equal(a, b) for a, b in zip(again.biases, adapter.biases))
    with torch.no_grad():  # bf16: the same outputs up to bf16 rounding
        again = BitFit.load(copy.deepcopy(model).to(torch.bfloat16), tmp_path / "a.safetensors")
        torch.testing.assert_close(again(ids).float(), adapter(ids), rtol=0, atol=0.1)
    with pytest.raises(MiniPeftError, match="trained on a different base model .*load the base model it was trained on"):
        BitFit.load(tiny_gpt(seed=1).to(torch.bfloat16), tmp_path / "a.safetensors")
    near = copy.deepcopy(model)  # one tenth of a typical weight's size, everywhere: other weights
    with torch.no_grad():
        for p in near.parameters():
            p.add_(torch.randn_like(p) * 0.1 * p.std().clamp(min=1e-3))
    assert not same_base(fingerprint(near), fingerprint(model))
    assert same_base(fingerprint(copy.deepcopy(model).half()), fingerprint(model))  # what AdapterBank compares


def test_fingerprints_tell_weights_apart_exactly_in_every_dtype():
    """Same weights in fp32 / fp16 / bf16 (either way round): the same base. Weights 0.5% off, or two
    fresh models whose biases and norms are all 0 and 1 (only the matrices differ): not the same."""
    torch.manual_seed(0)
    fresh = GPT(GPTConfig.named("tiny"))
    torch.manual_seed(1)
    other_seed = GPT(GPTConfig.named("tiny"))
    scaled, noisy = copy.deepcopy(fresh), copy.deepcopy(fresh)
    with torch.no_grad():
        for p in scaled.parameters():
            p.mul_(1.005)
        noisy.wte.weight.add_(0.02 * torch.randn_like(noisy.wte.weight))  # only the embedding (the case)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    for saved in dtypes:
        for now in dtypes:
            f = fingerprint(copy.deepcopy(fresh).to(saved))
            assert same_base(f, fingerprint(copy.deepcopy(fresh).to(now))), (saved, now)
            assert not same_base(f, fingerprint(copy.deepcopy(other_seed).to(now))), (saved, now)
            assert not same_base(f, fingerprint(copy.deepcopy(scaled).to(now))), (saved, now)
            assert not same_base(f, fingerprint(copy.deepcopy(noisy).to(now))), (saved, now)


DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _as_in_a_file(f):
    import json
    return json.loads(json.dumps({k: v for k, v in f.items() if k != "sample"}))


@pytest.mark.parametrize("make", [tiny_gpt, tiny_t5], ids=["gpt", "t5"])
def test_a_change_to_any_one_tensor_is_refused_in_every_dtype_pair(make):
    """Every parameter in turn: the weight matrix 0.5% larger, or the bias / norm vector moved by 0.1,
    is another base model whichever dtypes the file and the model are in (nine pairs). One value of
    it moved by 0.1 is too wherever the two share a dtype or one is fp32 (the hash over every tensor,
    in the coarser dtype). The same weights in fp32, fp16 and bf16 are the same base in all nine."""
    model = make()
    saved = {d: _as_in_a_file(fingerprint(copy.deepcopy(model).to(d))) for d in DTYPES}
    now = {d: copy.deepcopy(model).to(d) for d in DTYPES}  # changed in place below, then restored
    for was in DTYPES:
        for d in DTYPES:
            assert same_base(saved[was], fingerprint(now[d])), (was, d)
    for name, p in model.named_parameters():
        whole, one = p.detach().clone(), p.detach().clone()
        whole.mul_(1.005) if p.dim() >= 2 else whole.add_(0.1)
        one.view(-1)[p.numel() // 2] += 0.1
        for changed, every_pair in ((whole, True), (one, False)):
            for d in DTYPES:
                with torch.no_grad():
                    now[d].get_parameter(name).copy_(changed)  # cast to d as .to(d) casts
                for was in DTYPES:
                    if every_pair or was == d or torch.float32 in (was, d):
                        assert not same_base(saved[was], fingerprint(now[d])), (name, was, d, every_pair)
                with torch.no_grad():
                    now[d].get_parameter(name).copy_(p)
    for was in DTYPES:
        for d in DTYPES:
            assert same_base(saved[was], fingerprint(now[d])), (was, d)  # restored: the same base again


def test_fingerprint_is_computed_once_per_model_until_a_weight_changes(monkeypatch):
    import minipeft.io.adapter_file as adapter_module
    computed = []
    compute = adapter_module._compute_fingerprint
    monkeypatch.setattr(adapter_module, "_compute_fingerprint", lambda *args: computed.append(1) or compute(*args))
    model = tiny_gpt()
    first = fingerprint(model)
    first["dtype"] = "changed by the caller"  # a copy: the cache keeps its own
    assert fingerprint(model)["dtype"] == "torch.float32" and len(computed) == 1
    first = fingerprint(model)
    w = model.h[1].mlp.c_fc.weight
    changes = [lambda: model.h[0].ln_1.bias.add_(0.1),                   # in place (torch counts it)
               lambda: setattr(w, "data", w.data * 1.005),               # a new tensor in the old one's place
               lambda: model.load_state_dict(tiny_gpt(seed=1).state_dict())]
    for n, change in enumerate(changes, start=2):
        with torch.no_grad():
            change()
        assert not same_base(first, fingerprint(model)) and len(computed) == n
        fingerprint(model)
        assert len(computed) == n
    model.load_state_dict(tiny_gpt().state_dict())
    assert same_base(first, fingerprint(model)) and len(computed) == 5
    model.to(torch.bfloat16)
    assert fingerprint(model)["dtype"] == "torch.bfloat16" and same_base(first, fingerprint(model)) and len(computed) == 6
    assert same_base(first, fingerprint(copy.deepcopy(model))) and len(computed) == 7  # another model object


def _saved_with_base(model, path, base):
    """A trained paper-BitFit adapter of model saved at path with `base` as its fingerprint; its tensors."""
    import json
    from minipeft.io import safetensors
    nudge(BitFit(model, "paper")).save(path)
    tensors, meta = safetensors.load(path)
    safetensors.save(path, tensors, {**meta, "base": json.dumps(base, sort_keys=True)})
    return tensors


def test_old_format_fingerprint_still_loads(tmp_path):
    model = tiny_gpt()
    path = tmp_path / "old.safetensors"
    tensors = _saved_with_base(model, path, _fingerprint_v1(model))
    loaded = BitFit.load(model, path)
    assert all(torch.equal(a, tensors[s]) for s, a in zip(loaded.slots, loaded.biases))
    with pytest.raises(MiniPeftError, match="or on this one in another dtype .*older minipeft.*torch.float32"):
        BitFit.load(copy.deepcopy(model).to(torch.bfloat16), path)
    for base in ([1, 2], {**_fingerprint_v1(model), "weights_sha256": "0" * 16, "sample": ["x"] * 72}, "null",
                 {**_fingerprint_v1(model), "weights_sha256": "0" * 16, "dtype": [1], "sample": [0.5] * 72}):
        assert not same_base(base, fingerprint(model))  # damaged: refused, never a crash


def _fingerprint_v2(model):
    """The fingerprint files written before the hash over every tensor: v1's, the dtype and a sample
    of 8 values spread over each of ~8 weight matrices."""
    params = dict(model.named_parameters())
    matrices = sorted(n for n, p in params.items() if p.dim() >= 2)
    sample = []
    for name in matrices[:: max(1, len(matrices) // 8)]:
        flat = params[name].detach().reshape(-1)
        sample += flat[torch.arange(8) * (flat.numel() - 1) // 7].float().tolist()
    return {**_fingerprint_v1(model), "dtype": str(next(iter(params.values())).dtype), "sample": sample}


def test_files_with_the_older_sample_still_load(tmp_path):
    """They compare as they did: the same model in the same dtype (or the sample within rounding in
    another) loads; another model is refused."""
    model = tiny_gpt()
    path = tmp_path / "v2.safetensors"
    tensors = _saved_with_base(model, path, _fingerprint_v2(model))
    loaded = BitFit.load(model, path)
    assert all(torch.equal(a, tensors[s]) for s, a in zip(loaded.slots, loaded.biases))
    BitFit.load(copy.deepcopy(model).to(torch.bfloat16), path)
    with pytest.raises(MiniPeftError, match="trained on a different base model"):
        BitFit.load(tiny_gpt(seed=1), path)


def test_damaged_fingerprints_are_refused_never_a_crash():
    model = tiny_gpt()
    f16, b16 = (_as_in_a_file(fingerprint(copy.deepcopy(model).to(d))) for d in (torch.float16, torch.bfloat16))
    current = fingerprint(copy.deepcopy(model).to(torch.bfloat16))
    assert same_base(f16, current)
    row = f16["tensor_stats"][0]
    for damage in ({"tensors_sha256": [1]}, {"dtype": [1]}, {"dtype": "torch.float64"},
                   {"tensor_stats": None}, {"tensor_stats": "x"}, {"tensor_stats": f16["tensor_stats"][1:]},
                   {"tensor_stats": [[row[0], "1", *row[2:]]] + f16["tensor_stats"][1:]},
                   {"tensor_stats": [[row[0] + 1, *row[1:]]] + f16["tensor_stats"][1:]},
                   {"tensor_stats": [row[:-1]] + f16["tensor_stats"][1:]},
                   {"tensor_stats": [[row[0], 10 ** 400, 10.0 ** 300, -1.0, float("nan")]] + f16["tensor_stats"][1:]},
                   {"tensor_stats": [[row[0], float("inf"), float("inf"), float("inf"), float("inf")]] + f16["tensor_stats"][1:]}):
        assert not same_base({**f16, **damage}, current), damage
    for hashes in ({"torch.bfloat16": "0" * 16}, {}, {"torch.float16": current["tensors_sha256"]["torch.bfloat16"]}):
        assert not same_base({**b16, "tensors_sha256": hashes}, current)  # the same dtype: the hash decides


# ---- BitFit trains the biases themselves: AdamW's weight decay as in transformers ---------------

HF_TINY = dict(vocab_size=61, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)


def _hf_gpt_and_ours(tmp_path):
    """A transformers GPT-2 with random non-zero biases and minipeft's load of the same weights, both fp64."""
    import transformers
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF_TINY)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    hf.save_pretrained(tmp_path)
    return hf.double(), GPT.from_pretrained(tmp_path).double()


def _hf_bias(hf, slot):
    """transformers' tensor for one minipeft bias slot (c_attn.bias is query, key and value in a row)."""
    C = HF_TINY["n_embd"]
    for i, role in enumerate(("query", "key", "value")):
        if slot.endswith(f"c_attn.bias_{role}"):
            return hf.get_parameter("transformer." + slot.removesuffix(f"_{role}"))[i * C:(i + 1) * C]
    return hf.get_parameter("transformer." + slot)


@pytest.mark.parametrize("terms", ["all", "paper"])
def test_training_with_weight_decay_equals_training_the_biases_in_transformers(tmp_path, terms):
    """20 AdamW steps (weight decay 0.1) of BitFit equal training the biases of a transformers GPT-2
    whose other weights are frozen: every step's loss and the final biases agree to 1e-9 (absolute).
    A delta trained from zero would decay towards the pretrained bias instead (up to 6e-3 off).
    "paper" in transformers: c_attn.bias and c_fc.bias train, and the key/value thirds of c_attn.bias
    are put back after every step (AdamW is elementwise, so the query third trains as if alone).
    fp64: AdamW divides each step by the gradient's own size, so the key bias, whose gradient is
    zero in theory, takes lr-sized steps on fp32 rounding noise (~2e-5 apart after 20 steps)."""
    import torch.nn.functional as F
    from minipeft.training.state import make_optimizer
    hf, ours = _hf_gpt_and_ours(tmp_path)
    adapter = BitFit(ours, terms).double()  # the own biases start as exact copies of the fp64 base
    trained = (".bias",) if terms == "all" else ("c_attn.bias", "c_fc.bias")
    for name, p in hf.named_parameters():
        p.requires_grad_(name.endswith(trained))
    C = HF_TINY["n_embd"]
    frozen_key_value = [block.attn.c_attn.bias[C:].detach().clone() for block in hf.transformer.h]
    opt_hf, opt = make_optimizer(hf, 1e-2, weight_decay=0.1), make_optimizer(adapter, 1e-2, weight_decay=0.1)
    for step in range(20):
        ids = torch.randint(0, HF_TINY["vocab_size"], (4, 16), generator=torch.Generator().manual_seed(step))
        logits = hf(ids).logits  # transformers' own loss casts the logits to fp32: the same loss, in fp64
        loss_hf = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss = adapter(ids, labels=ids)
        assert abs(loss.item() - loss_hf.item()) < 1e-9, step
        for o, lo in ((opt_hf, loss_hf), (opt, loss)):
            o.zero_grad()
            lo.backward()
            o.step()
        if terms == "paper":
            with torch.no_grad():
                for block, kv in zip(hf.transformer.h, frozen_key_value):
                    block.attn.c_attn.bias[C:] = kv
    merged = dict(adapter.merged().named_parameters())  # the trained biases, written into a copy of the model
    start = dict(ours.named_parameters())
    for slot in adapter.slots:
        assert (merged[slot] - start[slot]).abs().max() > 1e-3, slot  # it trained
        assert (merged[slot] - _hf_bias(hf, slot)).abs().max() < 1e-9, slot
    untrained = {s for s, _, _, _ in bias_slots(ours)} - set(adapter.slots)
    assert all(torch.equal(merged[s], _hf_bias(hf, s)) for s in untrained)  # terms="paper": the others never moved


@pytest.mark.parametrize("arch", ["gpt", "t5"])
def test_format_1_files_of_bias_deltas_still_load_as_base_plus_delta(tmp_path, arch):
    """minipeft before format 2 saved BitFit as deltas from the base biases (T5: from its absent, zero
    ones): such a file (built here by hand) loads as base + delta, with the outputs it gave then."""
    import json
    from minipeft.io import safetensors
    from tests.methods_common import tiny_t5, toy_seq2seq
    model = tiny_gpt() if arch == "gpt" else tiny_t5()
    new = BitFit(model, n_classes=3)
    new.save(tmp_path / "new.safetensors")
    tensors, meta = safetensors.load(tmp_path / "new.safetensors")
    assert meta["minipeft_format"] == "2" and all(torch.equal(tensors[s], b) for s, b in zip(new.slots, new.biases))
    g = torch.Generator().manual_seed(0)
    deltas = {s: torch.randn(b.shape, generator=g) * 0.1 for s, b in zip(new.slots, new.biases)}
    old = {**deltas, "head.weight": torch.randn(3, 32, generator=g), "head.bias": torch.randn(3, generator=g)}
    assert json.loads(meta["config"]) == {"slots": new.slots, "n_classes": 3}  # the settings format 1 wrote too
    safetensors.save(tmp_path / "old.safetensors", old, {**meta, "minipeft_format": "1"})
    loaded = BitFit.load(model, tmp_path / "old.safetensors")
    frozen = {s: getattr(m, attr) for s, m, attr, _ in bias_slots(model)}
    for s, b in zip(loaded.slots, loaded.biases):
        assert torch.equal(b, deltas[s] if frozen[s] is None else frozen[s] + deltas[s]), s
    inputs = (toy_batch(61, batch=3),) if arch == "gpt" else toy_seq2seq(61, batch=3)  # T5: encoder, decoder ids
    with torch.no_grad():  # what format 1's adapter computed: the model, its biases + the saved deltas
        then = model(*inputs, bias_delta=deltas)
        torch.testing.assert_close(loaded(*inputs), then, rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded.merged()(*inputs), then, rtol=0, atol=1e-6)
    assert torch.equal(loaded.head.weight, old["head.weight"])  # the head was always stored as itself
