"""Fine-tuning a small model on the generated tasks with any method: what train_char.py and the
paper reproductions (minipeft.experiments) share.

A task is a list of (prompt, completion) pairs (tasks.e2e, tasks.sentiment). For GPT-2 one row is
prompt + completion with the loss on the completion only; for T5 the prompt feeds the encoder and
the completion is the decoder's target. Every method goes through the same loop:
    full     every weight trains (the ceiling)
    frozen   nothing trains (the floor)
    bitfit / prefix / prompt   the adapters of this package
"""

import os
import time

import torch

from ..methods.adapter import Adapter
from ..methods.bitfit import BitFit
from ..errors import MiniPeftError
from ..checks import IGNORE
from ..methods.prefix import PrefixTuning
from ..methods.prompt import PromptTuning
from ..models.t5 import EOS_ID
from .metrics import text_scores
from .tasks import e2e, e2e_references, sentiment
from . import loop
from .state import make_optimizer, step_seed

METHODS = ("full", "frozen", "bitfit", "prefix", "prompt")
MAX_LEN = 256  # tokens per row, so that no E2E example is cut (prompt + sentence: at most ~250 characters); fit()
               # lowers it to what a model's context leaves after its prompt or prefix slots
ARROW = " => "  # ends every prompt: "source => " -> "target\n"
TASKS = ("e2e", "sentiment")


class Diverged(MiniPeftError):
    """Fine-tuning met a non-finite loss or gradient (finetune stopped before that step's update)."""


class Codec:
    """Text <-> ids for a model: GPT-2 char models use the tokenizer's ids; T5 char models shift
    them by 2 so that 0 (pad, the decoder start) and 1 (eos) stay free."""

    def __init__(self, tokenizer, arch):
        self.tokenizer, self.arch = tokenizer, arch
        self.offset = 2 if arch == "t5" else 0

    @property
    def vocab_size(self):
        return self.tokenizer.vocab_size + self.offset

    def encode(self, text):
        return [i + self.offset for i in self.tokenizer.encode(text)]

    def decode(self, ids):
        return self.tokenizer.decode([i - self.offset for i in ids if i >= self.offset])


def make_method(method, model, *, n_prefix=10, n_prompt=20, prompt_init="random", terms="all", reparam=True,
                where="all", init_ids=None, label_ids=None, n_ensemble=1, slots=None, seed=0):
    """The module to train for `method` (the model itself for full/frozen)."""
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method == "frozen":
        for p in model.parameters():
            p.requires_grad_(False)
        return model
    if method == "bitfit":
        return BitFit(model, terms, slots=slots)
    if method == "prefix":
        return PrefixTuning(model, n_prefix, reparam=reparam, where=where, init_ids=init_ids, hidden=512)
    if method == "prompt":
        return PromptTuning(model, n_prompt, prompt_init, label_ids=label_ids, text_ids=init_ids, n_ensemble=n_ensemble, seed=seed)
    raise MiniPeftError(f"unknown method {method!r}; choose from {METHODS}")


def pairs(task, n, seed):
    """n (prompt, completion) pairs of a task, "source => " -> "target\n": task "e2e" (table ->
    sentence) or "sentiment" (review -> label word)."""
    if task == "e2e":
        return [(s + ARROW, t + "\n") for s, t in e2e(n, seed=seed)]
    if task == "sentiment":
        return [(t + ARROW, label + "\n") for t, label in sentiment(n, seed=seed)]
    raise MiniPeftError(f"unknown task {task!r}; choose from 'e2e', 'sentiment'")


def task_data(n_train, n_val, seed):
    """{task: (training pairs, validation pairs)} for each of TASKS: n_train pairs generated from
    `seed`, n_val from seed + 1 (a different draw of the same templates)."""
    return {task: (pairs(task, n_train, seed), pairs(task, n_val, seed + 1)) for task in TASKS}


def batch(pairs, codec, max_len, device="cpu"):
    """Tensors for a list of (prompt, completion): right-padded rows, loss on the completion only.

    GPT: (ids, mask, labels, infix_at) where infix_at is the first completion index (for infix
    prefixes). T5: (encoder ids, encoder mask, labels), labels padded with IGNORE (-100).
    """
    if codec.arch == "t5":
        src = [codec.encode(p)[:max_len] for p, _ in pairs]
        tgt = [codec.encode(c)[: max_len - 1] + [1] for _, c in pairs]  # eos
        ids, mask = _pad(src, 0)
        labels, _ = _pad(tgt, IGNORE)
        return ids.to(device), mask.to(device), labels.to(device)
    rows, starts = [], []
    for prompt, completion in pairs:
        p, c = codec.encode(prompt), codec.encode(completion)
        p = p[-(max_len - 1):]                                    # keep the prompt's end
        rows.append((p + c)[:max_len])
        starts.append(len(p))
    ids, mask = _pad(rows, 0)
    labels = ids.masked_fill(~mask.bool(), IGNORE)
    for i, s in enumerate(starts):
        labels[i, :s] = IGNORE
    return ids.to(device), mask.to(device), labels.to(device), torch.tensor(starts, device=device)


def fit(module, max_len):
    """max_len reduced so that a GPT-2's prompt/prefix slots plus the tokens fit in its context."""
    base = getattr(module, "model", module)
    if base.arch != "gpt":
        return max_len
    slots = module.prompt.shape[1] if isinstance(module, PromptTuning) else module.n_prefix if isinstance(module, PrefixTuning) else 0
    return min(max_len, base.config.n_positions - slots)


def _pad(rows, value, left=False):
    """(ids [B, T], mask [B, T]) of lists of ids: `value` after each row's tokens (before them with
    left=True, as GPT-2 generation needs), mask 1 on the tokens."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), value, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(T - len(r), T) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def loss_of(module, tensors, codec, forward=None):
    """Mean completion loss of one batch for a model or adapter; forward: what to call instead of
    module (torch.compile(module))."""
    forward = module if forward is None else forward
    if codec.arch == "t5":
        ids, mask, labels = tensors
        return forward(ids, attention_mask=mask, labels=labels)
    ids, mask, labels, starts = tensors
    return forward(ids, mask, labels=labels, **_infix(module, starts))


def _infix(module, starts):
    """An infix adapter's placement: just before the prompt's last token, the position that
    predicts the completion's first token (in the paper that prediction comes from the infix's
    own last activation; here the slots are keys/values, so that position must see them)."""
    if isinstance(module, PrefixTuning) and module.where == "infix":
        return {"infix_at": starts - 1}
    return {}


def finetune(module, train, codec, *, steps, lr, batch_size=16, max_len=MAX_LEN, seed=0, device="cpu", desc=None,
             log_every=10, on_step=None, compile=False, decay=False):
    """Train `module` on (prompt, completion) pairs with loop.train; returns the loss curve [(step, loss)].
    decay: warm up over the first 5% of the steps, then decay linearly to 0 (loop.linear_decay);
    False: a constant lr, as the experiments train.
    on_step(step, loss): called after each update (e.g. to evaluate; it must leave the module in train mode).
    compile: train through torch.compile(module) (the same parameters; evaluation stays eager).

    Batches are a deterministic function of (seed, step). Stops with Diverged (a MiniPeftError) on
    a non-finite loss, before that step's update: the module keeps its last good state.
    desc: a progress bar's label (None: no bar).
    """
    curve = []
    if not any(p.requires_grad for p in module.parameters()):
        return curve                                             # "frozen": nothing to train
    max_len = fit(module, max_len)
    forward = torch.compile(module) if compile else module

    def loss_at(step):
        g = torch.Generator().manual_seed(step_seed(seed, step))
        picks = torch.randint(len(train), (batch_size,), generator=g).tolist()
        return loss_of(module, batch([train[i] for i in picks], codec, max_len, device), codec, forward)

    def log(step, loss):
        if step % log_every == 0 or step == steps - 1:
            curve.append((step, loss))
        if on_step is not None:
            on_step(step, loss)

    try:
        lr_at = loop.linear_decay(lr, steps, max(1, steps // 20)) if decay else None
        loop.train(module, make_optimizer(module, lr), loss_at, steps, lr_at=lr_at, on_step=log, desc=desc)
    except loop.NonFiniteLoss as e:
        raise Diverged(f"{e}; lower the learning rate (now {lr})") from None
    module.eval()
    return curve


def save_for_task(module, method, folder):
    """Write what serving the task needs beside the shared backbone into folder; returns its bytes:
    the adapter file METHOD.safetensors, the whole model (full/) for full fine-tuning, nothing for frozen."""
    os.makedirs(folder, exist_ok=True)
    if isinstance(module, Adapter):
        path = os.path.join(folder, f"{method}.safetensors")
        module.save(path)
        return os.path.getsize(path)
    if method == "full":
        module.save_pretrained(os.path.join(folder, "full"))
        return os.path.getsize(os.path.join(folder, "full", "model.safetensors"))
    return 0


def n_targets(labels, arch):
    """How many tokens a batch's loss averages over: the labels other than IGNORE, but for a GPT
    not the first column (it predicts labels[:, 1:]; a T5 decoder predicts every label)."""
    return int(((labels[:, 1:] if arch == "gpt" else labels) != IGNORE).sum())


@torch.no_grad()
def evaluate(module, data, codec, *, batch_size=32, max_len=MAX_LEN, device="cpu"):
    """Mean completion loss per target token over `data` (each batch's mean weighted by its token count)."""
    module.eval()
    max_len = fit(module, max_len)
    total, count = 0.0, 0
    for i in range(0, len(data), batch_size):
        tensors = batch(data[i:i + batch_size], codec, max_len, device)
        n = n_targets(tensors[2], codec.arch)
        if n:
            total, count = total + loss_of(module, tensors, codec).item() * n, count + n
    if not count:
        raise MiniPeftError(f"nothing to evaluate: the {len(data)} examples have no completion tokens")
    return total / count


@torch.no_grad()
def accuracy(module, data, codec, labels, *, batch_size=64, max_len=MAX_LEN, device="cpu"):
    """Label-word classification accuracy: the label whose first token scores highest next.
    For a prompt ensemble, returns (mean single-prompt accuracy, majority-vote accuracy)."""
    from ..methods.adapter import class_scores
    module.eval()
    max_len = fit(module, max_len)
    label_ids = [codec.encode(word) for word in labels]
    single, voted, n = 0.0, 0.0, 0
    for i in range(0, len(data), batch_size):
        chunk = data[i:i + batch_size]
        gold = torch.tensor([labels.index(c.strip()) for _, c in chunk], device=device)
        if codec.arch == "t5":
            ids, mask, _ = batch([(p, c) for p, c in chunk], codec, max_len, device)
        else:
            ids, mask = _pad([codec.encode(p)[-max_len:] for p, _ in chunk], 0)
            ids, mask = ids.to(device), mask.to(device)
        if isinstance(module, PromptTuning) and module.n_ensemble > 1:
            per_prompt, vote = module.classify(ids, mask, label_ids)
            single += (per_prompt == gold).float().mean(0).sum().item()
            voted += (vote == gold).float().sum().item()
        else:
            pred = class_scores(module, ids, mask, label_ids, **_infix(module, mask.sum(1))).argmax(-1)
            single += (pred == gold).float().sum().item()
        n += len(chunk)
    if isinstance(module, PromptTuning) and module.n_ensemble > 1:
        return single / n, voted / n
    return single / n


@torch.no_grad()
def generate_completions(module, prompts, codec, *, max_new_tokens=80, batch_size=32, stop="\n", max_len=MAX_LEN, device="cpu"):
    """Greedy completions of `prompts` (strings) by a model or adapter: the text each one continues
    with, at most max_new_tokens tokens, cut before the first `stop` (None: not cut).

    GPT: batches are left-padded, so that the new tokens follow every row's last one; a prompt keeps
    its last max_len tokens (fewer where the adapter's prefix/prompt slots and the new tokens would
    overflow the context). A stop string of one token ends a row there (generate's eos). T5: the
    prompt's first max_len tokens feed the encoder (as batch() trims them) and the decoder stops at
    its eos. Not supported: an infix prefix, a prompt ensemble (pick one with PromptTuning.member).
    """
    base = getattr(module, "model", module)
    _check_completion_args(module, base, prompts, codec, max_new_tokens, batch_size, stop, max_len)
    module.eval()
    t5 = codec.arch == "t5"
    if t5:
        keep, eos = fit(module, max_len), EOS_ID
    else:
        n_ctx = base.config.n_positions
        room = fit(module, n_ctx) - max_new_tokens                     # the context less the slots and the new tokens
        if room < 1:
            raise MiniPeftError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt: the context has {n_ctx} "
                                f"positions, {n_ctx - fit(module, n_ctx)} of them the adapter's slots")
        keep, eos = min(fit(module, max_len), room), _single_token(stop, codec)
    completions = []
    for i in range(0, len(prompts), batch_size):
        rows = [codec.encode(p) for p in prompts[i:i + batch_size]]
        ids, mask = _pad([r[:keep] for r in rows], 0) if t5 else _pad([r[-keep:] for r in rows], 0, left=True)
        out = module.generate(ids.to(device), mask.to(device), max_new_tokens=max_new_tokens, eos_token_id=eos)
        new = out[:, 1:] if t5 else out[:, ids.shape[1]:]              # T5: after the decoder's start token
        # a row that ended is padded with eos: for T5 an id the codec drops, for GPT the stop itself
        texts = [codec.decode(row) for row in new.tolist()]
        completions += texts if stop is None else [text.split(stop, 1)[0] for text in texts]
    return completions


def _single_token(text, codec):
    """The id of `text` when it is exactly one token (decoding can end there), else None."""
    ids = [] if text is None else codec.encode(text)
    return ids[0] if len(ids) == 1 and codec.decode(ids) == text else None


def _check_completion_args(module, base, prompts, codec, max_new_tokens, batch_size, stop, max_len):
    if getattr(base, "arch", None) != codec.arch:
        raise MiniPeftError(f"the codec is for a {codec.arch} model but the module is a {getattr(base, 'arch', type(base).__name__)}")
    if isinstance(module, PrefixTuning) and module.where == "infix":
        raise MiniPeftError("generate_completions does not support an infix prefix (where='infix'); use where='all'")
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) and p for p in prompts):
        raise MiniPeftError("prompts must be a list of non-empty strings")
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size), ("max_len", max_len)):
        if type(value) is not int or value < 1:
            raise MiniPeftError(f"{name} must be a positive integer, got {value!r}")
    if stop is not None and not (isinstance(stop, str) and stop):
        raise MiniPeftError(f"stop must be a non-empty string or None, got {stop!r}")


def e2e_scores(module, data, codec, **kw):
    """{"bleu", "chrf"} (metrics.text_scores) of the greedy completions of E2E pairs (prompt
    "SOURCE => ", as task_data builds them) against every reference of their source
    (tasks.e2e_references). kw: generate_completions' options; max_new_tokens defaults to the
    longest reference's tokens + 1 (for the stop), so that no hypothesis is cut short."""
    if not data:
        raise MiniPeftError("e2e_scores: no examples to score")
    prompts = [prompt for prompt, _ in data]
    bad = [p for p in prompts if not (isinstance(p, str) and p.endswith(ARROW))]
    if bad:
        raise MiniPeftError(f"e2e_scores needs prompts 'SOURCE{ARROW}' (as task_data builds them); got {bad[0]!r:.200}")
    references = [e2e_references(p[:-len(ARROW)]) for p in prompts]
    kw.setdefault("max_new_tokens", max(len(codec.encode(r)) for refs in references for r in refs) + 1)
    return text_scores(generate_completions(module, prompts, codec, **kw), references)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
