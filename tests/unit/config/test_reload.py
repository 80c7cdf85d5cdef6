"""Hot reload of a file the loader refuses: counted as failed, logged as one line, never a traceback."""
from __future__ import annotations

import logging

from proxy.config import load_policy
from proxy.config.reload import PolicyReloader

POLICY = """\
version: 1
auth: open
deployments:
  - name: spark
    provider: {provider}
    model: m
    base_url: http://127.0.0.1:9/v1
"""


def test_a_too_deeply_nested_file_is_a_failed_reload_with_its_line(tmp_path, caplog):
    path = tmp_path / "p.yaml"
    path.write_text(POLICY.format(provider="openai"))
    applied = []
    reloader = PolicyReloader(load_policy(path), applied.append, interval_s=0)
    path.write_text(POLICY.format(provider="openai") + "x: " + "[" * 5000 + "]" * 5000 + "\n")
    with caplog.at_level(logging.ERROR, logger="laneway.reload"):
        assert reloader.reload("file") is False
    assert applied == [] and reloader.status()["reloads"] == {"ok": 0, "failed": 1}
    assert reloader.last_error.errors == (f"{path}:8: nesting too deep (more than 64 levels of lists or mappings)",)
    assert [r.exc_info for r in caplog.records] == [None] and "nesting too deep" in caplog.text


def test_a_reload_error_names_the_variable_not_its_value(tmp_path, caplog, monkeypatch):
    path = tmp_path / "p.yaml"
    path.write_text(POLICY.format(provider="openai"))
    reloader = PolicyReloader(load_policy(path), lambda policy: None, interval_s=0)
    monkeypatch.setenv("LANEWAY_TEST_SECRET", "sk-live-5f1c2a9be0d4417f")
    path.write_text(POLICY.format(provider="${LANEWAY_TEST_SECRET}"))
    with caplog.at_level(logging.ERROR, logger="laneway.reload"):
        assert reloader.reload("file") is False
    shown = " ".join(reloader.last_error.errors) + caplog.text
    assert "unknown provider '${LANEWAY_TEST_SECRET}'" in shown and "sk-live" not in shown
