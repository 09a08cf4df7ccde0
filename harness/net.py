"""Loopback ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

_LISTEN = "0A"  # the TCP state of a listening socket in /proc/net/tcp


def port_is_free(port: int) -> bool:
    """Nothing listens there (a port in TIME_WAIT counts as free, as servers reuse it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(preferred: int | None = None) -> int:
    """`preferred` if nothing listens there, else any port the kernel hands out."""
    if preferred is not None and port_is_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening_pid(port: int) -> int | None:
    """The process that listens on a TCP port, from Linux's /proc; None when unknown (another
    system, or a process of another user whose descriptors this one may not read)."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                sockets.add(f"socket:[{fields[9]}]")
    if not sockets:
        return None
    for descriptors in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) in sockets for fd in descriptors.iterdir()):
                return int(descriptors.parent.name)
        except OSError:
            continue
    return None


def command_line(pid: int) -> str | None:
    """A running process's command line, or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or None


def parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may hold spaces; the fields after it do not.
    return int(stat.rsplit(")", 1)[1].split()[1])
