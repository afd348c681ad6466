"""`python -m bench SCENARIO [--full]`: run one scenario (or `all`) at CI size, or at full
size with `--full`; each prints a table and writes bench/results/SCENARIO.json."""

from __future__ import annotations

import argparse
import importlib

SCENARIOS = ("rest_hits", "normalize", "pollers", "fanout", "bandwidth", "economy", "e2e", "soak",
             "topologies")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("scenario", choices=(*SCENARIOS, "all"))
    parser.add_argument("--full", action="store_true", help="full size (minutes), not CI size")
    args = parser.parse_args()
    for name in SCENARIOS if args.scenario == "all" else (args.scenario,):
        print(f"== {name}{' (full)' if args.full else ''}")
        importlib.import_module(f"bench.{name}").run(args.full)


if __name__ == "__main__":
    main()
