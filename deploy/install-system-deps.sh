#!/usr/bin/env bash
# Make sure the system programs d4-bridge needs are installed.
# Usage: install-system-deps.sh COMMAND:PACKAGE ...
# A missing command is installed with the system package manager when we are root
# (or have passwordless sudo); otherwise we stop and say exactly what to install.
set -u
missing_pkgs=()
missing_cmds=()
for spec in "$@"; do
    cmd=${spec%%:*}
    pkg=${spec#*:}
    if ! command -v "$cmd" >/dev/null 2>&1; then
        missing_cmds+=("$cmd")
        missing_pkgs+=("$pkg")
    fi
done
[ ${#missing_pkgs[@]} -eq 0 ] && exit 0

echo "d4-bridge: missing ${missing_cmds[*]}; installing ${missing_pkgs[*]}" >&2
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo_cmd="sudo -n"
    else
        echo "d4-bridge: cannot install packages without root. Please install: ${missing_pkgs[*]}" >&2
        echo "  (Debian/Ubuntu: sudo apt-get install ${missing_pkgs[*]})" >&2
        exit 1
    fi
fi
if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $sudo_cmd apt-get update -qq >/dev/null && $sudo_cmd apt-get install -y -qq "${missing_pkgs[@]}" >/dev/null
elif command -v dnf >/dev/null 2>&1; then
    $sudo_cmd dnf install -y "${missing_pkgs[@]}"
elif command -v apk >/dev/null 2>&1; then
    $sudo_cmd apk add "${missing_pkgs[@]}"
else
    echo "d4-bridge: no supported package manager found. Please install: ${missing_pkgs[*]}" >&2
    exit 1
fi
for cmd in "${missing_cmds[@]}"; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        echo "d4-bridge: $cmd is still missing after installing packages; please install it by hand" >&2
        exit 1
    fi
done
