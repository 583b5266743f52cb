"""GPT-2 checkpoints in the Hugging Face layout, without Hugging Face: the key map as data, the
config.json fields, and loading (every key and shape checked before memory is taken) and saving.
"""

import os

import torch

from ..errors import MiniPeftError
from ..models.gpt import DROPOUTS, GPTConfig
from . import checkpoint, safetensors
from .checkpoint import Key


# ---- the key map ------------------------------------------------------------------------

BLOCK_KEY = r"h\.(\d+)\."                                          # a block's keys; the index counts layers
IGNORED_KEYS = (r"h\.\d+\.attn\.bias", r"h\.\d+\.attn\.masked_bias")  # causal-mask buffers, not parameters
CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")    # stored [in, out]: transpose


def checkpoint_keys(cfg):
    """Explicit map between Hugging Face GPT-2 keys and minipeft parameters."""
    keys = [Key("wte.weight", ("wte.weight",)), Key("wpe.weight", ("wpe.weight",))]
    for i in range(cfg.n_layer):
        h = f"h.{i}"
        keys += [Key(f"{h}.{ln}.{p}", (f"{h}.{ln}.{p}",)) for ln in ("ln_1", "ln_2") for p in ("weight", "bias")]
        keys += [Key(f"{h}.{m}.weight", (f"{h}.{m}.weight",), "transpose") for m in CONV1D]
        keys.append(Key(f"{h}.attn.c_attn.bias", tuple(f"{h}.attn.c_attn.bias_{r}" for r in ("query", "key", "value")), "split"))
        keys += [Key(f"{h}.{m}.bias", (f"{h}.{m}.bias",)) for m in CONV1D[1:]]
    keys += [Key("ln_f.weight", ("ln_f.weight",)), Key("ln_f.bias", ("ln_f.bias",))]
    if not cfg.bias:
        keys = [k for k in keys if not k.ckpt.endswith(".bias")]
    return keys


def _strip_prefix(state):
    return {k.removeprefix("transformer."): v for k, v in state.items()}


def config_from_hf(hf, source):
    """GPTConfig from a transformers GPT-2 config.json dict, refusing what minipeft does not implement."""
    checkpoint.require_model_type(hf, source, "gpt2")
    req = checkpoint.require
    vocab, n_pos, n_embd, n_layer, n_head = (req(hf, source, f) for f in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"))
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise MiniPeftError(f"{source}: activation_function {hf['activation_function']!r} is not GPT-2's tanh GELU")
    for flag, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False), ("reorder_and_upcast_attn", False)):
        if hf.get(flag, want) != want:
            raise MiniPeftError(f"{source}: {flag}={hf[flag]!r} is not supported (expected {want})")
    if hf.get("tie_word_embeddings", True) is not True:
        raise MiniPeftError(f"{source}: tie_word_embeddings is false; minipeft's GPT-2 ties the head to wte")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if type(eps) not in (int, float) or not 0 < eps < 1:
        raise MiniPeftError(f"{source}: layer_norm_epsilon must be a small positive number, got {eps!r}")
    dropouts = {d: hf.get(d, 0.1) for d in DROPOUTS}  # 0.1 where absent, as transformers reads it
    for name, p in dropouts.items():
        if p is None:  # GPTConfig would read None as "not given"
            raise MiniPeftError(f"{source}: {name} must be in [0, 1), got None")
    cfg = GPTConfig(vocab_size=vocab, n_positions=n_pos, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                    n_inner=hf.get("n_inner"), layer_norm_eps=float(eps), **dropouts)
    return cfg.validate(source)


def config_to_hf(cfg):
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.n_positions, "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.n_inner,
        "activation_function": "gelu_new", "layer_norm_epsilon": cfg.layer_norm_eps,
        "embd_pdrop": cfg.embd_pdrop, "attn_pdrop": cfg.attn_pdrop, "resid_pdrop": cfg.resid_pdrop,
        "tie_word_embeddings": True,
    }


def _config_from_shapes(state, source, n_head=None):
    """Infer the config of a bare weights file: sizes from the shapes, n_head = n_embd // 64 unless given."""
    for k in ("wte.weight", "wpe.weight"):
        if k not in state or state[k].dim() != 2:
            raise MiniPeftError(f"{source}: missing key {k} (a 2-D tensor); cannot infer the GPT-2 config")
    vocab, n_embd = state["wte.weight"].shape
    n_layer = checkpoint.count_blocks(state, BLOCK_KEY)
    fc = state.get("h.0.mlp.c_fc.weight")
    n_inner = int(fc.shape[1]) if fc is not None and fc.dim() == 2 and fc.shape[1] != 4 * n_embd else None
    if n_head is None:
        if n_embd % 64:
            raise MiniPeftError(f"{source}: n_embd {n_embd} is not a multiple of 64; pass n_head= explicitly")
        n_head = n_embd // 64
    cfg = GPTConfig(vocab_size=int(vocab), n_positions=int(state["wpe.weight"].shape[0]), n_embd=int(n_embd),
                    n_layer=n_layer, n_head=n_head, n_inner=n_inner)
    return cfg.validate(source)


# ---- loading and saving ---------------------------------------------------------------------------

def load(cls, path, *, n_head=None, dtype=torch.float32):
    """A `cls` (GPT) with the GPT-2 weights from a Hugging Face-layout folder (config.json + model.safetensors or
    pytorch_model.bin) or one .safetensors/.bin file (config inferred from the shapes; n_head
    defaults to n_embd // 64, true of every released GPT-2). Returns the model in eval mode."""
    path = os.fspath(path)
    if os.path.isdir(path):
        hf, state = checkpoint.load_folder(path)
        state = _strip_prefix(state)
        cfg = config_from_hf(hf, os.path.join(path, "config.json"))
    elif os.path.isfile(path):
        state = _strip_prefix(checkpoint.load_file(path))
        cfg = _config_from_shapes(state, path, n_head)
    else:
        raise MiniPeftError(f"{path} does not exist; pass a model folder (config.json + weights) or a .safetensors file")
    head = state.pop("lm_head.weight", None)
    if head is not None and ("wte.weight" not in state or not torch.equal(head, state["wte.weight"])):
        raise MiniPeftError(f"{path}: lm_head.weight differs from wte.weight, but GPT-2's head is tied to wte")
    checkpoint.check_count(state, BLOCK_KEY, cfg.n_layer, "n_layer", path)
    with torch.device("meta"):  # shapes only: memory comes once the file is known to match
        model = cls(cfg)
    checkpoint.load_into(model, state, checkpoint_keys(cfg), ignore=IGNORED_KEYS, source=path)
    return model.to(dtype).eval()


def save(model, folder):
    """Write config.json + model.safetensors in the Hugging Face layout (loads in minipeft and transformers)."""
    os.makedirs(folder, exist_ok=True)
    safetensors.save(os.path.join(folder, "model.safetensors"), checkpoint.state_from(model, checkpoint_keys(model.config)),
                     metadata={"format": "pt"})
    checkpoint.write_json(os.path.join(folder, "config.json"), config_to_hf(model.config))
