#!/usr/bin/env bash
# Smoke test of a running platform's Envoy (like the verify.sh of envoyproxy/examples).
# Usage: envoy/verify.sh   (ENVOY_ADMIN_SOCKET, ENVOY_INGRESS and ENVOY_INTERNAL override run/default/envoy-admin.sock,
# 127.0.0.1:10000 and 127.0.0.1:10001)
set -euo pipefail
cd "$(dirname "$0")/.."
socket="${ENVOY_ADMIN_SOCKET:-run/default/envoy-admin.sock}"
ingress="${ENVOY_INGRESS:-127.0.0.1:10000}"
internal="${ENVOY_INTERNAL:-127.0.0.1:10001}"
buf="${BUF:-.venv/bin/buf}"
admin() { curl -sf --unix-socket "$socket" "http://envoy$1"; }
step() { printf '== %s\n' "$*"; }

step "the admin interface answers on its unix socket, which only its owner may open"
[ -S "$socket" ] || { echo "no admin socket at $socket" >&2; exit 1; }
[ "$(stat -c %a "$socket")" = 600 ] || { echo "admin socket $socket is not mode 600" >&2; exit 1; }
[[ "$(admin /ready)" == LIVE* ]]

step "both routers and every head pass Envoy's gRPC health checks"
clusters=$(admin /clusters)
hosts=$(grep -cE '^router_(main|canary)::.*::health_flags::healthy$' <<<"$clusters" || true)
[ "$hosts" -eq 2 ] || { echo "only $hosts of 2 routers are healthy in Envoy" >&2; exit 1; }
heads=$(grep -cE '^head::.*::health_flags::healthy$' <<<"$clusters" || true)
[ "$heads" -ge 1 ] || { echo "no head is healthy in Envoy" >&2; exit 1; }

dump=$(admin /config_dump)

step "the router route splits main/canary by runtime weights"
grep -q '"runtime_key_prefix": "spiral.routers"' <<<"$dump"

step "the router's route has no timeout (streams), honours grpc-timeout, and retries only calls no router answered"
grep -q '"timeout": "0s"' <<<"$dump"
grep -q '"grpc_timeout_header_max": "0s"' <<<"$dump"
grep -q '"retry_on": "connect-failure,refused-stream,reset"' <<<"$dump"

step "the heads' route retries on another head a call no head answered"
grep -q '"retry_on": "connect-failure,refused-stream,reset,unavailable"' <<<"$dump"

step "a gRPC call through the ingress, found by server reflection"
answer=$("$buf" curl --protocol grpc --http2-prior-knowledge \
  -d '{"messages":[{"role":"ROLE_USER","content":"what is 6*7?"}]}' \
  "http://$ingress/spiral.router.v1.RouterService/Orchestrate")
grep -q '6\*7 = 42' <<<"$answer"

step "the public ingress does not route an operator RPC; the internal listener wants a token"
if "$buf" curl --schema . --protocol grpc --http2-prior-knowledge -d '{"dry_run":true}' \
  "http://$ingress/spiral.miner.v1.MinerService/Mine" >/dev/null 2>&1; then
  echo "Mine went through the public ingress" >&2; exit 1
fi
refusal=$("$buf" curl --schema . --protocol grpc --http2-prior-knowledge -d '{"dry_run":true}' \
  "http://$internal/spiral.miner.v1.MinerService/Mine" 2>&1 || true)
grep -qi 'unauthenticated' <<<"$refusal" || { echo "Mine without a token was not refused: $refusal" >&2; exit 1; }

step "the access log and stats see it"
stats=$(admin "/stats?filter=upstream_rq_completed")
grep -qE '^cluster\.(main_first|canary_first|router_main|router_canary)\.upstream_rq_completed: [1-9]' <<<"$stats"
echo "OK"
