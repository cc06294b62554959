# BLAS, declared in one place: scipy's bundled BLAS through its Cython bindings, so the package
# needs no BLAS of its own at build time. scipy's routines are column-major; row-major products
# use the transpose trick, as scikit-learn's _cython_blas does.
from scipy.linalg.cython_blas cimport sgemm


cdef inline void gemm_abt(int m, int n, int k, const float *a, int lda, const float *b,
                          int ldb, float beta, float *c, int ldc) noexcept nogil:
    """Row-major C[m, n] = A[m, k] @ B[n, k]^T + beta * C (B is a weight matrix stored
    row-major [out, in], as every weight here is)."""
    cdef char transa = b'T'
    cdef char transb = b'N'
    cdef float one = 1.0
    if m == 0 or n == 0:
        return
    sgemm(&transa, &transb, &n, &m, &k, &one, <float *>b, &ldb, <float *>a, &lda,
          &beta, c, &ldc)
