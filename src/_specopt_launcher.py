"""The ``specopt`` console script's entry point, kept outside the package.

``import specopt`` loads torch (1–3 s), and the console script imports it before any of the command's code runs: a
Ctrl-C in that time printed a traceback from inside torch's import. Here the import itself is guarded, so the
command ends with one line and exit 130 whenever it is interrupted (the commands' own handlers, which say how to
resume a run, come first once it has started).
"""

import sys

INTERRUPTED = 130  # 128 + SIGINT, the shell's convention


def main() -> None:
    try:
        from specopt.cli import main as command

        command()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
