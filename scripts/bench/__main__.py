"""Entry point: `python3 scripts/bench [options]` (or `python3 -m bench` from scripts/)."""

import os
import sys

if not __package__:
    # Run as a directory: its own path is sys.path[0], which would let its modules shadow the
    # standard library's; the package is imported from scripts/ instead.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.path.dirname(here))

from bench.cli import main  # noqa: E402

main()
