/* NEON with the Int8 matrix multiply extension (FEAT_I8MM: Apple M2 and later, Neoverse V1/N2/V2,
 * Cortex-X2/A710 and later), compiled with -march=armv8.2-a+dotprod+i8mm: kernels_neon.c again, its
 * prefill panels on `smmla` (2 rows x 2 tokens x 8 bytes per instruction) instead of `sdot` by
 * element. Everything else is the NEON code. Dispatch prefers it where the CPU reports i8mm. */
#define CACTUS_I8MM 1
#include "kernels_neon.c"
