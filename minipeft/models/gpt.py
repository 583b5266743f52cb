"""GPT-2, from scratch, with the three PEFT hooks built in.

Hooks (used by minipeft/methods/bitfit.py, prefix.py, prompt.py; never monkey-patched):
  1. bias slots: every bias is its own parameter (query, key, value, attn_out, mlp_in, mlp_out, norm)
  2. prefix:  forward(..., prefix=[(key, value)] * n_layer), each [B or 1, n_head, P, head_dim],
             concatenated in front of that layer's keys/values inside attention
             (generate writes it into the KV cache once instead: the same keys)
  3. prompt:  forward(..., prompt=[B or 1, P, n_embd]) prepended to the token embeddings

Activation checkpointing: model.checkpointing = True (training only) keeps each block's inputs and
recomputes the rest in backward; every hook passes through (layers.run_block).

Positions (positions="real", the default) count real tokens: after a prefix of P slots the first
token sits at P (as in the prefix-tuning code and peft), prompt slots take 0..P-1, left padding
takes none, so a padded row gets the positions it has alone. positions="plain" counts every slot,
padding included (transformers' forward without position_ids, so peft's numbers). docs/models.md.
"""

import math
from dataclasses import InitVar, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import (IGNORE, check_decoding, check_generate_room, check_gpt_call, check_gpt_config, check_ids, check_labels,
                      reading_values)
from ..errors import MiniPeftError
from ..speed import linear, linear_cross_entropy
from .generation import decode
from .layers import (KeepKeysValues, KVCache, LayerNorm, Linear, attend, bias_deltas, bias_slots, build_mask, merge_heads, run_block,
                     split_heads)


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    n_positions: int = 1024      # context length
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None   # MLP width; None means 4 * n_embd
    dropout: InitVar[float | None] = None  # sets those of the three below not given (default 0.0)
    layer_norm_eps: float = 1e-5
    bias: bool = True            # start with bias slots present (GPT-2 has them)
    embd_pdrop: float | None = None   # dropout on token + position embeddings      (transformers' names)
    attn_pdrop: float | None = None   # dropout on the attention probabilities
    resid_pdrop: float | None = None  # dropout on each attention and MLP output, before the residual add

    def __post_init__(self, dropout):
        for name in DROPOUTS:
            if getattr(self, name) is None:
                setattr(self, name, 0.0 if dropout is None else dropout)

    @classmethod
    def named(cls, name, **overrides):
        if name not in SIZES:
            raise MiniPeftError(f"unknown GPT size {name!r}; known: {', '.join(SIZES)}")
        return cls(**{**SIZES[name], **overrides})

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @property
    def mlp_dim(self):
        return self.n_inner or 4 * self.n_embd

    @property
    def any_dropout(self):
        return max(self.embd_pdrop, self.attn_pdrop, self.resid_pdrop) > 0

    def validate(self, source="GPTConfig"):
        return check_gpt_config(self, source)  # sizes positive, heads divide the width, dropouts in [0, 1)


DROPOUTS = ("embd_pdrop", "attn_pdrop", "resid_pdrop")


SIZES = {
    "gpt2":        dict(n_layer=12, n_head=12, n_embd=768),   # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "gpt2-large":  dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl":     dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "tiny":        dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=256),  # tests
    "char-small":  dict(n_layer=3, n_head=3, n_embd=96, n_positions=256, vocab_size=128),   # train_char.py --size:
    "char":        dict(n_layer=4, n_head=4, n_embd=128, n_positions=256, vocab_size=128),  # small, medium (default),
    "char-large":  dict(n_layer=5, n_head=5, n_embd=160, n_positions=256, vocab_size=128),  # large
}


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg.n_embd
        self.n_head, self.attn_pdrop = cfg.n_head, cfg.attn_pdrop
        self.c_attn = Linear(C, {"query": C, "key": C, "value": C}, bias=cfg.bias)  # fused q/k/v
        self.c_proj = Linear(C, {"attn_out": C}, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.resid_pdrop)

    def forward(self, x, mask, is_causal, prefix, cache, layer):
        q, k, v = (split_heads(t, self.n_head) for t in self.c_attn(x).chunk(3, dim=-1))  # [B, H, T, D]
        if cache is not None:
            k, v = cache.update(layer, k, v)
        y = attend(q, k, v, prefix=prefix, mask=mask, is_causal=is_causal,
                   dropout_p=self.attn_pdrop if self.training else 0.0)  # on the attention probabilities
        return self.resid_dropout(self.c_proj(merge_heads(y)))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = Linear(cfg.n_embd, {"mlp_in": cfg.mlp_dim}, bias=cfg.bias)
        self.c_proj = Linear(cfg.mlp_dim, {"mlp_out": cfg.n_embd}, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.resid_pdrop)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # GPT-2's GELU


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.layer_norm_eps, cfg.bias)
        self.attn = Attention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, cfg.layer_norm_eps, cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, mask, is_causal, prefix, cache, layer):
        x = x + self.attn(self.ln_1(x), mask, is_causal, prefix, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg.validate()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # also the LM head (tied)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.drop = nn.Dropout(cfg.embd_pdrop)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = LayerNorm(cfg.n_embd, cfg.layer_norm_eps, cfg.bias)
        self.checkpointing = False  # True: activation checkpointing per block while training (layers.run_block)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())  # the tied head is wte, counted once

    # ---- what the PEFT methods need to know about this model --------------------------------

    arch = "gpt"

    def input_embeddings(self):
        return self.wte

    def prefix_sites(self):
        """{site: (n_layer, n_head, head_dim)}: where a prefix can go. GPT-2 has one, self-attention."""
        return {"self": (self.config.n_layer, self.config.n_head, self.config.head_dim)}

    def pack_prefix(self, sites):
        """The prefix hook argument from {site: [(key, value)] * n_layer}."""
        return sites["self"]

    @torch.no_grad()
    def prefix_from_tokens(self, ids):
        """{site: [(key, value)] * n_layer}, each [B, H, T, D]: the model's own keys/values of ids."""
        cfg = self.config
        cache = KVCache(cfg.n_layer, ids.shape[0], cfg.n_head, ids.shape[1], cfg.head_dim, device=ids.device, dtype=self.wte.weight.dtype)
        self.hidden_states(ids, cache=cache)
        return {"self": [(cache.k[i], cache.v[i]) for i in range(cfg.n_layer)]}

    # ---- forward -----------------------------------------------------------------------------

    def forward(self, input_ids, attention_mask=None, *, labels=None, **hooks):
        """Logits [B, T, vocab] aligned with input_ids; given labels [B, T], the mean next-token loss
        instead (labels -100 where no loss is wanted; shifted inside, as in transformers).
        hooks: prefix, prompt, bias_delta, ... as hidden_states takes them."""
        if labels is not None:  # checked before any computation, like everything hidden_states takes
            check_labels(labels, check_ids("input_ids", input_ids, self.config.vocab_size), self.config.vocab_size)
        x = self.hidden_states(input_ids, attention_mask, **hooks)          # [B, T, C]
        if labels is None:
            return F.linear(x, self.wte.weight)                             # tied head
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE)                # predict token t+1 at t
        # == F.cross_entropy(F.linear(x, wte).flatten(0, 1), targets.flatten()), without keeping the logits
        return linear_cross_entropy(x.flatten(0, 1), self.wte.weight, targets.flatten())

    def hidden_states(self, input_ids, attention_mask=None, *, prefix=None, prompt=None, bias_delta=None,
                      prefix_mask=None, infix_at=None, prompt_mask=None, cache=None, positions="real"):
        """The final hidden states [B, T, n_embd] (after ln_f): what the LM head reads, or a task head.

        input_ids [B, T]; attention_mask [B, T] (1 = real token, 0 = padding); cache: a KVCache.
        Hooks (see the module docstring): prefix, prompt, bias_delta {slot name: [width] or
        [B, width]} added to bias slots for this call; prefix_mask / prompt_mask [B or 1, P] for
        rows that use fewer slots (many tasks in one batch); infix_at [B] places the prefix before
        that token index instead of in front (an infix: [x; INFIX; y]). positions: "real" (padding
        takes no position) or "plain" (every slot counts: peft's numbers on padded batches).
        """
        slots = bias_slots(self) if bias_delta else ()
        B, T = check_gpt_call(self, input_ids, attention_mask, prefix=prefix, prompt=prompt, bias_delta=bias_delta,
                              prefix_mask=prefix_mask, infix_at=infix_at, prompt_mask=prompt_mask, positions=positions,
                              bias_slots=slots)
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        n_prompt = 0 if prompt is None else prompt.shape[1]
        if n_prompt:                                                        # prompt slots are real keys
            slot_valid = valid.new_ones(B, n_prompt) if prompt_mask is None else prompt_mask.bool().expand(B, -1)
            valid = torch.cat([slot_valid, valid], dim=1)                   # [B, P + T]
        n_query = valid.shape[1]
        S = n_query + (0 if cache is None else cache.length)               # keys: cached + these
        n_prefix = 0 if prefix is None else prefix[0][0].shape[2]
        prefix_mask = None if prefix_mask is None else prefix_mask.bool()
        positions = self._positions(valid, S, cache, n_prefix, prefix_mask, infix_at, positions)  # [B or 1, P + T]
        if reading_values() and int(positions.max()) >= self.config.n_positions:  # refused before any computation
            raise MiniPeftError(f"sequence needs position {int(positions.max())} but the context is "
                                f"{self.config.n_positions} (prefix {n_prefix} + prompt {n_prompt} + tokens)")
        key_valid = valid if cache is None else cache.append_mask(valid)    # [B, S] every key so far

        # one mask for all layers; SDPA's own causal path when nothing needs a mask
        mask, is_causal = None, False
        if reading_values() and bool(key_valid.all()) and prefix_mask is None and infix_at is None and (n_query == 1 or (n_prefix == 0 and S == n_query)):
            is_causal = n_query > 1                                         # (one query sees every key)
        else:
            mask = build_mask(key_valid, n_query, n_prefix=n_prefix, prefix_mask=prefix_mask, infix_at=infix_at)

        checkpoint = self.checkpointing and cache is None                  # (not decoding: a rerun would write the cache again)
        with bias_deltas(slots, bias_delta):                               # BitFit: this call's bias deltas
            x = self.wte(input_ids)                                         # [B, T, C]
            if n_prompt:                                                    # prompt tuning: P trained embeddings
                x = torch.cat([prompt.expand(B, -1, -1), x], dim=1)         # [B, P + T, C]
            x = self.drop(x + self.wpe(positions))
            for i, block in enumerate(self.h):                             # prefix tuning: layer i's keys/values
                x = run_block(block, x, mask, is_causal, None if prefix is None else prefix[i], cache, i, checkpoint=checkpoint)
            if cache is not None:
                cache.advance(valid)
            return self.ln_f(x[:, n_prompt:])                               # drop the prompt slots: [B, T, C]

    def _positions(self, valid, S, cache, n_prefix, prefix_mask, infix_at, positions):
        """Position ids of the queries, the last of S keys. "real": real tokens (and prompt slots)
        count; "plain": every slot, cached ones too. After a prefix (or an infix) tokens move up by
        its size: its valid slots, or all with "plain"."""
        n_query = valid.shape[1]
        if positions == "plain":
            pos = torch.arange(S - n_query, S, device=valid.device)[None]  # [1, P + T]
        else:
            pos = (valid.cumsum(1) - 1).clamp(min=0) + (0 if cache is None else cache.seen[:, None])  # [B, P + T]
        if n_prefix:
            shift = n_prefix if positions == "plain" or prefix_mask is None else prefix_mask.sum(-1, keepdim=True)  # [B or 1, 1]
            if infix_at is not None:
                shift = shift * (torch.arange(S - n_query, S, device=valid.device)[None] >= infix_at[:, None])
            pos = pos + shift
        return pos

    def keys_values(self, x, prefix=None):
        """[(key, value)] per layer of [prefix; x]: embeddings x [1, P, C] run through the blocks at
        the start of a sequence (after the prefix, if any), as a prefix for the tokens that follow.

        Prompt tuning uses it to run a prompt shared by every row once (methods/prompt.py).
        """
        P, n_prefix = x.shape[1], 0 if prefix is None else prefix[0][0].shape[2]
        h = self.drop(x + self.wpe(torch.arange(n_prefix, n_prefix + P, device=x.device)))    # [1, P, C]
        mask = None if prefix is None else build_mask(torch.ones(1, P, dtype=torch.bool, device=x.device), P, n_prefix=n_prefix)
        keep = KeepKeysValues()
        for i, block in enumerate(self.h):
            h = block(h, mask, prefix is None, None if prefix is None else prefix[i], keep, i)
        if prefix is None:
            return keep.pairs
        return [(torch.cat([pk, k], 2), torch.cat([pv, v], 2)) for (pk, pv), (k, v) in zip(prefix, keep.pairs)]

    # ---- generation --------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, *, max_new_tokens=20, temperature=0.0, top_k=None,
                 eos_token_id=None, generator=None, prefix=None, prompt=None, prompt_mask=None,
                 bias_delta=None, prefix_mask=None, infix_at=None, positions="real"):
        """Continue each row of input_ids (left-padded when rows differ in length) with a KV cache.

        Greedy when temperature is 0, else sampling (optionally top-k). Rows that emit eos_token_id
        stop (and are padded with it). Takes the same hooks and positions as forward. Returns
        [B, T + n_new] ids.
        """
        B, T = check_gpt_call(self, input_ids, attention_mask, prefix=prefix, prompt=prompt, bias_delta=bias_delta,
                              prefix_mask=prefix_mask, infix_at=infix_at, prompt_mask=prompt_mask, positions=positions,
                              bias_slots=bias_slots(self) if bias_delta else ())
        max_new_tokens, temperature, top_k, eos_token_id = check_decoding(max_new_tokens, temperature, top_k, eos_token_id)
        n_prompt = 0 if prompt is None else prompt.shape[1]
        n_prefix = 0 if prefix is None else prefix[0][0].shape[2]
        check_generate_room(attention_mask, n_prefix + n_prompt + T, max_new_tokens, self.config.n_positions,
                            f"prefix {n_prefix} + prompt {n_prompt} + input {T}")
        cfg, w = self.config, self.wte.weight
        cache = KVCache(cfg.n_layer, B, cfg.n_head, n_prefix + n_prompt + T + max_new_tokens, cfg.head_dim, device=w.device, dtype=w.dtype)
        if prefix is not None and infix_at is None:  # a prefix (not an infix) becomes the cache's first keys
            cache.start_with(prefix, prefix_mask)
            prefix = prefix_mask = None
        every_step = dict(prefix=prefix, prefix_mask=prefix_mask, infix_at=infix_at, bias_delta=bias_delta, cache=cache,
                          positions=positions)
        head = lambda h: linear(h[:, -1], w)  # noqa: E731  last position only; speed.linear == F.linear
        first = head(self.hidden_states(input_ids, attention_mask, prompt=prompt, prompt_mask=prompt_mask, **every_step))
        new = decode(lambda tok: head(self.hidden_states(tok, **every_step)), first, max_new_tokens,
                     eos_token_id=eos_token_id, temperature=temperature, top_k=top_k, generator=generator)
        return torch.cat([input_ids, new], dim=1)

    # ---- checkpoints: the Hugging Face layout, its key map in minipeft/io/gpt2_checkpoint.py --------

    @classmethod
    def from_pretrained(cls, path, *, n_head=None, dtype=torch.float32):
        """Load GPT-2 weights from a Hugging Face-layout folder (config.json + model.safetensors or
        pytorch_model.bin) or one .safetensors/.bin file (config inferred from the shapes; n_head
        defaults to n_embd // 64, true of every released GPT-2). Dropouts: config.json's (0.1 where
        absent, as transformers reads it); a bare file has no config, so 0.0. Returns the model in eval mode."""
        from ..io import gpt2_checkpoint  # it needs GPTConfig: imported here, not at the top
        return gpt2_checkpoint.load(cls, path, n_head=n_head, dtype=dtype)

    def save_pretrained(self, folder):
        """Write config.json + model.safetensors in the Hugging Face layout (loads in minipeft and transformers)."""
        from ..io import gpt2_checkpoint
        gpt2_checkpoint.save(self, folder)
