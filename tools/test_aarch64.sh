#!/bin/sh
# The C kernels on AArch64 without an AArch64 machine: tests/c/test_kernels_c.c cross-compiled
# (static) and run under qemu-user (serial and neon variants, on a CPU model with dotprod and
# one without), and the same program compiled and run natively (x86-64: serial, avx2, avx512
# where the CPU has them). Also compiles every
# header the extensions include (kernels.h through driver.h, conv.h, dense.h) for AArch64
# with warnings as errors, which is as far as the package itself can be checked without an
# AArch64 Python. Timings under qemu mean nothing; this checks results only.
#
# Installs gcc-aarch64-linux-gnu and qemu-user with apt-get when they are missing (root).
# Usage: tools/test_aarch64.sh   (from anywhere; exits nonzero on any failure)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
CROSS=aarch64-linux-gnu-gcc
# the package's flags (setup.py), so the serial variant's a * b + c stays unfused here too
CFLAGS="-std=c11 -O2 -fno-math-errno -Wall -Wextra -Wno-unused-function -I$root/include"

if ! command -v "$CROSS" >/dev/null 2>&1 || ! command -v qemu-aarch64 >/dev/null 2>&1; then
    echo "installing gcc-aarch64-linux-gnu and qemu-user"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu \
        libc6-dev-arm64-cross qemu-user >/dev/null
fi

echo "== AArch64: every header the extensions include, compiled with -Werror"
cat >"$out/headers.c" <<'EOF'
#include "rnnengine/driver.h"
#include "rnnengine/conv.h"
#include "rnnengine/dense.h"
/* the variant table is what the package uses: keep it referenced */
const void *rnn_test_table(int isa) { return rnn_kernels_for(isa); }
int rnn_test_best(void) { return rnn_cpu_best_isa(); }
EOF
$CROSS $CFLAGS -O3 -Werror -c "$out/headers.c" -o "$out/headers.o"
# the neon variant is in the object (its gate math: the table itself may be folded into the
# code that copies it), and no x86 one
aarch64-linux-gnu-nm "$out/headers.o" | grep -q 'rnn_phase_neon' || {
    echo "no neon variant in the AArch64 build"; exit 1; }
if aarch64-linux-gnu-nm "$out/headers.o" | grep -q '_avx2\|_avx512'; then
    echo "x86 variants compiled into the AArch64 build"; exit 1
fi
# -DRNN_ARM=0: the portable-only build still compiles
$CROSS $CFLAGS -Werror -DRNN_ARM=0 -c "$out/headers.c" -o "$out/headers_portable.o"
echo "ok"

# twice: a CPU with dotprod (qemu's max: the SDOT int8 product) and one without (Cortex-A53,
# ARMv8.0: the SMULL one); each run says which it took
echo "== AArch64 under qemu (-cpu max): serial + neon"
$CROSS $CFLAGS -static "$root/tests/c/test_kernels_c.c" -o "$out/test_arm" -lm -lpthread
qemu-aarch64 -cpu max "$out/test_arm" >"$out/max.log" || { cat "$out/max.log"; exit 1; }
cat "$out/max.log"
grep -q 'int8 product neondot' "$out/max.log" || { echo "the SDOT product did not run"; exit 1; }
echo "== AArch64 under qemu (-cpu cortex-a53, no dotprod): serial + neon"
qemu-aarch64 -cpu cortex-a53 "$out/test_arm" >"$out/a53.log" || { cat "$out/a53.log"; exit 1; }
cat "$out/a53.log"
grep -q 'int8 product neonsmull' "$out/a53.log" || { echo "the SMULL product did not run"; exit 1; }

echo "== native ($(uname -m))"
${CC:-gcc} $CFLAGS "$root/tests/c/test_kernels_c.c" -o "$out/test_native" -lm -lpthread
"$out/test_native"
