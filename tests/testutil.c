#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

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

/* The environment variable wins over the path compiled in, so a build carried to another
 * machine (scripts/gpu-check.sh) finds the data in that machine's checkout. */
static const char *env_or(const char *name, const char *fallback) {
  const char *value = getenv(name);
  return value && *value ? value : fallback;
}

const char *test_data_path(const char *relative) {
  static char path[4096];
  snprintf(path, sizeof path, "%s/%s", env_or("CUOPTIM_TEST_DATA", CUOPTIM_TEST_DATA), relative);
  return path;
}

const char *test_replay_path(void) { return env_or("CUOPTIM_REPLAY", CUOPTIM_REPLAY_PATH); }
