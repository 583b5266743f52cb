"""T5 core: parity with transformers, hooks against equivalent formulations, loading and saving, tokenizer."""

import inspect
import json
import os

import pytest
import torch
import torch.nn as nn

from minipeft import MiniPeftError
from minipeft.io import safetensors
from minipeft.models.layers import KVCache, bias_slots
from minipeft.models.t5 import T5, T5Config, relative_position_bucket, shift_right

import transformers  # noqa: E402  test oracle, installed by the dev extra
from transformers import DynamicCache, EncoderDecoderCache  # noqa: E402

# original T5 (ReLU, tied head) and v1.1 / FLAN (gated GELU, untied head, heads * d_kv != d_model,
# more decoder than encoder layers); few buckets and short max distances so that 20-token inputs
# reach the log-spaced buckets and the clamp
HF_CONFIGS = {
    "orig": dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="relu"),
    "v11": dict(vocab_size=64, d_model=32, d_kv=6, d_ff=40, num_layers=2, num_decoder_layers=3, num_heads=3,
                relative_attention_num_buckets=16, relative_attention_max_distance=24, feed_forward_proj="gated-gelu",
                tie_word_embeddings=False),
}
V = 64
STRAY = "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"
# transformers 5 renamed past_key_values to cache (the old name still works, with a warning)
CACHE_ARG = "cache" if "cache" in inspect.signature(transformers.T5ForConditionalGeneration.forward).parameters else "past_key_values"


pytestmark = pytest.mark.usefixtures("one_thread")


def random_hf(kind, seed=0, **overrides):
    """A random tiny transformers T5; the parts its init leaves at 1 or small get perturbed."""
    torch.manual_seed(seed)
    cfg = transformers.T5Config(dropout_rate=0.0, decoder_start_token_id=0, **{**HF_CONFIGS[kind], **overrides})
    hf = transformers.T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "layer_norm" in name:
                p.normal_(1.0, 0.3)                     # init: all ones
            elif "relative_attention_bias" in name:
                p.normal_(0.0, 1.0)                     # init std d_model**-0.5: make positions matter
        if not cfg.scale_decoder_outputs:               # transformers >= 5 ties every head at init: untie it
            hf.lm_head.weight = nn.Parameter(torch.randn(V, cfg.d_model) * 0.5)
            hf.config.tie_word_embeddings = False
    return hf


@pytest.fixture(scope="module", params=[("orig", "safetensors"), ("orig", "bin"), ("v11", "safetensors"), ("v11", "bin")],
                ids=lambda p: "-".join(p))
def hf_pair(request, tmp_path_factory):
    """(kind, transformers model, minipeft's load of the folder transformers saved, folder)."""
    kind, fmt = request.param
    hf = random_hf(kind)
    folder = tmp_path_factory.mktemp(f"{kind}-{fmt}")
    hf.save_pretrained(folder)
    if fmt == "bin":  # the legacy layout: every alias of the embedding (and a tied head) spelled out, plus the stray key
        state = dict(hf.state_dict())
        state[STRAY] = torch.randn(hf.config.relative_attention_num_buckets, hf.config.num_heads)
        os.remove(folder / "model.safetensors")
        torch.save(state, folder / "pytorch_model.bin")
    return kind, hf, T5.from_pretrained(folder), folder


def hf_generate(hf, ids, mask, **kw):
    # transformers sizes its default cache by the encoder's layer count: give it one that grows
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    return hf.generate(ids, attention_mask=mask, do_sample=False, decoder_start_token_id=0, **{CACHE_ARG: cache}, **kw)


def padded_batch(T=20):
    ids = torch.randint(3, V, (3, T))
    mask = torch.ones_like(ids)
    mask[1, T - 5:] = 0  # right padding
    mask[2, :4] = 0      # left padding (T5 has no absolute positions: either side works)
    return ids, mask


def test_checkpoint_files(hf_pair):
    kind, _, ours, folder = hf_pair
    names = os.listdir(folder)
    assert "config.json" in names and ("model.safetensors" in names or "pytorch_model.bin" in names)
    assert (ours.lm_head is None) == (kind == "orig")
    assert ours.config.num_decoder_layers == (3 if kind == "v11" else 2)


def test_logits_match_transformers_with_padding(hf_pair):
    _, hf, ours, _ = hf_pair
    ids, mask = padded_batch()
    dec = torch.randint(0, V, (3, 24))
    dec_mask = torch.ones_like(dec)
    dec_mask[0, 18:] = 0
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask).logits
        got = ours(ids, dec, mask, decoder_attention_mask=dec_mask)
    assert got.shape == (3, 24, V)
    assert (got - want)[dec_mask.bool()].abs().max() < 1e-5
    assert torch.isfinite(got).all()  # padding rows stay finite


def test_loss_and_shift_right_match_transformers(hf_pair):
    _, hf, ours, _ = hf_pair
    ids, mask = padded_batch(12)
    labels = torch.randint(0, V, (3, 9))
    labels[0, 6:] = -100
    labels[2, 3:] = -100
    assert torch.equal(shift_right(labels), hf._shift_right(labels))
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, labels=labels)
        logits, loss = ours(ids, shift_right(labels), mask), ours(ids, attention_mask=mask, labels=labels)
    assert (logits - want.logits).abs().max() < 1e-5
    torch.testing.assert_close(loss, want.loss, rtol=1e-6, atol=1e-6)  # summed in another order: fp32 rounding


def test_greedy_generation_matches_transformers(hf_pair):
    _, hf, ours, _ = hf_pair
    ids, mask = padded_batch(10)
    want = hf_generate(hf, ids, mask, max_new_tokens=20, eos_token_id=None)
    got = ours.generate(ids, mask, max_new_tokens=20, eos_token_id=None)
    assert got.shape == (3, 21) and (got[:, 0] == 0).all()  # the start token, then 20 new tokens
    assert torch.equal(got, want)


def test_eos_stop_matches_transformers(hf_pair):
    """Rows stop at eos and are padded with it (transformers pads with pad_token_id: make it eos)."""
    _, hf, ours, _ = hf_pair
    ids, mask = padded_batch(10)
    greedy = ours.generate(ids, mask, max_new_tokens=12, eos_token_id=None)
    eos = int(greedy[0, 3])
    want = hf_generate(hf, ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=eos)
    got = ours.generate(ids, mask, max_new_tokens=12, eos_token_id=eos)
    assert got.shape[1] <= 13 and torch.equal(got, want)


def test_save_pretrained_round_trip_and_transformers_reads_it(hf_pair, tmp_path):
    _, hf, ours, _ = hf_pair
    ours.save_pretrained(tmp_path)
    _, metadata = safetensors.load(tmp_path / "model.safetensors")
    assert metadata == {"format": "pt"} and json.loads((tmp_path / "config.json").read_text())["model_type"] == "t5"
    again = T5.from_pretrained(tmp_path)
    assert again.config == ours.config
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), again.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    hf2 = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids, mask = padded_batch(9)
    dec = torch.randint(0, V, (3, 7))
    with torch.no_grad():
        assert torch.equal(hf2(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits,
                           hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits)


def test_v11_head_left_out_by_transformers_5(tmp_path):
    """transformers >= 5 saves a fresh v1.1 model with its head tied (no lm_head.weight, scale_decoder_outputs false)."""
    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(dropout_rate=0.0, **HF_CONFIGS["v11"])).eval()
    hf.save_pretrained(tmp_path)
    ours = T5.from_pretrained(tmp_path)
    assert not ours.config.tie_word_embeddings and torch.equal(ours.lm_head.weight, ours.shared.weight)
    ids, dec = torch.randint(0, V, (2, 8)), torch.randint(0, V, (2, 5))
    with torch.no_grad():
        assert (ours(ids, dec) - hf(input_ids=ids, decoder_input_ids=dec).logits).abs().max() < 1e-5


def test_relative_position_buckets_match_transformers():
    rp = torch.arange(-300, 300)[None, :]
    for bidirectional in (True, False):
        for nb, md in ((32, 128), (8, 16), (16, 24)):
            want = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(rp, bidirectional, nb, md)
            assert torch.equal(relative_position_bucket(rp, bidirectional, nb, md), want)


# ---- loader errors ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_v11(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    random_hf("v11").save_pretrained(folder)
    return folder


def _variant(src, dst, edit_state=None, edit_config=None):
    state, _ = safetensors.load(src / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    if edit_state:
        edit_state(state)
    if edit_config:
        edit_config(config)
    os.makedirs(dst, exist_ok=True)
    safetensors.save(dst / "model.safetensors", state)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("edit_state, edit_config, match", [
    (lambda s: s.pop("decoder.block.2.layer.1.EncDecAttention.v.weight"), None, "missing key.*decoder.block.2.layer.1.EncDecAttention.v.weight"),
    (lambda s: s.update({"encoder.block.0.layer.9.foo.weight": torch.zeros(2)}), None, "unexpected key.*encoder.block.0.layer.9.foo.weight"),
    (lambda s: s.update({"encoder.block.1.layer.0.SelfAttention.q.weight": torch.zeros(18, 31)}), None,
     r"encoder.block.1.layer.0.SelfAttention.q.weight has shape \[18, 31\]; expected \[18, 32\]"),
    (lambda s: s.update({"encoder.embed_tokens.weight": s["shared.weight"] + 1}), None, "encoder.embed_tokens.weight differs from shared.weight"),
    (lambda s: s.pop("shared.weight"), None, "missing key.*shared.weight"),
    (lambda s: s.update({"encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": torch.zeros(16, 4)}), None,
     "relative_attention_bias.weight has shape"),
    (lambda s: s.update({"decoder.block.0.layer.1.EncDecAttention.q.weight": s["decoder.block.0.layer.1.EncDecAttention.q.weight"].long()}), None,
     "EncDecAttention.q.weight has dtype torch.int64"),
    (None, lambda c: c.update(num_heads=0), "num_heads must be an integer >= 1, got 0"),
    (None, lambda c: c.pop("d_kv"), "config is missing 'd_kv'"),
    (None, lambda c: c.update(feed_forward_proj="gated-silu"), "feed_forward_proj 'gated-silu' is not supported"),
    (None, lambda c: c.update(model_type="bart"), "model_type is 'bart'"),
    (None, lambda c: c.update(layer_norm_epsilon="tiny"), "layer_norm_eps must be a small positive number"),
    (None, lambda c: c.update(relative_attention_max_distance=2), "relative_attention_max_distance"),
    (None, lambda c: c.update(decoder_start_token_id=5), "decoder_start_token_id is 5"),
    (None, lambda c: c.update(scale_decoder_outputs=True, tie_word_embeddings=True), "lm_head.weight differs from shared.weight"),
])
def test_loader_errors_name_the_key_or_field(saved_v11, tmp_path, edit_state, edit_config, match):
    folder = _variant(saved_v11, tmp_path / "bad", edit_state, edit_config)
    with pytest.raises(MiniPeftError, match=match):
        T5.from_pretrained(folder)


def test_loader_refuses_a_file_and_an_empty_folder(saved_v11, tmp_path):
    with pytest.raises(MiniPeftError, match="is not a folder"):
        T5.from_pretrained(saved_v11 / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(MiniPeftError, match="no weights found"):
        T5.from_pretrained(tmp_path)


# ---- sizes and config ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, count", [("t5-small", 60_506_624), ("t5-base", 222_903_552), ("google/flan-t5-small", 76_961_152),
                                         ("google/t5-v1_1-base", 247_577_856), ("flan-t5-large", 783_150_080)])
def test_named_sizes_have_the_published_parameter_counts(name, count):
    with torch.device("meta"):  # shapes only, nothing allocated
        model = T5(T5Config.named(name))
    assert model.num_parameters() == count


def test_config_validation():
    with pytest.raises(MiniPeftError, match="unknown T5 size 't5-huge'"):
        T5Config.named("t5-huge")
    with pytest.raises(MiniPeftError, match="feed_forward must be one of"):
        T5(T5Config.named("tiny", feed_forward="swiglu"))
    cfg = T5Config.named("tiny", num_decoder_layers=3, d_kv=5)
    assert cfg.num_decoder_layers == 3 and cfg.inner_dim == 20 and T5Config.named("tiny").num_decoder_layers == 2


# ---- bias slots ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["orig", "v11"])
def test_bias_slots_start_absent_and_zero_ones_are_bit_identical(kind, tmp_path):
    random_hf(kind).save_pretrained(tmp_path)
    model = T5.from_pretrained(tmp_path)
    slots = bias_slots(model)
    assert all(getattr(m, a) is None for _, m, a, _ in slots)
    assert {r for *_, r in slots} == {"query", "key", "value", "attn_out", "mlp_in", "mlp_out", "norm"}
    cfg = model.config
    n_mlp = 3 if cfg.feed_forward == "gated-gelu" else 2
    per_enc, per_dec = 4 + n_mlp + 2, 8 + n_mlp + 3  # projections + norms
    assert len(slots) == cfg.num_layers * per_enc + cfg.num_decoder_layers * per_dec + 2
    assert "decoder.blocks.0.cross.q.bias" in {n for n, *_ in slots}
    ids, mask = padded_batch(10)
    dec = torch.randint(0, V, (3, 6))
    with torch.no_grad():
        before = model(ids, dec, mask)
        for _, module, _, role in slots:
            module.enable_bias(role)
        after = model(ids, dec, mask)
    assert all(getattr(m, a) is not None for _, m, a, _ in slots)
    assert torch.equal(before, after)


def test_enabled_biases_save_load_and_match_bias_delta(tmp_path):
    torch.manual_seed(0)
    model = T5(T5Config.named("tiny", tie_word_embeddings=False, feed_forward="gated-gelu")).eval()
    ids, dec = torch.randint(0, 128, (2, 7)), torch.randint(0, 128, (2, 5))
    deltas = {"encoder.blocks.1.mlp.wi_1.bias": torch.randn(64), "decoder.blocks.0.cross.v.bias": torch.randn(32),
              "decoder.final_norm.bias": torch.randn(32)}
    with torch.no_grad():
        base = model(ids, dec)
        via_delta = model(ids, dec, bias_delta=deltas)
        for name, d in deltas.items():
            module = model.get_submodule(name.rsplit(".", 1)[0])
            module.enable_bias()
            module.bias.copy_(d)
        assert torch.allclose(model(ids, dec), via_delta, atol=1e-6)
        assert not torch.allclose(via_delta, base, atol=1e-3)
    model.save_pretrained(tmp_path)
    state, _ = safetensors.load(tmp_path / "model.safetensors")
    assert {k for k in state if k.endswith(".bias")} == {"encoder.block.1.layer.1.DenseReluDense.wi_1.bias",
                                                        "decoder.block.0.layer.1.EncDecAttention.v.bias", "decoder.final_layer_norm.bias"}
    again = T5.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(again(ids, dec), model(ids, dec))


# ---- hooks --------------------------------------------------------------------------------------

def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = T5Config.named("tiny", vocab_size=V, num_decoder_layers=3, d_kv=6, num_heads=3, **kw)
    model = T5(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
            elif "relative_attention_bias" in name:
                p.normal_(0.0, 1.0)
    return model


def _kv(model, B, P, n_layer, seed=1):
    g = torch.Generator().manual_seed(seed)
    H, D = model.config.num_heads, model.config.d_kv
    return [(torch.randn(B, H, P, D, generator=g), torch.randn(B, H, P, D, generator=g)) for _ in range(n_layer)]


def test_prompt_of_token_embeddings_equals_those_tokens():
    model = _tiny()
    head = torch.randint(3, V, (1, 4))
    tail, mask = padded_batch(12)
    dec = torch.randint(0, V, (3, 6))
    with torch.no_grad():
        got = model(tail, dec, mask, prompt=model.shared(head))  # [1, 4, d] broadcast over the batch
        want = model(torch.cat([head.expand(3, -1), tail], 1), dec, torch.cat([torch.ones(3, 4, dtype=torch.long), mask], 1))
        hidden, enc_mask = model.encode(tail, mask, prompt=model.shared(head))
    assert got.shape == (3, 6, V)  # decoder output unaffected by the prompt
    assert (got - want).abs().max() < 1e-5
    assert hidden.shape == (3, 16, model.config.d_model) and enc_mask[:, :4].all()


@pytest.mark.parametrize("kind", ["orig", "v11"])
def test_decoder_prefix_matches_transformers_past_key_values(kind, tmp_path):
    """A decoder self-attention prefix == the same keys/values given to transformers as past key/values
    (what peft's prefix tuning does): prefix slots at positions 0..P-1, decoder tokens from P on."""
    hf = random_hf(kind)
    hf.save_pretrained(tmp_path)
    ours = T5.from_pretrained(tmp_path)
    ids, mask = padded_batch(10)
    dec = torch.randint(0, V, (3, 9))
    prefix = _kv(ours, 1, 5, ours.config.num_decoder_layers)
    past = EncoderDecoderCache(DynamicCache([(k.expand(3, -1, -1, -1), v.expand(3, -1, -1, -1)) for k, v in prefix]), DynamicCache())
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=True, **{CACHE_ARG: past}).logits
        got = ours(ids, dec, mask, prefix={"decoder": prefix})
    assert (got - want).abs().max() < 1e-5


def test_decoder_prefix_equals_real_decoder_tokens():
    """Keys/values of real decoder tokens as a prefix == those tokens in front (the decoder is causal)."""
    model = _tiny()
    ids, mask = padded_batch(10)
    head, tail = torch.randint(0, V, (3, 4)), torch.randint(0, V, (3, 7))
    cfg = model.config
    cache = KVCache(cfg.num_decoder_layers, 3, cfg.num_heads, 4, cfg.d_kv)
    with torch.no_grad():
        model(ids, head, mask, cache=cache)
        prefix = {"decoder": [(cache.k[i], cache.v[i]) for i in range(cfg.num_decoder_layers)]}
        got = model(ids, tail, mask, prefix=prefix)
        want = model(ids, torch.cat([head, tail], 1), mask)[:, 4:]
    assert (got - want).abs().max() < 1e-5


def test_encoder_and_cross_prefix_equal_real_tokens():
    """With a one-layer encoder the keys/values of real tokens do not depend on what follows, so
    prefix['encoder'] = their keys/values reproduces the encoder output of the tokens after them
    (prefix slots at 0..P-1, tokens from P: the documented rule), and prefix['cross'] = the decoder's
    keys/values of the head's encoder output makes the decoder see exactly what it saw before."""
    model = _tiny(num_layers=1)
    head = torch.randint(3, V, (1, 5))
    tail, mask = padded_batch(14)
    full_ids = torch.cat([head.expand(3, -1), tail], 1)
    full_mask = torch.cat([torch.ones(3, 5, dtype=torch.long), mask], 1)
    dec = torch.randint(0, V, (3, 6))
    with torch.no_grad():
        enc_prefix = model.prefix_from_tokens(head)["encoder"]                 # batch 1, broadcast
        full, _ = model.encode(full_ids, full_mask)
        part, _ = model.encode(tail, mask, prefix={"encoder": enc_prefix})
        assert (part - full[:, 5:])[mask.bool()].abs().max() < 1e-5
        cross = [block.cross.kv(full[:, :5]) for block in model.decoder.blocks]
        got = model(tail, dec, mask, prefix={"encoder": enc_prefix, "cross": cross})
        want = model(full_ids, dec, full_mask)
    assert (got - want).abs().max() < 1e-5


def test_cross_prefix_equals_appended_encoder_output():
    model = _tiny()
    ids, mask = padded_batch(11)
    extra = torch.randint(3, V, (1, 4))
    dec = torch.randint(0, V, (3, 6))
    with torch.no_grad():
        hidden, valid = model.encode(ids, mask)
        extra_hidden, _ = model.encode(extra)
        cross = [block.cross.kv(extra_hidden) for block in model.decoder.blocks]  # [1, H, 4, d_kv]
        got = model(decoder_input_ids=dec, encoder_out=(hidden, valid), prefix={"cross": cross})
        want = model(decoder_input_ids=dec, encoder_out=(torch.cat([extra_hidden.expand(3, -1, -1), hidden], 1),
                                                         torch.cat([torch.ones(3, 4, dtype=torch.bool), valid], 1)))
    assert (got - want).abs().max() < 1e-5


def test_prefix_from_tokens_sites_and_shapes():
    model = _tiny()
    ids = torch.randint(0, V, (2, 5))
    sites = model.prefix_from_tokens(ids)
    assert {s: (len(p), tuple(p[0][0].shape)) for s, p in sites.items()} == {
        "encoder": (2, (2, 3, 5, 6)), "decoder": (3, (2, 3, 5, 6)), "cross": (3, (2, 3, 5, 6))}
    assert model.prefix_sites() == {"encoder": (2, 3, 6), "decoder": (3, 3, 6), "cross": (3, 3, 6)}
    assert model.pack_prefix(sites) == sites and model.input_embeddings() is model.shared and model.arch == "t5"


@pytest.mark.parametrize("hooks", ["prefix", "prompt", "both"])
def test_generate_with_hooks_equals_full_recompute(hooks):
    """Cached generation (KV cache, cross keys/values once) == greedy argmax recomputed from scratch each step."""
    model = _tiny()
    ids, mask = padded_batch(8)
    kw = {}
    if hooks in ("prefix", "both"):
        kw["prefix"] = {"encoder": _kv(model, 1, 3, 2, seed=1), "decoder": _kv(model, 3, 2, 3, seed=2),
                        "cross": _kv(model, 1, 4, 3, seed=3)}
    if hooks in ("prompt", "both"):
        kw["prompt"] = torch.randn(3, 5, model.config.d_model)
    got = model.generate(ids, mask, max_new_tokens=10, eos_token_id=None, **kw)
    seq = torch.zeros(3, 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(10):
            seq = torch.cat([seq, model(ids, seq, mask, **kw)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(got, seq)


def test_plain_positions_match_transformers_with_pads_inside(hf_pair):
    """positions="plain" numbers every encoder slot, pads and unused prompt slots included: what
    transformers computes with the [prompt; text] embeddings as input (peft's prompt tuning)."""
    _, hf, ours, _ = hf_pair
    ids, mask = padded_batch(8)
    dec = torch.randint(3, V, (3, 4))
    prompt, prompt_mask = torch.randn(3, 5, ours.config.d_model), torch.tensor([[1] * 5, [1] * 5, [1, 1, 0, 0, 0]])
    with torch.no_grad():
        want = hf(inputs_embeds=torch.cat([prompt, hf.shared(ids)], 1), attention_mask=torch.cat([prompt_mask, mask], 1),
                  decoder_input_ids=dec).logits
        got = ours(ids, dec, mask, prompt=prompt, prompt_mask=prompt_mask, positions="plain")
        default = ours(ids, dec, mask, prompt=prompt, prompt_mask=prompt_mask)
    assert (got - want).abs().max() < 1e-5
    assert (default[0] - want[0]).abs().max() < 1e-5       # nothing before a real token is padding: the same
    assert (default[1] - want[1]).abs().max() < 1e-5       # right padding only: the same
    assert (default[2] - want[2]).abs().max() > 1e-3       # pads and unused slots before the text: not


def test_generate_with_plain_positions_equals_full_recompute():
    """Cached generation with positions="plain" == greedy argmax recomputed with it at every step; and
    the choice reaches generate (sampled with one seed, the two conventions draw different tokens)."""
    model = _tiny()
    ids, mask = padded_batch(8)
    kw = dict(prompt=torch.randn(3, 5, model.config.d_model), prompt_mask=torch.tensor([[1] * 5, [1] * 5, [1, 1, 0, 0, 0]]))
    generated = model.generate(ids, mask, max_new_tokens=10, eos_token_id=None, positions="plain", **kw)
    seq = torch.zeros(3, 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(10):
            seq = torch.cat([seq, model(ids, seq, mask, positions="plain", **kw)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(generated, seq)
    sampled = [model.generate(ids, mask, max_new_tokens=10, eos_token_id=None, temperature=1.0, positions=positions,
                              generator=torch.Generator().manual_seed(5), **kw) for positions in ("plain", "real")]
    assert not torch.equal(*sampled)  # greedy decoding of this random model repeats one token either way


def test_sampling_is_reproducible_and_top_k_restricts():
    model = _tiny()
    ids = torch.randint(0, V, (2, 5))
    a = model.generate(ids, max_new_tokens=10, temperature=1.0, top_k=5, eos_token_id=None, generator=torch.Generator().manual_seed(3))
    b = model.generate(ids, max_new_tokens=10, temperature=1.0, top_k=5, eos_token_id=None, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    one = model.generate(ids, max_new_tokens=10, temperature=1.0, top_k=1, eos_token_id=None, generator=torch.Generator().manual_seed(4))
    assert torch.equal(one, model.generate(ids, max_new_tokens=10, eos_token_id=None))  # top-1 sampling is greedy
    assert model.generate(ids, max_new_tokens=0).shape == (2, 1)


@pytest.mark.parametrize("call, match", [
    (lambda m, ids, dec: m(ids.float(), dec), "input_ids must be a 2-D torch.long tensor"),
    (lambda m, ids, dec: m(ids + V, dec), r"input_ids: token ids must be in \[0, 64\)"),
    (lambda m, ids, dec: m(ids, dec - 1), r"decoder_input_ids: token ids must be in \[0, 64\)"),
    (lambda m, ids, dec: m(ids), "give decoder_input_ids, or labels"),
    (lambda m, ids, dec: m(ids, dec[:1]), "decoder_input_ids has batch 1, the encoder input 2"),
    (lambda m, ids, dec: m(ids, dec, torch.ones(2, 3)), r"attention_mask must have the shape of its ids \[2, 7\]"),
    (lambda m, ids, dec: m(ids, dec, torch.zeros(2, 7)), r"attention_mask has rows \[0, 1\] without any real token"),
    (lambda m, ids, dec: m(ids, dec, decoder_attention_mask=torch.ones(2, 9)), "decoder_attention_mask must have the shape"),
    (lambda m, ids, dec: m(ids, labels=torch.full((2, 4), 64)), "labels must be -100 or token ids"),
    (lambda m, ids, dec: m(ids, dec, labels=torch.zeros(2, 4, dtype=torch.long)), r"labels must have the shape of decoder_input_ids \[2, 5\]"),
    (lambda m, ids, dec: m(ids, dec, prompt=torch.zeros(2, 3, 31)), r"prompt must have shape \['2 or 1', 'any', 32\]"),
    (lambda m, ids, dec: m(ids, dec, prompt=torch.zeros(1, 3, 32, dtype=torch.float64)), "prompt is torch.float64"),
    (lambda m, ids, dec: m(ids, dec, prefix=[]), "prefix must be a dict with keys among"),
    (lambda m, ids, dec: m(ids, dec, prefix={"self": []}), "prefix must be a dict with keys among"),
    (lambda m, ids, dec: m(ids, dec, prefix={"decoder": _kv(m, 1, 2, 2)}), r"prefix\['decoder'\] must hold one \(key, value\) pair per layer \(3\); got 2"),
    (lambda m, ids, dec: m(ids, dec, prefix={"encoder": _kv(m, 3, 2, 2)}), r"prefix\['encoder'\]\[0\] key must have shape \['2 or 1', 3, 2, 6\]"),
    (lambda m, ids, dec: m(ids, dec, prefix={"cross": [(torch.zeros(1, 3, 2, 6),)] * 3}), r"prefix\['cross'\]\[0\] must be a \(key, value\) pair"),
    (lambda m, ids, dec: m(ids, dec, encoder_out=m.encode(ids)), "encoder_out replaces input_ids"),
    (lambda m, ids, dec: m(ids, dec, bias_delta={"encoder.blocks.0.attn.q.bias": torch.zeros(5)}), "bias_delta 'encoder.blocks.0.attn.q.bias' must be"),
    (lambda m, ids, dec: m(ids, dec, torch.zeros(2, 7).masked_fill(ids > 30, float("-inf"))), "attention_mask must hold only 1 .* and 0"),
    (lambda m, ids, dec: m(ids, dec, decoder_attention_mask=torch.full((2, 5), 2)), "decoder_attention_mask must hold only 1"),
    (lambda m, ids, dec: m(ids, dec, prefix={"encoder": _kv(m, 1, 2, 2)}, prefix_mask={"encoder": torch.ones(3, 2)}),
     r"prefix_mask\['encoder'\] must have shape \[2 or 1, 2\]; got \[3, 2\]"),
    (lambda m, ids, dec: m(ids, dec, bias_delta={"encoder.blocks.0.attn.q.bias": torch.zeros(3, 18)}), r"must be \[18\] or \[2, 18\]; got \[3, 18\]"),
    (lambda m, ids, dec: m(ids, dec, bias_delta={"encoder.blocks.0.attn.q.bias": torch.zeros(18, dtype=torch.float64)}), "is torch.float64"),
    (lambda m, ids, dec: m(ids, dec, bias_delta=[torch.zeros(18)]), "bias_delta must be a dict"),
    (lambda m, ids, dec: m.generate(ids, max_new_tokens=-1), "max_new_tokens must be a non-negative integer"),
    (lambda m, ids, dec: m.generate(ids, max_new_tokens=2.0), "max_new_tokens must be a non-negative integer"),
    (lambda m, ids, dec: m.generate(ids, temperature=-1.0), "temperature must be a finite number >= 0"),
    (lambda m, ids, dec: m.generate(ids, temperature=1.0, top_k=0), "top_k must be None or an integer >= 1"),
    (lambda m, ids, dec: m.generate(ids, eos_token_id="</s>"), "eos_token_id must be None or a token id"),
    (lambda m, ids, dec: m.generate(ids, prefix={"decoder": _kv(m, 1, 2, 1)}), r"prefix\['decoder'\] must hold"),
])
def test_bad_inputs_are_refused_before_computing(call, match):
    model = _tiny()
    ids, dec = torch.randint(0, V, (2, 7)), torch.randint(0, V, (2, 5))
    with pytest.raises(MiniPeftError, match=match):
        call(model, ids, dec)


# ---- tokenizer ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    import sentencepiece as spm  # the dev extra installs it
    folder = tmp_path_factory.mktemp("spiece")
    g = torch.Generator().manual_seed(0)
    words = "the quick brown fox jumps over lazy dog cat sat on a mat hello world summarize translate".split()
    lines = [" ".join(words[int(i)] for i in torch.randint(len(words), (12,), generator=g)) for _ in range(300)]
    (folder / "corpus.txt").write_text("\n".join(lines))
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "spiece"), vocab_size=40,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    return folder


def test_t5_tokenizer(spiece):
    import sentencepiece as spm

    from minipeft.io.tokenizer import T5Tokenizer
    tok = T5Tokenizer(spiece)  # the folder: spiece.model inside
    sp = spm.SentencePieceProcessor(model_file=str(spiece / "spiece.model"))
    assert tok.vocab_size == 40 + 100
    text = "the quick brown fox jumps over the lazy dog"
    ids = tok.encode(text)
    assert ids[-1] == 1 and ids[:-1] == sp.encode(text)  # eos appended
    assert tok.decode(ids) == text and tok.decode(ids, skip_special_tokens=False) == text + " </s>"
    assert tok.sentinel_id(0) == 139 and tok.sentinel_id(99) == 40
    masked = "the <extra_id_0> fox jumps <extra_id_1> lazy dog"
    ids = tok.encode(masked)
    assert ids[:-1] == sp.encode("the") + [139] + sp.encode("fox jumps") + [138] + sp.encode("lazy dog") and ids[-1] == 1
    assert tok.decode(ids) == masked
    assert tok.decode([0, 0] + tok.encode("hello world")) == "hello world"  # pad dropped
    with pytest.raises(MiniPeftError, match="<extra_id_100> does not exist"):
        tok.encode("a <extra_id_100>")
    with pytest.raises(MiniPeftError, match="outside this tokenizer's vocabulary"):
        tok.decode([140])
    with pytest.raises(MiniPeftError, match="does not exist"):
        T5Tokenizer(spiece / "missing.model")


def test_t5_tokenizer_without_sentencepiece_says_how_to_install(monkeypatch, spiece):
    import sys

    from minipeft.io.tokenizer import T5Tokenizer
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import fails as if not installed
    with pytest.raises(MiniPeftError, match=r"pip install 'minipeft\[t5\]'"):
        T5Tokenizer(spiece)
