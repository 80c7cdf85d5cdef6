import atexit
import os
import shutil
import tempfile

import httpx
import pytest

from proxy.simulate import get_profile, serve_in_thread
from proxy.simulate.tls import make_ca
from tests.support import ServerThread, free_port, proxy_from_yaml, simulator

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
# Without Redis the proxy keeps its ledger in a SQLite file under $LANEWAY_STATE_DIR (else ./.laneway):
# never the repository. This one serves proxies of module and session fixtures; each test gets its own.
os.environ["LANEWAY_STATE_DIR"] = tempfile.mkdtemp(prefix="laneway-state-")
atexit.register(shutil.rmtree, os.environ["LANEWAY_STATE_DIR"], True)


@pytest.fixture(autouse=True)
def _state_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LANEWAY_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(scope="session")
def wafer_sim():
    """A fast-lane simulator with a little latency so streams have a shape."""
    with simulator("wafer", ttft_ms=5, tokens_per_s=4000) as server:
        yield server


@pytest.fixture(scope="session")
def gpu_sim():
    with simulator("gpu", ttft_ms=20, tokens_per_s=2000) as server:
        yield server


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A throwaway CA and a certificate for 127.0.0.1 it signed (proxy/simulate/tls.py)."""
    return make_ca(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def tls_sim(tls_files):
    """The simulator behind TLS, as a provider's HTTPS and wss endpoint."""
    with serve_in_thread(get_profile("instant"), tls=tls_files) as running:
        yield running


@pytest.fixture(autouse=True)
def _reset_sims(request):
    """Every test starts with zeroed simulator counters, no queued faults, empty rate windows."""
    for name in ("wafer_sim", "gpu_sim"):
        if name in request.fixturenames:
            server = request.getfixturevalue(name)
            httpx.post(server.url + "/sim/reset").raise_for_status()
    yield


POLICY = """\
version: 1
auth: {auth}
keys:
  - name: alice
    sha256: {alice_sha}
    team: platform
server:
  max_body_bytes: {max_body}
deployments:
  - name: spark-wafer
    provider: cerebras
    model: sim-spark
    base_url: {wafer}/v1
    hardware: wafer
    timeouts: {{connect_s: 1, first_byte_s: {first_byte_s}, idle_s: 2, total_s: 30}}
  - name: codex-gpu
    provider: openai
    model: sim-codex
    base_url: {gpu}/v1
    hardware: gpu
  - name: claude-gpu
    provider: anthropic
    model: claude-sim
    base_url: {gpu}
    hardware: gpu
  - name: dead
    provider: openai
    model: nothing
    base_url: http://127.0.0.1:{dead_port}/v1
    timeouts: {{connect_s: 0.5}}
routes:
  - name: codex
    candidates: [spark-wafer, codex-gpu]
  - name: fast
    candidates: [spark-wafer]
  - name: claude
    candidates: [claude-gpu]
  - name: broken
    candidates: [dead]
  - name: dead-then-gpu
    candidates: [dead, codex-gpu]
"""

ALICE_KEY = "lw-test-alice-key"


@pytest.fixture
def make_proxy(tmp_path, wafer_sim, gpu_sim):
    """Factory: a running proxy in front of the session simulators, with policy knobs."""
    import hashlib

    def make(auth: str = "open", max_body: int = 1 << 20, first_byte_s: float = 5) -> ServerThread:
        text = POLICY.format(
            auth=auth, alice_sha=hashlib.sha256(ALICE_KEY.encode()).hexdigest(), max_body=max_body,
            wafer=wafer_sim.url, gpu=gpu_sim.url, dead_port=free_port(), first_byte_s=first_byte_s,
        )
        return proxy_from_yaml(tmp_path, text)

    return make


@pytest.fixture
def proxy(make_proxy):
    with make_proxy() as server:
        yield server
