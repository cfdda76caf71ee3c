/* Shared helpers of the Criterion suites. The macros and the helpers that check a status assert
 * with Criterion: include <criterion/criterion.h> before using them. */
#ifndef CUOPTIM_TESTUTIL_H
#define CUOPTIM_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "cuoptim.h"

/* `call` (a cuoptim call) must return CUOPTIM_STATUS_SUCCESS. */
#define OK(call)                                                                                        \
  do {                                                                                                  \
    cuoptimStatus_t ok_status_ = (call);                                                                \
    cr_assert_eq(ok_status_, CUOPTIM_STATUS_SUCCESS, "%s returned %d (%s): %s", #call, (int)ok_status_, \
                 cuoptimGetStatusString(ok_status_), cuoptimGetLastErrorMessage());                     \
  } while (0)

/* `call` (a CUDA runtime call) must return cudaSuccess. */
#define CUDA_OK(call)                                                                               \
  do {                                                                                              \
    cudaError_t cuda_ok_err_ = (call);                                                              \
    cr_assert_eq(cuda_ok_err_, cudaSuccess, "%s: %s (%s)", #call, cudaGetErrorString(cuda_ok_err_), \
                 cudaGetErrorName(cuda_ok_err_));                                                   \
  } while (0)

/* The CUDA devices that can be used: 0 when cudaGetDeviceCount reports no device or no driver,
 * and in a host-only build (CUOPTIM_WITH_CUDA=OFF). */
int test_device_count(void);

/* 1 when a CUDA device can be used (test_device_count() > 0); GPU tests otherwise call cr_skip. */
int test_has_gpu(void);

/* "CUDA" or "host", for messages. */
const char *test_backend_name(cuoptimBackend_t backend);

/* Skips the running test when `backend` is CUDA and no device can be used. */
void test_require_backend(cuoptimBackend_t backend);

/* Memory of a backend (host heap, zeroed, or cudaMalloc) and copies between it and the host;
 * every CUDA error fails the test. test_mem_free accepts NULL. */
void *test_mem_alloc(cuoptimBackend_t backend, size_t bytes);
void test_mem_upload(cuoptimBackend_t backend, void *dst, const void *src, size_t bytes);
void test_mem_download(cuoptimBackend_t backend, void *dst, const void *src, size_t bytes);
void test_mem_free(cuoptimBackend_t backend, void *p);
/* A backend buffer holding a copy of `count` floats. */
float *test_mem_from(cuoptimBackend_t backend, const float *values, size_t count);

/* An optimizer (test_rig_init: cuoptimCreate on `backend`) with float32 variables in backend
 * memory and one gradient buffer per variable, for suites that run on either backend. */
#define TEST_RIG_MAX_VARS 8
typedef struct {
  cuoptimBackend_t backend;
  cuoptimOptimizer_t opt;
  int num_vars;
  size_t count[TEST_RIG_MAX_VARS];
  float *param[TEST_RIG_MAX_VARS];
  float *grad[TEST_RIG_MAX_VARS];
  int owns_param[TEST_RIG_MAX_VARS];
} test_rig_t;

void test_rig_init(test_rig_t *r, const cuoptimConfig_t *config, cuoptimBackend_t backend);
/* Adds a variable whose buffer the rig allocates, fills with `init` (host) and frees; returns its
 * index, which must be the number of variables added before. */
int test_rig_add(test_rig_t *r, const char *name, const float *init, size_t count);
/* The same for a caller's buffer `param` (backend memory), which the rig does not free. */
int test_rig_add_external(test_rig_t *r, const char *name, float *param, size_t count);
/* cuoptimDestroy, then frees the rig's buffers. */
void test_rig_destroy(test_rig_t *r);
/* Uploads grads[k] (host values, NULL = no gradient) for each variable k and calls
 * cuoptimApplyGradients. test_rig_try_apply lists only the variables that have a gradient;
 * test_rig_try_apply_all lists every variable, one without a gradient with grad = NULL (Keras's
 * None). */
cuoptimStatus_t test_rig_try_apply(test_rig_t *r, const float *const *grads);
cuoptimStatus_t test_rig_try_apply_all(test_rig_t *r, const float *const *grads);
/* cuoptimSynchronize, then variable k's values into `out` (host). */
void test_rig_get(test_rig_t *r, int k, float *out);

/* cuoptimConfigInit(kind), checked; test_config_lr also sets a constant learning rate. */
cuoptimConfig_t test_config(cuoptimOptimizerKind_t kind);
cuoptimConfig_t test_config_lr(cuoptimOptimizerKind_t kind, double learning_rate);

/* cuoptimGetIterations, checked. */
int64_t test_iterations(cuoptimOptimizer_t opt);

/* Index of the optimizer state entry named `name`, or -1. */
int test_weight_index(cuoptimOptimizer_t opt, const char *name);

/* Index of the first element where |got - want| > atol + rtol * |want| (NaN never matches a
 * number; NaN matches NaN), or -1 when all match. */
long test_first_mismatch(const float *got, const float *want, size_t n, double rtol, double atol);

/* Deterministic pseudo-random data: element i of the sequence `stream` under `seed`, magnitude
 * 5e-4 .. 6 in five decades, random sign, never 0, never inf or NaN. */
uint64_t test_mix64(uint64_t x);
float test_pseudo_random(uint64_t seed, uint64_t stream, uint64_t i);

/* The bits of a float32 and the float32 of given bits. */
uint32_t test_float_bits(float f);
float test_bits_float(uint32_t u);

/* float32 <-> float16 / bfloat16 bit patterns, rounding to nearest even (what __float2half_rn and
 * __float2bfloat16_rn do), NaN and overflow included. */
uint16_t test_to_half(float f);
float test_from_half(uint16_t h);
uint16_t test_to_bfloat16(float f);
float test_from_bfloat16(uint16_t h);

/* Bytes of one element of `dtype`, and element i of an array of `dtype` set to `value`. */
size_t test_dtype_bytes(cuoptimDtype_t dtype);
void test_store_element(void *base, cuoptimDtype_t dtype, size_t i, float value);

/* Path of a file under tests/data (static buffer, valid until the next call). The environment
 * variable CUOPTIM_TEST_DATA overrides the directory compiled in. */
const char *test_data_path(const char *relative);

/* Path of the cuoptim-replay binary; the environment variable CUOPTIM_REPLAY overrides it. */
const char *test_replay_path(void);

#endif
