#!/usr/bin/env bash
# Run here, in the checkout the device tool sends, before the device call (bench/DEVICE.md):
# fetches what the device machine lacks into ignored folders (.whl: mobilesam-mirror, sam2 and
# their needs, pure Python wheels; .gl: the Vulkan and GL loaders as Debian packages), packs the
# release CLI into .cli/websam.xz and examples/sam2_bench into .cli/sam2_bench.xz (about a third
# of their size: the working tree and the carried paths share 64 MiB), checks what would travel,
# and prints the call.
set -euo pipefail
cd "$(dirname "$0")/.."
WEBSAM=target/release/websam
LIMIT=$((64 * 1024 * 1024))

exclude=$(git rev-parse --git-path info/exclude)
for dir in /.whl/ /.gl/ /.cli/; do
    grep -qxF "$dir" "$exclude" || echo "$dir" >>"$exclude"
done

# mobile_sam and segment_anything (its automatic mask generator) for Python 3.12 on x86-64 (the
# machine's python3); torch, torchvision, timm, numpy and pillow are there already.
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl mobilesam-mirror==1.0.0 segment-anything==1.0
# For bench/sam2_gpu_peer.py: sam2 1.1.0 and what it needs beyond the machine's packages, pure
# Python wheels built by the bench venv's pip (sam2, iopath and antlr4 come as sources only;
# sam2's build imports torch, hence that venv and no build isolation).
VENV_PIP=target/bench-venv/bin/pip
if [[ -x $VENV_PIP ]]; then
    SAM2_BUILD_CUDA=0 "$VENV_PIP" wheel -q --no-deps --no-build-isolation -w .whl sam2==1.1.0 \
        hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 iopath==0.1.10
else
    echo "warning: no $VENV_PIP (bench/sam2_native.py's venv): no SAM 2 wheels, its step will fail"
fi

# The loaders, as the device tool's notes fetch them.
rm -rf .gl
mkdir -p .gl /tmp/amd64/partial
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
# shellcheck disable=SC2086  # $o holds several options
apt-get $o update -qq
# shellcheck disable=SC2086
(cd .gl && apt-get $o download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)

if [[ ! -x $WEBSAM ]]; then
    echo "error: no $WEBSAM; build it with: cargo build --release --bin websam" >&2
    exit 1
fi
"$WEBSAM" bench --help | grep -q -- --precision ||
    echo "warning: $WEBSAM has no --precision flag; rebuild it"
newer=$(find src Cargo.toml Cargo.lock -newer "$WEBSAM" -type f | head -3)
[[ -z $newer ]] || echo "warning: sources newer than $WEBSAM (rebuild?): $newer"

rm -rf .cli
mkdir -p .cli
xz -T0 -6 -c "$WEBSAM" >.cli/websam.xz
# SAM 2.1's native bench (cargo build --release --example sam2_bench), about 3.3 MB packed.
SAM2_BENCH=target/release/examples/sam2_bench
if [[ -x $SAM2_BENCH ]]; then
    newer=$(find src Cargo.toml Cargo.lock examples/sam2_bench.rs -newer "$SAM2_BENCH" -type f |
        head -3)
    [[ -z $newer ]] || echo "warning: sources newer than $SAM2_BENCH (rebuild?): $newer"
    xz -T0 -6 -c "$SAM2_BENCH" >.cli/sam2_bench.xz
else
    echo "warning: no $SAM2_BENCH (cargo build --release --example sam2_bench):" \
        "the SAM 2.1 step will fail"
fi

# What travels: tracked and untracked-not-ignored files, plus the carried paths.
tree=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
carried=$(du -cb .whl .gl .cli | tail -1 | cut -f1)
du -sh .whl .gl .cli
echo "working tree $((tree / 1024)) KiB + carried $((carried / 1024)) KiB = $(((tree + carried) / 1024)) KiB (limit $((LIMIT / 1024)) KiB)"
if ((tree + carried > LIMIT)); then
    echo "error: over the device tool's 64 MiB" >&2
    exit 1
fi

cat <<'EOF'
device call:
  run(command="bash bench/device.sh", carry=[".whl", ".gl", ".cli"], timeout_s=540)
EOF
