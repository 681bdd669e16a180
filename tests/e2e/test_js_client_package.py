"""The browser client ships inside the Python package: a wheel built from a copy of the
tree holds presence/server/static/presence.js, byte for byte clients/js/presence.js, so a
non-editable install serves the very file at GET /client/presence.js (the installed daemon
itself is started in test_packaging.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.e2e.test_packaging import LEFT_BEHIND
from tests.support.daemon import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_the_wheel_carries_the_client(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=LEFT_BEHIND, symlinks=True)  # as a checkout has it
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(source)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("presence-*.whl")
    assert (source / "presence" / "server" / "static" / "presence.js").is_symlink()
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("presence/server/static/presence.js")  # the file, not a link
    assert shipped == (ROOT / "clients" / "js" / "presence.js").read_bytes()
