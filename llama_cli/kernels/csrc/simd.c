/* simd.c: AVX-512 kernels. Each unpacks one weight block in registers and dots it with R
 * (1..LLK_RT) int8 activation rows, so the unpacking is paid once per block, not once per row.
 * The maths follows llama.cpp's ggml_vec_dot_*_q8_* (ggml/src/ggml-cpu/arch/x86/quants.c); the
 * multi-row tiling and the layouts are ours.
 *
 * K-quants (Q2_K..Q6_K), against act256_t rows. A block is four chunks of 64 weights. Each chunk
 * is unpacked to unsigned bytes u (0..63) in element order, with a vector of int16 sub-block
 * scales (one per 16 elements). Per activation row and chunk:
 *     maddubs(u, a)        -> 32 int16 sums of 2 products (at most 2*63*127, no saturation)
 *     dpwssd(acc, p, sc)   -> 16 int32 sums, weighted by the sub-block scales
 * then one float multiply-add by d*d_act per block. The weight's min (Q2_K/Q4_K/Q5_K) or offset
 * (Q3_K: -4, Q6_K: -32) per 16 elements becomes `mins` (16 floats) against the activation's
 * per-16 sums `bsf`: one fused multiply-add per block and row.
 *
 * 32-element types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, and IQ4_XS's sub-blocks), against
 * 32-element activation blocks: a block becomes 32 unsigned bytes u with w = dw*u + cw (signed
 * types are offset to unsigned: Q8_0 and IQ4 by 128), so one dpbusd (unsigned x signed bytes,
 * VNNI) per row and block gives the integer dot, and cw*s adds the offset or min term.
 *
 * Every kernel is batch-invariant: a row's result is the same bits whatever R is (llk.h). The
 * K-quant and F16/BF16 kernels keep one accumulator per row in one order; the 32-element kernel
 * has a ymm form for 1-2 rows and a paired zmm form for more, holding the same per-row state.
 *
 * The unpacking lives in unpack.h (shared with tiles.c). Without AVX-512 (BW, VL) no kernel here
 * is compiled and linear.c uses the portable ones. This file is built apart from the others, one
 * small library per type (see the end of the file), and llk_linear is handed the kernel.
 */
#include <math.h>

#include "llk.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include "unpack.h"

INLINE void kquant_rows(int type, int64_t K, const uint8_t *w, const void *act, size_t astride, float *out,
                        const int R) {
    const int bb = type == T_Q2_K ? 84 : type == T_Q3_K ? 110 : type == T_Q4_K ? 144 : type == T_Q5_K ? 176 : 210;
    __m512 acc[LLK_RT];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t ib = 0; ib < K / 256; ib++) {
        prefetch_ahead(w + ib * bb, bb);
        const kblock_t k = unpack_k(type, w + ib * bb);
        const __m512 dv = _mm512_set1_ps(k.d);
        for (int r = 0; r < R; r++) {
            const act256_t *a = (const act256_t *)((const char *)act + r * astride) + ib;
            __m512i is0 = _mm512_setzero_si512(), is1 = _mm512_setzero_si512(); /* two short chains */
            is0 = DPWSSD(is0, _mm512_maddubs_epi16(k.u[0], _mm512_loadu_si512((const void *)(a->qs))), k.s[0]);
            is1 = DPWSSD(is1, _mm512_maddubs_epi16(k.u[1], _mm512_loadu_si512((const void *)(a->qs + 64))), k.s[1]);
            is0 = DPWSSD(is0, _mm512_maddubs_epi16(k.u[2], _mm512_loadu_si512((const void *)(a->qs + 128))), k.s[2]);
            is1 = DPWSSD(is1, _mm512_maddubs_epi16(k.u[3], _mm512_loadu_si512((const void *)(a->qs + 192))), k.s[3]);
            const __m512i is = _mm512_add_epi32(is0, is1);
            acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(is), _mm512_set1_ps(a->d)), dv, acc[r]);
            acc[r] = _mm512_fnmadd_ps(k.mins, _mm512_loadu_ps(a->bsf), acc[r]);
        }
    }
    for (int r = 0; r < R; r++) out[r] = _mm512_reduce_add_ps(acc[r]);
}

/* ---- 32-element blocks (VNNI) ----------------------------------------------------------------- */
#ifdef __AVX512VNNI__

/* Scales of the eight blocks ib..ib+7 (w = dw*u + cw), as unpack_32 computes them one at a time
 * (the same float operations, so the same bits), from each block's first 4 bytes (eight plain
 * loads: as fast as vpgatherdd here, and gathers are microcoded slow on CPUs with the Downfall
 * mitigation); for IQ4_XS the eight are one super-block's sub-blocks. */
INLINE void scales8(int type, const uint8_t *w, int64_t ib, int bb, __m256 *dw, __m256 *cw) {
    if (type == T_IQ4_XS) {
        const uint8_t *b = w + (ib / 8) * bb;
        uint32_t lo;
        uint16_t hi;
        memcpy(&hi, b + 2, 2);
        memcpy(&lo, b + 4, 4);
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); /* sub-block j: low bits at 4j, high at 2j */
        const __m256i l = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)lo), _mm256_slli_epi32(lane, 2)), _mm256_set1_epi32(0xF));
        const __m256i h = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(hi), _mm256_slli_epi32(lane, 1)), _mm256_set1_epi32(3));
        const __m256i ls = _mm256_sub_epi32(_mm256_or_si256(l, _mm256_slli_epi32(h, 4)), _mm256_set1_epi32(32));
        *dw = _mm256_mul_ps(_mm256_set1_ps(llk_f16(b)), _mm256_cvtepi32_ps(ls));
        *cw = _mm256_mul_ps(_mm256_set1_ps(-128), *dw);
        return;
    }
    const uint8_t *b = w + ib * bb;
    int f[8];
    for (int j = 0; j < 8; j++) memcpy(f + j, b + j * bb, 4);
    const __m256i g = _mm256_setr_epi32(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]);
    *dw = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(g)); /* d: bytes 0-1 */
    if (type == T_Q4_1 || type == T_Q5_1) *cw = _mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_srli_epi32(g, 16))); /* m: bytes 2-3 */
    else *cw = _mm256_mul_ps(_mm256_set1_ps(type == T_Q4_0 ? -8.0f : type == T_Q5_0 ? -16.0f : -128.0f), *dw);
}

/* A row's result is accumulated in one order whatever R is, so that a row computed in a batch is
 * bit-identical to the row computed alone (prompt-lookup decoding verifies drafted tokens in one
 * batch and must pick exactly the tokens plain decoding picks). Per row: four vectors of 8 float
 * lanes, vector i%4 taking block i's 8 int32 partial dots times dw*d by one fused multiply-add
 * (four independent chains: one chain was latency-bound at M = 1); a fifth vector whose lane i%8
 * takes block i's offset term cw*s, fused; then q32_finish. The paths below differ in how
 * registers hold that state, not in its maths. Blocks go eight at a time (their scales as vectors,
 * scales8), the last nb % 8 one at a time. */
INLINE float q32_finish(const __m256 *acc, __m256 cs) {
    float c[8];
    _mm256_storeu_ps(c, cs);
    const __m256 v8 = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
    __m128 v = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps(v8, 1));
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    v = _mm_add_ss(v, _mm_movehdup_ps(v));
    return _mm_cvtss_f32(v) + (((c[0] + c[1]) + (c[2] + c[3])) + ((c[4] + c[5]) + (c[6] + c[7])));
}

/* One block's step of a row's state: lanes += float(u . a) * dwd. */
INLINE __m256 q32_step(__m256i u, const char *a, __m256 dwd, __m256 acc) {
    const __m256i t = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, _mm256_loadu_si256((const __m256i *)a));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), dwd, acc);
}

INLINE void q32_rows(int type, int64_t K, const uint8_t *w, const void *act, size_t astride, float *out, const int R) {
    const int per = type == T_IQ4_XS ? 8 : 1;
    const int bb = type == T_Q4_0 || type == T_IQ4_NL ? 18 : type == T_Q4_1 ? 20 : type == T_Q5_0 ? 22
                 : type == T_Q5_1 ? 24 : type == T_Q8_0 ? 34 : 136;
    const int64_t nb = K / 32, oct_end = nb & ~(int64_t)7;
    __m256 acc[LLK_RT][4], cs[LLK_RT];
#define ROW(r) ((const char *)act + (r) * astride)
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = cs[r] = _mm256_setzero_ps();
    if (R <= 2) {
        /* Decode: ymm registers. 256-bit VNNI issues on two ports where the 512-bit form has one,
         * so this beats the paired form below when the unpacking is not shared by several rows. */
        for (int64_t ib = 0; ib < oct_end; ib += 8) {
            prefetch_ahead(w + (ib / per) * bb, 8 / per * bb);
            __m256 dwv, cwv;
            scales8(type, w, ib, bb, &dwv, &cwv);
            __m256i u[8];
            for (int j = 0; j < 8; j++) {
                float dw, cw; /* unused: scales8 gave them */
                u[j] = unpack_32(type, w + ((ib + j) / per) * bb, (int)((ib + j) % per), &dw, &cw);
            }
            for (int r = 0; r < R; r++) {
                float sc[8];
                _mm256_storeu_ps(sc, _mm256_mul_ps(dwv, _mm256_loadu_ps(act32_d(ROW(r), K) + ib)));
                cs[r] = _mm256_fmadd_ps(cwv, _mm256_loadu_ps(act32_s(ROW(r), K) + ib), cs[r]);
                for (int j = 0; j < 8; j++)
                    acc[r][j & 3] = q32_step(u[j], ROW(r) + (ib + j) * 32, _mm256_broadcast_ss(sc + j), acc[r][j & 3]);
            }
        }
    } else {
        /* Two blocks per zmm register: acc2[r][h] holds vectors 2h (lanes 0-7) and 2h+1 (8-15);
         * the scales of a pair are spread to the lanes with one permute. */
        __m512 acc2[LLK_RT][2]; /* [blocks 0|1 mod 4, blocks 2|3 mod 4] */
        for (int r = 0; r < R; r++) acc2[r][0] = acc2[r][1] = _mm512_setzero_ps();
        for (int64_t ib = 0; ib < oct_end; ib += 8) {
            prefetch_ahead(w + (ib / per) * bb, 8 / per * bb);
            __m256 dwv, cwv;
            scales8(type, w, ib, bb, &dwv, &cwv);
            __m512i u[4];
            for (int p = 0; p < 4; p++) {
                float dw, cw;
                const __m256i u0 = unpack_32(type, w + ((ib + 2 * p) / per) * bb, (int)((ib + 2 * p) % per), &dw, &cw);
                const __m256i u1 = unpack_32(type, w + ((ib + 2 * p + 1) / per) * bb, (int)((ib + 2 * p + 1) % per), &dw, &cw);
                u[p] = _mm512_inserti64x4(_mm512_castsi256_si512(u0), u1, 1);
            }
            for (int r = 0; r < R; r++) {
                const __m512 sc = _mm512_castps256_ps512(_mm256_mul_ps(dwv, _mm256_loadu_ps(act32_d(ROW(r), K) + ib)));
                cs[r] = _mm256_fmadd_ps(cwv, _mm256_loadu_ps(act32_s(ROW(r), K) + ib), cs[r]);
                for (int p = 0; p < 4; p++) {
                    const __m512i t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[p], _mm512_loadu_si512((const void *)(ROW(r) + (ib + 2 * p) * 32)));
                    const __m512 dd = _mm512_permutexvar_ps(_mm512_set_epi32(2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1,
                                                                             2 * p, 2 * p, 2 * p, 2 * p, 2 * p, 2 * p, 2 * p, 2 * p), sc);
                    acc2[r][p & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), dd, acc2[r][p & 1]);
                }
            }
        }
        for (int r = 0; r < R; r++)
            for (int h = 0; h < 2; h++)
                acc[r][2 * h] = _mm512_castps512_ps256(acc2[r][h]), acc[r][2 * h + 1] = _mm512_extractf32x8_ps(acc2[r][h], 1);
    }
    for (int64_t ib = oct_end; ib < nb; ib++) { /* the last nb % 8 blocks */
        float dw, cw;
        const __m256i u = unpack_32(type, w + (ib / per) * bb, (int)(ib % per), &dw, &cw);
        const __mmask8 lane = (__mmask8)(1u << (ib & 7));
        for (int r = 0; r < R; r++) {
            const __m256 dd = _mm256_set1_ps(dw * act32_d(ROW(r), K)[ib]);
            acc[r][ib & 3] = q32_step(u, ROW(r) + ib * 32, dd, acc[r][ib & 3]);
            cs[r] = _mm256_mask3_fmadd_ps(_mm256_set1_ps(cw), _mm256_set1_ps(act32_s(ROW(r), K)[ib]), cs[r], lane);
        }
    }
    for (int r = 0; r < R; r++) out[r] = q32_finish(acc[r], cs[r]);
#undef ROW
}
#endif

/* ---- F16 / BF16 against float activations ------------------------------------------------------ */

INLINE __m512 load16(int type, const uint8_t *p) {
    const __m256i h = _mm256_loadu_si256((const __m256i *)p);
    if (type == T_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

INLINE void half_rows(int type, int64_t K, const uint8_t *w, const void *act, size_t astride, float *out, const int R) {
    __m512 acc[LLK_RT];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= K; i += 16) {
        const __m512 wv = load16(type, w + 2 * i);
        for (int r = 0; r < R; r++)
            acc[r] = _mm512_fmadd_ps(wv, _mm512_loadu_ps((const float *)((const char *)act + r * astride) + i), acc[r]);
    }
    for (int r = 0; r < R; r++) {
        float s = _mm512_reduce_add_ps(acc[r]);
        const float *x = (const float *)((const char *)act + r * astride);
        for (int64_t j = i; j < K; j++) s += (type == T_F16 ? llk_f16(w + 2 * j) : llk_bf16(w + 2 * j)) * x[j];
        out[r] = s;
    }
}

/* ---- instantiation: one function per type, R unrolled as a compile-time constant -------------- */

#define DISPATCH_R(BODY, TYPE)                                                                   \
    switch (R) {                                                                                 \
    case 1: BODY(TYPE, K, w, act, astride, out, 1); break;                                       \
    case 2: BODY(TYPE, K, w, act, astride, out, 2); break;                                       \
    case 3: BODY(TYPE, K, w, act, astride, out, 3); break;                                       \
    case 4: BODY(TYPE, K, w, act, astride, out, 4); break;                                       \
    case 5: BODY(TYPE, K, w, act, astride, out, 5); break;                                       \
    case 6: BODY(TYPE, K, w, act, astride, out, 6); break;                                       \
    case 7: BODY(TYPE, K, w, act, astride, out, 7); break;                                       \
    default: BODY(TYPE, K, w, act, astride, out, 8); break;                                      \
    }

#define KERNEL(NAME, BODY, TYPE)                                                                 \
    static void NAME(int64_t K, const uint8_t *w, const void *act, size_t astride, int R, float *out) { \
        DISPATCH_R(BODY, TYPE)                                                                   \
    }

/* Built once per type (_build.py passes -DLLK_TYPE=<ggml type id>: a model compiles only the
 * kernels of the types it holds, each in its own process); without LLK_TYPE, every type. The ids
 * are llk.h's enum, spelled as numbers for the preprocessor. */
#ifdef LLK_TYPE
#define WANT(ID) (LLK_TYPE == (ID))
#else
#define WANT(ID) 1
#endif
#if WANT(10)
KERNEL(k_q2_k, kquant_rows, T_Q2_K)
#endif
#if WANT(11)
KERNEL(k_q3_k, kquant_rows, T_Q3_K)
#endif
#if WANT(12)
KERNEL(k_q4_k, kquant_rows, T_Q4_K)
#endif
#if WANT(13)
KERNEL(k_q5_k, kquant_rows, T_Q5_K)
#endif
#if WANT(14)
KERNEL(k_q6_k, kquant_rows, T_Q6_K)
#endif
#if WANT(1)
KERNEL(k_f16, half_rows, T_F16)
#endif
#if WANT(30)
KERNEL(k_bf16, half_rows, T_BF16)
#endif
#ifdef __AVX512VNNI__
#if WANT(2)
KERNEL(k_q4_0, q32_rows, T_Q4_0)
#endif
#if WANT(3)
KERNEL(k_q4_1, q32_rows, T_Q4_1)
#endif
#if WANT(6)
KERNEL(k_q5_0, q32_rows, T_Q5_0)
#endif
#if WANT(7)
KERNEL(k_q5_1, q32_rows, T_Q5_1)
#endif
#if WANT(8)
KERNEL(k_q8_0, q32_rows, T_Q8_0)
#endif
#if WANT(20)
KERNEL(k_iq4_nl, q32_rows, T_IQ4_NL)
#endif
#if WANT(23)
KERNEL(k_iq4_xs, q32_rows, T_IQ4_XS)
#endif
#endif

llk_kernel_t llk_simd_kernel(int type) {
    switch (type) {
#if WANT(10)
    case T_Q2_K: return k_q2_k;
#endif
#if WANT(11)
    case T_Q3_K: return k_q3_k;
#endif
#if WANT(12)
    case T_Q4_K: return k_q4_k;
#endif
#if WANT(13)
    case T_Q5_K: return k_q5_k;
#endif
#if WANT(14)
    case T_Q6_K: return k_q6_k;
#endif
#if WANT(1)
    case T_F16: return k_f16;
#endif
#if WANT(30)
    case T_BF16: return k_bf16;
#endif
#ifdef __AVX512VNNI__
#if WANT(2)
    case T_Q4_0: return k_q4_0;
#endif
#if WANT(3)
    case T_Q4_1: return k_q4_1;
#endif
#if WANT(6)
    case T_Q5_0: return k_q5_0;
#endif
#if WANT(7)
    case T_Q5_1: return k_q5_1;
#endif
#if WANT(8)
    case T_Q8_0: return k_q8_0;
#endif
#if WANT(20)
    case T_IQ4_NL: return k_iq4_nl;
#endif
#if WANT(23)
    case T_IQ4_XS: return k_iq4_xs;
#endif
#endif
    default: return 0;
    }
}

#else /* no AVX-512: the portable kernels serve every type */

llk_kernel_t llk_simd_kernel(int type) {
    (void)type;
    return 0;
}

#endif
