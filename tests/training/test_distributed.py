"""Training on two processes (torchrun, gloo on this CPU), with DDP or FSDP, is training on one:
the same losses, gradients and trained tensors for the same global batch
(minipeft.training.distributed)."""

import os

import pytest
import torch

from minipeft.training.distributed import Ranks, local_device, lost_peer
from tests.methods_common import torchrun
from tests.training import ddp_worker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Each case of ddp_worker.CASES trained on two processes: {case: (losses, grads, trained, bytes)}."""
    out = tmp_path_factory.mktemp("ddp") / "results.pt"
    run = torchrun(["-m", "tests.training.ddp_worker", str(out)], ROOT, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    return torch.load(out)


def is_key_bias(name):
    """A key projection's bias: softmax ignores a shift shared by all keys, so its exact gradient is 0."""
    return name.endswith("bias_key") or name.endswith(".k.bias")


@pytest.mark.parametrize("how", ["ddp", "fsdp"])
@pytest.mark.parametrize("case", ddp_worker.CASES, ids=["-".join(c) for c in ddp_worker.CASES])
def test_two_processes_train_as_one_on_the_same_global_batch(case, how, two_processes):
    """DDP (each rank the whole model) and FSDP (fully_shard: each rank a half of every tensor,
    prompt tuning's too) both give one process's training."""
    losses, grads, trained, sent, held = two_processes[(*case, how)]
    torch.manual_seed(0)
    one_losses, one_grads, one_trained, _, _ = ddp_worker.train(*case, Ranks())
    # DDP: each rank holds the whole model; FSDP: half of it between steps
    assert held == 1.0 if how == "ddp" else held < 0.51
    assert losses == pytest.approx(one_losses, rel=1e-6, abs=1e-6)  # losses near 8: one fp32 ulp is ~5e-7
    assert grads.keys() == one_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], one_grads[name], rtol=0, atol=1e-6, msg=name)
    # The trained tensors too, but for the key biases: their gradient is rounding noise (< 1e-7
    # here), which Adam divides by its own size into steps of up to lr, different on 1 and 2 processes.
    for name in trained:
        if is_key_bias(name):
            assert one_grads[name].abs().max() < 1e-7, name
        else:
            torch.testing.assert_close(trained[name], one_trained[name], rtol=0, atol=1e-6, msg=name)
    if how == "ddp":  # only what trains is all-reduced: each trainable tensor's fp32 gradient, once per step
        assert sent == ddp_worker.STEPS * sum(t.numel() * t.element_size() for t in one_trained.values())


def test_a_rank_shares_its_contiguous_slice_and_the_loss_parts_add_up_to_the_mean():
    rows = list(range(8))
    assert [Ranks(rank=r, world=2).share(rows) for r in (0, 1)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    loss_a, loss_b = torch.tensor(2.0), torch.tensor(5.0)              # means over 3 and 1 tokens
    parts = [Ranks(rank=0, world=2).part(loss_a, 3, 4), Ranks(rank=1, world=2).part(loss_b, 1, 4)]
    assert float(sum(parts)) == pytest.approx((2.0 * 3 + 5.0 * 1) / 4)
    assert Ranks().part(loss_a, 3, 4) is loss_a                         # one process: the loss itself


def test_under_torchrun_cuda_means_this_ranks_own_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert local_device("cuda") == torch.device("cuda", 1)
    assert local_device("cuda:0") == torch.device("cuda", 0) and local_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert local_device("cuda") == torch.device("cuda")


def test_only_a_lost_peer_becomes_the_one_line_peer_message():
    assert lost_peer(RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:5033"))
    assert not lost_peer(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (NCCL watchdog)"))
