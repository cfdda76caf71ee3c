/*
 * test_cuda_launches.c — kernel launches per step of the CUDA backend, counted by the emulated
 * device (emu/control.h: cuoptim_emu_kernels_run), eagerly and in a CUDA graph's replay; only in
 * the emulated build. The fixed cost of a step is mostly its launches: plain Adam takes two
 * (prologue, which also advances the state, and update), an inspect pass one more (its
 * per-variable sums formed by the block of each variable's last chunk), Lamb its two passes,
 * Adafactor its three stages (moments, RMS, apply: four launches a step), each one launch for all
 * of its variables.
 *
 * A step that uploads the gradient table (the first, and one whose pointers changed) adds that
 * upload: in a plain step the table rides on the prologue's argument; after an inspect pass it is a
 * launch of its own ahead of it. A captured step reads a table written when it was captured, so a
 * replay runs the eager step's kernels and no upload, and eager steps after a capture upload only
 * what changed, as before it.
 *
 * Muon adds its matrices' stages (muon_takes_...): momentum, norm, normalization, one scale kernel
 * per Newton-Schulz iteration and the apply, beside the update kernel of its AdamW path; and three
 * cuBLAS products per iteration and shape of matrix (counted by the emulated cuBLAS).
 */
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <string.h>

#include "control.h"
#include "cublas_emu.h"
#include "cuoptim.h"
#include "testutil.h"

TestSuite(cuda_launches);

/* Two variables: one of several whole chunks and a tail, one small. */
#define BIG 20000
#define SMALL 37

typedef struct {
  cuoptimOptimizer_t opt;
  float *w[2], *g[2];
  cuoptimGradient_t grads[2];
  cudaStream_t stream;
} rig_t;

static void rig_make(rig_t *r, const cuoptimConfig_t *c) {
  test_require_backend(CUOPTIM_BACKEND_CUDA);
  memset(r, 0, sizeof *r);
  OK(cuoptimCreate(&r->opt, c, CUOPTIM_BACKEND_CUDA, 0));
  CUDA_OK(cudaStreamCreateWithFlags(&r->stream, cudaStreamNonBlocking));
  static const size_t counts[2] = {BIG, SMALL};
  static float values[BIG];
  for (int i = 0; i < BIG; i++) values[i] = 0.001f * (float)(i % 97) - 0.05f;
  for (int k = 0; k < 2; k++) {
    r->w[k] = test_mem_from(CUOPTIM_BACKEND_CUDA, values, counts[k]);
    r->g[k] = test_mem_from(CUOPTIM_BACKEND_CUDA, values, counts[k]);
    cuoptimVariable_t v;
    static const int64_t kernel_shape[2] = {100, BIG / 100}; /* Muon's matrix path; Adafactor factors it */
    if (k == 0 && (c->kind == CUOPTIM_MUON || c->kind == CUOPTIM_ADAFACTOR))
      OK(cuoptimAddVariableWithShape(r->opt, "dense/kernel", r->w[k], CUOPTIM_FLOAT32, 2, kernel_shape, &v));
    else
      OK(cuoptimAddVariable(r->opt, k ? "dense/bias" : "dense/kernel", r->w[k], CUOPTIM_FLOAT32, counts[k], &v));
    r->grads[k] = (cuoptimGradient_t){v, r->g[k], CUOPTIM_FLOAT32};
  }
}

static void rig_free(rig_t *r) {
  OK(cuoptimDestroy(r->opt));
  for (int k = 0; k < 2; k++) {
    test_mem_free(CUOPTIM_BACKEND_CUDA, r->w[k]);
    test_mem_free(CUOPTIM_BACKEND_CUDA, r->g[k]);
  }
  CUDA_OK(cudaStreamDestroy(r->stream));
}

/* cuBLAS products (Muon's) of the step the last eager_launches or graph_launches counted. */
static long step_products;

/* Kernels run by one eager step, once the table is on the device (the second step). */
static long eager_launches(const cuoptimConfig_t *c) {
  rig_t r;
  rig_make(&r, c);
  OK(cuoptimApplyGradients(r.opt, 2, r.grads, r.stream)); /* builds the state, uploads the table */
  OK(cuoptimSynchronize(r.opt));
  long before = cuoptim_emu_kernels_run(NULL), products = cuoptim_emu_cublas_calls();
  OK(cuoptimApplyGradients(r.opt, 2, r.grads, r.stream));
  OK(cuoptimSynchronize(r.opt));
  long launches = cuoptim_emu_kernels_run(NULL) - before;
  step_products = cuoptim_emu_cublas_calls() - products;
  int64_t iterations = -1;
  OK(cuoptimGetIterations(r.opt, &iterations));
  cr_expect_eq(iterations, 2, "the state advanced: iterations %lld", (long long)iterations);
  rig_free(&r);
  return launches;
}

/* Kernels run by one replay of a captured step. */
static long graph_launches(const cuoptimConfig_t *c) {
  rig_t r;
  rig_make(&r, c);
  OK(cuoptimApplyGradients(r.opt, 2, r.grads, r.stream));
  OK(cuoptimSynchronize(r.opt));
  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  CUDA_OK(cudaStreamBeginCapture(r.stream, cudaStreamCaptureModeGlobal));
  cuoptimStatus_t captured = cuoptimApplyGradients(r.opt, 2, r.grads, r.stream);
  CUDA_OK(cudaStreamEndCapture(r.stream, &graph));
  OK(captured);
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  long before = cuoptim_emu_kernels_run(NULL), products = cuoptim_emu_cublas_calls();
  CUDA_OK(cudaGraphLaunch(exec, r.stream));
  CUDA_OK(cudaStreamSynchronize(r.stream));
  long launches = cuoptim_emu_kernels_run(NULL) - before;
  step_products = cuoptim_emu_cublas_calls() - products;
  CUDA_OK(cudaGraphLaunch(exec, r.stream));
  CUDA_OK(cudaStreamSynchronize(r.stream));
  cr_expect_eq(cuoptim_emu_kernels_run(NULL) - before, 2 * launches, "every replay runs the same kernels");
  int64_t iterations = -1;
  OK(cuoptimGetIterations(r.opt, &iterations));
  cr_expect_eq(iterations, 3, "one eager step and two replays: iterations %lld", (long long)iterations);
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  rig_free(&r);
  return launches;
}

/* The same kernels eagerly and in a replay: the replay uploads no gradient table. */
static void expect_launches(const cuoptimConfig_t *c, long launches, const char *label) {
  long got = eager_launches(c);
  cr_expect_eq(got, launches, "%s: %ld kernels per eager step, want %ld", label, got, launches);
  got = graph_launches(c);
  cr_expect_eq(got, launches, "%s: %ld kernels per graph replay, want %ld", label, got, launches);
}

Test(cuda_launches, adam_takes_two) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  expect_launches(&c, 2, "Adam");
}

Test(cuda_launches, adamw_takes_two) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAMW);
  c.weight_decay = 0.01;
  expect_launches(&c, 2, "AdamW");
}

Test(cuda_launches, adam_with_global_clipnorm_takes_three) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.global_clipnorm = 1.0;
  expect_launches(&c, 3, "Adam global_clipnorm");
}

Test(cuda_launches, adam_with_clipnorm_takes_three) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.clipnorm = 1.0;
  expect_launches(&c, 3, "Adam clipnorm");
}

Test(cuda_launches, adam_with_a_dynamic_loss_scale_takes_three) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.dynamic_loss_scale = 1;
  expect_launches(&c, 3, "Adam dynamic loss scale");
}

Test(cuda_launches, nadam_with_ema_takes_two) {
  cuoptimConfig_t c = test_config(CUOPTIM_NADAM);
  c.use_ema = 1;
  expect_launches(&c, 2, "Nadam EMA");
}

Test(cuda_launches, lamb_takes_three) {
  cuoptimConfig_t c = test_config(CUOPTIM_LAMB);
  expect_launches(&c, 3, "Lamb");
}

Test(cuda_launches, lamb_with_global_clipnorm_takes_four) {
  cuoptimConfig_t c = test_config(CUOPTIM_LAMB);
  c.global_clipnorm = 1.0;
  expect_launches(&c, 4, "Lamb global_clipnorm");
}

/* Muon, one matrix (100 x 200) and a vector: the prologue, the update kernel on the AdamW path's
 * variables, momentum, norm and normalization, a scale kernel per Newton-Schulz iteration, the
 * apply: 6 + ns_steps kernels; and three cuBLAS products per iteration for each shape of matrix
 * (A = X X^T, B += cA A, Y += B X; one strided-batched call covers the matrices of a shape). */
static void expect_muon(const cuoptimConfig_t *c, long launches, long products, const char *label) {
  expect_launches(c, launches, label);
  long got = step_products; /* of the replay */
  cr_expect_eq(got, products, "%s: %ld cuBLAS products per graph replay, want %ld", label, got, products);
  (void)eager_launches(c);
  got = step_products;
  cr_expect_eq(got, products, "%s: %ld cuBLAS products per eager step, want %ld", label, got, products);
}

Test(cuda_launches, muon_takes_six_kernels_and_ns_steps_scales_and_three_products_each) {
  cuoptimConfig_t c = test_config(CUOPTIM_MUON);
  expect_muon(&c, 6 + 5, 3 * 5, "Muon ns_steps 5");
  c.ns_steps = 2;
  c.clipnorm = 1.0; /* an inspect pass: one kernel more */
  expect_muon(&c, 1 + 6 + 2, 3 * 2, "Muon ns_steps 2 clipnorm");
}

/* A factored [100, 200] kernel and a bias with a full velocity: one launch of each stage for both. */
Test(cuda_launches, adafactor_takes_four) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAFACTOR);
  static const char *const stages[3] = {"adafactor_moments_kernel", "adafactor_rms_kernel", "adafactor_apply_kernel"};
  long before[3];
  for (int i = 0; i < 3; i++) before[i] = cuoptim_emu_kernels_run(stages[i]);
  expect_launches(&c, 4, "Adafactor");
  /* eager_launches: two eager steps; graph_launches: one, then two replays (the capture runs nothing). */
  for (int i = 0; i < 3; i++)
    cr_expect_eq(cuoptim_emu_kernels_run(stages[i]) - before[i], 5, "%s ran %ld times, want 5 (once a step)",
                 stages[i], cuoptim_emu_kernels_run(stages[i]) - before[i]);
}

Test(cuda_launches, adafactor_with_clipnorm_takes_five) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAFACTOR);
  c.clipnorm = 1.0;
  expect_launches(&c, 5, "Adafactor clipnorm");
}

Test(cuda_launches, adafactor_with_weight_decay_and_ema_takes_four) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAFACTOR);
  c.weight_decay = 0.01;
  c.use_ema = 1;
  expect_launches(&c, 4, "Adafactor weight decay + EMA");
}

/* The first step builds the state (one launch) and uploads the table: on the prologue's argument
 * in a plain step. */
Test(cuda_launches, first_adam_step_builds_and_takes_two) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  rig_t r;
  rig_make(&r, &c);
  long before = cuoptim_emu_kernels_run(NULL), builds = cuoptim_emu_kernels_run("build_kernel");
  OK(cuoptimApplyGradients(r.opt, 2, r.grads, r.stream));
  OK(cuoptimSynchronize(r.opt));
  cr_expect_eq(cuoptim_emu_kernels_run("build_kernel") - builds, 1);
  cr_expect_eq(cuoptim_emu_kernels_run(NULL) - before, 3, "build, prologue, update: %ld kernels",
               cuoptim_emu_kernels_run(NULL) - before);
  rig_free(&r);
}

/* Kernels of one eager step whose table is up to date: the prologue carries no entries (a prologue
 * that does runs as prologue_upload_kernel), and no scatter launch runs. */
static void expect_no_upload(long before_scatter, long before_upload, const char *when) {
  cr_expect_eq(cuoptim_emu_kernels_run("scatter_gradients_kernel") - before_scatter, 0, "%s: a scatter launch", when);
  cr_expect_eq(cuoptim_emu_kernels_run("prologue_upload_kernel") - before_upload, 0, "%s: a prologue upload", when);
}

/* A capture writes its own table on the optimizer's stream; neither its replays nor the eager steps
 * around them upload again while the pointers stay; an eager step with other pointers uploads
 * them, and the replay after it still reads the captured ones (the bits are test_cuda_graph's). */
Test(cuda_launches, captured_steps_own_their_gradient_table) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.clipnorm = 1.0; /* an inspect pass: an upload would be a launch of its own */
  rig_t r;
  rig_make(&r, &c);
  OK(cuoptimApplyGradients(r.opt, 2, r.grads, r.stream));
  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  long scatters = cuoptim_emu_kernels_run("scatter_gradients_kernel");
  CUDA_OK(cudaStreamBeginCapture(r.stream, cudaStreamCaptureModeGlobal));
  cuoptimStatus_t captured = cuoptimApplyGradients(r.opt, 2, r.grads, r.stream);
  CUDA_OK(cudaStreamEndCapture(r.stream, &graph));
  OK(captured);
  cr_expect_eq(cuoptim_emu_kernels_run("scatter_gradients_kernel") - scatters, 1,
               "the capture writes its table once, outside the graph");
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  long uploads = cuoptim_emu_kernels_run("prologue_upload_kernel");
  scatters = cuoptim_emu_kernels_run("scatter_gradients_kernel");
  CUDA_OK(cudaGraphLaunch(exec, r.stream));
  OK(cuoptimApplyGradients(r.opt, 2, r.grads, r.stream));
  CUDA_OK(cudaGraphLaunch(exec, r.stream));
  CUDA_OK(cudaStreamSynchronize(r.stream));
  expect_no_upload(scatters, uploads, "replays and an eager step on the captured pointers");

  static float small_values[SMALL];
  for (int i = 0; i < SMALL; i++) small_values[i] = 0.01f * (float)(i % 5) - 0.02f;
  float *other = test_mem_from(CUOPTIM_BACKEND_CUDA, small_values, SMALL);
  cuoptimGradient_t moved[2] = {r.grads[0], {r.grads[1].variable, other, CUOPTIM_FLOAT32}};
  OK(cuoptimApplyGradients(r.opt, 2, moved, r.stream));
  OK(cuoptimSynchronize(r.opt));
  cr_expect_eq(cuoptim_emu_kernels_run("scatter_gradients_kernel") - scatters, 1, "other pointers: one upload");
  scatters = cuoptim_emu_kernels_run("scatter_gradients_kernel");
  CUDA_OK(cudaGraphLaunch(exec, r.stream));
  OK(cuoptimApplyGradients(r.opt, 2, moved, r.stream));
  OK(cuoptimSynchronize(r.opt));
  expect_no_upload(scatters, uploads, "a replay, then an eager step on the moved pointers");

  int64_t iterations = -1;
  OK(cuoptimGetIterations(r.opt, &iterations));
  cr_expect_eq(iterations, 7, "four eager steps and three replays: %lld",
               (long long)iterations);
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  test_mem_free(CUOPTIM_BACKEND_CUDA, other);
  rig_free(&r);
}
