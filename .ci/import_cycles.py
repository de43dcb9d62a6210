#!/usr/bin/env python3
"""Fails when two modules of src/ import each other, directly or through others.

Edges are the `crate::…` and `super::…` paths a module's code names (comments and its
`#[cfg(test)] mod tests` left out), resolved to the longest module they name; a module's
edges to its own ancestors and descendants are not counted (a child using what its parent
defines is how Rust modules nest). Prints each circle with its edges; exit status 1 if any.
"""
import collections
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def modules():
    found = {}
    for directory, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(directory, name)
            parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            found["::".join(parts)] = path
    return found


def edges(found):
    out = set()
    for module, path in found.items():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
        text = re.sub(r"(^|\s)//[^\n]*", r"\1", text)
        here = module.split("::") if module else []
        for m in re.finditer(r"\b(crate|super)((?:::\w+)+)", text):
            segments = m.group(2).strip(":").split("::")
            full = segments if m.group(1) == "crate" else here[:-1] + segments
            for i in range(len(full), 0, -1):
                target = "::".join(full[:i])
                if target in found:
                    if target != module:
                        out.add((module, target))
                    break
    related = lambda a, b: a == "" or b.startswith(a + "::")
    return [(a, b) for a, b in out if not related(a, b) and not related(b, a)]


def circles(graph):
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def main():
    graph = collections.defaultdict(set)
    for a, b in edges(modules()):
        graph[a].add(b)
    found = circles(graph)
    for component in found:
        print("import circle:", ", ".join(component))
        for a in component:
            for b in sorted(graph[a]):
                if b in component:
                    print(f"    {a} -> {b}")
    if found:
        return 1
    print("no import circles between the modules of src/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
