#!/usr/bin/env python3
"""`python run.py ARGS` is the same as `btsguru ARGS`."""
import sys

from btsguru.cli import main

if __name__ == "__main__":
    sys.exit(main())
