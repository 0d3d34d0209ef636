"""The real-server helper now lives in harness/server.py (the service benchmarks use it too);
re-exported for the tests that import it from here."""

from harness.server import ServerProcess, free_port

__all__ = ["ServerProcess", "free_port"]
