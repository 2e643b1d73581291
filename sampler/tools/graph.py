"""`tailsampler graph`: the service graph of recorded OTLP/JSON traces, drawn offline.

Files are read exactly as `simulate` reads them (one document or JSON Lines, what the `file` exporter
writes), every span is grouped by trace before anything is counted, so each trace is paired whole,
as the proxy pairs it at decision time. Output: Mermaid (`graph LR`, for Markdown), Graphviz dot, or
the same JSON document as the admin server's /graph.json.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from sampler.insight.servicegraph import DATABASE, ServiceGraph, SpanRecord
from sampler.otlp.jsonconv import dict_to_protobuf
from sampler.otlp.wire import WireError
from sampler.tools.simulate import read_documents

FORMATS = ("mermaid", "dot", "json")
UNKNOWN_SERVICE = "unknown_service"  # what OpenTelemetry SDKs call a service without service.name
_PEER_KEYS = ("peer.service", "db.system", "server.address")
FAILED_COLOUR = "#c62828"
_MERMAID_SPECIAL = frozenset('"#<>&`')


class UnreadableInput(Exception):
    """A recorded file that cannot be read or is not OTLP/JSON; the message names the file."""


def _text(value: AnyValue) -> str | None:
    """An attribute value as Tempo stringifies it for a label; None for empty or composite values."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value or None
    if which == "bool_value":
        return "true" if value.bool_value else "false"
    if which in ("int_value", "double_value"):
        return str(getattr(value, which))
    return None


def _attrs(kvs: Iterable[KeyValue]) -> dict[str, str]:
    out: dict[str, str] = {}
    for kv in kvs:
        if kv.key in _PEER_KEYS and kv.key not in out:
            text = _text(kv.value)
            if text is not None:
                out[kv.key] = text
    return out


def span_records(request: ExportTraceServiceRequest) -> Iterator[tuple[bytes, SpanRecord]]:
    """(trace id, record) for every span of a request; peer attributes from the span, else its resource."""
    for rs in request.resource_spans:
        service = UNKNOWN_SERVICE
        for kv in rs.resource.attributes:
            if kv.key == "service.name":
                service = _text(kv.value) or UNKNOWN_SERVICE
                break
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                attrs = {**resource, **_attrs(span.attributes)}
                yield span.trace_id, SpanRecord(
                    service, span.span_id, span.parent_span_id, span.kind,
                    span.status.code == Status.STATUS_CODE_ERROR, span.start_time_unix_nano, span.end_time_unix_nano,
                    attrs.get("peer.service"), attrs.get("db.system"), attrs.get("server.address"))


def graph_of_files(files: Iterable[Path]) -> ServiceGraph:
    """Every span of every file grouped by trace, then each trace counted whole, in order of first
    appearance. Every trace in a file can be looked at, so each counts as kept: the exemplar of an
    edge is the last trace in the files that has a request on it."""
    traces: dict[bytes, list[SpanRecord]] = {}
    for path in files:
        try:
            for doc, _ in read_documents(path):
                request = ExportTraceServiceRequest.FromString(dict_to_protobuf(doc))
                for trace_id, record in span_records(request):
                    traces.setdefault(trace_id, []).append(record)
        except (OSError, UnicodeDecodeError, WireError) as exc:
            raise UnreadableInput(f"{path}: cannot read recorded traces: {exc}") from None
    graph = ServiceGraph()
    for trace_id, spans in traces.items():
        graph.add_trace(spans, trace_id, kept=True)
    return graph


def _edge_label(edge: Mapping[str, Any]) -> str:
    parts = [edge["connection_type"]] if edge["connection_type"] else []
    parts.append(f"{edge['requests']} req")
    if edge["failed"]:
        parts.append(f"{edge['failed']} failed")
    return ", ".join(parts)


def _node_label(node: Mapping[str, Any]) -> str:
    n = node["orphan_spans"]
    return node["id"] if not n else f"{node['id']} ({n} orphan span{'s' if n != 1 else ''})"


def _summary(doc: Mapping[str, Any]) -> str:
    return (f"traces: {doc['traces']}, without root: {doc['traces_without_root']}, "
            f"orphan spans: {doc['orphan_spans']}")


def _databases(doc: Mapping[str, Any]) -> set[str]:
    return {e["server"] for e in doc["edges"] if e["connection_type"] == DATABASE}


def _mermaid_text(text: str) -> str:
    """Text inside a quoted Mermaid label: Mermaid's decimal entity codes (`#35;`) for what would end
    the label or mark it up; line breaks become spaces."""
    text = text.replace("\r", " ").replace("\n", " ")
    return "".join(f"#{ord(ch)};" if ch in _MERMAID_SPECIAL else ch for ch in text)


def mermaid(doc: Mapping[str, Any]) -> str:
    """`graph LR`: databases as cylinders, virtual nodes as stadiums, orphaned services outlined
    dashed red, edges with failures red."""
    ids = {node["id"]: f"n{i}" for i, node in enumerate(doc["nodes"])}
    databases = _databases(doc)
    lines = ["graph LR", f"  %% {_summary(doc)}"]
    for node in doc["nodes"]:
        label = f'"{_mermaid_text(_node_label(node))}"'
        shape = f"[({label})]" if node["id"] in databases else f"([{label}])" if node["virtual"] else f"[{label}]"
        lines.append(f"  {ids[node['id']]}{shape}")
    for edge in doc["edges"]:
        lines.append(f'  {ids[edge["client"]]} -->|"{_mermaid_text(_edge_label(edge))}"| {ids[edge["server"]]}')
    orphaned = [ids[n["id"]] for n in doc["nodes"] if n["orphan_spans"]]
    if orphaned:
        lines.append(f"  classDef orphan stroke:{FAILED_COLOUR},stroke-width:2px,stroke-dasharray:4 2")
        lines.append(f"  class {','.join(orphaned)} orphan")
    failing = [str(i) for i, e in enumerate(doc["edges"]) if e["failed"]]
    if failing:
        lines.append(f"  linkStyle {','.join(failing)} stroke:{FAILED_COLOUR}")
    return "\n".join(lines) + "\n"


def _dot_id(text: str) -> str:
    """A quoted DOT string; `\\` must be doubled too, as labels give it meaning (`\\n`, `\\N`)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ") + '"'


def dot(doc: Mapping[str, Any]) -> str:
    databases = _databases(doc)
    lines = ["digraph services {", f"  // {_summary(doc)}", "  rankdir=LR;",
             '  node [shape=box, style=rounded, fontname="Helvetica"];', '  edge [fontname="Helvetica"];']
    for node in doc["nodes"]:
        attrs = [f"label={_dot_id(_node_label(node))}"]
        if node["id"] in databases:
            attrs.append("shape=cylinder")
        elif node["virtual"]:
            attrs.append('style="rounded,dashed"')
        if node["orphan_spans"]:
            attrs += [f'color="{FAILED_COLOUR}"', 'style="rounded,dashed,bold"']
        lines.append(f"  {_dot_id(node['id'])} [{', '.join(attrs)}];")
    for edge in doc["edges"]:
        attrs = [f"label={_dot_id(_edge_label(edge))}"]
        if edge["failed"]:
            attrs.append(f'color="{FAILED_COLOUR}"')
        lines.append(f"  {_dot_id(edge['client'])} -> {_dot_id(edge['server'])} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(doc: Mapping[str, Any], fmt: str) -> str:
    if fmt == "mermaid":
        return mermaid(doc)
    if fmt == "dot":
        return dot(doc)
    return json.dumps(doc, indent=2) + "\n"


def graph(files: list[Path], fmt: str, out: TextIO | None = None) -> int:
    """The `graph` command: 0 when drawn, 1 (with the reason on stderr) when a file is unreadable."""
    try:
        doc = graph_of_files(files).to_json()
    except UnreadableInput as exc:
        print(exc, file=sys.stderr)
        return 1
    (out or sys.stdout).write(render(doc, fmt))
    return 0
