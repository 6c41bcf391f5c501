"""Run a command that cannot outlive the process that started it:

    python -m optbench.bench.tether PARENT_PID CMD [ARG...]

asks Linux for SIGTERM when its parent dies (PR_SET_PDEATHSIG), checks that the parent is still PARENT_PID (it could
have died before the request), then becomes CMD (exec: same pid, and the request survives the exec). A bench worker
starts a trial's torchrun this way, in a session of its own: a worker killed outright (SIGKILL, the OOM killer, its
whole process group killed) still stops its trial, whose ranks torchrun then stops as it does on SIGTERM.

A separate exec rather than subprocess's preexec_fn, which may deadlock in a process with threads (the worker's
heartbeat thread runs while it starts a trial). The tie is Linux's; elsewhere the command runs untied.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def tie_to(parent: int) -> None:
    """SIGTERM to this process when `parent`, its parent now, dies; raises SystemExit if it is gone already."""
    if not sys.platform.startswith("linux"):
        return  # a parent-death signal is Linux's: elsewhere the command runs untied
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        raise SystemExit(f"tether: parent {parent} exited before the command started")


def main(argv: list[str]) -> None:
    tie_to(int(argv[0]))
    os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
