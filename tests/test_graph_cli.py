"""`tailsampler graph` on a recorded file (tests/data/shop_traces.jsonl), compared with golden outputs.

The recording: trace 0af7… is frontend -> checkout -> payments -> postgresql (a database call), and
checkout -> shipping through a queue (PRODUCER/CONSUMER); trace 4bf9… fails at payments, whose call to
api.stripe.com (an uninstrumented peer) fails too; trace 5b8e… lost its frontend spans, so its checkout
server span is an orphan and the trace has no root."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sampler.tools.graph import dot, graph, mermaid

DATA = Path(__file__).resolve().parent / "data"
RECORDED = DATA / "shop_traces.jsonl"


def draw(fmt: str, *files: Path) -> str:
    out = io.StringIO()
    assert graph(list(files), fmt, out) == 0
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["mermaid", "dot", "json"])
def test_graph_of_the_recorded_shop_matches_its_golden_output(fmt: str) -> None:
    assert draw(fmt, RECORDED) == (DATA / f"shop_graph.{fmt}").read_text()


def test_the_golden_graph_says_what_the_recording_holds() -> None:
    """The golden JSON checked against the recording's story, so it cannot drift into whatever the code prints."""
    doc = json.loads((DATA / "shop_graph.json").read_text())
    edges = {(e["client"], e["server"], e["connection_type"]): (e["requests"], e["failed"]) for e in doc["edges"]}
    assert edges == {
        ("user", "frontend", "virtual_node"): (2, 0),
        ("frontend", "checkout", ""): (2, 0),
        ("checkout", "payments", ""): (3, 1),
        ("checkout", "shipping", "messaging_system"): (1, 0),
        ("payments", "postgresql", "database"): (1, 0),
        ("payments", "api.stripe.com", "virtual_node"): (1, 1),
    }
    orphaned = {n["id"]: n["orphan_spans"] for n in doc["nodes"] if n["orphan_spans"]}
    assert orphaned == {"checkout": 1}
    assert (doc["traces"], doc["traces_without_root"]) == (3, 1)
    assert {n["id"] for n in doc["nodes"] if n["virtual"]} == {"user", "postgresql", "api.stripe.com"}


def test_the_command_line_draws_and_refuses_unreadable_input(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "sampler", "graph", "--format", "dot", str(RECORDED)],
                        capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == (DATA / "shop_graph.dot").read_text()
    (tmp_path / "bad.jsonl").write_text('{"resourceSpans": []}\nnot json\n')
    bad = subprocess.run([sys.executable, "-m", "sampler", "graph", str(tmp_path / "bad.jsonl")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1 and bad.stdout == ""
    assert f"{tmp_path / 'bad.jsonl'}: cannot read recorded traces: line 2: invalid JSON" in bad.stderr


def test_a_trace_split_across_files_is_paired_whole(tmp_path: Path) -> None:
    lines = RECORDED.read_text().splitlines(keepends=True)
    (tmp_path / "one.jsonl").write_text("".join(lines[::2]))
    (tmp_path / "two.jsonl").write_text("".join(lines[1::2]))
    assert draw("json", tmp_path / "one.jsonl", tmp_path / "two.jsonl") == (DATA / "shop_graph.json").read_text()


HOSTILE = ['a"b', "<script>alert(1)</script>", "back\\slash", "x#y\nz"]


def _hostile_doc() -> dict[str, object]:
    nodes = [{"id": name, "virtual": False, "orphan_spans": 0} for name in HOSTILE]
    edges = [{"client": HOSTILE[0], "server": HOSTILE[1], "connection_type": "", "requests": 1, "failed": 0},
             {"client": HOSTILE[2], "server": HOSTILE[3], "connection_type": "", "requests": 1, "failed": 0}]
    return {"nodes": nodes, "edges": edges, "traces": 2, "traces_without_root": 0, "orphan_spans": 0}


def test_service_names_cannot_break_out_of_mermaid_or_dot_labels() -> None:
    assert mermaid(_hostile_doc()).splitlines()[2:6] == [
        '  n0["a#34;b"]',
        '  n1["#60;script#62;alert(1)#60;/script#62;"]',
        '  n2["back\\slash"]',
        '  n3["x#35;y z"]',
    ]
    assert dot(_hostile_doc()).splitlines()[5:9] == [
        '  "a\\"b" [label="a\\"b"];',
        '  "<script>alert(1)</script>" [label="<script>alert(1)</script>"];',
        '  "back\\\\slash" [label="back\\\\slash"];',
        '  "x#y z" [label="x#y z"];',
    ]

