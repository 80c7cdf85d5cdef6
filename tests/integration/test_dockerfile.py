"""deploy/Dockerfile's install steps, replayed in a fresh `python -m venv` (no container engine here).

The build stage's ENV, WORKDIR, COPY and RUN lines run as written, with the image's paths
mapped into a temporary directory (pip keeps this machine's way of reaching the registry); then
the final stage's ENV is applied and `laneway check` (no argument: it reads $LANEWAY_POLICY)
validates the policy the image ships. pip's cache is reused (the image's PIP_NO_CACHE_DIR is the
one setting not replayed), so a warm run takes about a minute.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
NOT_REPLAYED = {"PIP_NO_CACHE_DIR"}


def stages(dockerfile: str) -> list[list[tuple[str, str]]]:
    """[(instruction, arguments), ...] for each FROM stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile)
    result: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction == "FROM":
            result.append([])
        result[-1].append((instruction, arguments.strip()))
    return result


def env_pairs(arguments: str, env: dict[str, str]) -> dict[str, str]:
    pairs = {}
    for item in shlex.split(arguments):
        name, _, value = item.partition("=")
        pairs[name] = re.sub(r"\$(\w+)", lambda m: env.get(m[1], ""), value)
    return pairs


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_dockerfile_install_steps_build_a_venv_that_checks_the_shipped_policy(tmp_path):
    build, final = stages((DEPLOY / "Dockerfile").read_text())
    image = tmp_path / "image"
    mapped = {"/opt/laneway": image / "opt" / "laneway", "/src": image / "src", "/etc/laneway": image / "etc" / "laneway"}

    def local(path: str) -> str:
        for inside, outside in mapped.items():
            path = path.replace(inside, str(outside))
        return path

    bin_dir = tmp_path / "bin"  # `python` as the image has it: this interpreter, outside any venv
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable if sys.prefix == sys.base_prefix else
                                    Path(sys.base_prefix) / "bin" / Path(sys.executable).name)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    cwd = image
    for instruction, arguments in build[1:]:
        if instruction == "ENV":
            env.update({k: v for k, v in env_pairs(arguments, env).items() if k not in NOT_REPLAYED})
        elif instruction == "WORKDIR":
            cwd = Path(local(arguments))
            cwd.mkdir(parents=True, exist_ok=True)
        elif instruction == "COPY":
            *sources, target = arguments.split()
            destination = Path(local(target)) if target.startswith("/") else cwd / target
            for source in sources:
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, destination, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    destination.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, destination)
        elif instruction == "RUN":
            result = subprocess.run(["sh", "-c", local(arguments)], cwd=cwd, env=env, capture_output=True, text=True)
            assert result.returncode == 0, f"RUN {arguments}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        else:
            pytest.fail(f"the replay does not know {instruction} in the build stage")

    for instruction, arguments in final:
        if instruction == "COPY" and not arguments.startswith("--from"):
            source, target = arguments.split()
            destination = Path(local(target))
            destination.parent.mkdir(parents=True, exist_ok=True)
            copy = shutil.copytree if (ROOT / source).is_dir() else shutil.copy
            copy(ROOT / source, destination)
        elif instruction == "ENV":
            env.update({k: local(v) for k, v in env_pairs(arguments, {**env, "PATH": f"{bin_dir}:/usr/bin:/bin"}).items()})
    env["LANEWAY_REDIS_URL"] = "redis://redis:6379/0"  # as compose sets it
    assert env["PATH"].startswith(str(mapped["/opt/laneway"] / "bin"))
    check = subprocess.run(["laneway", "check"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(f"{mapped['/etc/laneway'] / 'policy.yaml'}: ok (version ")
    version = subprocess.run(["laneway", "--version"], env=env, capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == "laneway " + re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]


def test_the_build_backend_is_pinned_with_hashes():
    """What `pip install --no-build-isolation .` needs must come from the hashed lock, not from the base image."""
    lock = (ROOT / "requirements.lock").read_text()
    for name in ("setuptools", "wheel"):
        assert re.search(rf"^{name}==[\d.]+ \\\n    --hash=sha256:[0-9a-f]{{64}}", lock, re.M), name


def test_one_image_name_for_compose_and_kubernetes():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    deployment = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    assert compose["x-laneway"]["image"] == container["image"] == f"laneway:{version}"
    assert f"-t laneway:{version} ." in (DEPLOY / "Dockerfile").read_text()


def test_kubernetes_replica_count_for_fail_open_matches_the_autoscaler_ceiling():
    deployment = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    hpa = yaml.safe_load((DEPLOY / "k8s" / "hpa.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert int(env["LANEWAY_REPLICAS"]) == hpa["spec"]["maxReplicas"]
    configmap = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())
    assert "replicas: ${LANEWAY_REPLICAS}" in configmap["data"]["policy.yaml"]


def test_dockerignore_keeps_the_context_small():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", ".tools", "**/__pycache__", ".pytest_cache"} <= ignored
