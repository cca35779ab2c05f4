#!/usr/bin/env bash
# Debian packages the heavy tests use besides the fabric's: a real Prometheus and node exporter
# (telemetry e2e) and Chromium + chromedriver (the JupyterLab browser test).
set -euo pipefail
exec bash "$(dirname "$0")/apt-ensure.sh" test-deps prometheus prometheus-node-exporter chromium chromium-driver curl
