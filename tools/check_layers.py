#!/usr/bin/env python3
"""Checks pyscheduler's module dependency order (ARCHITECTURE.md, "Module dependency
order"): no import cycles, and no import that goes up the order written in LAYERS below.

What it reads: every src/**/*.rs. What it counts as an import: a path `crate::a::b`
(in `use` declarations, grouped `use crate::{a, b::c}` included, and anywhere in code),
and `super::x` / a bare `use x::...` of a child module inside src/cuda, src/tensor and
src/core. What it ignores: comments (line, block and doc comments, so intra-doc links
do not count), string and char literals, and `#[cfg(test)]` modules (test-only code may
reach anywhere). `mod x;` declarations are not imports, and neither are method calls:
only paths count (a file that calls a method of a type it never names does not depend
on the file that defines the method). `super::super::` paths are not followed (none in
this crate).

Nodes: top-level modules (src/X.rs or src/X/, lib.rs as `lib`; a `crate::Name` that is
not a module is lib.rs's re-export) and, inside src/core, src/tensor and src/cuda, each
file (`core/handler`, `tensor/mod`, ...). An import between two directories is an edge
between the two top-level modules; within one of those directories, between files.

Rules: the graph has no cycle, and an edge goes from a higher layer to a lower or the
same layer (same-layer imports are allowed; the cycle check orders them). One exception:
src/core's behaviour files (BEHAVIOUR below) are one `impl HandlerCore` split by concern;
they may import `core/handler`, and `core/handler` must not import them. And the
imports against the order that are known and not yet removed (KNOWN_BACK_EDGES, each
with why) are exempt from both checks; once one is gone the check fails until it is
deleted from the list, so the list only shrinks.

  python3 tools/check_layers.py [ROOT]     check ROOT (default: the repository)
  python3 tools/check_layers.py --self-test  prove it fails on a cycle and an upward edge

Exit status: 0 clean, 1 violations (each printed; a module missing from LAYERS is one),
2 usage.
"""
import os
import re
import shutil
import sys
import tempfile

# Lowest first. A module may import modules of its own line and of lines above it.
LAYERS = [
    ["error", "stats", "python_err"],  # leaves
    ["runtime"],  # the interpreter: start, adopt, attach, GIL release
    ["dlpack", "dtype"],  # DLPack's ABI structs and capsules (a capsule's drop may attach); dtypes
    ["core"],
    ["subinterp"],  # replicas
    ["shared"],  # process-wide state
    ["future", "handler"],  # the Rust API: futures, handlers
    ["cuda"],  # device tensors: driver <- tensor <- dlpack <- pyobject, stager
    ["tensor"],  # tensor handlers
    ["manager"],  # loads handlers
    ["ffi"],  # the C ABI
    ["lib", "scheduler"],  # the crate root and the old names, re-exported
]

# Inside the directories checked file by file, lowest first.
DIR_LAYERS = {
    "core": [
        ["clock", "options", "completion", "job", "raw"],
        ["item"],
        ["batch_exec", "pipeline"],
        ["timer"],
        ["pool"],
        ["handler"],
        ["admission", "formation", "driver", "prepare", "batch", "execute", "accounting", "drain"],
        ["mod"],
    ],
    "cuda": [
        ["driver"],
        ["tensor"],
        ["dlpack"],
        ["pyobject", "stager"],
        ["mod"],
    ],
    "tensor": [
        ["spec"],
        ["cuda", "no_cuda"],
        ["buffers"],
        ["view", "output"],
        ["job"],
        ["exec"],
        ["execute"],
        ["mod"],
    ],
}

# src/core's behaviour files: one `impl HandlerCore` split by concern (see the docstring).
BEHAVIOUR = {"admission", "formation", "driver", "prepare", "batch", "execute", "accounting", "drain"}

# Imports against the order that are known and not yet removed, each with why. Each is
# exempt from both checks; one no longer found fails the check (delete it here and in
# ARCHITECTURE.md).
KNOWN_BACK_EDGES = {}

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_code(text):
    """The text with comments, string and char literals blanked (newlines kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
            continue
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
            continue
        m = re.match(r'b?r(#*)"', text[i:i + 260]) if c in "rb" and (i == 0 or not re.match(r"\w", text[i - 1])) else None
        if m:
            end = text.find('"' + m.group(1), i + m.end())
            end = n if end < 0 else end + 1 + len(m.group(1))
            out.append('""' + "\n" * text.count("\n", i, end))
            i = end
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
            continue
        if c == "'":
            m = re.match(r"'(\\[^']{1,10}|[^\\'])'", text[i:i + 14])
            if m:
                out.append("' '")
                i += m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def strip_test_modules(code):
    """The code without `#[cfg(test)] mod x { ... }` blocks (newlines kept)."""
    pattern = re.compile(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+" + IDENT + r"\s*\{")
    while True:
        m = pattern.search(code)
        if not m:
            return code
        depth, j = 1, m.end()
        while j < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        code = code[:m.start()] + "\n" * code.count("\n", m.start(), j) + code[j:]


def group_heads(code, start):
    """First path segments of the items of a `{...}` group opening at code[start]."""
    depth, j, item, heads = 0, start, "", []
    while j < len(code):
        ch = code[j]
        if ch == "{":
            depth += 1
            if depth == 1:
                j += 1
                continue
        elif ch == "}":
            depth -= 1
            if depth == 0:
                break
        if depth == 1 and ch == ",":
            heads.append(item)
            item = ""
        elif depth >= 1:
            item += ch
        j += 1
    heads.append(item)
    return [re.match(r"\s*(" + IDENT + ")?", h).group(1) for h in heads if h.strip()]


def references(code):
    """(kind, first segment, second segment or None) for each crate::/super:: path."""
    refs = []
    for m in re.finditer(r"\b(crate|super)::(?:(" + IDENT + r")(?:::(" + IDENT + r"))?|\{)", code):
        kind = m.group(1)
        if m.group(2) is None:  # a group: crate::{a, b::c}
            for head in group_heads(code, m.end() - 1):
                if head and head != "self":
                    refs.append((kind, head, None))
            continue
        if m.group(2) == "super":
            continue  # super::super: not used in this crate; see the docstring
        refs.append((kind, m.group(2), m.group(3)))
    return refs


def node_of_file(src, path):
    """(top-level module, file node or None) of a source file."""
    rel = os.path.relpath(path, src).replace(os.sep, "/")
    parts = rel[:-3].split("/")
    top = parts[0]
    if top in DIR_LAYERS and len(parts) >= 2:
        return top, f"{top}/{parts[1]}"
    return top, None


def collect(root):
    """The edges {(from, to): [file:line, ...]} of the tree at root."""
    src = os.path.join(root, "src")
    tops = {f[:-3] for f in os.listdir(src) if f.endswith(".rs")}
    tops |= {d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d))}
    files_in = {d: {f[:-3] for f in os.listdir(os.path.join(src, d)) if f.endswith(".rs")}
                for d in DIR_LAYERS if os.path.isdir(os.path.join(src, d))}
    edges = {}
    for dirpath, _, files in os.walk(src):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            with open(path, encoding="utf-8") as fh:
                code = strip_test_modules(strip_code(fh.read()))
            top, here = node_of_file(src, path)
            rel = os.path.relpath(path, root)
            found = []
            for kind, first, second in references(code):
                if kind == "crate":
                    target_top = first if first in tops else "lib"
                    if target_top in files_in and target_top == top and here:
                        sub = second if second in files_in[top] else "mod"
                        found.append(f"{top}/{sub}")
                    else:
                        found.append(target_top)
                elif here and here.split("/")[1] != "mod":  # super:: from a file of a directory
                    found.append(f"{top}/{first}" if first in files_in[top] else f"{top}/mod")
            if here and here.endswith("/mod"):  # mod.rs: `use child::...` imports a child
                for m in re.finditer(r"\buse\s+(?:(?:pub|self)\s*::\s*)?(" + IDENT + r")::", code):
                    if m.group(1) in files_in[top]:
                        found.append(f"{top}/{m.group(1)}")
            source = here or top
            for target in found:
                frm = source if "/" in target else top
                if frm != target:
                    edges.setdefault((frm, target), []).append(rel)
    return edges


def rank_of(node):
    if "/" in node:
        d, f = node.split("/")
        layers = DIR_LAYERS[d]
    else:
        f, layers = node, LAYERS
    for i, line in enumerate(layers):
        if f in line:
            return i
    return None


def find_cycle(nodes, adj):
    """One cycle as a list of nodes, or None."""
    color, stack = {}, []

    def visit(u):
        color[u] = 1
        stack.append(u)
        for v in sorted(adj.get(u, ())):
            if color.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in color:
                c = visit(v)
                if c:
                    return c
        stack.pop()
        color[u] = 2
        return None

    for u in sorted(nodes):
        if u not in color:
            c = visit(u)
            if c:
                return c
    return None


def check(root, known=None):
    """The violations found in the tree at root, as printable lines."""
    known = KNOWN_BACK_EDGES if known is None else known
    edges = collect(root)
    problems, nodes, adj = [], set(), {}
    for edge in sorted(known):
        if edge in edges:
            del edges[edge]
        else:
            problems.append(f"stale exception: {edge[0]} -> {edge[1]} is gone; remove it from KNOWN_BACK_EDGES")
    for (frm, to), where in sorted(edges.items()):
        nodes |= {frm, to}
        adj.setdefault(frm, set()).add(to)
        for node in (frm, to):
            if rank_of(node) is None:
                problems.append(f"unknown module {node} (add it to LAYERS in {__file__})")
        rf, rt = rank_of(frm), rank_of(to)
        if rf is None or rt is None:
            continue
        same_dir = "/" in frm and "/" in to
        d = frm.split("/")[0]
        if d == "core" and same_dir:
            f, t = frm.split("/")[1], to.split("/")[1]
            if f in BEHAVIOUR and t == "handler":
                continue
            if f == "handler" and t in BEHAVIOUR:
                problems.append(f"upward import: {frm} -> {to} (handler must not import its behaviour files), in {', '.join(sorted(set(where)))}")
                continue
        if rt > rf:
            problems.append(f"upward import: {frm} -> {to}, in {', '.join(sorted(set(where)))}")
    # Every cycle's modules (one strongly connected component each), with one cycle
    # through them; the edges that close them are listed above as upward imports.
    for component in components(nodes, adj):
        inside = {u: adj.get(u, set()) & component for u in component}
        problems.append("cycle: " + " -> ".join(find_cycle(component, inside)))
    return problems


def components(nodes, adj):
    """The strongly connected components of more than one node (Kosaraju)."""
    order, seen = [], set()
    for root in sorted(nodes):
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(sorted(adj.get(root, ()))))]
        while stack:
            u, it = stack[-1]
            v = next(it, None)
            if v is None:
                order.append(u)
                stack.pop()
            elif v not in seen:
                seen.add(v)
                stack.append((v, iter(sorted(adj.get(v, ())))))
    radj = {}
    for u in nodes:
        for v in adj.get(u, ()):
            radj.setdefault(v, set()).add(u)
    found, assigned = [], set()
    for root in reversed(order):
        if root in assigned:
            continue
        component, todo = set(), [root]
        while todo:
            u = todo.pop()
            if u in assigned:
                continue
            assigned.add(u)
            component.add(u)
            todo.extend(radj.get(u, ()))
        if len(component) > 1:
            found.append(component)
    return sorted(found, key=sorted)


def self_test():
    """Runs the checker on synthetic trees: a clean one, a cycle, an upward import."""
    roots = []

    def tree(files):
        root = tempfile.mkdtemp(prefix="check_layers.")
        roots.append(root)
        for rel, text in files.items():
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
        return root

    clean = {
        "src/error.rs": "pub struct Error;\n",
        "src/core/mod.rs": "mod job;\nmod handler;\nmod admission;\npub(crate) use handler::HandlerCore;\n",
        "src/core/job.rs": "use crate::error::Error;\n",
        "src/core/handler.rs": "use super::job::Job;\n// use super::admission::x; (a comment)\n",
        "src/core/admission.rs": "use super::handler::HandlerCore;\n",
        "src/tensor/mod.rs": "use crate::core::HandlerCore;\n/// [`crate::ffi`] (a doc link)\n",
        "src/ffi/mod.rs": "use crate::tensor::x;\nuse crate::{core::y, error::Error};\n",
        "src/lib.rs": "mod core;\n#[cfg(test)]\nmod tests {\n    use crate::ffi::z;\n}\n",
    }
    assert check(tree(clean), {}) == [], check(tree(clean), {})
    cases = {
        "cross-module cycle": dict(clean, **{"src/core/job.rs": "fn f() { crate::tensor::g() }\n"}),
        "grouped upward use": dict(clean, **{"src/error.rs": "use crate::{dtype::D, ffi::x};\n"}),
        "handler imports a behaviour file": dict(clean, **{"src/core/handler.rs": "use super::admission::A;\n"}),
        "file cycle in core": dict(clean, **{"src/core/job.rs": "use super::handler::HandlerCore;\n"}),
        "tensor/mod <-> child": dict(clean, **{"src/tensor/execute.rs": "use super::TensorExec;\n",
                                              "src/tensor/mod.rs": "use execute::run;\n"}),
    }
    for name, files in cases.items():
        problems = check(tree(files), {})
        assert problems, f"self-test: the checker missed a {name}"
        print(f"self-test: {name}: caught ({problems[-1]})")
    assert any(p.startswith("cycle:") for p in check(tree(cases["cross-module cycle"]), {}))
    stale = check(tree(clean), {("core/job", "core/handler"): "gone"})
    assert stale and stale[0].startswith("stale exception"), stale
    print("self-test: a stale exception: caught")
    for root in roots:
        shutil.rmtree(root)
    print("self-test passed")


def main(argv):
    if argv[1:] == ["--self-test"]:
        self_test()
        return 0
    if len(argv) > 2 or (len(argv) == 2 and argv[1].startswith("-")):
        print(__doc__)
        return 2
    root = argv[1] if len(argv) == 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    problems = check(root)
    for p in problems:
        print(p)
    if problems:
        print(f"check_layers: {len(problems)} problem(s); the order is LAYERS in tools/check_layers.py")
        return 1
    print("check_layers: no cycle, no upward import")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
