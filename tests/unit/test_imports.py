"""Packages import one another only through public names.

A ``_name`` module (or subpackage) of ``kernelsession.X`` is private to
``kernelsession.X``: the operator, the local cluster, the client's apps and the bench
may import only public modules of another package. Walks the imports of every source
file (ast, nothing is imported) and lists each crossing of that line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {
    "kernelsession.client": ROOT / "client/src/kernelsession/client",
    "kernelsession.operator": ROOT / "operator/src/kernelsession/operator",
    "kernelsession.localcluster": ROOT / "localcluster/src/kernelsession/localcluster",
    "bench": ROOT / "bench",
}


def module_name(package: str, path: Path) -> str:
    parts = path.relative_to(SOURCES[package]).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((package, *parts))


def imported(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of each import in ``path`` (module ``module``)."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from kernelsession.client import _kubernetes`
                yield node.lineno, f"{target}.{alias.name}"


def owner(target: str) -> str | None:
    """The package a module belongs to (``kernelsession.X`` or ``bench``), if ours."""
    parts = target.split(".")
    if parts[0] == "kernelsession" and len(parts) > 1:
        return ".".join(parts[:2])
    if parts[0] == "bench":
        return "bench"
    return None


def private_crossing(importer: str, target: str) -> bool:
    """Whether ``importer`` reaches into a private module of another package."""
    package = owner(target)
    if package is None or importer == package or importer.startswith(package + "."):
        return False
    inner = target[len(package) + 1 :].split(".") if target != package else []
    return any(part.startswith("_") and not part.startswith("__") for part in inner)


def crossings() -> list[str]:
    found = []
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            module = module_name(package, path)
            for line, target in imported(module, path):
                if private_crossing(module, target):
                    found.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return found


def test_no_package_imports_another_packages_private_modules() -> None:
    assert crossings() == []


@pytest.mark.parametrize(
    ("importer", "target", "crossing"),
    [
        ("kernelsession.operator.kube", "kernelsession.client._kubernetes", True),
        ("bench.client_bench", "kernelsession.client._websocket", True),
        ("kernelsession.operator.kube", "kernelsession.client.kubeapi", False),
        ("kernelsession.client.cli._open", "kernelsession.client._kubernetes", False),
        ("kernelsession.client.cli.main", "kernelsession.client._session", False),
        ("kernelsession.localcluster.x", "kernelsession.client.resources", False),
        ("kernelsession.operator.x", "kernelsession.client.__init__", False),
        ("kernelsession.operator.x", "asyncio._private", False),
    ],
)
def test_the_rule_itself(importer: str, target: str, crossing: bool) -> None:
    assert private_crossing(importer, target) is crossing


def test_relative_imports_resolve(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    init = pkg / "__init__.py"
    init.write_text("from ._a import x\nfrom . import _b\n")
    mod = pkg / "m.py"
    mod.write_text("from .._c import y\n")
    assert [t for _, t in imported("kernelsession.client", init)] == [
        "kernelsession.client._a",
        "kernelsession.client._a.x",
        "kernelsession.client",
        "kernelsession.client._b",
    ]
    assert [t for _, t in imported("kernelsession.client.cli.m", mod)] == [
        "kernelsession.client._c",
        "kernelsession.client._c.y",
    ]
