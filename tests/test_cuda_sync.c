/*
 * test_cuda_sync.c — what the CUDA backend waits for: its own work only, never the whole device,
 * and cuoptimSynchronizeTimeout's deadline and the stage it names. On the emulated device only
 * (emu/control.h): a test holds a stream's work back (it stays enqueued until the test runs it),
 * and the emulator counts cudaDeviceSynchronize and the calls that synchronize implicitly
 * (cudaMalloc, cudaFree, cudaMemcpy, cudaMemset). A host wait for held work could never end: the
 * emulator aborts there, so a call that waited for a held stream would crash its test.
 *
 * The problem: Adam with global_clipnorm (so a step has the three stages inspect, prologue,
 * update), EMA and a dynamic loss scale (so every scalar query and cuoptimFinalizeVariableValues
 * have work to do), a float32 variable of 4097 elements and a float16 one of 100 (a master copy
 * taken when the state is built).
 */
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "control.h"
#include "cuoptim.h"
#include "testutil.h"

#define N32 4097
#define N16 100

typedef struct {
  float *param32, *grad32;
  uint16_t *param16, *grad16;
  cuoptimOptimizer_t opt;
} problem_t;

static cuoptimConfig_t problem_config(void) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAM, 0.01);
  c.global_clipnorm = 1.0;
  c.use_ema = 1;
  c.dynamic_loss_scale = 1;
  c.initial_scale = 4.0;
  return c;
}

/* The caller's buffers, written before anything is measured or held. */
static void make_buffers(problem_t *p) {
  memset(p, 0, sizeof *p);
  float p32[N32], g32[N32];
  uint16_t p16[N16], g16[N16];
  for (int i = 0; i < N32; i++) {
    p32[i] = test_pseudo_random(7, 0, (uint64_t)i);
    g32[i] = test_pseudo_random(7, 1, (uint64_t)i);
  }
  for (int i = 0; i < N16; i++) {
    p16[i] = test_to_half(test_pseudo_random(7, 2, (uint64_t)i));
    g16[i] = test_to_half(test_pseudo_random(7, 3, (uint64_t)i));
  }
  CUDA_OK(cudaMalloc((void **)&p->param32, sizeof p32));
  CUDA_OK(cudaMalloc((void **)&p->grad32, sizeof g32));
  CUDA_OK(cudaMalloc((void **)&p->param16, sizeof p16));
  CUDA_OK(cudaMalloc((void **)&p->grad16, sizeof g16));
  CUDA_OK(cudaMemcpy(p->param32, p32, sizeof p32, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(p->grad32, g32, sizeof g32, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(p->param16, p16, sizeof p16, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(p->grad16, g16, sizeof g16, cudaMemcpyHostToDevice));
}

static void free_buffers(problem_t *p) {
  CUDA_OK(cudaFree(p->param32));
  CUDA_OK(cudaFree(p->grad32));
  CUDA_OK(cudaFree(p->param16));
  CUDA_OK(cudaFree(p->grad16));
}

static void make_optimizer(problem_t *p, const cuoptimConfig_t *c) {
  OK(cuoptimCreate(&p->opt, c, CUOPTIM_BACKEND_CUDA, 0));
  cuoptimVariable_t v;
  OK(cuoptimAddVariable(p->opt, "w32", p->param32, CUOPTIM_FLOAT32, N32, &v));
  OK(cuoptimAddVariable(p->opt, "w16", p->param16, CUOPTIM_FLOAT16, N16, &v));
}

static cuoptimStatus_t apply(problem_t *p, cudaStream_t stream) {
  cuoptimGradient_t list[2] = {{0, p->grad32, CUOPTIM_FLOAT32}, {1, p->grad16, CUOPTIM_FLOAT16}};
  return cuoptimApplyGradients(p->opt, 2, list, stream);
}

static cudaStream_t new_stream(void) {
  cudaStream_t s = NULL;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
}

/* Every call of the optimizer that touches the device but create and destroy: scalar queries
 * before the state exists, steps on `a` then on `b` (the second stream waits for the first), the
 * state read and written, finalize on `b`, both synchronizations. */
static void exercise_every_call(problem_t *p, cudaStream_t a, cudaStream_t b) {
  int64_t iterations = -1;
  float lr = 0.0f, scale = 0.0f;
  OK(cuoptimGetIterations(p->opt, &iterations));
  OK(cuoptimGetLearningRate(p->opt, &lr));
  OK(cuoptimSetLearningRate(p->opt, 0.005));
  OK(cuoptimGetLossScale(p->opt, &scale));
  OK(apply(p, a));
  OK(apply(p, a));
  OK(apply(p, b));
  int count = 0;
  OK(cuoptimGetWeightCount(p->opt, &count));
  for (int i = 0; i < count; i++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(p->opt, i, &info));
    static double values[N32];
    cr_assert_leq(info.count, (size_t)N32);
    OK(cuoptimGetWeights(p->opt, i, values, info.count));
    if (strcmp(info.name, "w32_momentum") == 0) OK(cuoptimSetWeights(p->opt, i, values, info.count));
  }
  OK(cuoptimFinalizeVariableValues(p->opt, b));
  OK(cuoptimSynchronize(p->opt));
  OK(cuoptimSynchronizeTimeout(p->opt, 0));
  OK(cuoptimGetIterations(p->opt, &iterations));
  cr_expect_eq(iterations, 3, "iterations after three steps: %lld", (long long)iterations);
  OK(cuoptimGetLossScale(p->opt, &scale));
  cr_expect_eq(scale, 4.0f, "three finite steps keep the loss scale: %g", scale);
}

/* ---- no call waits for more than the optimizer's work ------------------------------------------- */

Test(cuda_sync, no_call_synchronizes_the_device) {
  problem_t p;
  make_buffers(&p);
  cudaStream_t a = new_stream();
  cuoptimConfig_t c = problem_config();
  long device_syncs = cuoptim_emu_device_synchronize_calls();
  long implicit = cuoptim_emu_implicit_synchronizations();
  make_optimizer(&p, &c);
  exercise_every_call(&p, a, NULL);
  OK(cuoptimDestroy(p.opt));
  cr_expect_eq(cuoptim_emu_device_synchronize_calls() - device_syncs, 0,
               "cuoptim called cudaDeviceSynchronize %ld times", cuoptim_emu_device_synchronize_calls() - device_syncs);
  cr_expect_eq(cuoptim_emu_implicit_synchronizations() - implicit, 0,
               "cuoptim called cudaMalloc, cudaFree, cudaMemcpy or cudaMemset %ld times",
               cuoptim_emu_implicit_synchronizations() - implicit);
  CUDA_OK(cudaStreamDestroy(a));
  free_buffers(&p);
}

/* Work enqueued by someone else, on a stream of theirs and on the legacy default stream, stays
 * enqueued through the optimizer's whole life: no call waits for it (one that did would never
 * return, and the emulator would abort). */
Test(cuda_sync, work_held_on_other_streams_is_not_waited_for) {
  problem_t p;
  make_buffers(&p);
  cudaStream_t a = new_stream(), b = new_stream(), theirs = new_stream();
  unsigned char *mine = NULL;
  CUDA_OK(cudaMalloc((void **)&mine, 64));
  CUDA_OK(cudaMemset(mine, 0, 64));
  cuoptim_emu_hold_stream(theirs);
  cuoptim_emu_hold_stream(NULL);
  CUDA_OK(cudaMemsetAsync(mine, 0x11, 32, theirs));
  CUDA_OK(cudaMemsetAsync(mine + 32, 0x22, 32, NULL));
  cuoptimConfig_t c = problem_config();
  make_optimizer(&p, &c);
  exercise_every_call(&p, a, b);
  OK(cuoptimDestroy(p.opt));
  cr_expect_eq(cuoptim_emu_pending_operations(theirs), 1, "the other stream's memset is still enqueued");
  cr_expect_eq(cuoptim_emu_pending_operations(NULL), 1, "the legacy stream's memset is still enqueued");
  cuoptim_emu_release_stream(theirs);
  cuoptim_emu_release_stream(NULL);
  unsigned char h[64];
  CUDA_OK(cudaMemcpy(h, mine, sizeof h, cudaMemcpyDeviceToHost));
  cr_expect(h[0] == 0x11 && h[31] == 0x11 && h[32] == 0x22 && h[63] == 0x22, "the held work ran once released");
  CUDA_OK(cudaFree(mine));
  CUDA_OK(cudaStreamDestroy(a));
  CUDA_OK(cudaStreamDestroy(b));
  CUDA_OK(cudaStreamDestroy(theirs));
  free_buffers(&p);
}

/* A device without stream-ordered memory pools: allocations and frees fall back to cudaMalloc and
 * cudaFree (the header says they synchronize the device then); everything else is unchanged. */
Test(cuda_sync, without_memory_pools_only_allocation_and_free_synchronize) {
  cuoptim_emu_set_memory_pools_supported(0);
  problem_t p;
  make_buffers(&p);
  cudaStream_t a = new_stream();
  cuoptimConfig_t c = problem_config();
  long device_syncs = cuoptim_emu_device_synchronize_calls();
  long implicit = cuoptim_emu_implicit_synchronizations();
  make_optimizer(&p, &c);
  exercise_every_call(&p, a, NULL);
  OK(cuoptimDestroy(p.opt));
  cr_expect_eq(cuoptim_emu_device_synchronize_calls() - device_syncs, 0);
  cr_expect_gt(cuoptim_emu_implicit_synchronizations() - implicit, 0, "the fallback uses cudaMalloc and cudaFree");
  CUDA_OK(cudaStreamDestroy(a));
  free_buffers(&p);
}

/* ---- the optimizer's own work is waited for ---------------------------------------------------- */

/* A read after a step still enqueued waits for that step: the emulator aborts, as the wait could
 * never end while the step is held. */
Test(cuda_sync, a_state_read_waits_for_a_held_step, .signal = SIGABRT) {
  problem_t p;
  make_buffers(&p);
  cudaStream_t a = new_stream();
  cuoptimConfig_t c = problem_config();
  make_optimizer(&p, &c);
  OK(apply(&p, a));
  cuoptim_emu_hold_stream(a);
  OK(apply(&p, a));
  int64_t iterations = 0;
  cuoptimGetIterations(p.opt, &iterations);
}

static cudaGraphExec_t capture_step(problem_t *p, cudaStream_t stream) {
  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  cuoptimStatus_t captured = apply(p, stream);
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  OK(captured);
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_OK(cudaGraphDestroy(graph));
  return exec;
}

/* The same for a replay of a captured step: the replay records the optimizer's replay event. */
Test(cuda_sync, a_state_read_waits_for_a_held_graph_replay, .signal = SIGABRT) {
  problem_t p;
  make_buffers(&p);
  cudaStream_t a = new_stream();
  cuoptimConfig_t c = problem_config();
  make_optimizer(&p, &c);
  OK(apply(&p, a));
  cudaGraphExec_t exec = capture_step(&p, a);
  cuoptim_emu_hold_stream(a);
  CUDA_OK(cudaGraphLaunch(exec, a));
  double iteration = 0;
  cuoptimGetWeights(p.opt, test_weight_index(p.opt, "iteration"), &iteration, 1);
}

/* ---- steps on two streams --------------------------------------------------------------------- */

static cuoptimStatus_t apply_with(problem_t *p, const float *g32, const uint16_t *g16, cudaStream_t stream) {
  cuoptimGradient_t list[2] = {{0, g32, CUOPTIM_FLOAT32}, {1, g16, CUOPTIM_FLOAT16}};
  return cuoptimApplyGradients(p->opt, 2, list, stream);
}

/* Step 3 on `b`, with other gradient buffers than step 2 on `a`: it may rewrite the optimizer's
 * gradient table only once step 2 has read it. Step 2 held until step 3 is enqueued must give what
 * the same steps give run one after the other. */
static void run_three_steps(problem_t *p, const float *g32, const uint16_t *g16, int hold, float *out) {
  cudaStream_t a = new_stream(), b = new_stream();
  OK(apply(p, a));
  if (hold) cuoptim_emu_hold_stream(a);
  OK(apply(p, a));
  OK(apply_with(p, g32, g16, b));
  if (hold) cuoptim_emu_release_stream(a);
  OK(cuoptimSynchronize(p->opt));
  CUDA_OK(cudaMemcpy(out, p->param32, N32 * sizeof *out, cudaMemcpyDeviceToHost));
  cr_expect_eq(test_iterations(p->opt), 3);
  CUDA_OK(cudaStreamDestroy(a));
  CUDA_OK(cudaStreamDestroy(b));
}

Test(cuda_sync, a_step_on_another_stream_keeps_the_gradient_table_until_the_previous_step_read_it) {
  static float want[N32], got[N32];
  cuoptimConfig_t c = problem_config();
  problem_t p;
  make_buffers(&p);
  float *g32 = NULL;
  uint16_t *g16 = NULL;
  float other32[N32];
  uint16_t other16[N16];
  for (int i = 0; i < N32; i++) other32[i] = 1000.0f * test_pseudo_random(7, 4, (uint64_t)i);
  for (int i = 0; i < N16; i++) other16[i] = test_to_half(1000.0f * test_pseudo_random(7, 5, (uint64_t)i));
  CUDA_OK(cudaMalloc((void **)&g32, sizeof other32));
  CUDA_OK(cudaMalloc((void **)&g16, sizeof other16));
  CUDA_OK(cudaMemcpy(g32, other32, sizeof other32, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(g16, other16, sizeof other16, cudaMemcpyHostToDevice));
  float initial[N32];
  CUDA_OK(cudaMemcpy(initial, p.param32, sizeof initial, cudaMemcpyDeviceToHost));
  make_optimizer(&p, &c);
  run_three_steps(&p, g32, g16, 0, want);
  OK(cuoptimDestroy(p.opt));
  CUDA_OK(cudaMemcpy(p.param32, initial, sizeof initial, cudaMemcpyHostToDevice));
  make_optimizer(&p, &c);
  run_three_steps(&p, g32, g16, 1, got);
  OK(cuoptimDestroy(p.opt));
  long at = test_first_mismatch(got, want, N32, 0.0, 0.0);
  cr_expect_eq(at, -1, "step 2 held: w32[%ld] = %.9g, in order %.9g", at, at < 0 ? 0.0 : got[at],
               at < 0 ? 0.0 : want[at]);
  CUDA_OK(cudaFree(g32));
  CUDA_OK(cudaFree(g16));
  free_buffers(&p);
}

/* ---- cuoptimSynchronizeTimeout ------------------------------------------------------------------ */

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

/* A TIMEOUT whose message names `want`. */
static void expect_in_flight(problem_t *p, const char *want) {
  cuoptimStatus_t st = cuoptimSynchronizeTimeout(p->opt, 0);
  const char *message = cuoptimGetLastErrorMessage();
  cr_assert_eq(st, CUOPTIM_STATUS_TIMEOUT, "status %s with %s in flight (message \"%s\")", cuoptimGetStatusString(st),
               want, message);
  cr_expect(strstr(message, "cuoptimSynchronizeTimeout") != NULL && strstr(message, want) != NULL,
            "the message should name %s: \"%s\"", want, message);
}

Test(cuda_sync, synchronize_timeout_succeeds_once_the_work_is_done) {
  problem_t p;
  make_buffers(&p);
  cudaStream_t a = new_stream();
  cuoptimConfig_t c = problem_config();
  make_optimizer(&p, &c);
  OK(cuoptimSynchronizeTimeout(p.opt, 0)); /* nothing enqueued yet */
  OK(apply(&p, a));
  OK(apply(&p, a));
  OK(cuoptimSynchronizeTimeout(p.opt, 0));
  OK(cuoptimSynchronizeTimeout(p.opt, INT64_MAX));
  cr_expect_eq(test_iterations(p.opt), 2);
  OK(cuoptimDestroy(p.opt));
  CUDA_OK(cudaStreamDestroy(a));
  free_buffers(&p);
}

/* The first step builds the state on its stream: held, that is the first thing in flight. The
 * wait lasts its timeout, not much more. */
Test(cuda_sync, synchronize_timeout_returns_timeout_at_its_deadline) {
  problem_t p;
  make_buffers(&p);
  cudaStream_t a = new_stream();
  cuoptimConfig_t c = problem_config();
  make_optimizer(&p, &c);
  cuoptim_emu_hold_stream(a);
  OK(apply(&p, a));
  double start = now_ms();
  cuoptimStatus_t st = cuoptimSynchronizeTimeout(p.opt, 50);
  double waited = now_ms() - start;
  cr_expect_eq(st, CUOPTIM_STATUS_TIMEOUT, "status %s", cuoptimGetStatusString(st));
  cr_expect_str_eq(cuoptimGetLastErrorMessage(),
                   "cuoptimSynchronizeTimeout: timeout_ms = 50 passed and building the optimizer state has not "
                   "completed");
  cr_expect(waited >= 50.0 && waited < 5000.0, "waited %.1f ms for a 50 ms timeout", waited);
  cuoptim_emu_release_stream(a);
  OK(cuoptimSynchronizeTimeout(p.opt, 1000));
  cr_expect_eq(test_iterations(p.opt), 1);
  OK(cuoptimDestroy(p.opt));
  CUDA_OK(cudaStreamDestroy(a));
  free_buffers(&p);
}

/* The held stream's work runs one operation at a time: the stage named in flight goes through
 * the step's three stages in order (the prologue advances the state: no finish stage), then the
 * wait succeeds. */
Test(cuda_sync, synchronize_timeout_names_each_stage_in_flight_in_order) {
  static const char *const stages[] = {"inspect", "prologue", "update"};
  problem_t p;
  make_buffers(&p);
  cudaStream_t a = new_stream();
  cuoptimConfig_t c = problem_config();
  make_optimizer(&p, &c);
  OK(apply(&p, a));
  cuoptim_emu_hold_stream(a);
  OK(apply(&p, a));
  int named = 0;
  char last[64] = "";
  cuoptimStatus_t st = CUOPTIM_STATUS_TIMEOUT;
  for (int round = 0; round < 1000 && st == CUOPTIM_STATUS_TIMEOUT; round++) {
    st = cuoptimSynchronizeTimeout(p.opt, 0);
    if (st != CUOPTIM_STATUS_TIMEOUT) break;
    const char *message = cuoptimGetLastErrorMessage();
    const char *quote = strstr(message, "stage \"");
    cr_assert(quote != NULL && strstr(message, "\" of step 2 has not completed") != NULL,
              "the message should name a stage of step 2: \"%s\"", message);
    char stage[64];
    cr_assert_eq(sscanf(quote, "stage \"%63[^\"]\"", stage), 1);
    if (strcmp(stage, last) != 0) {
      cr_assert_lt(named, 3, "a fourth stage named: \"%s\"", stage);
      cr_expect_str_eq(stage, stages[named], "stage %d named: \"%s\", want \"%s\"", named, stage, stages[named]);
      named++;
      snprintf(last, sizeof last, "%s", stage);
    }
    cr_assert_eq(cuoptim_emu_run_one(a), 1, "nothing left to run, yet \"%s\"", message);
  }
  cr_expect_eq(st, CUOPTIM_STATUS_SUCCESS, "status %s once every operation ran", cuoptimGetStatusString(st));
  cr_expect_eq(named, 3, "stages named: %d", named);
  cuoptim_emu_release_stream(a);
  cr_expect_eq(test_iterations(p.opt), 2);
  OK(cuoptimDestroy(p.opt));
  CUDA_OK(cudaStreamDestroy(a));
  free_buffers(&p);
}

/* Step 2 held on `a`, step 3 on `b` waits for it (GPU-side): the earliest work in flight is step
 * 2's, and that is what is named, not step 3. */
Test(cuda_sync, synchronize_timeout_names_the_earliest_step_in_flight) {
  problem_t p;
  make_buffers(&p);
  cudaStream_t a = new_stream(), b = new_stream();
  cuoptimConfig_t c = problem_config();
  make_optimizer(&p, &c);
  OK(apply(&p, a));
  cuoptim_emu_hold_stream(a);
  OK(apply(&p, a));
  OK(apply(&p, b));
  cr_expect_gt(cuoptim_emu_pending_operations(b), 0, "step 3 on another stream waits for step 2");
  expect_in_flight(&p, "stage \"inspect\" of step 2 has not completed");
  cuoptim_emu_release_stream(a);
  cr_expect_eq(cuoptim_emu_pending_operations(b), 0);
  OK(cuoptimSynchronizeTimeout(p.opt, 0));
  cr_expect_eq(test_iterations(p.opt), 3);
  OK(cuoptimDestroy(p.opt));
  CUDA_OK(cudaStreamDestroy(a));
  CUDA_OK(cudaStreamDestroy(b));
  free_buffers(&p);
}

Test(cuda_sync, synchronize_timeout_names_finalize_in_flight) {
  problem_t p;
  make_buffers(&p);
  cudaStream_t a = new_stream(), b = new_stream();
  cuoptimConfig_t c = problem_config();
  make_optimizer(&p, &c);
  OK(apply(&p, a));
  cuoptim_emu_hold_stream(b);
  OK(cuoptimFinalizeVariableValues(p.opt, b));
  expect_in_flight(&p, "cuoptimFinalizeVariableValues has not completed");
  cuoptim_emu_release_stream(b);
  OK(cuoptimSynchronizeTimeout(p.opt, 0));
  OK(cuoptimDestroy(p.opt));
  CUDA_OK(cudaStreamDestroy(a));
  CUDA_OK(cudaStreamDestroy(b));
  free_buffers(&p);
}

Test(cuda_sync, synchronize_timeout_names_a_graph_replay_in_flight) {
  problem_t p;
  make_buffers(&p);
  cudaStream_t a = new_stream();
  cuoptimConfig_t c = problem_config();
  make_optimizer(&p, &c);
  OK(apply(&p, a));
  cudaGraphExec_t exec = capture_step(&p, a);
  OK(cuoptimSynchronizeTimeout(p.opt, 0)); /* captured, not replayed: nothing in flight */
  cuoptim_emu_hold_stream(a);
  CUDA_OK(cudaGraphLaunch(exec, a));
  expect_in_flight(&p, "the latest replay of a CUDA graph that captured a step has not completed");
  cuoptim_emu_release_stream(a);
  OK(cuoptimSynchronizeTimeout(p.opt, 0));
  cr_expect_eq(test_iterations(p.opt), 2);
  CUDA_OK(cudaGraphExecDestroy(exec));
  OK(cuoptimDestroy(p.opt));
  CUDA_OK(cudaStreamDestroy(a));
  free_buffers(&p);
}

/* Many steps in flight on a held stream (more than the marks it starts with): the earliest is
 * still the one named, and each completes in turn. */
Test(cuda_sync, synchronize_timeout_tracks_many_steps_in_flight) {
  enum { STEPS = 40 };
  problem_t p;
  make_buffers(&p);
  cudaStream_t a = new_stream();
  cuoptimConfig_t c = problem_config();
  make_optimizer(&p, &c);
  OK(apply(&p, a));
  OK(cuoptimSynchronize(p.opt));
  cuoptim_emu_hold_stream(a);
  for (int s = 0; s < STEPS; s++) OK(apply(&p, a));
  expect_in_flight(&p, "stage \"inspect\" of step 2 has not completed");
  while (cuoptimSynchronizeTimeout(p.opt, 0) == CUOPTIM_STATUS_TIMEOUT &&
         strstr(cuoptimGetLastErrorMessage(), "of step 2 ") != NULL)
    cr_assert_eq(cuoptim_emu_run_one(a), 1);
  expect_in_flight(&p, "stage \"inspect\" of step 3 has not completed");
  cuoptim_emu_release_stream(a);
  OK(cuoptimSynchronizeTimeout(p.opt, 0));
  cr_expect_eq(test_iterations(p.opt), 1 + STEPS);
  OK(cuoptimDestroy(p.opt));
  CUDA_OK(cudaStreamDestroy(a));
  free_buffers(&p);
}

Test(cuda_sync, synchronize_timeout_rejects_a_negative_timeout) {
  problem_t p;
  make_buffers(&p);
  cuoptimConfig_t c = problem_config();
  make_optimizer(&p, &c);
  cuoptimStatus_t st = cuoptimSynchronizeTimeout(p.opt, -5);
  cr_expect_eq(st, CUOPTIM_STATUS_INVALID_VALUE);
  cr_expect_str_eq(cuoptimGetLastErrorMessage(), "cuoptimSynchronizeTimeout: timeout_ms = -5: must be >= 0");
  st = cuoptimSynchronizeTimeout(NULL, 0);
  cr_expect_eq(st, CUOPTIM_STATUS_NULL_POINTER);
  OK(cuoptimDestroy(p.opt));
  free_buffers(&p);
}
