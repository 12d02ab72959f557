#!/usr/bin/env bash
# buf lint, and buf breaking against the previous commit when that commit has protos.
set -euo pipefail
cd "$(dirname "$0")/.."
buf=.venv/bin/buf
"$buf" lint
echo "buf lint: clean"
if git rev-parse -q --verify HEAD~1 >/dev/null && git cat-file -e HEAD~1:proto 2>/dev/null; then
  "$buf" breaking --against '.git#ref=HEAD~1'
  echo "buf breaking against HEAD~1: no breaking change"
else
  echo "buf breaking: skipped (the previous commit has no protos)"
fi
