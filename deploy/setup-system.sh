#!/usr/bin/env bash
# Debian packages plantprint's tests and demo need on a fresh machine:
#   mosquitto - the MQTT broker the tests start on a free port
#   mbpoll    - an independent Modbus client the simulator tests read with
#   nodejs/npm - the TimescaleDB test peer (WASM PostgreSQL) runs under node
#   chromium  - the batch certificate is rendered (screenshot, PDF) in headless Chromium
# Installs only what is missing, and only when it can (root, apt-get present).
set -euo pipefail

missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mbpoll >/dev/null 2>&1 || missing+=(mbpoll)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: missing system packages: ${missing[*]} (install them with your package manager)" >&2
    exit 1
fi
echo "setup: installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
