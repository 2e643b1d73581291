"""TLS for the receivers and for the connections tailsampler makes, with certificates re-read when
their files change, so a rotated certificate (cert-manager, a renewed Secret) needs no restart."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import grpc

from sampler.config.models import TlsClient, TlsServer


class Files:
    """A set of files, and whether any of them changed since the last look."""

    def __init__(self, *paths: str | None) -> None:
        self.paths = [p for p in paths if p]
        self.state = self._state()

    def _state(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for p in self.paths:
            try:
                st = os.stat(p)
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((0, 0, 0))
        return tuple(out)

    def changed(self) -> bool:
        now = self._state()
        if now == self.state:
            return False
        self.state = now
        return True


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def server_context(cfg: TlsServer) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    if cfg.client_ca_file:
        ctx.load_verify_locations(cfg.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def reload_server_context(ctx: ssl.SSLContext, cfg: TlsServer) -> None:
    """New handshakes use the re-read certificate; connections already open keep theirs."""
    ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    if cfg.client_ca_file:
        ctx.load_verify_locations(cfg.client_ca_file)


def grpc_server_credentials(cfg: TlsServer) -> grpc.ServerCredentials:
    """Credentials that gRPC asks for again at each new connection; they re-read changed files."""
    files = Files(cfg.cert_file, cfg.key_file, cfg.client_ca_file)

    def configuration() -> grpc.ServerCertificateConfiguration:
        key, cert = _read(cfg.key_file), _read(cfg.cert_file)
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=_read(cfg.client_ca_file))

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        return configuration() if files.changed() else None

    return grpc.dynamic_ssl_server_credentials(configuration(), fetch,
                                               require_client_authentication=cfg.client_ca_file is not None)


def grpc_channel_credentials(cfg: TlsClient) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=_read(cfg.ca_file), private_key=_read(cfg.key_file), certificate_chain=_read(cfg.cert_file)
    )


def client_context(cfg: TlsClient) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cfg.ca_file)
    if cfg.cert_file and cfg.key_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    return ctx
