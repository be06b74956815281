"""The core's layers point one way, its import-time graph has no cycle, and no module
reads another module's private members.

The layers, bottom to top (``docs/design.md`` draws them): a module may import modules of
its own layer or below. An import that points up (``TYPE_CHECKING`` and function-level
imports included) must be in :data:`UPWARD_ALLOWED` with its reason.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "trio_grains"

#: module (dotted, without ``trio_grains.``; a package prefix ends with ``.``) -> layer
LAYERS: dict[str, int] = {
    # 0: values with no trio-grains imports
    "_exceptions": 0,
    "_logging": 0,
    "_strict": 0,
    "_rows": 0,
    "_methods": 0,
    # 1: identity and configuration
    "_ids": 1,
    "_config": 1,
    # 2: registries and placement strategies
    "_registry": 2,
    "_placement": 2,
    # 3: grains, references, calls in flight, timers, persistent state, serialization
    "_calls": 3,
    "_timers": 3,
    "_storage": 3,
    "_grain": 3,
    "_reference": 3,
    "_serialization": 3,
    # 4: instrumentation of method tables and storage
    "_tracing": 4,
    "_metrics": 4,
    # 5: one activation
    "_activation": 5,
    # 6: the activation table and the call path
    "_catalog": 6,
    "_dispatch": 6,
    # 7: the optional layers, side by side
    "_reminders": 7,
    "_streams": 7,
    "_streams.": 7,
    "_cluster": 7,
    "_cluster.": 7,
    # 8: built-in providers and the plugin machinery that loads them
    "_builtin": 8,
    "_builtin.": 8,
    "_plugins": 8,
    "hookspecs": 8,
    # 9: composition roots (and a silo's life as a cluster member, which is part of it)
    "_silo": 9,
    "_client": 9,
    "_cluster.member": 9,
    # 10: public faces
    "": 10,
    "cli": 10,
    "testing.": 10,
    "testing": 10,
}

#: (importer, imported) pairs that point up, each with its reason. Only type names.
UPWARD_ALLOWED: dict[tuple[str, str], str] = {
    ("_grain", "_reminders"): "Grain's public reminder methods name GrainReminder and the "
    "service in their signatures; at run time a grain reaches it through GrainServices",
    ("_grain", "_streams.provider"): "Grain.get_stream_provider returns a StreamProvider; "
    "at run time a grain reaches it through GrainServices",
    ("_reference", "_activation"): "the type of GrainReference._act, the dispatcher's cache "
    "of the activation a reference last called",
    ("_registry", "_silo"): "ServiceContext hands a silo service the Silo it runs in",
    ("_tracing", "_streams.model"): "stream_attributes takes a StreamId",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer_of(module: str) -> int:
    if module in LAYERS:
        return LAYERS[module]
    prefixes = [p for p in LAYERS if p.endswith(".") and module.startswith(p)]
    if not prefixes:
        raise AssertionError(f"trio_grains.{module} has no layer: add it to LAYERS")
    return LAYERS[max(prefixes, key=len)]


def _resolve(importer: str, is_package: bool, level: int, name: str | None) -> str:
    base = importer.split(".") if importer else []
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([name] if name else [])])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(module: str) -> Iterator[tuple[str, bool]]:
    """(imported core module, executed at import time) for every import in *module*."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"

    def targets(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("trio_grains."):
                    yield alias.name.removeprefix("trio_grains.")
            return
        if node.level:
            base = _resolve(module, is_package, node.level, node.module)
        elif node.module is not None and (
            node.module == "trio_grains" or node.module.startswith("trio_grains.")
        ):
            base = node.module.removeprefix("trio_grains").removeprefix(".")
        else:
            return
        for alias in node.names:
            sub = f"{base}.{alias.name}" if base else alias.name
            yield sub if sub in MODULES else base

    def walk(nodes: list[ast.stmt], at_import_time: bool) -> Iterator[tuple[str, bool]]:
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in targets(node):
                    yield target, at_import_time
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from walk(node.body, False)
                yield from walk(node.orelse, at_import_time)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield from walk(node.body, False)
            elif isinstance(node, ast.ClassDef):
                yield from walk(node.body, at_import_time)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    inner = getattr(node, field, None)
                    if isinstance(inner, list):
                        yield from walk(
                            [n for n in inner if isinstance(n, ast.stmt | ast.ExceptHandler)],
                            at_import_time,
                        )

    yield from walk(tree.body, True)


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_no_import_points_up() -> None:
    upward = []
    for module in MODULES:
        for target, _ in imports(module):
            if target == module or target not in MODULES:
                continue
            if layer_of(target) > layer_of(module) and (module, target) not in UPWARD_ALLOWED:
                upward.append(
                    f"trio_grains.{module} (layer {layer_of(module)}) imports "
                    f"trio_grains.{target} (layer {layer_of(target)})"
                )
    assert upward == [], (
        "imports that point up: hand the lower module a small protocol or callable "
        "instead (or, for a type name only, justify it in UPWARD_ALLOWED):\n  "
        + "\n  ".join(upward)
    )


def test_every_allowed_upward_import_is_still_needed() -> None:
    found = {(m, t) for m in MODULES for t, _ in imports(m)}
    assert set(UPWARD_ALLOWED) <= found, set(UPWARD_ALLOWED) - found


def test_the_import_time_graph_has_no_cycle() -> None:
    graph = {
        module: sorted({t for t, now in imports(module) if now and t in MODULES and t != module})
        for module in MODULES
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in graph[module]:
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module)


# --- private members --------------------------------------------------------------------

#: private names that modules other than their own may read, and why
SHARED_PRIVATE: dict[str, str] = {
    "_act": "GrainReference slot (underscored so no grain method can shadow it): the "
    "dispatcher's cache of the reference's activation",
    "_grain_id": "GrainReference slot (underscored so no grain method can shadow it); the "
    "runtime reads it instead of the grain_id property on the hot path",
    "_info": "GrainReference class attribute (underscored so no grain method can shadow it)",
    "_activation": "Grain attribute (underscored so no grain attribute can shadow it): the "
    "grain's GrainContext, set by its activation, read by its state descriptors",
}


def _private_definitions(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                names.add(node.attr)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    for target in item.targets:
                        if isinstance(target, ast.Name):
                            names.add(target.id)
                        if isinstance(target, ast.Name) and target.id == "__slots__":
                            for elt in ast.walk(item.value):
                                if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
                                    names.add(elt.value)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def private_reads(trees: dict[str, ast.AST]) -> list[str]:
    """``x._name`` reads in each module of a name that only other modules define."""
    defined = {m: _private_definitions(t) for m, t in trees.items()}
    everywhere: dict[str, set[str]] = {}
    for module, names in defined.items():
        for name in names:
            everywhere.setdefault(name, set()).add(module)
    reads = []
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            name = node.attr
            if name.startswith("__") or name in defined[module] or name in SHARED_PRIVATE:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            owners = everywhere.get(name)
            if owners:
                reads.append(
                    f"trio_grains.{module} line {node.lineno}: {ast.unparse(node)} "
                    f"(defined in {', '.join(sorted(owners))})"
                )
    return reads


def test_the_private_read_finder_sees_one() -> None:
    owner = ast.parse("class A:\n    def __init__(self):\n        self._secret = 1\n")
    reader = ast.parse("def peek(a):\n    return a._secret, a.public\n")
    own = ast.parse("class B:\n    _mine = 0\ndef f(b):\n    return b._mine\n")
    assert private_reads({"a": owner, "r": reader, "b": own}) == [
        "trio_grains.r line 2: a._secret (defined in a)"
    ]


def test_no_module_reads_another_modules_private_members() -> None:
    trees = {m: ast.parse(p.read_text(encoding="utf-8")) for m, p in MODULES.items()}
    reads = private_reads(trees)
    assert reads == [], (
        "private members read from another module: make what is needed public API "
        "(or, if it truly must stay private, say why in SHARED_PRIVATE):\n  " + "\n  ".join(reads)
    )


def test_no_module_imports_another_modules_private_names() -> None:
    imported = []
    for module, path in MODULES.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                source = _resolve(module, is_package, node.level, node.module)
            elif node.module is not None and node.module.startswith("trio_grains."):
                source = node.module.removeprefix("trio_grains.")
            else:
                continue
            for alias in node.names:
                if (
                    alias.name.startswith("_")
                    and not alias.name.startswith("__")
                    and f"{source}.{alias.name}" not in MODULES
                ):
                    imported.append(f"trio_grains.{module}: {alias.name} from {source}")
    assert imported == [], (
        "private names imported from another module: make them public there:\n  "
        + "\n  ".join(imported)
    )


def test_imports_are_found_wherever_they_are_written() -> None:
    found = dict(imports("_reference"))
    assert found["_activation"] is False  # under TYPE_CHECKING
    assert found["_grain"] is True


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m))
def test_every_module_says_what_it_holds(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    assert ast.get_docstring(tree), f"trio_grains.{module} has no module docstring"
