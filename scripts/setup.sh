#!/usr/bin/env bash
# Set up msfm on Debian 12: QGIS 3.22 from apt, then a venv on Debian's python3 that sees QGIS's bindings.
#
#   bash scripts/setup.sh        # from any directory; idempotent, non-interactive (root, or a user with sudo)
#
# 1. apt: python3-qgis qgis python3-venv xvfb (only if one of them is missing; xvfb runs the QGIS desktop in tests).
# 2. .venv: /usr/bin/python3 -m venv --system-site-packages .venv (only if absent).
# 3. pip: -r requirements.txt, then the project itself, editable (puts the `msfm` command in .venv/bin).
# Steps 2-3 are skipped while .venv/.msfm-setup-stamp holds the sha256 of requirements.txt + pyproject.toml,
# so a re-run is a no-op. Delete the stamp (or .venv) to force a reinstall.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

VENV=.venv
STAMP="$VENV/.msfm-setup-stamp"
APT_PACKAGES=(python3-qgis qgis python3-venv xvfb)
export DEBIAN_FRONTEND=noninteractive
export PIP_NO_INPUT=1

log() { printf 'setup: %s\n' "$*"; }

# One set-up at a time per checkout (parallel `make test` runs): lock this script file, wait for the other run.
if command -v flock >/dev/null 2>&1; then
    exec 9<"$REPO/scripts/setup.sh"
    flock 9
fi

# --- 1. Debian packages ----------------------------------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo -n env DEBIAN_FRONTEND=noninteractive)
    else
        log "missing Debian packages (${missing[*]}) and neither root nor sudo: install them, then re-run" >&2
        exit 1
    fi
    log "apt: installing ${APT_PACKAGES[*]} (missing: ${missing[*]})"
    "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 "${APT_PACKAGES[@]}"
else
    log "apt: ${APT_PACKAGES[*]} already installed"
fi

# --- 2./3. venv + pip, unless the stamp says nothing changed ---------------------------------------------------
want="$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    log "venv: $VENV up to date (requirements.txt and pyproject.toml unchanged)"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    log "venv: creating $VENV on /usr/bin/python3 with --system-site-packages"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
else
    log "venv: reusing $VENV"
fi
rm -f "$STAMP"

log "pip: installing requirements.txt (first time: about a minute)"
"$VENV/bin/python" -m pip install -q -r requirements.txt
log "pip: installing msfm (editable)"
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .

printf '%s\n' "$want" >"$STAMP"
log "done: $VENV/bin/msfm, tests: make test"
