"""Helpers shared by benchmarks and tests (pytest runs as `python -m pytest` from the project root, which puts this
package on the path)."""
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_cpu(rows: list[dict]) -> list[dict]:
    """rows with this machine's CPU model and capability beside every figure (as benchmarks/run.py records them)."""
    from ism.system import machine
    return [{**r, "cpu": r.get("cpu") or machine.describe()} for r in rows]
