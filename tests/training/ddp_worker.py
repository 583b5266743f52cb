"""Run by test_distributed.py under `torchrun --nproc_per_node=2`: trains each method on GPT-2
and T5 (tiny, no dropout) for a few steps through distributed.Ranks, and rank 0 saves what the
test compares with one process: the losses, the first step's gradients, the final trainable
tensors and the bytes all-reduced. `train` is also what the test runs on one process."""

import sys

import torch
from torch.distributed.tensor import DTensor

from minipeft.training import distributed, loop
from minipeft.training import finetune as ft
from minipeft.io.tokenizer import CharTokenizer
from minipeft.training.state import make_optimizer
from tests.methods_common import tiny_gpt, tiny_t5

CASES = [(arch, method) for arch in ("gpt", "t5") for method in ("full", "bitfit", "prefix", "prompt")]
CHARS = CharTokenizer.from_text("".join(chr(c) for c in range(32, 127)) + "\n")
STEPS, BATCH, LR, MAX_LEN = 3, 4, 1e-4, 150


def build(arch, method):
    model = tiny_gpt(vocab_size=128, n_positions=160) if arch == "gpt" else tiny_t5(vocab_size=128)
    torch.manual_seed(1)
    return ft.make_method(method, model, n_prefix=4, n_prompt=4)


def trainable(module):
    """{name: parameter} of what trains, BitFit's under the bias they add to ("h.0.attn.c_attn.bias_key")."""
    named = dict(module.named_parameters())
    if hasattr(module, "slots"):
        named = {module.slots[int(n.split(".")[1])] if n.startswith("biases.") else n: p for n, p in named.items()}
    return {n: p for n, p in named.items() if p.requires_grad}


def train(arch, method, ranks, how="ddp"):
    """(losses, first-step gradients, final trainable tensors, bytes all-reduced, the share of the
    parameters this rank holds) of STEPS steps,
    with DDP (how="ddp") or FSDP ("fsdp") on several processes."""
    module = build(arch, method)
    sent_before = ranks.reduced_bytes
    codec = ft.Codec(CHARS, arch)
    forward = ranks.wrap(module) if how == "ddp" or ranks.world == 1 else ranks.shard(module)
    grads = {}

    def loss_at(step):
        examples = ft.pairs("e2e", BATCH, seed=step)            # the step's global batch
        mine = ft.batch(ranks.share(examples), codec, MAX_LEN)
        labels_all = ft.batch(examples, codec, MAX_LEN)[2]
        return ranks.part(ft.loss_of(module, mine, codec, forward), ft.n_targets(mine[2], arch),
                          ft.n_targets(labels_all, arch))

    def on_step(step, loss):
        if step == 0:
            grads.update({n: distributed.full(p.grad).clone() for n, p in trainable(module).items()})

    losses = []
    loop.train(module, make_optimizer(module, LR), loss_at, STEPS, ranks=ranks,
               on_step=lambda step, loss: (losses.append(loss), on_step(step, loss)))
    trained = {n: distributed.full(p.detach()).clone() for n, p in trainable(module).items()}
    local = [p.to_local() if isinstance(p, DTensor) else p for p in module.parameters()]
    held = sum(p.numel() for p in local) / sum(p.numel() for p in module.parameters())
    return losses, grads, trained, ranks.reduced_bytes - sent_before, held


if __name__ == "__main__":
    with distributed.start("cpu") as ranks:
        results = {(*case, how): train(*case, ranks, how) for case in CASES for how in ("ddp", "fsdp")}
        if ranks.main:
            torch.save(results, sys.argv[1])
