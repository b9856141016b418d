#!/usr/bin/env bash
# candle vs PyTorch (CPU eager) on the VideoWorld 2 dLDM: the same weights, the same clip.
#
#   benches/dldm_peer.sh [--preset videoworld2|tiny] [--frames T --height H --width W]
#                        [--threads N] [--dir DIR] [--no-build]
#
# 1. makes .venv-bench (python3 -m venv; torch, numpy, safetensors from PyPI, pinned),
# 2. builds target/release/vw2 (unless --no-build),
# 3. runs `vw2 bench dldm --save DIR --json` (weights, clip, candle's outputs and timings),
# 4. then, after it has exited (never in parallel), benches/dldm_torch.py DIR on the same files,
# 5. prints both side by side with the ratio torch / candle, and how well they agree.
# A benchmark, not a test: torch is never a dependency of the product or of CI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TORCH_VERSION=2.15.0
NUMPY_VERSION=2.4.6
SAFETENSORS_VERSION=0.8.0

preset=videoworld2
threads=2
frames="" height="" width="" dir="" build=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --preset) preset="$2"; shift 2 ;;
    --frames) frames="$2"; shift 2 ;;
    --height) height="$2"; shift 2 ;;
    --width) width="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "dldm_peer.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

size_args=()
[[ -n "$frames" ]] && size_args+=(--frames "$frames")
[[ -n "$height" ]] && size_args+=(--height "$height")
[[ -n "$width" ]] && size_args+=(--width "$width")
if [[ -z "$dir" ]]; then
  dir="out/dldm-peer-${preset}-${frames:-d}x${height:-d}x${width:-d}"
fi
mkdir -p "$dir"

VENV="$ROOT/.venv-bench"
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "== creating $VENV" >&2
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, numpy, safetensors, sys
sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
  echo "== installing torch==$TORCH_VERSION numpy==$NUMPY_VERSION safetensors==$SAFETENSORS_VERSION" >&2
  "$VENV/bin/pip" install --progress-bar off -q \
    "torch==$TORCH_VERSION" "numpy==$NUMPY_VERSION" "safetensors==$SAFETENSORS_VERSION" >&2
fi

if [[ $build -eq 1 ]]; then
  echo "== cargo build --release --bin vw2" >&2
  cargo build --release --bin vw2 >&2
fi
VW2="$ROOT/target/release/vw2"

echo "== load before the runs: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "== candle: vw2 bench dldm --preset $preset ${size_args[*]:-} (threads $threads)" >&2
RAYON_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads" \
  "$VW2" bench dldm --preset "$preset" "${size_args[@]}" --save "$dir" --json > "$dir/candle.json"
echo "== torch: benches/dldm_torch.py $dir --threads $threads" >&2
OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads" \
  "$VENV/bin/python" benches/dldm_torch.py "$dir" --threads "$threads" > "$dir/torch.json"
echo "== load after the runs: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

"$VENV/bin/python" - "$dir" <<'EOF'
import json, sys, os
d = sys.argv[1]
c = json.load(open(os.path.join(d, "candle.json")))
t = json.load(open(os.path.join(d, "torch.json")))
print(f"dLDM peer bench: {c['frames']}x{c['height']}x{c['width']}, {c['parameters']} parameters, "
      f"threads candle {c['threads']} / torch {t['threads']} (torch {t['torch']}, "
      f"warm-up {'yes' if t['warmup'] else 'no'}), files in {d}")
rows = [("encode clip -> codes (s)", "encode_s"),
        ("encode frame 0 (s)", "first_frame_s"),
        ("decode frame 0 + codes (s)", "decode_s"),
        ("peak RSS encode (MiB)", "encode_peak_mib"),
        ("peak RSS frame0+decode (MiB)", "decode_peak_mib"),
        ("RSS before stages (MiB)", "baseline_mib")]
print(f"{'':30} {'candle':>10} {'torch':>10} {'torch/candle':>13}")
for name, k in rows:
    a, b = c[k], t[k]
    r = b / a if a else float("nan")
    print(f"{name:30} {a:10.3f} {b:10.3f} {r:13.2f}")
for name, k in [("encode peak - before (MiB)", "encode_peak_mib"),
                ("frame0+decode peak - before", "decode_peak_mib")]:
    a, b = c[k] - c["baseline_mib"], t[k] - t["baseline_mib"]
    r = b / a if a > 0 else float("nan")
    print(f"{name:30} {a:10.3f} {b:10.3f} {r:13.2f}")
ag = t["agreement"]
print(f"codes equal: {ag['indices_equal_frac']*100:.2f}% of {ag['indices_total']}")
print(f"max |features diff| {ag['features_max_abs_diff']:.3g} (max |features| {ag['features_max_abs']:.3g}); "
      f"first_features {ag['first_features_max_abs_diff']:.3g}; "
      f"decoded {ag['decoded_max_abs_diff']:.3g} (max |decoded| {ag['decoded_max_abs']:.3g})")
print(f"torch frame-0 encode run again (shapes seen before): {t['first_frame_again_s']:.3f} s; "
      f"frame 0 alone vs frame 0 of the clip: candle {ag['candle_first_vs_clip_frame0_max_abs_diff']:.3g}, "
      f"torch {ag['torch_first_vs_clip_frame0_max_abs_diff']:.3g}")
if "decoded_from_candle_codes_max_abs_diff" in ag:
    print(f"decoded from candle's codes: max |diff| {ag['decoded_from_candle_codes_max_abs_diff']:.3g}")
EOF
