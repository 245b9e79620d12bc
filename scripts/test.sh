#!/usr/bin/env bash
# pairlb's test command: installs what the tests need (Debian packages, as root), then runs every
# test with the race detector. Tests that need root run when this runs as root; under CI=true a
# test that would skip for want of root or a tool fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

# coturn: a real STUN server for the health checks; nftables/iproute2: namespace tests and the lab;
# keepalived: the pair; haproxy, nginx, iperf3, wrk: bench/ smoke; chromium: the status page test.
packages=(coturn nftables iproute2 keepalived haproxy nginx-light libnginx-mod-stream iperf3 wrk chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "not root: tests needing these packages will skip: ${missing[*]}" >&2
  fi
fi

go version
go vet ./...

# bench/ smoke: every proxy through every workload for a second each, to show the harness works;
# it asserts nothing about speed (that is what `go run ./bench` and the README table are for).
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
if go run ./bench -short -out "$out" > "$out/bench.log" 2>&1; then
  echo "bench -short: ok ($(grep -c '^  \[' "$out/bench.log") runs)"
else
  cat "$out/bench.log"
  echo "bench -short failed"
  exit 1
fi

go test -race -count=1 -timeout 15m ./...
