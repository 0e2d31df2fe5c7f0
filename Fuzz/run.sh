#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer and AddressSanitizer and runs each for a time budget.
#
#   Fuzz/run.sh [TARGET|all] [SECONDS]      default: all targets, 60 s each
#
# Targets: message-decoder descriptor-chain scsi-request control-queue frontend-connection.
# Each runs over Fuzz/corpus/<target>/ (new interesting inputs up to FUZZ_MAX_LEN bytes are
# added there; the committed corpus is kept to at most FUZZ_CORPUS_CAP files by merging).
# Per target it prints the number of executions and whether it crashed; a crashing input is
# saved under Fuzz/crashes/<target>/ (not committed) and the script exits 1.
#
# Environment: FUZZ_SCRATCH (build dir, default .build-fuzz-asan), FUZZ_JOBS_FLAGS (extra
# libFuzzer flags), FUZZ_CORPUS_CAP (default 300), FUZZ_NO_CORPUS_UPDATE=1 (read-only corpus).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

ALL_TARGETS=(message-decoder descriptor-chain scsi-request control-queue frontend-connection)
TARGET=${1:-all}
SECONDS_EACH=${2:-60}
SCRATCH=${FUZZ_SCRATCH:-.build-fuzz-asan}
CAP=${FUZZ_CORPUS_CAP:-300}

if [[ $TARGET == all ]]; then TARGETS=("${ALL_TARGETS[@]}"); else TARGETS=("$TARGET"); fi
for t in "${TARGETS[@]}"; do
    [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || { echo "unknown fuzz target '$t' (one of: ${ALL_TARGETS[*]})" >&2; exit 2; }
done

echo "== building the fuzz targets (libFuzzer + AddressSanitizer) in $SCRATCH" >&2
swift build --scratch-path "$SCRATCH" --target FuzzTargets \
    -Xswiftc -sanitize=fuzzer,address -Xcc -fsanitize=fuzzer-no-link,address 2>&1 \
    | grep -vE '^\[[0-9]+/[0-9]+\] (Compiling|Emitting|Linking|Write)' >&2
[[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "build failed" >&2; exit 1; }
BIN=$(swift build --scratch-path "$SCRATCH" --show-bin-path)
# The modules to link: FuzzTargets and everything it depends on, read from the package
# description so a new dependency needs no change here. A product of another package (swift-log's
# Logging) has the name of its module.
mapfile -t MODULES < <(swift package describe --type json 2>/dev/null | python3 -c '
import json, sys
targets = {t["name"]: t for t in json.load(sys.stdin)["targets"]}
todo, seen = ["FuzzTargets"], []
while todo:
    name = todo.pop()
    if name in seen: continue
    seen.append(name)
    t = targets.get(name, {})
    todo += t.get("target_dependencies", []) + t.get("product_dependencies", [])
print("\n".join(seen))')
[[ ${#MODULES[@]} -gt 1 ]] || { echo "cannot read the module list from 'swift package describe'" >&2; exit 1; }
OBJECTS=()
for m in "${MODULES[@]}"; do
    for o in "$BIN/$m.build/"*.o; do OBJECTS+=("$o"); done
    [[ -f "$BIN/Modules/$m.o" ]] && OBJECTS+=("$BIN/Modules/$m.o")
done

LINK_FLAGS=(-I "$BIN/Modules" -Xcc -fmodule-map-file="$BIN/CVhostShims.build/module.modulemap"
            -Xcc -I -Xcc Sources/CVhostShims/include
            -Xcc -fmodule-map-file="$BIN/CEventPoller.build/module.modulemap" -Xcc -I -Xcc Sources/CEventPoller/include)
echo "== writing the seeds (Fuzz/WriteSeeds.swift)" >&2
swiftc -sanitize=address "${LINK_FLAGS[@]}" Fuzz/WriteSeeds.swift "${OBJECTS[@]}" -o "$SCRATCH/fuzz-write-seeds" 2>&1 \
    | grep -v 'Cannot export local symbol' >&2
ASAN_OPTIONS=detect_leaks=0 "$SCRATCH/fuzz-write-seeds" Fuzz/corpus >&2 || { echo "writing the seeds failed" >&2; exit 1; }

status=0
declare -A EXECS RESULT
for t in "${TARGETS[@]}"; do
    define=FUZZ_$(echo "$t" | tr 'a-z-' 'A-Z_')
    exe="$SCRATCH/fuzz-$t"
    echo "== linking $exe" >&2
    swiftc -parse-as-library -sanitize=fuzzer,address -D "$define" "${LINK_FLAGS[@]}" Fuzz/Driver.swift "${OBJECTS[@]}" -o "$exe" 2>&1 | grep -v 'Cannot export local symbol' >&2
    [[ -x "$exe" ]] || { echo "link of $t failed" >&2; exit 1; }

    corpus=Fuzz/corpus/$t
    crashes=Fuzz/crashes/$t
    work=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-$t.XXXXXX")
    mkdir -p "$corpus" "$crashes"
    case $t in
        frontend-connection) maxlen=2048 ;;
        message-decoder) maxlen=600 ;;
        *) maxlen=${FUZZ_MAX_LEN:-4096} ;;
    esac
    echo "== fuzzing $t for ${SECONDS_EACH}s (corpus $corpus: $(ls "$corpus" | wc -l) files)" >&2
    # New inputs go to a scratch directory first, then are merged (minimised) into the corpus.
    SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1} \
    "$exe" "$work" "$corpus" -max_total_time="$SECONDS_EACH" -max_len="$maxlen" -timeout=20 \
        -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$crashes/" ${FUZZ_JOBS_FLAGS:-} \
        > "$work.log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work.log" | grep -o '[0-9]*$' | tail -1)
    EXECS[$t]=${execs:-0}
    if [[ $rc -ne 0 ]]; then
        status=1
        artifact=$(grep -o "Test unit written to [^ ]*" "$work.log" | tail -1 | sed 's/Test unit written to //')
        RESULT[$t]="CRASH (exit $rc) reproducer: ${artifact:-see log} log: $work.log"
        grep -E "^(==[0-9]+==ERROR|.*Fatal error|.*Precondition failed|SUMMARY|    #[0-9] )" "$work.log" | head -20 >&2
    else
        RESULT[$t]="no crash"
    fi
    if [[ -z ${FUZZ_NO_CORPUS_UPDATE:-} && $rc -eq 0 ]]; then
        merged=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-merge-$t.XXXXXX")
        ASAN_OPTIONS=detect_leaks=0 "$exe" -merge=1 -max_len="$maxlen" -timeout=20 "$merged" "$corpus" "$work" \
            > "$work.merge.log" 2>&1
        # The corpus becomes: the seeds (always kept) plus the merged inputs that are not
        # seeds, smallest first, up to the cap.
        seedsums=$(cd "$corpus" && sha1sum seed-* 2>/dev/null | cut -d' ' -f1)
        find "$corpus" -maxdepth 1 -type f ! -name 'seed-*' -delete
        room=$(( CAP - $(ls "$corpus" | wc -l) ))
        ls -S -r "$merged" | while read -r f; do
            [[ $room -gt 0 ]] || break
            grep -q "^$f\$" <<<"$seedsums" && continue
            cp "$merged/$f" "$corpus/$f"
            room=$((room - 1))
        done
        rm -rf "$merged"
    fi
    rm -rf "$work"
    [[ $rc -eq 0 ]] && rm -f "$work.log" "$work.merge.log"
    echo "== $t: ${EXECS[$t]} executions, ${RESULT[$t]}" >&2
done

echo
echo "fuzz summary (${SECONDS_EACH}s per target):"
for t in "${TARGETS[@]}"; do
    printf '  %-20s %10s executions  %s  corpus %s files\n' "$t" "${EXECS[$t]}" "${RESULT[$t]}" "$(ls Fuzz/corpus/$t | wc -l)"
done
exit $status
