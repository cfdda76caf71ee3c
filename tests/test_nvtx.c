/*
 * test_nvtx.c — the NVTX ranges a profiler (Nsight Systems) sees: a step is one "cuoptim step"
 * range in the "cuoptim" domain, with one nested range per stage, in order, balanced.
 *
 * The test is its own NVTX tool: it defines InitializeInjectionNvtx2_fnptr (NVTX's static
 * injection, used when NVTX_INJECTION64_PATH is unset), and records the domain creations, pushes
 * and pops that cuoptim makes, and the CUDA streams it names. Runs on the host backend and, where
 * a GPU (or the emulated device) is present, on the CUDA backend: the same ranges but "finish"
 * (the CUDA prologue advances the state). With a communicator (NCCL on the CUDA backend) the
 * step's first stage is "aggregate".
 */
#include <criterion/criterion.h>
#include <nvtx3/nvToolsExt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuoptim.h"
#include "testutil.h"

#define MAX_EVENTS 64

static struct {
  int domains;                 /* domains created */
  char domain_name[64];        /* of the last one */
  nvtxDomainHandle_t handle;   /* what we gave back for it */
  int count;                   /* events recorded */
  char events[MAX_EVENTS][64]; /* "push NAME" or "pop" */
  int depth, max_depth, underflow, foreign_domain;
  char stream_name[64];        /* the last CUDA stream named */
} seen;

static int domain_token; /* its address is the handle */

static nvtxDomainHandle_t NVTX_API record_domain_create(const char *name) {
  seen.domains++;
  snprintf(seen.domain_name, sizeof seen.domain_name, "%s", name ? name : "(null)");
  seen.handle = (nvtxDomainHandle_t)&domain_token;
  return seen.handle;
}

static void record(const char *event) {
  if (seen.count < MAX_EVENTS) snprintf(seen.events[seen.count], sizeof seen.events[0], "%s", event);
  seen.count++;
}

static int NVTX_API record_push(nvtxDomainHandle_t domain, const nvtxEventAttributes_t *attributes) {
  if (domain != seen.handle) seen.foreign_domain++;
  char event[64];
  const char *message = attributes && attributes->messageType == NVTX_MESSAGE_TYPE_ASCII ? attributes->message.ascii
                                                                                          : "(not ascii)";
  snprintf(event, sizeof event, "push %s", message);
  record(event);
  if (++seen.depth > seen.max_depth) seen.max_depth = seen.depth;
  return seen.depth - 1;
}

static int NVTX_API record_pop(nvtxDomainHandle_t domain) {
  if (domain != seen.handle) seen.foreign_domain++;
  record("pop");
  if (--seen.depth < 0) seen.underflow++;
  return seen.depth;
}

static void NVTX_API record_stream_name(void *stream, const char *name) {
  snprintf(seen.stream_name, sizeof seen.stream_name, "%s", name ? name : "(null)");
}

static int NVTX_API attach(NvtxGetExportTableFunc_t get_export_table) {
  const NvtxExportTableCallbacks *callbacks = (const NvtxExportTableCallbacks *)get_export_table(NVTX_ETID_CALLBACKS);
  if (!callbacks) return 0;
  NvtxFunctionTable table = NULL;
  unsigned int size = 0;
  if (!callbacks->GetModuleFunctionTable(NVTX_CB_MODULE_CORE2, &table, &size) || size <= NVTX_CBID_CORE2_DomainCreateA)
    return 0;
  *table[NVTX_CBID_CORE2_DomainCreateA] = (NvtxFunctionPointer)record_domain_create;
  *table[NVTX_CBID_CORE2_DomainRangePushEx] = (NvtxFunctionPointer)record_push;
  *table[NVTX_CBID_CORE2_DomainRangePop] = (NvtxFunctionPointer)record_pop;
  if (callbacks->GetModuleFunctionTable(NVTX_CB_MODULE_CUDART, &table, &size) && size > NVTX_CBID_CUDART_NameCudaStreamA)
    *table[NVTX_CBID_CUDART_NameCudaStreamA] = (NvtxFunctionPointer)record_stream_name;
  return 1;
}

/* NVTX's static injection point (a weak symbol in the NVTX headers; this definition wins). */
NvtxInitializeInjectionNvtxFunc_t InitializeInjectionNvtx2_fnptr = attach;

/* A profiler's injection library named in the environment (nsys sets one) would take precedence
 * over the static one: the tests run without it. NVTX reads it at its first call, after this. */
static void without_profiler(void) {
  unsetenv("NVTX_INJECTION64_PATH");
  unsetenv("NVTX_INJECTION32_PATH");
}

TestSuite(nvtx, .init = without_profiler);

static void expect_events(const char *const *want, int n, const char *label) {
  cr_expect_eq(seen.count, n, "%s: %d NVTX events, want %d", label, seen.count, n);
  for (int i = 0; i < n && i < seen.count && i < MAX_EVENTS; i++)
    cr_expect_str_eq(seen.events[i], want[i], "%s: event %d", label, i);
  cr_expect_eq(seen.depth, 0, "%s: ranges left open", label);
  cr_expect_eq(seen.underflow, 0, "%s: more pops than pushes", label);
  cr_expect_eq(seen.foreign_domain, 0, "%s: a range outside the cuoptim domain", label);
}

/* Two steps of `kind` with global_clipnorm (so the inspect stage runs) on one variable. */
static void two_steps(cuoptimBackend_t backend, cuoptimOptimizerKind_t kind) {
  test_require_backend(backend);
  cuoptimConfig_t c = test_config(kind);
  c.global_clipnorm = 1.0;
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, backend, 0));
  float values[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  void *w = test_mem_alloc(backend, sizeof values), *g = test_mem_alloc(backend, sizeof values);
  test_mem_upload(backend, w, values, sizeof values);
  test_mem_upload(backend, g, values, sizeof values);
  cuoptimVariable_t v;
  OK(cuoptimAddVariable(opt, "dense/kernel", w, CUOPTIM_FLOAT32, 8, &v));
  cuoptimGradient_t grad = {v, g, CUOPTIM_FLOAT32};
  memset(&seen, 0, sizeof seen);
  OK(cuoptimApplyGradients(opt, 1, &grad, NULL));
  OK(cuoptimApplyGradients(opt, 1, &grad, NULL));
  OK(cuoptimSynchronize(opt));
  OK(cuoptimDestroy(opt));
  test_mem_free(backend, w);
  test_mem_free(backend, g);
}

/* The host backend advances the state in a finish stage; the CUDA backend's prologue kernel does
 * it (no launch, no range of its own). Adafactor's three kernels are its update stage. */
static void check_ranges(cuoptimBackend_t backend, cuoptimOptimizerKind_t kind) {
  two_steps(backend, kind);
  const char *label = test_backend_name(backend);
  cr_expect_eq(seen.domains, 1, "%s: domains created: %d", label, seen.domains);
  cr_expect_str_eq(seen.domain_name, "cuoptim", "%s: domain name", label);
  static const char *const host_step[] = {"push cuoptim step", "push inspect", "pop", "push prologue", "pop",
                                          "push update",       "pop",          "push finish", "pop", "pop"};
  static const char *const cuda_step[] = {"push cuoptim step", "push inspect", "pop", "push prologue",
                                          "pop",               "push update",  "pop", "pop"};
  const int cuda = backend == CUOPTIM_BACKEND_CUDA, n = cuda ? 8 : 10;
  const char *want[20];
  for (int i = 0; i < 2 * n; i++) want[i] = cuda ? cuda_step[i % n] : host_step[i % n];
  expect_events(want, 2 * n, label);
  cr_expect_eq(seen.max_depth, 2, "%s: nesting depth %d, want 2", label, seen.max_depth);
}

Test(nvtx, a_step_is_one_range_with_a_range_per_stage_host) { check_ranges(CUOPTIM_BACKEND_HOST, CUOPTIM_ADAM); }

Test(nvtx, a_step_is_one_range_with_a_range_per_stage_cuda) { check_ranges(CUOPTIM_BACKEND_CUDA, CUOPTIM_ADAM); }

Test(nvtx, an_adafactor_step_has_the_same_ranges_cuda) { check_ranges(CUOPTIM_BACKEND_CUDA, CUOPTIM_ADAFACTOR); }

/* A call refused for bad input opens no range, and the ranges stay balanced after it. */
Test(nvtx, a_refused_step_opens_no_range) {
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_HOST, 0));
  float w[4] = {0}, g[4] = {1, 1, 1, 1};
  cuoptimVariable_t v;
  OK(cuoptimAddVariable(opt, "w", w, CUOPTIM_FLOAT32, 4, &v));
  cuoptimGradient_t grad = {v, g, CUOPTIM_FLOAT32};
  memset(&seen, 0, sizeof seen);
  cuoptimGradient_t bad = {v + 1, g, CUOPTIM_FLOAT32}; /* no such variable: refused before any range */
  cr_expect_neq(cuoptimApplyGradients(opt, 1, &bad, NULL), CUOPTIM_STATUS_SUCCESS);
  cr_expect_eq(seen.count, 0, "a refused call opened %d ranges", seen.count);
  OK(cuoptimApplyGradients(opt, 1, &grad, NULL));
  cr_expect_eq(seen.depth, 0);
  cr_expect_eq(seen.underflow, 0);
  OK(cuoptimDestroy(opt));
}

#ifdef CUOPTIM_TEST_HAVE_NCCL
#include <nccl.h>

/* A communicator of one rank: the step still opens its aggregate range first (the first step
 * compares the ranks' variable tables), and the stream of that exchange has a name. */
Test(nvtx, a_step_with_a_communicator_opens_an_aggregate_range_first_cuda) {
  test_require_backend(CUOPTIM_BACKEND_CUDA);
  ncclComm_t comm = NULL;
  int devices[1] = {0};
  cr_assert_eq(ncclCommInitAll(&comm, 1, devices), ncclSuccess);
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.global_clipnorm = 1.0;
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_CUDA, 0));
  float values[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  void *w = test_mem_alloc(CUOPTIM_BACKEND_CUDA, sizeof values), *g = test_mem_alloc(CUOPTIM_BACKEND_CUDA, sizeof values);
  test_mem_upload(CUOPTIM_BACKEND_CUDA, w, values, sizeof values);
  test_mem_upload(CUOPTIM_BACKEND_CUDA, g, values, sizeof values);
  cuoptimVariable_t v;
  OK(cuoptimAddVariable(opt, "dense/kernel", w, CUOPTIM_FLOAT32, 8, &v));
  memset(&seen, 0, sizeof seen);
  cuoptimCommOptions_t options;
  OK(cuoptimCommOptionsInit(&options));
  OK(cuoptimSetCommunicator(opt, &comm, &options));
  cr_expect_str_eq(seen.stream_name, "cuoptim NCCL table exchange", "the exchange stream's name");
  cuoptimGradient_t grad = {v, g, CUOPTIM_FLOAT32};
  OK(cuoptimApplyGradients(opt, 1, &grad, NULL));
  OK(cuoptimApplyGradients(opt, 1, &grad, NULL));
  OK(cuoptimSynchronize(opt));
  static const char *const one_step[] = {"push cuoptim step", "push aggregate", "pop", "push inspect", "pop",
                                         "push prologue",     "pop",            "push update", "pop", "pop"};
  const char *want[20];
  for (int i = 0; i < 20; i++) want[i] = one_step[i % 10];
  expect_events(want, 20, "CUDA with a communicator");
  cr_expect_str_eq(seen.domain_name, "cuoptim");
  OK(cuoptimDestroy(opt));
  test_mem_free(CUOPTIM_BACKEND_CUDA, w);
  test_mem_free(CUOPTIM_BACKEND_CUDA, g);
  cr_expect_eq(ncclCommDestroy(comm), ncclSuccess);
}
#endif
