#!/usr/bin/env bash
# One prepared GPU run (issue 27): install, the performance report, a fixed-length slice of the
# Wang et al. wave configuration with every schedule; tables into one results folder.
#
#   bash benchmarks/gpu.sh [RESULTS_DIR]        # default benchmarks/results/gpu-<UTC date>
#
# Environment: STEPS (wave steps, default 5000), REPORT_TIMEOUT / WAVE_TIMEOUT (seconds, default
# 240 / 300: the whole script stays under 10 minutes on one GPU), SKIP_INSTALL=1 (use the current
# environment), CUDA_EXTRA (default cuda12: pip installs "jax[cuda12]").
# Nothing here has been run on a GPU yet: the first run's timings are the first GPU numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/gpu-$(date -u +%Y%m%dT%H%MZ)}"
STEPS="${STEPS:-5000}"
mkdir -p "$OUT"
log() { echo "[gpu.sh $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/run.log"; }

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  # what the report and the wave run need (torch is optional: the report skips its section without it);
  # the versions the test suite pins in pyproject.toml, with the CUDA build of the same jax
  pin() { grep -o "\"$1==[^\"]*\"" pyproject.toml | head -1 | tr -d '"'; }
  JAXPIN="$(pin jax)"
  log "installing sketchtrace[numba,pinn], $(pin matfree), jax[${CUDA_EXTRA:-cuda12}]==${JAXPIN#jax==}"
  python -m pip install -q -e ".[numba,pinn]" "$(pin matfree)" "$(pin numba)" "$(pin optax)" \
    "jax[${CUDA_EXTRA:-cuda12}]==${JAXPIN#jax==}" 2>&1 | tail -3 | tee -a "$OUT/run.log"
fi
unset JAX_PLATFORMS
python - <<'EOF' 2>&1 | tee "$OUT/devices.txt"
import jax, platform, os
print("jax", jax.__version__, "devices", jax.devices(), "backend", jax.default_backend())
print("host", platform.node(), os.cpu_count(), "cpus; load", os.getloadavg())
EOF
python -c 'import jax, sys; sys.exit(0 if jax.default_backend() == "gpu" else 1)' \
  || log "WARNING: JAX sees no GPU; the numbers below are CPU numbers"

log "benchmarks/report.py -> $OUT/report.md (timeout ${REPORT_TIMEOUT:-240} s)"
JAX_PLATFORMS= timeout "${REPORT_TIMEOUT:-240}" python benchmarks/report.py --out "$OUT/report.md" \
  >"$OUT/report.stdout" 2>"$OUT/report.stderr" || log "report.py stopped (exit $?); see report.stderr"

log "wave slice: docs/configs/wave_full.json, $STEPS steps, every schedule (--compare) (timeout ${WAVE_TIMEOUT:-300} s)"
JAX_PLATFORMS= timeout "${WAVE_TIMEOUT:-300}" python -m sketchtrace pinn wave --config docs/configs/wave_full.json \
  --steps "$STEPS" --log-every 500 --compare --no-progress --out "$OUT/wave_full_${STEPS}" \
  >"$OUT/wave.stdout" 2>"$OUT/wave.stderr" || log "wave run stopped (exit $?); see wave.stderr"
[ -f "$OUT/wave_full_${STEPS}/compare.md" ] && cp "$OUT/wave_full_${STEPS}/compare.md" "$OUT/wave_compare.md"

log "done: $(ls "$OUT" | tr '\n' ' ')"
