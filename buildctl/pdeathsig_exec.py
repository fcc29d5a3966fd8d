"""Exec a command that dies with the process that started it.

    python -I -S pdeathsig_exec.py PARENT_PID SIGNAL -- COMMAND [ARG...]

A fresh, single-threaded process: it asks the kernel for SIGNAL when its parent dies
(PR_SET_PDEATHSIG, which survives exec), checks that PARENT_PID is still its parent (else the
parent died before the request took effect and no signal would ever come), and execs COMMAND in
place (same pid, same process group). `buildctl.process` uses it where util-linux's `setpriv
--pdeathsig` is missing; the launcher uses it the same way. Standard library only: it runs
without site-packages.
"""

import ctypes
import os
import sys

PR_SET_PDEATHSIG = 1


def main(args: list[str]) -> None:
    parent, sig, argv = int(args[0]), int(args[1]), args[3:]
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        sys.stderr.write("buildctl: prctl(PR_SET_PDEATHSIG) failed; running without it\n")
    if os.getppid() != parent:
        os._exit(128 + sig)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        sys.stderr.write(f"buildctl: cannot run {argv[0]!r}: {exc.strerror}\n")
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
