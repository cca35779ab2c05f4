#!/usr/bin/env bash
# make test-ui: notebooks/whatif.ipynb in a real JupyterLab (127.0.0.1, random port + token) driven by headless
# Debian Chromium via Selenium; moves the "latency ×" slider and checks the table (and figure) update.
# DTLAB_REQUIRE_HEAVY=1: a missing chromium/chromedriver fails instead of skipping. Bounded by pytest-timeout
# (170 s); the test stops JupyterLab, its kernel, chromedriver and Chromium itself. Screenshot:
# outputs/ui/whatif.png (outputs/ui/whatif-failure.{png,html} when it fails).
set -euo pipefail
cd "$(dirname "$0")/.."
export DTLAB_REQUIRE_HEAVY=1
exec .venv/bin/python -m pytest tests/ui/test_whatif_browser.py -q -s -p no:cacheprovider "$@"
