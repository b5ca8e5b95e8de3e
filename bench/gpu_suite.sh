#!/usr/bin/env bash
# One short run on an H100/H200 measures what only a GPU can tell (< 8 minutes with compilation):
#   1. cuDNN flash attention vs XLA at the UNet's attention shapes (bf16);
#   2. the stage-2 inference engine at 256 px (configs/unet/stage2.py) and 512 px (stage2_512.py),
#      bf16, 20 DDIM steps, CFG 1.5, chunk_batch 1, 2 and 4: end-to-end frames/s, device-busy
#      fraction, time to first frame, achieved TFLOP/s against XLA's cost analysis;
#   3. time to first frame of a fresh process with a cold and a warm compile cache (256 px);
#   4. device memory: XLA's compiled estimate and the measured peak_bytes_in_use of the
#      stage-2 chunk program at 256 and 512 px, chunk_batch 1 and 2 (bench/bench_memory.py --measure).
# Results: one JSON line per bench run in $OUT.jsonl and a markdown table in $OUT.md.
#
#   bash bench/gpu_suite.sh [--out bench/gpu_suite_results] [--dry_run]
#
# --dry_run: the same code path with the tiny config on CPU (64 px, 2 steps, chunk_batch 1 and 2,
# 0.64 s of audio): a smoke test of this script (tests/pipeline/test_engine.py runs it).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=bench/gpu_suite_results
DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry_run) DRY=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "usage: bash bench/gpu_suite.sh [--out PREFIX] [--dry_run]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
if [[ -x .venv/bin/python && -z "${PYTHON:-}" ]]; then PY=.venv/bin/python; fi

if [[ $DRY == 1 ]]; then
  export JAX_PLATFORMS=cpu
  CONFIGS=(configs/unet/tiny.py)
  BATCHES=(1 2)
  COMMON=(--steps 2 --seconds 0.64 --dtype float32 --preset ultrafast)
else
  CONFIGS=(configs/unet/stage2.py configs/unet/stage2_512.py)
  BATCHES=(1 2 4)
  COMMON=(--steps 20 --guidance 1.5 --seconds 3.84 --dtype bfloat16 --preset veryfast)
fi
CACHE=$(mktemp -d)
trap 'rm -rf "$CACHE"' EXIT
rm -f "$OUT.jsonl"
mkdir -p "$(dirname "$OUT")"

{
  echo "# bench/gpu_suite.sh $(date -u +%Y-%m-%dT%H:%MZ)"
  (command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader) || echo "no nvidia-smi"
} | tee "$OUT.md"

first=1
for config in "${CONFIGS[@]}"; do
  for batch in "${BATCHES[@]}"; do
    extra=()
    if [[ $first == 1 ]]; then extra=(--attention_check --ttff); first=0; fi
    echo "== $config chunk_batch $batch" | tee -a "$OUT.md"
    "$PY" bench/bench_infer.py --config "$config" --chunk_batch "$batch" "${COMMON[@]}" \
      --compile_cache "$CACHE" --json "$OUT.jsonl" "${extra[@]}" 2>&1 | grep -v '^W0000\|^I0000\|^INFO' | tee -a "$OUT.md"
  done
done

"$PY" - "$OUT.jsonl" <<'EOF' | tee -a "$OUT.md"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("\n| config | device | dtype | res | chunk_batch | frames/s e2e | device alone fps | device busy | TTFF warm engine s | TFLOP/s device | TTFF cold / warm process s |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    tf = f"{r['tflops_device']:.1f}" if r.get("tflops_device") else "-"
    ttff = (f"{r['ttff_cold_s']:.1f} / {r['ttff_warm_s']:.1f}" if r.get("ttff_cold_s") else "-")
    print(f"| {r['config']} | {r['device']} x{r['devices']} | {r['dtype']} | {r['resolution']} | {r['chunk_batch']} | "
          f"{r['fps']:.2f} | {r['device_alone_fps']:.2f} | {r['device_busy']:.0%} | {r['ttff_s']:.2f} | {tf} | {ttff} |")
att = next((r["attention"] for r in rows if "attention" in r), None)
if att:
    print("\nattention check:", json.dumps(att))
EOF
# 4. device memory of the chunk program, compiled estimate vs measured peak (random weights)
echo "== memory: compiled estimate and measured peak (bench/bench_memory.py)" | tee -a "$OUT.md"
rm -f "$OUT.memory.jsonl"
if [[ $DRY == 1 ]]; then
  MEM_CONFIGS=(configs/unet/tiny.py); MEM_BATCHES=(1); MEM=(--steps 2 --dtype float32)
else
  MEM_CONFIGS=(configs/unet/stage2.py configs/unet/stage2_512.py); MEM_BATCHES=(1 2); MEM=(--steps 20 --dtype bfloat16)
fi
for config in "${MEM_CONFIGS[@]}"; do
  for batch in "${MEM_BATCHES[@]}"; do  # one process per row: peak_bytes_in_use never goes down
    "$PY" bench/bench_memory.py --configs "$config" --chunk_batches "$batch" "${MEM[@]}" --measure \
      --cache_dir "$CACHE" --json "$OUT.memory.jsonl" 2>&1 | grep -v '^W0000\|^I0000\|^INFO' | tee -a "$OUT.md"
  done
done
echo "results: $OUT.md, $OUT.jsonl, $OUT.memory.jsonl"
