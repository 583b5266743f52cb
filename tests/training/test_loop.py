"""The training loop of both scripts and the experiments (minipeft.training.loop): its steps are a
hand-written loop's, and it saves, stops and starts again where it says."""

import os
import signal

import pytest
import torch

from minipeft import BitFit, MiniPeftError
from minipeft.training import loop
from minipeft.training.state import make_optimizer
from tests.methods_common import snapshot, tiny_gpt, toy_batch, toy_labels

pytestmark = pytest.mark.usefixtures("one_thread")


def loss_at_of(module):
    """The toy task's loss on a batch that depends on the step alone."""
    def loss_at(step):
        ids = toy_batch(61, batch=4, length=12, seed=step)
        return module(ids, labels=toy_labels(ids))
    return loss_at


def lr_at(step):
    return 3e-2 / (1 + step)


def bitfit():
    return BitFit(tiny_gpt())


def assert_same_weights(a, b):
    sa, sb = snapshot(a), snapshot(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def assert_same_weights_as(module, weights):
    now = snapshot(module)
    assert all(torch.equal(now[k], weights[k]) for k in weights)


def test_its_steps_are_those_of_a_hand_written_loop():
    by_hand = bitfit()
    opt = make_optimizer(by_hand, 1.0)
    params = [p for p in by_hand.parameters() if p.requires_grad]
    for step in range(5):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = loss_at_of(by_hand)(step)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.01)
        opt.step()
    looped = bitfit()
    assert loop.train(looped, make_optimizer(looped, 1.0), loss_at_of(looped), 5, lr_at=lr_at, clip=0.01) == 5
    assert_same_weights(by_hand, looped)
    unclipped = bitfit()
    loop.train(unclipped, make_optimizer(unclipped, 1.0), loss_at_of(unclipped), 5, lr_at=lr_at)
    assert not all(torch.equal(a, b) for a, b in zip(unclipped.parameters(), looped.parameters()))  # clipping acted


def test_stopping_and_starting_again_at_a_step_is_one_straight_run():
    straight, resumed = bitfit(), bitfit()
    loop.train(straight, make_optimizer(straight, 1.0), loss_at_of(straight), 6, lr_at=lr_at, clip=1.0)
    opt = make_optimizer(resumed, 1.0)
    loop.train(resumed, opt, loss_at_of(resumed), 3, lr_at=lr_at, clip=1.0)
    loop.train(resumed, opt, loss_at_of(resumed), 6, start=3, lr_at=lr_at, clip=1.0)
    assert_same_weights(straight, resumed)


def test_it_saves_every_n_steps_and_after_the_last_and_reports_every_step():
    module, saved, reported = bitfit(), [], []
    loop.train(module, make_optimizer(module, 1e-2), loss_at_of(module), 8, start=1, save=saved.append, save_every=3,
               on_step=lambda step, loss: reported.append((step, type(loss))))
    assert saved == [3, 6, 8]
    assert reported == [(step, float) for step in range(1, 8)]


@pytest.mark.parametrize("what", ["loss", "gradient"])
def test_a_non_finite_loss_or_gradient_stops_before_its_update_and_nothing_is_saved_after(what):
    module = bitfit()
    loss_of = loss_at_of(module)
    weights = {}

    def loss_at(step):
        loss = loss_of(step)
        if step == 2 and what == "loss":
            return loss * float("nan")
        if step == 2:  # a finite loss (0) whose gradient is not: d sqrt(x)/dx at 0
            trained = next(p for p in module.parameters() if p.requires_grad)
            return loss + torch.sqrt(trained.sum() - trained.sum().detach())
        return loss

    def save(done):
        weights[done] = snapshot(module)

    with pytest.raises(loop.NonFiniteLoss, match=rf"^non-finite {what} \(\S+\) at step 3$") as e:
        loop.train(module, make_optimizer(module, 1e-2), loss_at, 5, clip=1.0, save=save, save_every=1)
    assert isinstance(e.value, MiniPeftError)
    assert list(weights) == [1, 2]
    assert_same_weights_as(module, weights[2])  # the update of the bad step was not made


def test_ctrl_c_finishes_the_step_saves_and_stops():
    module, saved = bitfit(), []
    loss_of = loss_at_of(module)

    def loss_at(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal, handled by state.CtrlC
        return loss_of(step)

    with pytest.raises(KeyboardInterrupt):
        loop.train(module, make_optimizer(module, 1e-2), loss_at, 6, save=saved.append, save_every=100)
    assert saved == [3]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler was put back
