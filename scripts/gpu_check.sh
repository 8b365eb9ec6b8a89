#!/usr/bin/env bash
# The checks that need a GPU, in one call on a lent GPU machine (no network), from the repo root:
#
#   bash scripts/gpu_check.sh
#
# Stages: build the package with its CUDA kernels for this machine's GPU only; the CUDA tests;
# the whole test suite; the CUDA benchmark; the video design's table at its own scale (train.bench
# --seed-table, video-table-cuda.json). A failing stage does not stop the later ones; the
# summary table (tests passed/failed, each bench case's hvision time and speed-ups) comes last,
# and the exit status is non-zero if any stage failed.
#
# Results and logs go to $OUT when it is set (bench-cuda.json, logs/), to a temp folder otherwise.
# pytest and hypothesis are installed from the wheels in $HVISION_WHEELS (a folder) when they are
# missing and that folder is given.
set -o pipefail  # not -e (a failing stage must not stop the rest) nor -u (nor a typo)

cd "$(dirname "${BASH_SOURCE[0]}")/.."
RESULTS=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/hvision-gpu.XXXXXX")}
LOGS=$RESULTS/logs
mkdir -p "$LOGS"
BENCH_JSON=$RESULTS/bench-cuda.json
STAGES=()   # "name|status|seconds" per stage, for the summary

# Runs "$@" in this shell (so a stage's exports reach the next) as the stage named $1; its
# output goes to $LOGS/$2.log, of which the end is shown.
stage() {
  local name=$1 slug=$2 start=$SECONDS rc
  shift 2
  echo "=== ${name}"
  "$@" >"$LOGS/$slug.log" 2>&1
  rc=$?
  tail -n 60 "$LOGS/$slug.log"
  STAGES+=("${name}|$([[ $rc == 0 ]] && echo ok || echo "FAILED (exit $rc)")|$((SECONDS - start))")
  echo "=== ${name}: exit ${rc} ($((SECONDS - start)) s)"
}

environment() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda)"
  if [[ -z ${CUDA_HOME:-} ]]; then
    if [[ -x /usr/local/cuda/bin/nvcc ]]; then
      export CUDA_HOME=/usr/local/cuda
    elif command -v nvcc >/dev/null; then
      export CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    else
      echo "nvcc not found (set CUDA_HOME)"
      return 1
    fi
  fi
  "$CUDA_HOME/bin/nvcc" --version | tail -n 1
  # Compile for this GPU only: a fraction of the build time of setup.py's default list.
  local arch
  if ! arch=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())"); then
    echo "torch sees no CUDA device"
    return 1
  fi
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  echo "CUDA_HOME=${CUDA_HOME} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} MAX_JOBS=${MAX_JOBS}"
}

build() {
  python -m pip install --no-build-isolation --no-deps -e . || return
  python -c "import hvision_ext._library as l; print('built with CUDA:', l.built_with_cuda())
assert l.built_with_cuda(), 'the CUDA kernels were not built'"
}

test_tools() {
  python -c "import pytest, hypothesis" 2>/dev/null && return 0
  if [[ -n ${HVISION_WHEELS:-} ]]; then
    python -m pip install --no-index --find-links "$HVISION_WHEELS" pytest hypothesis expecttest
  else
    echo "pytest or hypothesis is missing and no HVISION_WHEELS folder was given to install them from"
    return 1
  fi
}

# pytest, counting "no tests collected" (exit 5) as a failure; $1 names the JUnit XML report.
run_pytest() {
  local report=$1
  shift
  python -m pytest -q --junitxml="$LOGS/$report.xml" "$@"
}

cuda_tests() {
  run_pytest pytest-cuda -m cuda || return
  # Every CUDA test skipped means torch saw no GPU: here, that is a failure.
  python -c "import sys, xml.etree.ElementTree as ET
suite = ET.parse(sys.argv[1]).getroot().find('testsuite')
sys.exit('every CUDA test was skipped' if suite.get('tests') == suite.get('skipped') else 0)" "$LOGS/pytest-cuda.xml"
}

bench() {
  python -m hvision_ext.bench --device cuda --json "$BENCH_JSON"
}

# The video design's table at its own scale (docs/performance.md), mixer alone and whole model.
video_table() {
  python -m train.bench --video --seed-table --device cuda --tables mixer,model --depths 2,4 \
    --json "$RESULTS/video-table-cuda.json"
}

stage "environment" env environment
stage "build (pip install -e .)" build build
stage "test tools" tools test_tools
stage "pytest -m cuda" pytest-cuda cuda_tests
stage "pytest (all)" pytest-all run_pytest pytest-all
stage "bench (cuda)" bench bench
stage "video table (cuda)" video-table video_table

echo
echo "================ summary ================"
python - "$LOGS" "$BENCH_JSON" "${STAGES[@]}" <<'EOF'
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

logs, bench_json, stages = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]


def test_counts(report: Path) -> str:
    if not report.exists():
        return "no report"
    root = ET.parse(report).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    total, failed, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    return f"{total - failed - errors - skipped} passed, {failed} failed, {errors} errors, {skipped} skipped"


details = {"pytest -m cuda": test_counts(logs / "pytest-cuda.xml"), "pytest (all)": test_counts(logs / "pytest-all.xml")}
for entry in stages:
    name, status, seconds = entry.split("|")
    print(f"{name:26s} {status:18s} {seconds:>5s} s  {details.get(name, '')}")

if bench_json.exists():
    document = json.loads(bench_json.read_text())
    print(f"\nbench on {document['device_name']}, {document['dtype']}, torch {document['torch_version']}")
    for result in document["results"]:
        if result["impl"] != "hvision":
            continue
        case = f"{result['op']}/{result['case']} ({result['mode']})"
        if result.get("median_s") is None:
            print(f"  {case:40s} hvision error: {result['error']}")
            continue
        others = [r for r in document["results"] if (r["op"], r["case"]) == (result["op"], result["case"]) and r["impl"] != "hvision"]
        factors = ", ".join(
            f"{r['hvision_speedup']:.2f}x vs {r['impl']}" if r.get("hvision_speedup") else f"{r['impl']} error" for r in others
        )
        bandwidth = result.get("bandwidth_Bps")
        extra = f", {bandwidth / 1e9:.0f} GB/s" if bandwidth else ""
        print(f"  {case:40s} hvision {result['median_s'] * 1e3:8.3f} ms{extra}; {factors}")
EOF

for entry in "${STAGES[@]}"; do
  [[ $entry == *"|ok|"* ]] || exit 1
done
