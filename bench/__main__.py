"""Run benchmarks: python -m bench [NAME ...] [--repeat N] [--out DIR]; exit 1 if a goal is missed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import (  # noqa: F401  (register their benchmarks)
    agent,
    bgp,
    compile,
    dataplane,
    failover,
    federation,
    flows,
    foundation,
    kube,
    neutron,
    scale,
    store,
)
from bench.harness import REGISTRY, run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all): {', '.join(REGISTRY)}")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in REGISTRY]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    return 0 if run(args.names or list(REGISTRY), args.repeat, args.out) else 1


if __name__ == "__main__":
    sys.exit(main())
