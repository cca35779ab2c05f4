#!/usr/bin/env bash
# Debian packages the heavy tests use besides the fabric's: a real Prometheus and node exporter
# (telemetry e2e) and Chromium + chromedriver (the JupyterLab browser test). Idempotent: apt-get runs
# only for what is missing. Needs root for apt.
set -euo pipefail
pkgs=(prometheus prometheus-node-exporter chromium chromium-driver curl)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "test-deps: missing ${missing[*]}; run as root (or: sudo apt-get install -y ${missing[*]})" >&2
        exit 1
    fi
    echo "test-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null || {
        apt-get update -qq && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
else
    echo "test-deps: all present"
fi
