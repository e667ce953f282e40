/* llk.h: shared definitions of the quantized matmul kernels (llama_cli/kernels).
 *
 * Weights are GGUF tensors exactly as stored: each output row is K/QK consecutive blocks.
 * The block layouts are ggml's (llama.cpp, ggml/src/ggml-common.h; MIT licensed), in bytes:
 *
 *   type    QK   bytes  layout
 *   Q4_0    32    18    f16 d | u8 qs[16]                    w = d*(q-8), q 4-bit
 *   Q4_1    32    20    f16 d | f16 m | u8 qs[16]            w = d*q + m
 *   Q5_0    32    22    f16 d | u32 qh | u8 qs[16]           w = d*(q-16), q 5-bit (bit 4 in qh)
 *   Q5_1    32    24    f16 d | f16 m | u32 qh | u8 qs[16]   w = d*q + m
 *   Q8_0    32    34    f16 d | i8 qs[32]                    w = d*q
 *   IQ4_NL  32    18    f16 d | u8 qs[16]                    w = d*kvalues[q]
 *   Q2_K   256    84    u8 scales[16] | u8 qs[64] | f16 d | f16 dmin
 *   Q3_K   256   110    u8 hmask[32] | u8 qs[64] | u8 scales[12] | f16 d
 *   Q4_K   256   144    f16 d | f16 dmin | u8 scales[12] | u8 qs[128]
 *   Q5_K   256   176    f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128]
 *   Q6_K   256   210    u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d
 *   IQ4_XS 256   136    f16 d | u16 scales_h | u8 scales_l[4] | u8 qs[128]
 *   F16, BF16: one 2-byte value per element.
 *
 * Activations are quantized per row to int8 as llama.cpp does (its block_q8_0 / block_q8_K),
 * in our own layouts below, so that products are integer dot products per block.
 */
#ifndef LLK_H
#define LLK_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ggml type ids (ggml.h's enum ggml_type; the same numbers as gguf's GGMLQuantizationType). */
enum {
    T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8,
    T_Q2_K = 10, T_Q3_K = 11, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14,
    T_IQ4_NL = 20, T_IQ4_XS = 23, T_BF16 = 30,
};

/* Activation row formats. ACT_F32: the float row itself (F16/BF16 weights). */
enum { ACT_F32 = 0, ACT_32 = 1, ACT_256 = 2 };

/* A row quantized in 32-element blocks (like block_q8_0, split into arrays so that two blocks'
 * values are one 64-byte load): K int8 values, then K/32 float scales d (x ~= d*q), then K/32
 * floats s = d*sum(q of the block), which carry the offset/min terms of the weight formats
 * (w = dw*u + cw  =>  dot = dw*d*sum(u*q) + cw*s). */
static inline size_t act32_row_bytes(int64_t K) { return (size_t)K + 8 * (size_t)(K / 32); }
static inline const float *act32_d(const void *row, int64_t K) { return (const float *)((const char *)row + K); }
static inline const float *act32_s(const void *row, int64_t K) { return act32_d(row, K) + K / 32; }

/* One 256-element activation block (like block_q8_K): bsf[k] = d*sum(qs[16k..16k+15]) carries the
 * per-16 min/offset terms of the K-quants. 384 bytes, so consecutive blocks stay 64-byte aligned. */
typedef struct {
    int8_t qs[256];
    float bsf[16];
    float d;
    float pad[15];
} act256_t;

static const int8_t kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                         1,    13,   25,  38,  53,  69,  89,  113};

/* IEEE half to float, exact for every value (subnormals included). */
#ifdef __F16C__
#include <immintrin.h>
static inline float llk_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}
#else
static inline float llk_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
#endif

static inline float llk_bf16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Q4_K/Q5_K: eight 6-bit scales and mins packed in 12 bytes q: sc[j] = q[j] & 63 and
 * mn[j] = q[j+4] & 63 for j < 4; for j >= 4 the low 4 bits sit in q[j+4] (scale low nibble, min
 * high nibble) and the top 2 bits in the top of q[j-4] / q[j]. Decoded 4 at a time in 32-bit
 * words, as llama.cpp's vec_dot_q4_K does. */
static inline void llk_scale_min_k4(const uint8_t *q, uint8_t *sc, uint8_t *mn) {
    uint32_t u[3], out[4];
    memcpy(u, q, 12);
    out[0] = u[0] & 0x3f3f3f3fu;
    out[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
    out[2] = u[1] & 0x3f3f3f3fu;
    out[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
    memcpy(sc, out, 8);
    memcpy(mn, out + 2, 8);
}

/* Q3_K: sixteen 6-bit signed scales packed in 12 bytes (low 4 bits in 0..7, high 2 in 8..11). */
static inline void llk_scales_q3k(const uint8_t *s, int8_t *out) {
    for (int k = 0; k < 16; k++) {
        int lo = (k < 8 ? s[k] : s[k - 8] >> 4) & 0xF;
        int hi = (s[8 + (k & 3)] >> (2 * (k >> 2))) & 3;
        out[k] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

/* Sum of a[i]*b[i] in 16 interleaved partial sums, then a fixed tree: the compiler vectorizes it,
 * and the result is the same bits whether or not it does (one order of operations). */
static inline float llk_dot_f32(const float *a, const float *b, int64_t n) {
    float acc[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) acc[l] += a[i + l] * b[i + l];
    for (int l = 0; i < n; i++, l++) acc[l] += a[i] * b[i];
    for (int w = 8; w > 0; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return acc[0];
}

/* A kernel: one weight row (nb blocks) dotted with R (1..LLK_RT) activation rows that lie
 * `astride` bytes apart; writes R floats. Each row's float must be bit-identical to what the kernel
 * gives for that row alone (R = 1): batching shares the unpacking, never a row's summation order. */
#define LLK_RT 8
typedef void (*llk_kernel_t)(int64_t K, const uint8_t *w, const void *act, size_t astride, int R,
                             float *out);

int llk_block_size(int type);
int llk_block_bytes(int type);
int llk_act_format(int type);
void llk_dequant_row(int type, const uint8_t *w, int64_t K, float *y);
llk_kernel_t llk_scalar_kernel(int type);
llk_kernel_t llk_simd_kernel(int type); /* simd.c: NULL where no SIMD path exists for this type/CPU */
int llk_simd_dequant_bf16(int type, const uint8_t *w, int64_t K, uint16_t *out);

#endif
