/* The ceiling of the AVX2 int4 prefill tile's instruction mix on this CPU: the inner steps alone
 * (weight loads, activation broadcasts, vpmaddubsw, vpaddw; no fold, everything in L1), written in
 * asm so the compiler cannot change them, as 8 rows x 4 tokens, 16 rows x 2 tokens, 16 x 4, and 8 x 4 with
 * the activations as pre-broadcast vectors (no vpbroadcastd); then 16 x 4 with the activations in registers,
 * 32 x 2, and 24 x 4 with the weights as memory operands. GMAC/s, three rounds.
 * Build and run (x86 with AVX2): gcc -O1 benchmarks/c/avx2_tile_ceiling.c -o /tmp/tile && /tmp/tile
 */
#include <stdio.h>
#include <time.h>
#include <stdint.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
/* one c-step of 8x4: w load, 4 bcast, 4 maddubs, 4 adds (acc ymm0-3) */
#define STEP(off) "vmovdqa " #off "*32(%0),%%ymm4\n\t" \
 "vpbroadcastd " #off "*4(%1),%%ymm5\n\t vpmaddubsw %%ymm5,%%ymm4,%%ymm5\n\t vpaddw %%ymm5,%%ymm0,%%ymm0\n\t" \
 "vpbroadcastd " #off "*4+2048(%1),%%ymm6\n\t vpmaddubsw %%ymm6,%%ymm4,%%ymm6\n\t vpaddw %%ymm6,%%ymm1,%%ymm1\n\t" \
 "vpbroadcastd " #off "*4+4096(%1),%%ymm7\n\t vpmaddubsw %%ymm7,%%ymm4,%%ymm7\n\t vpaddw %%ymm7,%%ymm2,%%ymm2\n\t" \
 "vpbroadcastd " #off "*4+6144(%1),%%ymm8\n\t vpmaddubsw %%ymm8,%%ymm4,%%ymm8\n\t vpaddw %%ymm8,%%ymm3,%%ymm3\n\t"
/* 16x2 c-step: 2 w loads, 2 bcast, 4 maddubs, 4 adds */
#define STEP2(off) "vmovdqa " #off "*32(%0),%%ymm4\n\t vmovdqa " #off "*32+8192(%0),%%ymm9\n\t" \
 "vpbroadcastd " #off "*4(%1),%%ymm5\n\t vpbroadcastd " #off "*4+2048(%1),%%ymm6\n\t" \
 "vpmaddubsw %%ymm5,%%ymm4,%%ymm7\n\t vpaddw %%ymm7,%%ymm0,%%ymm0\n\t" \
 "vpmaddubsw %%ymm5,%%ymm9,%%ymm8\n\t vpaddw %%ymm8,%%ymm1,%%ymm1\n\t" \
 "vpmaddubsw %%ymm6,%%ymm4,%%ymm10\n\t vpaddw %%ymm10,%%ymm2,%%ymm2\n\t" \
 "vpmaddubsw %%ymm6,%%ymm9,%%ymm11\n\t vpaddw %%ymm11,%%ymm3,%%ymm3\n\t"
/* w in register already (broadcast-free): x pre-broadcast vectors loaded */
#define STEP3(off) "vmovdqa " #off "*32(%0),%%ymm4\n\t" \
 "vpmaddubsw " #off "*32(%1),%%ymm4,%%ymm5\n\t vpaddw %%ymm5,%%ymm0,%%ymm0\n\t" \
 "vpmaddubsw " #off "*32+2048(%1),%%ymm4,%%ymm6\n\t vpaddw %%ymm6,%%ymm1,%%ymm1\n\t" \
 "vpmaddubsw " #off "*32+4096(%1),%%ymm4,%%ymm7\n\t vpaddw %%ymm7,%%ymm2,%%ymm2\n\t" \
 "vpmaddubsw " #off "*32+6144(%1),%%ymm4,%%ymm8\n\t vpaddw %%ymm8,%%ymm3,%%ymm3\n\t"
/* 16x4 c-step: 2 w loads, 4 bcast, 8 maddubs, 8 adds (acc ymm0-7) */
#define T4(off, k, a, b) "vpbroadcastd " #off "*4+" #k "*2048(%1),%%ymm10\n\t" \
 "vpmaddubsw %%ymm10,%%ymm8,%%ymm11\n\t vpaddw %%ymm11,%%ymm" #a ",%%ymm" #a "\n\t" \
 "vpmaddubsw %%ymm10,%%ymm9,%%ymm11\n\t vpaddw %%ymm11,%%ymm" #b ",%%ymm" #b "\n\t"
#define STEP4(off) "vmovdqa " #off "*32(%0),%%ymm8\n\t vmovdqa " #off "*32+8192(%0),%%ymm9\n\t" \
 T4(off, 0, 0, 1) T4(off, 1, 2, 3) T4(off, 2, 4, 5) T4(off, 3, 6, 7)
/* 16x4 with the 4 tokens' activations already in registers (ymm12-15: no broadcast, no load) */
#define R4(k, a, b) "vpmaddubsw %%ymm1" #k ",%%ymm8,%%ymm10\n\t vpaddw %%ymm10,%%ymm" #a ",%%ymm" #a "\n\t" \
 "vpmaddubsw %%ymm1" #k ",%%ymm9,%%ymm11\n\t vpaddw %%ymm11,%%ymm" #b ",%%ymm" #b "\n\t"
#define STEP4R(off) "vmovdqa " #off "*32(%0),%%ymm8\n\t vmovdqa " #off "*32+8192(%0),%%ymm9\n\t" \
 R4(2, 0, 1) R4(3, 2, 3) R4(4, 4, 5) R4(5, 6, 7)
/* 32x2: 4 weight vectors (rows 2 KiB + 64 B apart: at 8 KiB apart, loads sharing their low 12
 * address bits, this loop ran ~40 % slower), 2 broadcasts, 8 maddubs */
#define M2(w, x, h) "vpmaddubsw %%ymm" #x ",%%ymm" #w ",%%ymm11\n\t vpaddw %%ymm11,%%ymm" #h ",%%ymm" #h "\n\t"
#define STEP32(off) "vmovdqa " #off "*32(%0),%%ymm8\n\t vmovdqa " #off "*32+8256(%0),%%ymm9\n\t" \
 "vmovdqa " #off "*32+16576(%0),%%ymm12\n\t vmovdqa " #off "*32+24896(%0),%%ymm13\n\t" \
 "vpbroadcastd " #off "*4(%1),%%ymm10\n\t vpbroadcastd " #off "*4+2048(%1),%%ymm14\n\t" \
 M2(8, 10, 0) M2(9, 10, 1) M2(12, 10, 2) M2(13, 10, 3) M2(8, 14, 4) M2(9, 14, 5) M2(12, 14, 6) M2(13, 14, 7)
/* 24x4 with the weights as memory operands (12 accumulators, no weight registers) */
#define MM(wo, h) "vpmaddubsw " wo "(%0),%%ymm8,%%ymm9\n\t vpaddw %%ymm9,%%ymm" #h ",%%ymm" #h "\n\t"
#define TM(off, k, h0, h1, h2) "vpbroadcastd " #off "*4+" #k "*2048(%1),%%ymm8\n\t" \
 MM(#off "*32", h0) MM(#off "*32+8256", h1) MM(#off "*32+16576", h2)
#define STEP24M(off) TM(off, 0, 0, 1, 2) TM(off, 1, 3, 4, 5) TM(off, 2, 6, 7, 12) TM(off, 3, 13, 14, 15)
/* Weights and activations in one buffer, X 17 KiB + 64 B after W: with X a multiple of 4 KiB
 * after W (as two 16 KiB arrays declared side by side may land), the broadcasts share their low
 * 12 address bits with weight loads in flight, and the 16 x 4 loop ran at 60-70 instead of
 * 105-120 GMAC/s on Zen 3 (the 16 x 2 loop lost less). */
static uint8_t B[65536] __attribute__((aligned(4096)));
#define W B
#define X (B + 17472)
int main(){
  const long N=20000000;
  for (int rep = 0; rep < 3; rep++) {
    double t=now();
    for(long i=0;i<N;i++) __asm__ volatile(STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)::"r"(W),"r"(X):"xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8");
    double dt=now()-t; printf("8x4 bcast: %.1f GMAC/s  ", 1024.0*N/dt/1e9);
    t=now();
    for(long i=0;i<N;i++) __asm__ volatile(STEP2(0) STEP2(1) STEP2(2) STEP2(3) STEP2(4) STEP2(5) STEP2(6) STEP2(7)::"r"(W),"r"(X):"xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11");
    dt=now()-t; printf("16x2 bcast: %.1f GMAC/s  ", 1024.0*N/dt/1e9);
    t=now();
    for(long i=0;i<N/2;i++) __asm__ volatile(STEP4(0) STEP4(1) STEP4(2) STEP4(3) STEP4(4) STEP4(5) STEP4(6) STEP4(7)::"r"(W),"r"(X):"xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12");
    dt=now()-t; printf("16x4 bcast: %.1f GMAC/s  ", 1024.0*N/dt/1e9);
    t=now();
    for(long i=0;i<N;i++) __asm__ volatile(STEP3(0) STEP3(1) STEP3(2) STEP3(3) STEP3(4) STEP3(5) STEP3(6) STEP3(7)::"r"(W),"r"(X):"xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8");
    dt=now()-t; printf("8x4 mem-operand x: %.1f GMAC/s\n", 1024.0*N/dt/1e9);
    t=now();
    for(long i=0;i<N/2;i++) __asm__ volatile(STEP4R(0) STEP4R(1) STEP4R(2) STEP4R(3) STEP4R(4) STEP4R(5) STEP4R(6) STEP4R(7)::"r"(W),"r"(X):"xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11");
    dt=now()-t; printf("  16x4 x in registers: %.1f GMAC/s  ", 1024.0*N/dt/1e9);
    t=now();
    for(long i=0;i<N/2;i++) __asm__ volatile(STEP32(0) STEP32(1) STEP32(2) STEP32(3) STEP32(4) STEP32(5) STEP32(6) STEP32(7)::"r"(W),"r"(X):"xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13","xmm14");
    dt=now()-t; printf("32x2 bcast: %.1f GMAC/s  ", 1024.0*N/dt/1e9);
    t=now();
    for(long i=0;i<N/3;i++) __asm__ volatile(STEP24M(0) STEP24M(1) STEP24M(2) STEP24M(3) STEP24M(4) STEP24M(5) STEP24M(6) STEP24M(7)::"r"(W),"r"(X):"xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm12","xmm13","xmm14","xmm15");
    dt=now()-t; printf("24x4 weights as memory operands: %.1f GMAC/s\n", 1024.0*N/dt/1e9);
  }
}
