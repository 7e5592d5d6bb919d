#!/usr/bin/env bash
# A short, prepared check of robot_pref's GPU paths on a CUDA machine that has PyTorch but not this
# project's other packages (robosuite, Ray and the openai client are not needed here). Wheels for the
# missing pure-data packages are expected in .whl/ (zarr, numcodecs, donfig, google-crc32c, open_clip,
# ftfy, wcwidth). Writes logs under $OUT (default /tmp/gpu_check).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi -L; python3 -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, torch.cuda.get_device_name(0))"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
  || { echo "editable install failed"; exit 1; }
rp() { python3 -m robot_pref "$@"; }
W=/tmp/gpu_work; rm -rf $W; mkdir -p $W

echo "== IQL updates/s on the GPU (bench_iql --device cuda)"
python3 tools/bench_iql.py --device cuda --rounds 3 --steps 300 --image-steps 100 2>&1 | tee $OUT/bench_iql_cuda.txt | tail -30

echo "== label -> fit-reward (cuda, vmap ensemble, bf16) -> relabel (cuda) on a synthetic 64px dataset"
python3 -c "from robot_pref.feedback.synthetic import make_square_dataset as m; m('$W/sq.zarr', episodes=40, length=50, size=64)"
rp label --dataset $W/sq.zarr --camera agentview_64 --labeler teacher --teacher.kind mistake --pairs 2000 --out $W/labels --progress false 2>&1 | tail -2
rp fit-reward --dataset $W/sq.zarr --labels $W/labels --camera agentview_64 --model cnn --device cuda --epochs 30 --out $W/reward 2>&1 | grep -v "it/s" | tail -8
cp $W/reward/eval.json $OUT/reward_eval_cuda.json
rp relabel --dataset $W/sq.zarr --reward-model $W/reward --key learned --device cuda --workers 0 2>&1 | grep -v "frame/s" | tail -2

echo "== IQL on images + low-dim, learned reward, on cuda (train CLI)"
rp train --dataset $W/sq.zarr --algo iql --reward-key learned --steps 1500 --device cuda \
  --obs-keys obs,frames/agentview_64 --log-every 500 --save-every 1500 --out $W/iql_img 2>&1 | grep -v "step/s" | tail -4
tail -2 $W/iql_img/log.csv

echo "== CLIP scoring on cuda (ViT-B-32, random weights), batched vs one at a time"
python3 - <<'PY' 2>&1 | tee $OUT/clip_cuda.txt
import time, numpy as np, torch
from robot_pref.feedback.clip import ClipScorer
from robot_pref.feedback.config import ClipConfig
s = ClipScorer(ClipConfig(model="ViT-B-32", pretrained=""), goal="to lift the red cube", device="cuda")
frames = np.random.default_rng(0).integers(0, 255, (512, 84, 84, 3), dtype=np.uint8)
s.score(frames[:8]); torch.cuda.synchronize()
t = time.perf_counter(); batched = np.concatenate([s.score(frames[i:i + 128]) for i in range(0, 512, 128)]); torch.cuda.synchronize(); tb = time.perf_counter() - t
t = time.perf_counter(); single = np.concatenate([s.score(frames[i:i + 1]) for i in range(0, 128)]); torch.cuda.synchronize(); ts = time.perf_counter() - t
print(f"clip cuda: batched {512 / tb:.0f} frames/s, one at a time {128 / ts:.0f} frames/s, ratio {(512 / tb) / (128 / ts):.1f}x, "
      f"max |batched - single| {np.abs(batched[:128] - single).max():.2e}")
PY

echo "== pytest: reward tests with CUDA visible (Ray-free ones)"
python3 -m pytest -q -x -p no:cacheprovider tests/test_reward.py -k "not ray" 2>&1 | tail -5
