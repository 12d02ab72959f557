"""The multi-host test's client, run inside a "host" (network namespace): `python -m tests.multihost.client
<command> ...` prints one JSON line. The test process itself stays outside every namespace."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from spiral.common.v1 import chat_pb2
from spiral.head.v1 import head_pb2, head_pb2_grpc


async def ask(gateway: str, prompts: list[str], max_tokens: int, timeout_s: float) -> list[int]:
    """Each prompt through the gateway, all at once: the HTTP status of each."""
    async with httpx.AsyncClient(base_url=f"http://{gateway}", timeout=timeout_s) as client:

        async def one(prompt: str) -> int:
            body = {"model": "spiral", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
            try:
                return (await client.post("/v1/chat/completions", json=body)).status_code
            except httpx.HTTPError:
                return 0

        return list(await asyncio.gather(*(one(p) for p in prompts)))


async def health(address: str, service: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def canary(address: str, token: str) -> dict[str, str]:
    """A head's canary adapter, and the adapter its canary generation says it used."""
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = head_pb2_grpc.HeadServiceStub(channel)
        info = await stub.GetHeadInfo(head_pb2.GetHeadInfoRequest(), metadata=metadata, timeout=10)
        request = head_pb2.GenerateRequest(
            head="precise",
            track="canary",
            messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content="Say hi.")],
            params=chat_pb2.GenerationParams(max_tokens=2, temperature=0.0, seed=1),
        )
        used = ""
        async for message in stub.Generate(request, metadata=metadata, timeout=60):
            if message.HasField("end"):
                used = message.end.adapter_version
    return {"serving": info.heads[0].canary_adapter_version, "generated_with": used}


async def reload(gateway: str, version: str, token: str) -> int:
    async with httpx.AsyncClient(base_url=f"http://{gateway}", timeout=120) as client:
        reply = await client.post(
            f"/admin/reload?lora={version}&target=canary", headers={"authorization": f"Bearer {token}"}
        )
        return reply.status_code


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ask")
    p.add_argument("gateway")
    p.add_argument("prompts", nargs="+")
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--timeout-s", type=float, default=200)
    p = sub.add_parser("health")
    p.add_argument("address")
    p.add_argument("service")
    p = sub.add_parser("canary")
    p.add_argument("address")
    p.add_argument("token")
    p = sub.add_parser("reload")
    p.add_argument("gateway")
    p.add_argument("version")
    p.add_argument("token")
    args = parser.parse_args()
    if args.command == "ask":
        result: object = asyncio.run(ask(args.gateway, args.prompts, args.max_tokens, args.timeout_s))
    elif args.command == "health":
        result = asyncio.run(health(args.address, args.service))
    elif args.command == "canary":
        result = asyncio.run(canary(args.address, args.token))
    else:
        result = asyncio.run(reload(args.gateway, args.version, args.token))
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
