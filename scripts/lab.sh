#!/usr/bin/env bash
# pairlb's lab: builds the Lync 2013 single-pair topology in network namespaces, runs pairlb in it
# and checks every virtual service (see internal/lab). Run as root:
#
#   sudo ./scripts/lab.sh            build, check, remove everything; exit 0 when every row passes
#   sudo ./scripts/lab.sh --keep     leave the lab running to explore it (prints how to enter it)
#   sudo ./scripts/lab.sh --clean    remove labs left by --keep (or by a killed run)
#
# It needs iproute2 and nftables (the `ip` and `nft` commands) and installs them with apt-get when
# they are missing. Ctrl-C or a SIGTERM removes the lab: the script builds pairlb and becomes it
# (exec), so signals reach the lab itself (`go run` would not pass SIGTERM on).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

if [ "$(id -u)" -ne 0 ]; then
  echo "lab.sh: the lab creates network namespaces and needs root: sudo $0 $*" >&2
  exit 1
fi

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
if [ ${#missing[@]} -gt 0 ]; then
  echo "lab.sh: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

bin="${TMPDIR:-/tmp}/pairlb-lab-build/pairlb"
mkdir -p "$(dirname "$bin")"
go build -o "$bin" ./cmd/pairlb
exec "$bin" lab "$@"
