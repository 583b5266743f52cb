"""Building blocks shared by GPT-2 and T5: linear layers and norms with bias slots, attention, KV cache.

Bias slots are the BitFit hook. Every bias is its own named parameter, or None when the slot is
absent (T5 has no biases; enable_bias() adds a zero one, which leaves the output unchanged).
A fused projection (GPT-2's c_attn computes query, key and value in one matmul) keeps one
slot per part, so "train the query bias only" means exactly the query slice.
"""

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from ..checks import check_prefix, check_slot_mask
from ..errors import MiniPeftError
from ..speed import linear


class BiasSlots(nn.Module):
    """Named bias slots over an output split into parts {role: width}.

    The slot of a single-part layer is the parameter `bias`; a fused layer has `bias_<role>` per
    part. A slot may be None (absent). `self.delta` holds, for one call only, additions per role:
    [width] is folded into the bias (no extra pass), [B, width] is added per row (one adapter per
    row, see bias_deltas()).
    """

    def _init_slots(self, parts, bias):
        self.parts = dict(parts)
        self.delta = {}
        for role, width in self.parts.items():
            self.register_parameter(self.slot_name(role), nn.Parameter(torch.zeros(width)) if bias else None)

    def slot_name(self, role):
        return "bias" if len(self.parts) == 1 else f"bias_{role}"

    def bias_slots(self):
        """(role, parameter name) of every bias slot of this layer, present or not."""
        return [(role, self.slot_name(role)) for role in self.parts]

    def enable_bias(self, role=None):
        """Create absent slots (all, or the one of `role`) as zeros: the output is unchanged."""
        for r, name in self.bias_slots():
            if (role is None or r == role) and getattr(self, name) is None:
                setattr(self, name, nn.Parameter(self.weight.new_zeros(self.parts[r])))

    def full_bias(self):
        """The bias of the whole output [sum(parts)] with 1-D deltas folded in, or None."""
        if not self.delta and len(self.parts) == 1:  # the usual case, on every call: no list, no loop
            return self.bias
        pieces = []
        for role, name in self.bias_slots():
            b, d = getattr(self, name), self.delta.get(role)
            if d is not None and d.dim() == 1:
                b = d if b is None else b + d
            pieces.append(b)
        if all(p is None for p in pieces):
            return None
        if len(pieces) == 1:
            return pieces[0]
        return torch.cat([p if p is not None else self.weight.new_zeros(w) for p, w in zip(pieces, self.parts.values())])

    def row_delta(self):
        """Per-row deltas [B, 1, sum(parts)], or None."""
        if not self.delta:
            return None
        rows = [self.delta.get(role) for role in self.parts]
        rows = [r if r is not None and r.dim() == 2 else None for r in rows]
        if all(r is None for r in rows):
            return None
        B = next(r.shape[0] for r in rows if r is not None)
        return torch.cat([r if r is not None else self.weight.new_zeros(B, w) for r, w in zip(rows, self.parts.values())], -1)[:, None]


class Linear(BiasSlots):
    """y = x @ weight.T + bias, output split into parts {role: width}, each with its own bias slot,
    e.g. {"query": C, "key": C, "value": C} (GPT-2's fused c_attn) or {"mlp_in": 4C}."""

    def __init__(self, d_in, parts, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(sum(parts.values()), d_in))
        self._init_slots(parts, bias)

    def forward(self, x):
        y = linear(x, self.weight, self.full_bias())  # == F.linear (speed.linear: faster for a few rows)
        rows = self.row_delta()
        return y if rows is None else y + rows


class LayerNorm(BiasSlots):
    """LayerNorm with a bias slot (GPT-2: eps 1e-5, bias present)."""

    def __init__(self, d, eps=1e-5, bias=True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self._init_slots({"norm": d}, bias)

    def forward(self, x):
        y = F.layer_norm(x, self.weight.shape, self.weight, self.full_bias(), self.eps)
        rows = self.row_delta()
        return y if rows is None else y + rows


class RMSNorm(LayerNorm):
    """T5's norm: x / sqrt(mean(x^2) + eps) * weight, variance in fp32, no mean subtraction, no bias.

    The bias slot starts absent; enabled (BitFit), it is added after the scale.
    """

    def __init__(self, d, eps=1e-6, bias=False):
        super().__init__(d, eps, bias)

    def forward(self, x):
        variance = x.float().pow(2).mean(-1, keepdim=True)
        y = self.weight * (x * torch.rsqrt(variance + self.eps).to(x.dtype))
        bias, rows = self.full_bias(), self.row_delta()
        if bias is not None:
            y = y + bias
        return y if rows is None else y + rows


def bias_slots(model):
    """Every bias slot of `model`: (qualified parameter name, module, attribute, role)."""
    out = []
    for module_name, module in model.named_modules():
        if isinstance(module, BiasSlots):
            for role, attr in module.bias_slots():
                out.append((f"{module_name}.{attr}" if module_name else attr, module, attr, role))
    return out


@contextlib.contextmanager
def bias_deltas(slots, deltas):
    """For the duration of one call, add deltas {slot name: [width] or [B, width]} to bias slots.

    This is how an adapter trains or serves biases without writing into the base model.
    slots: bias_slots(model); deltas as checks.check_bias_delta accepts them.
    """
    modules = {name: (module, role) for name, module, _, role in slots} if deltas else {}
    per_module = {}
    for name, d in (deltas or {}).items():
        module, role = modules[name]
        per_module.setdefault(module, {})[role] = d
    with module_deltas(per_module):
        yield


@contextlib.contextmanager
def module_deltas(per_module):
    """Set the deltas {module: {role: delta}} of bias-slot modules; put back what they had after."""
    before = {module: module.delta for module in per_module}
    try:
        for module, deltas in per_module.items():
            module.delta = deltas
        yield
    finally:
        for module, deltas in before.items():
            module.delta = deltas


# ---- activation checkpointing ------------------------------------------------------------------

def run_block(block, *args, checkpoint=False):
    """block(*args); with checkpoint, while training with gradients, through activation checkpointing
    (trades compute for memory): the block keeps only its inputs for backward and runs again there
    to get the rest, so one block's activations are held at a time instead of every block's.

    Every hook passes through. Prefixes, prompt states and masks are inputs like x: the rerun sees
    them again. Dropout draws the same masks (checkpoint replays the RNG state). The bias deltas of
    this call are set again for the rerun, which runs in backward, after bias_deltas() has removed them.
    """
    if not (checkpoint and block.training and torch.is_grad_enabled()):
        return block(*args)
    deltas = {m: m.delta for m in block.modules() if isinstance(m, BiasSlots) and m.delta}  # gone by backward

    def block_with_deltas(*args):
        with module_deltas(deltas):
            return block(*args)
    return torch.utils.checkpoint.checkpoint(block_with_deltas, *args, use_reentrant=False)


# ---- attention -------------------------------------------------------------------------------

def split_heads(x, n_head):
    """[B, T, H*D] -> [B, H, T, D]"""
    B, T, _ = x.shape
    return x.view(B, T, n_head, -1).transpose(1, 2)


def merge_heads(x):
    """[B, H, T, D] -> [B, T, H*D]"""
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)


def attend(q, k, v, *, prefix=None, mask=None, is_causal=False, scale=None, dropout_p=0.0):
    """Scaled dot-product attention over [prefix; keys].

    q [B, H, T, D]; k, v [B, H, S, D] (cached keys already included); prefix (pk, pv), each
    [B or 1, H, P, D], is concatenated in front of the keys inside attention, so a forward pass
    never writes it to a KV cache (generate puts it there once instead: KVCache.start_with). mask [B or 1, 1 or H, T, P+S], bool (True = may attend) or additive float.
    """
    if prefix is not None:
        pk, pv = prefix
        B = k.shape[0]
        k = torch.cat([pk.expand(B, -1, -1, -1).to(k.dtype), k], dim=2)
        v = torch.cat([pv.expand(B, -1, -1, -1).to(v.dtype), v], dim=2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)


def build_mask(key_valid, n_query, *, n_prefix=0, prefix_mask=None, infix_at=None, causal=True):
    """Boolean mask [B, 1, T, P+S] for T queries that are the last T of S keys.

    key_valid [B, S] marks real (non-padding) keys. Prefix slots (n_prefix of them, or
    prefix_mask [B or 1, P] where rows use fewer) are visible to every query, or with
    infix_at [B] only to queries at key index >= infix_at (an infix). Real keys are
    visible when valid and (if causal) not in the future. Each query always sees itself, so a
    padding query's row is never empty (an empty row would make SDPA return NaN, and NaN
    poisons the backward pass even where the loss ignores that position).
    """
    B, S = key_valid.shape
    device = key_valid.device
    q_pos = torch.arange(S - n_query, S, device=device)[:, None]  # [T, 1] each query's key index
    k_pos = torch.arange(S, device=device)[None, :]               # [1, S]
    allowed = key_valid[:, None, :]                               # [B, 1, S]
    if causal:
        allowed = allowed & (k_pos <= q_pos)
    allowed = allowed | (k_pos == q_pos)                          # [B, T, S]
    if prefix_mask is None and n_prefix:
        prefix_mask = key_valid.new_ones(1, n_prefix)
    if prefix_mask is not None:
        visible = prefix_mask[:, None, :].expand(B, n_query, -1)  # [B, T, P]
        if infix_at is not None:
            visible = visible & (q_pos[None] >= infix_at[:, None, None])
        allowed = torch.cat([visible, allowed], dim=-1)
    return allowed[:, None]


class KVCache:
    """Keys/values of every layer for the tokens seen so far, preallocated [L, B, H, max_len, D].

    `valid` [B, max_len] marks real tokens (left padding stays masked), `seen` [B] counts them so
    that positions keep counting real tokens only (positions="plain" counts every slot: `length`).
    A prefix is not stored here by forward passes (see attend()); generation may put one in front
    with start_with().
    """

    def __init__(self, n_layer, batch, n_head, max_len, head_dim, *, device=None, dtype=torch.float32):
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.seen = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = 0
        self.max_len = max_len

    def start_with(self, prefix, prefix_mask=None):
        """Put a prefix, per layer (k, v) [B or 1, H, P, D], in the first P slots, as if P tokens had
        been seen (those prefix_mask [B or 1, P] marks). Keys, masks and positions are then those of
        attend(prefix=...) with build_mask(prefix_mask=...): the prefix keys come first, every later
        query sees the valid ones, and positions move up by their number. Decoding then needs no
        [prefix; keys] concatenation per layer and step (6% of a GPT-2 small decoding step)."""
        L, B, H, _, D = self.k.shape
        check_prefix("prefix", prefix, L, B, H, D, self.k.device, self.k.dtype)
        P = prefix[0][0].shape[2]
        if self.length or P > self.max_len:
            raise MiniPeftError(f"start_with needs an empty cache with room for the prefix ({P} of {self.max_len} slots)")
        if prefix_mask is not None:
            check_slot_mask("prefix_mask", prefix_mask, B, P)
        for layer, (pk, pv) in enumerate(prefix):
            self.k[layer, :, :, :P] = pk
            self.v[layer, :, :, :P] = pv
        valid = self.valid.new_ones(1, P) if prefix_mask is None else prefix_mask.bool()
        self.valid[:, :P] = valid
        self.seen += valid.sum(1)
        self.length = P

    def append_mask(self, valid):
        """Record the validity of the next T slots; returns the mask of all keys so far [B, length+T]."""
        T = valid.shape[1]
        if self.length + T > self.max_len:
            raise MiniPeftError(f"KV cache holds {self.max_len} positions; {self.length} used, {T} more requested")
        self.valid[:, self.length:self.length + T] = valid
        return self.valid[:, :self.length + T]

    def update(self, layer, k, v):
        """Write this step's keys/values [B, H, T, D] for `layer`; returns all keys/values so far."""
        T = k.shape[2]
        self.k[layer, :, :, self.length:self.length + T] = k
        self.v[layer, :, :, self.length:self.length + T] = v
        return self.k[layer, :, :, :self.length + T], self.v[layer, :, :, :self.length + T]

    def advance(self, valid):
        self.length += valid.shape[1]
        self.seen += valid.sum(1)


class KeepKeysValues:
    """Stands in for a KVCache in one pass: keeps each layer's keys/values as computed (gradients
    included). GPT.keys_values uses it to hand a prompt's states over as a prefix."""

    def __init__(self):
        self.pairs = []

    def update(self, layer, k, v):
        self.pairs.append((k, v))
        return k, v
