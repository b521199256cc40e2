/* AVX-VNNI (vpdpbusd on ymm, VEX-encoded; Intel client cores from Alder Lake on, which have no
 * AVX-512), compiled with -mavx2 -mfma -mf16c -mavxvnni: kernels_avx2.c again, its int4 prefill
 * tiles taking one vpdpbusd per step where AVX2 takes vpmaddubsw + vpaddw and a widen per group.
 * Everything else is the AVX2 code. Dispatch prefers avx512 where a CPU has both (Sapphire
 * Rapids, Zen 5), then this, then avx2. */
#define CACTUS_AVXVNNI 1
#include "kernels_avx2.c"
