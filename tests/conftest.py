import socket

import pytest


@pytest.fixture
def free_port():
    """A port the OS says is free right now (tests never use fixed ports)."""

    def _get() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return _get
