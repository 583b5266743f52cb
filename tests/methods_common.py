"""Shared helpers for the tests: tiny models, a toy task, a short training loop, a thread count."""

import contextlib

import torch

from minipeft import GPT, GPTConfig
from minipeft.train import make_optimizer

GPT_TINY = dict(vocab_size=61, n_positions=64, n_embd=32, n_layer=2, n_head=4)


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**GPT_TINY)).eval()
    with torch.no_grad():  # larger than GPT-2's init, so that a frozen random model can be steered
        for name, p in model.named_parameters():
            if "bias" in name:
                p.normal_(0, 0.1)
        model.wte.weight.normal_(0, 0.3)
        for block in model.h:
            block.attn.c_attn.weight.normal_(0, 0.3)
    return model


def toy_batch(vocab, batch=8, length=16, seed=0):
    """A toy task a frozen random model can be steered to: random tokens, then the answer 7, 8, 7, 8..."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    ids[:, length // 2:] = 7 + torch.arange(length - length // 2) % 2
    return ids


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def toy_labels(ids):
    """Loss on the answer half only (the random half cannot be predicted)."""
    labels = ids.clone()
    labels[:, : ids.shape[1] // 2] = -100
    return labels


def train(module, ids, steps=60, lr=1e-2, **forward_kwargs):
    """Plain AdamW steps on the toy task's loss; returns (first loss, last loss)."""
    opt = make_optimizer(module, lr)
    losses = []
    for _ in range(steps):
        _, loss = module(ids, labels=toy_labels(ids), **forward_kwargs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


T5_TINY = dict(vocab_size=61, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3, num_heads=4,
               relative_attention_num_buckets=8, relative_attention_max_distance=16)


def tiny_t5(seed=0, **kw):
    from minipeft import T5, T5Config
    torch.manual_seed(seed)
    return T5(T5Config(**{**T5_TINY, **kw})).eval()


def toy_seq2seq(vocab, batch=8, length=10, seed=0):
    """(encoder ids, labels): random inputs, and the answer 7 8 7 8 ... then eos (1)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (batch, length), generator=g)
    labels = (7 + torch.arange(5) % 2).repeat(batch, 1)
    return ids, torch.cat([labels, torch.ones(batch, 1, dtype=torch.long)], 1)


def train_seq2seq(module, ids, labels, steps=60, lr=1e-2):
    opt = make_optimizer(module, lr)
    losses = []
    for _ in range(steps):
        _, loss = module(ids, labels=labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


@contextlib.contextmanager
def threads(n):
    """torch's intra-op threads set to n for the block, then put back."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
