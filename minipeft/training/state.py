"""Training state that can be saved and resumed: the trainable tensors, the optimizer, the step, RNG;
the one format of every training run here (the scripts add their own keys beside these). Also what
the training loop uses besides: the optimizer, batch seeds, Ctrl-C handling.

Works for an adapter (its own tensors only: the frozen base model is not copied) and for a plain
model (full fine-tuning). Writes are atomic: a crash mid-save leaves the previous file intact.
"""

import re
import signal

import torch
from tqdm import tqdm

from ..methods.adapter import Adapter
from ..io.atomic import atomic_write
from ..errors import MiniPeftError


def own_state(module):
    """The tensors a resume needs: an adapter's own parameters/buffers, or a whole model's."""
    state = module.state_dict()
    if isinstance(module, Adapter):
        state = {k: v for k, v in state.items() if not k.startswith("model.")}
    return state


def make_optimizer(module, lr, weight_decay=0.0, betas=(0.9, 0.999)):
    """AdamW over the trainable parameters only: frozen tensors get no optimizer state.

    Fused (one kernel per tensor) where torch has it for these parameters (CPU since torch 2.4,
    CUDA): the same update up to rounding, several times faster than the default per-op loop,
    which otherwise takes ~15% of a full fine-tuning step of GPT-2 on CPU.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise MiniPeftError("nothing to train: every parameter is frozen")
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, fused=True)
    except RuntimeError:  # no fused kernel for this device/dtype or torch version
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)


def step_seed(seed, step):
    """The seed of one step's batch: a function of (seed, step) only, so a resumed run draws what a straight run would."""
    return seed * 1_000_003 + step


def rng_state():
    """The global RNG states (dropout, random init draw from them), so that a resumed run continues
    as a straight run would: the CPU generator's always, every CUDA device's once this process uses
    CUDA (a CPU run does not start it, nor fail where the GPUs are taken)."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng, path):
    """Set the global RNGs to what rng_state() returned (the CUDA ones when they were saved and CUDA is here)."""
    if not isinstance(rng, dict) or not isinstance(rng.get("cpu"), torch.Tensor):
        raise MiniPeftError(f"{path}: the training state's 'rng' lacks the CPU generator state (key 'cpu')")
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"][:torch.cuda.device_count()])


def save_training_state(path, module, optimizer, step, **extra):
    """Write {module, optimizer, step, rng, **extra} to path, atomically."""
    write_training_state(path, own_state(module), optimizer.state_dict(), step, **extra)


def write_training_state(path, module_state, optimizer_state, step, **extra):
    """save_training_state's file from the two state dicts themselves (e.g. gathered from FSDP shards)."""
    with atomic_write(path) as f:
        torch.save({"module": module_state, "optimizer": optimizer_state, "step": step, "rng": rng_state(), **extra}, f)


def read_training_state(path, required=("module", "optimizer", "step", "rng")):
    """The dict save_training_state wrote to path, its `required` keys checked; nothing is restored
    yet (a caller can check what the state says, e.g. the run's arguments, before restore_training_state)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MiniPeftError(f"{path}: not a readable training state: the file is damaged or was not written by "
                            f"torch.save (torch.load: {type(e).__name__}: {_first_sentence(e)})") from None
    if not isinstance(saved, dict):
        raise MiniPeftError(f"{path}: not a training state (expected a dict, got {type(saved).__name__})")
    if "torch_rng" in saved:  # written before the CUDA states were saved too: the CPU state alone
        saved["rng"] = {"cpu": saved.pop("torch_rng")}
    missing = set(required) - set(saved)
    if missing:
        raise MiniPeftError(f"{path}: training state lacks {sorted(missing)} (save_training_state writes "
                            "module, optimizer, step and rng)")
    return saved


def restore_training_state(saved, path, module, optimizer):
    """Put what read_training_state(path) returned into module and optimizer, and the RNGs; returns saved.
    The names and shapes are checked first, and the module is written last: a state whose
    optimizer or RNG entry does not fit leaves the module's tensors as they were."""
    own = own_state(module)
    if not isinstance(saved["module"], dict):
        raise MiniPeftError(f"{path}: the training state's 'module' is not a dict of tensors")
    mismatch = _mismatch(saved["module"], own)
    if mismatch:
        raise MiniPeftError(f"{path}: the saved training state does not match this model/adapter ({mismatch})")
    restore_rng(saved["rng"], path)
    try:
        optimizer.load_state_dict(saved["optimizer"])
    except (ValueError, KeyError) as e:
        raise MiniPeftError(f"{path}: the optimizer state does not fit this model/adapter ({e})") from None
    module.load_state_dict(saved["module"], strict=False)
    return saved


def load_training_state(path, module, optimizer):
    """Restore what save_training_state wrote; returns the whole saved dict (with "step").
    Everything is checked before the module is written (see restore_training_state)."""
    return restore_training_state(read_training_state(path), path, module, optimizer)


def _mismatch(saved, own):
    """What differs between the saved tensors and this module's, in words ("" when nothing)."""
    lacks, extra = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    shapes = [k for k in own if k in saved and getattr(saved[k], "shape", None) != own[k].shape]
    parts = []
    if lacks:
        parts.append(f"{len(lacks)} tensor(s) of this one are not in the state, e.g. {lacks[0]}")
    if extra:
        parts.append(f"{len(extra)} saved tensor(s) are not in this one, e.g. {extra[0]}")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} differ in shape, e.g. {k}: saved {list(getattr(saved[k], 'shape', []))}, "
                     f"here {list(own[k].shape)}")
    if any(k.startswith("deltas.") for k in extra) and any(k.startswith("biases.") for k in lacks):
        parts.append("this is a BitFit state from before adapter format 2, which trained deltas from the base "
                     "biases; BitFit now trains the biases themselves: start the run again")
    return "; ".join(parts)


def _first_sentence(error):
    """The first sentence of an exception's message, without terminal colour codes (torch's are long)."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
    text = lines[0].strip() if lines else ""
    end = text.find(". ")
    return text[:end + 1] if end >= 0 else text


class CtrlC:
    """While active, a first Ctrl-C asks the loop to stop after the current step (so the saved state
    is whole); a second one interrupts at once."""

    def __enter__(self):
        self.requested = False
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: Ctrl-C keeps its default behaviour
            self.previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("Ctrl-C: stopping after this step (press again to stop at once, without saving)")

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
