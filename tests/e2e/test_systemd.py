"""systemd/presence.service: `systemd-analyze verify` is silent, `systemd-analyze security`
rates it 2.0 or lower; and every PRESENCE_OPTIONS in etc/presence.env is a valid set of
options for `twistd presence`."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from presence.tap import Options
from tests.support.certs import self_signed
from tests.support.daemon import ROOT, TWISTD

UNIT = ROOT / "systemd" / "presence.service"
ENV_FILE = ROOT / "etc" / "presence.env"
INSTALLED_TWISTD = "/opt/presence/venv/bin/twistd"
MAX_EXPOSURE = 2.0

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed"
)


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(params=["as shipped", "with credentials"])
def unit_here(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a twistd that exists on this machine: verify
    checks that the binary is executable, and /opt/presence/venv is where production
    installs it, not where the tests run. "with credentials" also uncomments the
    LoadCredential= lines (TLS key, certificate, JWT key, API token), whose source files
    are made in tmp_path."""
    text = UNIT.read_text()
    assert text.count(INSTALLED_TWISTD) == 1
    text = text.replace(INSTALLED_TWISTD, str(TWISTD))
    if request.param == "with credentials":
        lines = [line for line in text.splitlines() if line.startswith("#LoadCredential=")]
        assert len(lines) == 4
        for line in lines:
            name, _, _source = line.removeprefix("#LoadCredential=").partition(":")
            secret = tmp_path / name
            secret.write_text("secret\n")
            text = text.replace(line, f"LoadCredential={name}:{secret}")
    copy = tmp_path / "presence.service"
    copy.write_text(text)
    return copy


@needs_systemd_analyze
def test_verify_prints_nothing(unit_here: Path) -> None:
    result = analyze("verify", str(unit_here))
    assert result.stdout + result.stderr == ""
    assert result.returncode == 0


@needs_systemd_analyze
def test_verify_of_the_file_as_shipped_only_misses_the_installed_binary() -> None:
    result = analyze("verify", str(UNIT))
    output = (result.stdout + result.stderr).strip()
    if Path(INSTALLED_TWISTD).exists():
        assert output == ""
    else:
        assert output == (
            f"presence.service: Command {INSTALLED_TWISTD} is not executable: "
            "No such file or directory"
        )


def assert_exposure_at_most_2(unit: Path) -> None:
    """`systemd-analyze security --offline=true` rates the unit MAX_EXPOSURE or lower."""
    result = analyze("security", "--offline=true", str(unit))
    found = re.search(
        rf"Overall exposure level for {re.escape(unit.name)}: (\d+(?:\.\d+)?)", result.stdout
    )
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout


@needs_systemd_analyze
def test_security_exposure_is_at_most_2(unit_here: Path) -> None:
    assert_exposure_at_most_2(unit_here)


@needs_systemd_analyze
def test_security_threshold_exit_status(unit_here: Path) -> None:
    """The same limit, enforced by systemd-analyze itself (--threshold takes 0-100)."""
    result = analyze(
        "security", "--offline=true", f"--threshold={int(MAX_EXPOSURE * 10)}", str(unit_here)
    )
    assert result.returncode == 0, result.stdout + result.stderr


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_runs_twistd_presence_with_the_environment_file() -> None:
    settings = unit_settings()
    (exec_start,) = settings["ExecStart"]
    argv = exec_start.split()
    assert argv[:4] == [INSTALLED_TWISTD, "-n", "--pidfile=", "presence"]
    assert "$PRESENCE_OPTIONS" in argv
    assert settings["EnvironmentFile"] == ["-/etc/presence/presence.env"]
    assert settings["Restart"] == ["on-failure"]
    assert int(settings["LimitNOFILE"][0]) >= 65536
    assert settings.get("DynamicUser") == ["yes"] or "User" in settings
    assert settings["CapabilityBoundingSet"] == [""]  # port 3000 needs no capability


def env_assignments(text: str) -> list[tuple[str, str]]:
    """systemd's EnvironmentFile= syntax, as far as this file uses it: # and ; comments,
    a trailing backslash continues the line, surrounding whitespace is stripped."""
    assignments = []
    logical = ""
    for line in text.splitlines():
        if not logical and line.lstrip().startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            logical += line[:-1]
            continue
        logical += line
        if logical.strip():
            key, sep, value = logical.partition("=")
            assert sep, f"not an assignment: {logical!r}"
            assignments.append((key.strip(), value.strip()))
        logical = ""
    assert not logical, "the file ends in a continuation"
    return assignments


def parse_presence_options(value: str, tmp_path: Path) -> Options:
    # The ssl: examples name the key and certificate systemd hands over at run time;
    # here they are files of the right kind in tmp_path.
    if "/run/credentials/presence.service/" in value:
        credentials = tmp_path / "credentials"
        credentials.mkdir(exist_ok=True)
        _, cert = self_signed(credentials)
        (credentials / "chain.pem").write_bytes(cert.read_bytes())
        (credentials / "api-token").write_text("a-long-random-api-token-for-tests\n")
        (credentials / "redis-password").write_text("a-redis-password\n")
        (credentials / "jwt.pem").write_bytes(
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        value = value.replace("/run/credentials/presence.service/", f"{credentials}/")
    options = Options()
    options.parseOptions(value.split())  # $PRESENCE_OPTIONS: split at whitespace
    return options


def test_environment_file_defaults_line_is_valid_and_is_the_defaults(tmp_path: Path) -> None:
    assignments = env_assignments(ENV_FILE.read_text())
    assert [key for key, _ in assignments] == ["PRESENCE_OPTIONS"]
    options = parse_presence_options(assignments[0][1], tmp_path)
    defaults = Options()
    defaults.parseOptions([])
    assert options.config == defaults.config


def test_environment_file_documents_every_option() -> None:
    text = ENV_FILE.read_text()
    names = {"port"} | {str(p[0]) for p in Options.optParameters}
    for name in names:
        assert f"# --{name} " in text, name


def test_environment_file_examples_are_valid(tmp_path: Path) -> None:
    examples = [
        line[1:]
        for line in ENV_FILE.read_text().splitlines()
        if line.startswith("#PRESENCE_OPTIONS=")
    ]
    assert len(examples) >= 2
    for key, value in env_assignments("\n".join(examples)):
        assert key == "PRESENCE_OPTIONS"
        options = parse_presence_options(value, tmp_path)
        assert options["ports"], value


def test_environment_file_values_need_no_shell_quoting() -> None:
    for _, value in env_assignments(ENV_FILE.read_text()):
        assert shlex.split(value) == value.split(), value


@pytest.fixture
def template_here(tmp_path: Path) -> Path:
    """presence@1.service (an instance of the template) beside presence.socket, with
    ExecStart pointing at a twistd that exists here; nothing else changed."""
    text = (ROOT / "systemd" / "presence@.service").read_text()
    assert text.count(INSTALLED_TWISTD) == 1
    (tmp_path / "presence.socket").write_text((ROOT / "systemd" / "presence.socket").read_text())
    instance = tmp_path / "presence@1.service"
    instance.write_text(text.replace(INSTALLED_TWISTD, str(TWISTD)))
    return instance


@needs_systemd_analyze
def test_template_and_socket_verify_silently(template_here: Path) -> None:
    for unit in (template_here, template_here.with_name("presence.socket")):
        result = analyze("verify", str(unit))
        assert (result.stdout + result.stderr, result.returncode) == ("", 0), unit.name


@needs_systemd_analyze
def test_template_exposure_is_at_most_2(template_here: Path) -> None:
    assert_exposure_at_most_2(template_here)
