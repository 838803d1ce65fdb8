#!/usr/bin/env bash
# Installs the Debian packages named in $1 (one per line, '#' comments) that are not installed yet.
# Idempotent: does nothing, and needs no network, when every package is present.
set -euo pipefail
list="$1"
missing=()
while read -r pkg _; do
    [[ -z "$pkg" || "$pkg" == \#* ]] && continue
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < "$list"
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
echo "installing Debian packages: ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
    SUDO=sudo
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
