"""The project installs (not editable) into a fresh venv, and that venv's twistd finds the
presence plugin with no help from PYTHONPATH or the working directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support.daemon import ROOT, free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Not copied: what a build or a developer leaves behind. A stale build/lib in the tree
# would otherwise be packed into the wheel (setuptools builds in place).
LEFT_BEHIND = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "dropin.cache",
    "*.pyc",
    "*.log",
)


def clean_env(tmp_path: Path) -> dict[str, str]:
    """Enough to run a program, nothing that points Python at the repository."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the project installed from a copy of the repository root."""
    base = tmp_path_factory.mktemp("packaging")
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=LEFT_BEHIND)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # pip's own environment (its cache, its configured index) is kept; PYTHONPATH is not.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True,
        text=True,
        env=env,
        cwd=base,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return venv


def run_in(venv: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        env=clean_env(tmp_path),
        cwd=tmp_path,
        timeout=60,
    )


def site_packages(venv: Path) -> Path:
    (path,) = (venv / "lib").glob("python3*/site-packages")
    return path


def test_the_plugin_module_is_installed_into_twisted_plugins(venv: Path) -> None:
    plugins = site_packages(venv) / "twisted" / "plugins"
    assert (plugins / "presence_plugin.py").is_file()
    # Twisted's own plugins are still there: installing ours did not replace the package.
    assert (plugins / "twisted_web.py").is_file()
    assert (site_packages(venv) / "presence" / "py.typed").is_file()
    assert (site_packages(venv) / "presence" / "server" / "static" / "dashboard.html").is_file()
    assert (site_packages(venv) / "presence" / "cluster" / "lua" / "_online.lua").is_file()


def test_presence_is_imported_from_the_venv(venv: Path, tmp_path: Path) -> None:
    result = run_in(venv, tmp_path, "python", "-c", "import presence; print(presence.__file__)")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(site_packages(venv))


def test_twistd_help_lists_presence(venv: Path, tmp_path: Path) -> None:
    result = run_in(venv, tmp_path, "twistd", "--help")
    assert result.returncode == 0, result.stderr
    commands = result.stdout.split("Commands:", 1)[1]
    assert any(line.split()[:1] == ["presence"] for line in commands.splitlines()), commands


def test_twistd_presence_help_shows_the_options(venv: Path, tmp_path: Path) -> None:
    result = run_in(venv, tmp_path, "twistd", "presence", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--heartbeat-timeout", "--heartbeat-interval", "--max-message-size", "--port"):
        assert option in result.stdout, option


def test_the_installed_daemon_serves_health(venv: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "presence.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(venv / "bin" / "twistd"),
                "-n",
                "--pidfile=",
                "presence",
                "--port",
                f"tcp:{port}:interface=127.0.0.1",
                "--dashboard",  # its page is package data
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(tmp_path),
            cwd=tmp_path,
        )
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only

    def healthy() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            with direct.open(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_until(healthy, timeout=20, interval=0.1, message=log.read_text)
        with direct.open(f"http://127.0.0.1:{port}/dashboard", timeout=5) as r:
            assert r.status == 200 and b"<canvas" in r.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
