"""Joining a Ray cluster: `--ray auto` or `--ray ADDRESS` (docs/cluster.md).

"auto" joins the cluster this machine belongs to (RAY_ADDRESS, or one started here with
`ray start`), and starts a local Ray on this machine's cores when there is none. An ADDRESS
(`host:port` of the head's GCS, or `ray://host:port` for Ray Client) must answer: it is probed with a
plain TCP connection first, so a wrong or unreachable address fails in seconds with an error that
names it instead of hanging in Ray's own retries.
"""
from __future__ import annotations

import socket

PROBE_SECONDS = 5.0


def connect(address: str = "auto") -> str:
    """Initialise Ray in this process (once); returns the address of the cluster joined."""
    import ray

    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"ray address must be 'auto' or host:port, got {address!r}")
    if address != "auto":
        _probe(address)
    if ray.is_initialized():
        current = _current_address()
        if address not in ("auto", current) and address.split("://")[-1] != current:
            raise ValueError(f"this process is already connected to the Ray cluster at {current}, not {address}")
        return current
    if address == "auto":
        try:
            ray.init(address="auto", log_to_driver=False)
        except ConnectionError:  # no cluster running here: a local one on this machine's cores
            ray.init(include_dashboard=False, log_to_driver=False)
        return _current_address()
    try:
        ray.init(address=address, log_to_driver=False)
    except Exception as exc:  # Ray raises several types here (ConnectionError, RuntimeError, grpc errors)
        raise ConnectionError(f"cannot join the Ray cluster at {address}: {exc}") from None
    return _current_address()


def _probe(address: str) -> None:
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        raise ConnectionError(f"cannot reach the Ray cluster at {address}: {exc} (is `ray start --head` running "
                              "there, and is its port open to this machine?)") from None


def _host_port(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"ray address must be 'auto', host:port or ray://host:port, got {address!r}")
    return host.strip("[]"), int(port)


def _current_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address
