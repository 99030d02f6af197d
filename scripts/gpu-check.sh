#!/usr/bin/env bash
# The GPU checks of a CUDA build, in one script that ends within 6 minutes on one GPU:
# `surveil doctor`, then each model with dummy weights on `cuda`, with its memory blocks and a
# test inference, and a table of load time, time to first token (cold and warm), decode
# tokens/s and GPU memory (allocated by our tensors, held by the memory pool, reserved on the
# device) after load, after inference and after unload. It fails when GPU allocated is not 0
# after an unload or the host RSS left exceeds 768 MiB.
#
#   scripts/build-cuda.sh --compute-cap 90        # on any machine: the binary
#   scripts/gpu-check.sh                          # on the GPU machine
#
# Options: --bin PATH (default: target/cuda/surveil, else `surveil` on PATH),
#          --out DIR (default: $OUT, else ./output/gpu-check): one JSON file per check and
#          summary.json; --only NAME[,NAME] (some checks), --device DEV (default cuda). Each model gets a time limit so that the whole script ends in time;
#          a check that fails or runs out of time is reported as such and the others still run.
# The CUDA 13 libraries (cuBLAS, cuBLASLt, cuRAND) are looked up in the Python packages of the
# machine (`nvidia-cublas`, `nvidia-curand`, as PyTorch installs them) and added to
# LD_LIBRARY_PATH.
set -uo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
bin=""
out="${OUT:-$repo/output/gpu-check}"
only=""
device="cuda"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) bin="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --only) only=",$2,"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if [[ -z "$bin" ]]; then
    if [[ -x "$repo/target/cuda/surveil" ]]; then bin="$repo/target/cuda/surveil"
    else bin="$(command -v surveil || true)"; fi
fi
[[ -x "$bin" ]] || { echo "gpu-check: no surveil binary (build one: scripts/build-cuda.sh)" >&2; exit 1; }
mkdir -p "$out"
start=$(date +%s)

# The CUDA libraries from the Python packages, when the system has none on its path.
libdirs="$(python3 - 2>/dev/null <<'EOF'
import glob, os, site, sys
roots = set(site.getsitepackages() + [site.getusersitepackages()] + sys.path)
found = set()
for root in roots:
    for lib in glob.glob(os.path.join(root, "nvidia", "**", "libcu*.so*"), recursive=True):
        if os.path.basename(lib).startswith(("libcublas", "libcurand")):
            found.add(os.path.dirname(lib))
print(":".join(sorted(found)))
EOF
)"
[[ -n "$libdirs" ]] && export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "gpu-check: $bin; LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader

echo "== doctor"
"$bin" doctor --json >"$out/doctor.json" 2>"$out/doctor.err"
echo "doctor: rc $?"
python3 - "$out/doctor.json" <<'EOF'
import json, sys
try:
    c = json.load(open(sys.argv[1]))["cuda"]
except Exception as e:
    print(f"doctor: no JSON ({e})"); sys.exit(0)
print(f"cuda compiled={c['compiled']} available={c['available']} reason={c['reason']}")
for d in c["devices"]:
    gib = lambda b: "?" if b is None else f"{b / 2**30:.1f} GiB"
    print(f"  cuda:{d['ordinal']} {d['name']}: total {gib(d['total_bytes'])}, free "
          f"{gib(d['free_bytes'])}, reserved {gib(d['reserved_bytes'])}")
EOF

# name | seconds allowed | test-model arguments
checks=(
    "git-base-4bit|60|--git-base --infer-runs 3 --infer-tokens 64 --ignore-eos"
    "qwen2-vl-2b-4bit|100|--qwen --infer-runs 2 --infer-tokens 64 --ignore-eos"
    "qwen2-vl-2b-bf16|70|--qwen --set vlm.load_in_4bit=false --set vlm.quant=bf16 --infer-runs 2 --infer-tokens 64 --ignore-eos"
    "kimi-vl-a3b-4bit|100|--kimi --infer-runs 2 --infer-tokens 32 --ignore-eos"
)
selected=()
for check in "${checks[@]}"; do
    IFS='|' read -r name limit args <<<"$check"
    [[ -z "$only" || "$only" == *",$name,"* ]] && selected+=("$check")
done
[[ ${#selected[@]} -gt 0 ]] || { echo "gpu-check: --only matches no check" >&2; exit 2; }
for check in "${selected[@]}"; do
    IFS='|' read -r name limit args <<<"$check"
    echo "== $name (limit ${limit}s)"
    # shellcheck disable=SC2086 # the arguments are words
    timeout --signal=INT --kill-after=10 "$limit" "$bin" test-model $args --weights dummy \
        --device "$device" --memory-stats --infer --json >"$out/$name.json" 2>"$out/$name.err"
    rc=$?
    echo "$rc" >"$out/$name.rc"
    echo "$name: rc $rc after $(( $(date +%s) - start ))s in all"
    [[ $rc == 0 ]] || tail -n 5 "$out/$name.err"
done

python3 - "$out" "${selected[@]}" <<'EOF'
import json, os, sys
out, checks = sys.argv[1], [c.split("|")[0] for c in sys.argv[2:]]
mib = lambda b: "-" if b is None else f"{b / 2**20:.0f}"
HOST_LEFT_BOUND = 768 * 2**20
rows, summary = [], {}
for name in checks:
    rc = open(os.path.join(out, name + ".rc")).read().strip()
    try:
        r = json.load(open(os.path.join(out, name + ".json")))
    except Exception:
        r = None
    if not r or not r.get("ok"):
        err = open(os.path.join(out, name + ".err")).read().strip().splitlines()
        why = (r or {}).get("error") or (err[-1] if err else f"rc {rc}")
        rows.append(f"{name:18} FAILED (rc {rc}): {str(why)[:150]}")
        summary[name] = {"ok": False, "rc": rc, "error": str(why)}
        continue
    runs = r.get("inference_runs") or []
    m = r["memory"]
    g = lambda block, key: m.get(block, {}).get(key)
    first, warm = (runs[0] if runs else {}), (runs[-1] if runs else {})
    s = {
        "device": r.get("device"), "load_s": r.get("load_seconds"),
        "ttft_cold_s": first.get("time_to_first_token_s"),
        "ttft_warm_s": warm.get("time_to_first_token_s"),
        "vision_warm_s": warm.get("vision_s"),
        "decode_tok_s": warm.get("decode_tokens_per_s"),
        "weights_bytes": r.get("quantization", {}).get("total_bytes"),
        "activations": r.get("quantization", {}).get("activations"),
    }
    for block in ("after_load", "after_inference", "after_unload"):
        s[f"gpu_allocated_{block}"] = g(block, "gpu_allocated_bytes")
        s[f"gpu_reserved_{block}"] = g(block, "gpu_reserved_bytes")
        s[f"gpu_pool_{block}"] = g(block, "gpu_pool_reserved_bytes")
        s[f"gpu_free_{block}"] = g(block, "gpu_free_bytes")
        s[f"rss_{block}"] = g(block, "rss_bytes")
    # What must hold after an unload: none of our tensors left on the GPU, and the host RSS
    # left by the CUDA libraries and context within HOST_LEFT_BOUND (docs/memory.md).
    before = g("before", "rss_bytes")
    left = None if before is None or s["rss_after_unload"] is None else s["rss_after_unload"] - before
    problems = []
    if s["gpu_allocated_after_unload"] not in (0, None):
        problems.append(f"GPU allocated after unload {mib(s['gpu_allocated_after_unload'])} MiB")
    if left is not None and left > HOST_LEFT_BOUND:
        problems.append(f"host RSS after unload {mib(left)} MiB above before loading")
    s["host_rss_left_after_unload"] = left
    s["problems"] = problems
    summary[name] = {"ok": not problems, **s}
    f = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"
    rows.append(
        f"{name:18} {s['device']:7} {s['activations'] or '-'} | load {f(s['load_s'], 1)} s | TTFT cold {f(s['ttft_cold_s'])} s"
        f" warm {f(s['ttft_warm_s'], 3)} s | decode {f(s['decode_tok_s'], 1)} tok/s | GPU MiB"
        " allocated/pool/reserved:"
        + ",".join(f" {k} {mib(s['gpu_allocated_after_' + k])}/{mib(s['gpu_pool_after_' + k])}/"
                   f"{mib(s['gpu_reserved_after_' + k])}" for k in ("load", "inference", "unload"))
        + f" | host RSS left after unload {mib(left)} MiB"
        + ("" if not problems else " | PROBLEM: " + "; ".join(problems)))
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print("== summary")
print("\n".join(rows))
sys.exit(0 if all(v["ok"] for v in summary.values()) else 1)
EOF
status=$?
echo "gpu-check: done in $(( $(date +%s) - start ))s; files in $out"
exit "$status"
