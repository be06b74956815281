"""The layer boundary inside trio-grains-nats, checked on the source.

``trio_grains_nats.client`` is a NATS client for any Trio program: none of its modules
imports trio-grains (the core) or the providers beside it (``storage``, ``streams``,
``clustering``, ...), not even under ``TYPE_CHECKING`` or inside a function. The providers
import the client only through its public face (``trio_grains_nats.client``), never its
private modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import trio_grains_nats

PACKAGE = Path(trio_grains_nats.__file__).parent
CLIENT = PACKAGE / "client"


def _imports(path: Path, package: str) -> Iterator[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in *path*, a module of *package*;
    for ``from x import y`` both ``x`` and ``x.y`` (``y`` may be a submodule)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def _is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_client_imports_neither_the_core_nor_the_providers() -> None:
    files = sorted(CLIENT.rglob("*.py"))
    assert len(files) > 5, files
    wrong = []
    for path in files:
        package = "trio_grains_nats." + ".".join(path.relative_to(PACKAGE).parent.parts)
        for line, module in _imports(path, package):
            upward = _is_under(module, "trio_grains") or (
                _is_under(module, "trio_grains_nats")
                and not _is_under(module, "trio_grains_nats.client")
            )
            if upward:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_providers_use_only_the_clients_public_names() -> None:
    wrong = []
    for path in sorted(PACKAGE.glob("*.py")):
        for line, module in _imports(path, "trio_grains_nats"):
            if _is_under(module, "trio_grains_nats.client") and any(
                part.startswith("_") for part in module.split(".")[2:]
            ):
                wrong.append(f"{path.name}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_importing_the_client_does_not_import_trio_grains() -> None:
    code = (
        "import sys, trio_grains_nats.client\n"
        "loaded = sorted(m for m in sys.modules"
        " if m == 'trio_grains' or m.startswith('trio_grains.'))\n"
        "print(' '.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "", f"importing trio_grains_nats.client loaded {out.strip()}"
