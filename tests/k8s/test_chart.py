"""Offline checks of the Helm chart (charts/parley) and the environment values (deploy/helm).

helm renders the chart for every deployment scenario. The manifests are validated against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict, for 1.30 and the newest version it knows)
and, for KEDA, against the ScaledObject CRD schema; then the ``check_*`` functions look for what
Parley relies on: probes, security contexts, selectors, ports, NetworkPolicies, the KEDA trigger.
Each check takes a manifest list and returns the problems it found, so that a test can also feed
it a broken chart and assert that the problem is reported.

helm itself comes from ``scripts/install-helm.sh`` (an npm package: only the npm registry is needed).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate.utils as kv
import pytest
import referencing
import yaml

REPO = Path(__file__).resolve().parents[2]
SHARED_SCHEMAS = REPO.parent / "shared" / "schemas"
CHART = REPO / "charts" / "parley"
ENVIRONMENTS = REPO / "deploy" / "helm"
TEST_VALUES = Path(__file__).resolve().parent / "values"

KUBE_VERSION = "1.30.0"
CRD_API_VERSIONS = ("keda.sh/v1alpha1", "monitoring.coreos.com/v1")
RELEASE = "parley"
NAMESPACE = "parley"

REQUESTS_TOPIC = "parley.completions.requests"
WORKER_GROUP = "parley-workers"
SERVICES = ("gateway", "session", "cache", "worker")

DEV = ENVIRONMENTS / "values-dev.yaml"
PROD = ENVIRONMENTS / "values-prod.yaml"
GPU = ENVIRONMENTS / "values-gpu.yaml"
EVERYTHING = TEST_VALUES / "everything.yaml"

# Values files layered on the chart's defaults, per deployment scenario.
SCENARIOS: dict[str, tuple[Path, ...]] = {
    "default": (),
    "dev": (DEV,),
    "prod": (PROD,),
    "gpu": (GPU,),
    "dev+gpu": (DEV, GPU),
    "prod+gpu": (PROD, GPU),
    "everything": (EVERYTHING,),
    "dev+everything": (DEV, EVERYTHING),
}

Manifest = dict[str, Any]
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")


# helm ---------------------------------------------------------------------------------------


class Helm:
    """helm 3 on the chart, with rendered output cached per (values files, --set) for the module."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        self._rendered: dict[tuple[tuple[Path, ...], tuple[str, ...]], list[Manifest]] = {}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args], env=self.env, capture_output=True, text=True, check=False
        )

    def lint(self, values: Sequence[Path]) -> subprocess.CompletedProcess[str]:
        return self.run("lint", "--strict", str(CHART), *_values_args(values))

    def template_raw(
        self, values: Sequence[Path] = (), sets: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        api_versions = [arg for api in CRD_API_VERSIONS for arg in ("--api-versions", api)]
        set_args = [arg for s in sets for arg in ("--set", s)]
        return self.run(
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
            *api_versions,
            *_values_args(values),
            *set_args,
        )

    def template(self, values: Sequence[Path] = (), sets: Sequence[str] = ()) -> list[Manifest]:
        """The manifests of the chart, parsed; hooks included. Callers get their own copy."""
        key = (tuple(values), tuple(sets))
        if key not in self._rendered:
            result = self.template_raw(values, sets)
            assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
            docs = [d for d in yaml.safe_load_all(result.stdout) if d]
            self._rendered[key] = docs
        return copy.deepcopy(self._rendered[key])


def _values_args(values: Sequence[Path]) -> list[str]:
    return [arg for path in values for arg in ("--values", str(path))]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    installed = subprocess.run(
        [str(REPO / "scripts" / "install-helm.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert installed.returncode == 0, f"scripts/install-helm.sh failed:\n{installed.stderr}"
    binary = Path(installed.stdout.strip().splitlines()[-1])
    return Helm(binary, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def manifests(helm: Helm, scenario: str) -> list[Manifest]:
    return helm.template(SCENARIOS[scenario])


# Schema validation --------------------------------------------------------------------------


@functools.cache
def _kube_definitions(version: str) -> referencing.Registry[Any]:
    defs = kv.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version
    )
    return referencing.Resource.from_contents(defs) @ referencing.Registry()


@functools.cache
def _kube_validator(version: str, api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    # The schema files and registry of kubernetes_validate.utils.validate, loaded once per kind.
    # Its file names drop the API group's domain: networking.k8s.io/v1 -> networking-v1.
    name = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = kv.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/{kind.lower()}-{name}.json", version
    )
    registry = referencing.Resource.from_contents(schema) @ _kube_definitions(version)
    return jsonschema.Draft202012Validator(schema, registry=registry)


@functools.cache
def _crd_validator(filename: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SHARED_SCHEMAS / filename).read_text())
    return jsonschema.Draft7Validator(schema)


CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject_v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication_v1alpha1.json",
}
# Prometheus-operator kinds: no schema in ../shared/schemas; their structure is checked below.
UNCHECKED_CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
KUBE_VERSIONS = ("1.30.0", kv.latest_version())


def schema_errors(manifests: Sequence[Manifest]) -> list[str]:
    """Every schema violation, for Kubernetes 1.30 and the newest version known, strict."""
    problems = []
    for m in manifests:
        api_kind = (m.get("apiVersion", ""), m.get("kind", ""))
        where = _name(m)
        if api_kind in CRD_SCHEMAS:
            validators: list[tuple[str, jsonschema.protocols.Validator]] = [
                ("CRD", _crd_validator(CRD_SCHEMAS[api_kind]))
            ]
        elif api_kind in UNCHECKED_CRDS:
            validators = []
            if not isinstance(m.get("spec"), dict) or not m.get("metadata", {}).get("name"):
                problems.append(f"{where}: needs metadata.name and a spec")
        else:
            try:
                validators = [(v, _kube_validator(v, *api_kind)) for v in KUBE_VERSIONS]
            except FileNotFoundError:
                problems.append(f"{where}: no schema for {api_kind[0]} {api_kind[1]}")
                continue
        for version, validator in validators:
            for error in validator.iter_errors(m):
                path = ".".join(str(p) for p in error.absolute_path)
                problems.append(f"{where} ({version}): {path}: {error.message}")
    return problems


# Checks on rendered manifests ---------------------------------------------------------------


def _name(m: Manifest) -> str:
    return f"{m.get('kind')}/{m.get('metadata', {}).get('name')}"


def _of_kind(manifests: Sequence[Manifest], *kinds: str) -> Iterator[Manifest]:
    return (m for m in manifests if m.get("kind") in kinds)


def _pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def _pod_labels(workload: Manifest) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def _containers(workload: Manifest) -> list[dict[str, Any]]:
    spec = _pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def _is_hook(m: Manifest) -> bool:
    return "helm.sh/hook" in m.get("metadata", {}).get("annotations", {})


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels / matchExpressions, or a Service's plain map) on labels."""
    match_labels = selector.get(
        "matchLabels", selector if "matchExpressions" not in selector else {}
    )
    if not all(labels.get(k) == v for k, v in match_labels.items() if isinstance(v, str)):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def check_probes(manifests: Sequence[Manifest]) -> list[str]:
    """Every long-running container has liveness and readiness probes."""
    problems = []
    for w in _of_kind(manifests, "Deployment", "StatefulSet"):
        for c in _containers(w):
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in c:
                    problems.append(f"{_name(w)}: container {c['name']} has no {probe}")
    return problems


def check_security(manifests: Sequence[Manifest]) -> list[str]:
    """Non-root, read-only root filesystem, no privilege escalation, no capabilities, seccomp."""
    problems = []
    for w in _of_kind(manifests, *WORKLOAD_KINDS):
        pod = _pod_spec(w)
        pod_sc = pod.get("securityContext", {})
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{_name(w)}: mounts a service account token")
        if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
            problems.append(f"{_name(w)}: shares a host namespace")
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{_name(w)}: pod seccompProfile is not RuntimeDefault")
        for c in _containers(w):
            sc = c.get("securityContext", {})
            where = f"{_name(w)}: container {c['name']}"
            if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
                problems.append(f"{where} may run as root (runAsNonRoot)")
            if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
                problems.append(f"{where} runs as uid 0")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where} has a writable root filesystem")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where} allows privilege escalation")
            if sc.get("privileged"):
                problems.append(f"{where} is privileged")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where} does not drop ALL capabilities")
            if sc.get("capabilities", {}).get("add"):
                problems.append(f"{where} adds capabilities")
    for sa in _of_kind(manifests, "ServiceAccount"):
        if sa.get("automountServiceAccountToken") is not False:
            problems.append(f"{_name(sa)}: automountServiceAccountToken is not false")
    return problems


def check_selectors(manifests: Sequence[Manifest]) -> list[str]:
    """Selectors match their pods; scale targets, Services and PDBs point at real workloads."""
    problems = []
    workloads = list(_of_kind(manifests, *WORKLOAD_KINDS))
    deployments = {w["metadata"]["name"] for w in workloads if w["kind"] == "Deployment"}
    for w in _of_kind(manifests, "Deployment", "StatefulSet"):
        if not _selects(w["spec"]["selector"], _pod_labels(w)):
            problems.append(f"{_name(w)}: selector does not match its pod labels")
    service_names = {s["metadata"]["name"] for s in _of_kind(manifests, "Service")}
    for w in _of_kind(manifests, "StatefulSet"):
        if w["spec"].get("serviceName") not in service_names:
            problems.append(f"{_name(w)}: serviceName names no Service")
    for obj in _of_kind(manifests, "Service", "PodDisruptionBudget"):
        selector = obj["spec"].get("selector")
        if selector is None:
            continue
        if not any(_selects(selector, _pod_labels(w)) for w in workloads if not _is_hook(w)):
            problems.append(f"{_name(obj)}: selector matches no pod")
    for obj in _of_kind(manifests, "HorizontalPodAutoscaler", "ScaledObject"):
        target = obj["spec"]["scaleTargetRef"]
        if target.get("kind", "Deployment") != "Deployment" or target["name"] not in deployments:
            problems.append(f"{_name(obj)}: scaleTargetRef {target} is no Deployment of the chart")
    service_labels = [s["metadata"].get("labels", {}) for s in _of_kind(manifests, "Service")]
    for obj in _of_kind(manifests, "ServiceMonitor"):
        if not any(_selects(obj["spec"]["selector"], labels) for labels in service_labels):
            problems.append(f"{_name(obj)}: selector matches no Service")
    return problems


def check_service_ports(manifests: Sequence[Manifest]) -> list[str]:
    """Every Service port targets a port that the selected containers declare."""
    problems = []
    workloads = [w for w in _of_kind(manifests, "Deployment", "StatefulSet")]
    for svc in _of_kind(manifests, "Service"):
        pods = [w for w in workloads if _selects(svc["spec"].get("selector", {}), _pod_labels(w))]
        declared = [p for w in pods for c in _containers(w) for p in c.get("ports", [])]
        names = {p.get("name") for p in declared}
        numbers = {p["containerPort"] for p in declared}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if target not in (names if isinstance(target, str) else numbers):
                problems.append(
                    f"{_name(svc)}: port {port.get('name')} targets {target!r}, "
                    f"which no selected container declares"
                )
    for ing in _of_kind(manifests, "Ingress"):
        services = {s["metadata"]["name"]: s for s in _of_kind(manifests, "Service")}
        for rule in ing["spec"].get("rules", []):
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                backend_service = services.get(backend["name"])
                svc_ports = backend_service["spec"]["ports"] if backend_service else []
                wanted = backend["port"]
                if not any(
                    p.get("name") == wanted.get("name") or p["port"] == wanted.get("number")
                    for p in svc_ports
                ):
                    problems.append(f"{_name(ing)}: backend {backend} is no Service port")
    for monitor in _of_kind(manifests, "ServiceMonitor"):
        selected = [
            s
            for s in _of_kind(manifests, "Service")
            if _selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
        ]
        port_names = {p.get("name") for s in selected for p in s["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint.get("port") not in port_names:
                problems.append(
                    f"{_name(monitor)}: endpoint port {endpoint.get('port')} is no Service port"
                )
    return problems


def check_network_policies(manifests: Sequence[Manifest]) -> list[str]:
    """Every pod is selected by a NetworkPolicy that restricts both ingress and egress."""
    problems = []
    policies = list(_of_kind(manifests, "NetworkPolicy"))
    for w in _of_kind(manifests, *WORKLOAD_KINDS):
        covering = [p for p in policies if _selects(p["spec"]["podSelector"], _pod_labels(w))]
        types = {t for p in covering for t in p["spec"].get("policyTypes", [])}
        if not covering:
            problems.append(f"{_name(w)}: no NetworkPolicy selects its pods")
        elif not {"Ingress", "Egress"} <= types:
            problems.append(f"{_name(w)}: NetworkPolicies restrict only {sorted(types)}")
    for p in policies:
        if not any(
            _selects(p["spec"]["podSelector"], _pod_labels(w))
            for w in _of_kind(manifests, *WORKLOAD_KINDS)
        ):
            problems.append(f"{_name(p)}: selects no pod of the chart")
    return problems


def check_images(manifests: Sequence[Manifest]) -> list[str]:
    """Every image names a tag (never latest) or a digest."""
    problems = []
    for w in _of_kind(manifests, *WORKLOAD_KINDS):
        for c in _containers(w):
            image: str = c["image"]
            name, _, digest = image.partition("@")
            last = name.rsplit("/", 1)[-1]
            tag = last.partition(":")[2]
            if not tag and not digest:
                problems.append(f"{_name(w)}: image {image} has no tag")
            elif tag == "latest":
                problems.append(f"{_name(w)}: image {image} uses the latest tag")
    return problems


def check_resources(manifests: Sequence[Manifest]) -> list[str]:
    """CPU and memory requests (the HPAs need them) and a memory limit on every container."""
    problems = []
    for w in _of_kind(manifests, *WORKLOAD_KINDS):
        for c in _containers(w):
            resources = c.get("resources", {})
            requests, limits = resources.get("requests", {}), resources.get("limits", {})
            if not {"cpu", "memory"} <= requests.keys():
                problems.append(f"{_name(w)}: container {c['name']} lacks cpu/memory requests")
            if "memory" not in limits:
                problems.append(f"{_name(w)}: container {c['name']} has no memory limit")
            for key, value in limits.items():
                if key.endswith("/gpu") and requests.get(key, value) != value:
                    problems.append(f"{_name(w)}: {key} requests differ from limits")
    return problems


def check_worker_autoscaling(manifests: Sequence[Manifest]) -> list[str]:
    """A ScaledObject scales the worker Deployment on the lag of the requests topic."""
    problems = []
    workers = [
        w
        for w in _of_kind(manifests, "Deployment")
        if any(c["name"] == "worker" for c in _containers(w))
    ]
    for so in _of_kind(manifests, "ScaledObject"):
        if so["spec"]["scaleTargetRef"]["name"] not in {w["metadata"]["name"] for w in workers}:
            problems.append(f"{_name(so)}: does not target the worker Deployment")
        kafka = [t for t in so["spec"]["triggers"] if t["type"] == "kafka"]
        if not kafka:
            problems.append(f"{_name(so)}: has no kafka trigger")
        for t in kafka:
            meta = t["metadata"]
            if meta.get("topic") != REQUESTS_TOPIC:
                problems.append(
                    f"{_name(so)}: trigger topic is {meta.get('topic')}, not {REQUESTS_TOPIC}"
                )
            if meta.get("consumerGroup") != WORKER_GROUP:
                problems.append(f"{_name(so)}: trigger group is {meta.get('consumerGroup')}")
            if not meta.get("bootstrapServers"):
                problems.append(f"{_name(so)}: trigger has no bootstrapServers")
        for w in workers:
            if "replicas" in w["spec"]:
                problems.append(f"{_name(w)}: sets replicas although KEDA owns them")
    for hpa in _of_kind(manifests, "HorizontalPodAutoscaler"):
        target = _by_name(manifests, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
        if target and "replicas" in target["spec"]:
            problems.append(f"{_name(target)}: sets replicas although an HPA owns them")
    return problems


ALL_CHECKS: tuple[Callable[[Sequence[Manifest]], list[str]], ...] = (
    check_probes,
    check_security,
    check_selectors,
    check_service_ports,
    check_network_policies,
    check_images,
    check_resources,
    check_worker_autoscaling,
)


def all_problems(manifests: Sequence[Manifest]) -> list[str]:
    return [problem for check in ALL_CHECKS for problem in check(manifests)]


def _by_name(manifests: Sequence[Manifest], kind: str, name: str) -> Manifest | None:
    return next((m for m in _of_kind(manifests, kind) if m["metadata"]["name"] == name), None)


def _workload(manifests: Sequence[Manifest], component: str) -> Manifest:
    found = [
        w
        for w in _of_kind(manifests, "Deployment")
        if _pod_labels(w).get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {component} Deployment, found {len(found)}"
    return found[0]


def _container(manifests: Sequence[Manifest], component: str) -> dict[str, Any]:
    containers = _containers(_workload(manifests, component))
    assert len(containers) == 1
    return containers[0]


def _env(manifests: Sequence[Manifest], component: str) -> dict[str, Any]:
    """A service container's environment: its ConfigMaps' entries, then its env list."""
    container = _container(manifests, component)
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        cm = _by_name(manifests, "ConfigMap", source["configMapRef"]["name"])
        assert cm is not None, f"{component}: envFrom names a missing ConfigMap"
        env.update(cm["data"])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", var.get("valueFrom"))
    return env


# Tests: lint and schemas --------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [(), (DEV,), (PROD,), (GPU,), (PROD, GPU), (EVERYTHING,)],
    ids=lambda v: "+".join(p.stem for p in v) or "defaults",
)
def test_helm_lint(helm: Helm, values: tuple[Path, ...]) -> None:
    result = helm.lint(values)
    assert result.returncode == 0, result.stdout + result.stderr


def test_manifests_match_the_kubernetes_and_keda_schemas(manifests: list[Manifest]) -> None:
    assert schema_errors(manifests) == []


def test_rendered_manifests_pass_every_check(manifests: list[Manifest]) -> None:
    assert all_problems(manifests) == []


def test_every_environment_file_is_a_scenario() -> None:
    environment_files = set(ENVIRONMENTS.glob("values-*.yaml"))
    assert environment_files, "no deploy/helm/values-*.yaml"
    assert environment_files <= {p for values in SCENARIOS.values() for p in values}


# Tests: what each scenario renders ----------------------------------------------------------


def test_probes_use_the_services_health_endpoints(helm: Helm) -> None:
    manifests = helm.template()
    gateway = _container(manifests, "gateway")
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz/live", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": "http"}
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in gateway["ports"]
    for component, port in (("session", 50051), ("cache", 50052)):
        c = _container(manifests, component)
        for probe in ("startupProbe", "livenessProbe"):
            assert c[probe]["grpc"] == {"port": port}, (component, probe)
    # The session is ready only while MongoDB answers; its service status says so.
    assert _container(manifests, "session")["readinessProbe"]["grpc"] == {
        "port": 50051,
        "service": "parley.v1.SessionService",
    }
    assert _container(manifests, "cache")["readinessProbe"]["grpc"] == {"port": 50052}
    worker = _container(manifests, "worker")
    assert worker["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": "metrics"}
    startup = worker["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, (
        "too short to load a model"
    )


def test_services_get_their_runtime_configuration(helm: Helm) -> None:
    manifests = helm.template((PROD, EVERYTHING))
    common = {
        "ENVIRONMENT",
        "LOG_LEVEL",
        "OTEL_SERVICE_NAME",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "KAFKA_ADDR",
    }
    expected = {
        "gateway": {
            "PORT",
            "SESSION_ADDR",
            "CACHE_ADDR",
            "ADMIN_API_KEY",
            "GATEWAY_INSTANCE_ID",
            "RATE_LIMIT_REQUESTS_PER_MINUTE",
            "RATE_LIMIT_TOKENS_PER_MINUTE",
            "MAX_QUEUE_DEPTH",
            "CACHE_SAMPLE_SHARE",
        },
        "session": {"GRPC_PORT", "METRICS_PORT", "MONGODB_URI", "MONGODB_DATABASE", "MODEL_NAME"},
        "cache": {
            "GRPC_PORT",
            "METRICS_PORT",
            "QDRANT_ADDR",
            "QDRANT_GRPC_ADDR",
            "QDRANT_API_KEY",
            "EMBEDDING_MODEL",
            "CACHE_SIMILARITY_THRESHOLD",
            "CACHE_TTL_SECONDS",
            "CACHE_MAX_ERROR_RATE",
            "CACHE_SAMPLE_MIN_SIMILARITY",
        },
        "worker": {"METRICS_PORT", "ENGINE", "MODEL_NAME", "MAX_CONCURRENCY", "WORKER_GROUP"},
    }
    envs = {component: _env(manifests, component) for component in SERVICES}
    for component, names in expected.items():
        missing = (common | names) - envs[component].keys()
        assert not missing, f"{component} lacks {sorted(missing)}"
        assert envs[component]["OTEL_SERVICE_NAME"] == f"parley-{component}"

    gateway = envs["gateway"]
    assert gateway["PORT"] == "8080"
    assert gateway["SESSION_ADDR"] == "parley-session:50051"
    assert gateway["CACHE_ADDR"] == "parley-cache:50052"
    assert gateway["GATEWAY_INSTANCE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert gateway["ADMIN_API_KEY"] == {"secretKeyRef": {"name": "parley-admin", "key": "api-key"}}
    assert envs["session"]["MONGODB_URI"] == {
        "secretKeyRef": {"name": "parley-mongodb", "key": "uri"}
    }
    assert envs["cache"]["QDRANT_API_KEY"] == {
        "secretKeyRef": {"name": "parley-qdrant", "key": "api-key"}
    }
    assert (envs["session"]["GRPC_PORT"], envs["cache"]["GRPC_PORT"]) == ("50051", "50052")
    assert [envs[c]["METRICS_PORT"] for c in ("session", "cache", "worker")] == [
        "9101",
        "9102",
        "9103",
    ]
    assert envs["worker"]["WORKER_GROUP"] == WORKER_GROUP
    assert envs["session"]["MODEL_NAME"] == envs["worker"]["MODEL_NAME"]
    assert len({envs[c]["KAFKA_ADDR"] for c in SERVICES}) == 1
    assert envs["cache"]["QDRANT_ADDR"] == "qdrant.example.internal:6333"
    # Lookups and stores go over Qdrant's gRPC API: the same host, its gRPC port.
    assert envs["cache"]["QDRANT_GRPC_ADDR"] == "qdrant.example.internal:6334"
    assert (envs["cache"]["CACHE_SIMILARITY_THRESHOLD"], envs["cache"]["CACHE_TTL_SECONDS"]) == (
        "0.85",
        "604800",
    )
    assert (
        envs["cache"]["CACHE_MAX_ERROR_RATE"],
        envs["cache"]["CACHE_SAMPLE_MIN_SIMILARITY"],
    ) == (
        "0.05",
        "0.8",
    )
    assert gateway["CACHE_SAMPLE_SHARE"] == "0.02"
    assert {envs[c]["ENVIRONMENT"] for c in SERVICES} == {"production"}


def test_unset_options_leave_the_services_defaults(helm: Helm) -> None:
    cache = _env(helm.template(), "cache")
    assert (
        not {
            "EMBEDDING_MODEL",
            "CACHE_SIMILARITY_THRESHOLD",
            "CACHE_TTL_SECONDS",
            "CACHE_MAX_ERROR_RATE",
            "CACHE_SAMPLE_MIN_SIMILARITY",
            "QDRANT_API_KEY",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        }
        & cache.keys()
    )
    assert "TOKENIZER_PATH" not in _env(helm.template(), "session")


def test_dev_runs_its_dependencies_in_the_cluster(helm: Helm) -> None:
    manifests = helm.template((DEV,))
    statefulsets = {s["metadata"]["name"]: s for s in _of_kind(manifests, "StatefulSet")}
    assert set(statefulsets) == {"parley-kafka", "parley-mongodb", "parley-qdrant"}
    images = {name: _containers(s)[0]["image"].split(":")[0] for name, s in statefulsets.items()}
    assert images == {
        "parley-kafka": "apache/kafka",
        "parley-mongodb": "mongo",
        "parley-qdrant": "qdrant/qdrant",
    }
    kafka_addr = _env(manifests, "worker")["KAFKA_ADDR"]
    assert kafka_addr == f"parley-kafka.{NAMESPACE}.svc:9092"
    assert _env(manifests, "cache")["QDRANT_ADDR"] == "parley-qdrant:6333"
    assert _env(manifests, "cache")["QDRANT_GRPC_ADDR"] == "parley-qdrant:6334"
    secret = _by_name(manifests, "Secret", "parley-dev-credentials")
    assert secret is not None
    assert secret["stringData"]["mongodb-uri"].startswith(
        "mongodb://parley-mongodb-0.parley-mongodb."
    )
    assert (
        _env(manifests, "session")["MONGODB_URI"]["secretKeyRef"]["name"]
        == "parley-dev-credentials"
    )
    assert _env(manifests, "worker")["ENGINE"] == "fake"
    assert _env(manifests, "gateway")["ENVIRONMENT"] == "development"
    job = next(_of_kind(manifests, "Job"))
    assert {"name": "REPLICATION_FACTOR", "value": "1"} in _containers(job)[0]["env"]
    assert not list(_of_kind(manifests, "HorizontalPodAutoscaler", "ScaledObject"))


def test_prod_uses_external_services_and_existing_secrets(helm: Helm) -> None:
    manifests = helm.template((PROD,))
    assert not list(_of_kind(manifests, "StatefulSet", "Secret"))
    assert {
        h["spec"]["scaleTargetRef"]["name"] for h in _of_kind(manifests, "HorizontalPodAutoscaler")
    } == {"parley-gateway", "parley-session", "parley-cache"}
    assert _container(manifests, "gateway")["image"].startswith(
        "registry.example.com/parley/parley-gateway:"
    )
    worker_policy = _by_name(manifests, "NetworkPolicy", "parley-worker")
    assert worker_policy is not None
    egress_ports = {p["port"] for rule in worker_policy["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 9092, 4317}, "workers reach DNS, Kafka and the trace collector only"
    cache_policy = _by_name(manifests, "NetworkPolicy", "parley-cache")
    assert cache_policy is not None
    cache_ports = {p["port"] for rule in cache_policy["spec"]["egress"] for p in rule["ports"]}
    assert {6333, 6334} <= cache_ports, "the cache reaches Qdrant's HTTP and gRPC APIs"


def test_gpu_workers_request_gpus_and_scale_on_kafka_lag(helm: Helm) -> None:
    manifests = helm.template((PROD, GPU))
    worker = _workload(manifests, "worker")
    container = _containers(worker)[0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert _pod_spec(worker)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in _pod_spec(
        worker
    )["tolerations"]
    assert _env(manifests, "worker")["ENGINE"] == "vllm"
    assert "parley-worker-gpu:" in container["image"]
    (so,) = _of_kind(manifests, "ScaledObject")
    assert so["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "parley-worker",
    }
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["topic"] == REQUESTS_TOPIC
    assert trigger["metadata"]["consumerGroup"] == WORKER_GROUP
    assert trigger["metadata"]["bootstrapServers"] == _env(manifests, "worker")["KAFKA_ADDR"]
    assert so["spec"]["minReplicaCount"] >= 1
    assert "idleReplicaCount" not in so["spec"]


def test_workers_can_scale_to_zero(helm: Helm) -> None:
    (so,) = _of_kind(helm.template((EVERYTHING,)), "ScaledObject")
    assert so["spec"]["idleReplicaCount"] == 0 < so["spec"]["minReplicaCount"]
    (zero,) = _of_kind(
        helm.template((GPU,), ("worker.autoscaling.minReplicaCount=0",)), "ScaledObject"
    )
    assert zero["spec"]["minReplicaCount"] == 0
    assert "idleReplicaCount" not in zero["spec"]


def test_topic_job_creates_the_completion_topics(helm: Helm) -> None:
    manifests = helm.template(sets=("topics.requests.partitions=24",))
    (job,) = _of_kind(manifests, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"
    container = _containers(job)[0]
    assert container["image"].startswith("apache/kafka:")
    script = container["args"][0]
    assert "/opt/kafka/bin/kafka-topics.sh" in script
    for topic, partitions in (
        (REQUESTS_TOPIC, 24),
        ("parley.completions.results", 12),
        ("parley.completions.control", 3),
        ("parley.completions.dlq", 3),
    ):
        assert f"ensure {topic} {partitions} " in script
    assert not list(_of_kind(helm.template(sets=("topics.create=false",)), "Job"))


def test_only_the_gateway_is_reachable_from_outside(helm: Helm) -> None:
    manifests = helm.template((DEV,))
    policies = {p["metadata"]["name"]: p["spec"] for p in _of_kind(manifests, "NetworkPolicy")}
    open_rules = [
        name
        for name, spec in policies.items()
        for rule in spec.get("ingress", [])
        if "from" not in rule
    ]
    assert open_rules == ["parley-gateway"]
    gateway_pods = {"app.kubernetes.io/component": "gateway"}
    for name in ("parley-session", "parley-cache"):
        (from_gateway, from_prometheus) = policies[name]["ingress"]
        assert from_gateway["from"][0]["podSelector"]["matchLabels"].items() >= gateway_pods.items()
        assert from_prometheus["from"][0]["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": "prometheus"
        }
    (ingress,) = _of_kind(manifests, "Ingress")
    assert (
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
        == "parley-gateway"
    )
    services = {
        s["metadata"]["name"]: s["spec"].get("type", "ClusterIP")
        for s in _of_kind(manifests, "Service")
    }
    assert set(services.values()) == {"ClusterIP"}


def test_a_config_change_rolls_only_that_services_pods(helm: Helm) -> None:
    def checksums(sets: tuple[str, ...]) -> dict[str, str]:
        manifests = helm.template(sets=sets)
        return {
            service: _workload(manifests, service)["spec"]["template"]["metadata"]["annotations"][
                "checksum/config"
            ]
            for service in SERVICES
        }

    before, after = checksums(()), checksums(("cache.ttlSeconds=3600",))
    assert [s for s in SERVICES if before[s] != after[s]] == ["cache"]
    shared = checksums(("logLevel=DEBUG",))
    assert all(before[s] != shared[s] for s in SERVICES)


# Tests: the checks catch broken charts ------------------------------------------------------


def test_a_removed_probe_is_reported(helm: Helm) -> None:
    manifests = helm.template(sets=("gateway.probes.liveness=null",))
    assert check_probes(manifests) == [
        "Deployment/parley-gateway: container gateway has no livenessProbe"
    ]


def test_broken_manifests_are_reported(helm: Helm) -> None:
    manifests = helm.template((DEV,))
    worker = _workload(manifests, "worker")
    _pod_spec(worker)["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    worker["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] = "wroker"
    gateway = _by_name(manifests, "Service", "parley-gateway")
    assert gateway is not None
    gateway["spec"]["ports"][0]["targetPort"] = "htp"
    _containers(_workload(manifests, "session"))[0]["image"] = "parley-session:latest"
    problems = all_problems(manifests)
    assert "Deployment/parley-worker: container worker has a writable root filesystem" in problems
    assert "Deployment/parley-worker: selector does not match its pod labels" in problems
    assert "Deployment/parley-worker: no NetworkPolicy selects its pods" in problems
    assert any(p.startswith("Service/parley-gateway: port http targets 'htp'") for p in problems)
    assert "Deployment/parley-session: image parley-session:latest uses the latest tag" in problems


def test_a_scaled_object_on_the_wrong_topic_is_reported(helm: Helm) -> None:
    manifests = helm.template((GPU,))
    (so,) = _of_kind(manifests, "ScaledObject")
    so["spec"]["triggers"][0]["metadata"]["topic"] = "parley.completions.results"
    so["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 10
    assert check_worker_autoscaling(manifests) == [
        f"ScaledObject/parley-worker: trigger topic is parley.completions.results, not {REQUESTS_TOPIC}"
    ]
    errors = schema_errors(manifests)
    assert len(errors) == 1, errors
    assert "lagThreshold" in errors[0]


def test_schema_errors_are_reported(helm: Helm) -> None:
    manifests = helm.template()
    _workload(manifests, "gateway")["spec"]["template"]["spec"]["containers"][0]["livenessProbe"][
        "httpGet"
    ]["prot"] = 1
    errors = schema_errors(manifests)
    assert errors
    assert all("Deployment/parley-gateway" in e and "prot" in e for e in errors)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("image.tag=latest",), "image.tag"),
        (("worker.engine=tgi",), "worker.engine"),
        (("gateway.replica=3",), "Additional property replica"),
        (("kafka.bootstrapServers=kafka",), "kafka.bootstrapServers"),
        (
            ("worker.autoscaling.enabled=true", "worker.autoscaling.maxReplicaCount=20"),
            "above topics.requests.partitions",
        ),
        (
            (
                "worker.autoscaling.enabled=true",
                "worker.autoscaling.scaleToZero=true",
                "worker.autoscaling.minReplicaCount=0",
            ),
            "scaleToZero needs minReplicaCount",
        ),
        (("gateway.adminApiKeySecret.name=",), "gateway.adminApiKeySecret.name is required"),
    ],
)
def test_bad_values_are_refused(helm: Helm, sets: tuple[str, ...], message: str) -> None:
    result = helm.template_raw(sets=sets)
    assert result.returncode != 0
    assert message in result.stderr


# skaffold.yaml ------------------------------------------------------------------------------

SKAFFOLD = REPO / "skaffold.yaml"
ARTIFACTS = {f"parley-{service}": service for service in SERVICES}


def skaffold_config(profile: str | None = None) -> dict[str, Any]:
    """skaffold.yaml, with a profile's JSON patches (add / replace) applied."""
    config: dict[str, Any] = yaml.safe_load(SKAFFOLD.read_text())
    if profile is None:
        return config
    (selected,) = [p for p in config.pop("profiles") if p["name"] == profile]
    for patch in selected.get("patches", []):
        *parents, last = patch["path"].strip("/").split("/")
        node: Any = config
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if patch["op"] == "add":
                node.insert(index, patch["value"])
            else:
                node[index] = patch["value"]
        else:
            assert patch["op"] == "add" or last in node, f"replace of missing {patch['path']}"
            node[last] = patch["value"]
    return config


def _skaffold_errors(config: dict[str, Any]) -> list[str]:
    validator = _crd_validator("v4beta14.json")
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(config)]


@pytest.mark.parametrize("profile", [None, "cpu", "gpu"])
def test_skaffold_config_matches_its_schema(profile: str | None) -> None:
    config = skaffold_config(profile)
    assert config["apiVersion"] == "skaffold/v4beta14"
    assert _skaffold_errors(config) == []


def test_skaffold_builds_one_image_per_service() -> None:
    config = skaffold_config()
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    assert set(artifacts) == set(ARTIFACTS)
    for image, artifact in artifacts.items():
        assert artifact["context"] == "."
        assert artifact["docker"]["dockerfile"] == "Dockerfile"
        assert artifact["docker"]["buildArgs"]["SERVICE"] == ARTIFACTS[image]
    gpu = {a["image"]: a for a in skaffold_config("gpu")["build"]["artifacts"]}
    assert gpu["parley-worker"]["docker"] == {"dockerfile": "services/worker/Dockerfile.gpu"}
    assert {p["name"] for p in yaml.safe_load(SKAFFOLD.read_text())["profiles"]} == {"cpu", "gpu"}


@pytest.mark.parametrize("profile", [None, "cpu", "gpu"])
def test_skaffold_deploys_the_chart_with_the_built_images(helm: Helm, profile: str | None) -> None:
    (release,) = skaffold_config(profile)["deploy"]["helm"]["releases"]
    assert release["chartPath"] == "charts/parley"
    values = tuple(REPO / f for f in release["valuesFiles"])
    assert values[0] == DEV
    built = {name.replace("-", "_"): name for name in ARTIFACTS}
    fake = {"REPO": "registry.local/{}", "TAG": "abc1234", "DIGEST": "sha256:" + "0" * 64}

    def substitute(template: str) -> str:
        match = re.fullmatch(r"\{\{\.IMAGE_(REPO|TAG|DIGEST)_(\w+)\}\}", template)
        assert match, f"unexpected template {template}"
        assert match[2] in built, f"{template} names no artifact"
        return fake[match[1]].format(built[match[2]])

    sets = [f"{k}={substitute(v)}" for k, v in release["setValueTemplates"].items()]
    sets += [f"{k}={v}" for k, v in release.get("setValues", {}).items()]
    manifests = helm.template(values, tuple(sets))
    assert all_problems(manifests) == []
    for service in SERVICES:
        image = _container(manifests, service)["image"]
        assert image == f"registry.local/parley-{service}:abc1234@sha256:{'0' * 64}"
    engine = _env(manifests, "worker")["ENGINE"]
    assert engine == {None: "fake", "cpu": "transformers", "gpu": "vllm"}[profile]


def test_a_broken_skaffold_config_is_reported() -> None:
    config = skaffold_config()
    config["build"]["artifacts"][0]["docker"]["dockerfle"] = "Dockerfile"
    assert any("dockerfle" in e for e in _skaffold_errors(config))


def test_monitoring_objects_render(helm: Helm) -> None:
    manifests = helm.template((PROD, GPU, EVERYTHING))
    monitors = {m["metadata"]["name"]: m for m in _of_kind(manifests, "ServiceMonitor")}
    assert set(monitors) == {f"parley-{s}" for s in SERVICES}
    assert monitors["parley-gateway"]["spec"]["endpoints"][0]["port"] == "http"
    assert all(m["metadata"]["labels"]["release"] == "prometheus" for m in monitors.values())
    (rules,) = _of_kind(manifests, "PrometheusRule")
    alerts = {r["alert"] for g in rules["spec"]["groups"] for r in g["rules"]}
    assert {"ParleyTargetDown", "ParleyWorkerLagHigh", "ParleyWorkersPending"} <= alerts
    dashboard = _by_name(manifests, "ConfigMap", "parley-monitoring-dashboard")
    assert dashboard is not None
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    panels = json.loads(dashboard["data"]["parley.json"])["panels"]
    assert any("consumer lag" in p["title"] for p in panels)


def _exposed_metric_names() -> set[str]:
    """Every series name the four services can expose (their metrics modules)."""
    from prometheus_client import CollectorRegistry

    from parley_cache.metrics import CacheMetrics
    from parley_gateway.metrics import GatewayMetrics
    from parley_session.metrics import SessionMetrics
    from parley_worker.metrics import WorkerMetrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names: set[str] = set()
    for metrics in (GatewayMetrics, SessionMetrics, CacheMetrics, WorkerMetrics):
        registry = CollectorRegistry()
        metrics(registry)
        for family in registry.collect():
            names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def test_alerts_and_dashboard_use_only_metrics_the_services_expose(helm: Helm) -> None:
    manifests = helm.template((PROD, GPU, EVERYTHING))
    (rules,) = _of_kind(manifests, "PrometheusRule")
    alerts = {r["alert"]: r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]}
    assert {"ParleyWorkerLagHigh", "ParleyErrorRateHigh", "ParleyTimeToFirstTokenHigh"} <= set(
        alerts
    )
    dashboard = _by_name(manifests, "ConfigMap", "parley-monitoring-dashboard")
    assert dashboard is not None
    panels = json.loads(dashboard["data"]["parley.json"])["panels"]
    queries = [t["expr"] for p in panels for t in p["targets"]]
    used = {n for q in [*alerts.values(), *queries] for n in re.findall(r"parley_[a-z0-9_]+", q)}
    assert len(used) >= 15
    assert used - _exposed_metric_names() == set()
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("latency", "first token", "tokens per second", "cache hit", "errors", "lag"):
        assert topic in titles


# Tests: one list of each service's environment ------------------------------------------------

# Read by libraries (OpenTelemetry, Python, Hugging Face, uvicorn), not by a service's Settings.
_LIBRARY_ENV = re.compile(
    r"^(OTEL_|PYTHON|HF_|TRANSFORMERS_|TOKENIZERS_|OMP_|VLLM_[A-Z_]*LOGGING|FORWARDED_ALLOW_IPS$)"
)


def service_settings_names() -> dict[str, set[str]]:
    """Each service's environment variables: its Settings class's fields, upper-cased. Those
    classes are the one list; the chart and the local platform may set nothing else."""
    from parley_cache.config import Settings as CacheSettings
    from parley_gateway.config import Settings as GatewaySettings
    from parley_session.config import Settings as SessionSettings
    from parley_worker.config import Settings as WorkerSettings

    classes = {
        "gateway": GatewaySettings,
        "session": SessionSettings,
        "cache": CacheSettings,
        "worker": WorkerSettings,
    }
    return {name: {f.upper() for f in cls.model_fields} for name, cls in classes.items()}


def unknown_env(component: str, names: Sequence[str]) -> list[str]:
    known = service_settings_names()[component]
    return sorted(n for n in names if n not in known and not _LIBRARY_ENV.match(n))


def test_the_chart_sets_only_variables_its_services_read(helm: Helm, scenario: str) -> None:
    manifests = helm.template(SCENARIOS[scenario])
    for component in SERVICES:
        env = _env(manifests, component)
        assert unknown_env(component, list(env)) == [], f"{scenario}: {component}"


def test_the_local_platform_sets_only_variables_its_services_read(tmp_path: Path) -> None:
    from parley_devstack.platform import Platform
    from parley_devstack.stack import StackAddresses

    addresses = StackAddresses("mongodb://127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4")
    platform = Platform(addresses, run_dir=tmp_path, model_dir=tmp_path, workers=1, gateways=1)
    for proc in platform.processes:
        component = proc.name.split("-")[0]
        assert unknown_env(component, list(proc.env)) == [], component


def test_a_misspelt_variable_is_reported() -> None:
    assert unknown_env("gateway", ["PORT", "TURN_TIMEOUT_S"]) == ["TURN_TIMEOUT_S"]


def test_cors_origins_reach_the_gateway_only_when_set(helm: Helm) -> None:
    assert "CORS_ALLOWED_ORIGINS" not in _env(helm.template(), "gateway")
    env = _env(helm.template((EVERYTHING,)), "gateway")
    assert env["CORS_ALLOWED_ORIGINS"] == "https://app.example.com, https://admin.example.com"
    refused = helm.template_raw(sets=["gateway.corsAllowedOrigins=app.example.com"])
    assert refused.returncode != 0
    assert "corsAllowedOrigins" in refused.stderr
