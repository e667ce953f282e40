/* linear.c: the exported entry points: y = x @ W.T over GGUF-quantized W, and dequantization.
 *
 * Work split, as llama.cpp's ggml_compute_forward_mul_mat does it: the activations are quantized
 * once per call (int8 rows: 32-element blocks or act256_t blocks), then the threads share out chunks of
 * weight rows. Inside a chunk the loop runs over tiles of up to LLK_RT activation rows, and for
 * each tile over the chunk's weight rows: a kernel unpacks a weight block once and dots it with
 * every row of the tile (register tiling), while the chunk (~64 KB of weights) stays in L2 for
 * the next tile (cache tiling). For M = 1 this is a plain matrix-vector product. Threads split
 * the rows of W, never a dot product, and the kernels are batch-invariant (llk.h), so out[m][n]
 * is the same bits whatever M, the tiling or the thread count.
 *
 * Threads come from OpenMP; once torch is imported its libgomp is the process's OpenMP runtime,
 * so these threads are torch's threads. The Python side passes the count.
 */
#include <math.h>
#include <stdlib.h>

#include "llk.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static size_t act_row_bytes(int fmt, int64_t K) {
    if (fmt == ACT_32) return act32_row_bytes(K);
    if (fmt == ACT_256) return (size_t)(K / 256) * sizeof(act256_t);
    return (size_t)K * sizeof(float);
}

static void quantize_row_32(const float *x, int64_t K, void *row) {
    int8_t *q = row;
    float *ds = (float *)act32_d(row, K), *ss = (float *)act32_s(row, K);
    for (int64_t ib = 0; ib < K / 32; ib++, x += 32, q += 32) {
        float amax = 0;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[i]));
        const float d = amax / 127, id = d ? 1 / d : 0;
        int sum = 0;
        for (int i = 0; i < 32; i++) {
            const int v = (int)nearbyintf(x[i] * id);
            q[i] = (int8_t)v;
            sum += v;
        }
        ds[ib] = d;
        ss[ib] = d * (float)sum;
    }
}

static void quantize_row_256(const float *x, int64_t K, act256_t *a) {
    for (int64_t ib = 0; ib < K / 256; ib++, x += 256) {
        float amax = 0;
        for (int i = 0; i < 256; i++) amax = fmaxf(amax, fabsf(x[i]));
        const float d = amax / 127, id = d ? 1 / d : 0;
        for (int i = 0; i < 256; i++) a[ib].qs[i] = (int8_t)(int)nearbyintf(x[i] * id);
        for (int k = 0; k < 16; k++) {
            int sum = 0;
            for (int i = 0; i < 16; i++) sum += a[ib].qs[16 * k + i];
            a[ib].bsf[k] = d * (float)sum;
        }
        a[ib].d = d;
        memset(a[ib].pad, 0, sizeof a[ib].pad);
    }
}

/* Decode: rows of W each thread streams at once, from as many sub-ranges of its rows (more
 * memory streams in flight for the prefetchers). 1B Q4_K, M = 1, 2 threads: one stream 37-43 ms
 * per token of matmuls, two 32-36, four 32-38. */
#ifndef LLK_STREAMS
#define LLK_STREAMS 2
#endif

static int clamp_threads(int n) { return n < 1 ? 1 : n; }

/* Returns 0 on success, -1 for an unknown type or a K that is not a whole number of blocks,
 * -2 when memory for the activations cannot be allocated. `kern` is the type's SIMD kernel, from
 * its own library (simd.c, built per type: see _build.py), or NULL for the portable one. */
int llk_linear(int type, const float *x, int64_t M, int64_t K, const uint8_t *w, int64_t N,
               int64_t row_bytes, float *out, int nthreads, llk_kernel_t kern) {
    const int qk = llk_block_size(type), fmt = llk_act_format(type);
    if (!qk || K % (fmt == ACT_256 ? 256 : fmt == ACT_32 ? 32 : 1)) return -1;
    if (row_bytes != K / qk * llk_block_bytes(type)) return -1;
    if (!kern) kern = llk_scalar_kernel(type);
    nthreads = clamp_threads(nthreads);
    if (N * row_bytes * M < 64 * 1024) nthreads = 1; /* waking a thread costs more than it saves */

    const size_t astride = act_row_bytes(fmt, K);
    void *act = (void *)x;
    if (fmt != ACT_F32) {
        /* + 64: slack after the last row (no kernel reads there now; an older one did) */
        act = aligned_alloc(64, ((astride * M) + 64 + 63) / 64 * 64);
        if (!act) return -2;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (M * K >= 65536)
        for (int64_t m = 0; m < M; m++) {
            if (fmt == ACT_32)
                quantize_row_32(x + m * K, K, (char *)act + m * astride);
            else
                quantize_row_256(x + m * K, K, (act256_t *)((char *)act + m * astride));
        }
    }

    /* Few activation rows (decode): the product streams W from memory, so each thread takes one
     * contiguous range of rows, walked as LLK_STREAMS interleaved sequential streams. More rows: chunks
     * of ~64 KB of W handed out dynamically (balance on a busy host), each reused from L2 by every
     * tile of activation rows. */
    const int streaming = M <= LLK_RT;
    int64_t chunk = streaming ? (N + nthreads - 1) / nthreads : (64 * 1024) / (row_bytes > 0 ? row_bytes : 1);
    const int64_t fair = (N + 4 * nthreads - 1) / (4 * nthreads);
    if (!streaming && chunk > fair) chunk = fair;
    if (chunk < 1) chunk = 1;
    const int64_t nchunks = (N + chunk - 1) / chunk;

#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) if (nthreads > 1 && nchunks > 1)
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t n0 = c * chunk, n1 = n0 + chunk < N ? n0 + chunk : N;
        float tmp[LLK_RT];
        if (streaming && LLK_STREAMS > 1) { /* interleave rows of LLK_STREAMS sub-ranges: more streams in flight */
            const int64_t part = (n1 - n0 + LLK_STREAMS - 1) / LLK_STREAMS;
            for (int64_t i = 0; i < part; i++)
                for (int s = 0; s < LLK_STREAMS; s++) {
                    const int64_t n = n0 + s * part + i;
                    if (n >= n1) continue;
                    kern(K, w + n * row_bytes, act, astride, (int)M, tmp);
                    for (int r = 0; r < M; r++) out[r * N + n] = tmp[r];
                }
            continue;
        }
        for (int64_t m0 = 0; m0 < M; m0 += LLK_RT) {
            const int R = M - m0 < LLK_RT ? (int)(M - m0) : LLK_RT;
            const void *a = (const char *)act + m0 * astride;
            for (int64_t n = n0; n < n1; n++) {
                kern(K, w + n * row_bytes, a, astride, R, tmp);
                for (int r = 0; r < R; r++) out[(m0 + r) * N + n] = tmp[r];
            }
        }
    }
    if (act != (void *)x) free(act);
    return 0;
}

/* Rows `rows[i]` (all rows 0..n_rows-1 when rows is NULL) of W as float32, (n_rows, K). */
int llk_dequant(int type, const uint8_t *w, int64_t row_bytes, int64_t K, const int64_t *rows,
                int64_t n_rows, float *out, int nthreads) {
    const int qk = llk_block_size(type);
    if (!qk || K % qk || row_bytes != K / qk * llk_block_bytes(type)) return -1;
    nthreads = clamp_threads(nthreads);
#pragma omp parallel for num_threads(nthreads) schedule(static) if (n_rows * K >= 65536)
    for (int64_t i = 0; i < n_rows; i++) {
        const int64_t r = rows ? rows[i] : i;
        llk_dequant_row(type, w + r * row_bytes, K, out + i * K);
    }
    return 0;
}

/* Rows n0..n1-1 of W as bfloat16, (n1 - n0, K): the weight tiles of the prefill path, which
 * multiplies them with torch's bfloat16 matmul (oneDNN: AMX or AVX512-BF16 where present). */
int llk_dequant_bf16(int type, const uint8_t *w, int64_t row_bytes, int64_t K, int64_t n0, int64_t n1,
                     uint16_t *out, int nthreads) {
    const int qk = llk_block_size(type);
    if (!qk || K % qk || row_bytes != K / qk * llk_block_bytes(type)) return -1;
    nthreads = clamp_threads(nthreads);
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if ((n1 - n0) * K >= 65536)
    {
        float *tmp = 0;
#pragma omp for schedule(static)
        for (int64_t n = n0; n < n1; n++) {
            uint16_t *y = out + (n - n0) * K;
            const uint8_t *row = w + n * row_bytes;
            if (type == T_BF16) {
                memcpy(y, row, (size_t)K * 2);
            } else if (!llk_simd_dequant_bf16(type, row, K, y)) {
                if (!tmp && !(tmp = malloc((size_t)K * sizeof(float)))) {
                    failed = 1;
                    continue;
                }
                llk_dequant_row(type, row, K, tmp);
                for (int64_t i = 0; i < K; i++) { /* round to nearest even */
                    uint32_t b;
                    memcpy(&b, tmp + i, 4);
                    y[i] = (uint16_t)((b + 0x7FFF + ((b >> 16) & 1)) >> 16);
                }
            }
        }
        free(tmp);
    }
    return failed ? -2 : 0;
}

/* The instruction set simd.c compiles to with these flags (the same ones), or "scalar". */
const char *llk_isa(void) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#ifdef __AVX512VNNI__
    return "AVX512-VNNI";
#else
    return "AVX512BW";
#endif
#else
    return "scalar";
#endif
}
