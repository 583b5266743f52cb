import socket

import pytest
import torch

from tests.methods_common import threads


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run much faster on one intra-op thread (and when other processes share the cores);
    a module asks for it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    with threads(1):
        yield


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing in minipeft may reach the network: any connection attempt fails the test."""
    def refuse(*args, **kwargs):
        raise RuntimeError("network access attempted during a test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


# Fuzz tests: a quick profile in the normal suite, thousands of cases with MINIPEFT_FUZZ=full.
try:
    import os

    from hypothesis import HealthCheck, settings

    # the suite (and CI) runs the same 60 cases every time; the full profile draws new ones on each run
    settings.register_profile("quick", max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    settings.register_profile("full", max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
    settings.load_profile("full" if os.environ.get("MINIPEFT_FUZZ") == "full" else "quick")
except ImportError:  # hypothesis comes with the dev extra
    pass
