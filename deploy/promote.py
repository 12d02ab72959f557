"""Canary promotion: compare the canary router with main over a window, then promote or roll back.

`make promote` (python -m deploy.promote) reads both routers' numbers from Prometheus over
--window: server-error ratio, p95 answer latency, cloud-fallback ratio, and the share of bad
feedback on each router's answers. If the canary holds, its adapter is loaded on main and the
canary weight returns to the profile's default; if not, the canary is rolled back to main's
adapter. With too little canary traffic nothing happens. Every decision is logged with its numbers.
With --every SECONDS it checks on a schedule instead of once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Protocol

import grpc

from spiral.head.v1 import head_pb2, head_pb2_grpc
from spiral.router.v1 import admin_pb2, admin_pb2_grpc
from spiral_common.config import ConfigError, Settings, load_settings
from spiral_common.enums import BOTH_TRACKS, Track
from spiral_common.logs import configure_logging
from spiral_common.specs import secret

log = logging.getLogger("promote")
SERVER_ERRORS = "INTERNAL|UNKNOWN|UNAVAILABLE|DEADLINE_EXCEEDED|DATA_LOSS"


@dataclass(frozen=True)
class RouterStats:
    requests: float
    error_ratio: float
    p95_s: float
    cloud_ratio: float
    bad_feedback_ratio: float


@dataclass(frozen=True)
class PromotionPolicy:
    """How much worse than main the canary may be and still be promoted."""

    min_requests: float = 20
    max_error_ratio_increase: float = 0.01
    max_p95_ratio: float = 1.25
    max_cloud_ratio_increase: float = 0.05
    max_bad_feedback_increase: float = 0.05


@dataclass(frozen=True)
class Decision:
    action: str  # "promote", "rollback" or "wait"
    reasons: list[str] = field(default_factory=list)


def decide(main: RouterStats, canary: RouterStats, policy: PromotionPolicy) -> Decision:
    if canary.requests < policy.min_requests:
        return Decision("wait", [f"canary served {canary.requests:.0f} requests, fewer than {policy.min_requests:.0f}"])
    failures = []
    if canary.error_ratio > main.error_ratio + policy.max_error_ratio_increase:
        failures.append(f"error ratio {canary.error_ratio:.3f} vs main {main.error_ratio:.3f}")
    if main.p95_s > 0 and canary.p95_s > main.p95_s * policy.max_p95_ratio:
        failures.append(f"p95 {canary.p95_s * 1000:.0f} ms vs main {main.p95_s * 1000:.0f} ms")
    if canary.cloud_ratio > main.cloud_ratio + policy.max_cloud_ratio_increase:
        failures.append(f"cloud ratio {canary.cloud_ratio:.3f} vs main {main.cloud_ratio:.3f}")
    if canary.bad_feedback_ratio > main.bad_feedback_ratio + policy.max_bad_feedback_increase:
        failures.append(f"bad feedback {canary.bad_feedback_ratio:.3f} vs main {main.bad_feedback_ratio:.3f}")
    if failures:
        return Decision("rollback", failures)
    return Decision("promote", ["the canary holds on errors, p95, cloud ratio and feedback"])


class MetricsSource(Protocol):
    def stats(self, router: str, window: str) -> RouterStats: ...


class PrometheusSource:
    """Each router's numbers over a window, from the platform's Prometheus."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def _scalar(self, query: str) -> float:
        url = f"{self.base_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        with urllib.request.urlopen(url, timeout=10) as reply:
            result = json.loads(reply.read())["data"]["result"]
        value = float(result[0]["value"][1]) if result else 0.0
        return 0.0 if value != value else value  # NaN (no data) counts as 0

    def stats(self, router: str, window: str) -> RouterStats:
        job = f'job="spiral-router-{router}"'
        calls = f'grpc_server_handled_total{{{job},grpc_method=~"Orchestrate|OrchestrateStream"}}'
        requests = self._scalar(f"sum(increase({calls}[{window}]))")
        errors = self._scalar(f'sum(increase({calls[:-1]},grpc_code=~"{SERVER_ERRORS}"}}[{window}]))')
        answers = self._scalar(f"sum(increase(spiral_router_requests_total{{{job}}}[{window}]))")
        cloud = self._scalar(f'sum(increase(spiral_router_requests_total{{{job},tier="cloud"}}[{window}]))')
        # Either router takes a rating, for the track that gave the answer; only the routers' own series count.
        rated = f'spiral_feedback_total{{job=~"spiral-router-(main|canary)",track="{router}"'
        feedback = self._scalar(f"sum(increase({rated}}}[{window}]))")
        bad = self._scalar(f'sum(increase({rated},rating="bad"}}[{window}]))')
        buckets = f"spiral_router_request_duration_seconds_bucket{{{job}}}"
        p95 = self._scalar(f"histogram_quantile(0.95, sum by (le) (rate({buckets}[{window}])))")
        return RouterStats(
            requests=requests,
            error_ratio=errors / requests if requests else 0.0,
            p95_s=p95,
            cloud_ratio=cloud / answers if answers else 0.0,
            bad_feedback_ratio=bad / feedback if feedback else 0.0,
        )


class Platform(Protocol):
    def adapter_versions(self) -> tuple[str, str]: ...  # (main, canary)

    def reload(self, version: str, tracks: tuple[Track, ...]) -> None: ...

    def set_canary_weight(self, percent: int) -> None: ...


class GrpcPlatform:
    """The admin calls through Envoy's internal listener, with the admin token."""

    def __init__(self, settings: Settings, token: str) -> None:
        self.channel = grpc.insecure_channel(settings.envoy.envoy_internal_addr)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.heads = head_pb2_grpc.HeadServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)

    def adapter_versions(self) -> tuple[str, str]:
        head = self.heads.GetHeadInfo(head_pb2.GetHeadInfoRequest(), metadata=self.metadata, timeout=10).heads[0]
        return head.adapter_version, head.canary_adapter_version

    def reload(self, version: str, tracks: tuple[Track, ...]) -> None:
        track = Track.CANARY.proto if tuple(tracks) == (Track.CANARY,) else None
        request = admin_pb2.ReloadAdapterRequest(version=version or "none", track=track)
        self.admin.ReloadAdapter(request, metadata=self.metadata, timeout=120)

    def set_canary_weight(self, percent: int) -> None:
        request = admin_pb2.SetCanaryWeightRequest(percent=percent)
        self.admin.SetCanaryWeight(request, metadata=self.metadata, timeout=10)


def check_once(
    source: MetricsSource, platform: Platform, policy: PromotionPolicy, window: str, default_weight: int
) -> Decision:
    """Decide from the numbers and act on the decision; log both."""
    main, canary = source.stats("main", window), source.stats("canary", window)
    main_version, canary_version = platform.adapter_versions()
    decision = decide(main, canary, policy)
    if main_version == canary_version and decision.action != "wait":
        decision = Decision("wait", [f"main and canary serve the same adapter ({main_version or 'base model'})"])
    log.info(
        "canary check",
        extra={"action": decision.action, "reasons": decision.reasons, "main": asdict(main),
               "canary": asdict(canary), "main_adapter": main_version, "canary_adapter": canary_version},
    )  # fmt: skip
    if decision.action == "promote":
        platform.reload(canary_version, BOTH_TRACKS)
        platform.set_canary_weight(default_weight)
    elif decision.action == "rollback":
        platform.reload(main_version, (Track.CANARY,))
    return decision


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="promote", description=__doc__)
    parser.add_argument("--window", default="1h", help="the comparison window (a Prometheus duration)")
    parser.add_argument("--every", type=float, default=0, help="check every N seconds instead of once")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"promote: {exc}", file=sys.stderr)
        return 2
    configure_logging("promote", settings.log_level)
    source = PrometheusSource(f"http://{settings.observability.prometheus_addr}")
    platform = GrpcPlatform(settings, secret("SPIRAL_ADMIN_TOKEN"))
    while True:
        decision = check_once(source, platform, PromotionPolicy(), args.window, settings.envoy.canary_weight_percent)
        print(f"{decision.action}: {'; '.join(decision.reasons)}")
        if not args.every:
            return 0
        time.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main())
