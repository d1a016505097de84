"""The benchmarks' command line: how many rounds, and which of a benchmark's cases."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable


def chosen(doc: str | None, cases: Iterable[str]) -> tuple[int, list[str]]:
    """--rounds N and --cases A,B (default: every case, in order); an unknown case ends the
    benchmark, named, with the known ones."""
    known = list(cases)
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", default=",".join(known))
    args = parser.parse_args()
    picked = args.cases.split(",")
    for case in picked:
        if case not in known:
            sys.exit(f"bench: no case {case!r}; cases: {', '.join(known)}")
    return args.rounds, picked
