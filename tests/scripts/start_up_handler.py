"""Prints the SIGINT handler after ppo_lm.errors.quiet_interrupts(): its name, or 'ignored'."""

import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from ppo_lm.errors import quiet_interrupts  # noqa: E402

quiet_interrupts()
handler = signal.getsignal(signal.SIGINT)
print("ignored" if handler is signal.SIG_IGN else handler.__name__)
