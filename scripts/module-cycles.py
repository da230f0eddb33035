#!/usr/bin/env python3
"""Fails when a crate's modules import each other in a circle (STYLE.md: "modules that import
each other in a circle — put the shared type where both can reach it").

A module's imports are the `crate::NAME` paths in its file (and `super::` in a submodule, which
is its parent), outside `#[cfg(test)]` code; submodules count as their top-level module.
Usage: python3 scripts/module-cycles.py [CRATE_DIR ...]   (default: every workspace crate)
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATES = ["engine", "raft", "shard", "sim", "proto", "client", "check", "services/common", "services/etl",
          "services/consistency", "services/gateway", "services/inventory",
          "services/notification", "services/payment", "services/saga", "services/strata"]


def top_module(src: pathlib.Path, path: pathlib.Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return parts[0]


def production_text(path: pathlib.Path) -> str:
    """The file before its tests, without comments (doc links are not imports)."""
    text = path.read_text()
    cut = text.find("#[cfg(test)]")
    text = text if cut < 0 else text[:cut]
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def graph(crate: pathlib.Path) -> dict:
    src = crate / "src"
    edges = {}
    for path in src.rglob("*.rs"):
        if path.parent == src and path.stem in ("lib", "main"):
            continue
        if "bin" in path.relative_to(src).parts:
            continue
        me = top_module(src, path)
        names = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", production_text(path)))
        edges.setdefault(me, set()).update(n for n in names if n != me)
    return edges


def cycles(edges: dict) -> list:
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def main() -> int:
    crates = sys.argv[1:] or CRATES
    bad = 0
    for name in crates:
        edges = graph(ROOT / name)
        for cycle in cycles(edges):
            print(f"{name}: module cycle: {' -> '.join(cycle)}")
            bad += 1
    if bad == 0:
        print(f"module cycles: none in {len(crates)} crates")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
