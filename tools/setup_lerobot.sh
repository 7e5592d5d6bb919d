#!/usr/bin/env bash
# A separate venv .venv-lerobot with LeRobot's own dataset code, used only by the tests that check our
# LeRobot export with LeRobot's reader and by tools/make_lerobot_fixture.py. lerobot 0.4.4 (the last
# release for Python 3.11) pins a torch that clashes with ours, so it is installed without its
# dependencies, with the light ones it needs for datasets, and borrows torch from .venv via a .pth file.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "run tools/setup.sh first (.venv provides torch)" >&2; exit 1; }
PYTHON=${PYTHON:-python3}
[ -x .venv-lerobot/bin/python ] || "$PYTHON" -m venv .venv-lerobot
PIP=".venv-lerobot/bin/python -m pip install -q"
$PIP --upgrade pip
$PIP --no-deps lerobot==0.4.4 accelerate "torchcodec==0.17.0"  # torchcodec: LeRobot decodes videos with it; 0.17 pairs with torch 2.14
$PIP "datasets>=4,<5" "huggingface-hub<0.36" "av>=15,<16" jsonlines "draccus==0.10.0" "deepdiff>=7,<9" "packaging<26" pandas \
     "pyarrow<20" opencv-python-headless "gymnasium<2" "numpy<2" termcolor einops psutil
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
own=$(.venv-lerobot/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$site" > "$own/robot_pref_torch.pth"  # appended after its own site-packages: its packages win
.venv-lerobot/bin/python -c "from lerobot.datasets.lerobot_dataset import LeRobotDataset; print('lerobot ok')"
