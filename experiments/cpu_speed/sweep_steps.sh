#!/usr/bin/env bash
# Issue 19: stage-two quality of fewer sampling steps, on the tuning prompts (prompt seed 555, not the reported 999).
# Key frames stay at 25 steps (stage one is 0.5 s of the video). Usage: bash experiments/cpu_speed/sweep_steps.sh OUT [NUM]
set -euo pipefail
out=${1:-runs/sweep_steps}; num=${2:-30}
run() {  # name, then stage_two arguments
  local name=$1; shift
  [ -f "$out/$name/metrics.json" ] && { echo "skip $name"; return; }
  python -m microcinema.eval.stage_two --out "$out/$name" --num "$num" --prompt-seed 555 --key-frame-steps 25 "$@"
}
run ddim25_interp25 --steps 25 --interp-steps 25
run ddim15_interp8 --steps 15 --interp-steps 8
run dpm12_interp6dpm --steps 12 --interp-steps 6 --sampler dpmpp_2m --interp-sampler dpmpp_2m
run ddim12_interp6 --steps 12 --interp-steps 6
run dpm10_interp5dpm --steps 10 --interp-steps 5 --sampler dpmpp_2m --interp-sampler dpmpp_2m
