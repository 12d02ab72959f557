#!/usr/bin/env bash
# `make images [ROLES="gateway-router miner head trainer"] [GPU=1] [TAG=<version>] [TORCH_INDEX=<url>]`: builds the project's images
# with podman, offline from any image registry. The two Debian bases (runtime, build) are made here with
# mmdebstrap and imported into podman; the images then install their Python packages from PyPI (or the
# mirror pip is configured with) during the build. Debian packages (podman, buildah, mmdebstrap, runc, ...) are installed when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

debs=(podman buildah mmdebstrap runc uidmap fuse-overlayfs slirp4netns)
missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then  # as scripts/bootstrap.sh does for the platform's own packages
  echo "images: installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

tag="${TAG:-$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')}"
roles="${ROLES:-gateway-router miner head trainer}"
# Limits and network for the build containers: this machine's defaults are above what runc accepts, and
# pip needs the host's network (no CNI network is configured here).
podman_build=(podman build --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 --network host)
# The host's pip configuration and CA certificates, during the build only (a proxy that re-signs TLS, a
# mirror): nothing of them stays in the images.
for file in /etc/pip.conf /etc/ssl/certs/ca-certificates.crt; do
  if [ -f "$file" ]; then podman_build+=(--volume "$file:$file:ro"); fi
done
components=main,contrib,non-free,non-free-firmware  # non-free: the CUDA toolkit and runtime of the GPU images

base() {  # base <image> <packages>
  if podman image exists "$1"; then return; fi
  echo "images: making $1 with mmdebstrap"
  mmdebstrap --quiet --variant=minbase --components="$components" --include="$2" bookworm - \
    | podman import --change 'CMD ["/bin/bash"]' - "$1" >/dev/null
}
base localhost/spiral-debian:bookworm python3,python3-venv,ca-certificates,libgomp1
base localhost/spiral-debian-build:bookworm python3,python3-venv,python3-dev,build-essential,cmake,git,ca-certificates,libgomp1

build() {  # build <image> <containerfile> [build args...]
  local image="$1" file="$2"
  shift 2
  echo "images: building $image"
  local started=$SECONDS
  "${podman_build[@]}" "$@" -f "$file" -t "$image" .
  echo "images: $image built in $((SECONDS - started)) s"
}
# Where the trainer's torch wheels come from (the Containerfile's default: download.pytorch.org's CPU index).
# When it cannot be reached and the trainer was not asked for by name, the trainer is left out, and said so.
torch_index=()
if [ -n "${TORCH_INDEX:-}" ]; then torch_index=(--build-arg "TORCH_INDEX=$TORCH_INDEX"); fi
torch_url="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
left_out=""
for role in $roles; do
  if [ "$role" = trainer ] && [ -z "${ROLES:-}" ] \
    && ! python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=15)" "$torch_url" 2>/dev/null; then
    left_out="trainer (torch's index $torch_url cannot be reached; set TORCH_INDEX=<index> and ROLES=trainer)"
    continue
  fi
  if [ "$role" = trainer ]; then
    build "localhost/spiral-$role:$tag" "deploy/images/$role.Containerfile" "${torch_index[@]}"
  else
    build "localhost/spiral-$role:$tag" "deploy/images/$role.Containerfile"
  fi
done
if [ "${GPU:-0}" = 1 ]; then
  build "localhost/spiral-head:$tag-cuda" deploy/images/head-gpu.Containerfile
  build "localhost/spiral-trainer:$tag-cuda" deploy/images/trainer.Containerfile \
    --build-arg CUDA=1 --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
fi
podman images --filter reference='localhost/spiral-*'
if [ -n "$left_out" ]; then echo "images: NOT built: $left_out" >&2; fi
