#!/usr/bin/env bash
# Install the build prerequisites a fresh Debian/Ubuntu machine lacks, and nothing else.
#
#   scripts/deps.sh            # build prerequisites (cmake for Pingora's zlib-ng, protoc for
#                              # containerd's gRPC API)
#   scripts/deps.sh test       # also what the tests run: containerd, runc and ctr for the
#                              # containerd runtime, busybox for a shell inside test images,
#                              # ip and nft for instances' egress (and its test's namespaces)
#   scripts/deps.sh bench      # also the baselines the benchmarks compare against
#
# Idempotent and quiet when everything is present, so `make up` / `make test` can always run it.
set -euo pipefail

need_cmds=(cmake cc curl protoc)
need_pkgs=(cmake build-essential curl protobuf-compiler)
if [ "${1:-}" = test ] || [ "${1:-}" = bench ]; then
  need_cmds+=(containerd runc ctr busybox ip nft)
  need_pkgs+=(containerd runc containerd busybox-static iproute2 nftables)
fi
if [ "${1:-}" = bench ]; then
  need_cmds+=(wrk nginx haproxy perf crun h2load ab openssl)
  need_pkgs+=(wrk nginx-light haproxy linux-perf crun nghttp2-client apache2-utils openssl)
fi

missing=()
for i in "${!need_cmds[@]}"; do
  cmd=${need_cmds[$i]}
  # nginx and perf live in /usr/sbin or version-suffixed paths on Debian; look beyond PATH.
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && ! ls /usr/bin/"$cmd"_* >/dev/null 2>&1; then
    missing+=("${need_pkgs[$i]}")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "deps: missing ${missing[*]} and no apt-get here; install them with your package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "deps: missing ${missing[*]}; run as root or install them: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# A fresh machine has empty package lists: update once, then install.
$SUDO apt-get update -qq >/dev/null
# Sorted and unique: containerd provides two of the commands.
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
