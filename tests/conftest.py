import socket

import pytest

#: lines the tests measured (counts, rates), shown in a "measured" section at the end of the run
_MEASURED: list[str] = []


@pytest.fixture
def free_port():
    """A port the OS says is free right now (tests never use fixed ports)."""

    def _get() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return _get


@pytest.fixture(scope="module")
def http_backend():
    """A real HTTP/1.1 backend (tests/pair.py ``HttpBackend``), one per test module."""
    from tests.pair import HttpBackend

    b = HttpBackend()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def grpc_backend():
    """A real grpcio echo backend (tests/pair.py ``GrpcEchoBackend``), one per test module."""
    from tests.pair import GrpcEchoBackend

    b = GrpcEchoBackend()
    yield b
    b.stop()


@pytest.fixture
def report(request):
    """``report(what, value)``: a measurement shown in the run's summary (not only in captured output)."""

    def _report(what: str, value: object) -> None:
        _MEASURED.append(f"{request.node.nodeid}: {what}: {value}")

    return _report


def pytest_terminal_summary(terminalreporter):
    if _MEASURED:
        terminalreporter.section("measured")
        for line in _MEASURED:
            terminalreporter.write_line(line)
