"""Every GPT-2 loader error is triggered and its message checked."""

import json
import os
import pickle

import pytest
import torch

from minipeft import GPT, GPTConfig, MiniPeftError
from minipeft.io import safetensors as st

CFG = GPTConfig(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2)


@pytest.fixture
def folder(tmp_path):
    GPT(CFG).save_pretrained(tmp_path)
    return tmp_path


def _edit_weights(folder, fn):
    state, meta = st.load(folder / "model.safetensors")
    fn(state)
    st.save(folder / "model.safetensors", state, meta)


def test_missing_key(folder):
    _edit_weights(folder, lambda s: s.pop("h.1.mlp.c_fc.weight"))
    with pytest.raises(MiniPeftError, match="missing key.*h.1.mlp.c_fc.weight"):
        GPT.from_pretrained(folder)


def test_unexpected_key(folder):
    _edit_weights(folder, lambda s: s.__setitem__("h.0.attn.extra", torch.zeros(2)))
    with pytest.raises(MiniPeftError, match="unexpected key.*h.0.attn.extra"):
        GPT.from_pretrained(folder)


def test_mask_buffers_and_transformer_prefix_are_accepted(folder):
    want = GPT.from_pretrained(folder).state_dict()
    def edit(s):
        s["h.0.attn.bias"] = torch.ones(1, 1, 16, 16)  # causal-mask buffer in older checkpoints
        for k in list(s):
            s["transformer." + k] = s.pop(k)
    _edit_weights(folder, edit)
    got = GPT.from_pretrained(folder).state_dict()  # the same weights: the buffer skipped, the prefix stripped
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_wrong_shape_names_key_and_shapes(folder):
    _edit_weights(folder, lambda s: s.__setitem__("h.0.attn.c_attn.weight", torch.zeros(16, 40)))
    with pytest.raises(MiniPeftError, match=r"h.0.attn.c_attn.weight has shape \[16, 40\]; expected \[16, 48\]"):
        GPT.from_pretrained(folder)


def test_wrong_dtype(folder):
    _edit_weights(folder, lambda s: s.__setitem__("ln_f.weight", torch.zeros(16, dtype=torch.int32)))
    with pytest.raises(MiniPeftError, match="ln_f.weight has dtype torch.int32"):
        GPT.from_pretrained(folder)


def test_untied_head_refused(folder):
    _edit_weights(folder, lambda s: s.__setitem__("lm_head.weight", torch.ones(40, 16)))
    with pytest.raises(MiniPeftError, match="lm_head.weight differs from wte.weight"):
        GPT.from_pretrained(folder)


@pytest.mark.parametrize("field, value, match", [
    ("n_head", 0, "n_head must be an integer >= 1"),
    ("n_head", 3, "divisible by n_head"),
    ("n_embd", -16, "n_embd must be an integer >= 1"),
    ("n_layer", "2", "n_layer must be an integer"),
    ("activation_function", "relu", "not GPT-2's tanh GELU"),
    ("scale_attn_by_inverse_layer_idx", True, "not supported"),
])
def test_bad_config_refused_before_allocation(folder, field, value, match):
    cfg = json.loads((folder / "config.json").read_text())
    cfg[field] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MiniPeftError, match=match):
        GPT.from_pretrained(folder)


def test_config_field_missing(folder):
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["n_embd"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MiniPeftError, match="config is missing 'n_embd'"):
        GPT.from_pretrained(folder)


def test_no_weights_and_no_path(tmp_path, folder):
    os.remove(folder / "model.safetensors")
    with pytest.raises(MiniPeftError, match="no weights found"):
        GPT.from_pretrained(folder)
    with pytest.raises(MiniPeftError, match="does not exist"):
        GPT.from_pretrained(tmp_path / "absent")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_that_runs_code_is_refused(folder):
    os.remove(folder / "model.safetensors")
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"wte.weight": _Evil()}, f)
    with pytest.raises(MiniPeftError, match="could run code"):
        GPT.from_pretrained(folder)


def test_bin_weights_load_like_safetensors(folder):
    from_safetensors = GPT.from_pretrained(folder)
    state, _ = st.load(folder / "model.safetensors")
    os.remove(folder / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    from_bin = GPT.from_pretrained(folder)
    ids = torch.randint(0, 40, (1, 5))
    assert torch.equal(from_bin(ids), from_safetensors(ids))


def test_each_loader_names_the_other_family_it_finds(tmp_path, folder):
    """A T5 folder given to GPT.from_pretrained (or a GPT-2 folder to T5's) names the model_type it
    found and the loader that reads it, not the first GPT-2 (T5) field the config lacks."""
    from minipeft import T5, T5Config
    t5 = tmp_path / "t5"
    T5(T5Config.named("tiny", num_layers=1, d_model=16, d_ff=16, d_kv=4, num_heads=2, vocab_size=20)).save_pretrained(t5)
    with pytest.raises(MiniPeftError, match=r"model_type is 't5'; GPT.from_pretrained reads GPT-2 folders \(model_type "
                                            r"'gpt2'\); load it with T5.from_pretrained"):
        GPT.from_pretrained(t5)
    with pytest.raises(MiniPeftError, match=r"model_type is 'gpt2'; T5.from_pretrained reads T5 folders \(model_type "
                                            r"'t5'\); load it with GPT.from_pretrained"):
        T5.from_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(MiniPeftError, match=r"model_type is 'llama'; GPT.from_pretrained reads GPT-2 folders \(model_type 'gpt2'\)$"):
        GPT.from_pretrained(folder)
