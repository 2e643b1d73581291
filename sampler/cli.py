"""The `tailsampler` command: run | validate | simulate | graph | schema | demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sampler import __version__
from sampler.config.yamlfile import ConfigError
from sampler.server import log_setup
from sampler.server.settings import DEFAULT_CONFIG_ENV, load_config
from sampler.tools.validate import validate_file


def _event_loop() -> None:
    """uvloop for the servers; the standard loop still works where uvloop is unavailable."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_run(args: argparse.Namespace) -> int:
    from sampler.server.app import App, StartupError, Worker
    from sampler.server.workers import GroupStatus, parse_worker_of, supervise

    path = args.config or os.environ.get(DEFAULT_CONFIG_ENV)
    try:
        loaded = load_config(Path(path) if path else None)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    if args.workers > 1:
        if loaded.config.peers.enabled:
            print("--workers and peers cannot be combined in this version", file=sys.stderr)
            return 1
        run_args = ["--log-format", args.log_format] + (["--config", path] if path else [])
        log_setup.setup("debug" if args.debug else loaded.config.log_level, args.log_format)
        return supervise(run_args + (["--debug"] if args.debug else []), args.workers)
    worker = None
    if args.worker_of:
        index, peers = parse_worker_of(args.worker_of)
        status = GroupStatus(args.worker_status) if args.worker_status is not None else None
        worker = Worker(index, peers, status.problem if status is not None else None)
    log_setup.setup("debug" if args.debug else loaded.config.log_level, args.log_format)
    _event_loop()
    try:
        asyncio.run(App(loaded, worker=worker).run_until_stopped())
    except (StartupError, OSError) as exc:
        print(f"tailsampler: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for name in args.paths:
        problems = validate_file(Path(name))
        if problems:
            failed = True
            for problem in problems:
                print(problem)
        else:
            print(f"{name}: ok")
    return 1 if failed else 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from sampler.tools.simulate import simulate

    return simulate(Path(args.policies), [Path(f) for f in args.files], args.format)


def cmd_graph(args: argparse.Namespace) -> int:
    from sampler.tools.graph import graph

    return graph([Path(f) for f in args.files], args.format)


def cmd_schema(args: argparse.Namespace) -> int:
    from sampler.tools.schema import render

    sys.stdout.write(render(args.which))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sampler.tools.demo import run_demo

    log_setup.setup("warning")
    _event_loop()
    return asyncio.run(run_demo(args.seconds))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tailsampler", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tailsampler {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy until SIGTERM/SIGINT")
    run.add_argument("--config", help=f"config file (default: ${DEFAULT_CONFIG_ENV}, else built-in defaults)")
    run.add_argument("--debug", action="store_true", help="log every decision with its policy")
    run.add_argument("--log-format", choices=("text", "json"), default="text",
                     help="json: one JSON object per log line")
    run.add_argument("--workers", type=int, default=1,
                     help="run N processes sharing the receiver ports and sharding traces between them")
    run.add_argument("--worker-of", help=argparse.SUPPRESS)  # set by the --workers supervisor
    run.add_argument("--worker-status", type=int, help=argparse.SUPPRESS)  # ...and the group's health (an fd)
    run.set_defaults(func=cmd_run)
    validate = sub.add_parser("validate", help="check config and/or policy files")
    validate.add_argument("paths", nargs="+", metavar="PATH")
    validate.set_defaults(func=cmd_validate)
    simulate = sub.add_parser("simulate", help="decide recorded OTLP/JSON traces offline")
    simulate.add_argument("--policies", required=True, help="policies file")
    simulate.add_argument("--format", choices=("table", "jsonl"), default="table")
    simulate.add_argument("files", nargs="+", metavar="FILE")
    simulate.set_defaults(func=cmd_simulate)
    graph = sub.add_parser("graph", help="draw the service graph of recorded OTLP/JSON traces")
    graph.add_argument("--format", choices=("mermaid", "dot", "json"), default="mermaid")
    graph.add_argument("files", nargs="+", metavar="FILE")
    graph.set_defaults(func=cmd_graph)
    schema = sub.add_parser("schema", help="print the JSON Schema of the config or policies file")
    schema.add_argument("which", choices=("config", "policies"))
    schema.set_defaults(func=cmd_schema)
    demo = sub.add_parser("demo", help="run the proxy against generated traffic and show what it keeps")
    demo.add_argument("--seconds", type=float, default=10.0, help="how long to send traffic (default 10)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
