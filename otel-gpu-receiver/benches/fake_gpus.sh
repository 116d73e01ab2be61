#!/usr/bin/env bash
# Builds the fake libnvidia-ml into DIR with the benchmarks' script: 8 GPUs with GPM,
# 4 NVLink links and two compute processes each (pids above pid_max, so their names come
# from NVML). Shared by threads.sh and side_by_side.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=$1
cc -O2 -shared -fPIC -o "$dir/libnvidia-ml.so.1" \
    otel-gpu-receiver/tests/fake_nvml/fake_nvml.c -lpthread -ldl
{
    echo "devices 8"
    echo "dev * gpm 1"
    echo "dev * nvlinks 4"
    for i in 0 1 2 3 4 5 6 7; do
        echo "dev $i proc $((4194400 + 2 * i)) $(((i + 1) << 30)) $((10 + i)) 5 trainer$i"
        echo "dev $i proc $((4194401 + 2 * i)) $(((i + 1) << 28)) 3 1 notebook$i"
    done
} >"$dir/fake_nvml.script"
