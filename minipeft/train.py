"""Training state that can be saved and resumed: the trainable tensors, the optimizer, the step, RNG.

Works for an adapter (its own tensors only: the frozen base model is not copied) and for a plain
model (full fine-tuning). Writes are atomic: a crash mid-save leaves the previous file intact.
"""

import torch

from .adapter import Adapter
from .atomic import atomic_write
from .errors import MiniPeftError


def own_state(module):
    """The tensors a resume needs: an adapter's own parameters/buffers, or a whole model's."""
    state = module.state_dict()
    if isinstance(module, Adapter):
        state = {k: v for k, v in state.items() if not k.startswith("model.")}
    return state


def make_optimizer(module, lr, weight_decay=0.0, betas=(0.9, 0.999)):
    """AdamW over the trainable parameters only: frozen tensors get no optimizer state."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise MiniPeftError("nothing to train: every parameter is frozen")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)


def save_training_state(path, module, optimizer, step, **extra):
    with atomic_write(path) as f:
        torch.save({"module": own_state(module), "optimizer": optimizer.state_dict(), "step": step,
                    "torch_rng": torch.get_rng_state(), **extra}, f)


def load_training_state(path, module, optimizer):
    """Restore what save_training_state wrote; returns the whole saved dict (with "step")."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MiniPeftError(f"{path}: not a readable training state ({type(e).__name__}: {str(e)[:200]})") from None
    missing = {"module", "optimizer", "step"} - set(saved)
    if missing:
        raise MiniPeftError(f"{path}: training state lacks {sorted(missing)}")
    own = own_state(module)
    if set(saved["module"]) != set(own) or any(saved["module"][k].shape != own[k].shape for k in own):
        raise MiniPeftError(f"{path}: the saved training state does not match this model/adapter (names or shapes differ)")
    module.load_state_dict(saved["module"], strict=False)
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["torch_rng"])
    return saved
