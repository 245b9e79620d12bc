#!/usr/bin/env bash
# pairlb's test command: installs what the tests need (Debian packages, as root, and a pinned
# staticcheck), fails on anything gofmt, go vet or staticcheck report, runs the quick tests as an
# ordinary user (what a newcomer without sudo runs), then every test with the race detector.
# Tests that need root run when this runs as root; under CI=true a test that would skip for want
# of root or a tool fails instead.
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

# The lint gate. staticcheck is pinned so that a new release cannot fail a build that passed.
staticcheck_version=v0.8.2
gobin="$(go env GOPATH)/bin"
if ! "$gobin/staticcheck" -version 2>/dev/null | grep -q "${staticcheck_version#v}"; then
  echo "installing staticcheck $staticcheck_version"
  GOFLAGS= go install "honnef.co/go/tools/cmd/staticcheck@$staticcheck_version"
fi
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change these files (run gofmt -w):"
  echo "$unformatted"
  exit 1
fi
go vet ./...
"$gobin/staticcheck" ./...
echo "lint: gofmt, go vet, staticcheck $staticcheck_version clean"

# The quick tests as an ordinary user, on a copy of the tree: `go test -short ./...` must pass on
# a laptop without sudo, and as root the root-only tests would hide a test that needs root
# without saying so. The copy vendors its modules, so the user needs no module cache of its own.
if [ "$(id -u)" -eq 0 ]; then
  user=nobody
  short=$(mktemp -d)
  trap 'rm -rf "$short"' EXIT
  git ls-files -z | xargs -0 cp --parents -t "$short"
  (cd "$short" && go mod vendor)
  mkdir -p "$short/.home"
  chown -R "$user" "$short"
  if ! runuser -u "$user" -- env -i PATH="$PATH" HOME="$short/.home" GOCACHE="$short/.home/cache" \
      GOFLAGS=-mod=vendor GOTOOLCHAIN=local bash -c "cd '$short' && go test -short -count=1 ./..."; then
    echo "go test -short ./... failed as the unprivileged user $user"
    exit 1
  fi
  rm -rf "$short"
  trap - EXIT
fi

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
