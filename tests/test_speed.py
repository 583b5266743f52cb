"""minipeft.speed: each speed-only function equals the plain line it replaces (F.linear; F.cross_entropy on the logits)."""

import pytest
import torch
import torch.nn.functional as F

from minipeft import GPT, GPTConfig, MiniPeftError
from minipeft.speed import linear, linear_cross_entropy
from tests.methods_common import threads


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


@pytest.mark.parametrize("rows", [1, 5])  # the one-row form (block @ x.T) and the few-rows form
def test_linear_split_paths_keep_gradients(rows):
    torch.manual_seed(0)
    x = torch.randn(1, rows, 32, requires_grad=True)
    w = torch.randn(300, 32, requires_grad=True)
    with threads(2):
        linear(x, w).square().sum().backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    F.linear(x, w).square().sum().backward()
    torch.testing.assert_close(gx, x.grad, rtol=1e-5, atol=1e-4)  # summation order may differ (values ~100)
    torch.testing.assert_close(gw, w.grad, rtol=1e-5, atol=1e-4)


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


# ---- the loss without logits -----------------------------------------------------------------------

def _usual(x, weight, targets):
    return F.cross_entropy(F.linear(x, weight), targets, ignore_index=-100)


@pytest.mark.parametrize("chunk_elements", [2 ** 26, 97 * 5, 1])  # one chunk, chunks of 5 rows, one row each
@pytest.mark.parametrize("need", ["x", "weight", "both"])
def test_linear_cross_entropy_equals_the_usual_pair(chunk_elements, need):
    torch.manual_seed(0)
    targets = torch.randint(0, 97, (23,))
    targets[[0, 7, 8, 22]] = -100
    grads = []
    for fused in (True, False):
        x = torch.randn(23, 16, requires_grad=need in ("x", "both"))
        weight = torch.randn(97, 16, requires_grad=need in ("weight", "both"))
        with torch.no_grad():
            torch.manual_seed(1)
            x.copy_(torch.randn(23, 16))
            weight.copy_(torch.randn(97, 16))
        loss = linear_cross_entropy(x, weight, targets, chunk_elements=chunk_elements) if fused else _usual(x, weight, targets)
        (3.0 * loss).backward()  # a scale on the way back, as a loss weight would give
        grads.append((loss.detach(), x.grad, weight.grad))
    (loss_f, gx_f, gw_f), (loss_u, gx_u, gw_u) = grads
    torch.testing.assert_close(loss_f, loss_u, rtol=1e-6, atol=1e-6)
    for got, want in ((gx_f, gx_u), (gw_f, gw_u)):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_linear_cross_entropy_without_gradients_and_with_nothing_to_score():
    torch.manual_seed(0)
    x, weight = torch.randn(6, 8, requires_grad=True), torch.randn(11, 8, requires_grad=True)
    targets = torch.randint(0, 11, (6,))
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(x, weight, targets), _usual(x, weight, targets))
    none = torch.full((6,), -100)
    assert linear_cross_entropy(x, weight, none).isnan() and _usual(x, weight, none).isnan()  # 0 / 0, as the usual mean


def _loss_from_logits(module, ids, labels, arch):
    """The usual formulation: cross-entropy of forward's logits (GPT-2: position t predicts token t + 1)."""
    if arch == "t5":
        from minipeft.models.t5 import shift_right
        logits, targets = module(ids, shift_right(labels)), labels
    else:
        logits, targets = module(ids)[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


@pytest.mark.parametrize("model_kind", ["gpt", "t5 tied", "t5 untied"])
@pytest.mark.parametrize("method", ["full", "prompt"])
def test_models_give_the_loss_and_gradients_of_their_logits(model_kind, method):
    """forward(labels=...) (the loss without logits) == cross-entropy of forward's logits: loss, and
    every trainable parameter's gradient (the tied embedding included: its head and lookup parts add up)."""
    from minipeft import PromptTuning
    from tests.methods_common import tiny_gpt, tiny_t5, toy_batch, toy_labels, toy_seq2seq
    if model_kind == "gpt":
        model = tiny_gpt()
        ids = toy_batch(61)
        labels = toy_labels(ids)
    else:
        model = tiny_t5(tie_word_embeddings=model_kind == "t5 tied")
        ids, labels = toy_seq2seq(61)
        labels[0, 3:] = -100
    module = model if method == "full" else PromptTuning(model, 3)
    module.train()
    results = []
    for fused in (False, True):
        module.zero_grad(set_to_none=True)
        loss = module(ids, labels=labels) if fused else _loss_from_logits(module, ids, labels, model.arch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-6, msg=name)


def test_loss_without_logits_under_bf16_autocast():
    """Under autocast the head's product runs in bf16; the loss is still fp32, and loss and gradients
    agree with the logits' cross-entropy to bf16 rounding."""
    from tests.methods_common import tiny_gpt, toy_batch
    model = tiny_gpt().train()
    ids = toy_batch(61)
    results = []
    for fused in (False, True):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids, labels=ids) if fused else _loss_from_logits(model, ids, ids, "gpt")
        loss.backward()
        results.append((loss.detach(), model.wte.weight.grad.clone(), model.h[0].attn.c_attn.weight.grad.clone()))
    (loss_a, *grads_a), (loss_b, *grads_b) = results
    assert loss_b.dtype == torch.float32
    torch.testing.assert_close(loss_b, loss_a.float(), rtol=1e-3, atol=0)
    for a, b in zip(grads_a, grads_b):
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999


def test_linear_split_path_keeps_the_autocast_dtype():
    x, w, b = torch.randn(1, 32), torch.randn(300, 32), torch.randn(300)
    with threads(2), torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x, w, b).dtype == F.linear(x, w, b).dtype == torch.bfloat16


def test_linear_cross_entropy_refuses_what_the_usual_pair_refuses():
    torch.manual_seed(0)
    x, weight = torch.randn(6, 8, requires_grad=True), torch.randn(11, 8, requires_grad=True)
    targets = torch.randint(0, 11, (6,))
    with pytest.raises(MiniPeftError, match="targets \\[N\\]"):
        linear_cross_entropy(x, weight, targets[:5])
    loss = linear_cross_entropy(x, weight, targets)
    with torch.no_grad():
        weight.mul_(2)  # edited in place between forward and backward: the gradients would be stale
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    loss = linear_cross_entropy(x, weight, targets)
    (grad_x,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError):  # first order only, said rather than silently wrong
        grad_x.sum().backward()


def test_nothing_to_score_gives_zero_gradients_as_the_usual_pair():
    torch.manual_seed(0)
    ignored = torch.full((6,), -100)
    grads = []
    for fused in (True, False):
        x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1)).requires_grad_()
        weight = torch.randn(11, 8)
        (linear_cross_entropy(x, weight, ignored) if fused else _usual(x, weight, ignored)).backward()
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1]) and not grads[0].any()


@pytest.mark.parametrize("model_kind", ["gpt", "t5"])
def test_labels_are_checked_before_the_loss(model_kind):
    from tests.methods_common import tiny_gpt, tiny_t5
    model = tiny_gpt() if model_kind == "gpt" else tiny_t5()
    ids = torch.randint(2, 61, (2, 6))
    labels = ids.clone()
    labels[0, 3] = -1
    with pytest.raises(MiniPeftError, match="labels must be -100 or token ids"):
        model(ids, labels=labels)
