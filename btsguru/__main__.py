"""`python -m btsguru ARGS` is the same as `btsguru ARGS`."""
import sys

from btsguru.cli import main

sys.exit(main())
