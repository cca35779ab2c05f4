#!/usr/bin/env bash
# Debian packages the heavy tests use besides the fabric's: a real Prometheus and node exporter
# (telemetry e2e), Chromium + chromedriver (the JupyterLab and report-page browser tests), a small
# LaTeX (pdflatex + booktabs: `dtlab table` output is compiled by tests/test_report.py) and the
# openssl CLI (certificates for the extender's mutual-TLS tests).
set -euo pipefail
exec bash "$(dirname "$0")/apt-ensure.sh" test-deps prometheus prometheus-node-exporter chromium chromium-driver curl \
    texlive-latex-base texlive-latex-recommended openssl
