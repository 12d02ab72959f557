#!/usr/bin/env bash
# Smoke test of a running platform's Envoy (like the verify.sh of envoyproxy/examples).
# Usage: envoy/verify.sh   (ENVOY_ADMIN and ENVOY_INGRESS override 127.0.0.1:9901 and 127.0.0.1:10000)
set -euo pipefail
cd "$(dirname "$0")/.."
admin="${ENVOY_ADMIN:-127.0.0.1:9901}"
ingress="${ENVOY_INGRESS:-127.0.0.1:10000}"
buf="${BUF:-.venv/bin/buf}"
step() { printf '== %s\n' "$*"; }

step "the admin interface answers, on loopback"
[[ "$admin" == 127.* || "$admin" == localhost:* ]] || { echo "admin address $admin is not loopback" >&2; exit 1; }
[[ "$(curl -sf "http://$admin/ready")" == LIVE* ]]

step "both routers pass Envoy's gRPC health checks"
hosts=$(curl -sf "http://$admin/clusters" | grep -cE '^router_(main|canary)::.*::health_flags::healthy$' || true)
[ "$hosts" -eq 2 ] || { echo "only $hosts of 2 routers are healthy in Envoy" >&2; exit 1; }

# Read whole before grep: `grep -q` stops early, and under pipefail a cut-off curl fails the script.
dump=$(curl -sf "http://$admin/config_dump")

step "the router route splits main/canary by runtime weights"
grep -q '"runtime_key_prefix": "spiral.routers"' <<<"$dump"

step "the router's route has no timeout (streams), honours grpc-timeout, and retries only calls no router answered"
grep -q '"timeout": "0s"' <<<"$dump"
grep -q '"grpc_timeout_header_max": "0s"' <<<"$dump"
grep -q '"retry_on": "connect-failure,refused-stream,reset"' <<<"$dump"

step "a gRPC call through the ingress, found by server reflection"
answer=$("$buf" curl --protocol grpc --http2-prior-knowledge \
  -d '{"messages":[{"role":"ROLE_USER","content":"what is 6*7?"}]}' \
  "http://$ingress/spiral.router.v1.RouterService/Orchestrate")
grep -q '6\*7 = 42' <<<"$answer"

step "the access log and stats see it"
stats=$(curl -sf "http://$admin/stats?filter=upstream_rq_completed")
grep -qE '^cluster\.(main_first|canary_first|router_main|router_canary)\.upstream_rq_completed: [1-9]' <<<"$stats"
echo "OK"
