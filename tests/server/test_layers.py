"""The arrows of docs/architecture.md: ``presence.server`` and ``presence.cluster`` never
import each other, and nothing under ``presence.core`` or in ``presence.hub`` imports
either of them (nor ``app``, ``tap`` or ``config``, which sit above both)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.core.test_purity import imported_names
from tests.support.daemon import ROOT

PACKAGE = ROOT / "presence"
ABOVE = ("presence.app", "presence.tap", "presence.config")
RULES = {
    "presence.server": ("presence.cluster", *ABOVE),
    "presence.cluster": ("presence.server", *ABOVE),
    "presence.core": ("presence.server", "presence.cluster", "presence.hub", *ABOVE),
    "presence.hub": ("presence.server", "presence.cluster", *ABOVE),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def violations(source: str, name: str, package: str) -> list[int]:
    """The lines of ``source`` (module ``name`` in ``package``) that import a layer it
    must not."""
    bad = set()
    for layer, forbidden in RULES.items():
        if name == layer or name.startswith(layer + "."):
            for line, imported in imported_names(source, package):
                if any(imported == f or imported.startswith(f + ".") for f in forbidden):
                    bad.add(line)
    return sorted(bad)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_no_arrow_points_the_wrong_way(path: Path) -> None:
    name = module_name(path)
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    assert violations(path.read_text(), name, package) == []


def test_the_check_would_catch_a_wrong_arrow() -> None:
    source = "from ..cluster import hub\nfrom presence.app import build\nfrom . import ws\n"
    assert violations(source, "presence.server.web", "presence.server") == [1, 2]
    assert violations("from .. import hub\n", "presence.core.x", "presence.core") == [1]
    assert violations("from ..core import wire\n", "presence.cluster.x", "presence.cluster") == []
