#!/usr/bin/env bash
# apt-ensure.sh TAG PKG...: install the Debian packages among PKG that are missing (quick when none
# is). Shared by fabric-deps.sh and test-deps.sh. Needs root only when something must be installed.
set -euo pipefail
tag=$1; shift
missing=()
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
    echo "$tag: all present"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "$tag: missing ${missing[*]}; run as root (or: sudo apt-get install -y ${missing[*]})" >&2
    exit 1
fi
echo "$tag: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}" >/dev/null || {
    apt-get update -qq && apt-get install -y -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}" >/dev/null; }
