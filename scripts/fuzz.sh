#!/usr/bin/env bash
# Fuzzes the decoders a node exposes to the network and to operators' files (docs/fuzzing.md):
# the `cargo fuzz` targets in fuzz/, each for a bounded time, starting from the committed
# corpus in fuzz/corpus/<target>.
#   scripts/fuzz.sh                       every target, 30 s each (scripts/test.sh: 20 s each)
#   scripts/fuzz.sh --seconds 600 peer_message
#   scripts/fuzz.sh --grow --seconds 3600 keep what the fuzzer finds in fuzz/corpus (then
#                                         `cargo fuzz cmin` before committing it)
# Without --grow, new inputs go to target/fuzz-corpus/ and the tree is left as it was. A crash
# stops the script: the input is in fuzz/artifacts/<target>/ and replays with
#   cargo fuzz run -s none <target> fuzz/artifacts/<target>/<file>
# Installs cargo-fuzz (from the configured registry) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=30
grow=false
targets=()
while (($# > 0)); do
    case "$1" in
        --seconds)
            seconds="${2:?--seconds takes a number}"
            shift
            ;;
        --grow) grow=true ;;
        -h | --help)
            sed -n '2,12p' "$0"
            exit 0
            ;;
        -*)
            echo "unknown option $1 (see --help)" >&2
            exit 2
            ;;
        *) targets+=("$1") ;;
    esac
    shift
done
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || ((seconds < 1)); then
    echo "--seconds takes a whole number of seconds, at least 1" >&2
    exit 2
fi

# The version the targets were written for: `cargo fuzz` passes the instrumentation flags.
cargo_fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
    echo "installing cargo-fuzz $cargo_fuzz_version"
    cargo install --quiet --locked cargo-fuzz --version "$cargo_fuzz_version"
fi
if ((${#targets[@]} == 0)); then
    # Not `< <(...)`: a failure there would go unseen and fuzz nothing.
    listed=$(cargo fuzz list --fuzz-dir fuzz)
    mapfile -t targets <<<"$listed"
fi
if ((${#targets[@]} == 0)) || [[ -z "${targets[0]}" ]]; then
    echo "no fuzz targets found in fuzz/" >&2
    exit 1
fi

# No sanitizer (`-s none`): the decoders have no `unsafe`, and AddressSanitizer needs a
# nightly compiler. Overflow checks and debug assertions are on (fuzz/Cargo.toml).
cargo fuzz build --fuzz-dir fuzz -s none

for target in "${targets[@]}"; do
    committed="fuzz/corpus/$target"
    if $grow; then
        corpora=("$committed")
    else
        scratch="target/fuzz-corpus/$target"
        mkdir -p "$scratch"
        corpora=("$scratch" "$committed")
    fi
    log="target/fuzz-$target.log"
    mkdir -p target
    status=0
    # -rss_limit_mb: a decoder that allocates by a length it read would be a finding too.
    cargo fuzz run --fuzz-dir fuzz -s none "$target" "${corpora[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
    if ((status != 0)); then
        tail -40 "$log"
        echo "FAILED: fuzz target $target (exit $status after $runs executions; log $log, input in fuzz/artifacts/$target/)"
        exit 1
    fi
    echo "fuzz target $target: $runs executions in ${seconds} s, no crash"
done
