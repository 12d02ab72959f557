"""The admin API (/admin/*): budget, client API keys, canary share and adapter reload; the router checks the
bearer token."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from google.protobuf import json_format

from gateway.schemas import CanaryBody
from gateway.state import AdminMetadata, Stubs
from spiral.router.v1 import admin_pb2

router = APIRouter(prefix="/admin")


@router.get("/budget", summary="Today's cloud and training spend against the daily pool (admin token)")
async def budget(stubs: Stubs, metadata: AdminMetadata) -> JSONResponse:
    reply = await stubs.admin.GetBudget(admin_pb2.GetBudgetRequest(), metadata=metadata)
    return JSONResponse(
        json_format.MessageToDict(reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    )


@router.get(
    "/keys", summary="Every client API key: its limits and today's spend, reservations and requests (admin token)"
)
async def keys(stubs: Stubs, metadata: AdminMetadata) -> JSONResponse:
    reply = await stubs.admin.ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=metadata)
    return JSONResponse(
        json_format.MessageToDict(reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    )


@router.get("/canary", summary="The share of router traffic Envoy sends to the canary (admin token)")
async def get_canary(stubs: Stubs, metadata: AdminMetadata) -> JSONResponse:
    reply = await stubs.admin.GetCanaryWeight(admin_pb2.GetCanaryWeightRequest(), metadata=metadata)
    return JSONResponse({"percent": reply.percent})


@router.post("/canary", summary="Change the canary share live, without restarting Envoy (admin token)")
async def set_canary(body: CanaryBody, stubs: Stubs, metadata: AdminMetadata) -> JSONResponse:
    reply = await stubs.admin.SetCanaryWeight(admin_pb2.SetCanaryWeightRequest(percent=body.percent), metadata=metadata)
    return JSONResponse({"percent": reply.percent, "previous_percent": reply.previous_percent})


@router.post("/reload", summary="Hot-reload an adapter on the heads (admin token); zero failed requests")
async def reload(
    stubs: Stubs, metadata: AdminMetadata, lora: str = "latest", target: Literal["all", "canary"] = "all"
) -> JSONResponse:
    reply = await stubs.admin.ReloadAdapter(
        admin_pb2.ReloadAdapterRequest(
            version=lora,
            target=admin_pb2.RELOAD_TARGET_CANARY if target == "canary" else admin_pb2.RELOAD_TARGET_ALL,
        ),
        metadata=metadata,
        timeout=120,
    )
    return JSONResponse(json_format.MessageToDict(reply, preserving_proto_field_name=True))
