/* NEON qgemm with ActLayout.one_token (the tape's steps), two builds of kernels_neon.c compared by
 * the guest instructions a call executes, for machines without ARM hardware: under qemu-aarch64
 * (user mode), whose time means nothing, the count of executed AArch64 instructions is exact and
 * repeatable. This file is both halves:
 *   - built for AArch64, the program: an (N, K) int8 or int4 weight (group 32, ab.h's random matrix),
 *     16 quantized tokens; it checks that every token's row of a T-token call is the T = 1 result
 *     bit for bit (T = 1..16, both builds), then makes REPS calls of T tokens with one build;
 *   - built for the host with -DAB_QEMU_PLUGIN, a TCG plugin that counts the instructions the guest
 *     executes (qemu's plugin API, declared here: Debian's qemu-user has plugins but no header).
 * A call's count is (count with REPS) - (count with REPS = 0), divided by REPS: the setup cancels.
 * The instruction count is not the speed (sdot, loads and moves cost differently, and memory is not
 * modelled): real ARM hardware must time it.
 * Build and run (from the repository root; REV = the commit to compare against):
 *   S=src/cactus/_kernels; git show REV:$S/kernels_neon.c > /tmp/kernels_neon_old.c
 *   CC="aarch64-linux-gnu-gcc -O3 -std=gnu11 -fno-strict-aliasing -I$S"
 *   $CC -march=armv8.2-a+dotprod -Dkernels_neon=kernels_neon_old -c /tmp/kernels_neon_old.c -o /tmp/old.o
 *   $CC -march=armv8.2-a+dotprod -c $S/kernels_neon.c -o /tmp/neon.o
 *   $CC -march=armv8-a -c $S/kernels_neon80.c -o /tmp/neon80.o
 *   $CC -march=armv8.2-a+dotprod+i8mm -c $S/kernels_i8mm.c -o /tmp/i8mm.o
 *   $CC -static benchmarks/c/ab_one_token_neon.c $S/kernels_scalar.c $S/common.c $S/formats.c $S/dispatch.c \
 *     /tmp/old.o /tmp/neon.o /tmp/neon80.o /tmp/i8mm.o -o /tmp/ab_one_token_neon -lm
 *   gcc -O2 -shared -fPIC -DAB_QEMU_PLUGIN benchmarks/c/ab_one_token_neon.c -o /tmp/libinsn.so
 *   qemu-aarch64 -cpu max -plugin /tmp/libinsn.so /tmp/ab_one_token_neon [int4|int8] [old|new] T REPS [N=512] [K=2048]
 * (prints "insns N" at exit; run it with REPS = 0 and REPS = 20, say, and subtract).
 */
#ifdef AB_QEMU_PLUGIN
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* the few declarations of qemu's include/qemu/qemu-plugin.h this needs (API version 1, qemu 7.x) */
typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
typedef struct qemu_info_t qemu_info_t;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb *));
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr, uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, void *), void *userdata);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;
static uint64_t insns;

/* each translated block adds its instruction count to `insns` whenever it runs (inline, no callback) */
static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns, qemu_plugin_tb_n_insns(tb));
}

static void on_exit(qemu_plugin_id_t id, void *p) {
    (void)id; (void)p;
    fprintf(stderr, "insns %llu\n", (unsigned long long)insns);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                                               char **argv) {
    (void)info; (void)argc; (void)argv;
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_exit, NULL);
    return 0;
}
#else
#define AB_NEW kernels_neon
#define AB_OLD kernels_neon_old
#include "ab.h"

enum { TMAX = 16 };

int main(int argc, char **argv) {
    const int fmt = argc > 1 && !strcmp(argv[1], "int8") ? FMT_INT8 : FMT_INT4;
    const Kernels *k = argc > 2 && !strcmp(argv[2], "old") ? &AB_OLD : &AB_NEW;
    const int64_t T = argc > 3 ? atoll(argv[3]) : 1, reps = argc > 4 ? atoll(argv[4]) : 0;
    const int64_t N = argc > 5 ? atoll(argv[5]) : 512, K = argc > 6 ? atoll(argv[6]) : 2048;
    if (K % 32 || N < 1 || T < 1 || T > TMAX || reps < 0) { fprintf(stderr, "need K a multiple of 32, N >= 1, 1 <= T <= 16\n"); return 1; }
    QMat w;
    ab_random_qmat(&w, N, K, fmt);
    ActLayout L; act_layout(&L, K, 32, fmt); L.one_token = 1;
    uint8_t *act = ab_random_acts(&AB_NEW, &L, K, TMAX), *scr = malloc(kernels_scratch_bytes(w.kp) + 64);
    float *y = malloc((size_t)(TMAX * N) * 4);
    const int bad = ab_check_one_token(&w, &L, act, TMAX, y, scr);  /* whatever REPS: it cancels out of the difference */
    for (int64_t i = 0; i < reps; i++) k->qgemm(y, N, &w, &L, act, T, 0, N, scr);
    return bad;
}
#endif
