"""Who may change state: the bearer tokens every service checks on its state-changing RPCs.

Two secrets, both from the secrets env file (`make up` writes random ones into `run/<profile>/secrets.env`):
`SPIRAL_ADMIN_TOKEN` for operators (and the tools they run: `make promote`, `make evolution-once`,
`buf curl`), and `SPIRAL_SERVICE_TOKEN` for calls between services (a router switching the heads'
adapters, the trainer asking the miner to mine). A call carries one as `authorization: Bearer <token>`.
One interceptor (spiral_common.grpc_service) checks the methods each service names as protected, through
Envoy or directly on the service's port alike; with neither token set, those methods refuse every call.
Comparisons are constant-time; tokens are never logged.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from spiral_common.config import Settings
from spiral_common.errors import Unauthenticated
from spiral_common.specs import secret

AUTHORIZATION = "authorization"


@dataclass(frozen=True)
class Credentials:
    """The tokens a service accepts on its protected methods."""

    admin_token: str = ""
    service_token: str = ""

    @classmethod
    def from_secrets(cls) -> Credentials:
        return cls(secret("SPIRAL_ADMIN_TOKEN"), secret("SPIRAL_SERVICE_TOKEN"))

    def principal(self, metadata: Iterable[tuple[str, str | bytes]] | None, method: str) -> str:
        """ "admin" or "service" for a call carrying one of the tokens; Unauthenticated otherwise."""
        tokens = {"admin": self.admin_token, "service": self.service_token}
        if not any(tokens.values()):
            raise Unauthenticated(
                f"{method} changes state and is disabled: neither SPIRAL_ADMIN_TOKEN nor SPIRAL_SERVICE_TOKEN is set",
                reason="ADMIN_DISABLED",
            )
        token = presented_token(metadata)
        for name, expected in tokens.items():
            if matches(token, expected):
                return name
        raise Unauthenticated(
            f"{method} changes state: it needs `authorization: Bearer <SPIRAL_ADMIN_TOKEN or SPIRAL_SERVICE_TOKEN>`",
            reason="BAD_CREDENTIALS",
        )


def presented_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token of a call's `authorization: Bearer <token>` metadata ("" without one)."""
    header = next((v for k, v in metadata or () if k == AUTHORIZATION), "")
    header = header.decode(errors="replace") if isinstance(header, bytes) else header
    scheme, _, token = header.partition(" ")
    return token if scheme.lower() == "bearer" else ""


def matches(token: str, expected: str) -> bool:
    """Whether `token` is `expected` (never when either is empty), compared in constant time."""
    return bool(token and expected) and hmac.compare_digest(token.encode(), expected.encode())


def secrets_file(settings: Settings, environ: Mapping[str, str] | None = None) -> Path:
    """The env file the secrets come from: SPIRAL_ENV_FILE when set, else the run directory's `secrets.env`
    (which `make up` creates)."""
    env = os.environ if environ is None else environ
    return Path(env["SPIRAL_ENV_FILE"]).resolve() if env.get("SPIRAL_ENV_FILE") else settings.run_path / "secrets.env"


def operator_token(settings: Settings) -> str:
    """The admin token, for the operator's tools (from the environment, else the platform's secrets file)."""
    return secret("SPIRAL_ADMIN_TOKEN", {"SPIRAL_ENV_FILE": str(secrets_file(settings)), **os.environ})


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that presents `token` (none when it is empty)."""
    return ((AUTHORIZATION, f"Bearer {token}"),) if token else ()
