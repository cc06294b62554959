"""What a requested weight precision runs as on the active ISA variant, so that asking for a
reduced precision never makes a model silently slower than fp32.

The reduced products are fast where the CPU has their instruction: AVX512-BF16 (vdpbf16ps,
AMX) for bf16; for int8, AVX512-VNNI (vpdpbusd) and, without it, 16-bit integer
multiply-adds (vpmaddwd, gemm_madd.h: AVX2's on the avx2 variant, AVX-512BW's on avx512).
Elsewhere a product runs in fp32 arithmetic on converted weights (gemm_entries.h). Measured
with bench/bench_modes.py on an AMD EPYC (Zen 5), fp32 time over the mode's (LSTM and GRU: a
stream step at H=1024 batch 1, T=100 sequences at H=256 batch 1 and 16); forced to the avx2
variant:
    int8  3.3-5.0 (steps), 1.29-1.47 (sequences), the same with the residual part (int8r);
          in fp32 arithmetic (the product before vpmaddwd) 0.59-0.83 and 0.25-0.29;
    bf16  1.9-2.6 (steps), 0.96-1.09 (sequences);
    fp16  2.2-3.0 (steps), 1.05-1.21 (batch 1), 0.97-1.09 (batch 16; 0.92-0.99 while
          it converted K slices of the panel for several tiles of rows), and 8 times finer
          steps than bf16;
on the avx512 variant with VNNI hidden (as on a Skylake-SP), 512-bit vpmaddwd:
    int8  4.6-6.8 (steps), 1.49-2.01 (batch 1), 1.22-1.32 (batch 16);
    fp16  2.6-3.1 (steps), 1.10-1.33 (batch 1), 0.97-1.04 (batch 16).
So without its instruction, bf16 runs fp16 weights (the same bytes, within its budget), and
so does int8 where it has no fast product (neon without dotprod), half the weight bytes of
fp32 and more accurate. The portable variant (no SIMD) converts every weight in scalar C:
every reduced mode is slower than fp32 there (0.09-0.51), and the model keeps the mode with
a RuntimeWarning saying so.
"""
from __future__ import annotations

import warnings

import numpy as np

from . import kernels as _kernels
from .log import log
from .precision import FP16_MAX

# The products that make a mode pay off (_kernels.gemm_isa names), per mode. NEON's SDOT
# (neondot) is counted fast without a measurement on AArch64 hardware (none here): one
# instruction per 16 products per row against fp16 weights' conversion and 4 FMAs, and half
# their weight bytes; its SMULL fallback (neonsmull) is not.
FAST_PRODUCTS = {"bf16": ("avx512bf16", "amx"),
                 "int8": ("avx512vnni", "avx2madd", "avx512madd", "neondot")}
# Off in tests that measure each weight type's own product on every variant.
REROUTE = True


def _fits_fp16(layers) -> bool:
    return all(float(np.abs(a).max()) <= FP16_MAX
               for layer in layers for a in (layer.W, layer.R, layer.proj) if a is not None)


def route(precision: str, layers) -> str:
    """The precision ``layers`` run in when ``precision`` is asked for on the active variant:
    ``precision`` itself, or "fp16" where that is faster and as accurate (module docstring).
    Warns (RuntimeWarning) when the model will run slower than it would in fp32."""
    variant = _kernels.isa()
    if precision == "fp32" or not REROUTE:
        return precision
    if variant == "serial":
        warnings.warn(
            f"precision={precision!r} on the serial variant (no SIMD: every weight converted "
            "in scalar code) runs 2-11 times slower than precision='fp32'", RuntimeWarning,
            stacklevel=3)
        return precision
    product = _kernels.gemm_isa(precision) if precision in FAST_PRODUCTS else None
    if product is None or product in FAST_PRODUCTS[precision]:
        return precision
    instruction = (f"{precision} dot product" if variant == "neon"
                   else {"bf16": "AVX512-BF16", "int8": "AVX512-VNNI"}[precision])
    slower = "1.2-4 times slower than fp32"
    if _fits_fp16(layers):
        if precision == "int8":
            warnings.warn(
                f"precision='int8' on the {variant} variant (no {instruction}) would run "
                f"{slower}; running fp16 weights instead (2 bytes a weight, more accurate): "
                "model.precision is 'fp16'", RuntimeWarning, stacklevel=3)
        else:
            log.info("precision='bf16' on the %s variant (no %s) runs fp16 weights: the same "
                     "bytes, as fast or faster, more accurate", variant, instruction)
        return "fp16"
    if precision == "int8":
        warnings.warn(
            f"precision='int8' on the {variant} variant (no {instruction}) runs {slower}, "
            "and fp16 weights, the faster route, cannot hold a weight beyond 65504",
            RuntimeWarning, stacklevel=3)
    return precision
