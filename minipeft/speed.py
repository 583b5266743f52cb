"""Speed only: skip on a first read.

Each function here computes what one plain line computes, faster on this kind of machine; the
plain line is given in its docstring, and the tests check each against it.

    linear(x, w, b)                       == F.linear(x, w, b)
    linear_cross_entropy(x, w, targets)   == F.cross_entropy(F.linear(x, w), targets, ignore_index=IGNORE)
"""

import torch
import torch.nn.functional as F

from .checks import IGNORE
from .errors import MiniPeftError


def linear(x, weight, bias=None):
    """F.linear, with a faster path for a few rows on the CPU (decoding, short batches).

    There MKL runs a one-row product on one thread, and for up to a few dozen rows spends much of
    its time repacking the weight, reading [out, in] weights at a fraction of the memory bandwidth.
    Splitting the output rows into one block per thread and letting bmm run the blocks in parallel
    computes the same dot products 1.3-2x faster (measured here for 1 to 64 rows, 2 threads). One
    row (greedy decoding at batch 1) goes as block @ x.T, a matrix-vector product per thread:
    GPT-2 small's decoding step 27.5 -> 21.2 ms; for more rows that form is slower. Under
    torch.compile, F.linear: the compiler picks its own kernels.
    """
    if torch.compiler.is_compiling():
        return F.linear(x, weight, bias)
    k, (n_out, n_in) = torch.get_num_threads(), weight.shape
    if x.device.type != "cpu" or k < 2 or x.shape[-1] != n_in or x.numel() > 64 * n_in or n_out < 64 * k:
        return F.linear(x, weight, bias)
    rows = x.numel() // n_in
    per = n_out // k                                                   # k blocks of `per` outputs, remainder apart
    blocks = weight[:k * per].view(k, per, n_in)                       # [k, per, n_in]
    if rows == 1:  # decoding one row: block @ x.T reads each weight row once, in order (~1.3x faster again)
        column = x.reshape(1, n_in).t()                                # [n_in, 1] view of the row: as a contiguous
        y = torch.bmm(blocks, column.expand(k, n_in, 1)).view(1, k * per)  # [n_in, 1] it takes a 4x slower BLAS path
    else:
        y = torch.bmm(x.reshape(1, rows, n_in).expand(k, rows, n_in), blocks.transpose(1, 2))  # [k, rows, per]
        y = y.transpose(0, 1).reshape(rows, k * per)
    if k * per < n_out:
        y = torch.cat([y, F.linear(x.reshape(rows, n_in), weight[k * per:])], dim=1)
    if bias is not None:
        y = y + bias.to(y.dtype)                                       # autocast: stay in bf16, as F.linear does
    return y.view(*x.shape[:-1], n_out)


def linear_cross_entropy(x, weight, targets, *, chunk_elements=2 ** 26):
    """Mean cross-entropy of the logits x @ weight.T against targets, without keeping the logits.

    x [N, C], weight [vocab, C], targets [N] (IGNORE where no loss is wanted). The usual
    F.cross_entropy(F.linear(x, weight), targets) keeps [N, vocab] logits, their log-softmax and,
    in backward, a gradient of the same size (three times 103 MB for GPT-2 at 4 x 128 tokens,
    4.9 GB at 8 x 1024). Here each chunk of rows (at most chunk_elements logits, 256 MB in fp32)
    is turned into its loss and, when gradients are wanted, straight into d loss / d x and
    d loss / d weight (softmax - one_hot, written over the chunk's logits: one [vocab, rows]
    buffer in all); backward only rescales them. Same loss and gradients as the usual pair, up to
    float rounding (first order only: no double backward).
    The logits are computed as weight @ x.T, [vocab, rows], the softmax reducing over dim 0: MKL
    runs that product ~1.3x faster than x @ weight.T at GPT-2's sizes (217-245 vs 329 ms for
    512 rows, 2 threads), 3-4% of a whole BitFit or full fine-tuning step.
    """
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1] or targets.shape != (x.shape[0],):
        raise MiniPeftError(f"linear_cross_entropy needs x [N, C], weight [vocab, C] and targets [N]; got "
                            f"{list(x.shape)}, {list(weight.shape)} and {list(targets.shape)}")
    need_x = torch.is_grad_enabled() and x.requires_grad
    need_w = torch.is_grad_enabled() and weight.requires_grad
    return _LinearCrossEntropy.apply(x, weight, targets, need_x, need_w, max(1, chunk_elements // weight.shape[0]))


class _LinearCrossEntropy(torch.autograd.Function):
    """forward computes the summed loss and its gradients; backward only scales them by grad / n_valid."""

    @staticmethod
    def forward(ctx, x, weight, targets, need_x, need_w, rows):
        valid = targets != IGNORE
        n_valid = valid.sum()
        acc = torch.promote_types(x.dtype, torch.float32)               # fp32 at least (bf16 logits), fp64 stays fp64
        total = x.new_zeros((), dtype=acc)
        grad_x = torch.empty_like(x) if need_x else None       # every row written below
        grad_w = torch.zeros_like(weight) if need_w else None
        for start in range(0, x.shape[0], rows):
            xc, keep = x[start:start + rows], valid[start:start + rows]
            tc = targets[start:start + rows].clamp(min=0)                    # ignored rows: any id, masked below
            z = torch.mm(weight, xc.t()).to(acc)                            # [vocab, n] logits, the one big buffer
            z -= z.amax(dim=0, keepdim=True)                                 # shifted, so that exp cannot overflow
            picked = z.gather(0, tc[None])[0]                                # the target's shifted logit
            p = z.exp_()                                                     # in place: no second [vocab, n]
            norm = p.sum(dim=0)                                              # loss = log(norm) - picked
            total += ((norm.log() - picked) * keep).sum()
            if need_x or need_w:
                grad = p.div_(norm)                                          # softmax
                grad.scatter_add_(0, tc[None], -keep[None].to(grad.dtype))   # - one_hot(target)
                grad = grad.mul_(keep).to(x.dtype)                           # ignored rows: no gradient
                if need_x:
                    grad_x[start:start + rows] = grad.t() @ weight
                if need_w:
                    grad_w.addmm_(grad.to(grad_w.dtype), xc.to(grad_w.dtype))
            z = p = grad = None                                              # this [vocab, n] freed before the next one
        ctx.save_for_backward(grad_x, grad_w, n_valid, weight)  # weight: so that editing it in place before backward is an error
        return total / n_valid

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        grad_x, grad_w, n_valid, _ = ctx.saved_tensors
        scale = grad_loss / n_valid.clamp(min=1)  # nothing to score: zero gradients, as F.cross_entropy gives
        return (None if grad_x is None else grad_x * scale.to(grad_x.dtype),
                None if grad_w is None else grad_w * scale.to(grad_w.dtype), None, None, None, None)
