"""T5 (encoder-decoder), from scratch, with the three PEFT hooks built in. Numerics match
transformers' T5ForConditionalGeneration: original T5 (ReLU MLP, tied head) and v1.1 / FLAN-T5
(gated tanh-GELU, untied head).

Hooks, with the names and shapes GPT-2 uses (models/gpt.py):
  1. bias slots: every projection (query, key, value, attn_out of self- and cross-attention;
     mlp_in, mlp_out) and every norm (norm). T5 has no biases, so the slots start absent;
     enable_bias() on a layer (see layers.bias_slots) adds a zero bias: outputs stay bit-identical.
     bias_delta {slot name: [width] or [B, width]} adds to them for one call, as in GPT-2.
  2. prefix:  forward(..., prefix={"encoder": [...], "decoder": [...], "cross": [...]}), any subset;
     each a list with one (key, value) pair per layer of that stack, each [B or 1, n_heads, P, d_kv],
     concatenated in front of that layer's keys/values inside attention (never in a KV cache).
     Prefix slots are visible to every query; padding stays masked.
  3. prompt:  forward(..., prompt=[B or 1, P, d_model]) prepended to the encoder's token embeddings;
     the encoder mask gets P ones, so the decoder also cross-attends to the prompt slots. The
     decoder's output (and logits) keep the shape of decoder_input_ids.

Activation checkpointing: model.checkpointing = True (training only) keeps each block's inputs and
recomputes the rest in backward; every hook passes through (layers.run_block).

Relative position bias of a prefix (T5 has no absolute positions; the bias depends on
key_pos - query_pos): in each self-attention the P prefix slots sit at positions 0..P-1 and the
real tokens at P, P+1, ... In the decoder that is exactly transformers with the prefix passed as
past keys/values (peft's prefix tuning); the encoder follows the same rule, so a prefix acts like P
tokens written in front of the input (a prompt follows it) and distances between real tokens never
change. Cross-attention has no position bias. positions="real" (the default) counts valid slots
only, so a row of a padded or mixed-task batch gets the bias it has alone; positions="plain" counts
every slot (transformers' plain indices: peft's numbers on left-padded batches). docs/models.md.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import IGNORE, check_decoding, check_ids, check_t5_call, check_t5_config, check_t5_labels, reading_values
from ..errors import MiniPeftError
from ..speed import linear, linear_cross_entropy
from .generation import decode
from .layers import KVCache, Linear, RMSNorm, attend, bias_deltas, bias_slots, build_mask, merge_heads, run_block, split_heads

PAD_ID = 0            # also the decoder's start token
EOS_ID = 1
FEED_FORWARD = ("relu", "gated-gelu")


@dataclass
class T5Config:
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64                          # per-head width; num_heads * d_kv may differ from d_model
    d_ff: int = 2048
    num_layers: int = 6                     # encoder blocks
    num_decoder_layers: int | None = None   # None: same as num_layers
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout: float = 0.0
    layer_norm_eps: float = 1e-6
    feed_forward: str = "relu"              # "relu" (T5) | "gated-gelu" (T5 v1.1, FLAN-T5)
    tie_word_embeddings: bool = True        # tied: head = shared, scaled by d_model**-0.5; untied: lm_head
    bias: bool = False                      # start with bias slots present (T5 has none)

    def __post_init__(self):
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers

    @classmethod
    def named(cls, name, **overrides):
        key = name.removeprefix("google/").removeprefix("google-t5/")
        if key not in SIZES:
            raise MiniPeftError(f"unknown T5 size {name!r}; known: {', '.join(SIZES)}")
        return cls(**{**SIZES[key], **overrides})

    @property
    def inner_dim(self):
        return self.num_heads * self.d_kv

    def validate(self, source="T5Config"):
        return check_t5_config(self, FEED_FORWARD, source)  # sizes positive, buckets usable, dropout in [0, 1)


_V11 = dict(feed_forward="gated-gelu", tie_word_embeddings=False)
SIZES = {
    "t5-small":      dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8),            # 60.5M
    "t5-base":       dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),          # 223M
    "t5-large":      dict(d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16),         # 738M
    "t5-v1_1-small": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6, **_V11),    # 77.0M
    "t5-v1_1-base":  dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12, **_V11),  # 248M
    "t5-v1_1-large": dict(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16, **_V11), # 783M
    "tiny": dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,           # tests
                 relative_attention_num_buckets=8, relative_attention_max_distance=16),
    "char-small": dict(vocab_size=130, d_model=96, d_kv=32, d_ff=384, num_layers=2, num_heads=3),    # train_char.py
    "char":       dict(vocab_size=130, d_model=128, d_kv=32, d_ff=512, num_layers=3, num_heads=4),   # --arch t5 --size
    "char-large": dict(vocab_size=130, d_model=192, d_kv=32, d_ff=768, num_layers=4, num_heads=6),   # small/medium/large
}
for _size in ("small", "base", "large"):  # FLAN-T5 is T5 v1.1 fine-tuned: same shapes
    SIZES[f"flan-t5-{_size}"] = SIZES[f"t5-v1_1-{_size}"]


def relative_position_bucket(relative_position, bidirectional, num_buckets, max_distance):
    """Bucket of key_pos - query_pos: exact for small distances, log-spaced up to max_distance.

    Bidirectional (encoder): half the buckets for keys after the query. Causal (decoder): keys
    after the query do not occur, all buckets go to keys before it. The float ops are those of
    mesh-tensorflow / transformers, so boundary distances land in the same bucket.
    """
    bucket = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket = (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    log_ratio = torch.log(distance.clamp(min=max_exact).float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return bucket + torch.where(distance < max_exact, distance, large)


def shift_right(labels, start_id=PAD_ID, pad_id=PAD_ID):
    """Teacher-forcing decoder inputs: [start, labels[:-1]], with ignored labels (-100) turned into pad."""
    shifted = torch.cat([labels.new_full((labels.shape[0], 1), start_id), labels[:, :-1]], dim=1)
    return shifted.masked_fill(shifted == IGNORE, pad_id)


def gelu_tanh(x):
    """GELU, tanh approximation, written out as transformers' gelu_new: F.gelu(approximate="tanh")
    is the same function but rounds differently, and an untied head amplifies that past 1e-5."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Attention(nn.Module):
    """Multi-head attention without 1/sqrt(d) scaling (T5 folds it into the init); the position
    bias arrives inside the additive mask."""

    def __init__(self, cfg):
        super().__init__()
        d, inner = cfg.d_model, cfg.inner_dim
        self.n_heads, self.dropout = cfg.num_heads, cfg.dropout
        self.q = Linear(d, {"query": inner}, bias=cfg.bias)
        self.k = Linear(d, {"key": inner}, bias=cfg.bias)
        self.v = Linear(d, {"value": inner}, bias=cfg.bias)
        self.o = Linear(inner, {"attn_out": d}, bias=cfg.bias)

    def kv(self, x):
        """[B, S, d_model] -> keys, values [B, H, S, d_kv] (cross-attention computes them once)."""
        return split_heads(self.k(x), self.n_heads), split_heads(self.v(x), self.n_heads)

    def forward(self, x, mask, *, kv=None, prefix=None, cache=None, layer=0):
        q = split_heads(self.q(x), self.n_heads)                  # [B, H, T, d_kv]
        k, v = self.kv(x) if kv is None else kv
        if cache is not None:
            k, v = cache.update(layer, k, v)
        y = attend(q, k, v, prefix=prefix, mask=mask, scale=1.0, dropout_p=self.dropout if self.training else 0.0)
        return self.o(merge_heads(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, d_ff, bias = cfg.d_model, cfg.d_ff, cfg.bias
        self.gated = cfg.feed_forward == "gated-gelu"
        if self.gated:
            self.wi_0 = Linear(d, {"mlp_in": d_ff}, bias=bias)
            self.wi_1 = Linear(d, {"mlp_in": d_ff}, bias=bias)
        else:
            self.wi = Linear(d, {"mlp_in": d_ff}, bias=bias)
        self.wo = Linear(d_ff, {"mlp_out": d}, bias=bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        if self.gated:  # v1.1: gelu(x W0) * (x W1)
            h = gelu_tanh(self.wi_0(x)) * self.wi_1(x)
        else:
            h = F.relu(self.wi(x))
        return self.wo(self.dropout(h))


class Block(nn.Module):
    """Pre-norm residual block: self-attention, [cross-attention,] MLP."""

    def __init__(self, cfg, is_decoder):
        super().__init__()
        d, eps, bias = cfg.d_model, cfg.layer_norm_eps, cfg.bias
        self.attn_norm, self.attn = RMSNorm(d, eps, bias), Attention(cfg)
        if is_decoder:
            self.cross_norm, self.cross = RMSNorm(d, eps, bias), Attention(cfg)
        self.mlp_norm, self.mlp = RMSNorm(d, eps, bias), MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask, prefix, cache, layer, cross_kv=None, cross_mask=None, cross_prefix=None):
        x = x + self.drop(self.attn(self.attn_norm(x), mask, prefix=prefix, cache=cache, layer=layer))
        if cross_kv is not None:
            x = x + self.drop(self.cross(self.cross_norm(x), cross_mask, kv=cross_kv, prefix=cross_prefix))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class Stack(nn.Module):
    """The encoder (bidirectional) or the decoder (causal, with cross-attention).

    One relative-position table per stack (the checkpoint keeps it in block 0); its bias, with
    the mask already applied, is computed once and used by every block.
    """

    def __init__(self, cfg, is_decoder):
        super().__init__()
        self.is_decoder = is_decoder
        self.num_buckets, self.max_distance = cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)
        n = cfg.num_decoder_layers if is_decoder else cfg.num_layers
        self.blocks = nn.ModuleList(Block(cfg, is_decoder) for _ in range(n))
        self.final_norm = RMSNorm(cfg.d_model, cfg.layer_norm_eps, cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def position_bias(self, key_valid, n_query, positions="real"):
        """[B or 1, H, T, S] for T queries that are the last T of S keys. "real": positions count
        valid keys only (padding and unused prefix/prompt slots take none), so a row's bias is what
        it would be alone; with no padding they are the plain indices transformers uses, which
        "plain" uses always."""
        if positions == "plain" or (reading_values() and bool(key_valid.all())):
            pos = torch.arange(key_valid.shape[1], device=key_valid.device)[None]  # [1, S]
        else:
            pos = key_valid.long().cumsum(1) - 1                                    # [B, S]
        rel = pos[:, None, :] - pos[:, -n_query:, None]                             # [B, T, S] key - query
        buckets = relative_position_bucket(rel, not self.is_decoder, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(0, 3, 1, 2)

    def forward(self, x, key_valid, *, prefix=None, prefix_mask=None, cache=None, cross_kv=None, cross_mask=None,
                cross_prefix=None, positions="real", checkpointing=False):
        """x [B, T, d_model] -> [B, T, d_model]. key_valid [B, S] marks the real keys (S = T, or
        the cached tokens + T); prefix slots take key positions 0..P-1 in front of them, and
        prefix_mask [B or 1, P] marks the slots a row uses (left-padded: distances stay the same).
        positions: "real" or "plain" (see position_bias). checkpointing: T5.checkpointing."""
        T, B = x.shape[1], x.shape[0]
        P = 0 if prefix is None else prefix[0][0].shape[2]
        slots = key_valid.new_ones(B, P) if prefix_mask is None else prefix_mask.expand(B, -1)
        mask = self.position_bias(torch.cat([slots, key_valid], 1), T, positions)  # [B or 1, H, T, P+S]
        if not (reading_values() and bool(key_valid.all()) and prefix_mask is None and (not self.is_decoder or T == 1)):
            allowed = build_mask(key_valid, T, n_prefix=P, prefix_mask=prefix_mask, causal=self.is_decoder)  # [B, 1, T, P+S]
            mask = torch.where(allowed, mask, float("-inf"))                    # masked keys get zero weight
        checkpoint = checkpointing and cache is None                        # (not decoding: a rerun would write the cache again)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = run_block(block, x, mask, None if prefix is None else prefix[i], cache, i,
                          None if cross_kv is None else cross_kv[i], cross_mask,
                          None if cross_prefix is None else cross_prefix[i], checkpoint=checkpoint)
        return self.drop(self.final_norm(x))


class T5(nn.Module):
    arch = "t5"

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg.validate()
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)  # encoder and decoder input; the tied head
        self.encoder = Stack(cfg, is_decoder=False)
        self.decoder = Stack(cfg, is_decoder=True)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.checkpointing = False  # True: activation checkpointing per block while training (layers.run_block)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self):
        """transformers' T5 init (initializer_factor 1): unit-variance outputs without 1/sqrt(d) in attention."""
        cfg = self.config
        nn.init.normal_(self.shared.weight, std=1.0)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=1.0)
        for m in self.modules():
            if isinstance(m, Stack):
                nn.init.normal_(m.relative_attention_bias.weight, std=cfg.d_model ** -0.5)
            elif isinstance(m, Attention):
                nn.init.normal_(m.q.weight, std=(cfg.d_model * cfg.d_kv) ** -0.5)
                nn.init.normal_(m.k.weight, std=cfg.d_model ** -0.5)
                nn.init.normal_(m.v.weight, std=cfg.d_model ** -0.5)
                nn.init.normal_(m.o.weight, std=cfg.inner_dim ** -0.5)
            elif isinstance(m, MLP):
                for w in ((m.wi_0, m.wi_1) if m.gated else (m.wi,)):
                    nn.init.normal_(w.weight, std=cfg.d_model ** -0.5)
                nn.init.normal_(m.wo.weight, std=cfg.d_ff ** -0.5)

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())  # a tied head is `shared`, counted once

    # ---- what the PEFT methods need to know about this model --------------------------------

    def input_embeddings(self):
        return self.shared

    def prefix_sites(self):
        """{site: (n_layer, n_heads, d_kv)}: where a prefix can go (the keys of the prefix dict)."""
        cfg = self.config
        return {"encoder": (cfg.num_layers, cfg.num_heads, cfg.d_kv),
                "decoder": (cfg.num_decoder_layers, cfg.num_heads, cfg.d_kv),
                "cross": (cfg.num_decoder_layers, cfg.num_heads, cfg.d_kv)}

    def pack_prefix(self, sites):
        """The prefix hook argument from {site: [(key, value)] * n_layer}: that dict itself."""
        return dict(sites)

    @torch.no_grad()
    def prefix_from_tokens(self, ids):
        """{site: [(key, value)] * n_layer}, each [B, H, T, d_kv]: the model's own keys/values of ids.

        encoder: its self-attention over ids; cross: the cross-attention keys/values of that
        encoding; decoder: its self-attention with ids as decoder input, attending to that encoding.
        """
        cfg, w = self.config, self.shared.weight
        B, T = check_ids("ids", ids, cfg.vocab_size)
        caches = {site: KVCache(L, B, H, T, D, device=w.device, dtype=w.dtype) for site, (L, H, D) in self.prefix_sites().items()
                  if site != "cross"}
        hidden, valid = self._encode(ids, None, None, None, cache=caches["encoder"])
        cross_kv = self._cross_kv(hidden)
        self._decode(ids, None, valid, cross_kv, {}, caches["decoder"])
        out = {site: [(c.k[i], c.v[i]) for i in range(c.k.shape[0])] for site, c in caches.items()}
        return {**out, "cross": cross_kv}

    # ---- forward -----------------------------------------------------------------------------

    def forward(self, input_ids=None, decoder_input_ids=None, attention_mask=None, *, labels=None, **hooks):
        """Logits [B, T_dec, vocab] aligned with decoder_input_ids; given labels [B, T_dec], the mean
        loss instead (labels -100 where no loss is wanted; not shifted again: decoder_input_ids
        default to shift_right(labels)). hooks: as hidden_states takes them."""
        if labels is not None:  # checked before any computation, like everything hidden_states takes
            check_t5_labels(labels, decoder_input_ids, self.config.vocab_size)
            if decoder_input_ids is None:
                decoder_input_ids = shift_right(labels)
        x, weight = self._head_input(self.hidden_states(input_ids, decoder_input_ids, attention_mask, **hooks))
        if labels is None:
            return linear(x, weight)                                        # == F.linear (speed.linear)
        # == F.cross_entropy(F.linear(x, weight).flatten(0, 1), labels.flatten()), without keeping the logits
        return linear_cross_entropy(x.flatten(0, 1), weight, labels.flatten())

    def hidden_states(self, input_ids=None, decoder_input_ids=None, attention_mask=None, *, decoder_attention_mask=None,
                      prefix=None, prompt=None, bias_delta=None, prefix_mask=None, prompt_mask=None, encoder_out=None,
                      cache=None, positions="real"):
        """The decoder's final hidden states [B, T_dec, d_model]: what the LM head reads, or a task head.

        input_ids [B, T] and attention_mask [B, T] (1 = real, 0 = padding) feed the encoder, or give
        encoder_out = encode(...)'s (hidden, mask) instead. decoder_input_ids [B, T_dec];
        decoder_attention_mask [B, T_dec]; cache: a KVCache for the decoder's self-attention (the
        cross-attention keys/values are recomputed per call; generate() computes them once).
        Hooks: prefix, prompt, bias_delta (see the module docstring); prefix_mask {site: [B or 1, P]}
        and prompt_mask [B or 1, P] for rows that use fewer slots (many tasks in one batch).
        positions: "real" (padding takes no position) or "plain" (every slot counts: peft's numbers
        on padded batches), in both stacks (see the module docstring; encode() takes its own).
        """
        slots = bias_slots(self) if bias_delta else ()
        check_t5_call(self, input_ids, attention_mask, decoder_input_ids=decoder_input_ids,
                      decoder_attention_mask=decoder_attention_mask, prefix=prefix, prompt=prompt, bias_delta=bias_delta,
                      prefix_mask=prefix_mask, prompt_mask=prompt_mask, encoder_out=encoder_out, positions=positions,
                      bias_slots=slots)
        prefix, prefix_mask = prefix or {}, prefix_mask or {}
        with bias_deltas(slots, bias_delta):                               # BitFit: this call's bias deltas
            if encoder_out is None:
                encoder_out = self._encode(input_ids, attention_mask, prefix.get("encoder"), prompt,
                                           prefix_mask.get("encoder"), prompt_mask, positions=positions)
            hidden, enc_valid = encoder_out
            return self._decode(decoder_input_ids, decoder_attention_mask, enc_valid, self._cross_kv(hidden), prefix,
                                cache, prefix_mask, positions)

    def encode(self, input_ids, attention_mask=None, *, prefix=None, prompt=None, bias_delta=None, prefix_mask=None,
               prompt_mask=None, positions="real"):
        """Run the encoder once: (hidden [B, P_prompt + T, d_model], mask [B, P_prompt + T] bool).
        The pair is what forward(encoder_out=...) takes. Only prefix["encoder"] is used here."""
        slots = bias_slots(self) if bias_delta else ()
        check_t5_call(self, input_ids, attention_mask, prefix=prefix, prompt=prompt, bias_delta=bias_delta,
                      prefix_mask=prefix_mask, prompt_mask=prompt_mask, positions=positions, bias_slots=slots, decoding=False)
        with bias_deltas(slots, bias_delta):
            return self._encode(input_ids, attention_mask, (prefix or {}).get("encoder"), prompt,
                                (prefix_mask or {}).get("encoder"), prompt_mask, positions=positions)

    def _encode(self, input_ids, attention_mask, prefix, prompt, prefix_mask=None, prompt_mask=None, cache=None,
                positions="real"):
        B = input_ids.shape[0]
        x = self.shared(input_ids)                                          # [B, T, d] (no sqrt(d) scaling)
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if prompt is not None:
            x = torch.cat([prompt.expand(B, -1, -1), x], dim=1)             # [B, P + T, d]
            slots = valid.new_ones(B, prompt.shape[1]) if prompt_mask is None else prompt_mask.bool().expand(B, -1)
            valid = torch.cat([slots, valid], dim=1)
        if prefix_mask is not None:
            prefix_mask = prefix_mask.bool()
        if cache is None:
            return self.encoder(x, valid, prefix=prefix, prefix_mask=prefix_mask, positions=positions,
                                checkpointing=self.checkpointing), valid
        h = self.encoder(x, cache.append_mask(valid), prefix=prefix, prefix_mask=prefix_mask, cache=cache,
                         positions=positions)  # the cache records keys/values
        cache.advance(valid)
        return h, valid

    def _cross_kv(self, hidden):
        """Keys/values of the encoder output for every decoder layer's cross-attention."""
        return [block.cross.kv(hidden) for block in self.decoder.blocks]

    def _decode(self, ids, attention_mask, enc_valid, cross_kv, prefix, cache, prefix_mask=None, positions="real"):
        B = ids.shape[0]
        prefix_mask = prefix_mask or {}
        x = self.shared(ids)                                                # [B, T, d]
        valid = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        key_valid = valid if cache is None else cache.append_mask(valid)    # [B, S] every key so far
        cross_prefix = prefix.get("cross")
        if cross_prefix is not None:                                        # its slots are visible to every query
            P = cross_prefix[0][0].shape[2]
            slots = enc_valid.new_ones(B, P) if "cross" not in prefix_mask else prefix_mask["cross"].bool().expand(B, -1)
            enc_valid = torch.cat([slots, enc_valid], dim=1)
        cross_mask = None if reading_values() and bool(enc_valid.all()) else enc_valid[:, None, None, :]  # [B, 1, 1, Pc+S], no position bias
        decoder_valid = prefix_mask.get("decoder")
        h = self.decoder(x, key_valid, prefix=prefix.get("decoder"), prefix_mask=None if decoder_valid is None else decoder_valid.bool(),
                         cache=cache, cross_kv=cross_kv, cross_mask=cross_mask, cross_prefix=cross_prefix, positions=positions,
                         checkpointing=self.checkpointing)
        if cache is not None:
            cache.advance(valid)
        return h

    def _head_input(self, h):
        """(input, weight) of the LM head: v1.1 / FLAN have their own head; a tied head rescales first."""
        if self.lm_head is not None:
            return h, self.lm_head.weight
        return h * self.config.d_model ** -0.5, self.shared.weight

    # ---- generation --------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, *, max_new_tokens=20, temperature=0.0, top_k=None,
                 eos_token_id=EOS_ID, generator=None, prefix=None, prompt=None, bias_delta=None, prefix_mask=None,
                 prompt_mask=None, positions="real"):
        """Decode an answer to each row of input_ids (padding on either side is fine).

        The encoder runs once, each decoder layer's cross-attention keys/values are computed once,
        and the decoder's self-attention uses a KV cache. Greedy when temperature is 0, else
        sampling (optionally top-k). Rows that emit eos_token_id stop (and are padded with it).
        Returns [B, 1 + n_new] decoder tokens, starting with the start token 0, as transformers does.
        positions: as in forward.
        """
        slots = bias_slots(self) if bias_delta else ()
        B = check_t5_call(self, input_ids, attention_mask, prefix=prefix, prompt=prompt, bias_delta=bias_delta,
                          prefix_mask=prefix_mask, prompt_mask=prompt_mask, positions=positions, bias_slots=slots, decoding=False)
        prefix, prefix_mask = prefix or {}, prefix_mask or {}
        max_new_tokens, temperature, top_k, eos_token_id = check_decoding(max_new_tokens, temperature, top_k, eos_token_id)
        cfg, w = self.config, self.shared.weight
        start = input_ids.new_full((B, 1), PAD_ID)
        with bias_deltas(slots, bias_delta):
            hidden, enc_valid = self._encode(input_ids, attention_mask, prefix.get("encoder"), prompt,
                                             prefix_mask.get("encoder"), prompt_mask, positions=positions)
            cross_kv = self._cross_kv(hidden)                                # once, not per step
            cache = KVCache(cfg.num_decoder_layers, B, cfg.num_heads, max_new_tokens + 1, cfg.d_kv, device=w.device, dtype=w.dtype)
            step = lambda tok: linear(*self._head_input(self._decode(  # noqa: E731  logits of the last position
                tok, None, enc_valid, cross_kv, prefix, cache, prefix_mask, positions)[:, -1]))
            new = decode(step, step(start), max_new_tokens, eos_token_id=eos_token_id, temperature=temperature,
                         top_k=top_k, generator=generator)
        return torch.cat([start, new], dim=1)

    # ---- checkpoints: the Hugging Face layout, its key map in minipeft/io/t5_checkpoint.py ----------

    @classmethod
    def from_pretrained(cls, path, *, dtype=torch.float32):
        """Load T5 / T5 v1.1 / FLAN-T5 weights from a Hugging Face-layout folder (config.json +
        model.safetensors or pytorch_model.bin, or a sharded index). Bias tensors in the file, as
        save_pretrained writes them for enabled slots, are loaded into those slots. Returns the model in eval mode."""
        from ..io import t5_checkpoint  # it needs T5Config: imported here, not at the top
        return t5_checkpoint.load(cls, path, dtype=dtype)

    def save_pretrained(self, folder):
        """Write config.json + model.safetensors in the Hugging Face layout (loads in minipeft and
        transformers). Present bias slots are written as `<module>.bias`; transformers' T5 has no
        biases and ignores them."""
        from ..io import t5_checkpoint
        t5_checkpoint.save(self, folder)
