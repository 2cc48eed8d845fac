"""Naming and reaching a running Dask scheduler: checked before any work, each refusal one line, quickly.

Why a probe of our own: dask's `Client(address, timeout=...)` waits without end on a server that accepts
TCP and never answers (its timeout does not cover the handshake), and reads the first 8 bytes of a garbage
answer as a frame length (asking numpy for exabytes). A dask scheduler speaks first on a new connection:
an 8-byte little-endian length, then a small handshake message. So the probe connects with a deadline,
reads those 8 bytes with a deadline, checks the length is a handshake's (bytes, not exabytes) and reads it.
Only then is the real `Client` made. TLS and websocket addresses get the TCP connect check only.
"""
from __future__ import annotations

import os
import re
import socket
import struct
import time
from dataclasses import dataclass

from analysis.errors import AtlasError

SCHEMES = ("tcp", "tls", "ws", "wss")
MAX_HANDSHAKE_BYTES = 1 << 20
DEFAULT_TIMEOUT_S = 5.0  # a real handshake is ~200 bytes
_ADDRESS = re.compile(r"^(?:(?P<scheme>[a-z][a-z0-9+.-]*)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})/?$")


def connect_timeout() -> float:
    """Seconds allowed to reach a scheduler: ADAPTER_ATLAS_SCHEDULER_TIMEOUT_S (default 5: a scheduler sends its
    handshake within milliseconds of a connection, even a busy one within a second or two)."""
    try:
        value = float(os.environ.get("ADAPTER_ATLAS_SCHEDULER_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if 0 < value < 3600 else DEFAULT_TIMEOUT_S


@dataclass(frozen=True)
class SchedulerAddress:
    scheme: str
    host: str  # without IPv6 brackets
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_scheduler(text: str) -> SchedulerAddress:
    """`tcp://host:8786` (or `host:8786`, tls://, ws://, wss://) as an address, or one AtlasError line."""
    shown = repr(str(text)[:80])
    match = _ADDRESS.match(str(text).strip())
    if not match:
        raise AtlasError(f"--scheduler {shown}: expected a scheduler address such as tcp://host:8786 "
                         "(or 'synchronous')")
    scheme = (match["scheme"] or "tcp").lower()
    if scheme not in SCHEMES:
        raise AtlasError(f"--scheduler {shown}: unsupported scheme '{scheme}'; a dask scheduler listens on "
                         f"{', '.join(s + '://' for s in SCHEMES)}")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise AtlasError(f"--scheduler {shown}: port {port} is not in 1..65535")
    return SchedulerAddress(scheme, match["host"].strip("[]"), port)


def _recv_exactly(sock: socket.socket, n: int, deadline: float) -> bytes:
    data = b""
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(min(n - len(data), 65536))
        if not chunk:
            raise ConnectionError("the connection was closed")
        data += chunk
    return data


def probe(address: SchedulerAddress, timeout: float | None = None) -> None:
    """Refuse (AtlasError, one line, within about `timeout` seconds) an address where no dask scheduler answers."""
    timeout = connect_timeout() if timeout is None else timeout
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
    except OSError as exc:
        why = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise AtlasError(f"--scheduler {address}: cannot connect ({why})") from None
    with sock:
        if address.scheme != "tcp":
            return
        try:
            (length,) = struct.unpack("<Q", _recv_exactly(sock, 8, deadline))
            if not 0 < length <= MAX_HANDSHAKE_BYTES:
                raise AtlasError(f"--scheduler {address}: the server there answered, but not as a dask scheduler "
                                 f"(a first message of {length} bytes)")
            _recv_exactly(sock, length, deadline)
        except TimeoutError:
            raise AtlasError(f"--scheduler {address}: the server accepted the connection but sent nothing a dask "
                             f"scheduler sends within {timeout:g} s (not a dask scheduler, or a stuck one)") from None
        except OSError as exc:
            raise AtlasError(f"--scheduler {address}: the connection failed during the handshake "
                             f"({exc.strerror or exc})") from None
