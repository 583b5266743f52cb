"""The runtime argument checks the models share, in one place: the public entries (GPT/T5 forward
and generate, KVCache.start_with, PromptTuning's shared-prompt path) call these before any
computation; the math below them trusts its inputs. (Checks of one model's own hook arguments
stay at its entry, e.g. GPT._check_hook_masks, and bias_delta's in layers.bias_deltas.)

Each raises one MiniPeftError that names what is wrong and what was expected. (Untrusted files:
safetensors headers, configs, adapter metadata, are checked where they are read, in minipeft/io.)
"""

import math
import numbers
import operator

import torch

from .errors import MiniPeftError

IGNORE = -100  # the label of a position without a loss (as in transformers)


def check_ids(name, ids, vocab_size):
    """A 2-D torch.long tensor of token ids in [0, vocab_size) with at least one token; returns (B, T)."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
        got = f"{ids.dtype} tensor of shape {list(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise MiniPeftError(f"{name} must be a 2-D torch.long tensor [batch, seq]; got {got}")
    B, T = ids.shape
    if B == 0 or T == 0:
        raise MiniPeftError(f"{name} is empty (shape {list(ids.shape)}); give at least one token per row")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise MiniPeftError(f"{name}: token ids must be in [0, {vocab_size}); got min {int(ids.min())}, max {int(ids.max())}")
    return B, T


def check_attention_mask(name, mask, shape, *, every_row_real=False):
    """A [B, T] mask of 1 (real token) and 0 (padding), bool or numeric, shaped like its ids; with
    every_row_real, each row has a real token (when nothing else, a prompt or prefix, gives it keys)."""
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(shape):
        got = f"shape {list(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise MiniPeftError(f"{name} must have the shape of its ids {list(shape)} (1 = real token, 0 = padding); got {got}")
    if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
        other = mask[(mask != 0) & (mask != 1)].flatten()[0].item()
        raise MiniPeftError(f"{name} must hold only 1 (real token) and 0 (padding); got {other}. "
                            f"An additive mask (0 = attend, -inf = not) is not one: pass (mask == 0).long()")
    empty = (~mask.bool().any(1)).nonzero()[:, 0].tolist() if every_row_real else []
    if empty:
        raise MiniPeftError(f"{name} has rows {empty[:5]} without any real token (all 0): they would attend to nothing. "
                            f"An additive mask (0 = attend) reads as all padding: pass (mask == 0).long()")


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
    if bool(((labels != IGNORE) & ((labels < 0) | (labels >= vocab_size))).any()):
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


def _integer(name, x, minimum, what):
    """x (an int, or a numpy / 0-d torch integer) as an int >= minimum, else a clear error."""
    try:
        value = None if isinstance(x, bool) else operator.index(x)
    except TypeError:
        value = None
    if value is None or value < minimum:
        raise MiniPeftError(f"{name} must be {what}, got {x!r}")
    return value
