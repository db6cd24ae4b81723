"""Static checks of the service images' Dockerfiles (no Docker engine needed).

The Dockerfiles (the one of the four CPU images, built per service with skaffold.yaml's build
arguments, and the GPU worker's) are parsed into instructions per stage; the checks hold them to
what the chart expects of the images (uid 10001, ports, entry points) and to the build rules:
multi-stage, CPU torch from PyTorch's CPU index only where torch is needed, vLLM pinned in the
GPU image.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "session", "cache", "worker")
NEEDS_TORCH = {"cache", "worker"}
CPU_TORCH_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, each a list of (KEYWORD, arguments) with line
    continuations joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            if keyword == "ARG":
                key, _, default = args.partition("=")
                global_args[key] = default
        else:
            stages[-1].instructions.append((keyword, args.strip()))
    return global_args, stages


def _dockerfile(path: str) -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile((REPO / path).read_text())


def _values() -> dict[str, dict[str, object]]:
    loaded: dict[str, dict[str, object]] = yaml.safe_load(
        (REPO / "charts" / "parley" / "values.yaml").read_text()
    )
    return loaded


def _expected_ports(service: str) -> set[str]:
    v = _values()[service]
    keys = ("port", "grpcPort", "metricsPort")
    return {str(v[k]) for k in keys if k in v}


def _local_dependencies(service: str) -> set[str]:
    """The repository packages a service needs: itself, and parley-* requirements, recursively."""
    folders = {"parley-contracts": "libs/contracts", "parley-common": "libs/common"}
    folders |= {f"parley-{s}": f"services/{s}" for s in SERVICES}
    needed: set[str] = set()
    todo = [f"services/{service}"]
    while todo:
        folder = todo.pop()
        needed.add(folder)
        project = tomllib.loads((REPO / folder / "pyproject.toml").read_text())["project"]
        for requirement in project.get("dependencies", []):
            name = re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0]
            if name in folders and folders[name] not in needed:
                todo.append(folders[name])
    return needed


def _build_args() -> dict[str, dict[str, str]]:
    """Each service's build arguments of the one Dockerfile, as skaffold.yaml passes them."""
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    found: dict[str, dict[str, str]] = {}
    for artifact in config["build"]["artifacts"]:
        assert artifact["docker"]["dockerfile"] == "Dockerfile"
        args = {k: str(v) for k, v in artifact["docker"]["buildArgs"].items()}
        found[args["SERVICE"]] = args
    return found


def _resolved(text: str, args: dict[str, str]) -> str:
    """`text` with the build arguments put in (what a build of that service sees)."""
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), text)


def test_skaffold_builds_every_service_from_the_one_dockerfile() -> None:
    assert set(_build_args()) == set(SERVICES)
    assert not any((REPO / f"services/{s}/Dockerfile").exists() for s in ("gateway", "session"))
    assert not (REPO / "services/worker/Dockerfile").exists()


@pytest.mark.parametrize("service", SERVICES)
def test_final_stage_runs_the_service_unprivileged(service: str) -> None:
    args = _build_args()[service]
    _, stages = _dockerfile("Dockerfile")
    assert len(stages) >= 2, "build in a builder stage, copy the result into the final stage"
    final = stages[-1]
    assert final.all("USER") == ["10001:10001"]
    assert final.all("ENTRYPOINT") == [json.dumps(["python", "-m", "parley_common.image", "run"])]
    env = " ".join(final.all("ENV"))
    assert "PARLEY_SERVICE=${SERVICE}" in env
    assert "PARLEY_HEALTHCHECK=${HEALTHCHECK}" in env
    (healthcheck,) = final.all("HEALTHCHECK")
    assert "CMD [" in healthcheck, "exec form"
    kind, _, variable = args["HEALTHCHECK"].partition(":")
    assert kind == ("http" if service in ("gateway", "worker") else "grpc")
    assert variable in args, f"the probe's port {variable} is built in"
    labels = " ".join(final.all("LABEL"))
    for key in ("title", "description", "version", "revision", "created"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert 'org.opencontainers.image.title="parley-${SERVICE}"' in labels
    exposed = {port for a in final.all("EXPOSE") for port in _resolved(a, args).split()}
    assert exposed == _expected_ports(service)
    for variable in ("PORT", "GRPC_PORT", "METRICS_PORT"):
        if variable in args:
            assert args[variable] in exposed
    copied = final.all("COPY")
    assert all(c.startswith("--from=") for c in copied), "the final stage copies build output only"
    runs = " ".join(final.all("RUN"))
    assert "pip install" not in runs
    assert "apt-get install" not in runs


def test_gpu_image_runs_the_worker_unprivileged() -> None:
    _, stages = _dockerfile("services/worker/Dockerfile.gpu")
    assert len(stages) >= 2, "build in a builder stage, copy the result into the final stage"
    final = stages[-1]
    assert final.all("USER") == ["10001:10001"]
    assert final.all("ENTRYPOINT") == [json.dumps(["python", "-m", "parley_worker"])]
    (healthcheck,) = final.all("HEALTHCHECK")
    assert "CMD [" in healthcheck, "exec form"
    exposed = {port for args in final.all("EXPOSE") for port in args.split()}
    assert exposed == _expected_ports("worker")
    assert all(c.startswith("--from=") for c in final.all("COPY"))


@pytest.mark.parametrize(
    ("service", "path"),
    [(s, "Dockerfile") for s in SERVICES] + [("worker", "services/worker/Dockerfile.gpu")],
)
def test_images_are_pinned_and_installed_from_the_repository(service: str, path: str) -> None:
    args = _build_args()[service] if path == "Dockerfile" else {}
    global_args, stages = _dockerfile(path)
    bases = [
        global_args.get(s.base[2:-1], s.base) if s.base.startswith("${") else s.base for s in stages
    ]
    for base in bases:
        if ":" in base:
            assert not base.endswith(":latest"), base
    named = {s.name for s in stages}
    assert all(":" in b or b in named for b in bases), f"untagged base image in {bases}"
    copied = {
        _resolved(copy.split()[-1], args)
        for s in stages
        if s.name != "web"
        for copy in s.all("COPY")
        if not copy.startswith("--from")
    }
    assert copied == _local_dependencies(service)
    for folder in copied:
        assert (REPO / folder / "pyproject.toml").is_file()


def test_torch_comes_from_the_cpu_index_where_needed() -> None:
    _, stages = _dockerfile("Dockerfile")
    runs = [args for s in stages for args in s.all("RUN")]
    (cpu,) = [r for r in runs if CPU_TORCH_INDEX in r]
    # Only in the branch of the services that need it.
    case = re.search(r'case "\$\{SERVICE\}" in\s+([\w|]+)\)', cpu)
    assert case is not None, "torch is installed for some services only"
    assert set(case[1].split("|")) == NEEDS_TORCH
    (command,) = [c for c in cpu.split("&&") if CPU_TORCH_INDEX in c]
    arguments = command.split(" install ", 1)[1].replace(CPU_TORCH_INDEX, "").split()
    requirements = [
        re.split(r"[=<>~!]", a.strip('"'))[0] for a in arguments if not a.startswith("-")
    ]
    assert requirements == ["torch"], "only torch comes from the CPU index"
    assert "torch" not in " ".join(r for r in runs if r is not cpu), "torch comes once"
    later = runs[runs.index(cpu) + 1 :]
    assert any("--constraint" in r and "install" in r for r in later), "torch stays pinned"


def test_web_page_libraries_come_from_the_lockfile() -> None:
    """The gateway's page libraries: `npm ci` from web/package-lock.json in a node stage, copied
    into the gateway's package only; nothing from the npm stage reaches the final image but them."""
    global_args, stages = _dockerfile("Dockerfile")
    assert re.fullmatch(r"node:\d+\.\d+\.\d+-[\w-]+", global_args["NODE_IMAGE"])
    (web,) = [s for s in stages if s.name == "web"]
    assert web.all("COPY") == [
        "web/package.json web/package-lock.json web/",
        "scripts/build-web.sh scripts/",
    ]
    (build,) = web.all("RUN")
    assert "scripts/build-web.sh /vendor" in build
    assert "npm ci" in (REPO / "scripts/build-web.sh").read_text()
    builder = next(s for s in stages if s.name == "builder")
    assert "--from=web /vendor /src/web-vendor" in builder.all("COPY")
    assert any(
        "parley_gateway/static/vendor" in r and '"${SERVICE}" = gateway' in r
        for r in builder.all("RUN")
    )
    lock = json.loads((REPO / "web/package-lock.json").read_text())
    wanted = {"markdown-it", "dompurify", "@highlightjs/cdn-assets", "katex", "markdown-it-texmath"}
    pinned = json.loads((REPO / "web/package.json").read_text())["dependencies"]
    assert wanted <= set(pinned)
    for name, version in pinned.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} {version} is not exact"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version


def test_gpu_image_pins_vllm_and_its_torch() -> None:
    global_args, stages = _dockerfile("services/worker/Dockerfile.gpu")
    assert global_args["CUDA_IMAGE"].startswith("nvidia/cuda:")
    builder = next(s for s in stages if s.name == "builder")
    builder_args = dict(a.partition("=")[::2] for a in builder.all("ARG"))
    assert builder_args["VLLM_VERSION"] == "0.33.0"
    assert builder_args["TORCH_VERSION"] == "2.14.0"
    transformers = next(
        r
        for r in tomllib.loads((REPO / "services/worker/pyproject.toml").read_text())["project"][
            "dependencies"
        ]
        if r.startswith("transformers")
    )
    version = tuple(int(x) for x in transformers.split("==")[1].split("."))
    assert (5, 16, 1) <= version < (5, 21), f"{transformers} is outside vLLM 0.33's range"
    assert not any(CPU_TORCH_INDEX in r for s in stages for r in s.all("RUN"))


def test_dockerignore_sends_only_the_packages() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: everything else (.venv, .git, .stack) stays out"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for folder in ("libs/contracts", "libs/common"):
        assert {f"{folder}/pyproject.toml", f"{folder}/src"} <= allowed
    assert {"services/*/pyproject.toml", "services/*/src"} <= allowed


def test_dockerfile_parser_sees_through_continuations() -> None:
    global_args, stages = parse_dockerfile(
        "ARG BASE=python:3.11-slim\n# comment\nFROM ${BASE} AS build\nRUN a \\\n  # inner\n  && b\n"
        "FROM ${BASE}\nUSER 10001:10001\n"
    )
    assert global_args == {"BASE": "python:3.11-slim"}
    assert [(s.base, s.name) for s in stages] == [("${BASE}", "build"), ("${BASE}", None)]
    assert stages[0].all("RUN") == ["a  && b"]
    assert stages[1].all("USER") == ["10001:10001"]
