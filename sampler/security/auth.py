"""Bearer-token authentication for the receivers. Tokens come from a file (one per non-empty line, so
a rotation can list old and new together) or an environment variable; the file is re-read when it
changes. Tokens are compared in constant time and never logged."""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

from sampler.config.models import Auth
from sampler.security.tls import Files

log = logging.getLogger("tailsampler.auth")


class Authenticator:
    def __init__(self, cfg: Auth) -> None:
        self.cfg = cfg
        self.files = Files(cfg.bearer_token_file)
        self.tokens = self._load()

    def _load(self) -> list[bytes]:
        tokens: list[bytes] = []
        if self.cfg.bearer_token_file:
            text = Path(self.cfg.bearer_token_file).read_text(encoding="utf-8")
            tokens += [line.strip().encode() for line in text.splitlines() if line.strip()]
        if self.cfg.bearer_token_env:
            value = os.environ.get(self.cfg.bearer_token_env, "").strip()
            if value:
                tokens.append(value.encode())
        if not tokens:
            raise ValueError("receivers.auth is set but no bearer token was found (file empty or variable unset)")
        return tokens

    def refresh(self) -> None:
        """Re-read the token file if it changed; a file that became unreadable keeps the old tokens."""
        if self.files.changed():
            try:
                self.tokens = self._load()
                log.info("bearer tokens reloaded (%d)", len(self.tokens))
            except (OSError, ValueError) as exc:
                log.error("bearer tokens not reloaded, keeping the previous ones: %s", exc)

    def check(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header value carries a valid bearer token."""
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        given = token.strip().encode()
        ok = False
        for expected in self.tokens:
            ok |= hmac.compare_digest(given, expected)  # look at every token: no timing hint
        return ok

    def header(self) -> str:
        """What this instance sends to its peers now (they share the configuration): a method, not a
        value to keep, since `refresh` may replace the tokens at any time."""
        return "Bearer " + self.tokens[0].decode()
