"""Exporters: OTLP/gRPC, OTLP/HTTP, stdout and file (traces, logs, metrics passed through), behind one
bounded, retrying queue."""

from __future__ import annotations

from sampler.config.models import ExporterConfig
from sampler.exporters.base import Sender
from sampler.exporters.file import FileSender
from sampler.exporters.otlp_grpc import GrpcSender
from sampler.exporters.otlp_http import HttpSender
from sampler.exporters.stdout import StdoutSender


def build_sender(config: ExporterConfig) -> Sender:
    if config.protocol == "grpc":
        return GrpcSender(config.endpoint, config.headers, config.compression, config.timeout, config.annotate,
                          config.tls, max_backoff=config.retry.max_interval, logs_endpoint=config.logs_endpoint)
    if config.protocol == "http":
        return HttpSender(config.endpoint, config.headers, config.compression, config.timeout, config.annotate,
                          config.tls, logs_endpoint=config.logs_endpoint)
    if config.protocol == "file":
        return FileSender(config.endpoint, config.annotate)
    return StdoutSender()
