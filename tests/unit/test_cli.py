"""The `laneway` command line: help texts, version, one policy variable, clear errors."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import main, without_password

ROOT = Path(__file__).resolve().parent.parent.parent


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version(capsys):
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    assert run(capsys, "--version") == (0, f"laneway {version}\n", "")


def test_serve_help_names_each_option_its_default_and_variable(capsys, monkeypatch):
    for name in ("HOST", "PORT", "LANEWAY_WORKERS", "LANEWAY_LOG_LEVEL", "LANEWAY_LOG_FORMAT", "LANEWAY_POLICY"):
        monkeypatch.delenv(name, raising=False)
    code, out, _ = run(capsys, "serve", "--help")
    help_ = " ".join(out.split())
    assert code == 0
    for option, shown in (("--policy POLICY", "[env LANEWAY_POLICY]"), ("--host HOST", "[env HOST, default 127.0.0.1]"),
                          ("--port PORT", "[env PORT, default 4000]"), ("--workers WORKERS", "[env LANEWAY_WORKERS, default 1]"),
                          ("--log-level {debug,info,warning,error,critical}", "[env LANEWAY_LOG_LEVEL, default info]"),
                          ("--log-format {text,json}", "[env LANEWAY_LOG_FORMAT, default text]")):
        assert re.search(re.escape(option) + r" [^\[]+" + re.escape(shown), help_), option


def test_check_help_names_the_policy_variable(capsys):
    code, out, _ = run(capsys, "check", "--help")
    assert code == 0 and "policy YAML file [env LANEWAY_POLICY]" in " ".join(out.split())


def test_check_and_serve_read_the_policy_from_LANEWAY_POLICY(capsys, monkeypatch, tmp_path):
    missing = tmp_path / "nope.yaml"
    monkeypatch.setenv("LANEWAY_POLICY", str(missing))
    message = f"{missing}: cannot read policy file: No such file or directory; check the path\n"
    assert run(capsys, "check") == (1, "", message)
    # serve configures logging for its process: run it in one of its own
    serve = subprocess.run([sys.executable, "-m", "proxy.cli", "serve"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (serve.returncode, serve.stderr) == (2, message)


def test_no_policy_anywhere_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.delenv("LANEWAY_POLICY", raising=False)
    code, _, err = run(capsys, "check")
    assert code == 2 and "check: name a policy file, or set LANEWAY_POLICY" in err
    code, _, err = run(capsys, "serve")
    assert code == 2 and "serve: name a policy file with --policy FILE, or set LANEWAY_POLICY" in err


@pytest.mark.parametrize("name, value, flag", [("LANEWAY_LOG_FORMAT", "xml", "--log-format"),
                                               ("LANEWAY_LOG_LEVEL", "verbose", "--log-level")])
def test_a_bad_value_from_the_environment_is_a_usage_error(capsys, monkeypatch, name, value, flag):
    monkeypatch.setenv(name, value)
    code, _, err = run(capsys, "serve", "--policy", "x.yaml")
    assert code == 2 and f"serve {flag}: {value!r} is not one of" in err


def test_one_policy_variable_everywhere():
    shipped = [ROOT / "deploy" / "Dockerfile", ROOT / "README.md", *(ROOT / "deploy").rglob("*.yaml"), *(ROOT / "proxy").rglob("*.py")]
    assert not [path for path in shipped if "LANEWAY_POLICY_FILE" in path.read_text()]
    assert 'LANEWAY_POLICY=/etc/laneway/policy.yaml' in (ROOT / "deploy" / "Dockerfile").read_text()


@pytest.mark.parametrize("url, shown", [
    ("redis://:hunter2@redis:6379/0", "redis://:***@redis:6379/0"),
    ("rediss://laneway:hunter2@redis:6380", "rediss://laneway:***@redis:6380"),
    ("redis://redis:6379/0", "redis://redis:6379/0"),
])
def test_startup_shows_store_urls_without_their_password(url, shown):
    assert without_password(url) == shown


def test_make_shows_pip_progress_on_the_first_install():
    dry = subprocess.run(["make", "-n", "-B", ".venv/bin/laneway"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    install = [line for line in dry.stdout.splitlines() if "--require-hashes -r requirements-dev.lock" in line]
    assert install and "--quiet" not in install[0] and "--progress-bar on" in install[0]


def test_check_names_an_environment_value_instead_of_printing_it(capsys, monkeypatch, tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nauth: open\ndeployments:\n  - name: a\n    provider: ${LANEWAY_TEST_SECRET}\n"
                      "    model: m\n    base_url: http://127.0.0.1:9/v1\n")
    monkeypatch.setenv("LANEWAY_TEST_SECRET", "sk-live-5f1c2a9be0d4417f")
    code, out, err = run(capsys, "check", str(policy))
    assert code == 1 and f"{policy}:5: deployments[0].provider: unknown provider '${{LANEWAY_TEST_SECRET}}'" in err
    assert "sk-live" not in out + err
