#include "testutil.h"

#include <math.h>
#include <stdio.h>

#include <cuda_runtime_api.h>

int test_has_gpu(void) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count > 0;
}

long test_first_mismatch(const float *got, const float *want, size_t n, double rtol, double atol) {
  for (size_t i = 0; i < n; i++) {
    double g = got[i], w = want[i];
    if (isnan(w) && isnan(g)) continue;
    if (!(fabs(g - w) <= atol + rtol * fabs(w))) return (long)i;
  }
  return -1;
}

const char *test_data_path(const char *relative) {
  static char path[4096];
  snprintf(path, sizeof path, "%s/%s", CUOPTIM_TEST_DATA, relative);
  return path;
}
