"""gRPC plumbing every service shares: the error/metrics/request-id interceptor, health, reflection, drain.

grpc.aio has no ready-made interceptor that both maps domain errors to rich statuses and counts
per-RPC metrics for streaming handlers, so this one wraps the method handlers itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from spiral_common import errors
from spiral_common.auth import Credentials
from spiral_common.logs import REQUEST_ID_HEADER, is_safe_request_id, new_request_id, request_id_var

log = logging.getLogger(__name__)

_STATUS_BY_ERROR: list[tuple[type[errors.SpiralError], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.NotImplementedYet, grpc.StatusCode.UNIMPLEMENTED),
]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def status_code_for(error: errors.SpiralError) -> grpc.StatusCode:
    for kind, code in _STATUS_BY_ERROR:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def to_rpc_status(error: errors.SpiralError, domain: str) -> grpc.Status:
    """A google.rpc.Status with exactly one ErrorInfo, plus QuotaFailure / RetryInfo where they apply."""
    code = status_code_for(error)
    details = [error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)]
    if isinstance(error, errors.BudgetExceeded):
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[error_details_pb2.QuotaFailure.Violation(subject=error.subject, description=error.message)]
            )
        )
    if isinstance(error, errors.Throttled):
        details.append(
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=error.retry_after_ms * 1_000_000))
        )
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=error.message, details=packed))


class RpcMetrics:
    """The go-grpc-prometheus metric set, on a registry of the service's own."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_service", "grpc_method", "grpc_type"]
        self.started = Counter("grpc_server_started_total", "RPCs started on the server.", labels, registry=registry)
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Time to complete an RPC, seconds.",
            [*labels, "grpc_code"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Sets the request id, checks the credentials of protected (state-changing) methods, maps domain errors to
    statuses, and counts every RPC."""

    def __init__(
        self,
        domain: str,
        metrics: RpcMetrics,
        protected: frozenset[str] = frozenset(),
        credentials: Credentials | None = None,
    ) -> None:
        self.domain = domain
        self.metrics = metrics
        self.protected = protected  # full method names, "/package.Service/Method"
        self.credentials = credentials or Credentials()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler
        _, service, method = details.method.split("/")
        request_id = dict(details.invocation_metadata or ()).get(REQUEST_ID_HEADER, "")
        if not is_safe_request_id(request_id):  # absent, or not one a log line should carry as it is
            request_id = new_request_id()
        denial: errors.SpiralError | None = None
        if details.method in self.protected:
            try:
                self.credentials.principal(details.invocation_metadata, method)
            except errors.Unauthenticated as exc:
                denial = exc  # raised inside the call's scope: counted, logged and mapped like any refusal
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, service, method, request_id, denial),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, service, method, request_id, denial),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _wrap_unary(
        self, behavior: Any, service: str, method: str, request_id: str, denial: errors.SpiralError | None
    ) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            scope = _CallScope(self, service, method, "unary", request_id, context)
            async with scope:
                if denial is not None:
                    raise denial
                return await behavior(request, context)

        return wrapper

    def _wrap_stream(
        self, behavior: Any, service: str, method: str, request_id: str, denial: errors.SpiralError | None
    ) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            scope = _CallScope(self, service, method, "server_stream", request_id, context)
            async with scope:
                if denial is not None:
                    raise denial
                async for item in behavior(request, context):
                    yield item

        return wrapper


class _CallScope:
    """One RPC's request-id context, metrics and error mapping."""

    def __init__(
        self,
        owner: ServiceInterceptor,
        service: str,
        method: str,
        kind: str,
        request_id: str,
        context: grpc.aio.ServicerContext,
    ) -> None:
        self.owner, self.context, self.request_id = owner, context, request_id
        self.labels = (service, method, kind)
        self.code = grpc.StatusCode.OK

    async def __aenter__(self) -> None:
        self.token = request_id_var.set(self.request_id)
        self.start = time.perf_counter()
        self.owner.metrics.started.labels(*self.labels).inc()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        try:
            if exc is None:
                return False
            if isinstance(exc, errors.SpiralError):
                self.code = status_code_for(exc)
                log.info("rpc failed", extra={"rpc": self.labels[1], "reason": exc.reason, "error": exc.message})
                status = to_rpc_status(exc, self.owner.domain)
                await self.context.abort(status.code, status.details, status.trailing_metadata)
            if isinstance(exc, asyncio.CancelledError):
                self.code = grpc.StatusCode.CANCELLED
                return False
            if isinstance(exc, grpc.aio.AbortError) or type(exc).__name__ == "AbortError":
                self.code = self.context.code() or grpc.StatusCode.UNKNOWN
                return False
            self.code = grpc.StatusCode.INTERNAL
            log.exception("unexpected error in %s", self.labels[1], exc_info=exc)
            status = to_rpc_status(errors.SpiralError("internal error", reason="INTERNAL"), self.owner.domain)
            await self.context.abort(status.code, status.details, status.trailing_metadata)
            return False
        finally:
            elapsed = time.perf_counter() - self.start
            log.info(
                "rpc", extra={"rpc": self.labels[1], "code": self.code.name, "duration_ms": round(elapsed * 1000, 2)}
            )
            self.owner.metrics.handled.labels(*self.labels, self.code.name).inc()
            self.owner.metrics.handling.labels(*self.labels, self.code.name).observe(elapsed)
            request_id_var.reset(self.token)


@dataclass
class ServiceRuntime:
    """A built server with its health servicer and metrics registry."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    registry: CollectorRegistry
    service_names: tuple[str, ...]
    # What to stop once the server has stopped, in order (background writers that drain what they hold).
    background_stops: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def start(self) -> None:
        """Start accepting calls, reporting NOT_SERVING until `set_serving(True)` (the health
        servicer would otherwise answer SERVING for the whole server from the first moment)."""
        await self.set_serving(False)
        await self.server.start()

    async def stop_background(self) -> None:
        """Stop the background work (after `server.stop`: no call is adding to it any more)."""
        for stop in self.background_stops:
            await stop()

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)


def service_registry() -> CollectorRegistry:
    """A metrics registry of the service's own, with the process metrics (memory, CPU, fds)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def build_server(
    *,
    domain: str,
    host: str,
    port: int,
    service_names: Iterable[str],
    add_servicers: Callable[[grpc.aio.Server], None],
    registry: CollectorRegistry | None = None,
    protected: Iterable[str] = (),
    credentials: Credentials | None = None,
) -> ServiceRuntime:
    """A grpc.aio server with the interceptor, health (NOT_SERVING until told) and reflection.

    `protected` names the methods that change state ("/package.Service/Method"): each call needs one of
    `credentials`' tokens (default: from the secrets, spiral_common.auth)."""
    registry = registry or service_registry()
    protected = frozenset(protected)
    if protected and credentials is None:
        credentials = Credentials.from_secrets()
    interceptor = ServiceInterceptor(domain, RpcMetrics(registry), protected, credentials)
    server = grpc.aio.server(
        interceptors=[interceptor],
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 16 * 1024 * 1024)],
    )
    add_servicers(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = tuple(service_names)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    return ServiceRuntime(server, bound, health_servicer, registry, names)


def run_event_loop(main: Coroutine[Any, Any, None], kind: str) -> None:
    """Run a service's main coroutine to its end on the event loop SPIRAL_EVENT_LOOP names: "uvloop" (libuv's
    loop; its callbacks, sockets and timers cost less CPU than the standard library's, which the router's
    Redis client and gRPC callbacks spend on every answer) or "asyncio". uvloop's subprocesses take no
    `process_group`: a service that spawns children that way (the trainer) stays on asyncio.run."""
    if kind == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def start_metrics_server(registry: CollectorRegistry, host: str, port: int) -> None:
    """Serve Prometheus text on its own port (0 skips it: tests read the registry directly)."""
    if port:
        start_http_server(port, addr=host, registry=registry)


async def serve_until_signalled(
    runtime: ServiceRuntime, grace_s: float, on_stop: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Report SERVING on a started server until SIGTERM/SIGINT, then drain: NOT_SERVING, then let in-flight
    calls finish within the grace period (calls still running then are cancelled), then stop the background
    work (which drains: the router's traffic log queue), then `on_stop`.

    The process exits within `grace_s + EXIT_MARGIN_S` of the signal whatever its threads do: a thread stuck in
    native code (a llama.cpp call, a blocking client) is abandoned with os._exit after that, and logged."""
    await runtime.set_serving(True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving", extra={"port": runtime.port})
    await stop.wait()
    log.info("draining", extra={"grace_s": grace_s})
    _exit_after(grace_s + EXIT_MARGIN_S)
    await runtime.health.enter_graceful_shutdown()
    await runtime.server.stop(grace_s)
    await runtime.stop_background()
    if on_stop is not None:
        await on_stop()
    log.info("stopped")


# After the grace, for on_stop and the interpreter's own shutdown; below the 5 s supervisord adds before it
# sends SIGKILL (deploy/render.py, stopwaitsecs), so that a stuck process still exits 0 and says what it left.
EXIT_MARGIN_S = 3.0


def _exit_after(seconds: float) -> None:
    """Exit the process `seconds` from now unless it has exited by itself (a daemon thread dies with it)."""

    def watchdog() -> None:
        time.sleep(seconds)
        stuck = [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
        log.warning("exiting with threads still running, abandoned", extra={"threads": stuck})
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(0)

    threading.Thread(target=watchdog, name="exit-watchdog", daemon=True).start()


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a failed call, when the server sent one."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info
    return None


_ERROR_BY_STATUS: dict[grpc.StatusCode, type[errors.SpiralError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNIMPLEMENTED: errors.SpiralError,
}


def error_from_rpc(exc: grpc.aio.AioRpcError, upstream: str) -> errors.SpiralError:
    """Re-raise an upstream's failure as our own domain error, keeping its reason and metadata.

    Client mistakes (bad argument, not found...) pass through unchanged; anything else means the
    upstream is unusable right now, which is UNAVAILABLE for our caller."""
    info = error_info(exc)
    reason = info.reason if info else exc.code().name
    metadata = dict(info.metadata) if info else {}
    kind = _ERROR_BY_STATUS.get(exc.code())
    if kind is None or kind is errors.SpiralError:
        return errors.Unavailable(
            f"{upstream} failed: {exc.code().name}: {exc.details()}",
            reason=f"{upstream.upper()}_UNAVAILABLE",
            upstream_code=exc.code().name,
            upstream_reason=reason,
        )
    return kind(exc.details() or reason, reason=reason, **metadata)
