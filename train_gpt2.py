"""Fine-tune GPT-2 with BitFit, Prefix Tuning, Prompt Tuning or full fine-tuning, nanoGPT style.

    python train_gpt2.py --model gpt2 --method prefix                  # built-in table-to-text data
    python train_gpt2.py --model gpt2 --method bitfit --data my.jsonl   # {"prompt": ..., "completion": ...}
    python train_gpt2.py --model gpt2 --method prompt --data book.txt   # plain language modelling
    python train_gpt2.py --model gpt2 --method prefix --resume          # continue the run in --out
    python train_gpt2.py --init tiny --method bitfit --steps 20         # a random tiny GPT-2 (no download)
    python train_gpt2.py --model gpt2 --method bitfit --max-length 1024 --checkpointing   # less memory
    python train_gpt2.py --model gpt2 --method prefix --compile         # torch.compile: faster steps after the first
    torchrun --nproc_per_node=2 train_gpt2.py --model gpt2 --method bitfit --batch-size 16   # 2 processes, 8 each

--model is a folder in the Hugging Face layout (config.json + model.safetensors or
pytorch_model.bin, as `huggingface-cli download gpt2 config.json model.safetensors --local-dir gpt2`
writes it) or one .safetensors file; minipeft reads it itself. The tokenizer is the folder's
vocab.json + merges.txt when it has them, else GPT-2's own, shipped with minipeft.

Data: see minipeft/training/textdata.py (.txt: loss on every token; .jsonl: loss on the completion only;
<|endoftext|> in the text is plain text; long examples are truncated, or refused with
--no-truncate). 10% of the examples (a fixed shuffle) are held out: their loss is reported
before and after training, with greedy samples for a few of their prompts.

Written to --out: adapter.safetensors (or model/ for --method full; base/ too for --init tiny,
so the adapter can be loaded back onto the same random model) and state.pt, every --save-every
steps and at the end, for --resume; the paths are printed at the end. An --out that holds an
earlier run is refused: --resume continues it, --overwrite replaces it (its files are removed once
the new run has loaded its model and data), or pass another --out. Each step's batch depends only on (--seed, step), so a run
that is stopped and resumed ends with the same weights as one that ran straight through.
Ctrl-C finishes the current step, saves state.pt and exits; a second Ctrl-C stops at once.
A non-finite loss or gradient stops the run with state.pt left at the last good save.

Under torchrun (minipeft/training/distributed.py) each process trains on its slice of every
batch with DistributedDataParallel (gloo on CPU, nccl on CUDA, one GPU per process): --batch-size
is the global batch, so 1 or N processes reach the same weights; only the trainable tensors'
gradients are all-reduced (the run prints how many bytes per step); rank 0 alone prints and writes.
"""

import argparse
import os
import shutil
import sys

import torch
from tqdm import tqdm

from minipeft import GPT, BitFit, GPTConfig, MiniPeftError, PrefixTuning, PromptTuning
from minipeft.io.adapter_file import fingerprint, same_base
from minipeft.methods.adapter import Adapter
from minipeft.methods.bitfit import TERMS
from minipeft.training.finetune import n_targets
from minipeft.training.textdata import collate, load_examples, pair_examples, split
from minipeft.training.tasks import e2e
from minipeft.io.tokenizer import gpt2_tokenizer
from minipeft.training import cli, distributed, loop
from minipeft.training.state import (make_optimizer, own_state, read_training_state, restore_training_state, step_seed,
                                     write_training_state)

STATE_FILE = "state.pt"
ADAPTER_FILE = "adapter.safetensors"
MODEL_DIR = "model"    # --method full: the fine-tuned model
BASE_DIR = "base"      # --init tiny: the random base model the adapter belongs to
RUN_FILES = (STATE_FILE, ADAPTER_FILE, MODEL_DIR, BASE_DIR)  # what a run writes in --out
DEFAULT_LR = {"full": 5e-5, "bitfit": 1e-3, "prefix": 5e-4, "prompt": 0.3}  # prompt: as in the paper
VAL_FRACTION = 0.1
SPLIT_SEED = 0         # the held-out split does not move with --seed, so runs stay comparable
GET_MODEL = ("pass --model with a GPT-2 folder (config.json + model.safetensors) or a .safetensors file; "
             "get it once on a machine with internet: huggingface-cli download gpt2 config.json model.safetensors "
             "--local-dir gpt2 (or pass --init tiny for a random tiny GPT-2)")


# ---- arguments --------------------------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(description="Fine-tune GPT-2 with BitFit, Prefix Tuning, Prompt Tuning or full fine-tuning.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="GPT-2 weights: a Hugging Face-layout folder or a .safetensors file")
    p.add_argument("--init", choices=["tiny"], help="instead of --model: a random tiny GPT-2 (2 layers, 32 wide; for tests)")
    p.add_argument("--method", choices=["bitfit", "prefix", "prompt", "full"], default="prefix", help="what to train")
    g = p.add_argument_group("method options")
    g.add_argument("--terms", default="all", help=f"bitfit: 'all', 'paper' (query,mlp_in) or a comma list of {','.join(TERMS)}")
    g.add_argument("--n-prefix", type=int, default=10, help="prefix: virtual tokens per layer")
    g.add_argument("--no-reparam", action="store_true", help="prefix: train the prefix directly, without the MLP")
    g.add_argument("--hidden", type=int, default=512, help="prefix: hidden width of the reparameterisation MLP")
    g.add_argument("--n-prompt", type=int, default=20, help="prompt: soft-prompt length")
    g.add_argument("--prompt-init", choices=["random", "vocab", "text"], default="vocab", help="prompt: initialisation")
    g.add_argument("--init-text", default="Describe the restaurant in one sentence:",
                   help="prompt: the text whose embeddings start the prompt (--prompt-init text)")
    d = p.add_argument_group("data")
    d.add_argument("--data", help=".txt (plain text) or .jsonl ({\"prompt\", \"completion\"} per line); "
                                  "default: built-in table-to-text examples")
    d.add_argument("--n-examples", type=int, default=2000, help="built-in examples to generate (without --data)")
    d.add_argument("--max-length", type=int, default=None,
                   help="tokens per example (or per .txt chunk); default 256, less if the context is smaller")
    d.add_argument("--no-truncate", action="store_true", help="refuse examples longer than --max-length instead of truncating them")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=300, help="optimizer steps")
    t.add_argument("--batch-size", type=int, default=8, help="examples per step (under torchrun: in all, split over "
                   "the processes)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default by method: " +
                   ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + "); linear warmup, then linear decay to 0")
    t.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 5%% of --steps)")
    t.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    t.add_argument("--checkpointing", action="store_true",
                   help="activation checkpointing: keep only each block's inputs and recompute the rest in backward "
                        "(less memory for long sequences, for one more forward pass per step; the same loss and gradients)")
    t.add_argument("--fsdp", action="store_true", help="under torchrun: shard the model over the processes (FSDP, "
                   "fully_shard; each holds 1/N of every tensor while training) instead of a whole copy each (DDP); "
                   "the model is still loaded whole on each process first")
    t.add_argument("--compile", action="store_true", help="train through torch.compile(module) (inductor): the first "
                   "steps compile (minutes on a CPU), later ones run faster; the same loss and gradients to 1e-5")
    t.add_argument("--seed", type=int, default=1337, help="seed for the adapter's init and the batch order")
    t.add_argument("--out", default="runs/gpt2", help="folder for the adapter/model and state.pt")
    t.add_argument("--save-every", type=int, default=100, help="write state.pt every N steps (and at the end)")
    t.add_argument("--log-every", type=int, default=50, help="print the training loss every N steps (on N processes: "
                   "the loss of the whole global batch)")
    t.add_argument("--resume", action="store_true", help="continue from --out/state.pt up to --steps")
    t.add_argument("--overwrite", action="store_true", help="replace the earlier run in --out (without it, such an "
                   "--out is refused)")
    t.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="end this run after STEP steps with state.pt, as if interrupted; --resume continues")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-examples", type=int, default=200, help="held-out examples for the loss before/after (at most)")
    e.add_argument("--samples", type=int, default=3, help="held-out prompts to continue greedily before/after (0: none)")
    e.add_argument("--sample-tokens", type=int, default=40, help="new tokens per sample")
    return p


def check_args(parser, args):
    """Refuse bad arguments with one clear line (argparse exits with status 2)."""
    if args.model is None and args.init is None:
        parser.error(f"no model: {GET_MODEL}")
    if args.model is not None and args.init is not None:
        parser.error("give --model or --init tiny, not both")
    if args.model is not None and not os.path.exists(args.model):
        parser.error(f"--model {args.model}: no such file or folder; {GET_MODEL}")
    for name in ("steps", "batch_size", "save_every", "log_every", "eval_examples", "n_prefix", "hidden", "n_prompt", "n_examples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    for name in ("samples", "sample_tokens"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.max_length is not None and args.max_length < 2:
        parser.error(f"--max-length must be at least 2 (one token to read, one to predict), got {args.max_length}")
    if args.resume and args.overwrite:
        parser.error("give --resume (continue the run in --out) or --overwrite (replace it), not both")
    world = distributed.world_size()
    if args.fsdp and world < 2:
        parser.error("--fsdp shards the model over the processes torchrun starts: run it as "
                     "torchrun --nproc_per_node=N train_gpt2.py ... --fsdp, with N >= 2")
    if args.batch_size % world:
        parser.error(f"--batch-size {args.batch_size} is the global batch, split over the {world} processes torchrun "
                     f"started: give a multiple of {world}")
    cli.check_run_args(parser, args, STATE_FILE)
    earlier = earlier_run(args.out)
    if earlier and not (args.resume or args.overwrite):
        parser.error(f"--out {args.out} already holds a run ({', '.join(earlier)}): continue it with --resume, "
                     "write this run to another --out, or pass --overwrite to replace it")
    args.lr = args.lr or DEFAULT_LR[args.method]
    args.warmup = args.steps // 20 if args.warmup is None else args.warmup
    return args


# ---- model, method, data ----------------------------------------------------------------------------

def load_model(args):
    """(model, tokenizer): the GPT-2 of --model (or a random tiny one) and its tokenizer."""
    if args.init == "tiny":
        torch.manual_seed(args.seed)  # the same random base on every run with this seed (and on --resume)
        model, tokenizer = GPT(GPTConfig.named("tiny", vocab_size=50257)), gpt2_tokenizer()
    else:
        model, tokenizer = GPT.from_pretrained(args.model), gpt2_tokenizer(bpe_folder(args.model))
    if tokenizer.n_vocab > model.config.vocab_size:
        raise MiniPeftError(f"the tokenizer has {tokenizer.n_vocab} tokens but the model only {model.config.vocab_size}: "
                            "this is not a GPT-2 vocabulary")
    model.checkpointing = args.checkpointing
    return model.to(args.device), tokenizer


def bpe_folder(path):
    """The model's folder if it has its own BPE files (vocab.json + merges.txt, or OpenAI's
    encoder.json + vocab.bpe), else None: GPT-2's tokenizer shipped with minipeft."""
    for files in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if os.path.isdir(path) and all(os.path.isfile(os.path.join(path, f)) for f in files):
            return path
    return None


def n_virtual(args):
    """Positions the method puts before the tokens (prefix slots shift positions; prompt slots take them)."""
    return {"prefix": args.n_prefix, "prompt": args.n_prompt}.get(args.method, 0)


def set_max_length(args, model):
    room = model.config.n_positions - n_virtual(args)
    if room < 2:
        raise MiniPeftError(f"--n-prefix/--n-prompt {n_virtual(args)} leaves no room in the model's context of {model.config.n_positions}")
    if args.max_length is None:
        args.max_length = min(256, room)
    elif args.max_length > room:
        raise MiniPeftError(f"--max-length {args.max_length} plus {n_virtual(args)} virtual tokens exceeds the model's "
                            f"context of {model.config.n_positions}; use --max-length {room} or less")


def build_method(model, tokenizer, args):
    """The module to train: an adapter around the frozen model, or the model itself (full)."""
    torch.manual_seed(args.seed)
    if args.method == "full":
        return model
    if args.method == "bitfit":
        terms = args.terms if args.terms in ("all", "paper") else [t.strip() for t in args.terms.split(",") if t.strip()]
        return BitFit(model, terms)
    if args.method == "prefix":
        return PrefixTuning(model, args.n_prefix, reparam=not args.no_reparam, hidden=args.hidden)
    text_ids = tokenizer.encode_ordinary(args.init_text) if args.prompt_init == "text" else None
    if args.prompt_init == "text" and not text_ids:
        raise MiniPeftError("--init-text is empty; --prompt-init text needs some text")
    return PromptTuning(model, args.n_prompt, args.prompt_init, text_ids=text_ids, seed=args.seed)


def build_data(tokenizer, args, ranks):
    """(train, held-out) examples from --data or the built-in table-to-text task (every rank reads
    them all; rank 0 alone warns)."""
    warn = lambda message: tqdm.write(f"warning: {message}", file=sys.stderr) if ranks.main else None  # noqa: E731
    if args.data:
        examples = load_examples(args.data, tokenizer, args.max_length, truncate=not args.no_truncate, warn=warn)
    else:
        pairs = [(source + " =>", " " + target) for source, target in e2e(args.n_examples, seed=SPLIT_SEED)]
        examples = pair_examples(tokenizer, pairs, args.max_length, truncate=not args.no_truncate, warn=warn, source="built-in e2e")
    return split(examples, VAL_FRACTION, seed=SPLIT_SEED)


def batch_at(train_set, step, args):
    """The examples of a step's (global) batch: a function of (--seed, step) only, so a resumed run
    draws what a straight run would, on any number of processes."""
    g = torch.Generator().manual_seed(step_seed(args.seed, step))
    return [train_set[i] for i in torch.randint(len(train_set), (args.batch_size,), generator=g).tolist()]


# ---- evaluation -------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(module, val_set, args):
    """Mean loss per target token over the first --eval-examples held-out examples."""
    module.eval()
    examples = val_set[:args.eval_examples]
    total = count = 0
    for i in range(0, len(examples), args.batch_size):
        ids, labels = collate(examples[i:i + args.batch_size])
        n = n_targets(labels, "gpt")
        loss = module(ids.to(args.device), labels=labels.to(args.device))
        total, count = total + loss.item() * n, count + n
    module.train()
    return total / count


@torch.no_grad()
def samples(module, tokenizer, val_set, args):
    """[(prompt, greedy continuation, reference)] for the first --samples held-out examples."""
    module.eval()
    room = module.config.n_positions if isinstance(module, GPT) else module.model.config.n_positions
    n_new = min(args.sample_tokens, room - n_virtual(args) - 1)
    out = []
    for e in val_set[:args.samples]:
        prompt = e.prompt if e.n_prompt else e.ids[:max(1, len(e.ids) // 2)]        # .txt: the first half
        reference = e.completion if e.n_prompt else e.ids[len(prompt):]
        prompt = list(prompt)[-(room - n_virtual(args) - n_new):]                     # fit the context
        ids = torch.tensor([prompt], device=args.device)
        new = module.generate(ids, max_new_tokens=n_new, eos_token_id=tokenizer.eot_token)[0, len(prompt):].tolist()
        out.append(tuple(tokenizer.decode([t for t in x if t != tokenizer.eot_token]) for x in (prompt, new, reference)))
    module.train()
    return out


def report(module, tokenizer, val_set, args, when):
    tqdm.write(f"eval loss {when}: {evaluate(module, val_set, args):.4f} ({min(len(val_set), args.eval_examples)} held-out examples)")
    for prompt, new, reference in samples(module, tokenizer, val_set, args):
        tqdm.write(f"  sample {when}: {prompt!r} -> {new!r}\n    reference: {reference!r}")


# ---- checkpoints ------------------------------------------------------------------------------------

def earlier_run(out):
    """The files of an earlier run in the folder out (those this script writes); [] when none."""
    return [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]


def remove_earlier_run(args):
    """--overwrite: remove the earlier run's files from --out (only those this script writes)."""
    earlier = earlier_run(args.out)
    for name in earlier:
        path = os.path.join(args.out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    if earlier:
        print(f"--overwrite: removed the earlier run from {args.out} ({', '.join(earlier)})")


RUN_ARGS = ("method", "terms", "n_prefix", "no_reparam", "hidden", "n_prompt", "prompt_init", "data", "n_examples",
            "max_length", "steps", "batch_size", "lr", "warmup", "seed")
SHAPE_ARGS = ("terms", "n_prefix", "no_reparam", "hidden", "n_prompt")  # they decide which tensors a method trains


def save_state(module, optimizer, step, base, ranks, args):
    """state.pt at `step`, in the one-process format. Every rank calls it (under FSDP the shards
    are gathered first, which takes them all); rank 0 writes."""
    module_state, optimizer_state = distributed.whole_state(own_state(module), optimizer.state_dict())
    if ranks.main:
        write_training_state(os.path.join(args.out, STATE_FILE), module_state, optimizer_state, step, base=base,
                             args={k: getattr(args, k) for k in RUN_ARGS})
    args.saved_step = step  # for the message if the run is interrupted


def resume(module, optimizer, base, args):
    """Restore state.pt into module and optimizer; returns the step it had reached."""
    path = os.path.join(args.out, STATE_FILE)
    try:
        saved = read_training_state(path)
    except MiniPeftError as e:
        raise MiniPeftError(f"{e}; it cannot be resumed: start a new run with --overwrite (replacing it) or another --out") from None
    if not same_base(saved.get("base"), base):
        raise MiniPeftError(f"{path} was trained on another base model than {args.model or '--init tiny'}; "
                            "pass the same --model (and --seed for --init tiny)")
    saved_args = saved["args"] if isinstance(saved.get("args"), dict) else {}  # none in a state from elsewhere
    if saved_args.get("method", args.method) != args.method:
        raise MiniPeftError(f"{path} is a --method {saved_args['method']} run, this one asks for --method {args.method}: "
                            f"resume it with --method {saved_args['method']}, or train {args.method} in another --out "
                            "(or replace the run with --overwrite)")
    try:
        restore_training_state(saved, path, module, optimizer)
    except MiniPeftError as e:
        shaped = [f"--{k.replace('_', '-')} {saved_args[k]} (this run: {getattr(args, k)})"
                  for k in SHAPE_ARGS if k in saved_args and saved_args[k] != getattr(args, k)]
        if shaped:
            raise MiniPeftError(f"{e}; it was saved with {', '.join(shaped)}: pass the saved values to resume it") from None
        raise
    changed = [f"--{k.replace('_', '-')}" for k in RUN_ARGS if saved_args.get(k) != getattr(args, k)]
    if changed:
        tqdm.write(f"note: {', '.join(changed)} differ from the saved run's; the result will differ from a straight run")
    return saved["step"]


def save_result(module, args):
    """The trained adapter (or model) in --out; with --init tiny also the random base it belongs to.
    Returns [(what, path)] of what was written."""
    if not isinstance(module, Adapter):
        module.save_pretrained(os.path.join(args.out, MODEL_DIR))
        return [("fine-tuned model", os.path.join(args.out, MODEL_DIR) + os.sep)]
    module.save(os.path.join(args.out, ADAPTER_FILE))
    saved = [("adapter", os.path.join(args.out, ADAPTER_FILE))]
    if args.init == "tiny":
        module.model.save_pretrained(os.path.join(args.out, BASE_DIR))
        saved.append(("its base model", os.path.join(args.out, BASE_DIR) + os.sep + " (the random --init tiny model)"))
    return saved


# ---- training ---------------------------------------------------------------------------------------

def train(module, optimizer, train_set, start, base, ranks, args):
    """Steps start .. --steps (or --stop-at) with minipeft.training.loop, on this process's share of
    each batch (all of it on one process). state.pt is written every --save-every steps and at the
    end, by rank 0; never after a non-finite loss or gradient."""
    forward = module if args.fsdp else ranks.wrap(module)        # DDP on several processes; the same
    forward = torch.compile(forward) if args.compile else forward   # parameters: the optimizer and saves use module

    def loss_at(i):
        examples = batch_at(train_set, i, args)
        mine = ranks.share(examples)
        ids, labels = (t.to(args.device) for t in collate(mine))
        return ranks.part(forward(ids, labels=labels), sum(e.n_targets() for e in mine),
                          sum(e.n_targets() for e in examples))

    loop.train(module, optimizer, loss_at, args.stop_at or args.steps, start=start,
               lr_at=loop.linear_decay(args.lr, args.steps, args.warmup), clip=1.0,
               save=lambda done: save_state(module, optimizer, done, base, ranks, args), save_every=args.save_every,
               on_step=lambda i, loss: log(i, loss, ranks, args), desc=f"train {args.method}", ranks=ranks)
    return (args.stop_at or args.steps) - start


def log(step, loss, ranks, args):
    """Every --log-every steps (and at the last), rank 0 prints the step's training loss."""
    if ranks.main and ((step + 1) % args.log_every == 0 or step + 1 == (args.stop_at or args.steps)):
        tqdm.write(f"step {step + 1}: train loss {loss:.6f}")


def unsharded(module, tokenizer, ranks, args):
    """--fsdp: the trained module whole on rank 0 (None elsewhere), to evaluate and save: its
    tensors gathered from the shards (every rank takes part) into a fresh, unsharded copy."""
    trained = distributed.whole(own_state(module))
    if not ranks.main:
        return None
    model, _ = load_model(args)
    copy = build_method(model, tokenizer, args)
    if isinstance(copy, Adapter):                        # an adapter's own tensors: all of them, nothing else
        loaded = copy.load_state_dict(trained, strict=False)
        if loaded.unexpected_keys or any(not k.startswith("model.") for k in loaded.missing_keys):
            raise MiniPeftError(f"--fsdp: the gathered adapter does not fit a fresh one ({loaded})")
    else:
        copy.load_state_dict(trained)
    return copy


def print_reduced(per_step, model):
    """The gradient bytes all-reduced per step, beside what full fine-tuning would send (every parameter's)."""
    full = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"gradients all-reduced per step: {per_step:,.0f} bytes ({per_step / full:.2%} of full fine-tuning's {full:,})")


def run(args):
    with distributed.start(args.device) as ranks, distributed.quiet_unless_main(ranks):
        args.device = str(ranks.device)   # torchrun on CUDA: this rank's cuda:LOCAL_RANK
        train_and_report(ranks, args)


def train_and_report(ranks, args):
    model, tokenizer = load_model(args)
    set_max_length(args, model)
    base = fingerprint(model)
    train_set, val_set = build_data(tokenizer, args, ranks)
    module = build_method(model, tokenizer, args)
    optimizer = make_optimizer(module, args.lr)
    start = resume(module, optimizer, base, args) if args.resume else 0
    ranks.own_dropout(args.seed, start)
    if args.overwrite and ranks.main:
        remove_earlier_run(args)
    what = module.report() if isinstance(module, Adapter) else f"trainable {model.num_parameters():,} (all)"
    print(f"{args.method}: {what}; {len(train_set):,} training / {len(val_set):,} held-out examples, "
          f"max length {args.max_length}, lr {args.lr:g}")
    if ranks.world > 1:
        sharding = f", FSDP: each holds 1/{ranks.world} of every tensor" if args.fsdp else ""
        print(f"training on {ranks.world} processes ({ranks.backend}{sharding}): {args.batch_size // ranks.world} "
              f"examples each per step, {args.batch_size} in all (--batch-size is the global batch)")
    if ranks.main:
        report(module, tokenizer, val_set, args, "before" if start == 0 else f"at step {start}")
    if args.fsdp:                                       # shard the (resumed) module, then its optimizer
        resumed = optimizer.state_dict()
        module = ranks.shard(module)
        optimizer = make_optimizer(module, args.lr)
        optimizer.load_state_dict(distributed.shard_like(resumed, optimizer))
    if start >= (args.stop_at or args.steps):
        print(f"{STATE_FILE} is already at step {start}; nothing to train")
    else:
        steps = train(module, optimizer, train_set, start, base, ranks, args)
        if ranks.world > 1 and not args.fsdp:
            print_reduced(ranks.reduced_bytes / steps, model)
    if args.fsdp:
        module = unsharded(module, tokenizer, ranks, args)
    if not ranks.main:
        return
    report(module, tokenizer, val_set, args, "after")
    state = ("training state", os.path.join(args.out, STATE_FILE))
    if (args.stop_at or args.steps) < args.steps:
        cli.print_saved([state])
        cli.print_stopped(args)
    else:
        cli.print_saved(save_result(module, args) + [state])


def main(argv=None):
    parser = cli.name_rank(build_parser())
    cli.run_script(parser, check_args(parser, parser.parse_args(argv)), run, STATE_FILE)


if __name__ == "__main__":
    main()
