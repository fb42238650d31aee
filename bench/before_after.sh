#!/usr/bin/env bash
# Two builds of the command line, one run: `websam bench` of each, alternated A B A B ... so that
# drift of the machine falls on both, then the medians of every row and their ratio B / A.
#   bash bench/before_after.sh CLI_A CLI_B [rounds] [bench arguments...]
# e.g. bash bench/before_after.sh /tmp/websam-before target/release/websam 3 --backend cpu --runs 5
# Defaults: 2 rounds, the fixture weights and image (tests/fixtures), `--runs 5`, and whatever
# backend the arguments name (cpu when none). RAYON_NUM_THREADS passes through to candle.
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?usage: before_after.sh CLI_A CLI_B [rounds] [bench arguments...]}
B=${2:?usage: before_after.sh CLI_A CLI_B [rounds] [bench arguments...]}
ROUNDS=${3:-2}
shift $(($# < 3 ? $# : 3))
ARGS=("$@")
[[ ${#ARGS[@]} -gt 0 ]] || ARGS=(--runs 5)
log=$(mktemp)
for ((r = 0; r < ROUNDS; r++)); do
    for label in A B; do
        cli=$A
        [[ $label == B ]] && cli=$B
        echo "=== round $r, $label: $cli bench ${ARGS[*]}" >&2
        "$cli" bench --weights tests/fixtures/mobile_sam.pth --image tests/fixtures/image.png "${ARGS[@]}" 2>/dev/null |
            grep -E ' median ' | sed "s/^/$label\t/" | tee -a "$log" >&2
    done
done
# Rows: LABEL \t <name...> median X ms ...; the median over rounds of each row's median.
python3 - "$log" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, rest = line.rstrip("\n").split("\t", 1)
    m = re.match(r"(.*?)\s+median\s+([0-9.]+) ms", rest)
    if m:
        # The adapter's name and the dispatch count are not part of the row's name.
        name = re.sub(r"\s+\(\d+ dispatches\)", "", m.group(1)).strip()
        rows.setdefault(name, {}).setdefault(label, []).append(float(m.group(2)))
print(f"{'row':60} {'A ms':>9} {'B ms':>9} {'B/A':>7}")
for name, by in rows.items():
    if "A" in by and "B" in by:
        a, b = statistics.median(by["A"]), statistics.median(by["B"])
        print(f"{name:60} {a:9.1f} {b:9.1f} {b / a:7.3f}")
PY
rm -f "$log"
