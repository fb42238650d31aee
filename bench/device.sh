#!/usr/bin/env bash
# The device machine's job (bench/DEVICE.md): websam's native GPU bench in f32 and f16, then the
# PyTorch peer (bench/gpu_peer.py) on the same card, segment everything on both, then SAM 2.1
# tiny on both (bench/sam2_gpu_peer.py). Every step runs even when an earlier one fails; the
# failures are listed at the end and set the exit status. Output goes to the terminal and to
# $OUT/device.log; the peers write $OUT/torch.json and $OUT/sam2.json.
#
# Overrides for a dry run elsewhere: OUT, PYTHON (python3), WEBSAM (.cli/websam.xz unpacked, else
# target/release/websam), SAM2_BENCH (.cli/sam2_bench.xz unpacked, else
# target/release/examples/sam2_bench), RUNS (20), PEER_ARGS (appended to the peer's arguments,
# e.g. "--device cpu --no-compile"), SAM2_ARGS (likewise for bench/sam2_gpu_peer.py, e.g.
# "--device cpu --backend cpu"), STEPS (all; "sam2": the SAM 2.1 step alone).
# Each step has a time limit so that the whole job stays under 9 minutes.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
: "${OUT:?OUT must name the folder for the results}"
PYTHON=${PYTHON:-python3}
if [[ -z ${WEBSAM:-} && -f .cli/websam.xz ]]; then
    WEBSAM=/tmp/websam-cli
    # Python's lzma: xz itself may be missing there.
    "${PYTHON:-python3}" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        .cli/websam.xz "$WEBSAM" && chmod +x "$WEBSAM"
fi
if [[ -z ${SAM2_BENCH:-} && -f .cli/sam2_bench.xz ]]; then
    SAM2_BENCH=/tmp/sam2_bench
    "$PYTHON" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        .cli/sam2_bench.xz "$SAM2_BENCH" && chmod +x "$SAM2_BENCH"
fi
WEBSAM=${WEBSAM:-target/release/websam}
SAM2_BENCH=${SAM2_BENCH:-target/release/examples/sam2_bench}
RUNS=${RUNS:-20}
PEER_ARGS=${PEER_ARGS:-}
SAM2_ARGS=${SAM2_ARGS:-}
STEPS=${STEPS:-all}
SITE=/tmp/site

failed=()

# step NAME CMD...: runs CMD in this shell, timed; a failure is recorded, not fatal.
step() {
    local name=$1 start=$SECONDS rc
    shift
    echo "=== $name"
    "$@"
    rc=$?
    echo "=== $name: exit $rc, $((SECONDS - start)) s"
    ((rc == 0)) || failed+=("$name (exit $rc)")
}

# Python packages the machine lacks (mobilesam-mirror), carried as wheels.
wheels() {
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl &&
        export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
}

# The Vulkan loader, carried as Debian packages, where the machine has none; the NVIDIA driver's
# ICD and EGL vendor files where they are.
vulkan() {
    if ldconfig -p | grep -q 'libvulkan\.so\.1'; then
        echo "libvulkan.so.1 is installed; .gl left packed"
    else
        for f in .gl/*.deb; do dpkg -x "$f" / || return; done
        ldconfig
    fi
    local nv=/usr/local/nvidia/share
    [[ -f $nv/vulkan/icd.d/nvidia_icd.json ]] &&
        export VK_DRIVER_FILES=${VK_DRIVER_FILES:-$nv/vulkan/icd.d/nvidia_icd.json}
    [[ -f $nv/glvnd/egl_vendor.d/10_nvidia.json ]] &&
        export __EGL_VENDOR_LIBRARY_FILENAMES=${__EGL_VENDOR_LIBRARY_FILENAMES:-$nv/glvnd/egl_vendor.d/10_nvidia.json}
    return 0
}

info() {
    uname -srm
    echo "cpus: $(nproc)"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi
        nvidia-smi --format=csv \
            --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.max.mem,power.limit
    fi
    if command -v vulkaninfo >/dev/null; then
        vulkaninfo --summary
    else
        ldconfig -p | grep -E 'libvulkan|libEGL\.so'
        ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/nvidia/share/vulkan/icd.d 2>/dev/null
        echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-}"
    fi
    "$WEBSAM" --version
    "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
    return 0
}

websam() {
    timeout -k 10 90 "$WEBSAM" bench --weights tests/fixtures/mobile_sam.pth \
        --image tests/fixtures/image.png --runs "$RUNS" --backend gpu --precision "$1"
}

# Segment everything, the default 32x32 grid (and 16x16 for the PyTorch side), on the fixture
# weights and image (the trained checkpoint does not fit the device tool's 64 MiB): websam's
# native GPU engine, then the official generator on the card (bench/amg_reference.py).
everything() {
    timeout -k 10 120 "$WEBSAM" everything --weights tests/fixtures/mobile_sam.pth \
        --image tests/fixtures/image.png --out "$OUT/everything.json" --backend gpu
}

# SAM 2.1 tiny: the seeded weights made there (bench/sam2_gpu_peer.py), websam's engine through
# examples/sam2_bench and the official sam2 on the card (sam2 and its needs carried as wheels).
sam2() {
    # shellcheck disable=SC2086  # SAM2_ARGS holds several arguments
    timeout -k 10 180 "$PYTHON" bench/sam2_gpu_peer.py --websam "$SAM2_BENCH" --runs "$RUNS" \
        --json "$OUT/sam2.json" $SAM2_ARGS
}

main() {
    [[ -d .whl ]] && step "wheels" wheels
    [[ -d .gl ]] && step "vulkan loader" vulkan
    info
    if [[ $STEPS != sam2 ]]; then
        step "websam gpu f32" websam f32
        step "websam gpu f16" websam f16
        # shellcheck disable=SC2086  # PEER_ARGS holds several arguments
        step "torch peer" timeout -k 10 300 "$PYTHON" bench/gpu_peer.py --device cuda --runs "$RUNS" \
            --json "$OUT/torch.json" $PEER_ARGS
        step "websam everything" everything
        step "torch everything" timeout -k 10 180 "$PYTHON" bench/amg_reference.py --device cuda \
            --grids 32,16 --runs 3 --weights tests/fixtures/mobile_sam.pth \
            --image tests/fixtures/image.png --json "$OUT/everything_torch.json"
    fi
    step "sam2.1 tiny" sam2
    if ((${#failed[@]})); then
        printf 'FAILED: %s\n' "${failed[@]}"
        return 1
    fi
    echo "all steps passed"
}

mkdir -p "$OUT"
main 2>&1 | tee "$OUT/device.log"
