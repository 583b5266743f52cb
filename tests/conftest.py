import socket

import pytest
import torch


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
