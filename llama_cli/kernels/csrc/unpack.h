/* unpack.h: AVX-512 unpacking of GGUF blocks into registers, shared by the int8 kernels
 * (simd.c) and the bfloat16 tiles (tiles.c). Included only where AVX-512 F/BW/VL is enabled;
 * see simd.c for the layouts. */
#ifndef LLK_UNPACK_H
#define LLK_UNPACK_H

#include "llk.h"

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

/* In every byte of x, the n bits from bit `lo` (lower 256 bits) or from bit `hi` (upper 256 bits),
 * moved to bit p; other bits zero. With GFNI one affine transform over GF(2) does it (result bit
 * i of a byte is the parity of the byte ANDed with row byte 7-i of the lane's 8x8 bit matrix):
 * one instruction where shifts, masks and a shift back took two to four. */
#ifdef __GFNI__
INLINE uint64_t bit_field_matrix(int from, int n, int p) {
    uint64_t m = 0;
    for (int k = 0; k < n; k++) m |= (uint64_t)(1u << (from + k)) << (8 * (7 - (p + k)));
    return m;
}
#endif
INLINE __m512i field2(__m512i x, int lo, int hi, int n, int p) {
#ifdef __GFNI__
    const long long ml = (long long)bit_field_matrix(lo, n, p), mh = (long long)bit_field_matrix(hi, n, p);
    return _mm512_gf2p8affine_epi64_epi8(x, _mm512_set_epi64(mh, mh, mh, mh, ml, ml, ml, ml), 0);
#else
    x = _mm512_and_si512(shr2(x, lo, hi), _mm512_set1_epi8((char)((1 << n) - 1)));
    return p ? _mm512_slli_epi16(x, (unsigned)p) : x;
#endif
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
        for (int j = 0; j < 4; j++) k.u[j] = field2(bcast32(qs + 32 * j), 0, 4, 4, 0);
        if (type == T_Q5_K) { /* fifth bit of element 32s + i: bit s of qh[i] */
            const __m512i qh = bcast32(b + 16);
            for (int j = 0; j < 4; j++) k.u[j] = _mm512_or_si512(k.u[j], field2(qh, 2 * j, 2 * j + 1, 1, 4));
        }
    } else if (type == T_Q6_K) {
        k.d = llk_f16(b + 208);
        const __m128i scb = _mm_loadu_si128((const __m128i *)(b + 192));
        k.sc16 = _mm256_cvtepi8_epi16(scb);
        k.mins = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(scb)), _mm512_set1_ps(32 * k.d));
        for (int c = 0; c < 4; c++) { /* chunk c: half h = c/2, nibble s = c%2 of ql[64h..] */
            const int h = c >> 1, s = c & 1;
            const __m512i x = _mm512_loadu_si512((const void *)(b + 64 * h));
            const __m512i lo = field2(x, 4 * s, 4 * s, 4, 0);
            k.u[c] = _mm512_or_si512(lo, field2(bcast32(b + 128 + 32 * h), 4 * s, 4 * s + 2, 2, 4));
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
            k.u[c] = field2(bcast32(qs + 32 * h), 4 * s, 4 * s + 2, 2, 0);
            if (type == T_Q3_K) { /* high bit of element 32k' + i is bit k' of hmask[i]; chunk c: k' = 2c, 2c+1 */
                k.u[c] = _mm512_or_si512(k.u[c], field2(bcast32(b), 2 * c, 2 * c + 1, 1, 2));
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

#endif /* __AVX512VNNI__ */

#endif
