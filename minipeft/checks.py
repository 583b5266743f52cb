"""Every runtime argument check, in one place: the public entries (GPT/T5 hidden_states, forward,
encode and generate, the model configs, KVCache.start_with, PromptTuning's shared-prompt path)
call these once, before any computation; the math below them trusts its inputs.

Each raises one MiniPeftError that names what is wrong and what was expected. (Untrusted files:
safetensors headers, configs, adapter metadata, are checked where they are read, in minipeft/io.)
"""

import math
import numbers
import operator

import torch

from .errors import MiniPeftError

IGNORE = -100  # the label of a position without a loss (as in transformers)


def reading_values():
    """Whether checks (ids in range, a mask of 0 and 1, ...) and the models' shortcuts (no mask when
    every key is real) may read tensor values: not while torch.compile traces, where reading one
    (int(ids.max())) ends the graph, a graph break on every call. Compiled, shapes, dtypes and
    devices are still checked, values only in eager calls, and the models take their general path."""
    return not torch.compiler.is_compiling()


def check_ids(name, ids, vocab_size):
    """A 2-D torch.long tensor of token ids in [0, vocab_size) with at least one token; returns (B, T)."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
        got = f"{ids.dtype} tensor of shape {list(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise MiniPeftError(f"{name} must be a 2-D torch.long tensor [batch, seq]; got {got}")
    B, T = ids.shape
    if B == 0 or T == 0:
        raise MiniPeftError(f"{name} is empty (shape {list(ids.shape)}); give at least one token per row")
    if reading_values() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise MiniPeftError(f"{name}: token ids must be in [0, {vocab_size}); got min {int(ids.min())}, max {int(ids.max())}")
    return B, T


def check_attention_mask(name, mask, shape, *, every_row_real=False):
    """A [B, T] mask of 1 (real token) and 0 (padding), bool or numeric, shaped like its ids; with
    every_row_real, each row has a real token (when nothing else, a prompt or prefix, gives it keys)."""
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(shape):
        got = f"shape {list(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise MiniPeftError(f"{name} must have the shape of its ids {list(shape)} (1 = real token, 0 = padding); got {got}")
    if not reading_values():
        return
    if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        other = mask[(mask != 0) & (mask != 1)].flatten()[0].item()
        raise MiniPeftError(f"{name} must hold only 1 (real token) and 0 (padding); got {other}. "
                            f"An additive mask (0 = attend, -inf = not) is not one: pass (mask == 0).long()")
    empty = (~mask.bool().any(1)).nonzero()[:, 0].tolist() if every_row_real else []
    if empty:
        raise MiniPeftError(f"{name} has rows {empty[:5]} without any real token (all 0): they would attend to nothing. "
                            f"An additive mask (0 = attend) reads as all padding: pass (mask == 0).long()")


def check_token_ids(name, ids, vocab_size):
    """A text's token ids (a list of ints, a 1-D integer tensor, or one int) as a 1-D long tensor."""
    try:
        t = torch.as_tensor(ids)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is not None and t.numel() == 0:
        raise MiniPeftError(f"{name} is empty; give the token ids of a text")
    if t is None or t.dim() > 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        got = f"{t.dtype} tensor of shape {list(t.shape)}" if t is not None else repr(ids)[:100]
        raise MiniPeftError(f"{name} must be token ids: a list of ints or a 1-D integer tensor; got {got}")
    if bool((t < 0).any()) or bool((t >= vocab_size).any()):
        raise MiniPeftError(f"{name} has ids outside the vocabulary [0, {vocab_size}): {t.tolist()[:10]}")
    return t.long().reshape(-1)


POSITIONS = ("real", "plain")


def check_positions(positions):
    """The positions convention: "real" (padding takes no position) or "plain" (every slot counts)."""
    if not isinstance(positions, str) or positions not in POSITIONS:
        raise MiniPeftError(f"positions must be 'real' (the default: padding takes no position, a row gets the positions "
                            f"it has alone) or 'plain' (every slot counts, padding included, as in transformers' and "
                            f"peft's forward); got {positions!r:.100}")
    return positions


def check_labels(labels, shape, vocab_size):
    """A torch.long tensor of the given shape holding token ids in [0, vocab_size) or IGNORE."""
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long or tuple(labels.shape) != tuple(shape):
        got = f"{labels.dtype} tensor of shape {list(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise MiniPeftError(f"labels must be a torch.long tensor of shape {list(shape)} ({IGNORE} where no loss is wanted); got {got}")
    if reading_values() and bool(((labels != IGNORE) & ((labels < 0) | (labels >= vocab_size))).any()):
        raise MiniPeftError(f"labels must be {IGNORE} or token ids in [0, {vocab_size})")


def check_hook_tensor(name, t, shape, device, dtype):
    """Check a hook tensor: shape[0] is the batch (B or 1 accepted), None accepts any size."""
    if not isinstance(t, torch.Tensor):
        raise MiniPeftError(f"{name} must be a tensor; got {type(t).__name__}")
    want = [f"{shape[0]} or 1"] + ["any" if s is None else s for s in shape[1:]]
    ok = t.dim() == len(shape) and all(s is None or d == s or (i == 0 and d == 1) for i, (d, s) in enumerate(zip(t.shape, shape)))
    if not ok or t.shape[-2] == 0:
        raise MiniPeftError(f"{name} must have shape {want} with at least one slot; got {list(t.shape)}")
    if t.device != device or t.dtype != dtype:
        raise MiniPeftError(f"{name} is {t.dtype} on {t.device}; the model is {dtype} on {device}")


def check_slot_mask(name, m, batch, n_slots):
    """A mask over a hook's slots (prefix_mask, prompt_mask): [batch or 1, n_slots]."""
    if not isinstance(m, torch.Tensor) or m.dim() != 2 or m.shape[1] != n_slots or m.shape[0] not in (1, batch):
        raise MiniPeftError(f"{name} must have shape [{batch} or 1, {n_slots}]; got {list(getattr(m, 'shape', []))}")


def check_prefix(name, prefix, n_layer, batch, n_head, head_dim, device, dtype):
    """One (key, value) pair per layer, each [batch or 1, n_head, P, head_dim], the same P in every layer."""
    if not isinstance(prefix, (list, tuple)) or len(prefix) != n_layer:
        got = len(prefix) if isinstance(prefix, (list, tuple)) else type(prefix).__name__
        raise MiniPeftError(f"{name} must hold one (key, value) pair per layer ({n_layer}); got {got}")
    first = prefix[0][0] if isinstance(prefix[0], (list, tuple)) and len(prefix[0]) else None
    P = first.shape[2] if isinstance(first, torch.Tensor) and first.dim() == 4 else None
    for i, pair in enumerate(prefix):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise MiniPeftError(f"{name}[{i}] must be a (key, value) pair")
        for part, t in zip(("key", "value"), pair):
            check_hook_tensor(f"{name}[{i}] {part}", t, (batch, n_head, P, head_dim), device, dtype)


# ---- generate()'s own arguments -------------------------------------------------------------

def check_decoding(max_new_tokens, temperature, top_k, eos_token_id):
    """Refuse bad generate() arguments before any computation (GPT-2 and T5 alike); returns them as
    Python numbers (numpy and 0-d torch numbers are taken)."""
    max_new_tokens = _integer("max_new_tokens", max_new_tokens, 0, "a non-negative integer")
    top_k = None if top_k is None else _integer("top_k", top_k, 1, "None or an integer >= 1")
    eos_token_id = None if eos_token_id is None else _integer("eos_token_id", eos_token_id, 0, "None or a token id (an integer >= 0)")
    real = not isinstance(temperature, bool) and (isinstance(temperature, numbers.Real) or
                                                  (isinstance(temperature, torch.Tensor) and temperature.numel() == 1))
    if not real or not 0 <= float(temperature) < math.inf:
        raise MiniPeftError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    return max_new_tokens, float(temperature), top_k, eos_token_id


def check_generate_room(attention_mask, n_used, max_new_tokens, n_positions, what):
    """GPT-2 generation: left padding only (new tokens follow the last one), and room in the context
    for n_used slots plus max_new_tokens."""
    if attention_mask is not None and bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
        raise MiniPeftError("generate needs left padding (zeros before the tokens); attention_mask has padding on the right")
    if n_used + max_new_tokens > n_positions:
        raise MiniPeftError(f"{what} + max_new_tokens {max_new_tokens} exceeds the context of {n_positions} positions")


def _integer(name, x, minimum, what):
    """x (an int, or a numpy / 0-d torch integer) as an int >= minimum, else a clear error."""
    try:
        value = None if isinstance(x, bool) else operator.index(x)
    except TypeError:
        value = None
    if value is None or value < minimum:
        raise MiniPeftError(f"{name} must be {what}, got {x!r}")
    return value


# ---- the models' configs ---------------------------------------------------------------------

def check_gpt_config(cfg, source="GPTConfig"):
    """A GPTConfig built by hand or read from a config.json: positive sizes, heads dividing the width,
    dropouts in [0, 1). Returns cfg."""
    for f in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        _positive(source, f, getattr(cfg, f))
    if cfg.n_inner is not None and (type(cfg.n_inner) is not int or cfg.n_inner < 1):
        raise MiniPeftError(f"{source}: n_inner must be a positive integer or null, got {cfg.n_inner!r}")
    if cfg.n_embd % cfg.n_head:
        raise MiniPeftError(f"{source}: n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
    for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
        _probability(source, name, getattr(cfg, name))
    return cfg


def check_t5_config(cfg, feed_forwards, source="T5Config"):
    """A T5Config built by hand or read from a config.json. Returns cfg."""
    for f in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
              "relative_attention_num_buckets", "relative_attention_max_distance"):
        _positive(source, f, getattr(cfg, f))
    buckets, distance = cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
    if buckets < 4:  # the encoder splits them by sign, then half exact
        raise MiniPeftError(f"{source}: relative_attention_num_buckets must be >= 4, got {buckets}")
    if distance <= buckets // 2:
        raise MiniPeftError(f"{source}: relative_attention_max_distance ({distance}) must exceed "
                            f"relative_attention_num_buckets // 2 ({buckets // 2})")
    if cfg.feed_forward not in feed_forwards:
        raise MiniPeftError(f"{source}: feed_forward must be one of {feed_forwards}, got {cfg.feed_forward!r}")
    _probability(source, "dropout", cfg.dropout)
    if type(cfg.layer_norm_eps) not in (int, float) or not 0 < cfg.layer_norm_eps < 1:
        raise MiniPeftError(f"{source}: layer_norm_eps must be a small positive number, got {cfg.layer_norm_eps!r}")
    for f in ("tie_word_embeddings", "bias"):
        if type(getattr(cfg, f)) is not bool:
            raise MiniPeftError(f"{source}: {f} must be true or false, got {getattr(cfg, f)!r}")
    return cfg


def _positive(source, name, value):
    if type(value) is not int or value < 1:
        raise MiniPeftError(f"{source}: {name} must be a positive integer, got {value!r}")


def _probability(source, name, value):
    if type(value) not in (int, float) or not 0 <= value < 1:
        raise MiniPeftError(f"{source}: {name} must be in [0, 1), got {value!r}")


# ---- one model call --------------------------------------------------------------------------

def check_bias_delta(deltas, slots, batch):
    """bias_delta {slot name: [width] or [batch or 1, width]}, in the model's dtype and device.
    slots: layers.bias_slots(model), every (name, module, attribute, role)."""
    if not deltas:
        return
    if not isinstance(deltas, dict):
        raise MiniPeftError(f"bias_delta must be a dict {{bias slot name: tensor}}; got {type(deltas).__name__}")
    modules = {name: (module, role) for name, module, _, role in slots}
    for name, d in deltas.items():
        if name not in modules:
            raise MiniPeftError(f"bias_delta names {name!r}, which is not a bias slot of this model")
        module, role = modules[name]
        w = module.parts[role]
        if not isinstance(d, torch.Tensor) or d.shape[-1:] != (w,) or d.dim() not in (1, 2) or (d.dim() == 2 and d.shape[0] not in (1, batch)):
            got = list(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
            raise MiniPeftError(f"bias_delta {name!r} must be [{w}] or [{batch}, {w}]; got {got}")
        if d.dtype != module.weight.dtype or d.device != module.weight.device:
            raise MiniPeftError(f"bias_delta {name!r} is {d.dtype} on {d.device}; the model is {module.weight.dtype} on {module.weight.device}")


def check_checkpointing(model):
    """model.checkpointing, a plain attribute: True or False."""
    if type(model.checkpointing) is not bool:
        raise MiniPeftError(f"model.checkpointing must be True or False; got {model.checkpointing!r:.60}")


def check_gpt_call(model, input_ids, attention_mask=None, *, prefix=None, prompt=None, bias_delta=None, prefix_mask=None,
                   infix_at=None, prompt_mask=None, positions="real", bias_slots=None):
    """The arguments of GPT.hidden_states (and so forward and generate); returns (B, T).
    bias_slots: layers.bias_slots(model), needed when bias_delta is given."""
    cfg, w = model.config, model.wte.weight
    check_checkpointing(model)
    B, T = check_ids("input_ids", input_ids, cfg.vocab_size)
    if attention_mask is not None:
        check_attention_mask("attention_mask", attention_mask, (B, T), every_row_real=prompt is None and prefix is None)
    if prompt is not None:
        check_hook_tensor("prompt", prompt, (B, None, cfg.n_embd), w.device, w.dtype)
    if prefix is not None:
        check_prefix("prefix", prefix, cfg.n_layer, B, cfg.n_head, cfg.head_dim, w.device, w.dtype)
    for name, m, hook in (("prefix_mask", prefix_mask, prefix), ("prompt_mask", prompt_mask, prompt)):
        if m is not None:
            if hook is None:
                raise MiniPeftError(f"{name} given without {name.split('_')[0]}")
            check_slot_mask(name, m, B, hook[0][0].shape[2] if name == "prefix_mask" else hook.shape[1])
    if infix_at is not None:
        if prefix is None:
            raise MiniPeftError("infix_at given without prefix")
        if not isinstance(infix_at, torch.Tensor) or infix_at.shape != (B,) or infix_at.dtype != torch.long or (reading_values() and bool((infix_at < 0).any())):
            got = f"{infix_at.dtype} {list(infix_at.shape)}" if isinstance(infix_at, torch.Tensor) else type(infix_at).__name__
            raise MiniPeftError(f"infix_at must be a torch.long tensor of {B} non-negative token indices; got {got}")
    check_bias_delta(bias_delta, bias_slots, B)
    check_positions(positions)
    return B, T


PREFIX_SITES = ("encoder", "decoder", "cross")  # T5's prefix dict keys


def check_t5_call(model, input_ids, attention_mask=None, *, decoder_input_ids=None, decoder_attention_mask=None,
                  prefix=None, prompt=None, bias_delta=None, prefix_mask=None, prompt_mask=None, encoder_out=None,
                  positions="real", bias_slots=None, decoding=True):
    """The arguments of T5.hidden_states (decoding=True) or T5.encode / generate (decoding=False);
    returns the batch size. bias_slots: layers.bias_slots(model), needed when bias_delta is given."""
    cfg, w = model.config, model.shared.weight
    check_checkpointing(model)
    if prefix is not None and (not isinstance(prefix, dict) or not set(prefix) <= set(PREFIX_SITES)):
        got = sorted(prefix) if isinstance(prefix, dict) else type(prefix).__name__
        raise MiniPeftError(f"prefix must be a dict with keys among {PREFIX_SITES}; got {got}")
    prefix = prefix or {}
    if encoder_out is None:
        B, T = check_ids("input_ids", input_ids, cfg.vocab_size)
        if attention_mask is not None:
            check_attention_mask("attention_mask", attention_mask, (B, T),
                                 every_row_real=prompt is None and "cross" not in prefix)  # else keys to attend to
        if prompt is not None:
            check_hook_tensor("prompt", prompt, (B, None, cfg.d_model), w.device, w.dtype)
    else:
        if input_ids is not None or attention_mask is not None or prompt is not None or "encoder" in prefix:
            raise MiniPeftError("encoder_out replaces input_ids, attention_mask, prompt and prefix['encoder'] "
                                "(give those to encode()); pass either encoder_out or input_ids")
        if not isinstance(encoder_out, (tuple, list)) or len(encoder_out) != 2:
            raise MiniPeftError("encoder_out must be the (hidden, mask) pair that encode() returns")
        hidden, mask = encoder_out
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or hidden.shape[-1] != cfg.d_model:
            raise MiniPeftError(f"encoder_out hidden must be [batch, seq, {cfg.d_model}]")
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(hidden.shape[:2]):
            raise MiniPeftError(f"encoder_out mask must be [batch, seq] = {list(hidden.shape[:2])}")
        B = hidden.shape[0]
    for key, n_layer in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers), ("cross", cfg.num_decoder_layers)):
        if key in prefix:
            check_prefix(f"prefix[{key!r}]", prefix[key], n_layer, B, cfg.num_heads, cfg.d_kv, w.device, w.dtype)
    if prefix_mask is not None and (not isinstance(prefix_mask, dict) or not set(prefix_mask) <= set(prefix)):
        raise MiniPeftError(f"prefix_mask must be a dict over the prefix's sites {sorted(prefix)}")
    for site, m in (prefix_mask or {}).items():
        check_slot_mask(f"prefix_mask[{site!r}]", m, B, prefix[site][0][0].shape[2])
    if prompt_mask is not None:
        if prompt is None:
            raise MiniPeftError("prompt_mask given without prompt")
        check_slot_mask("prompt_mask", prompt_mask, B, prompt.shape[1])
    check_bias_delta(bias_delta, bias_slots, B)
    check_positions(positions)
    if decoding:
        if decoder_input_ids is None:
            raise MiniPeftError("give decoder_input_ids, or labels (then decoder_input_ids = shift_right(labels))")
        Bd, Td = check_ids("decoder_input_ids", decoder_input_ids, cfg.vocab_size)
        if Bd != B:
            raise MiniPeftError(f"decoder_input_ids has batch {Bd}, the encoder input {B}")
        if decoder_attention_mask is not None:
            check_attention_mask("decoder_attention_mask", decoder_attention_mask, (B, Td))
    return B


def check_t5_labels(labels, decoder_input_ids, vocab_size):
    """T5's labels [B, T_dec] (-100 where no loss is wanted), shaped like decoder_input_ids when given."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2:
        raise MiniPeftError("labels must be a 2-D torch.long tensor [batch, seq] (-100 where no loss is wanted)")
    check_labels(labels, labels.shape, vocab_size)
    if isinstance(decoder_input_ids, torch.Tensor) and tuple(labels.shape) != tuple(decoder_input_ids.shape):
        raise MiniPeftError(f"labels must have the shape of decoder_input_ids {list(decoder_input_ids.shape)}; "
                            f"got {list(labels.shape)}")
