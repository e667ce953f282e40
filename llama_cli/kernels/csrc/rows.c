/* rows.c: the per-row float32 operations of a layer around its matmuls, each in one call:
 * RMSNorm and SwiGLU's silu(gate) * up (llama_cli/quantized.py, KernelRMSNorm and KernelSwiGLU).
 * torch spends several calls on each (F.rms_norm alone is six on the CPU); here each is one pass.
 * Every row is computed alone, in one order: the same bits whatever the number of rows or threads.
 */
#include <math.h>

#include "llk.h"

/* out = x / sqrt(mean(x^2) + eps) * w, for M rows of K floats (rows `stride` floats apart in x). */
void llk_rmsnorm(const float *x, int64_t M, int64_t K, int64_t stride, const float *w, float eps, float *out,
                 int nthreads) {
    if (nthreads < 1) nthreads = 1;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && M * K >= 65536)
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * stride;
        float *o = out + m * K;
        const float r = 1.0f / sqrtf(llk_dot_f32(xr, xr, K) / (float)K + eps);
        for (int64_t j = 0; j < K; j++) o[j] = xr[j] * r * w[j];
    }
}

/* out = silu(gate) * up = gate / (1 + exp(-gate)) * up, for M rows of F floats; gate and up rows
 * lie `stride` floats apart (the halves of one fused w1/w3 output, or two tensors). */
void llk_swiglu(const float *gate, const float *up, int64_t M, int64_t F, int64_t stride, float *out, int nthreads) {
    if (nthreads < 1) nthreads = 1;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && M * F >= 65536)
    for (int64_t m = 0; m < M; m++) {
        const float *g = gate + m * stride, *u = up + m * stride;
        float *o = out + m * F;
        for (int64_t j = 0; j < F; j++) o[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
    }
}
