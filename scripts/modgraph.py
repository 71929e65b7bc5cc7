#!/usr/bin/env python3
"""Prints the module graph of the workspace's crates and fails on any circle (and on a file of
the agent or the coordinator over 800 lines).

    scripts/modgraph.py              every crate: the edges between files, then any circle
    scripts/modgraph.py agent        one crate (its folder name)
    scripts/modgraph.py --quiet      only circles (the test suite runs this)

A file's module is its path under src/ (`daemon/session.rs` is `daemon::session`, a `mod.rs`
is its folder). An edge A -> B means A names an item of B through `crate::`, `super::` or
`self::`, in a `use` or inline. `mod` declarations are not edges, and neither is a file's own
test module naming its parent through `super::`. A circle is a set of files that reach each
other; the rule is that there is none.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Crates whose files stay short enough to read whole.
MAX_LINES = {"agent": 800, "coordinator": 800}
CRATES = ["core", "proto", "telemetry", "agent", "coordinator", "cli", "testkit", "bench", "chaos-tests"]


def modules(src):
    """Maps module path tuples to file paths."""
    found = {}
    for dirpath, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), src)
            parts = rel[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                parts = []
            if parts and parts[0] == "bin":
                continue
            found[tuple(parts)] = os.path.join(src, rel)
    return found


def strip(text):
    """Drops comments, strings and char literals, so that prose naming a path is no edge."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")) and re.match(r'r#*"', text[i:]):
            hashes = re.match(r"r(#*)", text[i:]).group(1)
            close = '"' + hashes
            j = text.find(close, i + 1 + len(hashes) + 1)
            i = n if j < 0 else j + len(close)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'":
            if i + 1 < n and text[i + 1] == "\\":
                j = text.find("'", i + 2)
                i = n if j < 0 else j + 1
            elif i + 2 < n and text[i + 2] == "'":
                i += 3
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def without_tests(text):
    """Drops a trailing `#[cfg(test)] mod tests { ... }`: a file's tests are part of it."""
    m = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
    return text[: m.start()] if m else text


def expand_use(tree):
    """Expands a use tree such as `crate::{a::B, c::{self, D}}` into paths."""
    tree = re.sub(r"\s+", "", tree)
    out = []

    def walk(prefix, s):
        depth, start, parts = 0, 0, []
        for i, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(s[start:i])
                start = i + 1
        parts.append(s[start:])
        for part in parts:
            if not part:
                continue
            brace = part.find("{")
            if brace >= 0 and part.endswith("}"):
                walk(prefix + part[:brace], part[brace + 1 : -1])
            else:
                out.append(prefix + part.split(" as ")[0])

    walk("", tree)
    return out


def resolve(path, here, mods, reexports=None):
    """The module (tuple) a path names, or None when it is outside the crate. A name that a
    module re-exports (`pub use child::Item`) resolves to the module that defines it."""
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    elif segs[0] in ("super", "self"):
        base = list(here)
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    else:
        return None
    best = tuple(base)
    for i in range(len(segs)):
        cand = tuple(base + segs[: i + 1])
        if cand in mods:
            best = cand
        else:
            break
    rest = segs[len(best) - len(base):] if len(best) >= len(base) else []
    seen = set()
    while reexports and rest and (best, rest[0]) in reexports and (best, rest[0]) not in seen:
        seen.add((best, rest[0]))
        best = reexports[(best, rest[0])]
        rest = rest[1:]
    return best


def edges_of(crate):
    src = os.path.join(ROOT, crate, "src")
    if not os.path.isdir(src):
        return {}, {}
    mods = modules(src)
    edges = {m: set() for m in mods}
    texts = {}
    for mod, path in mods.items():
        with open(path, encoding="utf-8") as f:
            texts[mod] = without_tests(strip(f.read()))
    reexports = {}
    for mod, text in texts.items():
        children = {x[-1] for x in mods if x and x[:-1] == mod}
        for m in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]*);", text):
            for p in expand_use(m.group(1)):
                head, last = p.split("::")[0], p.split("::")[-1]
                if head in children:
                    p = "self::" + p
                elif head not in ("crate", "super", "self"):
                    continue
                target = resolve(p, mod, mods)
                if target is not None and target != mod and last not in ("*", "self"):
                    reexports[(mod, last)] = target
    for mod, text in texts.items():
        paths = []
        children = {x[-1] for x in mods if x[:-1] == mod and x}
        for m in re.finditer(r"\buse\s+([^;]*);", text):
            for p in expand_use(m.group(1)):
                head = p.split("::")[0]
                if head in ("crate", "super", "self"):
                    paths.append(p)
                elif head in children:
                    paths.append("self::" + p)
        text = re.sub(r"\buse\s+[^;]*;", "", text)
        paths.extend(re.findall(r"\b(?:crate|super|self)(?:::\w+)+", text))
        for p in paths:
            target = resolve(p, mod, mods, reexports)
            if target is not None and target != mod and target in mods:
                edges[mod].add(target)
    return mods, edges


def circles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def name(mod):
    return "::".join(mod) if mod else "crate"


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quiet = "--quiet" in sys.argv
    crates = args or CRATES
    bad = 0
    for crate in crates:
        mods, edges = edges_of(crate)
        if not mods:
            if args:
                print(f"modgraph: {crate}/src not found; name a crate folder such as agent", file=sys.stderr)
                return 2
            continue
        if not quiet:
            print(f"# {crate}: {len(mods)} files")
            for m in sorted(edges):
                for t in sorted(edges[m]):
                    print(f"{crate}: {name(m)} -> {name(t)}")
        limit = MAX_LINES.get(crate)
        for mod, path in sorted(mods.items()):
            with open(path, encoding="utf-8") as f:
                n = sum(1 for _ in f)
            if limit and n > limit:
                bad += 1
                print(f"{crate}: {os.path.relpath(path, ROOT)} has {n} lines, over {limit}: split it by role")
        for comp in circles(edges):
            bad += 1
            print(f"{crate}: circle: {' <-> '.join(name(m) for m in comp)}")
    if bad:
        print(f"modgraph: {bad} problem(s); for a circle, move what both sides need into a module of its own")
        return 1
    if not quiet:
        print("modgraph: no circles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
