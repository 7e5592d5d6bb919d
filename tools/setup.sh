#!/usr/bin/env bash
# One-command install on a fresh Debian/Ubuntu machine: system GL libraries for headless MuJoCo
# rendering (EGL through Mesa) and Chromium (the report test opens report.html in it through Playwright),
# then a virtual environment .venv with robot_pref and its tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libglib2.0-0 ffmpeg chromium; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need[@]}"
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
echo "robot_pref installed in .venv; activate with: source .venv/bin/activate"
