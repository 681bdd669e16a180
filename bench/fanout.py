#!/usr/bin/env python3
"""Fan-out against the reference peer at several watcher counts, in one run.

Reuses ../shared/bench/compare.py (fresh processes, alternating servers, medians and the
ratio ours/peer) with extra fanout scenarios: 100, 500 and 1000 subscribers of 10
publishers. Run from the project root after `make test`:

    python3 bench/fanout.py [--rounds 3] [--shared ../shared/bench]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

SCENARIOS = {
    # name: (subscribers, publishers, updates per second in total)
    "fanout": (100, 10, 200),
    "fanout-500": (500, 10, 100),
    "fanout-1000": (1000, 10, 50),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", default="3")
    parser.add_argument("--shared", default=os.path.join("..", "shared", "bench"))
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location(
        "compare", os.path.join(args.shared, "compare.py")
    )
    assert spec is not None and spec.loader is not None
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    figures = compare.MODES["fanout"][1]
    for name, (subscribers, publishers, rate) in SCENARIOS.items():
        compare.MODES[name] = (
            [
                "fanout",
                "--subscribers",
                str(subscribers),
                "--publishers",
                str(publishers),
                "--update-rate",
                str(rate),
                "--duration",
                "10",
            ],
            figures,
        )
    # compare.py starts `.venv/bin/twistd ... presence`, which finds our plugin on sys.path.
    os.environ["PYTHONPATH"] = os.getcwd()
    sys.argv = [sys.argv[0], "--modes", ",".join(SCENARIOS), "--rounds", args.rounds]
    compare.main()


if __name__ == "__main__":
    main()
