#!/usr/bin/env python3
"""The import graph of the workspace's crates, file by file, and its circles.

    scripts/import_graph.py            print each crate's files, arrows and circles
    scripts/import_graph.py --check    the same, exit 1 if any crate has a circle
    scripts/import_graph.py --dot      the arrows as Graphviz (one cluster per crate)

An arrow A -> B means file A names an item of file B through a `crate::`, `super::` or
`self::` path (in a `use` or in code; comments and doc comments are skipped). A path through a
re-export (`crate::Error`, re-exported by lib.rs from error.rs) is followed to the file that
defines the item, so the arrow points at error.rs, not lib.rs; `mod x;` declarations are not
arrows. Test modules (`#[cfg(test)] mod tests { ... }` to the end of a file) are skipped: a test
may reach anywhere. Crates are the workspace members; arrows between crates are checked by Cargo
(a dependency cycle does not build).

Written by hand because no maintained tool reads Rust module imports without compiling the crate
(cargo-modules needs rust-analyzer's full analysis and nightly-specific flags); this one needs
only Python.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = {
    "cudagraph-macros": "macros/src",
    "cudagraph-runtime": "runtime/src",
    "cudagraph-kernels": "kernels/src",
    "cudagraph-models": "models/src",
    "cudagraph": "src",
}

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
# A re-exported item of another crate.
EXTERNAL = ("<external>",)


def module_of(rel):
    """`a/b.rs` -> ('a','b'); `a/mod.rs` -> ('a',); `lib.rs` -> ()."""
    parts = rel[:-3].split("/")
    if parts[-1] in ("lib", "mod", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_source(text):
    """The file without comments, string literals and its trailing test module."""
    m = re.search(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", text)
    if m:
        text = text[: m.start()]
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def expand_use(tree):
    """`a::{b, c::{d, e as f}}` -> [['a','b'], ['a','c','d'], ['a','c','e']]."""
    tree = tree.strip()
    out = []
    depth, start, i = 0, 0, 0
    # split at top-level commas
    items = []
    for i, ch in enumerate(tree):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(tree[start:i])
            start = i + 1
    items.append(tree[start:])
    for item in items:
        item = item.strip()
        if not item:
            continue
        brace = item.find("{")
        if brace >= 0 and item.endswith("}"):
            prefix = [p for p in item[:brace].split("::") if p.strip()]
            prefix = [p.strip() for p in prefix]
            for sub in expand_use(item[brace + 1 : -1]):
                out.append(prefix + sub)
        else:
            item = re.sub(r"\s+as\s+" + IDENT + r"$", "", item)
            out.append([p.strip() for p in item.split("::") if p.strip()])
    return out


class Crate:
    def __init__(self, name, src):
        self.name = name
        self.src = os.path.join(ROOT, src)
        self.files = {}  # module tuple -> rel path
        self.text = {}
        for dirpath, _, names in os.walk(self.src):
            for n in names:
                if n.endswith(".rs"):
                    rel = os.path.relpath(os.path.join(dirpath, n), self.src)
                    mod = module_of(rel)
                    self.files[mod] = rel
                    with open(os.path.join(dirpath, n), encoding="utf-8") as f:
                        self.text[mod] = strip_source(f.read())
        # module -> {name: absolute path} of its `pub use` / `use` re-exports
        self.reexports = {m: {} for m in self.files}
        self.uses = {m: [] for m in self.files}
        for mod, text in self.text.items():
            aliases = {}
            for m in re.finditer(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", text):
                for path in expand_use(m.group(2)):
                    if path and path[-1] == "*":
                        # a glob (`use super::*` in an inline module or a test): names no file
                        continue
                    absolute = self.absolute(mod, path)
                    if absolute is None:
                        # another crate's item, re-exported: no arrow inside this crate
                        if path and path[-1] != "self":
                            self.reexports[mod][path[-1]] = EXTERNAL
                        continue
                    if path and path[-1] not in ("self", "*"):
                        self.reexports[mod][path[-1]] = absolute
                    if tuple(absolute) in self.files and not m.group(1):
                        # a module brought into scope (`use crate::ffi;`): its items are named
                        # as `ffi::item` below, and those are the arrows
                        aliases[path[-1] if path[-1] != "self" else absolute[-1]] = absolute
                        continue
                    self.uses[mod].append(absolute)
            code = re.sub(r"\buse\s+[^;]+;", "", text)
            for alias, target in aliases.items():
                for m in re.finditer(r"(?<![:\w])" + alias + r"((?:::" + IDENT + r")+)", code):
                    segs = [s for s in m.group(1).split("::") if s]
                    self.uses[mod].append(tuple(target) + tuple(segs))
            # inline paths in code (outside `use` statements): crate::a::b, super::x, self::y
            code = re.sub(r"\buse\s+[^;]+;", "", text)
            for m in re.finditer(r"\b(crate|super|self)((?:::" + IDENT + r")+)", code):
                segs = [m.group(1)] + [s for s in m.group(2).split("::") if s]
                absolute = self.absolute(mod, segs)
                if absolute is not None:
                    self.uses[mod].append(absolute)

    def absolute(self, mod, path):
        """A `use` path as a path from the crate root, or None for another crate's."""
        if not path:
            return None
        head = path[0]
        if head == "crate":
            return tuple(path[1:])
        if head == "super":
            base = list(mod)
            rest = path
            while rest and rest[0] == "super":
                base = base[:-1]
                rest = rest[1:]
            return tuple(base) + tuple(rest)
        if head == "self":
            return tuple(mod) + tuple(path[1:])
        # a path relative to this module: a child module or an item of a sibling `use`
        if tuple(mod) + (head,) in self.files:
            return tuple(mod) + tuple(path)
        return None

    def resolve(self, path, seen=None):
        """The file (module tuple) that defines what `path` names."""
        seen = seen or set()
        if path in seen:
            return None
        seen.add(path)
        mod = ()
        for i, seg in enumerate(path):
            if mod + (seg,) in self.files:
                mod = mod + (seg,)
                continue
            target = self.reexports.get(mod, {}).get(seg)
            if target == EXTERNAL:
                return None
            if target is not None and target != path:
                deeper = self.resolve(tuple(target) + tuple(path[i + 1 :]), seen)
                if deeper is not None:
                    return deeper
            return mod
        return mod

    def arrows(self):
        edges = {m: set() for m in self.files}
        for mod, paths in self.uses.items():
            for p in paths:
                target = self.resolve(tuple(p))
                if target is None or target == mod:
                    continue
                # a module naming its own descendant's item through itself is no arrow back
                edges[mod].add(target)
        return edges


def circles(edges):
    """Strongly connected components of more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def main():
    check = "--check" in sys.argv
    dot = "--dot" in sys.argv
    bad = 0
    if dot:
        print("digraph imports {")
    for name, src in CRATES.items():
        if not os.path.isdir(os.path.join(ROOT, src)):
            continue
        crate = Crate(name, src)
        edges = crate.arrows()
        cycles = circles(edges)
        n_arrows = sum(len(v) for v in edges.values())
        label = lambda m: crate.files[m]
        if dot:
            print(f'  subgraph "cluster_{name}" {{ label="{name}";')
            for a, bs in sorted(edges.items()):
                for b in sorted(bs):
                    print(f'    "{name}/{label(a)}" -> "{name}/{label(b)}";')
            print("  }")
            continue
        print(f"{name}: {len(crate.files)} files, {n_arrows} arrows, {len(cycles)} circle(s)")
        for comp in cycles:
            bad += 1
            files = sorted(label(m) for m in comp)
            print("  circle: " + " <-> ".join(files))
            for a in comp:
                for b in sorted(edges[a]):
                    if b in comp:
                        print(f"    {label(a)} -> {label(b)}")
    if dot:
        print("}")
    if check and bad:
        print(f"{bad} circle(s) in the import graph", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
