#!/usr/bin/env bash
# One-shot GPU check of end-to-end image IQL on CUDA (issue 19); run from the repo root on a CUDA machine:
#     bash tools/gpu_check_image.sh            # PYTHON=.venv/bin/python bash tools/gpu_check_image.sh
# (1) tests/test_rl_image.py with CUDA visible: a graphed image update (frames on the GPU, batches and random
#     shifts from registered generators) replays the eager one step for step, fp32 and bf16; `train()` keeps
#     the frames on the GPU and its graphed run equals the eager run; the CPU tests of the file too;
# (2) tools/bench_iql.py's image rows: frames on the GPU, eager / eager + bf16 / graphed / graphed + bf16,
#     ratios against eager from the same alternating rounds.
# Prints one PASS/FAIL line per check and "ALL PASS" at the end; under 4 minutes (150 s + 80 s timeouts).
set -u -o pipefail
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MUJOCO_GL=${MUJOCO_GL:-egl}
status=0
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" || exit 1

if timeout 150 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_rl_image.py 2>&1 | tee /tmp/test_rl_image_gpu.txt; then
    if grep -qi "skipped" /tmp/test_rl_image_gpu.txt; then
        echo "FAIL  tests/test_rl_image.py: CUDA tests skipped (torch sees no GPU)"; status=1
    else
        echo "PASS  tests/test_rl_image.py, CUDA tests included"
    fi
else
    echo "FAIL  tests/test_rl_image.py (failures above, or past 150 s)"; status=1
fi
echo

if timeout 80 "$PY" tools/bench_iql.py --device cuda --rounds 3 --steps 20 --transitions 100000 --feature-steps 0 \
        --image-steps 100 --image-batch 256 2>&1 | tee /tmp/bench_iql_image_gpu.txt; then
    if grep -Eq "^images graphed \+ bf16 +[0-9]" /tmp/bench_iql_image_gpu.txt; then
        echo "PASS  image benchmark ran: $(grep -E '^images ' /tmp/bench_iql_image_gpu.txt | tr -s ' ' | paste -sd ';')"
    else
        echo "FAIL  image benchmark ran but timed no graphed contender (capture failed: see the warning above)"; status=1
    fi
else
    echo "FAIL  benchmark (crashed or ran past 80 s; rows printed above are valid)"; status=1
fi
echo
echo "total ${SECONDS}s"
if [ $status -eq 0 ]; then echo "ALL PASS"; else echo "SOME CHECKS FAILED"; fi
exit $status
