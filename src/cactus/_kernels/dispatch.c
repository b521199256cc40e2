/* Runtime dispatch: detect CPU features once and pick the best kernel table, best first.
 * A new ISA is one file plus one line in `levels` below. CACTUS_ISA handling lives in the binding
 * (it asks kernels_by_name); this file never reads the environment.
 */
#include <string.h>

#include "kernels.h"

int64_t kernels_prefetch_l2 = 4096, kernels_prefetch_l1 = 1024;  /* kernels.h */

void kernels_select(const Kernels *k) {
    kernels_prefetch_l2 = k->prefetch_l2;
    kernels_prefetch_l1 = k->prefetch_l1;
}

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>

static int x86_has(const char *name) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    if (!strcmp(name, "ssse3")) return (c >> 9) & 1;  /* SSE registers need no OS opt-in */
    if (!osxsave || !avx) return 0;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    (void)xhi;
    const int ymm_os = (xlo & 0x6) == 0x6, zmm_os = (xlo & 0xE6) == 0xE6;
    if (__get_cpuid_max(0, 0) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    const int avx2 = (b >> 5) & 1, f = (b >> 16) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1, vnni = (c >> 11) & 1;
    const int gfni = (c >> 8) & 1;
    const int has_avx2 = ymm_os && avx2 && fma && f16c;
    if (!strcmp(name, "avx2")) return has_avx2;
    if (!strcmp(name, "avx512")) return has_avx2 && zmm_os && f && bw && vl && vnni;
    if (!strcmp(name, "avxvnni")) {  /* CPUID.(EAX=7, ECX=1):EAX bit 4 */
        __cpuid_count(7, 1, a, b, c, d);
        return has_avx2 && ((a >> 4) & 1);
    }
    if (!strcmp(name, "gfni")) return gfni;
    return 0;
}
#endif

#if defined(__aarch64__)
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1 << 13)
#endif
static int arm_dotprod(void) { return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0; }
static int arm_i8mm(void) { return (getauxval(AT_HWCAP2) & HWCAP2_I8MM) != 0; }
#elif defined(__APPLE__)
#include <sys/sysctl.h>
static int arm_dotprod(void) { return 1; }  /* Apple M1 and later have it */
static int arm_i8mm(void) {                 /* M2 and later */
    int v = 0;
    size_t n = sizeof v;
    return sysctlbyname("hw.optional.arm.FEAT_I8MM", &v, &n, NULL, 0) == 0 && v;
}
#else
static int arm_dotprod(void) { return 0; }
static int arm_i8mm(void) { return 0; }
#endif
#endif

int cpu_supports(const char *name) {
    if (!strcmp(name, "scalar")) return 1;
#if defined(__x86_64__) || defined(_M_X64)
    return x86_has(name);
#elif defined(__aarch64__)
    if (!strcmp(name, "i8mm")) return arm_dotprod() && arm_i8mm();
    if (!strcmp(name, "neon80")) return 1;  /* NEON is part of AArch64 */
    return !strcmp(name, "neon") && arm_dotprod();
#else
    return 0;
#endif
}

static const struct { const char *name; const Kernels *table; } levels[] = {  /* best first */
#if defined(__x86_64__) || defined(_M_X64)
    {"avx512", &kernels_avx512vnni},
#ifndef CACTUS_NO_AVXVNNI  /* setup.py: a compiler without -mavxvnni */
    {"avxvnni", &kernels_avxvnni},
#endif
    {"avx2", &kernels_avx2},
    {"ssse3", &kernels_ssse3},
#endif
#if defined(__aarch64__)
#ifndef CACTUS_NO_I8MM  /* setup.py: a compiler without +i8mm */
    {"i8mm", &kernels_i8mm},
#endif
    {"neon", &kernels_neon},
    {"neon80", &kernels_neon80},
#endif
    {"scalar", &kernels_scalar},
};

const Kernels *kernels_by_name(const char *name) {
#if defined(__x86_64__) || defined(_M_X64)
    /* the VNNI table without GFNI, by name only, so tests can run it on a CPU that has GFNI */
    if (!strcmp(name, "avx512-nogfni")) return cpu_supports("avx512") ? &kernels_avx512vnni : NULL;
#endif
    for (size_t i = 0; i < sizeof levels / sizeof *levels; i++) {
        if (strcmp(levels[i].name, name) || !cpu_supports(name)) continue;
#if defined(__x86_64__) || defined(_M_X64)
        if (levels[i].table == &kernels_avx512vnni && cpu_supports("gfni")) return &kernels_avx512vnni_gfni;
#endif
        return levels[i].table;
    }
    return NULL;
}

const char *kernels_level_name(size_t i) {
    const size_t n = sizeof levels / sizeof *levels;
    return i < n ? levels[n - 1 - i].name : NULL;
}

const Kernels *kernels_best(void) {
    static const Kernels *best;  /* detected once */
    if (!best) {
        for (size_t i = 0; i < sizeof levels / sizeof *levels && !best; i++)
            if (cpu_supports(levels[i].name)) best = kernels_by_name(levels[i].name);
    }
    return best;
}
