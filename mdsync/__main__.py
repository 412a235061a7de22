"""`python -m mdsync` is the `mdsync` command."""

from mdsync.cli import main

if __name__ == "__main__":
    main()
