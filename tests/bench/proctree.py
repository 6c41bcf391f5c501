"""A process's own children, from /proc (Linux), so a test signals only processes it started itself and
never another test's or a user's process that happens to match a command-line pattern."""

from __future__ import annotations

import os
import signal
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def child_env(**extra: str) -> dict[str, str]:
    """os.environ for a child `python -m optbench ...` that imports this checkout's optbench (not whichever
    checkout an editable install elsewhere on the machine points at)."""
    path = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
    return {**os.environ, "PYTHONPATH": path, **extra}


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile
        return None
    return int(stat.rpartition(")")[2].split()[1])  # after "pid (comm)": state, ppid, ...


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid`."""
    return sorted(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and parent_of(int(p.name)) == pid)


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def child_with_args(parent: int, *args: str) -> int:
    """The one child of `parent` whose command line holds `args` consecutively."""
    n = len(args)
    found = []
    for pid in children(parent):
        line = cmdline(pid)
        if any(tuple(line[i:i + n]) == args for i in range(len(line))):
            found.append(pid)
    assert len(found) == 1, f"children of {parent} with {args}: {found}"
    return found[0]


def hold(parent: int, pid: int) -> int | None:
    """A pidfd on `pid`, checked to be `parent`'s child once opened: a signal sent through it reaches exactly
    that process, even after it has exited and its pid was reused (None where there are no pidfds)."""
    fd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    if parent_of(pid) != parent:
        if fd is not None:
            os.close(fd)
        raise AssertionError(f"{pid} is not a child of {parent}")
    return fd


def send(fd: int | None, pid: int, sig: signal.Signals) -> None:
    """Signal a held process; one that has exited meanwhile is left alone."""
    try:
        signal.pidfd_send_signal(fd, sig) if fd is not None else os.kill(pid, sig)
    except ProcessLookupError:
        pass


def kill_child(parent: int, pid: int, sig: signal.Signals) -> None:
    """Signal `pid` only if it is `parent`'s child."""
    fd = hold(parent, pid)
    try:
        send(fd, pid, sig)
    finally:
        if fd is not None:
            os.close(fd)
