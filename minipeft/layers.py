"""Building blocks shared by GPT-2 and T5: linear layers and norms with bias slots, attention, KV cache.

Bias slots are the BitFit hook. Every bias is its own named parameter, or None when the slot is
absent (T5 has no biases; enable_bias() adds a zero one, which leaves the output unchanged).
A fused projection (GPT-2's c_attn computes query, key and value in one matmul) keeps one
slot per part, so "train the query bias only" means exactly the query slice.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import MiniPeftError


class Linear(nn.Module):
    """y = x @ weight.T + bias, with the output split into named parts, each with its own bias slot.

    parts: {role: width}, e.g. {"query": C, "key": C, "value": C} or {"mlp_in": 4C}. The slot of a
    single-part layer is the parameter `bias`; a fused layer has `bias_<role>` per part.
    """

    def __init__(self, d_in, parts, bias=True):
        super().__init__()
        self.parts = dict(parts)
        self.weight = nn.Parameter(torch.empty(sum(self.parts.values()), d_in))
        for role, width in self.parts.items():
            self.register_parameter(self.slot_name(role), nn.Parameter(torch.zeros(width)) if bias else None)

    def slot_name(self, role):
        return "bias" if len(self.parts) == 1 else f"bias_{role}"

    def bias_slots(self):
        """(role, parameter name) of every bias slot of this layer, present or not."""
        return [(role, self.slot_name(role)) for role in self.parts]

    def enable_bias(self, role=None):
        for r, name in self.bias_slots():
            if (role is None or r == role) and getattr(self, name) is None:
                setattr(self, name, nn.Parameter(self.weight.new_zeros(self.parts[r])))

    def full_bias(self):
        """The bias of the whole output [sum(parts)], or None when every slot is absent."""
        slots = [getattr(self, name) for _, name in self.bias_slots()]
        if all(s is None for s in slots):
            return None
        if len(slots) == 1:
            return slots[0]
        return torch.cat([s if s is not None else self.weight.new_zeros(w) for s, w in zip(slots, self.parts.values())])

    def forward(self, x):
        return F.linear(x, self.weight, self.full_bias())  # one addmm, bias slots included


class LayerNorm(nn.Module):
    """LayerNorm with a bias slot (GPT-2: eps 1e-5, bias present)."""

    def __init__(self, d, eps=1e-5, bias=True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def bias_slots(self):
        return [("norm", "bias")]

    def enable_bias(self, role=None):
        if self.bias is None:
            self.bias = nn.Parameter(self.weight.new_zeros(self.weight.shape))

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(LayerNorm):
    """T5's norm: x / sqrt(mean(x^2) + eps) * weight, variance in fp32, no mean subtraction, no bias.

    The bias slot starts absent; enabled (BitFit), it is added after the scale.
    """

    def __init__(self, d, eps=1e-6, bias=False):
        super().__init__(d, eps, bias)

    def forward(self, x):
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps).to(x.dtype)
        x = self.weight * x
        return x if self.bias is None else x + self.bias


def bias_slots(model):
    """Every bias slot of `model`: (qualified parameter name, module, attribute, role)."""
    out = []
    for module_name, module in model.named_modules():
        if isinstance(module, (Linear, LayerNorm)):
            for role, attr in module.bias_slots():
                out.append((f"{module_name}.{attr}" if module_name else attr, module, attr, role))
    return out


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
    [B or 1, H, P, D], is concatenated in front of the keys inside attention, so it is never
    written to a KV cache. mask [B or 1, 1 or H, T, P+S], bool (True = may attend) or additive float.
    """
    if prefix is not None:
        pk, pv = prefix
        B = k.shape[0]
        k = torch.cat([pk.expand(B, -1, -1, -1).to(k.dtype), k], dim=2)
        v = torch.cat([pv.expand(B, -1, -1, -1).to(v.dtype), v], dim=2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)


def build_mask(key_valid, n_query, *, n_prefix=0, causal=True):
    """Boolean mask [B, 1, T, P+S] for T queries that are the last T of S keys.

    key_valid [B, S] marks real (non-padding) keys. Prefix slots are visible to every query; real
    keys are visible when valid and (if causal) not in the future. Each query always sees itself,
    so a padding query's row is never empty (an empty row would make SDPA return NaN, and NaN
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
    if n_prefix:
        allowed = torch.cat([allowed.new_ones(B, n_query, n_prefix), allowed], dim=-1)
    return allowed[:, None]


class KVCache:
    """Keys/values of every layer for the tokens seen so far, preallocated [L, B, H, max_len, D].

    `valid` [B, max_len] marks real tokens (left padding stays masked), `seen` [B] counts them so
    that positions keep counting real tokens only. Prefixes are never stored here (see attend()).
    """

    def __init__(self, n_layer, batch, n_head, max_len, head_dim, *, device=None, dtype=torch.float32):
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.seen = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = 0
        self.max_len = max_len

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
