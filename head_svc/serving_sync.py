"""Keeps a head replica serving what the shared record says each head and track should serve."""

from __future__ import annotations

import asyncio
import logging

from head_svc.heads import HeadPool
from spiral_common.serving import ServingRecord

log = logging.getLogger(__name__)
READ_TIMEOUT_S = 5.0  # Redis out of reach must not hold a head's start (it serves what it has meanwhile)


async def converge(pool: HeadPool, record: ServingRecord) -> None:
    """Switch every slot that differs from the record (a version this head lacks is pulled first)."""
    try:
        desired = await asyncio.wait_for(record.desired(), READ_TIMEOUT_S)
    except Exception as exc:  # Redis away: keep serving what is loaded, and try again next time
        log.warning("the shared serving record is unreadable", extra={"error": str(exc)})
        return
    await pool.restore(desired)


async def follow(pool: HeadPool, record: ServingRecord, interval_s: float) -> None:
    """Converge every `interval_s` until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        await converge(pool, record)
