"""Training on several processes at once: torchrun, torch.distributed and DistributedDataParallel.

    torchrun --nproc_per_node=2 train_gpt2.py --model gpt2 --method prefix --batch-size 16

Each of the N processes (ranks) holds the whole model and computes the loss of its own slice of
the step's batch; in backward the ranks add up their gradients, so every rank takes the same
optimizer step, and the run ends with the weights one process would have reached:

- **The batch stays the global batch.** --batch-size is split over the ranks (`Ranks.share`: a
  contiguous slice each), and each rank's loss is its slice's mean weighted by its share of the
  batch's target tokens (`Ranks.part`). The parts add up to the one-process loss, their gradients
  to its gradient (summed by `sum_and_count`, not averaged as DDP does by default).
- **Only what trains is sent.** DDP all-reduces the gradients of the parameters that require
  them: BitFit's biases, the prefix (and its MLP), the prompt; never the frozen model.
  `sum_and_count` counts the bytes, so a run can say what it sent beside full fine-tuning.
- **Rank 0 speaks and writes.** Every rank reads the data and any state to resume; rank 0 alone
  prints, shows progress and writes files (atomically, as one process does).

**FSDP** (`Ranks.shard`, PyTorch's fully_shard): each rank holds a 1/N shard of every tensor,
gathered block by block for forward and backward, so the parameters, gradients and optimizer state
take 1/N of the memory while training (the frozen weights then travel too, block by block, more
traffic than DDP's). train_gpt2.py still loads the whole model on each rank before sharding it,
and gathers it on rank 0 to save. Every method
works sharded, prompt tuning included (peft loses its embedding under ZeRO-3 / FSDP, peft #206 and
#1633): nothing reads a sharded parameter outside its module's forward. Prompt tuning then takes
its plain path (the shared-prompt shortcut would run each block twice in one forward), and BitFit
subtracts its own copy of the frozen biases, not the model's.

gloo on CPU, nccl on CUDA (each rank on cuda:LOCAL_RANK). Without torchrun (no WORLD_SIZE in the
environment) a run is one process, and nothing here communicates. A rank that fails exits; torchrun
then stops the others and exits non-zero, so no rank is left waiting.
"""

import contextlib
import os
import sys
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..errors import MiniPeftError
from .state import step_seed


class PeerFailed(MiniPeftError):
    """Another rank of the run stopped (its own message says why), so this one cannot go on."""


def world_size():
    """How many processes train together: torchrun's WORLD_SIZE, 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_device(name):
    """The device this process trains on for --device `name`: under torchrun, "cuda" means this
    rank's own GPU, cuda:LOCAL_RANK (one GPU per process)."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@dataclass
class Ranks:
    """This process's place among those training together (one process: rank 0 of 1)."""
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = "none"           # gloo, nccl, or none (one process)
    reduced_bytes: int = 0          # gradient bytes all-reduced so far (sum_and_count)

    @property
    def main(self):
        """Rank 0: the one that prints and writes."""
        return self.rank == 0

    def share(self, rows):
        """This rank's contiguous slice of a step's rows (the global batch; world divides its length)."""
        n = len(rows) // self.world
        return rows[self.rank * n:(self.rank + 1) * n]

    def part(self, loss, n_mine, n_all):
        """This rank's part of the batch's mean loss: loss (the mean over its n_mine target tokens)
        weighted by n_mine / n_all, so the ranks' parts add up to the mean over all n_all."""
        return loss if self.world == 1 else loss * (n_mine / n_all)

    def sum(self, *values):
        """Each value (a number or a 0-dim tensor) summed over the ranks, as floats: one all_reduce."""
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def own_dropout(self, seed, step):
        """Ranks other than 0 reseed torch's RNG from (seed, step, rank). All ranks start from one
        seed (the same initial weights), so without this every rank would draw rank 0's dropout
        masks for its own rows. Rank 0 keeps its stream. With dropout, then, N processes draw
        other masks than one process does (and a resumed run's ranks > 0 other masks than a
        straight run's); without dropout the runs agree."""
        if self.rank > 0:
            torch.manual_seed(step_seed(seed, step) * 1_009 + self.rank)

    def wrap(self, module):
        """module in DDP, its trainable gradients summed over the ranks in backward (module itself
        on one process). Train through the wrapper; save, evaluate and resume the module."""
        if self.world == 1:
            return module
        ddp = DistributedDataParallel(module, device_ids=[self.device] if self.device.type == "cuda" else None,
                                      forward_sync_buffers=False)   # minipeft's buffers are constants
        ddp.register_comm_hook(self, sum_and_count)
        return ddp

    def shard(self, module):
        """module sharded in place with FSDP (fully_shard) over the ranks: each block's parameters
        (and the rest's, as the root unit) are split over the ranks,
        gathered for that block's forward and backward, and the trainable ones' gradients summed
        and scattered back to their shards. Build the optimizer after this: it steps the shards."""
        from torch.distributed.fsdp import FSDPModule, fully_shard   # (here: its import takes a second)
        base = getattr(module, "model", module)
        # T5: the encoder's blocks only; the decoder's stay in the root unit, because T5.forward
        # computes every decoder layer's cross-attention keys/values before the decoder runs
        blocks = base.h if base.arch == "gpt" else base.encoder.blocks
        for block in blocks:
            fully_shard(block)
        fully_shard(module)
        for unit in module.modules():
            if isinstance(unit, FSDPModule):
                unit.set_gradient_divide_factor(1.0)      # a sum: Ranks.part has weighted each rank's loss
                unit.set_force_sum_reduction_for_comms(True)   # as a plain SUM (gloo has no scaled sum)
        return module


def is_sharded(tensor):
    """Whether tensor is an FSDP shard (a DTensor; none exists before torch.distributed.tensor is imported)."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    return dtensor is not None and isinstance(tensor, dtensor.DTensor)


def full(tensor):
    """A whole tensor from an FSDP-sharded one (a collective: every rank calls it), else the tensor."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def whole(tensors):
    """{name: tensor} with every sharded tensor whole (a collective)."""
    return {k: full(v) for k, v in tensors.items()}


def whole_state(module_state, optimizer_state):
    """A module's and its optimizer's state dicts with every sharded tensor whole (a collective):
    the one-process format of state.save_training_state, whatever the number of processes."""
    optimizer_state = {**optimizer_state, "state": {i: whole(state) for i, state in optimizer_state["state"].items()}}
    return whole(module_state), optimizer_state


def shard_like(optimizer_state, optimizer):
    """A whole (one-process) optimizer state dict, its per-parameter tensors sharded as the
    optimizer's parameters are (after Ranks.shard), for optimizer.load_state_dict."""
    from torch.distributed.tensor import distribute_tensor
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def like(p, v):
        if is_sharded(p) and torch.is_tensor(v) and v.shape == p.shape:
            return distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
        return v
    return {**optimizer_state, "state": {i: {k: like(params[i], v) for k, v in state.items()}
                                         for i, state in optimizer_state["state"].items()}}


def sum_and_count(ranks, bucket):
    """DDP's communication hook: all-reduce one bucket of gradients as a sum (DDP's own hook
    divides by the world size; Ranks.part has weighted each rank's loss already), counting its bytes."""
    grads = bucket.buffer()
    ranks.reduced_bytes += grads.numel() * grads.element_size()
    return dist.all_reduce(grads, async_op=True).get_future().then(lambda fut: fut.value()[0])


@contextlib.contextmanager
def start(device):
    """The Ranks of this run, from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), with the
    process group joined for the block and left after it; one process without torchrun.
    device: the run's --device; on CUDA each rank takes cuda:LOCAL_RANK."""
    device = local_device(device)
    if world_size() == 1:
        yield Ranks(device=device)
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), device, backend)
    except RuntimeError as e:                  # a collective whose peer has gone: one line, not a traceback
        if not lost_peer(e):
            raise
        raise PeerFailed("another process of this run stopped, see its message; this one stops too "
                         f"({str(e).splitlines()[0][-160:]})") from None
    # (after a failure the group is not torn down: that could wait on the others; the process exits,
    # which closes its connections, and the others stop on them)
    dist.destroy_process_group()


def lost_peer(error):
    """Whether a RuntimeError is a collective's failure because another rank went away (not, say, a
    rank's own CUDA out-of-memory error, which must reach the user as it is)."""
    return isinstance(error, dist.DistNetworkError) or any(
        w in str(error) for w in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


@contextlib.contextmanager
def quiet_unless_main(ranks):
    """Standard output of ranks other than 0 discarded for the block (errors still reach stderr)."""
    if ranks.main:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield
