#!/usr/bin/env bash
# Generates the Python messages, gRPC stubs and typed .pyi for every .proto under proto/.
# Usage: scripts/gen-proto.sh [OUT_DIR]   (default: gen/, the only home of generated code)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gen}"
python="${PYTHON:-.venv/bin/python}"
rm -rf "$out/spiral"
mkdir -p "$out"
mapfile -t protos < <(find proto -name '*.proto' | LC_ALL=C sort)
"$python" -m grpc_tools.protoc -Iproto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" "${protos[@]}"
