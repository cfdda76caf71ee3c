/*
 * cublas.cc — the emulated cuBLAS: the calls of cublas_v2.h that cuoptim makes (a handle, its
 * stream, workspace and math mode, and cublasSgemmStridedBatched), declared by the real header so
 * the code that calls them compiles unchanged. Linked instead of libcublas in the emulated build
 * only; a test harness, not a BLAS.
 *
 * Matrices are column-major with leading dimensions, as cuBLAS defines them:
 *   C[i + j ldc] = alpha op(A)(i, p) op(B)(p, j) summed over p + beta C[i + j ldc]
 * (beta == 0: C is not read). Each product op(A)(i, p) op(B)(p, j) is a float32 multiplication;
 * the sum over p runs in ascending p in double and is rounded to float32 once, then alpha and beta
 * apply in float32: the host backend's order (host/newton_schulz.c), so that results match it bit
 * for bit. A real GPU's cuBLAS sums in float32 in an order of its own.
 *
 * A call becomes one piece of host work on the handle's stream (emu/host_work.h): it runs in
 * order with the kernels and is recorded by a stream capture. As in cuBLAS, cublasSetStream
 * drops a workspace set before (cublasSetWorkspace must follow it), and a call on a capturing
 * stream without a workspace of the caller's fails here (a real cuBLAS may then allocate, which a
 * capture forbids).
 */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <new>

#include "cublas_emu.h"
#include "host_work.h"

struct cublasContext {
  cudaStream_t stream = nullptr;
  void *workspace = nullptr;
  size_t workspace_bytes = 0;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
};

static long gemm_calls = 0;

extern "C" long cuoptim_emu_cublas_calls(void) { return gemm_calls; }

extern "C" cublasStatus_t cublasCreate_v2(cublasHandle_t *handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new (std::nothrow) cublasContext;
  return *handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

extern "C" cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  handle->workspace = nullptr; /* cuBLAS: back to its own workspace pool */
  handle->workspace_bytes = 0;
  return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void *workspace, size_t bytes) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (bytes > 0 && !workspace) return CUBLAS_STATUS_INVALID_VALUE;
  handle->workspace = workspace;
  handle->workspace_bytes = bytes;
  return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

extern "C" const char *cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    default: return "unknown error";
  }
}

/* Element (i, p) of op(M) for a column-major M with leading dimension ld. */
static inline float element(const float *m, cublasOperation_t op, int ld, long long i, long long p) {
  return op == CUBLAS_OP_N ? m[i + p * (long long)ld] : m[p + i * (long long)ld];
}

extern "C" cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa,
                                                    cublasOperation_t transb, int m, int n, int k,
                                                    const float *alpha, const float *A, int lda,
                                                    long long int strideA, const float *B, int ldb,
                                                    long long int strideB, const float *beta, float *C, int ldc,
                                                    long long int strideC, int batchCount) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  bool ops_known = (transa == CUBLAS_OP_N || transa == CUBLAS_OP_T) && (transb == CUBLAS_OP_N || transb == CUBLAS_OP_T);
  int a_rows = transa == CUBLAS_OP_N ? m : k, b_rows = transb == CUBLAS_OP_N ? k : n;
  if (!ops_known || m < 0 || n < 0 || k < 0 || batchCount < 0 || !alpha || !beta || lda < (a_rows > 1 ? a_rows : 1) ||
      ldb < (b_rows > 1 ? b_rows : 1) || ldc < (m > 1 ? m : 1))
    return CUBLAS_STATUS_INVALID_VALUE;
  enum cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(handle->stream, &capture) != cudaSuccess) return CUBLAS_STATUS_EXECUTION_FAILED;
  if (capture != cudaStreamCaptureStatusNone && !handle->workspace) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (m == 0 || n == 0 || batchCount == 0) return CUBLAS_STATUS_SUCCESS;
  const float a = *alpha, b = *beta; /* host pointer mode: read at the call */
  cudaError_t err = cuoptim_emu_enqueue_host_work(handle->stream, [=] {
    gemm_calls++;
    for (int batch = 0; batch < batchCount; batch++) {
      const float *a_mat = A + batch * strideA, *b_mat = B + batch * strideB;
      float *c_mat = C + batch * strideC;
      for (long long j = 0; j < n; j++)
        for (long long i = 0; i < m; i++) {
          double sum = 0.0;
          for (long long p = 0; p < k; p++)
            sum += (double)(element(a_mat, transa, lda, i, p) * element(b_mat, transb, ldb, p, j));
          float *out = &c_mat[i + j * (long long)ldc];
          *out = b == 0.0f ? a * (float)sum : a * (float)sum + b * *out;
        }
    }
  });
  if (err != cudaSuccess) return CUBLAS_STATUS_EXECUTION_FAILED;
  return CUBLAS_STATUS_SUCCESS;
}
