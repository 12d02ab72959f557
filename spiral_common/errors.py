"""Domain errors shared by every service; one interceptor maps them to gRPC status codes.

`reason` and the metadata keys are API (clients branch on them); the message is for humans.
This module never imports grpc: the core raises these, the transport maps them.
"""

from __future__ import annotations

# Reasons that more than one service raises or branches on.
CONTEXT_OVERFLOW = "CONTEXT_OVERFLOW"  # the prompt and max_tokens exceed a head's context window


class SpiralError(Exception):
    """Base of every error a client may see; carries an AIP-193 reason and metadata."""

    reason = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = {k: str(v) for k, v in metadata.items()}


class InvalidArgument(SpiralError):
    """The request is malformed; metadata names the offending `field`."""

    reason = "INVALID_ARGUMENT"


class Unauthenticated(SpiralError):
    """A call that needs credentials came without valid ones."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(SpiralError):
    """The caller is known but may not do this (a model its API key does not allow, another key's answer)."""

    reason = "PERMISSION_DENIED"


class NotFound(SpiralError):
    """The named thing (adapter version, job, answer id) does not exist."""

    reason = "NOT_FOUND"


class AlreadyExists(SpiralError):
    """The thing the call would create exists already (a second rating of one answer)."""

    reason = "ALREADY_EXISTS"


class FailedPrecondition(SpiralError):
    """The system is not in a state that allows the call (adapter for another base model)."""

    reason = "FAILED_PRECONDITION"


class ResourceExhausted(SpiralError):
    """A limit was reached."""

    reason = "RESOURCE_EXHAUSTED"


class Throttled(ResourceExhausted):
    """A limit that frees itself soon: retry after `retry_after_ms` (sent as RetryInfo, and HTTP Retry-After)."""

    reason = "THROTTLED"

    def __init__(self, message: str, *, retry_after_ms: int, **metadata: str) -> None:
        super().__init__(message, retry_after_ms=str(retry_after_ms), **metadata)
        self.retry_after_ms = retry_after_ms


class HeadBusy(Throttled):
    """The head's concurrency cap is reached; retry after `retry_after_ms`."""

    reason = "HEAD_BUSY"


class KeyRateLimited(Throttled):
    """A client API key sent requests faster than its rate; metadata names the `api_key`."""

    reason = "KEY_RATE_LIMITED"


class BudgetExceeded(ResourceExhausted):
    """A cloud call or training run would break the per-request cap or the daily pool."""

    reason = "BUDGET_EXCEEDED"

    def __init__(self, message: str, *, subject: str, limit_usd_micros: int, **metadata: str) -> None:
        super().__init__(message, subject=subject, limit_usd_micros=str(limit_usd_micros), **metadata)
        self.subject = subject
        self.limit_usd_micros = limit_usd_micros


class Unavailable(SpiralError):
    """The service cannot serve right now (model loading, upstream down); retry later."""

    reason = "UNAVAILABLE"


class DeadlineExceeded(SpiralError):
    """The caller's deadline passed before an answer was ready; the work stopped there."""

    reason = "DEADLINE_EXCEEDED"


class NotImplementedYet(SpiralError):
    """The RPC is part of the contract but its behaviour has not been built yet."""

    reason = "NOT_IMPLEMENTED"

    def __init__(self, rpc: str, missing: str) -> None:
        super().__init__(f"{rpc} is not implemented yet: {missing}", rpc=rpc)
