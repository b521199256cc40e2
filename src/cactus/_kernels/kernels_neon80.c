/* NEON without the dot-product extension (Armv8.0-A: Cortex-A53, A57, A72, A73; Raspberry Pi 3
 * and 4, many Chromebooks and older phones), compiled with -march=armv8-a: kernels_neon.c again,
 * each sdot computed by widening multiplies and pairwise adds, the same int32 sums (SDOT there).
 * Dispatch uses it on AArch64 CPUs that do not report dotprod; before it, they ran the scalar
 * reference. */
#define CACTUS_NO_DOTPROD 1
#include "kernels_neon.c"
