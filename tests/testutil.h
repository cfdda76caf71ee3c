/* Shared helpers of the Criterion suites. */
#ifndef CUOPTIM_TESTUTIL_H
#define CUOPTIM_TESTUTIL_H

#include <stddef.h>

#include "cuoptim.h"

/* 1 when a CUDA device can be used; 0 when cudaGetDeviceCount reports no device or no driver
 * (GPU tests then call cr_skip). */
int test_has_gpu(void);

/* Index of the first element where |got - want| > atol + rtol * |want| (NaN never matches a
 * number; NaN matches NaN), or -1 when all match. */
long test_first_mismatch(const float *got, const float *want, size_t n, double rtol, double atol);

/* Path of a file under tests/data (static buffer, valid until the next call). The environment
 * variable CUOPTIM_TEST_DATA overrides the directory compiled in. */
const char *test_data_path(const char *relative);

/* Path of the cuoptim-replay binary; the environment variable CUOPTIM_REPLAY overrides it. */
const char *test_replay_path(void);

#endif
