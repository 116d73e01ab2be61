#!/usr/bin/env bash
# Runs every fuzz target for a bounded time from its checked-in seed corpus (and any
# inputs earlier runs added under fuzz/corpus-new/, which is not checked in).
#
#   fuzz/run.sh            # 15 s a target, what .ci/run does
#   FUZZ_SECONDS=3600 fuzz/run.sh proc_files    # one target for an hour
#
# libFuzzer comes from libfuzzer-sys, built with the C++ compiler (Debian's g++). Rust
# here is stable, and so is everything cargo-fuzz asks of rustc without a sanitizer
# (`-Cpasses=sancov-module` and `-Cllvm-args=-sanitizer-coverage-*`): AddressSanitizer
# is a `-Z` flag that needs a nightly toolchain, so the targets run with
# `--sanitizer none`, with debug assertions (`-a`; `FUZZ_BUILD="-O -a"` optimises too). Rust's own checks
# (bounds, overflow, UTF-8 boundaries, the targets' asserts) are what finds bugs here,
# and the code fuzzed has no `unsafe`.
# A crash stops the run with its input under fuzz/artifacts/<target>/: make it a
# regression test beside the parser's other tests.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH="${FUZZ_SECONDS:-15}"
# CI's short runs build with debug assertions only (`-a`), which builds in about half
# the time of an optimised build; a long run wants `FUZZ_BUILD="-O -a"`, whose inputs
# per second are several times higher.
BUILD="${FUZZ_BUILD:--a}"
CARGO_FUZZ_VERSION=0.13.1

if ! command -v c++ >/dev/null 2>&1; then
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    echo "fuzz/run.sh: installing g++ with apt-get" >&2
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends g++ >/dev/null
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    cargo install --locked "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(trace_context metrics_request proc_files receiver_config kubelet_list)
fi
for t in "${targets[@]}"; do
    mkdir -p "corpus-new/$t"
    echo "fuzz: $t for ${SECONDS_EACH}s"
    cargo fuzz run --sanitizer none $BUILD "$t" "corpus-new/$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1
done
