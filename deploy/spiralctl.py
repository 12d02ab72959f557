"""`python -m deploy.spiralctl up|down|status|logs`: what `make up`, `make down`, `make status` and `make logs` run."""

from __future__ import annotations

import argparse
import os
import sys

import grpc

from deploy.platform import Platform, PlatformError
from deploy.render import ensure_secrets_file
from spiral.router.v1 import admin_pb2, admin_pb2_grpc
from spiral_common.config import ConfigError, load_settings
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
    with grpc.insecure_channel(s.envoy.envoy_addr) as channel:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spiralctl", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "logs", "canary"])
    parser.add_argument("percent", nargs="?", type=int, help="canary: the new share of router traffic, percent")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for every service")
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
            print(f"  Envoy admin            http://{s.envoy.envoy_admin_addr}")
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
