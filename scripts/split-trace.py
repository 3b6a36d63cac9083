#!/usr/bin/env python3
"""Split an allocation trace (tests/data/traces/README.md format) by the path of the
memvisor heap its blocks take, to see where a heap's time and pages go:

    scripts/split-trace.py TRACE OUTDIR

writes OUTDIR/NAME-slab.trace, NAME-mid.trace and NAME-big.trace. A block (an id) goes to
the part of the largest size it ever has (allocation or realloc): slab up to 992 bytes,
mid below 65,536 bytes (the mid-size path's range on the 2026-12-07 main), big from there.
Every event of an id stays with it, in the original order; ids are renumbered densely from
0 in order of first allocation, as the format requires.
"""

import os
import sys

SLAB_MAX = 992
SOLO_MIN = 65536


def part(size):
    if size <= SLAB_MAX:
        return "slab"
    if size < SOLO_MIN:
        return "mid"
    return "big"


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: split-trace.py TRACE OUTDIR")
    path, outdir = sys.argv[1], sys.argv[2]
    with open(path) as f:
        lines = f.read().splitlines()
    header = [l for l in lines if l.startswith("#")]
    events = [l.split() for l in lines if l and not l.startswith("#")]
    largest = {}
    for e in events:
        if e[0] in ("a", "r"):
            largest[e[1]] = max(largest.get(e[1], 0), int(e[2]))
    name = os.path.basename(path).removesuffix(".trace")
    for p in ("slab", "mid", "big"):
        ids = {}
        out = [f"{h}" for h in header]
        out.append(f"# {p} part of {name} (scripts/split-trace.py)")
        for e in events:
            if part(largest.get(e[1], 0)) != p:
                continue
            if e[0] == "a":
                ids[e[1]] = len(ids)
            e = [e[0], str(ids[e[1]])] + e[2:]
            out.append(" ".join(e))
        with open(os.path.join(outdir, f"{name}-{p}.trace"), "w") as f:
            f.write("\n".join(out) + "\n")
        print(f"{name}-{p}.trace: {len(out) - len(header) - 1} events, {len(ids)} blocks")


if __name__ == "__main__":
    main()
