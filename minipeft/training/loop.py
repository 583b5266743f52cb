"""The training loop: the one that train_char.py's pretraining, train_gpt2.py and the fine-tuning
of the experiments (finetune.finetune) all run. What differs between them comes in as functions:
the loss of a step's batch, the learning-rate schedule, what to do after a step, how to save.
"""

import math

import torch
from tqdm import tqdm

from ..errors import MiniPeftError
from .distributed import Ranks
from .state import CtrlC


class NonFiniteLoss(MiniPeftError):
    """The loss (or the gradient) became inf or nan; the step's update was not made."""


def linear_decay(lr, steps, warmup):
    """lr_at(step) of the usual fine-tuning schedule: linear warmup to lr over `warmup` steps, then
    linear decay to 0 at `steps` (the prefix-tuning paper's; train_gpt2.py's)."""
    def lr_at(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * max(0.0, (steps - step) / max(1, steps - warmup))
    return lr_at


def train(module, optimizer, loss_at, steps, *, start=0, lr_at=None, clip=None, on_step=None, save=None,
          save_every=None, desc=None, ranks=None):
    """Optimizer steps start .. steps - 1 on module's trainable parameters; returns steps.

    loss_at(step)  the loss of that step's batch, a function of the step alone (so a resumed run
                   repeats what a straight run would do)
    lr_at(step)    the step's learning rate (None: the optimizer's own, constant)
    clip           the gradients' global norm is clipped to it (None: no clipping)
    on_step(step, loss)  called after each update: evaluation, logging, a loss curve
    save(done)     writes a state that resumes at step `done`: every save_every steps (if given),
                   after the last step and when Ctrl-C asks to stop
    desc           the progress bar's label (None: no bar)
    ranks          distributed.Ranks when several processes train together (torchrun): loss_at
                   returns this rank's part of the step's loss (through the DDP-wrapped module);
                   the loss logged, the non-finite check and a Ctrl-C stop are decided on the
                   ranks' sum, so all of them stop together; only rank 0 shows the bar. save is
                   called on every rank (gathering FSDP shards takes them all); it writes on rank 0

    A non-finite loss or gradient raises NonFiniteLoss before that step's update, and nothing is
    saved after it: the last save is a good one. A first Ctrl-C stops after the current step (see
    state.CtrlC), saves, and raises KeyboardInterrupt.
    """
    ranks = ranks or Ranks()
    params = [p for p in module.parameters() if p.requires_grad]
    module.train()
    with CtrlC() as ctrl_c, tqdm(total=steps, initial=start, desc=desc, disable=desc is None or not ranks.main,
                                 dynamic_ncols=True) as bar:
        for step in range(start, steps):
            if lr_at is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step)
            loss = loss_at(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip) if clip is not None else None
            value, stops = ranks.sum(loss.detach(), ctrl_c.requested)   # one process: loss.item()
            if not math.isfinite(value) or (grad_norm is not None and not torch.isfinite(grad_norm)):
                what = "loss" if not math.isfinite(value) else "gradient"
                raise NonFiniteLoss(f"non-finite {what} ({value}) at step {step + 1}")
            optimizer.step()
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}", refresh=False)
            bar.update()
            if on_step is not None:
                on_step(step, value)
            done = step + 1
            if save is not None and ((save_every and done % save_every == 0) or done == steps or stops):
                save(done)
            if stops:
                raise KeyboardInterrupt
    return steps
