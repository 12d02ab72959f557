"""`python -m deploy.spiralctl up|down|status|logs|canary|api-key|api-keys|revoke-api-key`: what `make up`,
`make down`, `make status`, `make logs`, `make set-canary-weight`, `make api-key`, `make api-keys` and
`make revoke-api-key` run."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime

import grpc

from deploy.platform import Platform, PlatformError
from deploy.render import ensure_secrets_file
from spiral.router.v1 import admin_pb2, admin_pb2_grpc
from spiral_common.api_keys import CACHE_TTL_S, ApiKeyStore
from spiral_common.config import ConfigError, Settings, load_settings
from spiral_common.errors import InvalidArgument
from spiral_common.redis_access import operator_client
from spiral_common.specs import secret


def _print_checks(platform: Platform) -> bool:
    checks = platform.checks()
    processes = platform.processes() if platform.supervisor_pid() else {}
    for check in checks:
        proc = processes.get(check.name, {})
        print(f"  {check.name:<14} {check.state:<28} {proc.get('statename', 'STOPPED'):<9} {check.detail}")
    return all(c.ok for c in checks)


def _canary(platform: Platform, percent: int | None) -> int:
    """Show or set the canary weight through the admin API (the token comes from the secrets file)."""
    s = platform.settings
    token = secret("SPIRAL_ADMIN_TOKEN", {"SPIRAL_ENV_FILE": str(ensure_secrets_file(s)), **os.environ})
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(s.envoy.envoy_internal_addr) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            if percent is None:
                reply = admin.GetCanaryWeight(admin_pb2.GetCanaryWeightRequest(), metadata=metadata, timeout=10)
                print(f"canary weight: {reply.percent} %")
            else:
                changed = admin.SetCanaryWeight(
                    admin_pb2.SetCanaryWeightRequest(percent=percent), metadata=metadata, timeout=10
                )
                print(f"canary weight: {changed.previous_percent} % -> {changed.percent} %")
        except grpc.RpcError as exc:
            print(f"spiralctl canary: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


async def _api_keys(settings: Settings, args: argparse.Namespace) -> int:
    """Create, list or revoke client API keys, in the platform's Redis (the routers need not be running)."""
    redis = operator_client(settings)  # as the operator: only it may create or revoke keys
    store = ApiKeyStore(redis, prefix=settings.redis.redis_prefix)
    try:
        if args.command == "api-keys":
            print(f"{'NAME':<24} {'DAILY_USD_MICROS':<17} {'RPS':<6} {'MODELS':<20} CREATED (UTC)")
            for key in await store.list():
                daily = "uncapped" if key.daily_usd_micros is None else str(key.daily_usd_micros)
                created = datetime.fromtimestamp(key.created_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
                allowed = ",".join(key.models) or "all"
                print(f"{key.name:<24} {daily:<17} {key.rps or 'none'!s:<6} {allowed:<20} {created}")
            return 0
        if not args.name:
            print(f"spiralctl {args.command}: --name is required", file=sys.stderr)
            return 2
        if args.command == "revoke-api-key":
            if not await store.revoke(args.name):
                print(f"spiralctl revoke-api-key: no API key named {args.name!r}", file=sys.stderr)
                return 1
            print(f"revoked {args.name!r}: the routers refuse it within {CACHE_TTL_S:g} s")
            return 0
        models = [m for m in (args.models or "").split(",") if m.strip()]
        key, token = await store.create(args.name, daily_usd_micros=args.daily_usd_micros, rps=args.rps, models=models)
        daily = "uncapped" if key.daily_usd_micros is None else f"{key.daily_usd_micros} micro-USD a day"
        print(
            f"API key {key.name!r}: cloud budget {daily}, rate {key.rps or 'unlimited'} rps, models "
            f"{', '.join(key.models) or 'all'}. Shown once; keep it secret (only its hash is stored):"
        )
        print(token)
        return 0
    except InvalidArgument as exc:
        print(f"spiralctl {args.command}: {exc.message}", file=sys.stderr)
        return 2
    finally:
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spiralctl", description=__doc__)
    parser.add_argument(
        "command", choices=["up", "down", "status", "logs", "canary", "api-key", "api-keys", "revoke-api-key"]
    )
    parser.add_argument("percent", nargs="?", type=int, help="canary: the new share of router traffic, percent")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for every service")
    parser.add_argument("--name", help="api-key, revoke-api-key: the key's name (metrics and refusals show it)")
    parser.add_argument(
        "--daily-usd-micros", type=int, help="api-key: the key's daily cloud budget, micro-dollars (default: uncapped)"
    )
    parser.add_argument("--rps", type=int, default=0, help="api-key: requests per second (default 0: no limit)")
    parser.add_argument("--models", help="api-key: the models it may use, comma-separated (default: all)")
    args = parser.parse_args(argv)
    try:
        platform = Platform(load_settings())
    except ConfigError as exc:
        print(f"spiralctl: {exc}", file=sys.stderr)
        return 2
    s = platform.settings
    try:
        if args.command == "up":
            platform.start(args.timeout)
            print(f"Spiral is up ({s.profile} profile):")
            _print_checks(platform)
            print(f"\n  OpenAI-compatible API  http://{s.gateway.gateway_addr}/v1   (OpenAPI: /docs)")
            print(f"  gRPC ingress (Envoy)   {s.envoy.envoy_addr}")
            print(f"  internal (operators)   {s.envoy.envoy_internal_addr}   (bearer token)")
            print(f"  Envoy admin            {s.envoy_admin_path}   (curl --unix-socket)")
            print(f"  logs                   {platform.run / 'logs'}   (make logs)")
        elif args.command == "down":
            platform.stop()
            print(f"Spiral is down ({s.profile} profile).")
        elif args.command == "status":
            if platform.supervisor_pid() is None:
                print(f"Spiral is not running ({s.profile} profile).")
                return 3
            return 0 if _print_checks(platform) else 1
        elif args.command == "canary":
            return _canary(platform, args.percent)
        elif args.command in ("api-key", "api-keys", "revoke-api-key"):
            return asyncio.run(_api_keys(s, args))
        elif args.command == "logs":
            logs = sorted(str(p) for p in (platform.run / "logs").glob("*.log"))
            if not logs:
                print(f"no logs under {platform.run / 'logs'}", file=sys.stderr)
                return 1
            os.execvp("tail", ["tail", "-n", "20", "-F", *logs])
    except PlatformError as exc:
        print(f"spiralctl {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
