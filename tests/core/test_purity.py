"""presence/core is pure: no module there imports Twisted, Autobahn, txredisapi or zope,
neither itself (read from its source, any import anywhere in the file) nor through what
it imports (every core module imported in a fresh interpreter)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import ROOT

CORE = ROOT / "presence" / "core"
FORBIDDEN = frozenset({"twisted", "autobahn", "txredisapi", "zope"})
MODULES = sorted(
    "presence.core" + ("" if p.stem == "__init__" else f".{p.stem}") for p in CORE.glob("*.py")
)


def imported_names(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, relative ones resolved
    against ``package``; ``from a import b`` counts as ``a`` and as ``a.b``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def forbidden_imports(source: str, package: str = "presence.core") -> list[tuple[int, str]]:
    return [(line, name) for line, name in imported_names(source, package) if top(name)]


def top(name: str) -> bool:
    return name.split(".")[0] in FORBIDDEN


def loaded_after_importing(modules: list[str], path: Path = ROOT) -> list[str]:
    """The forbidden modules in sys.modules of a fresh interpreter that imported
    ``modules`` (with ``path`` first on sys.path)."""
    script = (
        "import importlib, json, sys\n"
        f"sys.path.insert(0, {str(path)!r})\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=path
    )
    assert result.returncode == 0, result.stderr
    return [name for name in json.loads(result.stdout) if top(name)]


def test_there_are_core_modules() -> None:
    assert {"presence.core.model", "presence.core.policy", "presence.core.wire"} <= set(MODULES)


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_no_core_module_imports_the_frameworks(path: Path) -> None:
    assert forbidden_imports(path.read_text()) == [], path


def test_importing_all_of_core_loads_none_of_them() -> None:
    assert loaded_after_importing(MODULES) == []


# -- the checks would catch one -------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "import twisted",
        "import zope.interface as zi",
        "from twisted.internet import defer",
        "from autobahn.twisted.websocket import WebSocketServerProtocol",
        "import os, txredisapi",
        "def later():\n    from twisted.internet import reactor",
        "if TYPE_CHECKING:\n    from zope.interface import Interface",
        "try:\n    import autobahn\nexcept ImportError:\n    pass",
    ],
)
def test_the_source_check_finds_each_form_of_import(source: str) -> None:
    assert forbidden_imports(source) != []


def test_the_source_check_resolves_relative_imports() -> None:
    assert forbidden_imports("from . import wire\nfrom .model import Peer") == []
    names = [name for _, name in imported_names("from ..hub import LocalHub", "presence.core")]
    assert names == ["presence.hub", "presence.hub.LocalHub"]


def test_the_import_check_finds_an_indirect_import(tmp_path: Path) -> None:
    """A module that imports nothing forbidden itself, but a module that does."""
    package = tmp_path / "fakecore"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helper.py").write_text("from twisted.internet import defer\n")
    (package / "pure.py").write_text("from . import helper\n")
    assert forbidden_imports((package / "pure.py").read_text(), "fakecore") == []
    assert "twisted" in loaded_after_importing(["fakecore.pure"], tmp_path)
