"""Adapters that travel: a head pulls a published adapter from the trainer into its own cache, and loads it
only once the file matches the registry's record (SHA-256) and the base model it serves.

The trainer streams the file (TrainerService.FetchAdapter, service token); the head writes it beside its cache
under a temporary name, hashing as it goes, and renames it into place only when the hash and the size are the
recorded ones: a version in the cache is a verified copy, and a half-received or corrupt one is never seen.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Protocol

import grpc

from spiral.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from spiral_common.adapters import LATEST, NO_ADAPTER, AdapterRegistry
from spiral_common.auth import bearer
from spiral_common.errors import FailedPrecondition, InvalidArgument, Unavailable
from spiral_common.grpc_service import error_from_rpc

log = logging.getLogger(__name__)


class AdapterFetcher(Protocol):
    async def __call__(self, version: str) -> str:
        """Make `version` ("latest" or a name) present and verified in the cache; return the version it is."""
        ...


class TrainerAdapterFetcher:
    """Pulls adapters from the trainer's FetchAdapter into `cache` (an AdapterRegistry over the cache folder)."""

    def __init__(self, channel: grpc.aio.Channel, cache: AdapterRegistry, service_token: str, timeout_s: float = 600):
        self._stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        self._cache = cache
        self._metadata = bearer(service_token)
        self._timeout_s = timeout_s

    def _cached(self, version: str) -> bool:
        return version != LATEST and (self._cache.root / f"{version}.gguf").is_file()

    async def __call__(self, version: str) -> str:
        if version in (NO_ADAPTER, "") or self._cached(version):
            return version
        call = self._stub.FetchAdapter(
            trainer_pb2.FetchAdapterRequest(version=version), metadata=self._metadata, timeout=self._timeout_s
        )
        try:
            first = await call.read()
            if first is grpc.aio.EOF or not first.HasField("record"):
                raise Unavailable("the trainer sent no adapter record", reason="TRAINER_UNAVAILABLE")
            record = first.record
            resolved = record.adapter.version
            if self._cached(resolved):  # "latest" is a version this head already has
                return resolved
            target = self._cache.file_path(resolved)  # validates the name the trainer sent
            partial = target.with_name(target.name + ".partial")
            digest, size = hashlib.sha256(), 0
            with partial.open("wb") as fh:
                while (message := await call.read()) is not grpc.aio.EOF:
                    assert isinstance(message, trainer_pb2.FetchAdapterResponse)
                    digest.update(message.chunk)
                    size += len(message.chunk)
                    fh.write(message.chunk)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, "trainer") from exc
        finally:
            call.cancel()  # no-op once finished
        if digest.hexdigest() != record.sha256 or size != record.adapter.size_bytes:
            partial.unlink(missing_ok=True)
            raise FailedPrecondition(
                f"adapter {resolved!r} arrived with SHA-256 {digest.hexdigest()[:12]} and {size} bytes, not the "
                f"recorded {record.sha256[:12]} and {record.adapter.size_bytes}",
                reason="ADAPTER_CHECKSUM_MISMATCH",
                version=resolved,
            )
        target.with_name(target.name + ".sha256").write_text(record.sha256 + "\n")
        os.replace(partial, target)
        try:
            self._cache.info(resolved)  # the base-model check, on the file itself
        except (InvalidArgument, FailedPrecondition):
            target.unlink()
            raise
        log.info("adapter fetched", extra={"version": resolved, "size_bytes": size, "sha256": record.sha256})
        return resolved
