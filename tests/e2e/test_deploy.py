"""The deployable stack as far as it can be checked without a container engine: alert rules
through promtool (syntax and unit tests), the Prometheus config, every YAML/JSON file, the
policies the stack ships, and the wiring between compose, Kubernetes and Grafana files."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("`promtool` is missing: run `make system-deps` (Debian package `prometheus`)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, cwd=PROM)


def load_all(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def check_policy(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    env = {**os.environ, "LANEWAY_REDIS_URL": "redis://redis:6379/0", "CEREBRAS_API_KEY": "x", "OPENAI_API_KEY": "x",
           "LANEWAY_REPLICAS": "12"}  # set by deploy/k8s/deployment.yaml
    return subprocess.run([sys.executable, "-m", "proxy.cli", "check", str(policy)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=env)


def test_alert_rules_pass_promtool_check():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_alert_rules_pass_their_promtool_unit_tests():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROM / "alerts_test.yml").read_text()))
    rules = {r["alert"] for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    assert tested == rules, "every alert needs a unit test"


def test_a_broken_rule_fails_the_promtool_unit_tests(tmp_path):
    """The unit tests can fail: with a threshold changed, the 429-rate test no longer holds."""
    for name in ("alerts.yml", "alerts_test.yml"):
        shutil.copy(PROM / name, tmp_path / name)
    rules = tmp_path / "alerts.yml"
    rules.write_text(rules.read_text().replace("/ sum(rate(laneway_requests_total[5m])) > 0.02", "/ sum(rate(laneway_requests_total[5m])) > 0.5"))
    result = subprocess.run([shutil.which("promtool") or "promtool", "test", "rules", "alerts_test.yml"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode != 0 and "LanewayClient429Rate" in result.stdout + result.stderr


def test_prometheus_config_passes_promtool():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_deploy_and_grafana_file_parses():
    yamls = [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), *(ROOT / "grafana").rglob("*.yaml")]
    assert len(yamls) >= 12
    for path in yamls:
        assert load_all(path), path
    for path in (ROOT / "grafana" / "dashboards").glob("*.json"):
        json.loads(path.read_text())


def test_shipped_policies_pass_laneway_check(tmp_path):
    result = check_policy((DEPLOY / "policy.yaml").read_text(), tmp_path)
    assert result.returncode == 0, result.stderr
    configmap = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())
    result = check_policy(configmap["data"]["policy.yaml"], tmp_path)
    assert result.returncode == 0, result.stderr


def test_dockerfile_runs_as_non_root_and_copies_what_exists():
    text = (DEPLOY / "Dockerfile").read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    user = re.search(r"^USER (\S+)", final_stage, re.M)
    assert user and user.group(1).split(":")[0] not in ("0", "root")
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for part in source.split():
            assert (ROOT / part).exists(), part
    assert "HEALTHCHECK" in final_stage and "/healthz" in final_stage


def dockerfile_env() -> dict[str, str]:
    """The image's ENV settings (one ENV instruction with continued lines)."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            found.update(pair.split("=", 1) for pair in line[4:].split() if "=" in pair)
    return found


def test_compose_runs_two_replicas_redis_prometheus_grafana():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    replicas = sorted(name for name in services if name.startswith("laneway-"))
    assert replicas == ["laneway-1", "laneway-2"]
    assert {"redis", "prometheus", "grafana"} <= set(services)
    state_dir = dockerfile_env()["LANEWAY_STATE_DIR"]
    journals = set()
    for name in replicas:
        assert services[name]["environment"]["LANEWAY_REDIS_URL"].startswith("redis://redis:")
        # each replica keeps its own ledger journal on a named volume; the policy mount stays
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        assert mounts[state_dir] in compose["volumes"] and "/etc/laneway/policy.yaml" in mounts
        journals.add(mounts[state_dir])
    assert len(journals) == len(replicas)
    scrape = yaml.safe_load((PROM / "prometheus.yml").read_text())["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(target.split(":")[0] for target in scrape) == replicas
    for service in services.values():
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("."):
                assert (DEPLOY / host).resolve().exists(), volume
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/laneway.yaml").read_text())["providers"][0]
    assert any(v.endswith(":" + provider["options"]["path"] + ":ro") for v in services["grafana"]["volumes"])
    datasource = yaml.safe_load((ROOT / "grafana/provisioning/datasources/laneway.yaml").read_text())["datasources"][0]
    for path in (ROOT / "grafana" / "dashboards").glob("*.json"):
        assert {p["datasource"]["uid"] for p in json.loads(path.read_text())["panels"]} == {datasource["uid"]}


def test_kubernetes_manifests_fit_together():
    docs = {}
    for name in yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())["resources"]:
        for doc in load_all(DEPLOY / "k8s" / name):
            docs[doc["kind"]] = doc
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(docs)
    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert docs["PodDisruptionBudget"]["spec"]["minAvailable"] < docs["HorizontalPodAutoscaler"]["spec"]["minReplicas"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    [container] = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The policy ConfigMap is mounted as a directory (a subPath mount never sees updates), and
    # serve reads the file inside it, so an edit reaches the reloader.
    [policy_mount] = [m for m in container["volumeMounts"] if m["name"] == "policy"]
    assert "subPath" not in policy_mount
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "policy"]
    assert volume["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    [state_mount] = [m for m in container["volumeMounts"] if m["mountPath"] == dockerfile_env()["LANEWAY_STATE_DIR"]]
    assert any(v["name"] == state_mount["name"] for v in pod["spec"]["volumes"])
    policy_path = container["args"][container["args"].index("--policy") + 1]
    assert policy_path == policy_mount["mountPath"] + "/" + next(iter(docs["ConfigMap"]["data"]))


def test_docker_compose_config_validates():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("no `docker compose` client on this machine; the compose file is checked structurally above")
    result = subprocess.run([docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "-q"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
