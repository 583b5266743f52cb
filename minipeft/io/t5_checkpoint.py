"""T5 checkpoints in the Hugging Face layout, without Hugging Face: the key map as data, the
config.json fields, and loading (every key and shape checked before memory is taken) and saving.
"""

import os

import torch

from ..errors import MiniPeftError
from ..models.layers import bias_slots
from ..models.t5 import EOS_ID, FEED_FORWARD, PAD_ID, T5Config
from . import checkpoint, safetensors
from .checkpoint import Key


# ---- the key map ------------------------------------------------------------------------

IGNORED_KEYS = (r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",)  # unused stray
EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def _modules(cfg):
    """(checkpoint module, minipeft module, has a bias slot) for every weight of T5."""
    out = [("shared", "shared", False)]
    mlp = ("wi_0", "wi_1", "wo") if cfg.feed_forward == "gated-gelu" else ("wi", "wo")
    for stack, n in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
        out.append((f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias", f"{stack}.relative_attention_bias", False))
        attns = [("SelfAttention", "attn")] + ([("EncDecAttention", "cross")] if stack == "decoder" else [])
        for i in range(n):
            hf, ours = f"{stack}.block.{i}.layer", f"{stack}.blocks.{i}"
            for j, (hf_attn, our_attn) in enumerate(attns):  # layer.0 self-attention, layer.1 cross-attention
                out.append((f"{hf}.{j}.layer_norm", f"{ours}.{our_attn}_norm", True))
                out += [(f"{hf}.{j}.{hf_attn}.{p}", f"{ours}.{our_attn}.{p}", True) for p in "qkvo"]
            j = len(attns)                                   # then the MLP
            out.append((f"{hf}.{j}.layer_norm", f"{ours}.mlp_norm", True))
            out += [(f"{hf}.{j}.DenseReluDense.{p}", f"{ours}.mlp.{p}", True) for p in mlp]
        out.append((f"{stack}.final_layer_norm", f"{stack}.final_norm", True))
    if not cfg.tie_word_embeddings:
        out.append(("lm_head", "lm_head", False))
    return out


def checkpoint_keys(cfg, biases=None):
    """Explicit map between Hugging Face T5 keys and minipeft parameters (no transposes: all
    nn.Linear [out, in]). T5 files have no biases; `biases` names the minipeft modules whose bias
    slot is present (default: all of them when cfg.bias), stored as `<checkpoint module>.bias`."""
    keys = []
    for hf, ours, has_slot in _modules(cfg):
        keys.append(Key(f"{hf}.weight", (f"{ours}.weight",)))
        if has_slot and (cfg.bias if biases is None else ours in biases):
            keys.append(Key(f"{hf}.bias", (f"{ours}.bias",)))
    return keys


def _embeddings_and_head(state, cfg, source):
    """Fold the embedding's aliases into shared.weight; keep lm_head.weight only for an untied head."""
    state = dict(state)
    names = [k for k in EMBEDDING_KEYS if k in state]
    if not names:
        raise MiniPeftError(f"{source}: missing key(s) shared.weight (the token embedding; "
                            f"encoder.embed_tokens.weight or decoder.embed_tokens.weight would do too)")
    tensors = [state.pop(k) for k in names]
    for name, t in zip(names[1:], tensors[1:]):
        if t.shape != tensors[0].shape or not torch.equal(t, tensors[0]):
            raise MiniPeftError(f"{source}: {name} differs from {names[0]}; T5's encoder and decoder share one embedding")
    state["shared.weight"] = tensors[0]
    if cfg.tie_word_embeddings:
        head = state.pop("lm_head.weight", None)
        if head is not None and (head.shape != tensors[0].shape or not torch.equal(head, tensors[0])):
            raise MiniPeftError(f"{source}: lm_head.weight differs from {names[0]}, but the config ties the head to the "
                                f"embedding (original T5); v1.1 / FLAN-T5 configs say tie_word_embeddings: false")
    elif "lm_head.weight" not in state:
        # transformers >= 5 ties every T5 head when saving a model whose head equals the embedding,
        # and leaves lm_head.weight out of the file; the head is then the embedding, unscaled
        state["lm_head.weight"] = tensors[0].clone()
    return state


def config_from_hf(hf, source):
    """T5Config from a transformers T5 config.json dict, refusing what minipeft does not implement."""
    checkpoint.require_model_type(hf, source, "t5")
    req = checkpoint.require
    vocab, d_model, d_kv, d_ff, n_layers, n_heads = (req(hf, source, f) for f in
                                                     ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"))
    n_dec = n_layers if hf.get("num_decoder_layers") is None else req(hf, source, "num_decoder_layers")
    if hf.get("is_encoder_decoder", True) is not True:
        raise MiniPeftError(f"{source}: is_encoder_decoder is {hf['is_encoder_decoder']!r}; minipeft's T5 is the encoder-decoder")
    ff = hf.get("feed_forward_proj", "relu")
    if ff not in FEED_FORWARD:
        raise MiniPeftError(f"{source}: feed_forward_proj {ff!r} is not supported; minipeft implements 'relu' (T5) "
                            f"and 'gated-gelu' (T5 v1.1, FLAN-T5)")
    for field in ("decoder_start_token_id", "pad_token_id"):
        if hf.get(field, PAD_ID) != PAD_ID:
            raise MiniPeftError(f"{source}: {field} is {hf[field]!r}; T5 uses {PAD_ID}")
    # transformers >= 5 records the family in scale_decoder_outputs (tie_word_embeddings is then always
    # true); older configs say tie_word_embeddings: false for v1.1 / FLAN-T5
    tied = hf["scale_decoder_outputs"] if "scale_decoder_outputs" in hf else hf.get("tie_word_embeddings", True)
    dropout = hf.get("dropout_rate", 0.1)
    cfg = T5Config(vocab_size=vocab, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=n_layers, num_decoder_layers=n_dec,
                   num_heads=n_heads, relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
                   relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
                   dropout=dropout if dropout is not None else 0.0, layer_norm_eps=hf.get("layer_norm_epsilon", 1e-6),
                   feed_forward=ff, tie_word_embeddings=tied)
    return cfg.validate(source)


def config_to_hf(cfg):
    gated = cfg.feed_forward == "gated-gelu"
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "is_encoder_decoder": True,
        "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "d_kv": cfg.d_kv, "d_ff": cfg.d_ff,
        "num_layers": cfg.num_layers, "num_decoder_layers": cfg.num_decoder_layers, "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "dropout_rate": cfg.dropout, "layer_norm_epsilon": cfg.layer_norm_eps, "initializer_factor": 1.0,
        "feed_forward_proj": cfg.feed_forward, "dense_act_fn": "gelu_new" if gated else "relu", "is_gated_act": gated,
        "tie_word_embeddings": cfg.tie_word_embeddings, "scale_decoder_outputs": cfg.tie_word_embeddings,
        "decoder_start_token_id": PAD_ID, "pad_token_id": PAD_ID, "eos_token_id": EOS_ID,
    }


# ---- loading and saving ---------------------------------------------------------------------------

def load(cls, path, *, dtype=torch.float32):
    """Load T5 / T5 v1.1 / FLAN-T5 weights from a Hugging Face-layout folder (config.json +
    model.safetensors or pytorch_model.bin, or a sharded index). Bias tensors in the file, as
    save_pretrained writes them for enabled slots, are loaded into those slots. Returns the model in eval mode."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise MiniPeftError(f"{path} is not a folder; pass a T5 model folder (config.json + model.safetensors or pytorch_model.bin)")
    hf, state = checkpoint.load_folder(path)
    cfg = config_from_hf(hf, os.path.join(path, "config.json"))
    checkpoint.check_count(state, r"encoder\.block\.(\d+)\.", cfg.num_layers, "num_layers", path)
    checkpoint.check_count(state, r"decoder\.block\.(\d+)\.", cfg.num_decoder_layers, "num_decoder_layers", path)
    state = _embeddings_and_head(state, cfg, path)
    slots = {hf_name: ours for hf_name, ours, has_slot in _modules(cfg) if has_slot}
    biases = {slots[k[:-5]] for k in state if k.endswith(".bias") and k[:-5] in slots}
    with torch.device("meta"):  # shapes only: memory comes once the file is known to match
        model = cls(cfg)
    for name in biases:
        model.get_submodule(name).enable_bias()
    checkpoint.load_into(model, state, checkpoint_keys(cfg, biases), ignore=IGNORED_KEYS, source=path)
    return model.to(dtype).eval()


def save(model, folder):
    """Write config.json + model.safetensors in the Hugging Face layout (loads in minipeft and
    transformers). Present bias slots are written as `<module>.bias`; transformers' T5 has no
    biases and ignores them."""
    biases = {name.rsplit(".", 1)[0] for name, module, attr, _ in bias_slots(model) if getattr(module, attr) is not None}
    os.makedirs(folder, exist_ok=True)
    safetensors.save(os.path.join(folder, "model.safetensors"), checkpoint.state_from(model, checkpoint_keys(model.config, biases)),
                     metadata={"format": "pt"})
    checkpoint.write_json(os.path.join(folder, "config.json"), config_to_hf(model.config))
