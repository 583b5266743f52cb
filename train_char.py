"""Pretrain a small character-level model, then fine-tune it with every method and compare them.

    python train_char.py                       # pretrain on the standard library's docstrings (no download),
                                               # then full / frozen / bitfit / prefix / prompt, one table
    python train_char.py --method bitfit,prompt --ft-steps 200
    python train_char.py --arch t5             # the same with a char-level T5 (encoder-decoder)
    python train_char.py --data my_text.txt    # pretrain on any UTF-8 text file
    python train_char.py --resume              # continue pretraining from the checkpoint in --out

Pretraining is skipped when --out already holds a finished checkpoint of --steps steps. Any other
checkpoint there (damaged, stopped early, of another --steps or --arch) is refused with what was
found and the ways on: --resume continues it, --retrain pretrains again and replaces it, or pass
another --out; nothing in --out is replaced without --retrain.
Fine-tuning uses the generated tasks (minipeft.training.tasks): E2E-style table-to-text, scored by the
validation loss of the sentence and BLEU, and a label-word sentiment task, scored by accuracy. Each
method is fine-tuned on each task apart (FT_PLANS), one adapter per task, saved to
--out/adapters/e2e/ and --out/adapters/sentiment/ (replacing, and saying so, an earlier run's).

The model is minipeft's GPT-2 at the "char" size (4 layers, 4 heads, 128 wide, 256 positions).
A checkpoint is written to --out at every evaluation: model/ (config.json + model.safetensors,
loadable with GPT.from_pretrained), tokenizer.json, and train_state.pt for --resume (the training
state of minipeft.training.state, as train_gpt2.py writes it, plus the tokenizer). Each step's
batch depends only on (--seed, step), so a run that is stopped and resumed ends with the same
weights as one that ran straight through (on CPU). Ctrl-C during pretraining finishes the current
step, saves the checkpoint and exits; a second Ctrl-C stops at once. A non-finite loss or
gradient stops the run with the checkpoint left at the last good save. The paths written are
printed at the end.

`pretrain(args)` is the reusable part: later scripts fine-tune the model it returns.
"""

import argparse
import hashlib
import math
import os

import torch
from tqdm import tqdm

from minipeft import GPT, T5, GPTConfig, MiniPeftError, T5Config
from minipeft.training import finetune as ft
from minipeft.methods.adapter import count_parameters
from minipeft.io.atomic import atomic_write
from minipeft.training.corpus import default_corpus
from minipeft.training.domain import pretraining_text
from minipeft.training.tasks import SENTIMENT_LABELS
from minipeft.training.textdata import read_text
from minipeft.io.tokenizer import CharTokenizer
from minipeft.training import cli, loop
from minipeft.training.state import read_training_state, restore_training_state, save_training_state, step_seed

STATE_FILE = "train_state.pt"
MODEL_DIR = "model"
WEIGHTS_FILE = os.path.join(MODEL_DIR, "model.safetensors")
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINT_FILES = (STATE_FILE, WEIGHTS_FILE, TOKENIZER_FILE)
ADAPTERS_DIR = "adapters"
CURVES_FILE = "loss_curves.png"
BLEU_EXAMPLES = 100  # greedy decoding is the slow part of the evaluation
RUN_ARGS = ("data", "corpus", "size", "batch_size", "block_size", "lr", "warmup", "seed", "steps")  # they decide the weights
CORPORA = ("mixture", "docstrings")
SIZES = {"small": "char-small", "medium": "char", "large": "char-large"}  # GPTConfig / T5Config named sizes
# Fine-tuning, one adapter per task as the papers do (mixed in one training set, the label word of a review weighs
# as one of an E2E sentence's ~100 characters, and no PEFT method learned sentiment in 100 steps: docs/scripts.md).
# E2E: the reproductions' sweep's rates (results/README.md, the small backbone); 250 steps, from probes with the
# linear warmup and decay every plan trains with (docs/scripts.md). Sentiment (rows a third as long): full
# fine-tuning's sweep choice; BitFit, prefix and prompt rates and the step count from probes on this backbone.
FT_PLANS = {"e2e": {"steps": 250, "batch_size": 8, "lr": {"full": 3e-3, "bitfit": 3e-2, "prefix": 3e-3, "prompt": 1.0}},
            "sentiment": {"steps": 200, "batch_size": 16, "lr": {"full": 3e-4, "bitfit": 3e-2, "prefix": 1e-3, "prompt": 0.3}}}
VAL_FRACTION = 0.1
SAMPLE_TEMPERATURE = 0.8


# ---- arguments ------------------------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(description="Train a character-level GPT (4 layers, 4 heads, 128 wide) from scratch. "
                                "Pretraining takes about 4 minutes on 2 idle CPU cores, several times that on a busy machine.")
    p.add_argument("--data", help="UTF-8 text file to train on instead of the built-in --corpus")
    p.add_argument("--corpus", choices=CORPORA, default="mixture", help="built-in pretraining text: 'mixture' (default), "
                   "the standard library's docstrings with text about restaurants and reviews (minipeft.training.domain), "
                   "or 'docstrings' alone")
    p.add_argument("--size", choices=tuple(SIZES), default="medium", help="model size (GPT: small 3 x 96, medium 4 x 128, "
                   "large 5 x 160 layers x width; default: %(default)s)")
    p.add_argument("--steps", type=int, default=800, help="total optimizer steps; the LR schedule spans them all (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step (default: %(default)s)")
    p.add_argument("--block-size", type=int, default=256, help="characters per sequence, at most the model's 256 "
                   "(default: %(default)s, all of it: the tasks' rows reach ~250 characters, and a position that "
                   "pretraining never trained is one only full fine-tuning can train)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of AdamW; linear warmup, then cosine decay "
                   "to lr/10 (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 5%% of --steps)")
    p.add_argument("--eval-every", type=int, default=100, help="evaluate on the held-out 10%% of the text and save a "
                   "checkpoint every N steps, and after the last (default: %(default)s)")
    p.add_argument("--eval-batches", type=int, default=20, help="batches averaged for each validation loss (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ... (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the initial weights, the batches and the sample (default: %(default)s)")
    p.add_argument("--out", default="runs/char", help="folder for the checkpoint (default: %(default)s; with --arch t5 "
                   "runs/char-t5, with --size small or large runs/char-small, runs/char-t5-large, ...)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out up to --steps")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="end this run after STEP steps with a checkpoint, as if interrupted; --resume continues it")
    p.add_argument("--sample-length", type=int, default=400, help="characters to generate after pretraining, 0 for none (default: %(default)s)")
    p.add_argument("--arch", choices=("gpt", "t5"), default="gpt", help="gpt: decoder-only GPT-2; t5: a char-level T5 "
                   "encoder-decoder pretrained to continue a text (default: %(default)s)")
    p.add_argument("--method", default="all", help="fine-tuning methods, comma-separated from full, frozen, bitfit, prefix, "
                   "prompt; 'all' (default) or 'none' (pretrain only)")
    p.add_argument("--ft-steps", type=int, default=None, help="fine-tuning steps per method and task (default: "
                   + ", ".join(f"{task} {plan['steps']} of {plan['batch_size']} examples" for task, plan in FT_PLANS.items()) + ")")
    p.add_argument("--ft-examples", type=int, default=1000, help="training examples per task; validation uses up to 300 "
                   "more per task (default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="pretrain and fine-tune through torch.compile (inductor): "
                   "each model and method compiles first (minutes on a CPU), then its steps run faster")
    p.add_argument("--retrain", action="store_true", help="pretrain again and replace the checkpoint in --out (without "
                   "it, a checkpoint that is not a finished one for these arguments is refused)")
    p.add_argument("--prompt", default="\n", help="text the final sample starts from (default: a newline)")
    return p


def check_args(parser, args):
    """Refuse bad arguments with one clear line (argparse exits with status 2)."""
    for name in ("steps", "batch_size", "eval_every", "eval_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.block_size < 2:
        parser.error(f"--block-size must be at least 2 (one character to read, one to predict), got {args.block_size}")
    if args.sample_length < 0:
        parser.error(f"--sample-length must be >= 0, got {args.sample_length}")
    if args.block_size > GPTConfig.named("char").n_positions:
        parser.error(f"--block-size {args.block_size} exceeds the model's context of {GPTConfig.named('char').n_positions}")
    if args.resume and args.retrain:
        parser.error("give --resume (continue the checkpoint in --out) or --retrain (replace it), not both")
    if args.out == "runs/char":  # each arch and size its own default folder: runs/char, runs/char-t5-large, ...
        args.out = "runs/char" + ("-t5" if args.arch == "t5" else "") + ("" if args.size == "medium" else f"-{args.size}")
        # (before cli.check_run_args, so that --resume looks in the folder this run uses)
    cli.check_run_args(parser, args, STATE_FILE)
    methods = ft.METHODS if args.method == "all" else () if args.method == "none" else tuple(args.method.split(","))
    unknown = [m for m in methods if m not in ft.METHODS]
    if unknown:
        parser.error(f"--method: unknown {', '.join(unknown)}; choose from {', '.join(ft.METHODS)}, 'all' or 'none'")
    args.methods = methods
    if (args.ft_steps is not None and args.ft_steps < 1) or args.ft_examples < 1:
        parser.error("--ft-steps and --ft-examples must be positive integers")
    if args.warmup is None:
        args.warmup = args.steps // 20
    return args


# ---- data -----------------------------------------------------------------------------------------

def build_data(args, tokenizer=None):
    """(tokenizer, train ids, val ids): the text's last 10% is held out for validation."""
    text = read_text(args.data) if args.data else default_corpus() if args.corpus == "docstrings" else pretraining_text(default_corpus())
    tokenizer = tokenizer or CharTokenizer.from_text(text)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    n_val = int(len(ids) * VAL_FRACTION)
    train, val = ids[:-n_val or None], ids[len(ids) - n_val:]
    if len(val) <= args.block_size:
        raise MiniPeftError(f"the text is too short: its validation 10% holds {len(val)} characters, but --block-size is "
                            f"{args.block_size}; use a longer text (over {10 * (args.block_size + 1)} characters) or a smaller --block-size")
    return tokenizer, train, val


def get_batch(data, batch_size, block_size, generator):
    """batch_size random windows of block_size tokens [B, T]; they are their own labels (shifted in the model)."""
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    return torch.stack([data[i:i + block_size] for i in starts.tolist()])


def step_generator(seed, step):
    """The generator of a step's batch, seeded by minipeft.training.state.step_seed(seed, step)."""
    return torch.Generator().manual_seed(step_seed(seed, step))


# ---- model, optimizer, schedule -------------------------------------------------------------------

def pretrain_optimizer(model, args):
    """AdamW for pretraining: weight decay 0.1 on matrices and embeddings only, not on biases and
    norms (minipeft.training.state.make_optimizer, for fine-tuning, gives every parameter the same decay)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.99))


def cosine_lr(step, args):
    """Linear warmup to --lr, then cosine decay to lr/10 at the last step."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr / 10 + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (args.lr - args.lr / 10)


def lm_loss(model, x):
    """GPT: next-character loss over the window. T5: the encoder reads the first half, the decoder
    writes the second (ids shifted by 2: 0 and 1 are T5's pad/start and eos)."""
    if model.arch == "t5":
        half = x.shape[1] // 2
        return model(x[:, :half] + 2, labels=x[:, half:] + 2)
    return model(x, labels=x)


def new_model(args, vocab_size):
    if args.arch == "t5":
        return T5(T5Config.named(SIZES[args.size], vocab_size=vocab_size + 2))  # 0 and 1: T5's pad/start and eos
    return GPT(GPTConfig.named(SIZES[args.size], vocab_size=vocab_size))


def load_saved_model(path, args):
    """The model saved in the folder `path` (a GPT or, with --arch t5, a T5), on --device."""
    return (T5 if args.arch == "t5" else GPT).from_pretrained(path).to(args.device)


@torch.no_grad()
def evaluate(model, data, args):
    """Mean loss over --eval-batches fixed batches (the same ones at every evaluation)."""
    model.eval()
    g = torch.Generator().manual_seed(args.seed)
    losses = [lm_loss(model, x.to(args.device)).item()
              for x in (get_batch(data, args.batch_size, args.block_size, g) for _ in range(args.eval_batches))]
    model.train()
    return sum(losses) / len(losses)


# ---- checkpoint -----------------------------------------------------------------------------------

def save_checkpoint(out, model, optimizer, tokenizer, step, args):
    """model/ (Hugging Face layout), tokenizer.json and train_state.pt, each written atomically.

    train_state.pt is minipeft.training.state's training state (the model's tensors, the optimizer,
    the step, the RNG) plus the tokenizer, this run's arguments and the hash of the weights in
    model/. It is written last, so a run killed between the writes is detected instead of silently
    mixing steps.
    """
    model.save_pretrained(os.path.join(out, MODEL_DIR))
    with atomic_write(os.path.join(out, TOKENIZER_FILE), "w") as f:
        f.write(tokenizer.to_json())
    save_training_state(os.path.join(out, STATE_FILE), model, optimizer, step, tokenizer=tokenizer.to_json(),
                        args=dict(vars(args)), model_sha256=_weights_hash(out))
    args.saved_step = step  # for the message if the run is interrupted


def read_checkpoint(out):
    """train_state.pt of the checkpoint in out, checked to be whole and to belong with model/ beside it;
    a missing, damaged or mismatched file is a MiniPeftError naming it."""
    path, weights = os.path.join(out, STATE_FILE), os.path.join(out, WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise MiniPeftError(f"{path} is missing: {out} holds an incomplete checkpoint")
    state = read_training_state(path, required=("optimizer", "step", "rng"))  # "module": see below
    missing = {"tokenizer", "args", "model_sha256"} - state.keys()
    if missing:
        raise MiniPeftError(f"{path}: not a train_char.py training state (it lacks {sorted(missing)})")
    if not isinstance(state["args"], dict) or type(state["step"]) is not int:
        raise MiniPeftError(f"{path}: not a train_char.py training state (its 'args' or 'step' is damaged)")
    if not os.path.isfile(weights):
        raise MiniPeftError(f"{weights} is missing: {out} holds an incomplete checkpoint")
    if state["model_sha256"] != _weights_hash(out):
        raise MiniPeftError(f"{weights} is not the file {STATE_FILE} was saved with: the weights are damaged, or they and "
                            "the state are from different steps (a save was interrupted)")
    if "module" not in state:  # the earlier format kept the weights in model/ only (the hash above says they belong)
        arch = state["args"].get("arch", "gpt")
        state["module"] = (T5 if arch == "t5" else GPT).from_pretrained(os.path.join(out, MODEL_DIR)).state_dict()
    return state


def load_checkpoint(out, args):
    """(model, optimizer, tokenizer, step) from --out, with the RNG restored as it was when saved."""
    path = os.path.join(out, STATE_FILE)
    try:
        state = read_checkpoint(out)
    except MiniPeftError as e:
        raise MiniPeftError(f"{e}; it cannot be resumed: --retrain (without --resume) pretrains again and replaces it, "
                            "or pass another --out") from None
    for flag, theirs, ours in (("--arch", state["args"].get("arch", "gpt"), args.arch),
                               ("--size", pretrained_on(state["args"])[1], args.size)):
        if theirs != ours:
            raise MiniPeftError(f"{path} is a checkpoint of {flag} {theirs}, this run asks for {flag} {ours}: pass {flag} "
                                f"{theirs} to resume it")
    try:
        tokenizer = CharTokenizer.from_json(state["tokenizer"])
    except MiniPeftError as e:
        raise MiniPeftError(f"{path}: {e}") from None
    model = new_model(args, tokenizer.vocab_size).to(args.device)
    optimizer = pretrain_optimizer(model, args)
    restore_training_state(state, path, model, optimizer)
    changed = changed_args(state, args)
    if changed:
        tqdm.write(f"note: {', '.join(changed)} differ from the checkpoint's run; the result will differ from a straight run")
    return model, optimizer, tokenizer, state["step"]


def pretrained_on(run_args):
    """(the pretraining text, the size) of a run's arguments; checkpoints from before --corpus and
    --size were pretrained on the docstrings at the medium size."""
    text = f"--data {run_args['data']}" if run_args.get("data") else f"--corpus {run_args.get('corpus', 'docstrings')}"
    return text, run_args.get("size", "medium")


def changed_args(state, args):
    """The flags (of RUN_ARGS) whose values differ from those the checkpoint was trained with."""
    return [f"--{k.replace('_', '-')}" for k in RUN_ARGS if state["args"].get(k) != getattr(args, k)]


def _weights_hash(out):
    with open(os.path.join(out, WEIGHTS_FILE), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---- training -------------------------------------------------------------------------------------

def train(model, optimizer, tokenizer, train_data, val_data, args, start_step=0):
    """Steps start_step .. --steps (or --stop-at) with minipeft.training.loop, evaluating and saving a
    checkpoint every --eval-every steps and after the last. A first Ctrl-C finishes the current step,
    saves a checkpoint and stops."""
    end = args.stop_at or args.steps
    recent = []  # training losses since the last evaluation

    forward = torch.compile(model) if args.compile else model  # the same parameters: saves and evaluation use model

    def loss_at(step):
        x = get_batch(train_data, args.batch_size, args.block_size, step_generator(args.seed, step))
        return lm_loss(forward, x.to(args.device))

    def evaluate_now_and_then(step, loss):
        recent.append(loss)
        done = step + 1
        if done % args.eval_every == 0 or done == end:
            tqdm.write(f"step {done}: train loss {sum(recent) / len(recent):.4f} (mean since the last evaluation), "
                       f"val loss {evaluate(model, val_data, args):.4f}")
            recent.clear()

    loop.train(model, optimizer, loss_at, end, start=start_step, lr_at=lambda step: cosine_lr(step, args), clip=1.0,
               on_step=evaluate_now_and_then, save=lambda done: save_checkpoint(args.out, model, optimizer, tokenizer, done, args),
               save_every=args.eval_every, desc="train")


def reusable_checkpoint(args):
    """The tokenizer of the checkpoint in --out when it is a finished one of --steps steps (then
    pretraining is skipped); None when --out holds no checkpoint. Any other checkpoint is refused
    with a MiniPeftError saying what was found and the ways on, so nothing is replaced unasked."""
    if not any(os.path.exists(os.path.join(args.out, f)) for f in CHECKPOINT_FILES):
        return None
    keep = f"--retrain pretrains {args.steps} steps again and replaces it; another --out keeps it"
    try:
        state = read_checkpoint(args.out)
        tokenizer = CharTokenizer.load(os.path.join(args.out, TOKENIZER_FILE))
    except MiniPeftError as e:
        raise MiniPeftError(f"{e}. Nothing was changed: {keep}") from None
    step, planned, arch = state["step"], state["args"].get("steps", state["step"]), state["args"].get("arch", "gpt")
    if arch != args.arch:
        raise MiniPeftError(f"{args.out} holds a checkpoint of --arch {arch}, this run asks for --arch {args.arch}: "
                            f"pass --arch {arch} to use it; {keep}")
    theirs, ours = pretrained_on(state["args"]), pretrained_on(vars(args))
    if theirs != ours:
        raise MiniPeftError(f"{args.out} holds a model pretrained on {theirs[0]} at --size {theirs[1]}, this run asks for "
                            f"{ours[0]} at --size {ours[1]}: pass the checkpoint's --size / --corpus / --data to use it; {keep}")
    if step < planned:
        raise MiniPeftError(f"{args.out} holds a checkpoint stopped at step {step} of {planned}: --resume continues it "
                            f"to --steps {args.steps}; {keep}")
    if step < args.steps:
        raise MiniPeftError(f"{args.out} holds a finished checkpoint of {step} steps, fewer than --steps {args.steps}: "
                            f"--resume continues it to {args.steps} (its learning-rate schedule was planned for {step}), "
                            f"--steps {step} reuses it; {keep}")
    if step > args.steps:
        raise MiniPeftError(f"{args.out} holds a finished checkpoint of {step} steps, more than --steps {args.steps}: "
                            f"--steps {step} reuses it; {keep}")
    changed = [flag for flag in changed_args(state, args) if flag != "--steps"]
    other = f"; it was pretrained with other {', '.join(changed)} than this run's" if changed else ""
    print(f"reusing the pretrained model in {args.out} (finished at step {step}{other}; --retrain to train it again)")
    return tokenizer


def pretrain(args):
    """Train (or, with args.resume, continue training) the char model; returns (model, tokenizer).
    A finished checkpoint of --steps in --out is reused as it is; any other one is refused unless
    args.resume or args.retrain (see reusable_checkpoint)."""
    tokenizer = None if args.resume or args.retrain else reusable_checkpoint(args)
    if tokenizer is not None:
        return load_saved_model(os.path.join(args.out, MODEL_DIR), args).eval(), tokenizer
    if args.resume:
        model, optimizer, tokenizer, step = load_checkpoint(args.out, args)
        tokenizer, train_data, val_data = build_data(args, tokenizer)
    else:
        tokenizer, train_data, val_data = build_data(args)
        torch.manual_seed(args.seed)
        model = new_model(args, tokenizer.vocab_size).to(args.device)
        optimizer, step = pretrain_optimizer(model, args), 0
        if args.retrain and any(os.path.exists(os.path.join(args.out, f)) for f in CHECKPOINT_FILES):
            print(f"--retrain: pretraining from scratch; the checkpoint in {args.out} is replaced at the first save")
    print(f"{model.num_parameters():,} parameters, vocabulary {tokenizer.vocab_size}, "
          f"{len(train_data):,} training / {len(val_data):,} validation characters")
    if step >= (args.stop_at or args.steps):
        print(f"the checkpoint is already at step {step}; nothing to train")
    else:
        train(model, optimizer, tokenizer, train_data, val_data, args, step)
    return model, tokenizer


@torch.no_grad()
def sample(model, tokenizer, prompt, length, seed, window):
    """Generate `length` characters after `prompt`; past `window` characters (the trained block size,
    since later positions were never trained) the context slides, keeping the last half window."""
    model.eval()
    device = model.input_embeddings().weight.device
    g = torch.Generator(device=device).manual_seed(seed)
    if model.arch == "t5":  # the encoder reads the prompt, the decoder continues it
        ids = torch.tensor([[i + 2 for i in tokenizer.encode(prompt or "\n")][-(window // 2):]], device=device)
        out = model.generate(ids, max_new_tokens=min(length, window // 2), temperature=SAMPLE_TEMPERATURE, generator=g, eos_token_id=None)
        return prompt + tokenizer.decode([i - 2 for i in out[0, 1:].tolist() if i >= 2])
    ids = torch.tensor([tokenizer.encode(prompt or "\n")[-(window // 2):]], device=device)
    new = 0
    while new < length:
        context = ids[:, -(window // 2):] if ids.shape[1] >= window else ids  # keep half the window when full
        n = min(length - new, window - context.shape[1])
        out = model.generate(context, max_new_tokens=n, temperature=SAMPLE_TEMPERATURE, generator=g)
        ids = torch.cat([ids, out[:, context.shape[1]:]], dim=1)
        new += n
    return tokenizer.decode(ids[0].tolist())


# ---- fine-tuning: every method on the same tasks ---------------------------------------------------

def complete(module, codec, prompt, n=100):
    """Greedy completion of one prompt, up to the first newline."""
    return ft.generate_completions(module, [prompt], codec, max_new_tokens=n)[0]


def task_plans(args):
    """{task: (steps, batch size)} of this run: FT_PLANS', or --ft-steps for every task."""
    return {task: (args.ft_steps or plan["steps"], plan["batch_size"]) for task, plan in FT_PLANS.items()}


def earlier_adapters(folder, methods):
    """The files in `folder` that fine-tuning `methods` would write again (an earlier run's)."""
    names = [os.path.join(task, f"{m}.safetensors" if m != "full" else "full" + os.sep)
             for task in ft.TASKS for m in methods if m != "frozen"]
    return [n for n in names if os.path.exists(os.path.join(folder, n))]


def tune(method, task, plan, train_set, codec, args, model_dir, labels):
    """One method fine-tuned on one task from the pretrained model, for plan = (steps, batch size):
    (module, loss curve, seconds)."""
    torch.manual_seed(args.seed)
    model = load_saved_model(model_dir, args)
    options = {"prompt_init": "labels", "label_ids": [codec.encode(w) for w in labels]} if method == "prompt" else {}
    module = ft.make_method(method, model, **options)
    steps, batch_size = plan
    with ft.Timer() as timer:
        curve = ft.finetune(module, train_set, codec, steps=steps, lr=FT_PLANS[task]["lr"].get(method, 0.0),
                            batch_size=batch_size, seed=args.seed, device=args.device, desc=f"{method} {task}",
                            compile=args.compile, decay=True)
    return module, curve, timer.seconds


def compare(args, tokenizer):
    """Fine-tune the pretrained model with each method on each task (one adapter per task); print
    samples and one table."""
    codec = ft.Codec(tokenizer, args.arch)
    data = ft.task_data(args.ft_examples, min(300, args.ft_examples), args.seed)
    (_, e2e_val), (_, sent_val) = data["e2e"], data["sentiment"]
    labels = list(SENTIMENT_LABELS)
    example, review = e2e_val[0], sent_val[0]
    model_dir, adapters = os.path.join(args.out, MODEL_DIR), os.path.join(args.out, ADAPTERS_DIR)
    plans = task_plans(args)
    print(f"\nfine-tuning each method on each task apart, {args.ft_examples} examples per task: "
          + ", ".join(f"{task} {steps} steps of {batch}" for task, (steps, batch) in plans.items()))
    before = load_saved_model(model_dir, args)
    print(f"  example: {example[0]}\n  wanted:  {example[1].strip()}\n  before:  {complete(before, codec, example[0])}")
    print(f"  review:  {review[0]}\n  wanted:  {review[1].strip()}\n  before:  {complete(before, codec, review[0])}")
    earlier = earlier_adapters(adapters, args.methods)
    if earlier:
        print(f"  {adapters}{os.sep} holds an earlier run's {', '.join(earlier)}: this run replaces them (another --out keeps them)")
    rows = []
    for method in args.methods:
        e2e_module, e2e_curve, e2e_seconds = tune(method, "e2e", plans["e2e"], data["e2e"][0], codec, args, model_dir, labels)
        sent_module, sent_curve, sent_seconds = tune(method, "sentiment", plans["sentiment"], data["sentiment"][0], codec, args, model_dir, labels)
        sizes = [ft.save_for_task(m, method, os.path.join(adapters, task)) for task, m in (("e2e", e2e_module), ("sentiment", sent_module))]
        rows.append({"method": method, "trainable": count_parameters(p for p in e2e_module.parameters() if p.requires_grad),
                     "total": getattr(e2e_module, "model", e2e_module).num_parameters(),
                     "size": sizes[0], "e2e_loss": ft.evaluate(e2e_module, e2e_val, codec, device=args.device),
                     "bleu": e2e_bleu(e2e_module, e2e_val[:BLEU_EXAMPLES], codec, args.device),
                     "accuracy": ft.accuracy(sent_module, sent_val, codec, labels, device=args.device),
                     "seconds": e2e_seconds + sent_seconds, "curves": {"e2e": e2e_curve, "sentiment": sent_curve}})
        print(f"  {method:7s} after: {complete(e2e_module, codec, example[0])}   review: {complete(sent_module, codec, review[0])}")
    print_table(rows, len(e2e_val), len(sent_val))
    plot = plot_curves(rows, os.path.join(args.out, CURVES_FILE))
    saved = [f"{r['method']}.safetensors" if r["method"] != "full" else "full/ (the whole model)" for r in rows if r["size"]]
    if saved:
        print(f"\nadapters saved in {os.path.join(adapters, 'e2e')}{os.sep} and {os.path.join(adapters, 'sentiment')}{os.sep}: "
              + ", ".join(saved))
    if plot:
        print(f"loss curves: {plot}")
    return rows


def e2e_bleu(module, data, codec, device):
    """BLEU of greedy completions against every reference, or None without sacrebleu (the eval extra)."""
    try:
        return ft.e2e_scores(module, data, codec, device=device)["bleu"]
    except MiniPeftError as e:
        if "sacrebleu" not in str(e):
            raise
        return None


def print_table(rows, n_e2e, n_sentiment):
    print("\n| method | trainable parameters | saved per task | E2E val loss | E2E BLEU | sentiment accuracy | wall time |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        size = f"{r['size'] / 1024:,.1f} KB" if r["size"] else "-"
        bleu = "-" if r["bleu"] is None else f"{r['bleu']:.1f}"
        print(f"| {r['method']} | {r['trainable']:,} ({100 * r['trainable'] / r['total']:.2f}%) | {size} | "
              f"{r['e2e_loss']:.3f} | {bleu} | {100 * r['accuracy']:.1f}% | {r['seconds']:.0f} s |")
    print(f"""
Each method is fine-tuned twice from the same pretrained model, once per task (E2E, sentiment):
  one adapter per task, as the papers do; wall time is the two fine-tunings together.
trainable parameters: what the optimizer updates, as a share of the model's. Prefix tuning trains
  its prefix through an MLP (the paper's reparameterisation), which is most of that count.
saved per task: what must be stored to serve one task beside the shared backbone. Full
  fine-tuning: a whole model. BitFit: the biases. Prefix: only the keys/values the MLP computes (the
  MLP is dropped after training). Prompt: the prompt.
E2E val loss: mean loss per target character of {n_e2e} held-out table-to-text examples (lower is better).
E2E BLEU: greedy completions of {min(n_e2e, BLEU_EXAMPLES)} of them against every way the sentence may
  be written (sacrebleu, 0-100; "-" without the eval extra: pip install -e ".[eval]").
sentiment accuracy: {n_sentiment} held-out reviews, the label word the model ranks first; the classes
  are balanced, so always answering one class scores 50%.""")


def plot_curves(rows, path):
    """The fine-tuning loss curves of every method as a PNG at path (the plot extra); returns path or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no loss-curve plot (pip install -e \".[plot]\")")
        return None
    fig, axes = plt.subplots(1, len(ft.TASKS), figsize=(11, 4))
    for ax, task in zip(axes, ft.TASKS):
        for r in rows:
            curve = r["curves"][task]
            if curve:
                ax.plot([step for step, _ in curve], [loss for _, loss in curve], label=r["method"])
        ax.set(xlabel="fine-tuning step", ylabel="training loss (per target character)", title=f"train_char.py: {task}")
        if ax.lines:
            ax.legend()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def print_checkpoint(args):
    """Where this run's checkpoint was written."""
    cli.print_saved([("model", os.path.join(args.out, MODEL_DIR) + os.sep + " (config.json + model.safetensors)"),
                     ("tokenizer", os.path.join(args.out, TOKENIZER_FILE)), ("training state", os.path.join(args.out, STATE_FILE))])


def run(args):
    """Pretrain (or reuse, or resume), print a sample, compare the methods."""
    model, tokenizer = pretrain(args)
    stopped = getattr(args, "saved_step", args.steps) < args.steps  # --stop-at: the checkpoint is not finished
    if getattr(args, "saved_step", None) is not None:
        print_checkpoint(args)
    try:
        if args.sample_length:
            print(f"---- sample ({args.sample_length} characters, temperature {SAMPLE_TEMPERATURE}) ----")
            print(sample(model, tokenizer, args.prompt, args.sample_length, args.seed, args.block_size))
        if args.methods and not args.stop_at:
            compare(args, tokenizer)
    except KeyboardInterrupt:
        if stopped:
            raise
        raise cli.Interrupted(f"interrupted after pretraining: the model in {args.out} is finished, and the next run "
                              "with the same arguments reuses it") from None
    if stopped:
        cli.print_stopped(args)


def main(argv=None):
    parser = build_parser()
    cli.run_script(parser, check_args(parser, parser.parse_args(argv)), run, STATE_FILE)


if __name__ == "__main__":
    main()
