"""Performance benchmark: minipeft against transformers + peft (the reference), same weights.

Run from the repository root (needs the dev extra: transformers and peft are the reference):

    python bench/bench.py                          # GPT-2 small / T5-small shapes, all cores, fp32 on CPU
    python bench/bench.py --json bench/results-cpu.json
    python bench/bench.py --size tiny --steps 2 --warmup 1 --threads 1   # about a minute; tests/test_bench.py
    python bench/bench.py --device cuda            # bf16 autocast on a GPU, when one is there (--dtype)

It prints the machine and a Markdown table, one row per measurement: what, minipeft's median,
the reference's median, their ratio, the target and PASS/MISS. Models are randomly initialised
(GPT-2 small: 124M parameters; T5-small shapes) and shared: the reference model is built, saved
with save_pretrained, and minipeft loads that folder, so both compute the same thing (the JSON
records both first-step losses). Timed work alternates between the two implementations, step by
step, and reports the median of --steps after --warmup; the machine may be shared and noisy,
so read ratios, not absolute times.

  1. training step (forward, backward, AdamW step), batch 4 x 128 tokens: full fine-tuning, BitFit
     (every bias; the reference trains the parameters whose name ends with "bias"), prefix tuning
     (P=10, MLP reparameterisation with hidden 512; peft PrefixTuningConfig) and prompt tuning
     (P=20; peft PromptTuningConfig). Targets: minipeft/reference <= 0.9; each PEFT step <= 0.65
     of minipeft's own full fine-tuning step.
  2. peak memory of a training step: the whole process's peak RSS (VmHWM, i.e. ru_maxrss; on CUDA the peak
     allocated GPU memory), each case in a fresh subprocess (this script with --one-case).
     Targets: each PEFT method <= 0.6 of full fine-tuning, and <= the reference for that method.
  3. greedy generation, batch 1, 64 new tokens after a 32-token prompt, with and without a
     prefix, against generate() of transformers / peft (eos disabled so all 64 are produced);
     and against the memory-bandwidth bound: parameter bytes read per token over the bandwidth
     of a large tensor copy (bytes read + written, as STREAM counts them). Targets: not slower
     than the reference (our choice), and within 80% of the bound.
  4. many tasks at once: 8 rows of 32 tokens, each from its own adapter, in one forward
     (minipeft.methods.bank.AdapterBank) against 8 forwards of batch 1, per method; and the same 8 rows
     continued by 16 greedy tokens in one bank.generate against 8 generate calls (decoding steps
     read every weight for one token per row: where a shared batch pays off most on a CPU).
     Prefix adapters are baked (bake(): the MLP is dropped), as they are when loaded from files.
     Target: >= 4x rows/s. (peft has no mixed-batch prompt learning, so the baseline is minipeft
     one task at a time.)
  5. T5-small training step with prompt tuning (P=20; batch 4, 128 encoder and 32 decoder
     tokens) against T5ForConditionalGeneration + peft. Target: minipeft/reference <= 0.9.
  6. activation checkpointing (model.checkpointing; only with --only checkpointing: at GPT-2
     small, with the default --steps and --warmup, it takes about an hour on 2 cores): training
     steps of each PEFT method on 4 rows that fill the 1024-position context (1024 tokens; 1014
     after a 10-slot prefix; 1004 after a 20-slot prompt), with and without checkpointing, each
     in a fresh process (as in 2): peak memory (peak RSS with glibc's mmap threshold fixed at
     1 MiB, so that it follows the live tensors: TENSOR_PEAK_ENV; on CUDA peak allocated) and the
     median step time after --warmup. minipeft only (peft cannot checkpoint a prefix).
     --checkpointing-model 6x384 takes 6 layers of width 384 (6 heads) instead of the --size's
     GPT. Targets: peak memory with <= 0.5 of without; step time with <= 1.5 of without (the
     rerun adds one forward of every block; a PEFT step, with no weight gradients, is about two).

    python bench/bench.py --only checkpointing --checkpointing-model 6x384 --steps 2 --warmup 1
"""

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally; never reach the hub
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import minipeft  # noqa: E402
from minipeft.io.atomic import atomic_write  # noqa: E402
from minipeft.methods.bank import AdapterBank  # noqa: E402
from minipeft.training.state import make_optimizer  # noqa: E402

METHODS = ("full", "bitfit", "prefix", "prompt")
PEFT_METHODS = METHODS[1:]
N_PREFIX, PREFIX_HIDDEN, N_PROMPT = 10, 512, 20
LR = 1e-4

# shapes of each --size: GPT model, training batch, generation, bank rows, T5 model and batch, copy size
SIZES = {
    "gpt2": dict(gpt="gpt2", batch=4, seq=128, gen_prompt=32, gen_new=64, bank_tasks=8, bank_seq=32, bank_new=16,
                 t5="t5-small", t5_batch=4, t5_enc=128, t5_dec=32, copy_mb=512, long_batch=4, long_positions=1024),
    "tiny": dict(gpt="tiny", batch=2, seq=16, gen_prompt=8, gen_new=8, bank_tasks=8, bank_seq=8, bank_new=4,
                 t5="tiny", t5_batch=2, t5_enc=16, t5_dec=8, copy_mb=8, long_batch=2, long_positions=64),
}


# ---- the models: the reference is built first, minipeft loads its save_pretrained folder -----------

def _quiet_transformers():
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")
    return transformers


def gpt_config(size):
    return minipeft.GPTConfig.named(SIZES[size]["gpt"])


def t5_config(size):
    return minipeft.T5Config.named(SIZES[size]["t5"])


def hf_gpt(size):
    """A randomly initialised transformers GPT2LMHeadModel with minipeft's config of that size."""
    transformers = _quiet_transformers()
    from minipeft.io.gpt2_checkpoint import config_to_hf
    cfg = gpt_config(size)
    special = {} if cfg.vocab_size > 50256 else dict(bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**config_to_hf(cfg), **special))


def hf_t5(size):
    transformers = _quiet_transformers()
    from minipeft.io.t5_checkpoint import config_to_hf
    return transformers.T5ForConditionalGeneration(transformers.T5Config(**config_to_hf(t5_config(size))))


def save_reference(size, folder):
    """Random reference models saved to folder/gpt and folder/t5; both implementations load them."""
    torch.manual_seed(0)
    hf_gpt(size).save_pretrained(os.path.join(folder, "gpt"))
    torch.manual_seed(1)
    hf_t5(size).save_pretrained(os.path.join(folder, "t5"))


def load_ours(folder, kind, device):
    """minipeft's model of folder/gpt or folder/t5, fp32, in train mode."""
    model = minipeft.GPT if kind == "gpt" else minipeft.T5
    return model.from_pretrained(os.path.join(folder, kind)).to(device).train()


def load_pair(folder, kind, device):
    """(minipeft model, transformers model) with the same weights, fp32, in train mode."""
    transformers = _quiet_transformers()
    reference = transformers.GPT2LMHeadModel if kind == "gpt" else transformers.T5ForConditionalGeneration
    ref = reference.from_pretrained(os.path.join(folder, kind), dtype=torch.float32)
    return load_ours(folder, kind, device), ref.to(device).train()


def wrap_ours(model, method):
    """The module to train: the model itself (full fine-tuning) or a minipeft adapter on it."""
    if method == "full":
        return model
    if method == "bitfit":
        return minipeft.BitFit(model, terms="all")
    if method == "prefix":
        return minipeft.PrefixTuning(model, N_PREFIX, reparam=True, hidden=PREFIX_HIDDEN)
    if method == "prompt":
        return minipeft.PromptTuning(model, N_PROMPT)
    raise ValueError(method)


def wrap_ref(model, method, task_type="CAUSAL_LM"):
    """The reference's module to train: transformers full fine-tuning, bias-only BitFit, or peft."""
    if method == "full":
        return model
    if method == "bitfit":
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith("bias"))
        return model
    import peft
    if method == "prefix":
        config = peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=N_PREFIX, prefix_projection=True,
                                         encoder_hidden_size=PREFIX_HIDDEN)
    elif method == "prompt":
        config = peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=N_PROMPT)
    else:
        raise ValueError(method)
    return peft.get_peft_model(model, config)


@torch.no_grad()
def copy_adapter(ref, ours, method):
    """Give minipeft's adapter the reference's initial adapter values (so both compute the same)."""
    if method not in ("prefix", "prompt"):
        return
    enc = ref.prompt_encoder["default"]
    if method == "prompt":
        ours.prompt[0].copy_(enc.embedding.weight[:ours.prompt.shape[1]])
    else:
        mlp = ours.mlp["self"]
        mlp[0].weight.copy_(enc.embedding.weight)
        for i in (1, 3):
            mlp[i].weight.copy_(enc.transform[i - 1].weight)
            mlp[i].bias.copy_(enc.transform[i - 1].bias)


def ref_optimizer(module):
    """The reference's AdamW over its trainable parameters, with exactly the settings (fused or not,
    betas, eps, weight decay) that minipeft.training.state.make_optimizer chooses."""
    params = [p for p in module.parameters() if p.requires_grad]
    like = make_optimizer(torch.nn.Linear(1, 1).to(params[0].device), LR).defaults
    return torch.optim.AdamW(params, **{k: like[k] for k in ("lr", "betas", "eps", "weight_decay", "amsgrad", "foreach", "fused")})


def n_trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ---- timing --------------------------------------------------------------------------------------

class Timer:
    """Alternates between named callables, one call each per round; keeps times after warm-up."""

    def __init__(self, device):
        self.device = device

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def run(self, fns, steps, warmup):
        times = {name: [] for name in fns}
        names = list(fns)
        for i in range(warmup + steps):
            for name in (names if i % 2 == 0 else names[::-1]):
                self.sync()
                t = time.perf_counter()
                fns[name]()
                self.sync()
                if i >= warmup:
                    times[name].append(time.perf_counter() - t)
        return times


BF16 = {"on": False}  # --dtype bf16: run forward passes under bf16 autocast (the default on CUDA)


def autocast(device):
    return torch.autocast(device, dtype=torch.bfloat16) if BF16["on"] else contextlib.nullcontext()


def gpt_batch(size, device, seed=0):
    s = SIZES[size]
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, gpt_config(size).vocab_size, (s["batch"], s["seq"]), generator=g).to(device)


def t5_batch(size, device, seed=0):
    s, cfg = SIZES[size], t5_config(size)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, cfg.vocab_size, (s["t5_batch"], s["t5_enc"]), generator=g).to(device)
    labels = torch.randint(2, cfg.vocab_size, (s["t5_batch"], s["t5_dec"]), generator=g).to(device)
    return ids, torch.ones_like(ids), labels


def train_steps(kind, ours, ref, size, device, compile=False):
    """Two step functions (forward, backward, AdamW step) and the loss each step returned.
    compile: a torch.compile backend for minipeft's forward, torch.compile(ours) (the optimizer steps
    ours' parameters); None: eager."""
    opt_ours, opt_ref = make_optimizer(ours, LR), ref_optimizer(ref)
    ours = torch.compile(ours, backend=compile) if compile else ours
    losses = {"minipeft": [], "reference": []}
    if kind == "gpt":
        ids = gpt_batch(size, device)
        call_ours = lambda: ours(ids, labels=ids)  # noqa: E731
        call_ref = lambda: ref(input_ids=ids, labels=ids).loss  # noqa: E731
    else:
        ids, mask, labels = t5_batch(size, device)
        call_ours = lambda: ours(ids, attention_mask=mask, labels=labels)  # noqa: E731
        call_ref = lambda: ref(input_ids=ids, attention_mask=mask, labels=labels).loss  # noqa: E731

    def step(call, opt, name):
        def run():
            with autocast(device):
                loss = call()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[name].append(float(loss))
        return run
    return {"minipeft": step(call_ours, opt_ours, "minipeft"), "reference": step(call_ref, opt_ref, "reference")}, losses


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm")


def kernel_shares(fn, device):
    """Fractions of one call's CPU time (torch profiler, self time) spent in matrix products and in
    attention kernels (SDPA, forward and backward). Both implementations call the same BLAS and
    SDPA kernels for these, so their sum shows how much of a step a rewrite of everything else
    could save at most. CPU only ((None, None) on CUDA)."""
    if device != "cpu":
        return None, None
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    attention = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key)
    return matmul / total, attention / total


def share_fields(fn_ours, fn_ref, device):
    (mm_ours, at_ours), (mm_ref, at_ref) = kernel_shares(fn_ours, device), kernel_shares(fn_ref, device)
    return {"matmul_share_minipeft": mm_ours, "matmul_share_reference": mm_ref,
            "attention_share_minipeft": at_ours, "attention_share_reference": at_ref}


def median_ms(xs):
    return 1000 * statistics.median(xs)


def paired_ratio(top, bottom):
    """Median over rounds of top / bottom in the same round (e.g. minipeft's time / the reference's):
    steadier than the ratio of medians when other processes slow whole stretches of the run."""
    return statistics.median(a / b for a, b in zip(top, bottom))


def bench_train(folder, size, device, steps, warmup, log, compiled=None):
    """All eight cases (4 methods x 2 implementations) take turns, one step each per round, so every
    ratio, including a PEFT method against full fine-tuning, compares steps of the same stretch of time.
    compiled: a torch.compile backend ("inductor"): also minipeft through torch.compile (a copy of
    its own; compiled in the warmup steps)."""
    fns, losses, trainable = {}, {}, {}
    for method in METHODS:
        ours_model, ref_model = load_pair(folder, "gpt", device)
        ours, ref = wrap_ours(ours_model, method), wrap_ref(ref_model, method)
        copy_adapter(ref, ours, method)
        step, losses[method] = train_steps("gpt", ours, ref, size, device)
        trainable[method] = {"minipeft": n_trainable(ours), "reference": n_trainable(ref)}
        fns.update({(method, impl): fn for impl, fn in step.items()})
        if compiled:
            copy = wrap_ours(load_ours(folder, "gpt", device), method)
            copy_adapter(ref, copy, method)
            step, _ = train_steps("gpt", copy, ref, size, device, compile=compiled)
            fns[(method, "compiled")] = step["minipeft"]
    times = Timer(device).run(fns, steps, max(warmup, 2 if compiled else 0))  # compiled: 1 step compiles, 1 settles
    out = {}
    for method in METHODS:
        mine = {impl: times[(method, impl)] for impl in ("minipeft", "reference")}
        out[method] = {"minipeft_ms": median_ms(mine["minipeft"]), "reference_ms": median_ms(mine["reference"]),
                       "minipeft_samples_ms": [1000 * t for t in mine["minipeft"]],
                       "reference_samples_ms": [1000 * t for t in mine["reference"]],
                       "paired_ratio": paired_ratio(mine["minipeft"], mine["reference"]),
                       "paired_ratio_to_full": paired_ratio(mine["minipeft"], times[("full", "minipeft")]),
                       **share_fields(fns[(method, "minipeft")], fns[(method, "reference")], device),
                       "trainable_minipeft": trainable[method]["minipeft"], "trainable_reference": trainable[method]["reference"],
                       "first_loss_minipeft": losses[method]["minipeft"][0], "first_loss_reference": losses[method]["reference"][0]}
        if compiled:
            out[method].update(compiled_ms=median_ms(times[(method, "compiled")]),
                               compiled_paired_ratio=paired_ratio(times[(method, "compiled")], mine["reference"]),
                               compiled_to_eager=paired_ratio(times[(method, "compiled")], mine["minipeft"]))
        log(f"train {method}: minipeft {out[method]['minipeft_ms']:.0f} ms, reference {out[method]['reference_ms']:.0f} ms"
            + (f", compiled {out[method]['compiled_ms']:.0f} ms" if compiled else ""))
    out["prompt"]["loss_note"] = ("peft's loss also scores the first real token from the last virtual token "
                                  "(labels [-100] * P + ids): one target more than minipeft's, so the losses differ slightly")
    return out


def bench_t5(folder, size, device, steps, warmup, log):
    ours_model, ref_model = load_pair(folder, "t5", device)
    ours, ref = wrap_ours(ours_model, "prompt"), wrap_ref(ref_model, "prompt", "SEQ_2_SEQ_LM")
    copy_adapter(ref, ours, "prompt")
    fns, losses = train_steps("t5", ours, ref, size, device)
    times = Timer(device).run(fns, steps, warmup)
    out = {"minipeft_ms": median_ms(times["minipeft"]), "reference_ms": median_ms(times["reference"]),
           **share_fields(fns["minipeft"], fns["reference"], device),
           "minipeft_samples_ms": [1000 * t for t in times["minipeft"]],
           "reference_samples_ms": [1000 * t for t in times["reference"]],
           "paired_ratio": paired_ratio(times["minipeft"], times["reference"]),
           "first_loss_minipeft": losses["minipeft"][0], "first_loss_reference": losses["reference"][0]}
    log(f"t5 prompt: minipeft {out['minipeft_ms']:.0f} ms, reference {out['reference_ms']:.0f} ms")
    return out


# ---- generation and the bandwidth bound ----------------------------------------------------------------

def copier(megabytes, device):
    """A callable that copies a large fp32 tensor, and the bytes each call moves (read + written,
    STREAM's convention). The destination is allocated and touched once: the timing is the copy,
    not first-touch page faults."""
    n = megabytes * 2 ** 20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return (lambda: dst.copy_(src)), 2 * n * 4


def copy_bandwidth(megabytes, device, repeats=9):
    """Bytes per second of each of `repeats` copies of a large tensor."""
    copy, moved = copier(megabytes, device)
    return [moved / t for t in Timer(device).run({"copy": copy}, repeats, 0)["copy"]]


def bench_generation(folder, size, device, steps, warmup, log):
    s = SIZES[size]
    ours_model, ref_model = load_pair(folder, "gpt", device)
    ours_model.eval()
    ref_model.eval()
    ref_model.generation_config.eos_token_id = None  # never stop early: always max_new_tokens
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, gpt_config(size).vocab_size, (1, s["gen_prompt"]), generator=g).to(device)
    mask = torch.ones_like(ids)
    new = s["gen_new"]
    param_bytes = sum(p.numel() * p.element_size() for p in ours_model.parameters())
    if BF16["on"]:  # autocast reads bf16 copies of the weights
        param_bytes = sum(p.numel() * 2 for p in ours_model.parameters())
    bandwidth = copy_bandwidth(s["copy_mb"], device)  # also in every round and at the end; the median of all is shown
    out = {"param_bytes": param_bytes}

    def gen_ref(model, result):
        def run():
            with torch.no_grad(), autocast(device):
                result[:] = [model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                                            pad_token_id=0)]
        return run

    def gen_ours(model, result):
        def run():
            with autocast(device):
                result[:] = [model.generate(ids, max_new_tokens=new)]
        return run

    for case in ("plain", "prefix"):
        if case == "plain":
            ours, ref = ours_model, ref_model
        else:
            ref = wrap_ref(ref_model, "prefix").eval()
            ours = wrap_ours(ours_model, "prefix").eval()
            copy_adapter(ref, ours, "prefix")
        got_ours, got_ref = [], []
        copy, moved = copier(s["copy_mb"], device)  # a copy in every round: the bound of that stretch of time
        times = Timer(device).run({"minipeft": gen_ours(ours, got_ours), "reference": gen_ref(ref, got_ref), "copy": copy},
                                  steps, warmup)
        del copy
        round_bw = [moved / t for t in times["copy"]]
        bandwidth += round_bw
        ours_tps, ref_tps = new / statistics.median(times["minipeft"]), new / statistics.median(times["reference"])
        out[case] = {"minipeft_tokens_per_s": ours_tps, "reference_tokens_per_s": ref_tps,
                     "minipeft_samples_s": times["minipeft"], "reference_samples_s": times["reference"],
                     "paired_speedup": paired_ratio(times["reference"], times["minipeft"]),  # tokens/s over the reference's
                     "new_tokens_minipeft": got_ours[0].shape[1] - ids.shape[1],
                     "new_tokens_reference": got_ref[0].shape[1] - ids.shape[1],
                     "same_tokens": bool(torch.equal(got_ours[0].cpu(), got_ref[0].cpu())),
                     "same_leading_tokens": int((got_ours[0] != got_ref[0]).int().cumsum(1).eq(0).sum()) - ids.shape[1],
                     # tokens/s over the bound, round by round (a slow stretch slows both): steadier than two medians
                     "copy_bandwidth_rounds_gb_s": [bw / 1e9 for bw in round_bw],
                     "fraction_of_bound": statistics.median(new / t / (bw / param_bytes) for t, bw in zip(times["minipeft"], round_bw))}
        with torch.no_grad(), autocast(device):  # the first new token by each side's own forward pass
            first_ours = int(ours(ids)[0, -1].argmax())
            first_ref = int(ref(input_ids=ids, attention_mask=mask).logits[0, -1].argmax())
        out[case].update(first_token_forward_minipeft=first_ours, first_token_forward_reference=first_ref,
                         minipeft_generate_agrees_with_forward=int(got_ours[0][0, ids.shape[1]]) == first_ours,
                         reference_generate_agrees_with_forward=int(got_ref[0][0, ids.shape[1]]) == first_ref)
        log(f"generate {case}: minipeft {ours_tps:.1f} tok/s, reference {ref_tps:.1f} tok/s")
    bandwidth += copy_bandwidth(s["copy_mb"], device)
    bound = statistics.median(bandwidth) / param_bytes  # tokens/s if each token read every weight once at copy speed
    out.update(copy_bandwidth_gb_s=statistics.median(bandwidth) / 1e9, copy_bandwidth_samples_gb_s=[b / 1e9 for b in bandwidth],
               bound_tokens_per_s=bound)
    log(f"bandwidth bound: {param_bytes / 1e6:.0f} MB per token at {statistics.median(bandwidth) / 1e9:.1f} GB/s = {bound:.1f} tok/s")
    return out


# ---- many tasks in one batch ---------------------------------------------------------------------------

def bench_bank(folder, size, device, steps, warmup, log):
    s = SIZES[size]
    model = minipeft.GPT.from_pretrained(os.path.join(folder, "gpt")).to(device).eval()
    n, T, new = s["bank_tasks"], s["bank_seq"], s["bank_new"]
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, model.config.vocab_size, (n, T), generator=g).to(device)
    out = []
    for method in PEFT_METHODS:
        adapters = {}
        for i in range(n):
            torch.manual_seed(100 + i)
            a = wrap_ours(model, method).eval()
            with torch.no_grad():  # each task its own values (BitFit starts at zero)
                for p in a.trainable_parameters():
                    p.add_(0.01 * torch.randn_like(p))
            adapters[f"task{i}"] = a.bake() if method == "prefix" else a
        bank, tasks = AdapterBank(model, adapters), list(adapters)
        runs = {
            "forward": (lambda: bank(ids, tasks=tasks),
                        lambda: [adapters[t](ids[r:r + 1]) for r, t in enumerate(tasks)]),
            "generate": (lambda: bank.generate(ids, tasks=tasks, max_new_tokens=new),
                         lambda: [adapters[t].generate(ids[r:r + 1], max_new_tokens=new) for r, t in enumerate(tasks)]),
        }
        for kind, (together, one_by_one) in runs.items():
            def timed(fn):
                def run():
                    with torch.no_grad(), autocast(device):
                        fn()
                return run
            times = Timer(device).run({"bank": timed(together), "separate": timed(one_by_one)}, steps, warmup)
            bank_s, sep_s = statistics.median(times["bank"]), statistics.median(times["separate"])
            out.append({"method": method, "kind": kind, "rows": n, "tokens_per_row": T, "new_tokens": new if kind == "generate" else 0,
                        "bank_ms": 1000 * bank_s, "separate_ms": 1000 * sep_s,
                        "speedup": paired_ratio(times["separate"], times["bank"])})
            log(f"bank {method} {kind}: one batch {1000 * bank_s:.1f} ms, {n} one at a time {1000 * sep_s:.1f} ms")
    return out


# ---- peak memory, one subprocess per case ----------------------------------------------------------------

def peak_rss_mb():
    """This process's peak resident set size in MiB: VmHWM, the high-water mark of its own memory map.
    (ru_maxrss is the same number except right after exec, where Linux carries over the parent's RSS.)"""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def one_case(case):
    """Run in a fresh process: build one model (random init, no other model in memory), train a few
    steps, print {"peak_mb": ...} as the last line. Only the reference imports transformers/peft.
    A case with "checkpointing" (part 6) trains its own model and long batch, checkpointed or not."""
    size, device, impl, method = case["size"], case["device"], case["impl"], case["method"]
    BF16["on"] = case["bf16"]
    torch.set_num_threads(case["threads"])
    after_import = peak_rss_mb()
    torch.manual_seed(0)
    long = "checkpointing" in case
    if impl == "minipeft":
        model = minipeft.GPT(long_config(size, case["model"]) if long else gpt_config(size)).to(device).train()
        model.checkpointing = case.get("checkpointing", False)
        module = wrap_ours(model, method)
        opt = make_optimizer(module, LR)
        ids = long_batch(size, method, device) if long else gpt_batch(size, device)
        call = lambda: module(ids, labels=ids)  # noqa: E731
    else:
        module = wrap_ref(hf_gpt(size).to(device).train(), method)
        opt = ref_optimizer(module)
        ids = gpt_batch(size, device)
        call = lambda: module(input_ids=ids, labels=ids).loss  # noqa: E731
    after_build = peak_rss_mb()
    built = after_build
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        built = torch.cuda.memory_allocated() / 2 ** 20
    step_s, timer = [], Timer(device)
    for _ in range(case["steps"]):
        timer.sync()
        start = time.perf_counter()
        with autocast(device):
            loss = call()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        timer.sync()
        step_s.append(time.perf_counter() - start)
    result = {"peak_mb": peak_rss_mb(), "after_import_mb": after_import, "after_build_mb": after_build, "kind": "peak RSS",
              "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "step_s": step_s}
    if device == "cuda":
        result.update(peak_mb=torch.cuda.max_memory_allocated() / 2 ** 20, kind="peak CUDA memory allocated")
    result["above_model_mb"] = result["peak_mb"] - built  # activations, gradients, optimizer state, temporaries
    print(json.dumps(result))


def start_case(case, env=None):
    """This script with --one-case `case`, in a fresh process (a peak is the whole process's)."""
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--one-case", json.dumps(case)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def case_result(case, proc):
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def bench_memory(size, device, threads, steps, log):
    """Peak memory of each (method, implementation) in its own process. A peak does not depend on
    what else runs, so up to as many cases as cores run at once (on CUDA one at a time)."""
    cases = [dict(size=size, device=device, impl=impl, method=method, threads=threads, steps=steps, bf16=BF16["on"])
             for method in METHODS for impl in ("minipeft", "reference")]
    jobs = 1 if device == "cuda" else max(1, os.cpu_count() or 1)
    out, running = {}, []
    while cases or running:
        while cases and len(running) < jobs:
            case = cases.pop(0)
            running.append((case, start_case(case)))
        case, proc = running.pop(0)
        out.setdefault(case["method"], {})[case["impl"]] = case_result(case, proc)
    for method in METHODS:
        log(f"memory {method}: minipeft {out[method]['minipeft']['peak_mb']:.0f} MB, "
            f"reference {out[method]['reference']['peak_mb']:.0f} MB")
    return out


# ---- activation checkpointing: peak memory and step time, with and without --------------------------------

def long_config(size, model=None):
    """The GPT of part 6: the --size's, or with model "LxC" L layers of width C (C // 64 heads)."""
    if not model:
        return gpt_config(size)
    n_layer, n_embd = (int(x) for x in model.split("x"))
    return minipeft.GPTConfig.named(SIZES[size]["gpt"], n_layer=n_layer, n_embd=n_embd, n_head=max(1, n_embd // 64))


def long_batch(size, method, device):
    """long_batch rows that fill long_positions: tokens, after the method's prefix or prompt slots."""
    s = SIZES[size]
    T = s["long_positions"] - {"prefix": N_PREFIX, "prompt": N_PROMPT}.get(method, 0)
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, gpt_config(size).vocab_size, (s["long_batch"], T), generator=g).to(device)


# glibc keeps freed heap memory mapped, and after a large free it serves blocks up to 32 MiB from the
# heap: peak RSS then counts whatever the allocator kept, not what the tensors needed. A fixed 1 MiB
# threshold gives every tensor of 1 MiB or more its own mapping, returned when freed, so the peak RSS
# follows the live tensors (as CUDA's max_memory_allocated does). It costs page faults on every step.
TENSOR_PEAK_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2 ** 20)}


def bench_checkpointing(size, device, threads, steps, warmup, model, log):
    """Each PEFT method without, then with checkpointing, one process at a time (each times its steps)."""
    cfg, s = long_config(size, model), SIZES[size]
    out = {"model": f"{cfg.n_layer}x{cfg.n_embd}", "n_head": cfg.n_head, "batch": s["long_batch"], "positions": s["long_positions"],
           "steps": steps, "warmup": warmup, "env": TENSOR_PEAK_ENV if device == "cpu" else {}}
    for method in PEFT_METHODS:
        runs = {}
        for on in (False, True):
            case = dict(size=size, device=device, impl="minipeft", method=method, threads=threads, steps=warmup + steps,
                        bf16=BF16["on"], checkpointing=on, model=model)
            r = runs["with" if on else "without"] = case_result(case, start_case(case, out["env"]))
            r["step_ms"] = median_ms(r["step_s"][warmup:])
        without, with_ = runs["without"], runs["with"]
        out[method] = {**runs, "peak_ratio": with_["peak_mb"] / without["peak_mb"],
                       "above_model_ratio": with_["above_model_mb"] / without["above_model_mb"],
                       "step_ratio": with_["step_ms"] / without["step_ms"]}
        log(f"checkpointing {method}: peak {without['peak_mb']:.0f} -> {with_['peak_mb']:.0f} MB, "
            f"step {without['step_ms']:.0f} -> {with_['step_ms']:.0f} ms")
    return out


# ---- the report ------------------------------------------------------------------------------------------

def machine(threads, device):
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import peft
    import transformers
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "python": platform.python_version(),
            "device": device, "dtype": "bf16 autocast" if BF16["on"] else "fp32"}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def row(what, ours, ref, unit, ratio, target, ok):
    return {"what": what, "minipeft": ours, "reference": ref, "unit": unit, "ratio": ratio, "target": target,
            "pass": bool(ok)}


NAMES = {"full": "full FT", "bitfit": "BitFit", "prefix": f"prefix (P={N_PREFIX}, MLP {PREFIX_HIDDEN})",
         "prompt": f"prompt (P={N_PROMPT})"}
LEGEND = ("Reference column: transformers (+ peft for prefix/prompt), except in rows saying \"vs own full FT\" "
          "(minipeft's full fine-tuning), \"vs bandwidth bound\" (the bound), \"vs 8 one at a time\" (minipeft, "
          "one task at a time) and \"checkpointing vs without\" (minipeft without activation checkpointing). Ratio: minipeft / reference for times and memory, for tokens/s the fraction or multiple "
          "of the reference's, for the batch rows the speed-up (time one at a time / time in one batch). The two sides "
          "take turns, one call each per round, and a time ratio is the median of the rounds' ratios (the columns are "
          "each side's median), so a slow stretch of this shared machine slows both sides of a ratio alike.")


def build_rows(r):
    rows = []
    train = r.get("train")
    if train:
        for m in METHODS:
            t = train[m]
            ratio = t["paired_ratio"]
            rows.append(row(f"train step, {NAMES[m]}", t["minipeft_ms"], t["reference_ms"], "ms", ratio, "<= 0.90", ratio <= 0.9))
        for m in (METHODS if "compiled_ms" in train["full"] else ()):
            t = train[m]
            rows.append(row(f"train step, {NAMES[m]}, compiled", t["compiled_ms"], t["reference_ms"], "ms",
                            t["compiled_paired_ratio"], "<= 0.75", t["compiled_paired_ratio"] <= 0.75))
            rows.append(row(f"train step, {NAMES[m]}, compiled vs own eager", t["compiled_ms"], t["minipeft_ms"], "ms",
                            t["compiled_to_eager"], "< 1.00", t["compiled_to_eager"] < 1.0))
        for m in PEFT_METHODS:
            ratio = train[m]["paired_ratio_to_full"]
            rows.append(row(f"train step, {NAMES[m]} vs own full FT", train[m]["minipeft_ms"], train["full"]["minipeft_ms"],
                            "ms", ratio, "<= 0.65", ratio <= 0.65))
    mem = r.get("memory")
    if mem:
        full = mem["full"]["minipeft"]["peak_mb"]
        for m in PEFT_METHODS:
            peak = mem[m]["minipeft"]["peak_mb"]
            rows.append(row(f"peak memory, {NAMES[m]} vs own full FT", peak, full, "MB", peak / full, "<= 0.60", peak / full <= 0.6))
        for m in PEFT_METHODS:
            peak, ref = mem[m]["minipeft"]["peak_mb"], mem[m]["reference"]["peak_mb"]
            rows.append(row(f"peak memory, {NAMES[m]}", peak, ref, "MB", peak / ref, "<= 1.00", peak <= ref))
    gen = r.get("generation")
    if gen:
        cases = (("plain", "no prefix"), ("prefix", f"prefix P={N_PREFIX}"))
        for case, label in cases:
            g = gen[case]
            ratio = g["paired_speedup"]
            rows.append(row(f"greedy generation, {label}", g["minipeft_tokens_per_s"], g["reference_tokens_per_s"], "tok/s",
                            ratio, ">= 1.00", ratio >= 1.0))
        for case, label in cases:
            g = gen[case]
            rows.append(row(f"greedy generation, {label} vs bandwidth bound", g["minipeft_tokens_per_s"],
                            gen["bound_tokens_per_s"], "tok/s", g["fraction_of_bound"], ">= 0.80", g["fraction_of_bound"] >= 0.8))
    for b in r.get("bank") or []:
        what = (f"{b['tokens_per_row']}-token forward" if b["kind"] == "forward" else
                f"{b['tokens_per_row']} + {b['new_tokens']} tokens generated")
        name = f"prefix (P={N_PREFIX}, baked)" if b["method"] == "prefix" else NAMES[b["method"]]
        rows.append(row(f"{b['rows']} tasks in one batch, {name}, {what} vs {b['rows']} one at a time",
                        b["bank_ms"], b["separate_ms"], "ms", b["speedup"], ">= 4.0", b["speedup"] >= 4.0))
    t5 = r.get("t5")
    if t5:
        ratio = t5["paired_ratio"]
        rows.append(row(f"T5 train step, prompt (P={N_PROMPT})", t5["minipeft_ms"], t5["reference_ms"], "ms", ratio,
                        "<= 0.90", ratio <= 0.9))
    ck = r.get("checkpointing")
    if ck:
        shape = f"GPT {ck['model']}, {ck['batch']} x {ck['positions']} positions"
        for m in PEFT_METHODS:
            c = ck[m]
            rows.append(row(f"peak memory, {NAMES[m]}, checkpointing vs without ({shape})", c["with"]["peak_mb"],
                            c["without"]["peak_mb"], "MB", c["peak_ratio"], "<= 0.50", c["peak_ratio"] <= 0.5))
        for m in PEFT_METHODS:
            c = ck[m]
            rows.append(row(f"train step, {NAMES[m]}, checkpointing vs without ({shape})", c["with"]["step_ms"],
                            c["without"]["step_ms"], "ms", c["step_ratio"], "<= 1.50", c["step_ratio"] <= 1.5))
    return rows


def fmt(value, unit):
    digits = 1 if unit == "tok/s" or value < 100 else 0
    return f"{value:,.{digits}f} {unit}"


def markdown(results):
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads, {m['device']} "
             f"{m['dtype']} (transformers {m['transformers']}, peft {m['peft']}); "
             f"median of {results['config']['steps']} steps after {results['config']['warmup']} warm-up, size {results['config']['size']}",
             "", "| what | minipeft | reference | ratio | target | result |", "|---|---:|---:|---:|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['what']} | {fmt(r['minipeft'], r['unit'])} | {fmt(r['reference'], r['unit'])} | {r['ratio']:.2f} | "
                     f"{r['target']} | {'PASS' if r['pass'] else 'MISS'} |")
    lines += ["", LEGEND]
    shares = [(f"train step, {NAMES[m]}", t) for m, t in (results.get("train") or {}).items()]
    shares += [(f"T5 train step, prompt (P={N_PROMPT})", results["t5"])] if results.get("t5") else []
    shares = [(what, t) for what, t in shares if t.get("matmul_share_minipeft") is not None]
    if shares:
        lines += ["", "Where the time goes (torch profiler, one step each): matrix products and attention (SDPA) are the "
                      "same BLAS and SDPA kernels on both sides, so minipeft's step cannot be shorter than its own time "
                      "in them; the last column is that floor over the reference's step.", "",
                  "| step | minipeft: products + attention | reference: products + attention | lowest possible ratio |",
                  "|---|---:|---:|---:|"]
        for what, t in shares:
            ours = {k: t[f"{k}_share_minipeft"] * t["minipeft_ms"] for k in ("matmul", "attention")}
            ref = {k: t[f"{k}_share_reference"] * t["reference_ms"] for k in ("matmul", "attention")}
            cell = lambda d, ms: f"{fmt(d['matmul'], 'ms')} + {fmt(d['attention'], 'ms')} ({(d['matmul'] + d['attention']) / ms:.0%})"  # noqa: E731
            lines.append(f"| {what} | {cell(ours, t['minipeft_ms'])} | {cell(ref, t['reference_ms'])} | "
                         f"{(ours['matmul'] + ours['attention']) / t['reference_ms']:.2f} |")
    ck = results.get("checkpointing")
    if ck:
        env = "".join(f", {k}={v}" for k, v in ck["env"].items())
        lines += ["", f"Activation checkpointing, GPT {ck['model']} ({ck['n_head']} heads), {ck['batch']} rows filling "
                      f"{ck['positions']} positions, each case in its own process{env}: its peak "
                      f"({ck['bitfit']['without']['kind']}), the part of it above the built model (activations, gradients, "
                      f"optimizer state, temporaries) and the median step time of {ck['steps']} after {ck['warmup']} warm-up.", "",
                  "| method | peak without | peak with | ratio | above the model: without | with | ratio | step without | step with | ratio |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for m in PEFT_METHODS:
            c, w, o = ck[m], ck[m]["with"], ck[m]["without"]
            lines.append(f"| {NAMES[m]} | {fmt(o['peak_mb'], 'MB')} | {fmt(w['peak_mb'], 'MB')} | {c['peak_ratio']:.2f} | "
                         f"{fmt(o['above_model_mb'], 'MB')} | {fmt(w['above_model_mb'], 'MB')} | {c['above_model_ratio']:.2f} | "
                         f"{fmt(o['step_ms'], 'ms')} | {fmt(w['step_ms'], 'ms')} | {c['step_ratio']:.2f} |")
    gen = results.get("generation")
    if gen:
        lines += ["", f"Bandwidth bound: {gen['param_bytes'] / 1e6:,.1f} MB of parameters read per token / "
                      f"{gen['copy_bandwidth_gb_s']:.1f} GB/s copy bandwidth (read + written, {results['config']['shapes']['copy_mb']} MB "
                      f"tensor copy) = {gen['bound_tokens_per_s']:.1f} tokens/s. A copy runs in every round of the generation "
                      "timing, and the ratio is the median of each round's tokens/s over that round's bound."]
        for case in ("plain", "prefix"):
            g = gen[case]
            if not g.get("same_tokens", True):
                lines += ["", f"Generation ({case}): the two sides' tokens differ from new token "
                              f"{g['same_leading_tokens'] + 1} on. First new token by each side's own forward pass: "
                              f"minipeft {g['first_token_forward_minipeft']}, reference {g['first_token_forward_reference']}; "
                              f"minipeft's generate agrees with its forward: {g['minipeft_generate_agrees_with_forward']}, "
                              f"the reference's generate with its forward: {g['reference_generate_agrees_with_forward']}."]
    return "\n".join(lines)


PARTS = ("train", "memory", "generation", "bank", "t5")  # the default run
ON_REQUEST = ("checkpointing",)                         # only with --only (long sequences: slow on a CPU)


def main(argv=None):
    p = argparse.ArgumentParser(description="minipeft vs transformers + peft: speed and memory")
    p.add_argument("--size", choices=sorted(SIZES), default="gpt2", help="gpt2 (GPT-2 small, T5-small) or tiny (tests)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per case (medians)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: when available")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                   help="fp32, or bf16 autocast; auto: fp32 on CPU, bf16 autocast on CUDA")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts to run, from {','.join(PARTS + ON_REQUEST)} "
                   f"(default: {','.join(PARTS)})")
    p.add_argument("--checkpointing-model", metavar="LxC", help="part checkpointing: a GPT of L layers, C wide (C // 64 "
                   "heads), with GPT-2's vocabulary and context, instead of the --size's (e.g. 6x384)")
    p.add_argument("--compile", action="store_true", help="part train: also minipeft through torch.compile (inductor), "
                   "against the same eager reference (each method compiles first: minutes on a CPU)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile's backend for --compile (default: "
                   "%(default)s; aot_eager traces the same graph without compiling it, for the tests)")
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    p.add_argument("--one-case", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one_case:
        return one_case(json.loads(args.one_case))
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device available")
    parts = [x for x in args.only.split(",") if x]
    if any(x not in PARTS + ON_REQUEST for x in parts):
        p.error(f"--only takes parts from {PARTS + ON_REQUEST}")
    if args.checkpointing_model:
        if not re.fullmatch(r"[1-9]\d*x[1-9]\d*", args.checkpointing_model):
            p.error(f"--checkpointing-model takes LxC (layers x width, e.g. 6x384); got {args.checkpointing_model!r}")
        try:
            long_config(args.size, args.checkpointing_model).validate()
        except minipeft.MiniPeftError as e:
            p.error(f"--checkpointing-model {args.checkpointing_model}: {e}")
    torch.set_num_threads(args.threads)
    BF16["on"] = args.dtype == "bf16" or (args.dtype == "auto" and args.device == "cuda")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    results = {"machine": machine(args.threads, args.device),
               "config": {"size": args.size, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
                          "device": args.device, "shapes": SIZES[args.size], "n_prefix": N_PREFIX,
                          "prefix_hidden": PREFIX_HIDDEN, "n_prompt": N_PROMPT,
                          "compile": args.compile_backend if args.compile else None,
                          "optimizer": {k: v for k, v in make_optimizer(torch.nn.Linear(1, 1), LR).defaults.items()
                                        if k in ("lr", "betas", "eps", "weight_decay", "foreach", "fused")}}}
    start = time.perf_counter()
    if "memory" in parts:  # first, while this process is small (the subprocesses measure their own peak anyway)
        results["memory"] = bench_memory(args.size, args.device, args.threads, max(2, args.warmup + 1), log)
    if "checkpointing" in parts:
        results["checkpointing"] = bench_checkpointing(args.size, args.device, args.threads, args.steps, args.warmup,
                                                       args.checkpointing_model, log)
    train = functools.partial(bench_train, compiled=args.compile_backend if args.compile else None)
    shared = [(part, run) for part, run in (("train", train), ("generation", bench_generation), ("bank", bench_bank),
                                            ("t5", bench_t5)) if part in parts]
    if shared:  # the parts that run the reference's saved weights
        with tempfile.TemporaryDirectory() as folder:
            save_reference(args.size, folder)
            for part, run in shared:
                results[part] = run(folder, args.size, args.device, args.steps, args.warmup, log)
    log(f"done in {time.perf_counter() - start:.0f} s")
    with contextlib.suppress(OSError):
        results["machine"]["load_average_end"] = os.getloadavg()
    results["rows"] = build_rows(results)
    print(markdown(results))
    if args.json:
        with atomic_write(args.json, "w") as f:  # the previous results stay whole until the new ones are written
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
