"""Helpers shared by benchmarks and tests (pytest runs as `python -m pytest` from the project root, which puts this
package on the path)."""
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
