"""The exception tree drawn in ``trio_grains/_exceptions.py`` is the package's real one.

The drawing is parsed: every exception class the package defines is in it, every class in
it exists with the drawn bases, the public ones are exported (and cross the wire as
themselves under their public name), the internal ones are neither exported nor rebuilt
from a forged reply.
"""

from __future__ import annotations

import builtins
import importlib
import pkgutil
import re
import sys

import attrs
import msgpack
import pytest

import trio_grains
from trio_grains import _exceptions
from trio_grains._serialization import Codec, make_converter


@attrs.frozen
class Drawn:
    name: str
    #: the drawn parent, then the extra bases written in parentheses (empty for a root)
    bases: tuple[str, ...]
    internal: bool


_BRANCH = re.compile(r"^(?P<indent>(?:[│ ]   )*)[├└]── (?P<rest>.*)$")
_NODE = re.compile(r"^(?P<name>\w+)(?: \((?P<extra>[\w, ]+)\))?(?:\s{2,}(?P<text>.*))?$")


def drawn_tree(doc: str) -> list[Drawn]:
    """Every class drawn in the literal blocks (after ``::``) of *doc*, in order."""
    nodes: list[Drawn] = []
    lines = doc.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].rstrip().endswith("::"):
            i += 1
            continue
        i += 1
        stack: list[str] = []  # the names on the path from the root to the current node
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("    ")):
            line = lines[i][4:].rstrip()
            i += 1
            branch = _BRANCH.match(line)
            if not branch and not line[:1].isalpha():
                continue  # a blank line, or a description's continuation
            depth = len(branch["indent"]) // 4 + 1 if branch else 0  # 0: a root
            node = _NODE.match(branch["rest"] if branch else line)
            assert node, f"cannot read the tree line {line!r}"
            del stack[depth:]
            assert len(stack) == depth, f"{line!r} is indented below no parent"
            extra = tuple(b.strip() for b in node["extra"].split(",")) if node["extra"] else ()
            parent = (stack[-1],) if stack else ()
            text = node["text"] or ""
            nodes.append(Drawn(node["name"], parent + extra, text.startswith("internal")))
            stack.append(node["name"])
    return nodes


def package_exceptions() -> dict[str, set[type[BaseException]]]:
    """Every exception class defined in trio_grains, by class name, as found in the
    namespaces of all its modules."""
    names = ["trio_grains"]
    for info in pkgutil.walk_packages(trio_grains.__path__, "trio_grains."):
        importlib.import_module(info.name)
        names.append(info.name)
    found: dict[str, set[type[BaseException]]] = {}
    for module_name in names:
        for value in vars(sys.modules[module_name]).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__.split(".")[0] == "trio_grains"
            ):
                found.setdefault(value.__name__, set()).add(value)
    return found


TREE = drawn_tree(_exceptions.__doc__ or "")
DRAWN = {node.name: node for node in TREE}
DEFINED = package_exceptions()


def resolve(name: str) -> type[BaseException]:
    if name in DEFINED:
        (cls,) = DEFINED[name]
        return cls
    cls = vars(builtins)[name]
    assert isinstance(cls, type)
    assert issubclass(cls, BaseException)
    return cls


def test_the_parser_reads_the_drawing() -> None:
    assert DRAWN["GrainsError"].bases == ()
    assert DRAWN["GrainCallTimeoutError"].bases == ("GrainCallError", "TimeoutError")
    assert DRAWN["InconsistentStateError"].bases == ("StorageError",)
    assert DRAWN["InternalError"].bases == ("GrainsError",)  # back to depth 1 after a subtree
    assert DRAWN["RerouteError"].internal
    assert not DRAWN["GrainsError"].internal
    assert len(TREE) == len(DRAWN), "a class is drawn twice"


def test_every_exception_class_of_the_package_is_drawn() -> None:
    assert DEFINED["GrainsError"] == {trio_grains.GrainsError}  # the walk found the package
    assert sorted(set(DEFINED) - set(DRAWN)) == []


def test_exception_class_names_are_unique_in_the_package() -> None:
    assert {name: classes for name, classes in DEFINED.items() if len(classes) > 1} == {}


@pytest.mark.parametrize("node", TREE, ids=lambda node: node.name)
def test_every_drawn_class_exists_with_the_drawn_bases(node: Drawn) -> None:
    cls = resolve(node.name)
    if node.bases:
        assert tuple(base.__name__ for base in cls.__bases__) == node.bases
        for base, name in zip(cls.__bases__, node.bases, strict=True):
            assert base is resolve(name)


def test_every_error_of_ours_but_internal_helpers_shares_the_root() -> None:
    outside = {n.name for n in TREE if not issubclass(resolve(n.name), trio_grains.GrainsError)}
    roots = {n.name for n in TREE if not n.bases}
    assert outside - roots == {"WrongValue"}  # a TypeError on purpose, inside cattrs


PUBLIC = [node for node in TREE if not node.internal and node.name in DEFINED]
INTERNAL = [node for node in TREE if node.internal]


@pytest.mark.parametrize("node", PUBLIC, ids=lambda node: node.name)
def test_public_exceptions_are_exported_under_their_public_name(node: Drawn) -> None:
    cls = resolve(node.name)
    assert node.name in trio_grains.__all__
    assert getattr(trio_grains, node.name) is cls
    assert cls.__module__ == "trio_grains"  # shown so in tracebacks, and named so on the wire
    assert cls.__doc__


@pytest.mark.parametrize("node", INTERNAL, ids=lambda node: node.name)
def test_internal_exceptions_are_not_exported(node: Drawn) -> None:
    assert node.name not in trio_grains.__all__
    assert not hasattr(trio_grains, node.name)
    assert resolve(node.name).__doc__


@pytest.mark.parametrize(
    "node",
    [node for node in PUBLIC if node.name != "RemoteGrainError"],  # see test_serialization.py
    ids=lambda node: node.name,
)
def test_public_exceptions_cross_the_wire_as_themselves(node: Drawn) -> None:
    cls = resolve(node.name)
    codec = Codec(make_converter())
    assert issubclass(cls, Exception)
    exc = cls("what went wrong")
    back = codec.decode_exception(codec.encode_exception(exc))
    assert type(back) is cls
    assert str(back) == "what went wrong"


@pytest.mark.parametrize("cls", [_exceptions.ActivationRaceLostError, _exceptions.RerouteError])
def test_control_flow_exceptions_never_cross_the_wire(cls: type[Exception]) -> None:
    """Wherever the class can be named from, a forged reply naming it is not rebuilt: the
    runtime would act on it (forward the call, locate the grain again)."""
    codec = Codec(make_converter())
    where = sorted(
        name
        for name, module in sys.modules.items()
        if name.split(".")[0] == "trio_grains" and vars(module).get(cls.__name__) is cls
    )
    assert "trio_grains._exceptions" in where
    assert len(where) > 1
    exc = cls("orders/1", "s2") if cls is _exceptions.ActivationRaceLostError else cls("s2")
    assert type(codec.decode_exception(codec.encode_exception(exc))) is trio_grains.RemoteGrainError
    for module_name in where:
        fields = msgpack.unpackb(codec.encode_exception(exc))
        forged = msgpack.packb({**fields, "type": f"{module_name}:{cls.__qualname__}"})
        rebuilt = codec.decode_exception(forged)
        assert type(rebuilt) is trio_grains.RemoteGrainError, module_name
        assert rebuilt.type_name == f"{module_name}.{cls.__qualname__}"


def test_moved_exceptions_stay_importable_where_they_were() -> None:
    from trio_grains._cluster import messenger, transport

    assert transport.TransportError is trio_grains.TransportError
    assert transport.TransportClosedError is trio_grains.TransportClosedError
    assert transport.MessageTooLargeError is trio_grains.MessageTooLargeError
    assert messenger.RerouteError is _exceptions.RerouteError
    for name in ("MessageTooLargeError", "TransportClosedError", "TransportError"):
        assert name in transport.__all__
    assert "RerouteError" in messenger.__all__


def test_the_design_page_draws_the_same_tree() -> None:
    import pathlib

    import trio_grains._exceptions as module

    doc = module.__doc__ or ""
    drawn = doc[doc.index("    GrainsError\n") : doc.index("\nThe *internal* ones")]
    tree = "\n".join(line[4:] for line in drawn.rstrip().split("\n"))
    page = (pathlib.Path(__file__).parent.parent / "docs" / "design.md").read_text()
    assert "```text\n" + tree + "\n```" in page, (
        "docs/design.md's exception tree differs from trio_grains/_exceptions.py's: copy it"
    )
