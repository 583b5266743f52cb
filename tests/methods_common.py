"""Shared helpers for the tests: tiny models, a toy task, a short training loop, a thread count."""

import contextlib
import copy
import os
import subprocess
import sys

import torch

from minipeft import GPT, GPTConfig
from minipeft.training.state import make_optimizer

GPT_TINY = dict(vocab_size=61, n_positions=64, n_embd=32, n_layer=2, n_head=4)


def tiny_gpt(seed=0, **overrides):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**GPT_TINY, **overrides})).eval()
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
        loss = module(ids, labels=toy_labels(ids), **forward_kwargs)
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
        loss = module(ids, labels=labels)
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


def exit_status(script_main, *argv):
    """A script's main(argv) run in this process: its exit status (0 when it returns)."""
    try:
        script_main([str(a) for a in argv])
    except SystemExit as e:
        return e.code
    return 0


def nudge(adapter, scale=0.1, seed=0):
    """Move every trainable parameter a little, as if trained (a zero delta or head would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_((torch.randn(p.shape, generator=g) * scale).to(p.device))
    return adapter


def bf16_twins(make, model):
    """(fp32 adapter, the same adapter on a bf16 copy of `model`): make(model) builds one; the
    second's parameters are copied from the first's (nudged as if trained)."""
    a32 = nudge(make(model))
    a16 = make(copy.deepcopy(model).to(torch.bfloat16))
    with torch.no_grad():
        for p16, p32 in zip(a16.trainable_parameters(), a32.trainable_parameters()):
            p16.copy_(p32)
    return a32, a16


def check_bf16_model(make, model):
    """An adapter on a bf16 model keeps fp32 parameters, which get finite fp32 gradients; its loss and
    gradients are within bf16 rounding of the fp32 model's; generate's first token is forward's best."""
    a32, a16 = bf16_twins(make, model)
    if model.arch == "t5":
        ids, labels = toy_seq2seq(61, batch=4)
        loss_of = lambda a: a(ids, labels=labels)  # noqa: E731
    else:
        ids = toy_batch(61, batch=4)
        loss_of = lambda a: a(ids, labels=toy_labels(ids))  # noqa: E731
    results = []
    for a in (a32, a16):
        loss = loss_of(a)
        loss.backward()
        params = [p for p in a.trainable_parameters() if p.grad is not None]
        assert params and all(p.dtype == p.grad.dtype == torch.float32 and bool(p.grad.isfinite().all()) for p in params)
        results.append((loss.detach().float(), torch.cat([p.grad.flatten() for p in params])))
    (loss32, grad32), (loss16, grad16) = results
    torch.testing.assert_close(loss16, loss32, rtol=3e-2, atol=0)
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.995
    with torch.no_grad():  # generate on the bf16 model: its first new token is the forward pass's argmax
        if model.arch == "t5":
            first = a16.generate(ids, max_new_tokens=2)[:, 1]
            logits = a16(ids, torch.zeros(4, 1, dtype=torch.long))[:, 0].float()
        else:
            first = a16.generate(ids[:, :6], max_new_tokens=2)[:, 6]
            logits = a16(ids[:, :6])[:, -1].float()
    assert bool((logits.gather(1, first[:, None])[:, 0] >= logits.max(1).values - 0.1).all())  # bf16: near-ties may flip
    return a32, a16


def torchrun(args, cwd, timeout):
    """`torchrun --standalone --nproc_per_node=2 ARGS` in cwd: the CompletedProcess. Past timeout,
    torchrun gets SIGTERM (which stops its workers too: a SIGKILL would leave them waiting) and the
    test fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    proc = subprocess.Popen(command, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"torchrun {' '.join(args)} ran past {timeout} s; its stderr ends: {err[-2000:]}") from None
    return subprocess.CompletedProcess(command, proc.returncode, out, err)
