import pytest

from harness.server import ServerProcess


@pytest.fixture(scope="module")
def import_root(tmp_path_factory):
    """A folder the session's server may import local files from."""
    return tmp_path_factory.mktemp("imports")


@pytest.fixture(scope="module")
def server(tmp_path_factory, import_root):
    """One real `equiprune serve` (Ray + Serve + gRPC on loopback) per test module: stopped
    before the next module, so two Ray clusters never compete for the two cores."""
    process = ServerProcess(tmp_path_factory.mktemp("server") / "data", allow_import=[import_root]).start()
    yield process
    process.stop()


@pytest.fixture
def own_server(tmp_path):
    """A server of the test's own, for tests that kill, restart or stop it."""
    process = ServerProcess(tmp_path / "data").start()
    yield process
    process.stop()
