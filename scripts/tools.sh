#!/usr/bin/env bash
# Installs the real servers the integration tests run against:
#   - the HashiCorp Vault server, built from the tools module in
#     tools/vault (pinned to v1.21.0) into
#     $CASTELLAN_CACHE_DIR/vault-1.21.0/vault; skipped when already built;
#   - SoftHSM2 (a PKCS#11 token in software), from Debian, when missing and
#     when running as root.
# Nothing is written to the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

VAULT_VERSION=1.21.0
CACHE="${CASTELLAN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/castellan}"
VAULT_BIN="$CACHE/vault-$VAULT_VERSION/vault"

if [ -x "$VAULT_BIN" ]; then
	echo "vault: $VAULT_BIN (cached)"
else
	echo "vault: building v$VAULT_VERSION into $VAULT_BIN (7 to 12 minutes the first time)"
	mkdir -p "$(dirname "$VAULT_BIN")"
	(cd tools/vault && nice -n 10 go build -o "$VAULT_BIN.tmp" github.com/hashicorp/vault)
	mv "$VAULT_BIN.tmp" "$VAULT_BIN"
	"$VAULT_BIN" version
fi

SOFTHSM_MODULE=/usr/lib/softhsm/libsofthsm2.so
if [ -e "$SOFTHSM_MODULE" ] && command -v softhsm2-util >/dev/null; then
	echo "softhsm2: $SOFTHSM_MODULE"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	echo "softhsm2: installing from Debian"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null
else
	echo "softhsm2: missing; install the softhsm2 package (needs root) for the PKCS#11 tests" >&2
fi
