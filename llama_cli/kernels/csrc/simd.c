/* simd.c: AVX-512 kernels (placeholder until written). */
#include "llk.h"

llk_kernel_t llk_simd_kernel(int type) { (void)type; return 0; }
const char *llk_simd_name(void) { return "scalar"; }
