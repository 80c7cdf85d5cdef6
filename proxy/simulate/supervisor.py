"""Start and stop a policy's simulated providers as child processes of ``laneway serve``."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from proxy.config.schema import Simulator


class Simulators:
    """Child simulator processes: started before the proxy listens, stopped when it exits."""

    def __init__(self, specs: Sequence[Simulator]) -> None:
        self.specs = tuple(specs)
        self._procs: list[subprocess.Popen] = []

    def start(self, timeout_s: float = 20.0) -> None:
        for spec in self.specs:
            self._procs.append(subprocess.Popen(_command(spec)))
        deadline = time.monotonic() + timeout_s
        for spec, proc in zip(self.specs, self._procs):
            while not _listening(spec.host, spec.port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"simulator '{spec.name}' did not start on {spec.host}:{spec.port} "
                        "(is the port taken? change simulators[].port in the policy)"
                    )
                time.sleep(0.05)

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()


def _command(spec: Simulator) -> list[str]:
    cmd = [sys.executable, "-m", "proxy.simulate", "--profile", spec.profile, "--host", spec.host,
           "--port", str(spec.port), "--dialect", spec.dialect]
    for flag, value in (("--rpm", spec.rpm), ("--tpm", spec.tpm), ("--rpd", spec.rpd)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
