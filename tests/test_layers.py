"""Shared building blocks: the one-row matrix-vector path of linear()."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from minipeft import GPT, GPTConfig
from minipeft.layers import linear


@contextlib.contextmanager
def threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("n_out", [100, 256, 1001])
@pytest.mark.parametrize("x_shape", [(1, 48), (1, 1, 48), (48,), (3, 48), (4, 16, 48), (65, 48)])
def test_linear_equals_f_linear(n_threads, n_out, x_shape):
    """Every shape and thread count (up to 64 rows take the bmm split, more F.linear) gives F.linear's
    result: the split only changes which thread computes which dot product."""
    torch.manual_seed(0)
    x, w, b = torch.randn(x_shape), torch.randn(n_out, 48), torch.randn(n_out)
    with threads(n_threads):
        for bias in (None, b):
            got, want = linear(x, w, bias), F.linear(x, w, bias)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # summation order may differ


def test_linear_one_row_path_keeps_gradients():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 32, requires_grad=True)
    w = torch.randn(300, 32, requires_grad=True)
    with threads(2):
        linear(x, w).square().sum().backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    F.linear(x, w).square().sum().backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, w.grad)


def test_cached_generation_on_the_split_path_equals_recompute():
    """A model wide enough that decoding takes the split path (head and c_attn >= 64 rows per thread):
    greedy tokens equal the argmax of full forward passes, which never take it."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=500, n_positions=32, n_embd=64, n_layer=2, n_head=4)).eval()
    ids = torch.randint(0, 500, (1, 5))
    with threads(2):
        got = model.generate(ids, max_new_tokens=8)
        seq = ids
        with torch.no_grad():
            for _ in range(8):
                seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(got, seq)
