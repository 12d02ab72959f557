"""Builds the miner's gRPC server; `__main__` and the tests share it."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from miner_svc.mining import Miner, MinerConfig
from miner_svc.servicer import MinerServicer
from spiral.miner.v1 import miner_pb2, miner_pb2_grpc
from spiral_common.auth import Credentials
from spiral_common.config import Settings
from spiral_common.embedding import SentenceEncoder
from spiral_common.grpc_service import ServiceRuntime, build_server
from spiral_common.pattern_set import PatternStore

SERVICE_NAME = miner_pb2.DESCRIPTOR.services_by_name["MinerService"].full_name


@dataclass
class MinerDeps:
    redis: Redis
    encoder: SentenceEncoder


def miner_config(settings: Settings) -> MinerConfig:
    return MinerConfig(
        min_cluster_size=settings.miner.miner_min_cluster_size,
        min_agreement=settings.miner.miner_min_agreement,
        max_error=settings.router.pattern_max_error,
        threshold=settings.router.pattern_threshold,
        pattern_ttl_s=settings.miner.miner_pattern_ttl_s,
        max_prompts=settings.miner.miner_max_prompts,
        retire_bad_ratings=settings.miner.miner_retire_bad_ratings,
        retire_bad_share=settings.miner.miner_retire_bad_share,
    )


def build_miner(settings: Settings, deps: MinerDeps) -> Miner:
    """The mining run as the Mine RPC and the job queue's mine job both call it."""
    return Miner(deps.redis, deps.encoder, prefix=settings.redis.redis_prefix, config=miner_config(settings))


def create_server(
    settings: Settings, deps: MinerDeps, *, port: int | None = None, credentials: Credentials | None = None
) -> ServiceRuntime:
    """The miner's server; Mine (it publishes and retires patterns) needs the admin or the service token."""
    servicer = MinerServicer(
        build_miner(settings, deps),
        PatternStore(deps.redis, prefix=settings.redis.redis_prefix),
        deps.encoder,
        miner_config(settings).min_confidence,
    )
    return build_server(
        domain="miner.spiral",
        host=settings.miner.miner_addr.host,
        port=settings.miner.miner_addr.port if port is None else port,
        service_names=[SERVICE_NAME],
        add_servicers=lambda server: miner_pb2_grpc.add_MinerServiceServicer_to_server(servicer, server),
        protected=[f"/{SERVICE_NAME}/Mine"],
        credentials=credentials,
    )
