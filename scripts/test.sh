#!/usr/bin/env bash
# Runs every test of the project. Installs what the tests need when it is
# missing: the Debian packages of the independent TPM stack (swtpm, tpm2-tools
# and its swtpm TCTI), the MQTT command-line clients and the mosquitto broker
# (the tests start it themselves on free loopback ports), and the Go modules.
# Then runs go vet, every fuzz target for 10,000 inputs beyond its corpus (FUZZTIME)
# and go test ./... (which also runs the Azure Node SDK interoperability tests;
# they need Node.js and npm, and bind 127.0.0.1:443 and :8883, so run as root
# or with CAP_NET_BIND_SERVICE).
# Usage: scripts/test.sh [extra go test flags...]
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v swtpm >/dev/null 2>&1 || need_pkgs+=(swtpm)
command -v swtpm_setup >/dev/null 2>&1 || need_pkgs+=(swtpm-tools)
command -v tpm2_createprimary >/dev/null 2>&1 || need_pkgs+=(tpm2-tools)
ls /usr/lib/*/libtss2-tcti-swtpm.so* >/dev/null 2>&1 || need_pkgs+=(libtss2-tcti-swtpm0)
command -v mosquitto_pub >/dev/null 2>&1 || need_pkgs+=(mosquitto-clients)
[ -x /usr/sbin/mosquitto ] || need_pkgs+=(mosquitto)
command -v npm >/dev/null 2>&1 || need_pkgs+=(nodejs npm)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${need_pkgs[*]}"
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
  if [[ " ${need_pkgs[*]} " == *" mosquitto "* ]] && command -v systemctl >/dev/null 2>&1; then
    # The package starts a broker on 127.0.0.1:1883, dpsd's plain MQTT address:
    # the tests need only the binary.
    "${sudo_cmd[@]}" systemctl disable --now mosquitto >/dev/null 2>&1 || true
  fi
fi

echo "== downloading Go modules"
go mod download

echo "== go vet"
go vet ./...

echo "== fuzz: every target briefly beyond its seed corpus"
scripts/fuzz.sh "${FUZZTIME:-10000x}"

echo "== go test"
# The TPM simulator is cgo; its first build takes about a minute.
go test -count=1 -timeout 30m "$@" ./...
