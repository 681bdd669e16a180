#!/usr/bin/env python3
"""Fan-out against the reference peer at 100, 500, 1000 and 5000 watchers, in one run
(`make bench-fanout`; `make bench` runs these with every other figure). Run from the
project root after `make test`:

    python3 bench/fanout.py [--rounds 3] [--shared ../shared/bench]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from all import FANOUT, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", default="3")
    parser.add_argument("--shared", default=os.path.join("..", "shared", "bench"))
    args = parser.parse_args()
    run(list(FANOUT), args.rounds, args.shared)


if __name__ == "__main__":
    main()
