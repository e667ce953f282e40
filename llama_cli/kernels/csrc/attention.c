/* attention.c: a short pass's attention over the KV cache in one call: rotary embeddings on the
 * new queries and keys, the keys and values written into the cache, and each query's attention
 * over the keys up to its own position (llama_cli/quantized.py, KernelAttention).
 *
 * This is the decode step's attention (and prompt-lookup verification's, and the server's rows
 * at their own positions), where torch spends ~20 small calls per layer on a few kilobytes of data.
 * Each query is computed alone, in one order, by one thread: its result is the same bits whatever
 * the number of queries, rows or threads (a verified draft repeats plain decoding exactly).
 *
 * Layouts: the row of query (b, t) starts at q + b*q_bstride + t*q_tstride (floats), and k's and
 * v's rows likewise with kv_bstride/kv_tstride; each row holds heads of `head_dim` floats;
 * the cache is (cache_rows, n_kv_heads, S, head_dim), contiguous; y is (B, T, n_heads*head_dim).
 * Rotary embeddings use model.py's "rotate half" tables (cos, and sin with its first half negated):
 * x*cos + roll(x, head_dim/2)*sin, the same products and sums as model.apply_rope (no fused
 * multiply-adds: -ffp-contract=off), so keys written here equal the reference's.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "llk.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static void rope(const float *x, const float *cos, const float *sin, int hd, float *out) {
    const int half = hd / 2;
    for (int i = 0; i < hd; i++) {
        const float a = x[i] * cos[i], b = x[i < half ? i + half : i - half] * sin[i];
        out[i] = a + b;
    }
}

/* Returns 0, or -1 for bad sizes, -2 when scratch memory cannot be allocated.
 * Query (b, t) sits at position start + t of cache row b, or, given `rows` and `positions`
 * (either may be NULL), of cache row rows[b] at position positions[b] (then T = 1 and the
 * rotary tables have one row per b: the server's rows at positions of their own). */
int llk_attend(int64_t B, int64_t T, int n_heads, int n_kv_heads, int head_dim, const float *q, int64_t q_bstride,
               int64_t q_tstride, const float *k, const float *v, int64_t kv_bstride, int64_t kv_tstride, const float *cos, const float *sin, float *kc, float *vc,
               int64_t cache_rows, int64_t S, int64_t start, const int64_t *rows, const int64_t *positions,
               float *y, int nthreads) {
    if (B < 1 || T < 1 || n_kv_heads < 1 || n_heads % n_kv_heads || head_dim < 2 || head_dim % 2) return -1;
    if (positions && T != 1) return -1;
    const int table_per_row = positions != 0;
    int64_t longest = 0;
    for (int64_t b = 0; b < B; b++) {
        const int64_t r = rows ? rows[b] : b, p = positions ? positions[b] : start;
        if (r < 0 || r >= cache_rows || p < 0 || p + T > S) return -1;
        if (p + T > longest) longest = p + T;
    }
    const int hd = head_dim, group = n_heads / n_kv_heads;
    const float scale = 1.0f / sqrtf((float)hd);
    const int64_t work = B * T * n_heads * longest * hd;
    if (nthreads < 1) nthreads = 1;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && work >= 65536)
    {
        /* 1. the new keys (rotated) and values into the cache, before any query reads them */
#pragma omp for schedule(static)
        for (int64_t i = 0; i < B * T * n_kv_heads; i++) {
            const int64_t b = i / (T * n_kv_heads), t = i / n_kv_heads % T, h = i % n_kv_heads;
            const int64_t r = rows ? rows[b] : b, p = (positions ? positions[b] : start) + t, table = table_per_row ? b : t;
            const int64_t at = ((r * n_kv_heads + h) * S + p) * hd;
            const int64_t from = b * kv_bstride + t * kv_tstride + h * hd;
            rope(k + from, cos + table * hd, sin + table * hd, hd, kc + at);
            memcpy(vc + at, v + from, (size_t)hd * sizeof(float));
        }
        /* 2. each query head over keys 0..its position: softmax(q.k * scale) . v */
        float *scratch = malloc((size_t)(longest + 2 * hd) * sizeof(float));
        if (!scratch) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t i = 0; i < B * T * n_heads; i++) {
            if (!scratch) continue;
            const int64_t b = i / (T * n_heads), t = i / n_heads % T, h = i % n_heads;
            const int64_t r = rows ? rows[b] : b, n = (positions ? positions[b] : start) + t + 1, table = table_per_row ? b : t;
            const int64_t kv = (r * n_kv_heads + h / group) * S * hd;
            float *qr = scratch + longest, *acc = qr + hd, *scores = scratch;
            rope(q + b * q_bstride + t * q_tstride + h * hd, cos + table * hd, sin + table * hd, hd, qr);
            float top = -INFINITY;
            for (int64_t j = 0; j < n; j++) {
                scores[j] = llk_dot_f32(qr, kc + kv + j * hd, hd) * scale;
                if (scores[j] > top) top = scores[j];
            }
            float total = 0;
            for (int d = 0; d < hd; d++) acc[d] = 0;
            for (int64_t j = 0; j < n; j++) {
                const float e = expf(scores[j] - top);
                total += e;
                const float *vj = vc + kv + j * hd;
                for (int d = 0; d < hd; d++) acc[d] += e * vj[d];
            }
            float *out = y + (b * T + t) * (int64_t)n_heads * hd + h * hd;
            const float inv = 1.0f / total;
            for (int d = 0; d < hd; d++) out[d] = acc[d] * inv;
        }
        free(scratch);
    }
    return failed ? -2 : 0;
}
