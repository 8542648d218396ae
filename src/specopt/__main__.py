"""``python -m specopt``: the `specopt` command."""

from specopt.cli import main

if __name__ == "__main__":
    main()
