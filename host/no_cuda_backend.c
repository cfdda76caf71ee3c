/* The CUDA backend of a host-only build (CUOPTIM_WITH_CUDA=OFF), compiled in place of
 * host/backend_cuda.c: there is none, and cuoptimCreate answers CUOPTIM_BACKEND_CUDA with
 * CUOPTIM_STATUS_NOT_SUPPORTED. */
#include "internal.h"

const cuoptimBackendOps *const cuoptim_cuda_backend = NULL;
