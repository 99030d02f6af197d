#!/usr/bin/env bash
# Builds `surveil` with CUDA support, in one command, on a machine with no CUDA installed and
# no GPU.
#
#   scripts/build-cuda.sh                      # machine code for compute capabilities 8.0-9.0
#   scripts/build-cuda.sh --compute-cap 90     # one capability (H100/H200): a faster build
#
# What it does:
# 1. Installs CUDA 13.0's compiler and runtime from the Python package registry (nvcc, cicc,
#    the CUDA runtime, headers) into a cache outside the clone:
#    $SURVEIL_CUDA_CACHE (default ~/.cache/surveil/cuda)/<version>. Done once; idempotent.
#    13.0 matches the R580 drivers; a newer nvcc writes PTX that a 13.0 driver refuses.
# 2. Builds `surveil --features cuda` so that the binary loads the CUDA driver and libraries
#    (libcuda, cuBLAS, cuRAND) at run time instead of linking them: it starts on a machine
#    without the NVIDIA driver and runs on the CPU there (`surveil doctor` says why CUDA is
#    unavailable). candle asks its CUDA bindings (cudarc) to link those libraries at build
#    time, so the build patches that one feature of candle-core's manifest, in a copy in the
#    cache, from `dynamic-linking` to `dynamic-loading`; nothing else of candle changes. The
#    CUDA runtime is linked statically (it loads the driver itself when first used).
# 3. Compiles candle's statically linked kernels (quantized matmul, MoE) to real machine code
#    for every capability asked for, plus PTX of the lowest for newer GPUs. candle's other
#    kernels are PTX strings that the driver compiles at first use and keeps in its cache
#    (~/.nv/ComputeCache); `scripts/gpu-check.sh` warms that cache before it times anything.
#
# The binary lands at ${CARGO_TARGET_DIR:-target}/cuda/surveil; the script prints the path.
# At run time it needs the NVIDIA driver (libcuda.so.1) and the CUDA 13 libraries cuBLAS,
# cuBLASLt and cuRAND on the library path (e.g. the `nvidia-cublas` and `nvidia-curand`
# Python packages, or a CUDA toolkit install).
set -euo pipefail

usage() {
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --compute-cap LIST   comma-separated compute capabilities, e.g. 90 or 80,86,89,90
                       (default: 80,86,89,90)
  --install-only       install the CUDA build tools into the cache, build nothing
  -h, --help           this text
Environment: SURVEIL_CUDA_CACHE (tool cache), CARGO_TARGET_DIR (build output).
EOF
}

caps="80,86,89,90"
install_only=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --compute-cap)
            [[ $# -ge 2 ]] || { echo "build-cuda: --compute-cap needs a value" >&2; exit 2; }
            caps="$2"; shift 2 ;;
        --compute-cap=*) caps="${1#*=}"; shift ;;
        --install-only) install_only=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build-cuda: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

# Capabilities: two or three digits each (80, 86, 89, 90, 100, 120), sorted, no duplicates.
IFS=',' read -r -a cap_list <<<"$caps"
for c in "${cap_list[@]}"; do
    if ! [[ "$c" =~ ^[0-9]{2,3}$ ]] || (( c < 75 )); then
        echo "build-cuda: --compute-cap '$caps': '$c' is not a compute capability of 7.5 or" \
             "later written as digits (e.g. 80 for 8.0, 90 for 9.0)" >&2
        exit 2
    fi
done
mapfile -t cap_list < <(printf '%s\n' "${cap_list[@]}" | sort -n -u)
min_cap="${cap_list[0]}"
cap_tag="$(IFS=-; echo "${cap_list[*]}")"

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

# ---- 1. the CUDA build tools, from the package registry, into the cache -------------------
cuda_release=13.0.88
wheels=(
    "nvidia-cuda-nvcc==13.0.88"
    "nvidia-cuda-crt==13.0.88"
    "nvidia-nvvm==13.0.88"
    "nvidia-cuda-runtime==13.0.96"
    "nvidia-cuda-cccl==13.0.85"
)
cache_root="${SURVEIL_CUDA_CACHE:-$HOME/.cache/surveil/cuda}"
cache="$cache_root/$cuda_release"
cuda_home="$cache/nvidia/cu13"

if [[ ! -f "$cache/.complete" ]]; then
    command -v python3 >/dev/null || { echo "build-cuda: python3 (with pip) is needed" >&2; exit 1; }
    echo "build-cuda: installing CUDA $cuda_release build tools into $cache" >&2
    mkdir -p "$cache_root"
    staging="$(mktemp -d "$cache_root/.staging.XXXXXX")"
    trap 'rm -rf "$staging"' EXIT
    # stdout carries only the binary's path (callers capture it): tools print to stderr
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --dest "$staging/wheels" "${wheels[@]}" >&2
    for w in "$staging"/wheels/*.whl; do
        python3 -m zipfile -e "$w" "$staging/root" >&2
    done
    chmod +x "$staging"/root/nvidia/cu13/bin/* "$staging"/root/nvidia/cu13/nvvm/bin/*
    # The CUDA runtime links statically: a directory where `-lcudart` finds only the archive.
    mkdir -p "$staging/root/link"
    ln -s ../nvidia/cu13/lib/libcudart_static.a "$staging/root/link/libcudart.a"
    rm -rf "$cache"
    mv "$staging/root" "$cache"
    rm -rf "$staging"
    trap - EXIT
    touch "$cache/.complete"
fi
"$cuda_home/bin/nvcc" --version | grep -q "release 13.0" || {
    echo "build-cuda: $cuda_home/bin/nvcc is not CUDA 13.0; remove $cache and rerun" >&2
    exit 1
}
[[ $install_only == 1 ]] && { echo "$cuda_home"; exit 0; }

# ---- 2. candle-core with its CUDA libraries loaded at run time ---------------------------
command -v cargo >/dev/null || { echo "build-cuda: cargo is needed (scripts/setup.sh)" >&2; exit 1; }
cargo fetch --locked --quiet >&2
candle_src="$(cargo metadata --locked --format-version 1 |
    python3 -c 'import json, os, sys
pkgs = json.load(sys.stdin)["packages"]
print(next(os.path.dirname(p["manifest_path"]) for p in pkgs if p["name"] == "candle-core"))')"
candle_version="$(basename "$candle_src")"
patched="$cache/patched/$candle_version"
if [[ ! -f "$patched/.complete" ]]; then
    rm -rf "$patched"
    mkdir -p "$(dirname "$patched")"
    cp -R "$candle_src" "$patched"
    # Only the cudarc dependency's feature list names dynamic-linking.
    sed -i 's/"dynamic-linking"/"dynamic-loading"/' "$patched/Cargo.toml"
    if grep -q '"dynamic-linking"' "$patched/Cargo.toml" ||
        ! grep -q '"dynamic-loading"' "$patched/Cargo.toml"; then
        echo "build-cuda: $candle_version's manifest no longer asks cudarc for" \
             "dynamic-linking; the patch in $0 needs updating" >&2
        exit 1
    fi
    touch "$patched/.complete"
fi

# ---- 3. nvcc that writes machine code for every capability asked for ----------------------
# candle's build passes one `-gencode` for $CUDA_COMPUTE_CAP; this wrapper widens it for the
# objects it compiles (one nvcc thread per architecture) and leaves PTX (`--ptx`, one virtual
# architecture) at the lowest. candle's kernel build uses half the cores unless
# RAYON_NUM_THREADS says otherwise; the build below gives it all of them.
# Written every time (it is tiny), so a change to this script reaches a cached wrapper.
wrapper="$cache/bin/nvcc-sm$cap_tag"
{
    mkdir -p "$cache/bin"
    gencode=()
    for c in "${cap_list[@]}"; do
        suffix=""
        (( c >= 90 )) && (( c != 120 )) && (( c <= 103 )) && suffix="a"
        (( c == 120 )) && suffix="a"
        gencode+=("-gencode=arch=compute_$c$suffix,code=sm_$c$suffix")
    done
    gencode+=("-gencode=arch=compute_$min_cap,code=compute_$min_cap")
    {
        echo '#!/usr/bin/env bash'
        echo "# Written by scripts/build-cuda.sh: nvcc for compute capabilities $caps."
        echo "real='$cuda_home/bin/nvcc'"
        printf 'gencode=(%s)\n' "${gencode[*]}"
        cat <<'EOF'
for a in "$@"; do [[ "$a" == --ptx ]] && exec "$real" "$@"; done
args=(--threads 0)
for a in "$@"; do
    case "$a" in -gencode=*) args+=("${gencode[@]}") ;; *) args+=("$a") ;; esac
done
exec "$real" "${args[@]}"
EOF
    } >"$wrapper.tmp"
    chmod +x "$wrapper.tmp"
    mv "$wrapper.tmp" "$wrapper"
}

# ---- 4. the build ---------------------------------------------------------------------------
target_root="${CARGO_TARGET_DIR:-$repo/target}"
target="$target_root/cuda/build-sm$cap_tag"
out="$target_root/cuda/surveil"

# The patch rewrites Cargo.lock's entry for candle-core; the checkout's lock file is restored.
lock_backup="$(mktemp)"
cp Cargo.lock "$lock_backup"
trap 'cp "$lock_backup" Cargo.lock; rm -f "$lock_backup"' EXIT

echo "build-cuda: building surveil for compute capabilities $caps into $target" >&2
CUDA_HOME="$cuda_home" \
CUDA_PATH="$cuda_home" \
PATH="$cuda_home/bin:$PATH" \
NVCC="$wrapper" \
CUDA_COMPUTE_CAP="$min_cap" \
RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-$(nproc)}" \
RUSTFLAGS="${RUSTFLAGS:-} -L native=$cache/link" \
    cargo build --release -p surveil --features cuda \
        --target-dir "$target" \
        --config "patch.crates-io.candle-core.path=\"$patched\""

built="$target/release/surveil"
# The proof of step 2: no CUDA library among the binary's load-time dependencies.
needed="$(readelf -d "$built" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')"
if grep -Eq '^lib(cuda|cudart|cublas|cublasLt|curand|nvrtc)\.so' <<<"$needed"; then
    echo "build-cuda: $built links CUDA libraries at load time:" >&2
    echo "$needed" >&2
    exit 1
fi
# Without the debug line tables (the symbols stay, for backtraces): 90 MB instead of 230 MB.
objcopy --strip-debug "$built" "$out.tmp"
mv "$out.tmp" "$out"
echo "build-cuda: built $out (compute capabilities $caps; load-time libraries:" \
     "$(tr '\n' ' ' <<<"$needed"))" >&2
echo "$out"
