"""What the training scripts (train_char.py, train_gpt2.py) share around their run: the arguments
every run takes, the end of a run (the paths written, how to continue a stopped one) and how it
exits: one error line (status 2) for a MiniPeftError or an OSError, and on Ctrl-C (status 130)
which step the state file holds and how to continue.

A script's save sets args.saved_step, the step its state file holds, for the message on Ctrl-C.
"""

import os

import torch

from ..errors import MiniPeftError
from .distributed import local_device, world_size
from .loop import NonFiniteLoss


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the run leaves behind in words (for a run that knows better than the
    state file's step, e.g. train_char.py after a finished pretraining)."""


def run_script(parser, args, run, state_file):
    """run(args) as a training script's main: any error ends it with one line and an exit status."""
    state = os.path.join(args.out, state_file)
    try:
        run(args)
    except NonFiniteLoss as e:
        if getattr(args, "saved_step", None) is None and not getattr(args, "resume", False):  # no good state of this run
            parser.exit(2, f"{parser.prog}: error: {e}; stopped before this run saved anything. "
                           f"Start again with a lower --lr (now {args.lr:g})\n")
        parser.exit(2, f"{parser.prog}: error: {e}; stopped without saving: {state} keeps the last good save. "
                       f"Try a lower --lr (now {args.lr:g}) and --resume, or start again\n")
    except MiniPeftError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except OSError as e:  # e.g. the disk is full, or --out cannot be written
        parser.exit(2, f"{parser.prog}: error: {e.filename or args.out}: {e.strerror or e}\n")
    except Interrupted as e:
        parser.exit(130, f"\n{e}\n")
    except KeyboardInterrupt:
        step = getattr(args, "saved_step", None)
        if step is None:
            parser.exit(130, "\ninterrupted before this run saved anything\n")
        parser.exit(130, f"\ninterrupted: {state} holds step {step}; continue with the same arguments plus --resume\n")


def name_rank(parser):
    """Under torchrun, every error line names its process: "train_gpt2.py [rank 1]: error: ..."."""
    if world_size() > 1:
        parser.prog = f"{parser.prog} [rank {os.environ.get('RANK', '?')}]"
    return parser


def print_saved(saved):
    """The paths a run wrote, [(what, path)], one a line under "saved:"."""
    print("saved:\n" + "\n".join(f"  {what:16s} {path}" for what, path in saved))


def print_stopped(args):
    """After --stop-at: how to continue the run."""
    print(f"stopped at step {args.stop_at} of {args.steps}; continue with the same command, "
          f"--resume in place of --stop-at {args.stop_at}")


def resolve_device(name):
    """torch.device(name), checked usable here (CUDA present, the index exists), else a MiniPeftError."""
    try:
        device = local_device(name)   # under torchrun, "cuda" is this rank's own GPU
    except RuntimeError:
        raise MiniPeftError(f"{name!r} is not a torch device (try cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MiniPeftError(f"{name}: CUDA is not available on this machine (this torch build or driver has none); use cpu")
    try:
        torch.empty(1, device=device)
    except Exception as e:  # e.g. cuda:3 on a machine with one GPU
        raise MiniPeftError(f"{name}: cannot use it ({str(e).splitlines()[0]})") from None
    return device


def check_run_args(parser, args, state_file):
    """The arguments both training scripts share: --lr, --warmup, --stop-at, --seed, --data, --out,
    --resume (state_file inside --out), --device. A bad one ends the run with one clear line
    (parser.error: status 2), before anything is loaded."""
    if args.lr is not None and not 0 < args.lr < float("inf"):
        parser.error(f"--lr must be a positive number, got {args.lr}")
    if args.warmup is not None and args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.stop_at is not None and not 1 <= args.stop_at <= args.steps:
        parser.error(f"--stop-at must be between 1 and --steps ({args.steps}), got {args.stop_at}")
    if not 0 <= args.seed < 2**32:
        parser.error(f"--seed must be in [0, 2**32), got {args.seed}")
    if args.data is not None and os.path.isdir(args.data):
        parser.error(f"--data {args.data} is a folder; give the data file itself")
    if args.data is not None and not os.path.isfile(args.data):
        parser.error(f"--data {args.data}: no such file")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out} is a file; give a folder")
    if args.resume and not os.path.isfile(os.path.join(args.out, state_file)):
        parser.error(f"--resume: no checkpoint in {args.out} (expected {os.path.join(args.out, state_file)})")
    try:
        resolve_device(args.device)
    except MiniPeftError as e:
        parser.error(f"--device: {e}")
