"""GPT-2 core: parity with transformers, hooks against equivalent formulations, loading and saving."""

import inspect
import os

import pytest
import torch

from minipeft import GPT, GPTConfig, KVCache, MiniPeftError

import transformers  # noqa: E402  test oracle, installed by the dev extra

TINY = dict(vocab_size=97, n_positions=48, n_embd=32, n_layer=3, n_head=4)


@pytest.fixture(scope="module", params=["safetensors", "bin"])
def hf_pair(request, tmp_path_factory):
    """A random tiny GPT-2 saved by transformers itself, and minipeft's load of that folder."""
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**TINY)).eval()
    with torch.no_grad():  # non-zero biases and norm parameters, so every slot is exercised
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.normal_(0, 0.1)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    if request.param == "bin":  # transformers 5 writes only safetensors: write the .bin as older versions did
        os.remove(folder / "model.safetensors")
        state = dict(hf.state_dict())  # "transformer."-prefixed keys, and lm_head.weight (tied to wte)
        for i in range(TINY["n_layer"]):  # the causal-mask buffers older checkpoints carry
            state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(48, 48, dtype=torch.bool))[None, None]
        torch.save(state, folder / "pytorch_model.bin")
    return hf, GPT.from_pretrained(folder), folder


def test_checkpoint_files_written_by_transformers(hf_pair):
    _, _, folder = hf_pair
    names = os.listdir(folder)
    assert "config.json" in names and ("model.safetensors" in names) != ("pytorch_model.bin" in names)


def test_logits_match_transformers(hf_pair):
    hf, ours, _ = hf_pair
    ids = torch.randint(0, TINY["vocab_size"], (3, 17))
    with torch.no_grad():
        want = hf(ids).logits
        got = ours(ids)
    assert (got - want).abs().max() < 1e-5


def test_logits_match_transformers_with_padding_mask(hf_pair):
    hf, ours, _ = hf_pair
    ids = torch.randint(0, TINY["vocab_size"], (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0   # right padding
    mask[2, :5] = 0   # left padding: transformers needs the positions spelled out
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, mask)
    real = mask.bool()
    assert (got - want)[real].abs().max() < 1e-5
    assert torch.isfinite(got).all()  # padding rows stay finite (no empty softmax rows)
    with torch.no_grad():  # without position_ids transformers numbers every slot, the pads too: positions="plain"
        want = hf(ids, attention_mask=mask).logits
        got = ours(ids, mask, positions="plain")
    assert (got - want)[real].abs().max() < 1e-5


def test_plain_positions_match_transformers_with_unused_slots(hf_pair):
    """positions="plain" numbers every slot, also the unused ones of prompt_mask / prefix_mask: what
    transformers computes with the prompt as input embeddings, or the prefix as past keys/values, and
    the slot masks in front of attention_mask (no position_ids)."""
    hf, ours, _ = hf_pair
    cfg = ours.config
    ids = torch.randint(0, TINY["vocab_size"], (3, 8))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    mask[2, 6:] = 0  # right padding
    real = mask.bool()
    prompt, prompt_mask = torch.randn(3, 4, cfg.n_embd), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 1, 1]])
    prefix = [tuple(torch.randn(3, cfg.n_head, 3, cfg.head_dim) for _ in "kv") for _ in range(cfg.n_layer)]
    prefix_mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1]])
    cache_arg = "cache" if "cache" in inspect.signature(transformers.GPT2LMHeadModel.forward).parameters else "past_key_values"
    with torch.no_grad():
        want = hf(inputs_embeds=torch.cat([prompt, hf.transformer.wte(ids)], 1),
                  attention_mask=torch.cat([prompt_mask, mask], 1)).logits
        got = ours(ids, mask, prompt=prompt, prompt_mask=prompt_mask, positions="plain")
        assert (got - want[:, 4:])[real].abs().max() < 1e-5
        want = hf(ids, attention_mask=torch.cat([prefix_mask, mask], 1), use_cache=True,
                  **{cache_arg: transformers.DynamicCache(prefix)}).logits
        got = ours(ids, mask, prefix=prefix, prefix_mask=prefix_mask, positions="plain")
        assert (got - want)[real].abs().max() < 1e-5


def test_greedy_generation_matches_transformers(hf_pair):
    hf, ours, _ = hf_pair
    ids = torch.randint(0, TINY["vocab_size"], (2, 6))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    with torch.no_grad():
        want = hf.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0,
                           eos_token_id=None)
    got = ours.generate(ids, mask, max_new_tokens=20)
    assert torch.equal(got, want)


def test_loss_matches_transformers(hf_pair):
    hf, ours, _ = hf_pair
    ids = torch.randint(0, TINY["vocab_size"], (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100
    with torch.no_grad():
        want = hf(ids, labels=labels).loss
        got = ours(ids, labels=labels)
    assert abs(got.item() - want.item()) < 1e-5


def test_save_pretrained_round_trip_and_transformers_reads_it(hf_pair, tmp_path):
    hf, ours, _ = hf_pair
    ours.save_pretrained(tmp_path)
    again = GPT.from_pretrained(tmp_path)
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), again.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    hf2 = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, TINY["vocab_size"], (2, 9))
    with torch.no_grad():
        assert (hf2(ids).logits - hf(ids).logits).abs().max() == 0


@pytest.mark.parametrize("which", ["embd_pdrop", "attn_pdrop", "resid_pdrop", "all three"])
def test_each_dropout_is_read_and_applied_where_transformers_applies_it(tmp_path, which):
    """GPT-2 has three dropouts: embd_pdrop on token + position embeddings, attn_pdrop on the
    attention probabilities, resid_pdrop on each attention and MLP output. With one at a time (or
    all three, different) in training mode and the same seed, minipeft's logits equal transformers'
    (SDPA attention, as minipeft's): each is drawn at the same place, in the same order. They load
    from transformers' config.json and round-trip through save_pretrained."""
    rates = {"embd_pdrop": 0.3, "attn_pdrop": 0.2, "resid_pdrop": 0.1} if which == "all three" else {which: 0.25}
    rates = {"embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0, **rates}
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**TINY, **rates, attn_implementation="sdpa"))
    hf.save_pretrained(tmp_path / "hf")
    ours = GPT.from_pretrained(tmp_path / "hf")
    assert {d: getattr(ours.config, d) for d in rates} == rates
    ids = torch.randint(0, TINY["vocab_size"], (2, 11))
    with torch.no_grad():
        clean = ours(ids)
        hf.train(), ours.train()
        for seed in range(3):
            torch.manual_seed(seed)
            want = hf(ids).logits
            torch.manual_seed(seed)
            got = ours(ids)
            assert (got - want).abs().max() < 1e-5, seed
            assert (got - clean).abs().max() > 1e-2  # the dropout did act
    ours.save_pretrained(tmp_path / "ours")
    assert GPT.from_pretrained(tmp_path / "ours").config == ours.config
    again = transformers.GPT2Config.from_pretrained(tmp_path / "ours")
    assert {d: getattr(again, d) for d in rates} == rates


def test_dropout_sets_the_three_not_given():
    assert GPTConfig(dropout=0.1, attn_pdrop=0.0) == GPTConfig(embd_pdrop=0.1, attn_pdrop=0.0, resid_pdrop=0.1)
    assert (GPTConfig().embd_pdrop, GPTConfig().attn_pdrop, GPTConfig().resid_pdrop) == (0.0, 0.0, 0.0)
    with pytest.raises(MiniPeftError, match=r"attn_pdrop must be in \[0, 1\), got 1.5"):
        GPT(GPTConfig(**TINY, attn_pdrop=1.5))
    from minipeft.io.gpt2_checkpoint import config_from_hf
    absent = config_from_hf(dict(TINY), "config.json")  # transformers reads absent dropouts as its defaults
    assert [getattr(absent, d) for d in ("embd_pdrop", "attn_pdrop", "resid_pdrop")] == \
        [getattr(transformers.GPT2Config(), d) for d in ("embd_pdrop", "attn_pdrop", "resid_pdrop")]
    with pytest.raises(MiniPeftError, match="config.json: embd_pdrop must be in .*got None"):
        config_from_hf({**TINY, "embd_pdrop": None}, "config.json")


def test_single_safetensors_file_infers_config(tmp_path):
    cfg = GPTConfig(vocab_size=50, n_positions=16, n_embd=128, n_layer=2, n_head=2)  # n_head = 128 // 64
    model = GPT(cfg).eval()
    model.save_pretrained(tmp_path)
    loaded = GPT.from_pretrained(tmp_path / "model.safetensors")
    assert loaded.config == cfg
    ids = torch.randint(0, 50, (1, 8))
    assert torch.equal(loaded(ids), model(ids))


# ---- hooks --------------------------------------------------------------------------------------

def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, **kw})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name:
                p.normal_(0, 0.1)
    return model


def test_prefix_equals_real_tokens_as_keys_and_values():
    """A prefix holding the keys/values that P real tokens produce == running those tokens in front."""
    model = _tiny()
    head = torch.randint(0, TINY["vocab_size"], (2, 5))
    tail = torch.randint(0, TINY["vocab_size"], (2, 7))
    cache = KVCache(model.config.n_layer, 2, model.config.n_head, 5, model.config.head_dim)
    with torch.no_grad():
        model(head, cache=cache)
        prefix = [(cache.k[i], cache.v[i]) for i in range(model.config.n_layer)]
        want = model(torch.cat([head, tail], 1))[:, 5:]
        got = model(tail, prefix=prefix)
    assert (got - want).abs().max() < 1e-5


def test_prefix_with_padding_and_broadcast_batch():
    model = _tiny()
    head = torch.randint(0, TINY["vocab_size"], (1, 4))
    tail = torch.randint(0, TINY["vocab_size"], (2, 6))
    mask = torch.ones_like(tail)
    mask[1, 4:] = 0
    cache = KVCache(model.config.n_layer, 1, model.config.n_head, 4, model.config.head_dim)
    with torch.no_grad():
        model(head, cache=cache)
        prefix = [(cache.k[i], cache.v[i]) for i in range(model.config.n_layer)]  # batch 1, broadcast
        got = model(tail, mask, prefix=prefix)
        want = model(torch.cat([head.expand(2, -1), tail], 1), torch.cat([torch.ones(2, 4, dtype=torch.long), mask], 1))[:, 4:]
    assert (got - want)[mask.bool()].abs().max() < 1e-5


def test_prompt_of_token_embeddings_equals_those_tokens():
    model = _tiny()
    head = torch.randint(0, TINY["vocab_size"], (1, 4))
    tail = torch.randint(0, TINY["vocab_size"], (3, 6))
    with torch.no_grad():
        prompt = model.wte(head)  # [1, 4, C]
        got = model(tail, prompt=prompt)
        want = model(torch.cat([head.expand(3, -1), tail], 1))[:, 4:]
    assert got.shape == (3, 6, TINY["vocab_size"])  # aligned with input_ids, prompt slots dropped
    assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("hook", ["prefix", "prompt", "per-row prefix, masked, left padding"])
def test_generate_with_hooks_equals_full_recompute(hook):
    """Cached generation with a prefix (put in the cache first) or prompt == greedy argmax recomputed
    from scratch each step, where the prefix is attended to inside attention."""
    model = _tiny()
    ids = torch.randint(0, TINY["vocab_size"], (2, 5))
    mask = torch.ones_like(ids)
    kw = {}
    if hook == "prompt":
        kw["prompt"] = torch.randn(1, 3, TINY["n_embd"])
    elif hook == "prefix":
        kw["prefix"] = [(torch.randn(1, 4, 3, 8), torch.randn(1, 4, 3, 8)) for _ in range(TINY["n_layer"])]
    else:
        kw["prefix"] = [(torch.randn(2, 4, 3, 8), torch.randn(2, 4, 3, 8)) for _ in range(TINY["n_layer"])]
        kw["prefix_mask"] = torch.tensor([[1, 1, 1], [1, 0, 0]])  # row 1 uses 1 of 3 slots
        mask[1, :2] = 0                                            # and is left-padded
    got = model.generate(ids, mask, max_new_tokens=8, **kw)
    seq = ids
    with torch.no_grad():
        for _ in range(8):
            full_mask = torch.cat([mask, torch.ones(2, seq.shape[1] - ids.shape[1], dtype=torch.long)], 1)
            seq = torch.cat([seq, model(seq, full_mask, **kw)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(got, seq)


@pytest.mark.parametrize("hook", ["prompt", "per-row prefix, masked"])
def test_generate_with_plain_positions_equals_full_recompute(hook):
    """positions="plain" (every slot counts, pads included) in cached generation: the prompt pass
    and every step number the slots as the forward pass over the whole sequence does; the tokens
    differ from the default's (positions matter here), so the choice reaches every step."""
    model = _tiny()
    with torch.no_grad():
        model.wpe.weight.normal_(0, 1.0)
    ids = torch.randint(0, TINY["vocab_size"], (2, 5))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    if hook == "prompt":
        kw = dict(prompt=torch.randn(1, 3, TINY["n_embd"]))
    else:
        kw = dict(prefix=[(torch.randn(2, 4, 3, 8), torch.randn(2, 4, 3, 8)) for _ in range(TINY["n_layer"])],
                  prefix_mask=torch.tensor([[1, 1, 1], [1, 0, 0]]))
    got = model.generate(ids, mask, max_new_tokens=8, positions="plain", **kw)
    seq = ids
    with torch.no_grad():
        for _ in range(8):
            full_mask = torch.cat([mask, torch.ones(2, seq.shape[1] - ids.shape[1], dtype=torch.long)], 1)
            seq = torch.cat([seq, model(seq, full_mask, positions="plain", **kw)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(got, seq)
    assert not torch.equal(got[1], model.generate(ids, mask, max_new_tokens=8, **kw)[1])


def test_cache_started_with_a_prefix_equals_attending_to_it():
    """KVCache.start_with (what generate does with a prefix): same logits as prefix= in attention,
    with a per-row prefix_mask and left padding, for the prompt pass and a cached step after it."""
    model = _tiny()
    cfg = model.config
    with torch.no_grad():
        model.wpe.weight.normal_(0, 1.0)  # positions must matter: a prefix moves them up by its valid slots
    ids = torch.randint(0, TINY["vocab_size"], (2, 5))
    nxt = torch.randint(0, TINY["vocab_size"], (2, 1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    prefix = [(torch.randn(2, 4, 3, 8), torch.randn(2, 4, 3, 8)) for _ in range(cfg.n_layer)]
    prefix_mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    cache = KVCache(cfg.n_layer, 2, cfg.n_head, 3 + 6, cfg.head_dim)
    cache.start_with(prefix, prefix_mask)
    with torch.no_grad():
        got = model(ids, mask, cache=cache), model(nxt, cache=cache)
        both = torch.cat([ids, nxt], 1)
        want = model(both, torch.cat([mask, torch.ones_like(nxt)], 1), prefix=prefix, prefix_mask=prefix_mask)
    real = mask.bool()
    torch.testing.assert_close(got[0][real], want[:, :5][real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[:, 5:], rtol=1e-5, atol=1e-5)
    with pytest.raises(MiniPeftError, match="start_with needs an empty cache"):
        cache.start_with(prefix, prefix_mask)
    fresh = lambda: KVCache(cfg.n_layer, 2, cfg.n_head, 9, cfg.head_dim)  # noqa: E731
    with pytest.raises(MiniPeftError, match=r"one \(key, value\) pair per layer \(3\)"):
        fresh().start_with(prefix[:1], prefix_mask)
    with pytest.raises(MiniPeftError, match=r"prefix\[0\] key must have shape \['2 or 1', 4, 3, 8\] "
                                            r"with at least one slot; got \[3, 4, 3, 8\]"):
        fresh().start_with([(torch.zeros(3, 4, 3, 8),) * 2] * cfg.n_layer)  # batch 3 in a batch-2 cache
    with pytest.raises(MiniPeftError, match=r"prefix_mask must have shape \[2 or 1, 3\]; got \[1, 1\]"):
        fresh().start_with(prefix, torch.ones(1, 1))


def test_generate_refuses_to_run_past_the_context():
    model = _tiny()
    ids = torch.randint(0, TINY["vocab_size"], (1, 40))
    with pytest.raises(MiniPeftError, match="exceeds the context of 48"):
        model.generate(ids, max_new_tokens=5, prompt=torch.zeros(1, 4, TINY["n_embd"]))


def test_sampling_is_reproducible_and_top_k_restricts():
    model = _tiny()
    ids = torch.randint(0, TINY["vocab_size"], (2, 3))
    a = model.generate(ids, max_new_tokens=10, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    b = model.generate(ids, max_new_tokens=10, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    one = model.generate(ids, max_new_tokens=10, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(4))
    assert torch.equal(one, model.generate(ids, max_new_tokens=10))  # top-1 sampling is greedy


def test_eos_stops_rows():
    model = _tiny()
    ids = torch.randint(0, TINY["vocab_size"], (3, 4))
    greedy = model.generate(ids, max_new_tokens=8)[:, 4:]
    eos = int(greedy[0, 1])
    out = model.generate(ids, max_new_tokens=8, eos_token_id=eos)[:, 4:]
    stops = [int((row == eos).nonzero()[0]) + 1 if (row == eos).any() else 8 for row in greedy]
    assert out.shape[1] == max(stops)  # the loop ends once every row has finished
    for row, want, stop in zip(out, greedy, stops):
        assert torch.equal(row[:stop], want[:stop])   # same tokens up to and including eos
        assert (row[stop:] == eos).all()              # then eos padding


# ---- bias slots ---------------------------------------------------------------------------------

def test_bias_slots_are_separate_parameters():
    model = _tiny()
    names = {n for n, _ in model.named_parameters()}
    for part in ("query", "key", "value"):
        assert f"h.0.attn.c_attn.bias_{part}" in names
    assert "h.0.attn.c_attn.bias" not in names
    assert {"h.0.attn.c_proj.bias", "h.0.mlp.c_fc.bias", "h.0.mlp.c_proj.bias", "h.0.ln_1.bias", "ln_f.bias"} <= names


def test_gpt2_small_counts():
    from minipeft.models.layers import bias_slots
    model = GPT(GPTConfig.named("gpt2"))
    total = model.num_parameters()
    biases = sum(getattr(m, a).numel() for _, m, a, _ in bias_slots(model))
    assert (biases, total) == (102_144, 124_439_808)


# ---- hooks for many tasks at once ---------------------------------------------------------------

def _kv_of(model, ids):
    """Every layer's keys/values of `ids` [B, T] (from the model's own cache)."""
    cfg = model.config
    cache = KVCache(cfg.n_layer, ids.shape[0], cfg.n_head, ids.shape[1], cfg.head_dim)
    with torch.no_grad():
        model(ids, cache=cache)
    return [(cache.k[i], cache.v[i]) for i in range(cfg.n_layer)]


def test_infix_equals_real_tokens_in_the_middle():
    """infix_at=len(x): the slots sit between x and y, i.e. [x; INFIX; y]."""
    model = _tiny()
    x, z, y = (torch.randint(0, TINY["vocab_size"], (2, n)) for n in (4, 3, 5))
    xz = _kv_of(model, torch.cat([x, z], 1))
    infix = [(k[:, :, 4:], v[:, :, 4:]) for k, v in xz]  # keys/values of z, computed after x
    with torch.no_grad():
        want = model(torch.cat([x, z, y], 1))
        got = model(torch.cat([x, y], 1), prefix=infix, infix_at=torch.full((2,), 4))
    assert (got[:, :4] - want[:, :4]).abs().max() < 1e-5   # x does not see the infix
    assert (got[:, 4:] - want[:, 7:]).abs().max() < 1e-5   # y does, and sits 3 positions later


def test_prefix_mask_equals_shorter_prefix():
    model = _tiny()
    ids = torch.randint(0, TINY["vocab_size"], (2, 6))
    full = [(torch.randn(1, 4, 5, 8), torch.randn(1, 4, 5, 8)) for _ in range(TINY["n_layer"])]
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # row 1 uses only the last 3 slots
    with torch.no_grad():
        got = model(ids, prefix=full, prefix_mask=mask)
        row0 = model(ids[:1], prefix=full)
        row1 = model(ids[1:], prefix=[(k[:, :, 2:], v[:, :, 2:]) for k, v in full])
    assert (got[0] - row0[0]).abs().max() < 1e-5
    assert (got[1] - row1[0]).abs().max() < 1e-5


def test_prompt_mask_equals_shorter_prompt():
    model = _tiny()
    ids = torch.randint(0, TINY["vocab_size"], (2, 6))
    prompt = torch.randn(2, 4, TINY["n_embd"])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 1]])
    with torch.no_grad():
        got = model(ids, prompt=prompt, prompt_mask=mask)
        row1 = model(ids[1:], prompt=prompt[1:, 3:])
    assert (got[1] - row1[0]).abs().max() < 1e-5


def test_bias_delta_equals_editing_the_biases_and_works_per_row():
    model = _tiny()
    ids = torch.randint(0, TINY["vocab_size"], (2, 6))
    names = ["h.0.attn.c_attn.bias_query", "h.1.mlp.c_fc.bias", "h.2.ln_2.bias"]
    params = dict(model.named_parameters())
    deltas = [{n: torch.randn_like(params[n]) for n in names} for _ in range(2)]
    with torch.no_grad():
        per_row = model(ids, bias_delta={n: torch.stack([deltas[0][n], deltas[1][n]]) for n in names})
        for row in range(2):
            shared = model(ids[row:row + 1], bias_delta=deltas[row])
            for n in names:
                params[n] += deltas[row][n]
            edited = model(ids[row:row + 1])
            for n in names:
                params[n] -= deltas[row][n]
            assert (shared - edited).abs().max() < 1e-5
            assert (per_row[row] - edited[0]).abs().max() < 1e-5
    assert all(m.delta == {} for m in model.modules() if hasattr(m, "delta"))  # nothing left behind


def test_bad_hook_inputs_are_refused_before_computing():
    model = _tiny()
    ids = torch.randint(0, TINY["vocab_size"], (2, 6))
    with pytest.raises(MiniPeftError, match=r"prompt must have shape \['2 or 1', 'any', 32\]"):
        model(ids, prompt=torch.zeros(2, 3, 31))
    with pytest.raises(MiniPeftError, match="one \\(key, value\\) pair per layer \\(3\\)"):
        model(ids, prefix=[(torch.zeros(1, 4, 2, 8),) * 2])
    with pytest.raises(MiniPeftError, match="token ids must be in \\[0, 97\\)"):
        model(ids + 97)
    with pytest.raises(MiniPeftError, match="attention_mask must have the shape"):
        model(ids, torch.ones(2, 5))
    with pytest.raises(MiniPeftError, match="attention_mask must hold only 1 .* and 0 .* got -inf"):  # an additive mask
        model(ids, torch.zeros(2, 6).masked_fill(ids > 50, float("-inf")))
    with pytest.raises(MiniPeftError, match=r"attention_mask has rows \[0, 1\] without any real token"):  # an additive mask without padding
        model(ids, torch.zeros(2, 6))
    with pytest.raises(MiniPeftError, match="not a bias slot"):
        model(ids, bias_delta={"h.0.attn.c_attn.weight": torch.zeros(96)})
    with pytest.raises(MiniPeftError, match=r"bias_delta 'h.0.attn.c_attn.bias_query' must be \[32\] or \[2, 32\]; got \[3, 32\]"):
        model(ids, bias_delta={"h.0.attn.c_attn.bias_query": torch.zeros(3, 32)})
    with pytest.raises(MiniPeftError, match="bias_delta 'ln_f.bias' is torch.float64 on cpu; the model is torch.float32"):
        model(ids, bias_delta={"ln_f.bias": torch.zeros(32, dtype=torch.float64)})
    for bad, match in ((dict(max_new_tokens=-1), "max_new_tokens must be a non-negative integer, got -1"),
                       (dict(max_new_tokens=2.0), "max_new_tokens must be a non-negative integer, got 2.0"),
                       (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
                       (dict(temperature=float("inf")), "temperature must be a finite number >= 0"),
                       (dict(max_new_tokens=True), "max_new_tokens must be a non-negative integer"),
                       (dict(temperature=1.0, top_k=0), "top_k must be None or an integer >= 1"),
                       (dict(eos_token_id=-1), "eos_token_id must be None or a token id")):
        with pytest.raises(MiniPeftError, match=match):
            model.generate(ids, **bad)
    with pytest.raises(MiniPeftError, match="prefix_mask must have shape"):
        model(ids, prefix=[(torch.zeros(1, 4, 2, 8),) * 2] * 3, prefix_mask=torch.ones(2, 3))
    for bad in (torch.ones(1, 1), torch.ones(2, 1), torch.ones(2), torch.ones(3, 2)):  # generate checks it too
        with pytest.raises(MiniPeftError, match="prefix_mask must have shape"):
            model.generate(ids, prefix=[(torch.zeros(1, 4, 2, 8),) * 2] * 3, prefix_mask=bad)


def test_too_long_for_the_context_counts_prefix_and_prompt():
    model = _tiny()
    ids = torch.randint(0, TINY["vocab_size"], (1, 45))
    prefix = [(torch.zeros(1, 4, 2, 8), torch.zeros(1, 4, 2, 8))] * 3
    model(ids)  # 45 tokens fit in 48
    with pytest.raises(MiniPeftError, match="needs position 48 but the context is 48 \\(prefix 2 \\+ prompt 2"):
        model(ids, prefix=prefix, prompt=torch.zeros(1, 2, 32))


def test_generate_takes_numpy_and_0d_torch_numbers():
    import numpy as np
    model = _tiny()
    ids = torch.randint(0, TINY["vocab_size"], (2, 5))
    want = model.generate(ids, max_new_tokens=4, temperature=0.7, top_k=5, generator=torch.Generator().manual_seed(1))
    got = model.generate(ids, max_new_tokens=torch.tensor(4), temperature=np.float32(0.7), top_k=np.int64(5),
                         generator=torch.Generator().manual_seed(1))
    assert torch.equal(want, got)
