/* dequant.c: block formats to float32, and the portable (scalar) kernels.
 *
 * Dequantization follows ggml's dequantize_row_* (llama.cpp ggml/src/ggml-quants.c) and performs
 * the same float32 operations in the same order as the `gguf` package's numpy reference, so the
 * results are bit-identical to it. That is why the library is built with -ffp-contract=off: a
 * fused multiply-add in `d*q - m` would round once instead of twice.
 *
 * The scalar kernels dequantize one weight block at a time and dot it with the dequantized int8
 * activations: slow, but they compile anywhere and define what the SIMD kernels must compute.
 */
#include "llk.h"

int llk_block_size(int type) {
    switch (type) {
    case T_F16: case T_BF16: return 1;
    case T_Q4_0: case T_Q4_1: case T_Q5_0: case T_Q5_1: case T_Q8_0: case T_IQ4_NL: return 32;
    case T_Q2_K: case T_Q3_K: case T_Q4_K: case T_Q5_K: case T_Q6_K: case T_IQ4_XS: return 256;
    default: return 0;
    }
}

int llk_block_bytes(int type) {
    switch (type) {
    case T_F16: case T_BF16: return 2;
    case T_Q4_0: return 18;
    case T_Q4_1: return 20;
    case T_Q5_0: return 22;
    case T_Q5_1: return 24;
    case T_Q8_0: return 34;
    case T_IQ4_NL: return 18;
    case T_Q2_K: return 84;
    case T_Q3_K: return 110;
    case T_Q4_K: return 144;
    case T_Q5_K: return 176;
    case T_Q6_K: return 210;
    case T_IQ4_XS: return 136;
    default: return 0;
    }
}

int llk_act_format(int type) {
    switch (type) {
    case T_F16: case T_BF16: return ACT_F32;
    case T_Q2_K: case T_Q3_K: case T_Q4_K: case T_Q5_K: case T_Q6_K: return ACT_256;
    default: return ACT_32; /* IQ4_XS too: its scales are per 32 elements */
    }
}

/* ---- one block to float ------------------------------------------------------------------ */

static void deq_q4_0(const uint8_t *b, float *y) {
    const float d = llk_f16(b);
    for (int i = 0; i < 16; i++) {
        y[i] = d * (float)((b[2 + i] & 0xF) - 8);
        y[i + 16] = d * (float)((b[2 + i] >> 4) - 8);
    }
}

static void deq_q4_1(const uint8_t *b, float *y) {
    const float d = llk_f16(b), m = llk_f16(b + 2);
    for (int i = 0; i < 16; i++) {
        y[i] = d * (float)(b[4 + i] & 0xF) + m;
        y[i + 16] = d * (float)(b[4 + i] >> 4) + m;
    }
}

static void deq_q5_0(const uint8_t *b, float *y) {
    const float d = llk_f16(b);
    uint32_t qh;
    memcpy(&qh, b + 2, 4);
    for (int i = 0; i < 16; i++) {
        y[i] = d * (float)(((b[6 + i] & 0xF) | (int)(((qh >> i) & 1) << 4)) - 16);
        y[i + 16] = d * (float)(((b[6 + i] >> 4) | (int)(((qh >> (i + 16)) & 1) << 4)) - 16);
    }
}

static void deq_q5_1(const uint8_t *b, float *y) {
    const float d = llk_f16(b), m = llk_f16(b + 2);
    uint32_t qh;
    memcpy(&qh, b + 4, 4);
    for (int i = 0; i < 16; i++) {
        y[i] = d * (float)((b[8 + i] & 0xF) | (((qh >> i) & 1) << 4)) + m;
        y[i + 16] = d * (float)((b[8 + i] >> 4) | (((qh >> (i + 16)) & 1) << 4)) + m;
    }
}

static void deq_q8_0(const uint8_t *b, float *y) {
    const float d = llk_f16(b);
    for (int i = 0; i < 32; i++) y[i] = d * (float)(int8_t)b[2 + i];
}

static void deq_iq4_nl(const uint8_t *b, float *y) {
    const float d = llk_f16(b);
    for (int i = 0; i < 16; i++) {
        y[i] = d * (float)kvalues_iq4nl[b[2 + i] & 0xF];
        y[i + 16] = d * (float)kvalues_iq4nl[b[2 + i] >> 4];
    }
}

/* Q2_K: element e = 128h + 32k + i holds bits 2k..2k+1 of qs[32h + i]; scale/min per 16. */
static void deq_q2_k(const uint8_t *b, float *y) {
    const float d = llk_f16(b + 80), dmin = llk_f16(b + 82);
    for (int e = 0; e < 256; e++) {
        const int h = e >> 7, k = (e >> 5) & 3, i = e & 31, s = e >> 4;
        const float dl = d * (float)(b[s] & 0xF), ml = dmin * (float)(b[s] >> 4);
        y[e] = dl * (float)((b[16 + 32 * h + i] >> (2 * k)) & 3) - ml;
    }
}

/* Q3_K: 2 low bits as Q2_K; the high bit of element e = 32k + i is bit k of hmask[i], and a
 * clear bit means "subtract 4". Signed 6-bit scale per 16. */
static void deq_q3_k(const uint8_t *b, float *y) {
    const float d = llk_f16(b + 108);
    int8_t sc[16];
    llk_scales_q3k(b + 96, sc);
    for (int e = 0; e < 256; e++) {
        const int h = e >> 7, k = (e >> 5) & 3, i = e & 31;
        const int lo = (b[32 + 32 * h + i] >> (2 * k)) & 3;
        const int hi = (b[i] >> (e >> 5)) & 1;
        const float dl = d * (float)sc[e >> 4];
        y[e] = dl * (float)(lo - (hi ? 0 : 4));
    }
}

/* Q4_K: element e = 64j + 32t + i is nibble t of qs[32j + i]; 6-bit scale and min per 32. */
static void deq_q4_k(const uint8_t *b, float *y) {
    const float d = llk_f16(b), dmin = llk_f16(b + 2);
    uint8_t sc[8], mn[8];
    llk_scale_min_k4(b + 4, sc, mn);
    for (int e = 0; e < 256; e++) {
        const int s = e >> 5, j = e >> 6, t = s & 1, i = e & 31;
        const float ds = d * (float)sc[s], dm = dmin * (float)mn[s];
        y[e] = ds * (float)((b[16 + 32 * j + i] >> (4 * t)) & 0xF) - dm;
    }
}

/* Q5_K: Q4_K plus a fifth bit: bit k of qh[i] for element e = 32k + i. */
static void deq_q5_k(const uint8_t *b, float *y) {
    const float d = llk_f16(b), dmin = llk_f16(b + 2);
    uint8_t sc[8], mn[8];
    llk_scale_min_k4(b + 4, sc, mn);
    for (int e = 0; e < 256; e++) {
        const int s = e >> 5, j = e >> 6, t = s & 1, i = e & 31;
        const int q = ((b[48 + 32 * j + i] >> (4 * t)) & 0xF) | (((b[16 + i] >> s) & 1) << 4);
        const float ds = d * (float)sc[s], dm = dmin * (float)mn[s];
        y[e] = ds * (float)q - dm;
    }
}

/* Q6_K: element e = 128h + 64s + i (i < 64) has low nibble s of ql[64h + i]; its 2 high bits are
 * bits 2k..2k+1 of qh[32h + (i & 31)] with k = 2s + i/32; q - 32, int8 scale per 16. */
static void deq_q6_k(const uint8_t *b, float *y) {
    const float d = llk_f16(b + 208);
    for (int e = 0; e < 256; e++) {
        const int h = e >> 7, s = (e >> 6) & 1, i = e & 63, k = 2 * s + (i >> 5);
        const int lo = (b[64 * h + i] >> (4 * s)) & 0xF;
        const int hi = (b[128 + 32 * h + (i & 31)] >> (2 * k)) & 3;
        const float dl = d * (float)(int8_t)b[192 + (e >> 4)];
        y[e] = dl * (float)((lo | (hi << 4)) - 32);
    }
}

/* IQ4_XS: eight sub-blocks of 32, each like IQ4_NL with a signed 6-bit scale. */
static void deq_iq4_xs(const uint8_t *b, float *y) {
    const float d = llk_f16(b);
    uint16_t sh;
    memcpy(&sh, b + 2, 2);
    for (int ib = 0; ib < 8; ib++) {
        const int ls = (((b[4 + ib / 2] >> (4 * (ib & 1))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4)) - 32;
        const float dl = d * (float)ls;
        const uint8_t *qs = b + 8 + 16 * ib;
        for (int i = 0; i < 16; i++) {
            y[32 * ib + i] = dl * (float)kvalues_iq4nl[qs[i] & 0xF];
            y[32 * ib + 16 + i] = dl * (float)kvalues_iq4nl[qs[i] >> 4];
        }
    }
}

void llk_dequant_row(int type, const uint8_t *w, int64_t K, float *y) {
    if (type == T_F16) {
        for (int64_t i = 0; i < K; i++) y[i] = llk_f16(w + 2 * i);
        return;
    }
    if (type == T_BF16) {
        for (int64_t i = 0; i < K; i++) y[i] = llk_bf16(w + 2 * i);
        return;
    }
    void (*deq)(const uint8_t *, float *) = 0;
    switch (type) {
    case T_Q4_0: deq = deq_q4_0; break;
    case T_Q4_1: deq = deq_q4_1; break;
    case T_Q5_0: deq = deq_q5_0; break;
    case T_Q5_1: deq = deq_q5_1; break;
    case T_Q8_0: deq = deq_q8_0; break;
    case T_IQ4_NL: deq = deq_iq4_nl; break;
    case T_Q2_K: deq = deq_q2_k; break;
    case T_Q3_K: deq = deq_q3_k; break;
    case T_Q4_K: deq = deq_q4_k; break;
    case T_Q5_K: deq = deq_q5_k; break;
    case T_Q6_K: deq = deq_q6_k; break;
    case T_IQ4_XS: deq = deq_iq4_xs; break;
    default: return;
    }
    const int qk = llk_block_size(type), bb = llk_block_bytes(type);
    for (int64_t ib = 0; ib < K / qk; ib++) deq(w + ib * bb, y + ib * qk);
}

/* ---- portable kernels --------------------------------------------------------------------- */

/* The activation value of element e of one quantized row. */
static inline float act_value(int fmt, const void *row, int64_t K, int64_t e) {
    if (fmt == ACT_32) return act32_d(row, K)[e >> 5] * (float)((const int8_t *)row)[e];
    const act256_t *a = (const act256_t *)row + (e >> 8);
    return a->d * (float)a->qs[e & 255];
}

#define SCALAR_KERNEL(NAME, TYPE)                                                               \
    static void NAME(int64_t K, const uint8_t *w, const void *act, size_t astride, int R,      \
                     float *out) {                                                             \
        const int qk = llk_block_size(TYPE), bb = llk_block_bytes(TYPE);                       \
        const int fmt = llk_act_format(TYPE);                                                  \
        float y[256], acc[LLK_RT] = {0};                                                       \
        for (int64_t ib = 0; ib < K / qk; ib++) {                                              \
            llk_dequant_row(TYPE, w + ib * bb, qk, y);                                         \
            for (int r = 0; r < R; r++) {                                                      \
                const void *row = (const char *)act + r * astride;                            \
                float s = 0;                                                                   \
                for (int i = 0; i < qk; i++) s += y[i] * act_value(fmt, row, K, ib * qk + i);     \
                acc[r] += s;                                                                   \
            }                                                                                  \
        }                                                                                      \
        for (int r = 0; r < R; r++) out[r] = acc[r];                                           \
    }

SCALAR_KERNEL(sc_q4_0, T_Q4_0)
SCALAR_KERNEL(sc_q4_1, T_Q4_1)
SCALAR_KERNEL(sc_q5_0, T_Q5_0)
SCALAR_KERNEL(sc_q5_1, T_Q5_1)
SCALAR_KERNEL(sc_q8_0, T_Q8_0)
SCALAR_KERNEL(sc_iq4_nl, T_IQ4_NL)
SCALAR_KERNEL(sc_q2_k, T_Q2_K)
SCALAR_KERNEL(sc_q3_k, T_Q3_K)
SCALAR_KERNEL(sc_q4_k, T_Q4_K)
SCALAR_KERNEL(sc_q5_k, T_Q5_K)
SCALAR_KERNEL(sc_q6_k, T_Q6_K)
SCALAR_KERNEL(sc_iq4_xs, T_IQ4_XS)

/* F16/BF16 against the float activations themselves (no int8 rounding). */
#define SCALAR_FLOAT_KERNEL(NAME, CONV)                                                         \
    static void NAME(int64_t K, const uint8_t *w, const void *act, size_t astride, int R,      \
                     float *out) {                                                             \
        for (int r = 0; r < R; r++) {                                                          \
            const float *x = (const float *)((const char *)act + r * astride);                \
            float s = 0;                                                                       \
            for (int64_t i = 0; i < K; i++) s += CONV(w + 2 * i) * x[i];                       \
            out[r] = s;                                                                        \
        }                                                                                      \
    }

SCALAR_FLOAT_KERNEL(sc_f16, llk_f16)
SCALAR_FLOAT_KERNEL(sc_bf16, llk_bf16)

llk_kernel_t llk_scalar_kernel(int type) {
    switch (type) {
    case T_F16: return sc_f16;
    case T_BF16: return sc_bf16;
    case T_Q4_0: return sc_q4_0;
    case T_Q4_1: return sc_q4_1;
    case T_Q5_0: return sc_q5_0;
    case T_Q5_1: return sc_q5_1;
    case T_Q8_0: return sc_q8_0;
    case T_IQ4_NL: return sc_iq4_nl;
    case T_Q2_K: return sc_q2_k;
    case T_Q3_K: return sc_q3_k;
    case T_Q4_K: return sc_q4_k;
    case T_Q5_K: return sc_q5_k;
    case T_Q6_K: return sc_q6_k;
    case T_IQ4_XS: return sc_iq4_xs;
    default: return 0;
    }
}
