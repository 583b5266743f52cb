"""peft interoperability: adapters cross both ways with equal logits (peft is a test oracle);
on left-padded batches peft's forward counts the pads, and positions="plain" reproduces it."""

import pytest
import torch

from minipeft import GPT, T5, MiniPeftError, PrefixTuning, PromptTuning, BitFit
from minipeft.methods.peft_format import load_peft, save_peft
from minipeft.models.t5 import shift_right

import transformers  # noqa: E402  test oracle (dev extra)
import peft  # noqa: E402

CFG = dict(vocab_size=61, n_positions=64, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The same random tiny GPT-2 in transformers and in minipeft."""
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**CFG, bos_token_id=0, eos_token_id=0)).eval()
    folder = tmp_path_factory.mktemp("base")
    hf.save_pretrained(folder)
    return folder


def _peft_model(folder, adapter_folder):
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    return peft.PeftModel.from_pretrained(hf, adapter_folder).eval()


def _trained(adapter):
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return adapter


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_minipeft_adapter_runs_in_peft(base, tmp_path, kind):
    ours = GPT.from_pretrained(base)
    adapter = _trained(PromptTuning(ours, 4) if kind == "prompt" else PrefixTuning(ours, 4, hidden=16))
    save_peft(adapter, tmp_path)
    theirs = _peft_model(base, tmp_path)
    ids = torch.randint(0, 61, (2, 9))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask).logits
        want = want[:, -9:]  # peft's prompt tuning returns P extra leading positions
        got = adapter(ids, mask)
    assert (got - want).abs().max() < 1e-5


def _trained_in_peft(model, config, folder, scale=0.1):
    """A peft model with its adapter moved as if trained, saved to `folder`; returned in eval mode."""
    theirs = peft.get_peft_model(model, config)
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * scale)
    theirs.eval().save_pretrained(folder)
    return theirs


def _gpt2_trained_in_peft(base, folder, kind):
    config = (peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5) if kind == "prompt" else
              peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, prefix_projection=True, encoder_hidden_size=16))
    return _trained_in_peft(transformers.GPT2LMHeadModel.from_pretrained(base).eval(), config, folder)


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_peft_adapter_runs_in_minipeft(base, tmp_path, kind):
    theirs = _gpt2_trained_in_peft(base, tmp_path, kind)
    adapter = load_peft(GPT.from_pretrained(base), tmp_path)
    ids = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -9:]
        got = adapter(ids)
    assert (got - want).abs().max() < 1e-5


def test_unsupported_adapters_are_refused(base, tmp_path):
    with pytest.raises(MiniPeftError, match="peft's format covers"):
        save_peft(BitFit(GPT.from_pretrained(base)), tmp_path)
    with pytest.raises(MiniPeftError, match="does not exist"):
        load_peft(GPT.from_pretrained(base), tmp_path / "none")


T5_CFG = dict(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
              relative_attention_max_distance=16)


@pytest.fixture(scope="module")
def t5_base(tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**T5_CFG, decoder_start_token_id=0)).eval()
    folder = tmp_path_factory.mktemp("t5")
    hf.save_pretrained(folder)
    return folder


def _t5_logits(model, ids, dec):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=dec).logits


def _t5_trained_in_peft(t5_base, folder):
    return _trained_in_peft(transformers.T5ForConditionalGeneration.from_pretrained(t5_base),
                            peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4), folder, scale=1.0)


def test_t5_prompt_tuning_both_ways(t5_base, tmp_path):
    ids = torch.randint(2, 50, (2, 7))
    dec = torch.randint(2, 50, (2, 4))
    # minipeft -> peft
    ours = _trained(PromptTuning(T5.from_pretrained(t5_base), 3))
    save_peft(ours, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(transformers.T5ForConditionalGeneration.from_pretrained(t5_base).eval(), tmp_path / "ours").eval()
    with torch.no_grad():
        assert (ours(ids, dec) - _t5_logits(theirs, ids, dec)).abs().max() < 1e-5
    # peft -> minipeft
    theirs = _t5_trained_in_peft(t5_base, tmp_path / "theirs")
    loaded = load_peft(T5.from_pretrained(t5_base), tmp_path / "theirs")
    with torch.no_grad():
        assert (loaded(ids, dec) - _t5_logits(theirs, ids, dec)).abs().max() < 1e-5


def test_prefix_shape_is_checked_before_allocating(base, tmp_path):
    """A config asking for far more virtual tokens than the tensor holds is refused before the
    adapter allocates [P, width] for them (2**40 x 256 floats would be 1 PB)."""
    import resource
    from minipeft.io import checkpoint, safetensors
    model = GPT.from_pretrained(base)
    safetensors.save(tmp_path / "adapter_model.safetensors", {"prompt_embeddings": torch.zeros(4, 2 * 2 * 32)}, {"format": "pt"})
    config = {"peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "token_dim": 32}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for P, message in [(2**40, rf"prompt_embeddings has shape \[4, 128\]; expected \[{2**40}, 128\]"),
                       (5, r"prompt_embeddings has shape \[4, 128\]; expected \[5, 128\]"),
                       ("4", "num_virtual_tokens must be an integer >= 1, got '4'"), (0, "num_virtual_tokens must be an integer >= 1, got 0")]:
        checkpoint.write_json(tmp_path / "adapter_config.json", {**config, "num_virtual_tokens": P})
        with pytest.raises(MiniPeftError, match=message):
            load_peft(model, tmp_path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB
    checkpoint.write_json(tmp_path / "adapter_config.json", {**config, "num_virtual_tokens": 4})
    assert torch.equal(load_peft(model, tmp_path).prefix["self"], torch.zeros(4, 128))


# ---- left padding: peft's forward counts the pads, minipeft's default does not ---------------------

TOL = 1e-5


def _left_padded(vocab, T):
    """3 rows, row 1 left-padded by 3, the others not."""
    ids = torch.randint(2, vocab, (3, T))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids, mask


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_gpt2_plain_positions_give_peft_numbers_on_left_padded_batches(base, tmp_path, kind):
    """peft passes no position_ids, so GPT-2 numbers every slot, the pads too: positions="plain"
    gives peft's logits on real tokens and its loss; the default gives a padded row the positions
    it has alone, which peft's forward does not."""
    theirs = _gpt2_trained_in_peft(base, tmp_path, kind)
    adapter = load_peft(GPT.from_pretrained(base), tmp_path)
    ids, mask = _left_padded(61, 9)
    labels = ids.masked_fill(mask == 0, -100)
    # each row's first real token has no real token before it: it is predicted from a pad (row 1),
    # whose outputs differ, or by peft's prompt tuning from the last prompt slot (row 0; minipeft has
    # no output there)
    labels[torch.arange(3), (mask == 0).sum(1)] = -100
    real = mask.bool()
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask, labels=labels)
        want_logits = want.logits[:, -9:]  # prompt tuning returns P extra leading positions
        plain, loss = adapter(ids, mask, positions="plain"), adapter(ids, mask, labels=labels, positions="plain")
        default = adapter(ids, mask)
        alone = adapter(ids[1:2, 3:])
    assert (plain - want_logits)[real].abs().max() < TOL
    assert abs(loss.item() - want.loss.item()) < TOL
    assert (default[1, 3:] - alone[0]).abs().max() < TOL                     # the default: the row as alone
    assert (default[[0, 2]] - want_logits[[0, 2]]).abs().max() < TOL         # rows without padding agree anyway
    assert (default[1, 3:] - want_logits[1, 3:]).abs().max() > 100 * TOL     # the padded row does not: the option matters
    keep_first = labels.clone()
    keep_first[0, 0] = ids[0, 0]  # row 0's first token: peft's prompt tuning scores it from the last prompt slot
    with torch.no_grad():
        gap = (theirs(input_ids=ids, attention_mask=mask, labels=keep_first).loss
               - adapter(ids, mask, labels=keep_first, positions="plain"))
    assert (abs(gap.item()) > 100 * TOL) == (kind == "prompt")


def test_t5_plain_positions_give_peft_numbers_on_left_padded_batches(t5_base, tmp_path):
    """peft's T5 prompt tuning prepends the prompt and P ones to the encoder mask: the pads sit
    between the prompt and the text and take relative positions (the decoder is untouched)."""
    theirs = _t5_trained_in_peft(t5_base, tmp_path)
    loaded = load_peft(T5.from_pretrained(t5_base), tmp_path)
    ids, mask = _left_padded(50, 7)
    labels = torch.randint(2, 50, (3, 4))
    dec = shift_right(labels)
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask, labels=labels)
        plain = loaded(ids, dec, mask, positions="plain")
        loss = loaded(ids, attention_mask=mask, labels=labels, positions="plain")
        default = loaded(ids, dec, mask)
        alone = loaded(ids[1:2, 3:], dec[1:2])
    assert (plain - want.logits).abs().max() < TOL
    assert abs(loss.item() - want.loss.item()) < TOL
    assert (default[1] - alone[0]).abs().max() < TOL
    assert (default[[0, 2]] - want.logits[[0, 2]]).abs().max() < TOL
    assert (default[1] - want.logits[1]).abs().max() > 100 * TOL


def test_positions_is_checked(base, t5_base):
    gpt, t5 = GPT.from_pretrained(base), T5.from_pretrained(t5_base)
    ids = torch.randint(2, 50, (2, 5))
    for call in (lambda: gpt(ids, positions="padded"), lambda: gpt.generate(ids, positions=None),
                 lambda: PromptTuning(gpt, 2)(ids, positions="Plain"), lambda: t5(ids, ids, positions=1),
                 lambda: t5.encode(ids, positions="all"), lambda: t5.generate(ids, positions=["plain"])):
        with pytest.raises(MiniPeftError, match="positions must be 'real' .* or 'plain'"):
            call()


# ---- a peft folder made for another model -------------------------------------------------------

def _gpt_and_t5_of_one_size():
    """A GPT-2 and a T5 of the same width, layers and heads: only the architecture tells them apart."""
    from minipeft import GPTConfig, T5, T5Config
    torch.manual_seed(0)
    return (GPT(GPTConfig(**CFG)).eval(),
            T5(T5Config.named("tiny", vocab_size=61, d_model=32, d_kv=8, num_layers=2, num_decoder_layers=2, num_heads=4)).eval())


def _peft_prompt_folder(model, folder):
    """A prompt-tuning folder written by peft itself for the transformers twin of `model`."""
    if model.arch == "gpt":
        hf, task = transformers.GPT2LMHeadModel(transformers.GPT2Config(**CFG)), "CAUSAL_LM"
    else:
        c = model.config
        hf = transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.d_kv, d_ff=c.d_ff, num_layers=c.num_layers, num_heads=c.num_heads,
            decoder_start_token_id=0))
        task = "SEQ_2_SEQ_LM"
    peft.get_peft_model(hf, peft.PromptTuningConfig(task_type=task, num_virtual_tokens=3)).save_pretrained(folder)
    return folder


def test_a_peft_folder_for_the_other_architecture_is_refused(tmp_path):
    """Same width, layers and heads: a CAUSAL_LM prompt folder once loaded onto T5 (and a
    SEQ_2_SEQ_LM one onto GPT-2) silently. The message names each field that differs."""
    gpt, t5 = _gpt_and_t5_of_one_size()
    causal, seq2seq = _peft_prompt_folder(gpt, tmp_path / "gpt"), _peft_prompt_folder(t5, tmp_path / "t5")
    load_peft(gpt, causal), load_peft(t5, seq2seq)  # each onto its own model: fine
    with pytest.raises(MiniPeftError, match=r"made for another model than this T5: task_type 'CAUSAL_LM' \(this model: "
                                            r"'SEQ_2_SEQ_LM'\), num_transformer_submodules 1 \(this model: 2\); .*CAUSAL_LM "
                                            r"adapters are for GPT-2"):
        load_peft(t5, causal)
    with pytest.raises(MiniPeftError, match=r"made for another model than this GPT-2: task_type 'SEQ_2_SEQ_LM' \(this model: "
                                            r"'CAUSAL_LM'\), num_transformer_submodules 2 \(this model: 1\)"):
        load_peft(gpt, seq2seq)


@pytest.mark.parametrize("arch", ["gpt", "t5"])
@pytest.mark.parametrize("field, value", [("task_type", "SEQ_CLS"), ("num_transformer_submodules", 3), ("num_layers", 5),
                                          ("num_attention_heads", 8), ("token_dim", 64), ("num_layers", True), ("num_layers", "2")])
def test_each_model_field_of_a_peft_config_is_checked(tmp_path, arch, field, value):
    import json
    model = _gpt_and_t5_of_one_size()[arch == "t5"]
    folder = _peft_prompt_folder(model, tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(MiniPeftError, match=rf"adapter_config.json: the adapter was made for another model than this "
                                            rf"{'T5' if arch == 't5' else 'GPT-2'}: {field} {value!r} \(this model: "):
        load_peft(model, folder)


def test_model_fields_absent_from_a_peft_config_are_not_checked(tmp_path):
    """peft writes all five fields; a hand-written config may leave them out (or null): the adapter
    loads, its tensor's shape still checked against the model."""
    import json
    gpt, _ = _gpt_and_t5_of_one_size()
    folder = _peft_prompt_folder(gpt, tmp_path)
    full = load_peft(gpt, folder).prompt.clone()
    config = json.loads((folder / "adapter_config.json").read_text())
    fields = ("task_type", "num_transformer_submodules", "num_layers", "num_attention_heads", "token_dim")
    for absent in ({k: v for k, v in config.items() if k not in fields}, {**config, **dict.fromkeys(fields)}):
        (folder / "adapter_config.json").write_text(json.dumps(absent))
        assert torch.equal(load_peft(gpt, folder).prompt, full)
