#!/usr/bin/env bash
# buf lint, and buf breaking against a git ref (SPIRAL_BREAKING_AGAINST: the gate passes the previous
# release tag; default the previous commit) when that ref has protos.
set -euo pipefail
cd "$(dirname "$0")/.."
buf=.venv/bin/buf
against="${SPIRAL_BREAKING_AGAINST:-HEAD~1}"
"$buf" lint
echo "buf lint: clean"
if git rev-parse -q --verify "$against^{commit}" >/dev/null && git cat-file -e "$against:proto" 2>/dev/null; then
  "$buf" breaking --against ".git#ref=$against"
  echo "buf breaking against $against: no breaking change"
else
  echo "buf breaking: skipped ($against has no protos)"
fi
