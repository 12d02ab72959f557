"""Builds the router's gRPC server and its cascade; `__main__` and the tests share it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from redis.asyncio import Redis

from router_svc.cache import AdapterVersions, AnswerCache
from router_svc.cascade import Cascade
from router_svc.cloud import CloudFallback, ProviderClient
from router_svc.council import Council
from router_svc.embedding_batcher import BatchEncoder, EmbeddingBatcher
from router_svc.heads_client import HeadClient
from router_svc.metrics import RouterMetrics
from router_svc.mined import PatternMatcher
from router_svc.patterns import RegexPatterns
from router_svc.servicer import AdminServicer, RouterServicer
from router_svc.tiers.base import CascadeTier
from router_svc.tiers.cache import CacheTier
from router_svc.tiers.cloud import CloudTier
from router_svc.tiers.council import CouncilTier
from router_svc.tiers.head import HeadTier
from router_svc.tiers.pattern import PatternTier
from spiral.router.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc
from spiral_common.api_keys import ApiKeyStore, ClientAuth, KeyRateLimiter, RequestCounts
from spiral_common.budget import BudgetLedger, utc_now
from spiral_common.chat import limits_from
from spiral_common.config import Settings
from spiral_common.enums import Track
from spiral_common.grpc_service import ServiceRuntime, build_server, service_registry
from spiral_common.logs import LogRate
from spiral_common.pattern_set import PatternStore
from spiral_common.specs import CloudProvider, council_members, load_heads
from spiral_common.traffic import TrafficBounds, TrafficLog

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name


@dataclass
class RouterDeps:
    """What the router talks to: the heads, Redis, and the cloud (client and providers that have keys)."""

    heads: HeadClient
    redis: Redis  # the state server
    cloud_client: ProviderClient
    providers: list[CloudProvider]
    admin_token: str = ""
    clock: Callable[[], datetime] = field(default=utc_now)
    # The answer cache's server (None: the state server, as in the tests).
    cache_redis: Redis | None = None
    # Builds the sentence encoder for mined patterns (called once, when the first live pattern set appears).
    encoder_factory: Callable[[], BatchEncoder] | None = None


def default_encoder() -> BatchEncoder:
    from spiral_common.embedding import SentenceEncoder  # onnxruntime: imported only when patterns exist

    return SentenceEncoder(threads=1)


def create_server(settings: Settings, deps: RouterDeps, *, port: int | None = None) -> ServiceRuntime:
    registry = service_registry()
    metrics = RouterMetrics(registry)
    ledger = BudgetLedger(
        deps.redis,
        prefix=settings.redis.redis_prefix,
        pool_usd_micros=settings.budget.daily_pool_usd_micros,
        reservation_ttl_s=settings.budget.budget_reservation_ttl_s,
        clock=deps.clock,
    )
    traffic = TrafficLog(
        deps.redis,
        prefix=settings.redis.redis_prefix,
        max_entries=settings.router.traffic_log_max_entries,
        bounds=TrafficBounds(
            max_entries=settings.router.traffic_log_max_entries,
            max_age_s=settings.router.traffic_log_max_age_days * 86400,
            max_bytes=settings.router.traffic_log_max_mb * 1024 * 1024,
            max_entry_bytes=settings.router.traffic_log_max_entry_kb * 1024,
        ),
        queue_size=settings.router.traffic_log_queue_size,
        on_event=lambda event: metrics.traffic_log.labels(event).inc(),
    )
    track = Track.from_label(settings.router.track)
    cache = AnswerCache(
        deps.cache_redis or deps.redis,
        prefix=settings.redis.redis_prefix,
        track=track.label,
        ttl_s=settings.router.cache_ttl_s,
        versions=deps.redis,
    )
    council = Council(
        deps.heads,
        council_members(settings.router.council_heads, load_heads(settings.head.heads_file)),
        deadline_s=settings.router.council_deadline_s,
        threshold=settings.router.council_threshold,
        length_weight=settings.router.council_length_weight,
        diversity_weight=settings.router.council_diversity_weight,
    )
    matcher = PatternMatcher(
        RegexPatterns(deps.clock),
        PatternStore(deps.redis, prefix=settings.redis.redis_prefix),
        deps.encoder_factory or default_encoder,
        batcher_factory=lambda encoder: EmbeddingBatcher(
            encoder,
            window_s=settings.router.pattern_batch_window_ms / 1000,
            max_batch=settings.router.pattern_batch_max,
            encoder_threads=settings.router.pattern_encoder_threads,
            cache_entries=settings.router.pattern_embedding_cache_size,
            observer=metrics,
        ),
        reload_interval_s=settings.router.pattern_reload_interval_s,
        on_load=metrics.pattern_set_loaded,
    )
    cloud = CloudFallback(
        deps.providers, deps.cloud_client, ledger, per_request_cap_usd_micros=settings.budget.per_request_cap_usd_micros
    )
    # The cascade, cheapest first. A council of one has no vote: its head streams its answer directly, and the
    # request ends there (a lone head's answer is not second-guessed by the cloud).
    tiers: list[CascadeTier] = [
        CacheTier(cache, metrics),
        PatternTier(matcher, settings.router.pattern_threshold, settings.router.pattern_max_error),
    ]
    if len(council.members) == 1:
        tiers.append(HeadTier(deps.heads, council.members[0]))
    else:
        council_tier = CouncilTier(council, metrics, never_recheck_s=settings.router.council_never_recheck_s)
        tiers += [council_tier, CloudTier(cloud, metrics)]
    cascade = Cascade(
        track=track,
        tiers=tiers,
        cache=cache,
        traffic=traffic,
        metrics=metrics,
        answer_log=LogRate(settings.router.answer_log_per_s),
    )
    metrics.budget_pool.set(settings.budget.daily_pool_usd_micros / 1e6)
    keys = ApiKeyStore(deps.redis, prefix=settings.redis.redis_prefix)
    counts = RequestCounts(deps.redis, keys)
    router = RouterServicer(
        cascade,
        council,
        traffic,
        limits_from(settings),
        metrics,
        ClientAuth(keys, mode=settings.client_auth, admin_token=deps.admin_token),
        KeyRateLimiter(deps.redis, keys, prefix=settings.redis.redis_prefix, counts=counts),
    )
    admin = AdminServicer(
        ledger,
        deps.admin_token,
        settings.budget.per_request_cap_usd_micros,
        deps.heads,
        AdapterVersions(deps.redis, prefix=settings.redis.redis_prefix, cache=deps.cache_redis),
        settings,
        keys,
        counts,
    )

    def add(server):  # type: ignore[no-untyped-def]
        router_pb2_grpc.add_RouterServiceServicer_to_server(router, server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)

    runtime = build_server(
        domain="router.spiral",
        host=settings.router.router_addr(settings.router.track).host,
        port=settings.router.router_addr(settings.router.track).port if port is None else port,
        service_names=[ROUTER_SERVICE, ADMIN_SERVICE],
        add_servicers=add,
        registry=registry,
    )
    # On SIGTERM, after the last call: the traffic queue and the keys' request counts are written out.
    runtime.background_stops += [traffic.close, counts.close]
    return runtime
