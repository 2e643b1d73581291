"""The README and docs/ stay true: every YAML example validates (tailsampler config and policies files
with `tailsampler validate`'s own check, Helm values against the chart's schema, Kubernetes manifests
against the Kubernetes schema), and every `make` target, `tailsampler` subcommand and flag, bench and
test path, source path, config key, metric name and relative link they name exists. The README stays
a front door: under 20,000 bytes.

A YAML block that is deliberately partial is marked `<!-- fragment: why -->` on the line before its
fence; only a few may be."""

from __future__ import annotations

import argparse
import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from sampler.cli import build_parser
from sampler.tools.schema import config_schema
from sampler.tools.validate import validate_file

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "tailsampler"
README = ROOT / "README.md"
PAGES = sorted([README, ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])
README_MAX_BYTES = 20_000
MAX_FRAGMENTS = 3
KUBE_VERSION = "1.33"

FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
FRAGMENT = re.compile(r"<!--\s*fragment\b")
INLINE_CODE = re.compile(r"`([^`\n]+)`")


# --- reading the pages -------------------------------------------------------------------------------


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence
    lang: str
    text: str
    fragment: bool  # marked <!-- fragment --> on the line before

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> Iterator[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        indent = len(opened["indent"])
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        body = []
        j = i + 1
        while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        assert j < len(lines), f"{page.relative_to(ROOT)}:{i + 1}: unclosed code fence"
        yield Block(page, i + 1, opened["lang"], "\n".join(body) + "\n", bool(FRAGMENT.search(before)))
        i = j + 1


def prose(page: Path) -> str:
    """The page without its fenced blocks."""
    text = page.read_text(encoding="utf-8")
    return re.sub(r"^\s*```[\w-]*\s*\n.*?^\s*```\s*$", "", text, flags=re.S | re.M)


def code_snippets(page: Path) -> Iterator[str]:
    """Every inline code span, and every line of every shell block: where commands live."""
    yield from INLINE_CODE.findall(prose(page))
    for block in blocks(page):
        if block.lang in ("sh", "bash", "console", ""):
            yield from block.text.splitlines()


def all_snippets() -> list[tuple[Path, str]]:
    return [(page, snippet) for page in PAGES for snippet in code_snippets(page)]


def test_the_pages_exist_and_have_examples() -> None:
    for name in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md", "docs/configuration.md", "docs/policies.md",
                 "docs/operations.md", "docs/kubernetes.md", "docs/performance.md", "docs/reliability.md",
                 "docs/architecture.md"):
        assert (ROOT / name).is_file(), name
    assert sum(1 for page in PAGES for b in blocks(page) if b.lang == "yaml") >= 10


# --- (a) YAML examples -------------------------------------------------------------------------------


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _first_comment(text: str) -> str:
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    return first[1:].strip() if first.startswith("#") else ""


def _strip_helm_template(text: str) -> str:
    """A Helm template as the YAML it renders to, roughly: lines that are only an action go, and an
    inline action becomes a placeholder."""
    kept = [line for line in text.splitlines() if not re.fullmatch(r"\s*\{\{.*\}\}\s*", line)]
    return re.sub(r"\{\{.*?\}\}", "placeholder", "\n".join(kept))


def kind_of(block: Block) -> str:
    """What a YAML example is: fragment | helm-template | manifest | chart | helm-values | collector |
    tailsampler (a config or policies file)."""
    if block.fragment:
        return "fragment"
    label = _first_comment(block.text)
    if "{{" in block.text:
        return "helm-template"
    if label.endswith("Chart.yaml"):
        return "chart"
    if label.endswith("values.yaml"):
        return "helm-values"
    data = yaml.safe_load(block.text)
    if isinstance(data, dict) and "apiVersion" in data and "kind" in data:
        return "manifest"
    processors = data.get("processors") if isinstance(data, dict) else None
    if isinstance(data, dict) and "service" in data and not (isinstance(processors, dict) and any(
            str(k).startswith("tail_sampling") for k in processors)):
        return "collector"
    return "tailsampler"


def yaml_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page) if b.lang in ("yaml", "yml")]


def _validate_tailsampler(files: dict[str, str], tmp_path: Path) -> list[str]:
    """Write the files side by side (a config's policies_file: policies.yaml finds the default
    policies beside it unless given) and check each as `tailsampler validate` does."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "policies.yaml").write_text((ROOT / "policies" / "default.yaml").read_text())
    problems = []
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for name in files:
        problems += [str(p) for p in validate_file(tmp_path / name)]
    return problems


def _check_manifest(data: Any, where: Block) -> None:
    assert isinstance(data, dict), f"{where}: a manifest must be a mapping"
    for key in ("apiVersion", "kind", "metadata"):
        assert key in data, f"{where}: manifest without {key}"
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    try:
        kubernetes_validate.validate(data, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{where}: {exc.message}") from None
    except (kubernetes_validate.SchemaNotFoundError, FileNotFoundError):  # an unknown apiVersion or kind
        raise AssertionError(f"{where}: no Kubernetes {data['apiVersion']} {data['kind']}") from None


def _chart_values() -> tuple[dict[str, Any], dict[str, Any]]:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    return defaults, schema


def check_yaml_block(block: Block, tmp_path: Path) -> None:
    kind = kind_of(block)
    if kind == "fragment":
        yaml.safe_load(block.text)  # partial, but still YAML
    elif kind == "helm-template":
        _check_manifest(yaml.safe_load(_strip_helm_template(block.text)), block)
    elif kind == "manifest":
        for doc in yaml.safe_load_all(block.text):
            _check_manifest(doc, block)
    elif kind == "chart":
        chart = yaml.safe_load(block.text)
        ours = yaml.safe_load((CHART / "Chart.yaml").read_text())
        assert chart.get("apiVersion") == "v2" and chart.get("name") and chart.get("version"), f"{block}: Chart.yaml"
        for dep in chart.get("dependencies", []):
            if dep.get("name") == ours["name"]:
                assert dep.get("version") == ours["version"], f"{block}: depends on {ours['name']} {dep.get('version')}"
    elif kind == "helm-values":
        values = yaml.safe_load(block.text)
        if list(values) == ["tailsampler"]:  # a parent chart's values for the tailsampler dependency
            values = values["tailsampler"]
        defaults, schema = _chart_values()
        merged = _deep_merge(defaults, values)
        try:
            jsonschema.validate(merged, schema)
        except jsonschema.ValidationError as exc:
            raise AssertionError(f"{block}: Helm values: {exc.message}") from None
        # ...and what the ConfigMap will hold is a valid tailsampler config and policies file
        problems = _validate_tailsampler({
            "config.yaml": yaml.safe_dump(merged["config"]),
            "policies.yaml": yaml.safe_dump({"policies": merged["policies"]}),
        }, tmp_path)
        assert not problems, f"{block}: the values' config.yaml / policies.yaml: {problems}"
    elif kind == "collector":
        data = yaml.safe_load(block.text)
        assert "pipelines" in data["service"], f"{block}: a Collector config needs service.pipelines"
        for pipeline in data["service"]["pipelines"].values():
            for exporter in pipeline.get("exporters", []):
                assert exporter in data.get("exporters", {}), f"{block}: exporter {exporter} is not defined"
    else:
        problems = _validate_tailsampler({"example.yaml": block.text}, tmp_path)
        assert not problems, f"{block}: {problems}"


def test_every_yaml_example_is_valid(tmp_path: Path) -> None:
    found = yaml_blocks()
    for i, block in enumerate(found):
        check_yaml_block(block, tmp_path / str(i))
    kinds = {kind_of(b) for b in found}
    assert {"tailsampler", "helm-values", "chart", "helm-template"} <= kinds, kinds


def test_only_a_few_examples_are_marked_partial() -> None:
    marked = [str(b) for b in yaml_blocks() if b.fragment]
    assert len(marked) <= MAX_FRAGMENTS, f"too many YAML blocks marked <!-- fragment -->: {marked}"


def test_a_broken_yaml_example_would_fail(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key, a bad Helm value and an invalid manifest are caught."""
    page = ROOT / "docs" / "x.md"
    bad = [
        Block(page, 1, "yaml", "buffer:\n  decision_wiat: 5s\n", False),
        Block(page, 1, "yaml", "policies:\n  - {name: a, type: nonsense}\n", False),
        Block(page, 1, "yaml", "# values.yaml\nmode: sidecar-ish\n", False),
        Block(page, 1, "yaml", "# values.yaml\nconfig:\n  buffer: {max_traces: many}\n", False),
        Block(page, 1, "yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: nope}\n", False),
    ]
    for i, block in enumerate(bad):
        with pytest.raises(AssertionError):
            check_yaml_block(block, tmp_path / str(i))


# --- (b) make targets --------------------------------------------------------------------------------


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    variables: dict[str, str] = {}
    targets: set[str] = set()
    for line in text.splitlines():
        assigned = re.match(r"^([A-Z_]+)\s*[:?]?=\s*(.*)$", line)
        if assigned:
            variables[assigned[1]] = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m[1], ""), assigned[2]).strip()
            continue
        rule = re.match(r"^([^\s#:=][^:=]*):(?!=)", line)
        if rule:
            names = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m[1], ""), rule[1])
            targets.update(n for n in names.split() if not n.startswith("."))
            targets.update(n for n in names.split() if "/" in n)  # .venv/.installed-stamp
    return targets


def named_make_targets() -> list[tuple[Path, str]]:
    return [(page, t) for page, snippet in all_snippets() for t in re.findall(r"(?:^|[\s(`])make ([\w./-]+)", snippet)]


def test_every_make_target_named_exists() -> None:
    targets = make_targets()
    assert {"demo", "test", "lint", "bench", ".venv/.installed-stamp"} <= targets
    named = named_make_targets()
    assert len(named) >= 5
    missing = {f"{page.relative_to(ROOT)}: make {t}" for page, t in named if t not in targets}
    assert not missing, sorted(missing)


# --- (c) tailsampler subcommands and flags ----------------------------------------------------------


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


COMMAND = re.compile(r"(?:^|[\s`(\[\"])(?:\S*/)?(?:tailsampler|-m sampler) ([a-z][a-z-]*)(?P<rest>[^|&;#]*)")


def named_commands() -> list[tuple[Path, str, list[str]]]:
    out = []
    for page, snippet in all_snippets():
        for m in COMMAND.finditer(snippet.replace("\\|", "/")):
            out.append((page, m[1], re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", m["rest"])))
    return out


def test_every_tailsampler_command_and_flag_named_exists() -> None:
    commands = subparsers()
    named = named_commands()
    assert {c for _, c, _ in named} >= {"run", "validate", "simulate", "demo"}
    problems = set()
    for page, command, flags in named:
        if command not in commands:
            problems.add(f"{page.relative_to(ROOT)}: tailsampler {command}: no such command")
            continue
        for flag in flags:
            if flag not in commands[command]._option_string_actions:
                problems.add(f"{page.relative_to(ROOT)}: tailsampler {command} {flag}: no such option")
    assert not problems, sorted(problems)


# --- (d) paths: bench, tests, test names, sources ---------------------------------------------------


# (a path with a glob in it, sampler/pipeline/_*.pyx, is not one path: skipped)
TOP_DIRS = "sampler|bench|tests|policies|schemas|dashboards|helm|docker|docs"
PATH = re.compile(rf"(?<![\w/.])((?:{TOP_DIRS})/[\w./-]*\w)(?![\w./*-])")
# module paths given relative to sampler/ (architecture.md's map): pipeline/frames.py
PACKAGES = "cli|tools|server|receivers|exporters|sharding|security|pipeline|insight|policy|otlp|config"
MODULE = re.compile(rf"(?<![\w/.])((?:{PACKAGES})/[\w/]+\.pyx?)\b")
TEST_REF = re.compile(r"(tests/\w+\.py)?::(test_\w+)")


def test_every_path_named_exists() -> None:
    missing = set()
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for path in PATH.findall(text):
            if not (ROOT / path).exists():
                missing.add(f"{page.relative_to(ROOT)}: {path}")
        for path in MODULE.findall(text):
            if not (ROOT / "sampler" / path).exists():
                missing.add(f"{page.relative_to(ROOT)}: sampler/{path}")
    assert not missing, sorted(missing)


def named_tests() -> list[tuple[Path, str, str]]:
    """(page, file, test) for every `tests/file.py::test` and every `::test` following a file on its line."""
    out = []
    for page in PAGES:
        for line in page.read_text(encoding="utf-8").splitlines():
            current = None
            for m in TEST_REF.finditer(line):
                current = m[1] or current
                assert current, f"{page.relative_to(ROOT)}: ::{m[2]} without a test file before it: {line}"
                out.append((page, current, m[2]))
    return out


def test_every_test_named_exists() -> None:
    named = named_tests()
    assert len(named) >= 20
    missing = set()
    for page, file, test in named:
        path = ROOT / file
        if not path.is_file() or not re.search(rf"^\s*(?:async )?def {test}\(", path.read_text(), re.M):
            missing.add(f"{page.relative_to(ROOT)}: {file}::{test}")
    assert not missing, sorted(missing)


# --- config keys named in prose ----------------------------------------------------------------------


def schema_paths(schema: dict[str, Any], node: dict[str, Any] | None = None, prefix: str = "") -> set[str]:
    """Every dotted key path a JSON Schema allows (following $ref and anyOf)."""
    node = schema if node is None else node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return schema_paths(schema, schema.get("$defs", {}).get(name, {}), prefix)
    out: set[str] = set()
    for option in node.get("anyOf", []) + node.get("allOf", []) + node.get("oneOf", []):
        out |= schema_paths(schema, option, prefix)
    for key, sub in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        out.add(path)
        out |= schema_paths(schema, sub, path + ".")
    return out


def value_paths(data: Any, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            out.add(f"{prefix}{key}")
            out |= value_paths(value, f"{prefix}{key}.")
    return out


SECTIONS = ("memory_limit", "receivers", "buffer", "exporter", "policies_file", "admin", "peers",
            "shutdown_timeout", "log_level")
CONFIG_KEY = re.compile(rf"^(config\.)?((?:{'|'.join(SECTIONS)})(?:\.[a-z_]+)+)(?=$|[:= ])(?<!\.py)")


def test_every_config_key_named_exists() -> None:
    config_keys = schema_paths(config_schema())
    defaults, chart_schema = _chart_values()
    helm_keys = value_paths(defaults) | schema_paths(chart_schema)
    named = []
    for page in PAGES:
        for span in INLINE_CODE.findall(prose(page)):
            m = CONFIG_KEY.match(span)
            if m:
                named.append((page, m[1], m[2]))
    assert len(named) >= 20
    unknown = set()
    for page, helm, key in named:
        known = key in config_keys or (f"config.{key}" in helm_keys if helm else key in helm_keys)
        if not known:
            unknown.add(f"{page.relative_to(ROOT)}: {helm or ''}{key}")
    assert not unknown, sorted(unknown)


def test_every_config_key_is_in_the_reference() -> None:
    """docs/configuration.md's first YAML block lists every key of the config file; a key under one set
    to null there (tls: null, dns: null) is at least named on the page."""
    page = ROOT / "docs" / "configuration.md"
    reference = yaml.safe_load(next(b for b in blocks(page) if b.lang == "yaml").text)
    listed = value_paths(reference)
    nulls = {path for path in listed if _lookup(reference, path) is None}
    text = page.read_text(encoding="utf-8")
    missing = set()
    for path in schema_paths(config_schema()):
        if path in listed:
            continue
        parent, _, last = path.rpartition(".")
        if not (any(parent == n or parent.startswith(n + ".") for n in nulls) and last in text):
            missing.add(path)
    assert not missing, sorted(missing)


def _lookup(data: Any, path: str) -> Any:
    for part in path.split("."):
        data = data[part]
    return data


# --- (e) metrics -------------------------------------------------------------------------------------


def defined_metrics() -> set[str]:
    source = (ROOT / "sampler" / "server" / "metrics.py").read_text()
    return {name.removesuffix("_total") for name in re.findall(r"\"(tailsampler_\w+)\"", source)}


def _base(name: str) -> str:
    for suffix in ("_total", "_bucket", "_sum", "_count", "_created"):
        if name.endswith(suffix) and name.removesuffix(suffix) in defined_metrics():
            return name.removesuffix(suffix)
    return name


def test_every_metric_named_exists() -> None:
    defined = defined_metrics()
    assert len(defined) >= 30
    unknown = set()
    for page in PAGES:
        for name in re.findall(r"\btailsampler_[a-z_]*[a-z]", page.read_text(encoding="utf-8")):
            if _base(name) not in defined:
                unknown.add(f"{page.relative_to(ROOT)}: {name}")
    assert not unknown, sorted(unknown)


def test_every_metric_is_documented_in_operations() -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    documented = {_base(n) for n in re.findall(r"\btailsampler_[a-z_]*[a-z]", text)}
    assert not defined_metrics() - documented, sorted(defined_metrics() - documented)


# --- (f) links ---------------------------------------------------------------------------------------


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.*)$", prose(page), re.M)}


def test_every_relative_link_resolves() -> None:
    broken = set()
    checked = 0
    for page in PAGES:
        for target in LINK.findall(prose(page)):
            if re.match(r"^[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            checked += 1
            if not dest.exists():
                broken.add(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.add(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert checked >= 20
    assert not broken, sorted(broken)


# --- (g) the README stays short -----------------------------------------------------------------------


def test_readme_is_a_front_door() -> None:
    size = len(README.read_bytes())
    assert size < README_MAX_BYTES, f"README.md is {size} bytes; move detail to docs/"
    text = README.read_text(encoding="utf-8")
    for page in ("docs/configuration.md", "docs/operations.md", "docs/kubernetes.md", "docs/performance.md",
                 "docs/reliability.md", "docs/architecture.md", "docs/policies.md"):
        assert f"]({page}" in text, f"the README does not link {page}"
