"""The ``specopt`` console script's entry point, kept outside the package.

``import specopt`` loads torch (1–3 s), and the console script imports it before any of the command's code runs: a
Ctrl-C in that time printed a traceback from inside torch's import, or, landing where an import swallows exceptions
(numpy's), left a half-imported module behind and the command went on running. Here a Ctrl-C during the import is
held until the import ends, and then the command ends with one line and exit 130 (the commands' own handlers, which
say how to resume a run, come first once it has started).
"""

import signal
import sys
import threading

INTERRUPTED = 130  # 128 + SIGINT, the shell's convention


def main() -> None:
    pressed = []
    held = threading.current_thread() is threading.main_thread()  # signal handlers live on the main thread only
    previous = signal.signal(signal.SIGINT, lambda *_: pressed.append(True)) if held else None
    try:
        from specopt.cli import main as command
    finally:
        if held:
            signal.signal(signal.SIGINT, previous)
    try:
        if pressed:
            raise KeyboardInterrupt
        command()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
