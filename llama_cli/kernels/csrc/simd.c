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
 * 32-element activation blocks: a block becomes 32 unsigned bytes u with w = dw*u + cw (signed types are offset
 * to unsigned: Q8_0 and IQ4 by 128), so one dpbusd (unsigned x signed bytes, VNNI) per row and
 * block gives the integer dot, and cw*act.s adds the offset or min term.
 *
 * Without AVX-512 (BW, VL) no kernel here is compiled and linear.c uses the portable ones.
 */
#include "llk.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

#define INLINE static inline __attribute__((always_inline))

/* Software prefetch distance in bytes for the weight stream (0: none). Rows are consecutive in
 * memory, so "ahead" runs on into the next rows. Measured on the 1B shapes, M = 1, 2 threads:
 * none 62 ms/token, 1 KB 45, 2-4 KB 41, 8 KB 46. */
#ifndef LLK_PF
#define LLK_PF 4096
#endif
#ifndef LLK_PF_HINT
#define LLK_PF_HINT _MM_HINT_T0
#endif
INLINE void prefetch_ahead(const uint8_t *p, int bytes) {
    if (LLK_PF)
        for (int i = 0; i < bytes; i += 64) _mm_prefetch((const char *)p + LLK_PF + i, LLK_PF_HINT);
}

#ifdef __AVX512VNNI__
#define DPWSSD(acc, a, b) _mm512_dpwssd_epi32((acc), (a), (b))
#else
#define DPWSSD(acc, a, b) _mm512_add_epi32((acc), _mm512_madd_epi16((a), (b)))
#endif

/* Each 16-bit lane of x shifted right by `lo` in the lower 256 bits and by `hi` in the upper:
 * immediate shifts under a mask (variable word shifts, vpsrlvw, take more micro-ops). */
INLINE __m512i shr2(__m512i x, int lo, int hi) {
    if (lo) x = _mm512_srli_epi16(x, (unsigned)lo);
    return hi == lo ? x : _mm512_mask_srli_epi16(x, 0xFFFF0000u, x, (unsigned)(hi - lo));
}

/* Broadcast the 32 bytes at p to both halves of a zmm register. */
INLINE __m512i bcast32(const uint8_t *p) { return _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p)); }

/* ---- K-quants -------------------------------------------------------------------------------- */

typedef struct {
    __m512i u[4];  /* unsigned weights, 64 per chunk, in element order */
    __m512i s[4];  /* per chunk: int16 scale of each maddubs lane (lane l: sub-block 4c + l/8) */
    __m256i sc16;  /* int16 scale per 16 elements (the bfloat16 path; dead code in the int8 one) */
    __m512 mins;   /* float min/offset term per 16 elements (already times d or dmin) */
    float d;
} kblock_t;

/* Scale vectors of the four chunks from sixteen int16 scales, one per 16 elements. */
INLINE void chunk_scales(kblock_t *k) {
    const __m512i sc512 = _mm512_castsi256_si512(k->sc16);
    const __m512i lane = _mm512_srli_epi16(
        _mm512_set_epi32(0x001f001e, 0x001d001c, 0x001b001a, 0x00190018, 0x00170016, 0x00150014, 0x00130012,
                         0x00110010, 0x000f000e, 0x000d000c, 0x000b000a, 0x00090008, 0x00070006, 0x00050004,
                         0x00030002, 0x00010000),
        3); /* l / 8 */
    for (int c = 0; c < 4; c++)
        k->s[c] = _mm512_permutexvar_epi16(_mm512_add_epi16(_mm512_set1_epi16((short)(4 * c)), lane), sc512);
}

#ifdef __AVX512VBMI__
/* Q4_K/Q5_K header (d, dmin, 12 bytes of 6-bit scales and mins) decoded in one xmm register:
 * bytes 0..7 the scales, 8..15 the mins (llk_scale_min_k4's 32-bit trick, four lanes at once). */
INLINE __m128i scales_mins_k4(const uint8_t *b) {
    const __m128i h = _mm_loadu_si128((const __m128i *)b); /* u32 lanes: [d|dmin, q0..3, q4..7, q8..11] */
    const __m128i v = _mm_srlv_epi32(_mm_shuffle_epi32(h, _MM_SHUFFLE(3, 2, 3, 1)), _mm_setr_epi32(0, 0, 0, 4));
    const __m128i low = _mm_and_si128(v, _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
    const __m128i top = _mm_and_si128(_mm_srli_epi32(_mm_shuffle_epi32(h, _MM_SHUFFLE(2, 2, 1, 1)), 2),
                                      _mm_setr_epi32(0, 0x30303030, 0, 0x30303030));
    return _mm_or_si128(low, top);
}
#endif

INLINE kblock_t unpack_k(int type, const uint8_t *b) {
    const __m512i m0f = _mm512_set1_epi8(0x0F), m03 = _mm512_set1_epi8(3), m01 = _mm512_set1_epi8(1);
    kblock_t k;
    if (type == T_Q4_K || type == T_Q5_K) {
        const float dmin = llk_f16(b + 2);
        k.d = llk_f16(b);
#ifdef __AVX512VBMI__
        /* One byte permute per vector, straight from the decoded header: the chunk scales (int16
         * lanes: low byte the scale of sub-block 2c or 2c+1, high byte zeroed) and the mins. */
        const __m512i sm = _mm512_castsi128_si512(scales_mins_k4(b));
        k.sc16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(_mm512_castsi512_si128(sm), _mm512_castsi512_si128(sm)));
        for (int c = 0; c < 4; c++)
            k.s[c] = _mm512_maskz_permutexvar_epi8(0x5555555555555555ull, _mm512_mask_blend_epi8(0xFFFFFFFF00000000ull,
                _mm512_set1_epi8((char)(2 * c)), _mm512_set1_epi8((char)(2 * c + 1))), sm);
        const __m512i min_idx = _mm512_add_epi32( /* int32 lane k, low byte: min k/2 (byte 8 + k/2) */
            _mm512_srli_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), 1), _mm512_set1_epi32(8));
        k.mins = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_maskz_permutexvar_epi8(0x1111111111111111ull, min_idx, sm)),
                               _mm512_set1_ps(dmin));
#else
        uint8_t sc[8], mn[8];
        llk_scale_min_k4(b + 4, sc, mn);
        const __m128i scb = _mm_loadl_epi64((const __m128i *)sc), mnb = _mm_loadl_epi64((const __m128i *)mn);
        k.sc16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(scb, scb)); /* per 32 -> per 16 */
        k.mins = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(mnb, mnb))),
                               _mm512_set1_ps(dmin));
        k.s[0] = k.s[1] = k.s[2] = k.s[3] = _mm512_setzero_si512(); /* set by chunk_scales below */
#endif
        const uint8_t *qs = b + (type == T_Q4_K ? 16 : 48);
        /* chunk j: low nibbles of qs[32j..] then high nibbles */
        for (int j = 0; j < 4; j++) k.u[j] = _mm512_and_si512(shr2(bcast32(qs + 32 * j), 0, 4), m0f);
        if (type == T_Q5_K) { /* fifth bit of element 32s + i: bit s of qh[i] */
            const __m512i qh = bcast32(b + 16);
            for (int j = 0; j < 4; j++) {
                const __m512i h = _mm512_and_si512(shr2(qh, 2 * j, 2 * j + 1), m01);
                k.u[j] = _mm512_or_si512(k.u[j], _mm512_slli_epi16(h, 4));
            }
        }
    } else if (type == T_Q6_K) {
        k.d = llk_f16(b + 208);
        const __m128i scb = _mm_loadu_si128((const __m128i *)(b + 192));
        k.sc16 = _mm256_cvtepi8_epi16(scb);
        k.mins = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(scb)), _mm512_set1_ps(32 * k.d));
        for (int c = 0; c < 4; c++) { /* chunk c: half h = c/2, nibble s = c%2 of ql[64h..] */
            const int h = c >> 1, s = c & 1;
            const __m512i x = _mm512_loadu_si512((const void *)(b + 64 * h));
            const __m512i lo = _mm512_and_si512(s ? _mm512_srli_epi16(x, 4) : x, m0f);
            const __m512i hb = _mm512_and_si512(shr2(bcast32(b + 128 + 32 * h), 4 * s, 4 * s + 2), m03);
            k.u[c] = _mm512_or_si512(lo, _mm512_slli_epi16(hb, 4));
        }
    } else { /* Q2_K, Q3_K: 2-bit values, element 128h + 32k + i in bits 2k.. of qs[32h + i] */
        const uint8_t *qs;
        if (type == T_Q2_K) {
            k.d = llk_f16(b + 80);
            const __m128i scb = _mm_loadu_si128((const __m128i *)b), lo4 = _mm_set1_epi8(0x0F);
            k.sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(scb, lo4));
            k.mins = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(scb, 4), lo4))),
                                   _mm512_set1_ps(llk_f16(b + 82)));
            qs = b + 16;
        } else {
            int8_t sc[16];
            llk_scales_q3k(b + 96, sc);
            k.d = llk_f16(b + 108);
            const __m128i scb = _mm_loadu_si128((const __m128i *)sc);
            k.sc16 = _mm256_cvtepi8_epi16(scb);
            k.mins = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(scb)), _mm512_set1_ps(4 * k.d));
            qs = b + 32;
        }
        for (int c = 0; c < 4; c++) {
            const int h = c >> 1, s = c & 1;
            k.u[c] = _mm512_and_si512(shr2(bcast32(qs + 32 * h), 4 * s, 4 * s + 2), m03);
            if (type == T_Q3_K) { /* high bit of element 32k' + i is bit k' of hmask[i]; chunk c: k' = 2c, 2c+1 */
                const __m512i hb = _mm512_and_si512(shr2(bcast32(b), 2 * c, 2 * c + 1), m01);
                k.u[c] = _mm512_or_si512(k.u[c], _mm512_slli_epi16(hb, 2));
            }
        }
    }
#ifdef __AVX512VBMI__
    if (type != T_Q4_K && type != T_Q5_K) chunk_scales(&k);
#else
    chunk_scales(&k);
#endif
    return k;
}

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

/* 16 bytes of packed nibbles -> 32 bytes: low nibbles (elements 0..15), then high (16..31). */
INLINE __m256i nibbles(const uint8_t *qs) {
    const __m128i v = _mm_loadu_si128((const __m128i *)qs), m = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
}

INLINE __m256i iq4_values(const uint8_t *qs) { /* kvalues + 128, as unsigned bytes */
    const __m256i table = _mm256_broadcastsi128_si256(_mm_setr_epi8(
        1, 24, 45, 63, 79, 93, 106, 118, (char)129, (char)141, (char)153, (char)166, (char)181, (char)197,
        (char)217, (char)241));
    return _mm256_shuffle_epi8(table, nibbles(qs));
}

/* One 32-element block: w = dw*u + cw. `sub` selects IQ4_XS's sub-block. */
INLINE __m256i unpack_32(int type, const uint8_t *b, int sub, float *dw, float *cw) {
    const float d = llk_f16(b);
    uint32_t qh;
    switch (type) {
    case T_Q4_0: *dw = d; *cw = -8 * d; return nibbles(b + 2);
    case T_Q4_1: *dw = d; *cw = llk_f16(b + 2); return nibbles(b + 4);
    case T_Q5_0:
        memcpy(&qh, b + 2, 4);
        *dw = d; *cw = -16 * d;
        return _mm256_or_si256(nibbles(b + 6), _mm256_maskz_mov_epi8(qh, _mm256_set1_epi8(0x10)));
    case T_Q5_1:
        memcpy(&qh, b + 4, 4);
        *dw = d; *cw = llk_f16(b + 2);
        return _mm256_or_si256(nibbles(b + 8), _mm256_maskz_mov_epi8(qh, _mm256_set1_epi8(0x10)));
    case T_Q8_0:
        *dw = d; *cw = -128 * d;
        return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(b + 2)), _mm256_set1_epi8((char)0x80));
    case T_IQ4_NL: *dw = d; *cw = -128 * d; return iq4_values(b + 2);
    default: { /* IQ4_XS */
        uint16_t sh;
        memcpy(&sh, b + 2, 2);
        const int ls = (((b[4 + sub / 2] >> (4 * (sub & 1))) & 0xF) | (((sh >> (2 * sub)) & 3) << 4)) - 32;
        *dw = d * (float)ls;
        *cw = -128 * *dw;
        return iq4_values(b + 8 + 16 * sub);
    }
    }
}

INLINE void q32_rows(int type, int64_t K, const uint8_t *w, const void *act, size_t astride, float *out, const int R) {
    const int per = type == T_IQ4_XS ? 8 : 1;
    const int bb = type == T_Q4_0 || type == T_IQ4_NL ? 18 : type == T_Q4_1 ? 20 : type == T_Q5_0 ? 22
                 : type == T_Q5_1 ? 24 : type == T_Q8_0 ? 34 : 136;
    const int64_t nb = K / 32;
    if (R <= 2) {
        /* Decode: one block at a time in ymm registers. 256-bit VNNI issues on two ports where the
         * 512-bit form has one, so this beats the paired form below when the unpacking is not
         * shared by several rows (measured: 1.3-1.5x at M = 1). */
        __m256 acc[2];
        float cs[2];
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps(), cs[r] = 0;
        for (int64_t ib = 0; ib < nb; ib++) {
            float dw, cw;
            if (ib % per == 0) prefetch_ahead(w + (ib / per) * bb, bb);
            const __m256i u = unpack_32(type, w + (ib / per) * bb, (int)(ib % per), &dw, &cw);
            for (int r = 0; r < R; r++) {
                const char *row = (const char *)act + r * astride;
                const __m256i t = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, _mm256_loadu_si256((const __m256i *)(row + ib * 32)));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_set1_ps(dw * act32_d(row, K)[ib]), acc[r]);
                cs[r] += cw * act32_s(row, K)[ib];
            }
        }
        for (int r = 0; r < R; r++) {
            __m128 v = _mm_add_ps(_mm256_castps256_ps128(acc[r]), _mm256_extractf128_ps(acc[r], 1));
            v = _mm_add_ps(v, _mm_movehl_ps(v, v));
            v = _mm_add_ss(v, _mm_movehdup_ps(v));
            out[r] = _mm_cvtss_f32(v) + cs[r];
        }
        return;
    }
    /* Two blocks per zmm register: lanes 0-7 hold block ib's sums of 4 products, lanes 8-15 block
     * ib+1's; their scales dw*d are formed as a pair and spread to the lanes with one permute. */
    const __m512i halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512 acc[LLK_RT];
    __m128 accs[LLK_RT];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps(), accs[r] = _mm_setzero_ps();
    for (int64_t ib = 0; ib < nb; ib += 2) {
        float dw0, cw0, dw1 = 0, cw1 = 0;
        if (ib % per == 0) prefetch_ahead(w + (ib / per) * bb, bb);
        const __m256i u0 = unpack_32(type, w + (ib / per) * bb, (int)(ib % per), &dw0, &cw0);
        /* An odd last block pairs with zeros: its partner's activation bytes (the row's scale
         * array, or padding after the last row) meet zero weights and a zero scale. */
        const __m256i u1 = ib + 1 < nb ? unpack_32(type, w + ((ib + 1) / per) * bb, (int)((ib + 1) % per), &dw1, &cw1)
                                       : _mm256_setzero_si256();
        const __m512i u = _mm512_inserti64x4(_mm512_castsi256_si512(u0), u1, 1);
        const __m128 dwv = _mm_unpacklo_ps(_mm_set_ss(dw0), _mm_set_ss(dw1)), cwv = _mm_unpacklo_ps(_mm_set_ss(cw0), _mm_set_ss(cw1));
        for (int r = 0; r < R; r++) {
            const char *row = (const char *)act + r * astride;
            const __m512i t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, _mm512_loadu_si512((const void *)(row + ib * 32)));
            const float *d = act32_d(row, K) + ib, *sa = act32_s(row, K) + ib;
            /* (an odd last block loads one float only: what lies beyond need not be a number) */
            const __m128 dav = ib + 1 < nb ? _mm_castpd_ps(_mm_load_sd((const double *)d)) : _mm_load_ss(d);
            const __m128 sav = ib + 1 < nb ? _mm_castpd_ps(_mm_load_sd((const double *)sa)) : _mm_load_ss(sa);
            const __m512 dd = _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(_mm_mul_ps(dwv, dav)));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), dd, acc[r]);
            accs[r] = _mm_fmadd_ps(cwv, sav, accs[r]);
        }
    }
    for (int r = 0; r < R; r++) {
        const __m128 v = accs[r];
        out[r] = _mm512_reduce_add_ps(acc[r]) + (_mm_cvtss_f32(v) + _mm_cvtss_f32(_mm_shuffle_ps(v, v, 1)));
    }
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

KERNEL(k_q2_k, kquant_rows, T_Q2_K)
KERNEL(k_q3_k, kquant_rows, T_Q3_K)
KERNEL(k_q4_k, kquant_rows, T_Q4_K)
KERNEL(k_q5_k, kquant_rows, T_Q5_K)
KERNEL(k_q6_k, kquant_rows, T_Q6_K)
KERNEL(k_f16, half_rows, T_F16)
KERNEL(k_bf16, half_rows, T_BF16)
#ifdef __AVX512VNNI__
KERNEL(k_q4_0, q32_rows, T_Q4_0)
KERNEL(k_q4_1, q32_rows, T_Q4_1)
KERNEL(k_q5_0, q32_rows, T_Q5_0)
KERNEL(k_q5_1, q32_rows, T_Q5_1)
KERNEL(k_q8_0, q32_rows, T_Q8_0)
KERNEL(k_iq4_nl, q32_rows, T_IQ4_NL)
KERNEL(k_iq4_xs, q32_rows, T_IQ4_XS)
#endif

llk_kernel_t llk_simd_kernel(int type) {
    switch (type) {
    case T_Q2_K: return k_q2_k;
    case T_Q3_K: return k_q3_k;
    case T_Q4_K: return k_q4_k;
    case T_Q5_K: return k_q5_k;
    case T_Q6_K: return k_q6_k;
    case T_F16: return k_f16;
    case T_BF16: return k_bf16;
#ifdef __AVX512VNNI__
    case T_Q4_0: return k_q4_0;
    case T_Q4_1: return k_q4_1;
    case T_Q5_0: return k_q5_0;
    case T_Q5_1: return k_q5_1;
    case T_Q8_0: return k_q8_0;
    case T_IQ4_NL: return k_iq4_nl;
    case T_IQ4_XS: return k_iq4_xs;
#endif
    default: return 0;
    }
}

const char *llk_simd_name(void) {
#ifdef __AVX512VNNI__
    return "AVX512-VNNI";
#else
    return "AVX512BW";
#endif
}

#else /* no AVX-512: the portable kernels serve every type */

int llk_simd_dequant_bf16(int type, const uint8_t *w, int64_t K, uint16_t *out) {
    (void)type, (void)w, (void)K, (void)out;
    return 0;
}

llk_kernel_t llk_simd_kernel(int type) {
    (void)type;
    return 0;
}
const char *llk_simd_name(void) { return "scalar"; }

#endif
