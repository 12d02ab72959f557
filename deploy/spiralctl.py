"""`python -m deploy.spiralctl up|down|status|logs`: what `make up`, `make down`, `make status` and `make logs` run."""

from __future__ import annotations

import argparse
import os
import sys

from deploy.platform import Platform, PlatformError
from spiral_common.config import ConfigError, load_settings


def _print_checks(platform: Platform) -> bool:
    checks = platform.checks()
    processes = platform.processes() if platform.supervisor_pid() else {}
    for check in checks:
        proc = processes.get(check.name, {})
        print(f"  {check.name:<14} {check.state:<28} {proc.get('statename', 'STOPPED'):<9} {check.detail}")
    return all(c.ok for c in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spiralctl", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "logs"])
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
            print(f"\n  OpenAI-compatible API  http://{s.host}:{s.gateway_port}/v1   (OpenAPI: /docs)")
            print(f"  gRPC ingress (Envoy)   {s.envoy_ingress_address}")
            print(f"  Envoy admin            http://127.0.0.1:{s.envoy_admin_port}")
            print(f"  logs                   {platform.run / 'logs'}   (make logs)")
        elif args.command == "down":
            platform.stop()
            print(f"Spiral is down ({s.profile} profile).")
        elif args.command == "status":
            if platform.supervisor_pid() is None:
                print(f"Spiral is not running ({s.profile} profile).")
                return 3
            return 0 if _print_checks(platform) else 1
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
