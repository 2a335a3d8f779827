#!/usr/bin/env bash
# The paper preset on ML-1M on one GPU, as one prepared script (a lent GPU comes with a small time
# budget, so everything it should measure runs here in one go):
#   1. the training step's FLOP rate next to the GPU's own matmul rate, fp32 and bf16;
#   2. TERACON with relation-aware sampling against rho = 1 (and pop), 3 epochs per task, bf16;
#   3. the sampling tables of those two runs (scores and seconds per epoch);
#   4. the ML board's overall section with the paper preset trained to convergence (patience, no
#      epoch cap), one seed, under a wall-clock guard (OVERALL_S, default 330 s) so the whole
#      script fits 10 minutes; cells that did not finish resume when the script is run again.
#   5. TTL scale: the full TTL-shaped stream (1.47 M users, 646 K items, 100-item sequences), one
#      TERACON epoch per task with the sampled T1 softmax (8,192 negatives), each task timed over
#      TTL_STEPS steps and extrapolated to its epoch; seconds per step and epoch, peak GPU memory
#      (docs/performance.md "TTL scale"), under its own guard (TTL_S, default 280 s).
# A command may run at most 10 minutes: run steps 1-4 and step 5 as two commands (STEPS="1 2 3 4",
# then STEPS=5).
# Usage: CURB_DATA=/path/with/ml-1m bash benchmarks/gpu.sh [OUT]
#        (DEVICE=cpu PRESET=small EPOCHS=1 is a quick CPU rehearsal of the same steps; METHODS
#         narrows step 4, e.g. METHODS=pop,sinmo,teracon; TTL=ttl-shaped-1pct TTL_STEPS=2 TTL_VAL_USERS=4 rehearses
#         step 5 on a CPU)
set -euo pipefail
out=${1:-runs/gpu}
device=${DEVICE:-cuda}
preset=${PRESET:-paper}
data="${CURB_DATA:?set CURB_DATA to the folder holding ml-1m}/ml-1m"
steps=" ${STEPS:-1 2 3 4 5} "
mkdir -p "$out"
if [[ $steps == *" 1 "* ]]; then
for precision in fp32 bf16; do
  python benchmarks/flops.py --data-dir "$data" --preset "$preset" --device "$device" --precision "$precision" \
    | tee "$out/flops-$precision.txt"
done
fi
if [[ $steps == *" 2 "* || $steps == *" 3 "* ]]; then
run=(curb run --dataset ml --preset "$preset" --epochs "${EPOCHS:-3}" --seeds 0
     --device "$device" --precision bf16 --out "$out/runs")
"${run[@]}" --methods pop,teracon  # pop: the tables' popularity row, on the same split
"${run[@]}" --methods teracon --set teracon.sampling=none
curb report "$out/runs" --sections sampling --no-figures --out "$out/report"
cat "$out/report/README.md"
fi
if [[ $steps == *" 4 "* ]]; then
overall=(curb run --dataset ml --preset "$preset" --seeds 0 --device "$device" --precision bf16
         --methods "${METHODS:-all}" --out "$out/overall" ${EPOCHS:+--epochs "$EPOCHS"})
timeout --signal=TERM "${OVERALL_S:-330}" "${overall[@]}" || echo "step 4 stopped at its time guard; rerun to resume"
curb report "$out/overall" --sections overall,training --no-figures --out "$out/overall-report"
cat "$out/overall-report/README.md"
fi
if [[ $steps == *" 5 "* ]]; then
timeout --signal=TERM "${TTL_S:-280}" python benchmarks/sampled_softmax.py ttl --dataset "${TTL:-ttl-shaped}" \
  --negatives 8192 --t1-steps "${TTL_STEPS:-32}" --steps "${TTL_STEPS:-32}" --t1-val-users "${TTL_VAL_USERS:-256}" --val-users "$((16 * ${TTL_VAL_USERS:-256}))" \
  --device "$device" | tee "$out/ttl.txt" || echo "step 5 stopped at its time guard (TTL_S)"
fi
