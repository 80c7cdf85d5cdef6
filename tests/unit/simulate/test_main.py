"""``python -m proxy.simulate``: hostile overhead or keep-alive settings and a CA folder that
cannot be written are refused with exit status 2 and one line naming the problem, before serving."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.simulate.__main__ import main


@pytest.mark.parametrize("flags, message", [
    (["--request-overhead-ms", "-5"], "request_overhead_ms"),
    (["--request-overhead-ms", "nan"], "request_overhead_ms"),
    (["--continued-ttft-share", "2"], "continued_ttft_share"),
    (["--keep-alive-s", "-1"], "--keep-alive-s"),
])
def test_hostile_overhead_flags_exit_2(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "0", *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_tls_dir_that_cannot_be_written_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    assert main(["--port", "0", "--tls-dir", str(missing)]) == 2
    assert f"cannot make a CA in {missing}" in capsys.readouterr().err
    assert not missing.exists()
