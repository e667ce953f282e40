/* tiles.c: rows of W as bfloat16, for the prefill path (linear.c: llk_dequant_bf16), which
 * multiplies these tiles with torch's bfloat16 matmul. Same unpacking as the int8 kernels
 * (unpack.h); w = scale * code - min in float32, rounded to nearest even. */
#include "llk.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include "unpack.h"

/* ---- dequantization to bfloat16 (the prefill path: rows of W for a bfloat16 matmul) ------------ */

/* 32 floats (two vectors) to 32 bfloat16, round to nearest even. */
INLINE __m512i bf16x32(__m512 lo, __m512 hi) { /* lanes 0-15 from lo, 16-31 from hi */
#ifdef __AVX512BF16__
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
#else
    const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7FFF);
    __m512i a = _mm512_castps_si512(lo), b = _mm512_castps_si512(hi);
    a = _mm512_srli_epi32(_mm512_add_epi32(a, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(a, 16), one))), 16);
    b = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(b, 16), one))), 16);
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(a)), _mm512_cvtepi32_epi16(b), 1);
#endif
}

INLINE void store_bf16x32(uint16_t *out, __m512 lo, __m512 hi) { _mm512_storeu_si512((void *)out, bf16x32(lo, hi)); }

INLINE void deq_bf16_k(int type, const uint8_t *w, int64_t K, uint16_t *out) {
    const int bb = type == T_Q2_K ? 84 : type == T_Q3_K ? 110 : type == T_Q4_K ? 144 : type == T_Q5_K ? 176 : 210;
    for (int64_t ib = 0; ib < K / 256; ib++, out += 256) {
        const kblock_t k = unpack_k(type, w + ib * bb);
        /* w = (d*sc) * u - mins, per 16 elements */
        const __m512 dsc = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(k.sc16)), _mm512_set1_ps(k.d));
        if (type == T_Q4_K || type == T_Q5_K) {
            /* One scale and min per 32 weights and only 16 (32) possible codes: round the table of
             * their values to bfloat16 once, then look the 32 weights up with one word permute.
             * The same float operations as below, so the same bits, at half the instructions. */
            const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
            for (int sb = 0; sb < 8; sb++) {
                const __m512i lane = _mm512_set1_epi32(2 * sb);
                const __m512 scale = _mm512_permutexvar_ps(lane, dsc), min = _mm512_permutexvar_ps(lane, k.mins);
                const __m512 lo = _mm512_fmsub_ps(scale, iota, min);
                const __m512 hi = type == T_Q5_K ? _mm512_fmsub_ps(scale, _mm512_add_ps(iota, _mm512_set1_ps(16)), min) : lo;
                const __m512i codes = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(k.u[sb >> 1], sb & 1));
                _mm512_storeu_si512((void *)(out + 32 * sb), _mm512_permutexvar_epi16(codes, bf16x32(lo, hi)));
            }
            continue;
        }
        for (int c = 0; c < 4; c++) {
            __m512 v[4];
            for (int q = 0; q < 4; q++) {
                const int sub = 4 * c + q;
                const __m512 uf = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(k.u[c], q)));
                const __m512i lane = _mm512_set1_epi32(sub);
                v[q] = _mm512_fmsub_ps(_mm512_permutexvar_ps(lane, dsc), uf, _mm512_permutexvar_ps(lane, k.mins));
            }
            store_bf16x32(out + 64 * c, v[0], v[1]);
            store_bf16x32(out + 64 * c + 32, v[2], v[3]);
        }
    }
}

#ifdef __AVX512VNNI__
INLINE void deq_bf16_32(int type, const uint8_t *w, int64_t K, uint16_t *out) {
    const int per = type == T_IQ4_XS ? 8 : 1;
    const int bb = type == T_Q4_0 || type == T_IQ4_NL ? 18 : type == T_Q4_1 ? 20 : type == T_Q5_0 ? 22
                 : type == T_Q5_1 ? 24 : type == T_Q8_0 ? 34 : 136;
    for (int64_t ib = 0; ib < K / 32; ib++, out += 32) {
        float dw, cw;
        const __m256i u = unpack_32(type, w + (ib / per) * bb, (int)(ib % per), &dw, &cw);
        const __m512 d = _mm512_set1_ps(dw), c = _mm512_set1_ps(cw);
        const __m512 lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(u))), d, c);
        const __m512 hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(u, 1))), d, c);
        store_bf16x32(out, lo, hi);
    }
}
#endif

/* Row of W (K elements) as bfloat16; returns 0 where no SIMD path exists (the caller then rounds
 * the exact float32 dequantization). */
int llk_simd_dequant_bf16(int type, const uint8_t *w, int64_t K, uint16_t *out) {
    if (type == T_F16 && K % 32 == 0) {
        for (int64_t i = 0; i < K; i += 32)
            store_bf16x32(out + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 2 * i))),
                          _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 2 * i + 32))));
        return 1;
    }
    switch (type) {
    case T_Q2_K: deq_bf16_k(T_Q2_K, w, K, out); return 1;
    case T_Q3_K: deq_bf16_k(T_Q3_K, w, K, out); return 1;
    case T_Q4_K: deq_bf16_k(T_Q4_K, w, K, out); return 1;
    case T_Q5_K: deq_bf16_k(T_Q5_K, w, K, out); return 1;
    case T_Q6_K: deq_bf16_k(T_Q6_K, w, K, out); return 1;
#ifdef __AVX512VNNI__
    case T_Q4_0: deq_bf16_32(T_Q4_0, w, K, out); return 1;
    case T_Q4_1: deq_bf16_32(T_Q4_1, w, K, out); return 1;
    case T_Q5_0: deq_bf16_32(T_Q5_0, w, K, out); return 1;
    case T_Q5_1: deq_bf16_32(T_Q5_1, w, K, out); return 1;
    case T_Q8_0: deq_bf16_32(T_Q8_0, w, K, out); return 1;
    case T_IQ4_NL: deq_bf16_32(T_IQ4_NL, w, K, out); return 1;
    case T_IQ4_XS: deq_bf16_32(T_IQ4_XS, w, K, out); return 1;
#endif
    default: return 0;
    }
}

#else /* no AVX-512: linear.c rounds the portable float32 dequantization */

int llk_simd_dequant_bf16(int type, const uint8_t *w, int64_t K, uint16_t *out) {
    (void)type, (void)w, (void)K, (void)out;
    return 0;
}

#endif
