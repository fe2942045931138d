"""python tests/scripts/as_from_a_terminal.py PROGRAM ARGS: run PROGRAM as a terminal starts it, with SIGINT at its
default and unblocked, so a Ctrl-C it sends itself interrupts it (pytest's workers start children with it ignored)."""

import os
import signal
import sys

signal.signal(signal.SIGINT, signal.SIG_DFL)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
