#!/usr/bin/env bash
# Build and cache the peers that benches/compare measures surveil against:
#   - llama.cpp (from the PyPI sdist of llama-cpp-python, vendor/llama.cpp), CPU only, the tools
#     llama-bench, llama-quantize and llama-mtmd-cli;
#   - one Python virtualenv with PyTorch (CPU use), transformers, safetensors, pillow, the `gguf`
#     package and the requirements of llama.cpp's convert_hf_to_gguf.py.
#
# Everything lives OUTSIDE the clone, under ${SURVEIL_PEERS:-$HOME/.cache/surveil/peers}:
#   downloads/            the sdist and wheels as downloaded
#   src/                  the unpacked sdist (llama.cpp's source, convert_hf_to_gguf.py, gguf-py)
#   tools-venv/           cmake and ninja (PyPI wheels), used only to build llama.cpp
#   llama.cpp/bin/        llama-bench, llama-quantize, llama-mtmd-cli (+ their shared libraries)
#   llama.cpp/VERSION     llama-cpp-python version, llama.cpp commit, build flags, compiler
#   py-venv/              python with torch, transformers, safetensors, pillow, gguf, numpy
#   bin/convert_hf_to_gguf   wrapper: py-venv's python on src/.../convert_hf_to_gguf.py
#   peers.json            what was built, where, which versions (read by benches/compare)
#
# Idempotent: a step whose stamp file matches the pinned versions is skipped. Works offline once
# cached. Builds run under `nice -n 19` (the machine is shared). Usage:
#   benches/peers/setup.sh            # everything
#   benches/peers/setup.sh llama      # llama.cpp only
#   benches/peers/setup.sh python     # the Python venv only
#   benches/peers/setup.sh status     # print what is there, build nothing
# Exit status: 0 when everything asked for is there, 1 with a message naming the failed step.
set -euo pipefail

# ---- pinned versions -------------------------------------------------------------------------
LLAMA_CPP_PYTHON_VERSION=0.3.36   # its vendor/llama.cpp is the llama.cpp we build
CMAKE_VERSION=4.1.2
NINJA_VERSION=1.13.0
# convert_hf_to_gguf.py's requirements (requirements/requirements-convert_hf_to_gguf.txt of that
# llama.cpp) pin torch 2.11.0, transformers 4.57.6, numpy ~2.2.6; the transformers peer uses the
# same venv, so both are measured and converted with one set of versions.
TORCH_VERSION=2.11.0
TRANSFORMERS_VERSION=4.57.6
NUMPY_VERSION=2.2.6
SAFETENSORS_VERSION=0.6.2
PILLOW_VERSION=11.3.0
SENTENCEPIECE_VERSION=0.2.1
PROTOBUF_VERSION=4.25.8
# torch's Linux x86_64 wheel on PyPI is a CUDA build: its shared objects link against these NVIDIA
# runtime libraries, so `import torch` fails without them even on a machine without a GPU. We
# install exactly the ones that are linked (pinned to what torch 2.11.0 names) with --no-deps,
# and leave out what torch only loads on demand on a GPU (triton, cuda-bindings, cusolver, nvrtc,
# nvtx, the cuda-toolkit meta package).
TORCH_NVIDIA_LIBS=(
    "nvidia-cuda-runtime==13.0.96.*"
    "nvidia-cuda-cupti==13.0.85.*"
    "nvidia-cublas==13.1.0.3.*"
    "nvidia-cufft==12.0.0.61.*"
    "nvidia-cufile==1.15.1.6.*"
    "nvidia-curand==10.4.0.35.*"
    "nvidia-cusparse==12.6.3.3.*"
    "nvidia-nvjitlink==13.0.88.*"
    "nvidia-cudnn-cu13==9.19.0.56"
    "nvidia-cusparselt-cu13==0.8.0"
    "nvidia-nccl-cu13==2.28.9"
    "nvidia-nvshmem-cu13==3.4.5"
)
TORCH_PURE_DEPS=("filelock" "typing-extensions>=4.10.0" "setuptools<82" "sympy>=1.13.3"
    "networkx>=2.5.1" "jinja2" "fsspec>=0.8.5")

PEERS="${SURVEIL_PEERS:-$HOME/.cache/surveil/peers}"
PYTHON="${PYTHON:-python3}"
NICE=(nice -n 19)
JOBS="${JOBS:-$(nproc)}"
WHAT="${1:-all}"

SDIST_NAME="llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}"
SRC="$PEERS/src/$SDIST_NAME"
LLAMA_SRC="$SRC/vendor/llama.cpp"
LLAMA_DIR="$PEERS/llama.cpp"
PY_VENV="$PEERS/py-venv"
TOOLS_VENV="$PEERS/tools-venv"
LLAMA_TOOLS=(llama-bench llama-quantize llama-mtmd-cli)

step="start"
trap 'rc=$?; if [ $rc -ne 0 ]; then echo "benches/peers/setup.sh: FAILED in step: $step (exit $rc); cache: $PEERS" >&2; fi' EXIT
log() { echo "[peers] $*" >&2; }
die() { echo "benches/peers/setup.sh: error: $*" >&2; exit 1; }

case "$WHAT" in
    all | llama | python | status) ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$WHAT' (all, llama, python, status)" ;;
esac

command -v "$PYTHON" >/dev/null || die "$PYTHON not found (needed for the venvs)"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || die "$PYTHON lacks venv/ensurepip (apt-get install python3-venv)"
mkdir -p "$PEERS/downloads" "$PEERS/src" "$PEERS/bin"

# ---- the sdist -------------------------------------------------------------------------------
fetch_sdist() {
    step="download llama-cpp-python ${LLAMA_CPP_PYTHON_VERSION} sdist"
    local tgz="$PEERS/downloads/$SDIST_NAME.tar.gz"
    if [ ! -s "$tgz" ]; then
        log "downloading the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist from PyPI"
        # --no-binary names the one package: `--no-binary :all:` would also build pip's build
        # dependencies (cmake itself) from source just to read the sdist's metadata.
        "${NICE[@]}" "$PYTHON" -m pip download --quiet --no-deps \
            --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" \
            -d "$PEERS/downloads"
    fi
    [ -s "$tgz" ] || die "pip did not leave $tgz"
    if [ ! -f "$LLAMA_SRC/CMakeLists.txt" ]; then
        step="unpack $tgz"
        rm -rf "$SRC.partial"
        mkdir -p "$SRC.partial"
        tar -xzf "$tgz" -C "$SRC.partial" --strip-components=1
        rm -rf "$SRC"
        mv "$SRC.partial" "$SRC"
    fi
    [ -f "$LLAMA_SRC/CMakeLists.txt" ] || die "the sdist has no vendor/llama.cpp/CMakeLists.txt"
}

# The llama.cpp commit the sdist vendors: the sdist has no git metadata; llama-cpp-python's
# CHANGELOG names the commit of each update, the newest first.
llama_commit() {
    grep -o -m1 'llama.cpp@[0-9a-f]\{7,40\}' "$SRC/CHANGELOG.md" 2>/dev/null | cut -d@ -f2 || true
}

tools_venv() {
    step="tools venv (cmake $CMAKE_VERSION, ninja $NINJA_VERSION)"
    if [ ! -x "$TOOLS_VENV/bin/cmake" ] || ! "$TOOLS_VENV/bin/cmake" --version | grep -q "$CMAKE_VERSION"; then
        log "creating $TOOLS_VENV with cmake and ninja"
        rm -rf "$TOOLS_VENV"
        "$PYTHON" -m venv "$TOOLS_VENV"
        "${NICE[@]}" "$TOOLS_VENV/bin/pip" install --quiet --only-binary :all: \
            "cmake==$CMAKE_VERSION" "ninja==$NINJA_VERSION"
    fi
}

build_llama() {
    fetch_sdist
    local commit stamp want
    commit="$(llama_commit)"
    want="llama-cpp-python=$LLAMA_CPP_PYTHON_VERSION llama.cpp=${commit:-unknown}"
    stamp="$LLAMA_DIR/VERSION"
    if [ -f "$stamp" ] && head -1 "$stamp" | grep -qxF "$want" &&
        for t in "${LLAMA_TOOLS[@]}"; do [ -x "$LLAMA_DIR/bin/$t" ] || exit 1; done; then
        log "llama.cpp already built ($want)"
        return
    fi
    tools_venv
    step="cmake configure llama.cpp"
    local build="$LLAMA_DIR/build"
    mkdir -p "$LLAMA_DIR"
    local flags=(
        -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON
        -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_LLGUIDANCE=OFF
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF
        -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_APP=OFF
        -DLLAMA_BUILD_NUMBER=0 "-DLLAMA_BUILD_COMMIT=${commit:-unknown}"
    )
    log "configuring llama.cpp ($want) in $build"
    PATH="$TOOLS_VENV/bin:$PATH" "${NICE[@]}" cmake -S "$LLAMA_SRC" -B "$build" "${flags[@]}" \
        >"$LLAMA_DIR/configure.log" 2>&1 || { tail -30 "$LLAMA_DIR/configure.log" >&2; die "cmake configure failed (log: $LLAMA_DIR/configure.log)"; }
    step="cmake build ${LLAMA_TOOLS[*]}"
    log "building ${LLAMA_TOOLS[*]} with $JOBS jobs under nice (log: $LLAMA_DIR/build.log)"
    PATH="$TOOLS_VENV/bin:$PATH" "${NICE[@]}" cmake --build "$build" --config Release -j "$JOBS" \
        --target "${LLAMA_TOOLS[@]}" >"$LLAMA_DIR/build.log" 2>&1 || { tail -30 "$LLAMA_DIR/build.log" >&2; die "cmake build failed (log: $LLAMA_DIR/build.log)"; }
    step="install llama.cpp tools into $LLAMA_DIR/bin"
    rm -rf "$LLAMA_DIR/bin"
    mkdir -p "$LLAMA_DIR/bin"
    for t in "${LLAMA_TOOLS[@]}"; do
        [ -x "$build/bin/$t" ] || die "the build did not produce $build/bin/$t"
        cp -a "$build/bin/$t" "$LLAMA_DIR/bin/"
    done
    # the shared libraries the tools load (rpath $ORIGIN in llama.cpp's build)
    find "$build/bin" -maxdepth 1 -name '*.so*' -exec cp -a {} "$LLAMA_DIR/bin/" \;
    "$LLAMA_DIR/bin/llama-bench" --help >/dev/null 2>&1 || die "llama-bench does not run (see $LLAMA_DIR/bin)"
    {
        echo "$want"
        echo "source: PyPI sdist llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION, vendor/llama.cpp"
        echo "commit: ${commit:-unknown} (from the sdist's CHANGELOG.md)"
        echo "cmake: $("$TOOLS_VENV/bin/cmake" --version | head -1)"
        echo "compiler: $(cc --version | head -1)"
        echo "flags: ${flags[*]}"
        echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
        "$LLAMA_DIR/bin/llama-bench" --version 2>&1 | head -2 | sed 's/^/llama-bench --version: /'
    } >"$stamp"
    log "llama.cpp built: $LLAMA_DIR/bin"
}

py_venv() {
    fetch_sdist
    # the gguf package at the version the sdist vendors (the converter itself imports the
    # vendored gguf-py)
    local gguf_version
    gguf_version="$(grep -m1 '^version' "$LLAMA_SRC/gguf-py/pyproject.toml" | cut -d'"' -f2)"
    local want="torch=$TORCH_VERSION transformers=$TRANSFORMERS_VERSION numpy=$NUMPY_VERSION safetensors=$SAFETENSORS_VERSION pillow=$PILLOW_VERSION gguf=$gguf_version"
    local stamp="$PY_VENV/SURVEIL_PEERS_STAMP"
    if [ -f "$stamp" ] && head -1 "$stamp" | grep -qxF "$want"; then
        log "python venv already there ($want)"
    else
        step="create $PY_VENV"
        log "creating $PY_VENV ($want)"
        rm -rf "$PY_VENV"
        "$PYTHON" -m venv "$PY_VENV"
        local wheels="$PEERS/downloads/wheels"
        local others=("${TORCH_PURE_DEPS[@]}" "numpy==$NUMPY_VERSION"
            "transformers==$TRANSFORMERS_VERSION" "safetensors==$SAFETENSORS_VERSION"
            "pillow==$PILLOW_VERSION" "sentencepiece==$SENTENCEPIECE_VERSION"
            "protobuf==$PROTOBUF_VERSION" "gguf==$gguf_version" pyyaml tqdm requests)
        # every wheel is downloaded once into the cache, then installed from there alone, so
        # that a rebuilt venv needs no network
        if [ ! -f "$wheels/.complete" ] || ! head -1 "$wheels/.complete" | grep -qxF "$want"; then
            step="download torch $TORCH_VERSION and the NVIDIA libraries it links (no triton)"
            mkdir -p "$wheels"
            local dl=("${NICE[@]}" "$PY_VENV/bin/pip" download --quiet --only-binary :all: -d "$wheels")
            "${dl[@]}" --no-deps "torch==$TORCH_VERSION" "${TORCH_NVIDIA_LIBS[@]}"
            step="download transformers $TRANSFORMERS_VERSION and the converter's requirements"
            "${dl[@]}" "${others[@]}"
            echo "$want" >"$wheels/.complete"
        fi
        local pip=("${NICE[@]}" "$PY_VENV/bin/pip" install --quiet --no-index --find-links "$wheels")
        step="install torch $TORCH_VERSION (CPU use, no triton) into $PY_VENV"
        "${pip[@]}" --no-deps "torch==$TORCH_VERSION" "${TORCH_NVIDIA_LIBS[@]}"
        step="install transformers $TRANSFORMERS_VERSION and the converter's requirements"
        "${pip[@]}" "${others[@]}"
        echo "$want" >"$stamp"
    fi
    step="check the python venv"
    "$PY_VENV/bin/python" - <<'EOF' || die "the python venv does not import torch/transformers/gguf ($PY_VENV)"
import torch, transformers, safetensors, PIL, gguf, numpy
x = torch.ones(8, 8, dtype=torch.bfloat16)
assert float((x @ x).sum()) == 512.0
print(f"[peers] torch {torch.__version__} (cuda available: {torch.cuda.is_available()}), "
      f"transformers {transformers.__version__}, gguf {gguf.__version__ if hasattr(gguf, '__version__') else 'ok'}, "
      f"numpy {numpy.__version__}, threads {torch.get_num_threads()}")
EOF
    step="write $PEERS/bin/convert_hf_to_gguf"
    cat >"$PEERS/bin/convert_hf_to_gguf" <<EOF
#!/bin/sh
# llama.cpp's convert_hf_to_gguf.py from the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist, run by $PY_VENV
exec "$PY_VENV/bin/python" "$LLAMA_SRC/convert_hf_to_gguf.py" "\$@"
EOF
    chmod +x "$PEERS/bin/convert_hf_to_gguf"
    "$PEERS/bin/convert_hf_to_gguf" --help >/dev/null 2>&1 || die "convert_hf_to_gguf.py --help fails"
}

size_of() { du -sh "$1" 2>/dev/null | cut -f1; }

manifest() {
    step="write $PEERS/peers.json"
    local commit
    commit="$(llama_commit)"
    local have_llama=false have_py=false
    [ -x "$LLAMA_DIR/bin/llama-bench" ] && have_llama=true
    [ -f "$PY_VENV/SURVEIL_PEERS_STAMP" ] && have_py=true
    cat >"$PEERS/peers.json.tmp" <<EOF
{
  "peers_dir": "$PEERS",
  "llama_cpp": {
    "built": $have_llama,
    "bin": "$LLAMA_DIR/bin",
    "llama_cpp_python_sdist": "$LLAMA_CPP_PYTHON_VERSION",
    "commit": "${commit:-unknown}",
    "version_file": "$LLAMA_DIR/VERSION"
  },
  "python": {
    "built": $have_py,
    "python": "$PY_VENV/bin/python",
    "convert_hf_to_gguf": "$PEERS/bin/convert_hf_to_gguf",
    "torch": "$TORCH_VERSION",
    "transformers": "$TRANSFORMERS_VERSION"
  }
}
EOF
    mv "$PEERS/peers.json.tmp" "$PEERS/peers.json"
}

report() {
    echo "peers cache: $PEERS ($(size_of "$PEERS"))"
    if [ -f "$LLAMA_DIR/VERSION" ]; then
        echo "  llama.cpp: $LLAMA_DIR/bin ($(size_of "$LLAMA_DIR/bin"); build tree $(size_of "$LLAMA_DIR/build"))"
        sed 's/^/    /' "$LLAMA_DIR/VERSION"
    else
        echo "  llama.cpp: not built (benches/peers/setup.sh llama)"
    fi
    if [ -f "$PY_VENV/SURVEIL_PEERS_STAMP" ]; then
        echo "  python venv: $PY_VENV ($(size_of "$PY_VENV")): $(head -1 "$PY_VENV/SURVEIL_PEERS_STAMP")"
        echo "  converter: $PEERS/bin/convert_hf_to_gguf"
    else
        echo "  python venv: not built (benches/peers/setup.sh python)"
    fi
    echo "  downloads: $PEERS/downloads ($(size_of "$PEERS/downloads")), source: $SRC ($(size_of "$SRC"))"
}

case "$WHAT" in
    all) build_llama; py_venv ;;
    llama) build_llama ;;
    python) py_venv ;;
    status) ;;
esac
manifest
step="report"
report
