#!/usr/bin/env python3
"""Every figure against the reference peer, in one run (`make bench`).

Reuses ../shared/bench/compare.py (fresh processes, alternating servers, medians and the
ratio ours/peer) and adds scenarios it does not have: fan-out at 500, 1000 and 5000
watchers (the cost per delivered diff as watchers grow), and holding 1,000 and 19,900 idle
connections (RSS per connection as connections grow; the heartbeat p99 at the most one
process can hold under the 20,000 open-file limit). Run from the project root after
`make test`:

    python3 bench/all.py [--rounds 3] [--modes throughput,fanout,...] [--shared ../shared/bench]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

FANOUT = {
    # name: (subscribers, publishers, updates per second in total)
    "fanout": (100, 10, 200),
    "fanout-500": (500, 10, 100),
    "fanout-1000": (1000, 10, 50),
    "fanout-5000": (5000, 10, 10),
}
HOLD = {"hold-1000": 1000, "hold": 10_000, "hold-19900": 19_900}
ALL = ["throughput", *FANOUT, "connect", *HOLD]


def load_compare(shared: str) -> ModuleType:
    """compare.py, with our extra scenarios added to its modes."""
    spec = importlib.util.spec_from_file_location("compare", os.path.join(shared, "compare.py"))
    assert spec is not None and spec.loader is not None
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    modes: dict[str, Any] = compare.MODES
    fanout_figures = modes["fanout"][1]
    for name, (subscribers, publishers, rate) in FANOUT.items():
        modes[name] = (
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
            fanout_figures,
        )
    hold_args, hold_figures = modes["hold"]
    for name, n in HOLD.items():
        args = list(hold_args)
        args[args.index("--n") + 1] = str(n)
        modes[name] = (args, hold_figures)
    return compare


def run(modes: list[str], rounds: str, shared: str) -> None:
    compare = load_compare(shared)
    # compare.py starts `.venv/bin/twistd ... presence`, which finds our plugin on sys.path.
    os.environ["PYTHONPATH"] = os.getcwd()
    sys.argv = [sys.argv[0], "--modes", ",".join(modes), "--rounds", rounds]
    compare.main()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", default="3")
    parser.add_argument("--modes", default=",".join(ALL))
    parser.add_argument("--shared", default=os.path.join("..", "shared", "bench"))
    args = parser.parse_args()
    run(args.modes.split(","), args.rounds, args.shared)


if __name__ == "__main__":
    main()
