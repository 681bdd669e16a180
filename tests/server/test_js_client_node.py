"""The browser client's pure parts and connection rules under Node's own test runner
(clients/js/test/*.test.js: the state sync reducer, the backoff schedule, token refresh,
reconnects against a fake WebSocket on mocked timers). Skipped only where node is absent."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "js"
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_node_test_runner_passes() -> None:
    assert NODE is not None
    result = subprocess.run(
        [NODE, "--test", "test/"],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", output, re.MULTILINE)
    assert passed and int(passed.group(1)) >= 20, output
    assert failed and int(failed.group(1)) == 0, output
