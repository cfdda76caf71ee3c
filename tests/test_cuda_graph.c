/*
 * test_cuda_graph.c — an optimizer step captured in a CUDA graph and replayed gives, bit for bit,
 * what the same number of eager steps gives.
 *
 * Protocol (check_graph_replay): two identical optimizers on the CUDA backend, `eager` and
 * `graphed`, each with its own parameter and gradient buffers holding the same values.
 *   1. One eager step on both. The first step builds the optimizer state (cuoptim_build: the
 *      arena allocated and cleared on the optimizer's stream, the tables uploaded there, host waits
 *      for that stream, the build kernel) — work a graph cannot hold — and uploads the gradient
 *      table. From the second step on, a step with the same gradient pointers only enqueues
 *      kernels and event records on the stream, so it can be captured.
 *   2. One cuoptimApplyGradients of `graphed` captured (cudaStreamBeginCapture, global mode,
 *      cudaStreamEndCapture, cudaGraphInstantiate).
 *   3. REPLAYS times: new gradient values copied with cudaMemcpyAsync on the same stream into the
 *      same device buffers of both optimizers (outside the graph), one eager step of `eager`, one
 *      cudaGraphLaunch.
 * Then the parameters, every state entry, cuoptimGetIterations, the learning rate and the loss
 * scale of the two must be identical, and the iteration count the eager count.
 *
 * What capturing the very first step does is tested too (capturing_the_first_step_...): see there;
 * and a capture of 5,000 variables (replay_with_five_thousand_variables_...), whose gradient-table
 * upload takes several scatter launches.
 * Without a usable CUDA device every test calls cr_skip.
 */
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuoptim.h"
#include "testutil.h"

#define NEED_GPU()                                                               \
  do {                                                                           \
    if (!test_has_gpu()) cr_skip("no usable CUDA device: CUDA graph test skipped"); \
  } while (0)

#define REPLAYS 7

/* ---- the problem: five variables, deterministic values of varied magnitude ---------------------- */

#define NUM_VARS 5
static const size_t SIZES[NUM_VARS] = {1, 3, 4095, 65537, 100001};
static const char *const NAMES[NUM_VARS] = {"dense/bias", "dense/kernel", "conv/bias", "conv/kernel",
                                            "embedding/embeddings"};
static const float GRAD_FACTOR[NUM_VARS] = {1.0f, 0.3f, 1.0f, 0.001f, 1.0f};
/* Muon's shapes of the same variables (rows x cols; 0: none, the AdamW path): a column, a tall
 * matrix (transposed for Newton-Schulz), a row, and a wide matrix of several chunks (with
 * exclude_embeddings off, the embedding's name does not send it to the AdamW path). */
static const int64_t MUON_SHAPES[NUM_VARS][2] = {{0, 0}, {3, 1}, {65, 63}, {1, 65537}, {11, 9091}};
/* Adafactor's variables have these shapes (the sizes above): full velocities, a batch of factored
 * matrices, a single column, a wide matrix. */
static const int RANKS[NUM_VARS] = {1, 1, 3, 2, 2};
static const int64_t DIMS[NUM_VARS][3] = {{1}, {3}, {3, 35, 39}, {65537, 1}, {11, 9091}};
/* Seed of test_pseudo_random for every value of the problem. */
#define SEED 0x5eed

/* Element index of each variable in a pool: 64-element aligned, conv/bias one element further
 * (misaligned for vector loads, so both paths of the update kernel are captured). */
static size_t layout(size_t *start) {
  size_t cursor = 0;
  for (int k = 0; k < NUM_VARS; k++) {
    start[k] = cursor + (k == 2 ? 1 : 0);
    cursor = (start[k] + SIZES[k] + 63) / 64 * 64;
  }
  return cursor;
}

static float param_value(int k, size_t i) { return test_pseudo_random(SEED, ((uint64_t)k << 20) | 0xfffffu, i); }

static float grad_value(int k, int step, size_t i) {
  return test_pseudo_random(SEED, ((uint64_t)k << 20) | (uint64_t)step, i) * GRAD_FACTOR[k];
}

/* ---- one optimizer with its buffers ------------------------------------------------------------- */

typedef struct {
  cuoptimDtype_t param_dtype, grad_dtype;
  size_t start[NUM_VARS];
  size_t pool; /* elements */
  unsigned char *params, *grads; /* device pools */
  cuoptimOptimizer_t opt;
} side_t;

static void make_side(side_t *s, const cuoptimConfig_t *cfg, cuoptimDtype_t param_dtype, cuoptimDtype_t grad_dtype) {
  memset(s, 0, sizeof *s);
  s->param_dtype = param_dtype;
  s->grad_dtype = grad_dtype;
  s->pool = layout(s->start);
  const size_t pbytes = s->pool * test_dtype_bytes(param_dtype), gbytes = s->pool * test_dtype_bytes(grad_dtype);
  unsigned char *image = calloc(1, pbytes);
  cr_assert(image);
  for (int k = 0; k < NUM_VARS; k++)
    for (size_t i = 0; i < SIZES[k]; i++)
      test_store_element(image + s->start[k] * test_dtype_bytes(param_dtype), param_dtype, i, param_value(k, i));
  CUDA_OK(cudaMalloc((void **)&s->params, pbytes));
  CUDA_OK(cudaMalloc((void **)&s->grads, gbytes));
  CUDA_OK(cudaMemcpy(s->params, image, pbytes, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemset(s->grads, 0, gbytes));
  free(image);
  OK(cuoptimCreate(&s->opt, cfg, CUOPTIM_BACKEND_CUDA, 0));
  OK(cuoptimExcludeFromWeightDecay(s->opt, "bias$"));
  for (int k = 0; k < NUM_VARS; k++) {
    cuoptimVariable_t v;
    void *param = s->params + s->start[k] * test_dtype_bytes(param_dtype);
    if (cfg->kind == CUOPTIM_MUON && MUON_SHAPES[k][0] > 0)
      OK(cuoptimAddVariableWithShape(s->opt, NAMES[k], param, param_dtype, 2, MUON_SHAPES[k], &v));
    else if (cfg->kind == CUOPTIM_ADAFACTOR)
      OK(cuoptimAddVariableWithShape(s->opt, NAMES[k], param, param_dtype, RANKS[k], DIMS[k], &v));
    else
      OK(cuoptimAddVariable(s->opt, NAMES[k], param, param_dtype, SIZES[k], &v));
  }
}

static void free_side(side_t *s) {
  OK(cuoptimDestroy(s->opt));
  CUDA_OK(cudaFree(s->params));
  CUDA_OK(cudaFree(s->grads));
}

/* The host image of a step's gradients (in `grad_dtype`, laid out like the pools). */
static void fill_gradients(unsigned char *staging, const side_t *s, int step) {
  const size_t es = test_dtype_bytes(s->grad_dtype);
  for (int k = 0; k < NUM_VARS; k++)
    for (size_t i = 0; i < SIZES[k]; i++) test_store_element(staging + s->start[k] * es, s->grad_dtype, i, grad_value(k, step, i));
}

/* Into the side's gradient buffers, ordered on `stream` after the work already enqueued there. */
static void upload_gradients(const side_t *s, const unsigned char *staging, cudaStream_t stream) {
  CUDA_OK(cudaMemcpyAsync(s->grads, staging, s->pool * test_dtype_bytes(s->grad_dtype), cudaMemcpyHostToDevice, stream));
}

/* One step with every variable's gradient taken from the pool `grads` (laid out like s->grads). */
static cuoptimStatus_t apply_from(const side_t *s, const unsigned char *grads, cudaStream_t stream) {
  cuoptimGradient_t list[NUM_VARS];
  memset(list, 0, sizeof list);
  for (int k = 0; k < NUM_VARS; k++) {
    list[k].variable = k;
    list[k].grad = grads + s->start[k] * test_dtype_bytes(s->grad_dtype);
    list[k].dtype = s->grad_dtype;
  }
  return cuoptimApplyGradients(s->opt, NUM_VARS, list, stream);
}

/* One step with every variable's gradient, always the same device pointers. */
static cuoptimStatus_t apply(const side_t *s, cudaStream_t stream) { return apply_from(s, s->grads, stream); }

/* ---- what a caller observes ----------------------------------------------------------------------- */

typedef struct {
  unsigned char *params; /* the whole pool */
  size_t param_bytes;
  int num_weights;
  cuoptimWeightInfo_t *infos;
  double **weights;
  int64_t iterations;
  float learning_rate;
  int has_loss_scale;
  float loss_scale;
} snapshot_t;

static void take_snapshot(const side_t *s, const cuoptimConfig_t *cfg, snapshot_t *out) {
  memset(out, 0, sizeof *out);
  OK(cuoptimSynchronize(s->opt));
  out->param_bytes = s->pool * test_dtype_bytes(s->param_dtype);
  out->params = malloc(out->param_bytes);
  cr_assert(out->params);
  CUDA_OK(cudaMemcpy(out->params, s->params, out->param_bytes, cudaMemcpyDeviceToHost));
  OK(cuoptimGetWeightCount(s->opt, &out->num_weights));
  out->infos = calloc((size_t)out->num_weights, sizeof *out->infos);
  out->weights = calloc((size_t)out->num_weights, sizeof *out->weights);
  cr_assert(out->infos && out->weights);
  for (int i = 0; i < out->num_weights; i++) {
    OK(cuoptimGetWeightInfo(s->opt, i, &out->infos[i]));
    out->weights[i] = malloc(out->infos[i].count * sizeof(double));
    cr_assert(out->weights[i]);
    OK(cuoptimGetWeights(s->opt, i, out->weights[i], out->infos[i].count));
  }
  OK(cuoptimGetIterations(s->opt, &out->iterations));
  OK(cuoptimGetLearningRate(s->opt, &out->learning_rate));
  out->has_loss_scale = cfg->dynamic_loss_scale;
  if (cfg->dynamic_loss_scale) OK(cuoptimGetLossScale(s->opt, &out->loss_scale));
}

static void free_snapshot(snapshot_t *s) {
  for (int i = 0; i < s->num_weights; i++) free(s->weights[i]);
  free(s->weights);
  free(s->infos);
  free(s->params);
  memset(s, 0, sizeof *s);
}

/* Bit for bit (NaN payloads aside, which no finite problem produces). */
static void expect_identical(const snapshot_t *got, const snapshot_t *want, const char *label) {
  cr_expect_eq(got->iterations, want->iterations, "%s: iterations: graph %lld, eager %lld", label,
               (long long)got->iterations, (long long)want->iterations);
  cr_expect(memcmp(&got->learning_rate, &want->learning_rate, sizeof(float)) == 0,
            "%s: learning rate: graph %.9g, eager %.9g", label, got->learning_rate, want->learning_rate);
  if (want->has_loss_scale)
    cr_expect(memcmp(&got->loss_scale, &want->loss_scale, sizeof(float)) == 0, "%s: loss scale: graph %g, eager %g",
              label, got->loss_scale, want->loss_scale);
  cr_assert_eq(got->param_bytes, want->param_bytes);
  size_t differing = 0, first = 0;
  for (size_t b = 0; b < want->param_bytes; b++)
    if (got->params[b] != want->params[b]) {
      if (!differing) first = b;
      differing++;
    }
  cr_expect_eq(differing, 0, "%s: %zu parameter bytes differ between graph replays and eager steps (first: byte %zu)",
               label, differing, first);
  cr_assert_eq(got->num_weights, want->num_weights, "%s: state entry counts differ", label);
  for (int i = 0; i < want->num_weights; i++) {
    const cuoptimWeightInfo_t *a = &got->infos[i], *b = &want->infos[i];
    cr_assert(strcmp(a->name, b->name) == 0 && a->count == b->count, "%s: state entry %d: \"%s\" (%zu) vs \"%s\" (%zu)",
              label, i, a->name, a->count, b->name, b->count);
    size_t bad = 0, at = 0;
    for (size_t j = 0; j < b->count; j++)
      if (memcmp(&got->weights[i][j], &want->weights[i][j], sizeof(double)) != 0) {
        if (!bad) at = j;
        bad++;
      }
    cr_expect_eq(bad, 0, "%s: state entry \"%s\": %zu of %zu elements differ (first [%zu]: graph %.9g, eager %.9g)",
                 label, b->name, bad, b->count, at, bad ? got->weights[i][at] : 0.0, bad ? want->weights[i][at] : 0.0);
  }
}

/* ---- the protocol ------------------------------------------------------------------------------------ */

/* want_loss_scale: the dynamic loss scale both must end with (0: no dynamic loss scale). */
static void check_graph_replay(const cuoptimConfig_t *cfg, cuoptimDtype_t param_dtype, cuoptimDtype_t grad_dtype,
                               int64_t want_iterations, float want_loss_scale, const char *label) {
  NEED_GPU();
  OK(cuoptimConfigValidate(cfg));
  CUDA_OK(cudaSetDevice(0));
  cudaStream_t stream = NULL;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  side_t eager, graphed;
  make_side(&eager, cfg, param_dtype, grad_dtype);
  make_side(&graphed, cfg, param_dtype, grad_dtype);
  unsigned char *staging = NULL; /* pinned: the copies are truly asynchronous */
  CUDA_OK(cudaMallocHost((void **)&staging, eager.pool * test_dtype_bytes(grad_dtype)));
  memset(staging, 0, eager.pool * test_dtype_bytes(grad_dtype));

  /* Step 0, eager on both (see the file comment: the first step builds the state). */
  fill_gradients(staging, &eager, 0);
  upload_gradients(&eager, staging, stream);
  upload_gradients(&graphed, staging, stream);
  OK(apply(&eager, stream));
  OK(apply(&graphed, stream));
  CUDA_OK(cudaStreamSynchronize(stream));

  /* Capture one step of `graphed`: nothing runs now. */
  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  cuoptimStatus_t captured = apply(&graphed, stream);
  char message[1024];
  snprintf(message, sizeof message, "%s", cuoptimGetLastErrorMessage());
  cudaError_t ended = cudaStreamEndCapture(stream, &graph); /* always leave capture mode first */
  cr_assert_eq(captured, CUOPTIM_STATUS_SUCCESS, "%s: cuoptimApplyGradients under stream capture: %d (%s): %s", label,
               (int)captured, cuoptimGetStatusString(captured), message);
  CUDA_OK(ended);
  cr_assert_not_null(graph);
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));

  for (int step = 1; step <= REPLAYS; step++) {
    CUDA_OK(cudaStreamSynchronize(stream)); /* the previous copies have left the staging buffer */
    fill_gradients(staging, &eager, step);
    upload_gradients(&eager, staging, stream);
    upload_gradients(&graphed, staging, stream);
    OK(apply(&eager, stream));
    CUDA_OK(cudaGraphLaunch(exec, stream));
  }
  CUDA_OK(cudaStreamSynchronize(stream));

  snapshot_t want, got;
  take_snapshot(&eager, cfg, &want);
  take_snapshot(&graphed, cfg, &got);
  cr_expect_eq(want.iterations, want_iterations, "%s: eager iterations %lld, want %lld", label,
               (long long)want.iterations, (long long)want_iterations);
  cr_expect_eq(got.iterations, want_iterations, "%s: iterations after %d replays %lld, want %lld (the eager count)",
               label, REPLAYS, (long long)got.iterations, (long long)want_iterations);
  if (want_loss_scale != 0.0f)
    cr_expect_eq(got.loss_scale, want_loss_scale, "%s: loss scale after %d replays %g, want %g", label, REPLAYS,
                 got.loss_scale, want_loss_scale);
  expect_identical(&got, &want, label);

  free_snapshot(&want);
  free_snapshot(&got);
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaFreeHost(staging));
  free_side(&eager);
  free_side(&graphed);
  CUDA_OK(cudaStreamDestroy(stream));
}

/* CosineDecay with a linear warm-up over raw steps 0..2, then decay over 5 steps, then the floor:
 * the 8 steps cover all three pieces, evaluated on the device from the iteration counter. */
static void set_cosine_warmup(cuoptimConfig_t *c) {
  OK(cuoptimScheduleInit(&c->learning_rate, CUOPTIM_SCHEDULE_COSINE));
  c->learning_rate.initial_learning_rate = 0.001;
  c->learning_rate.decay_steps = 4;
  c->learning_rate.alpha = 0.1;
  c->learning_rate.warmup_target = 0.01;
  c->learning_rate.warmup_steps = 3;
}

Test(cuda_graph, replay_with_cosine_warmup_schedule_matches_eager) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  set_cosine_warmup(&c);
  check_graph_replay(&c, CUOPTIM_FLOAT32, CUOPTIM_FLOAT32, 1 + REPLAYS, 0.0f, "Adam + CosineDecay warm-up");
}

/* Finite gradients: every step is good, so with dynamic_growth_steps 2 the scale doubles on steps
 * 2, 4, 6 and 8: 1024 -> 16384, all on the device. */
Test(cuda_graph, replay_with_growing_dynamic_loss_scale_matches_eager) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.dynamic_loss_scale = 1;
  c.initial_scale = 1024.0;
  c.dynamic_growth_steps = 2;
  check_graph_replay(&c, CUOPTIM_FLOAT32, CUOPTIM_FLOAT32, 1 + REPLAYS, 16384.0f, "Adam + dynamic loss scale");
}

Test(cuda_graph, replay_with_global_clipnorm_matches_eager) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.global_clipnorm = 1.0;
  check_graph_replay(&c, CUOPTIM_FLOAT32, CUOPTIM_FLOAT32, 1 + REPLAYS, 0.0f, "Adam + global_clipnorm");
}

/* 8 raw steps with accumulation 2: 4 updates, public iterations 4. */
Test(cuda_graph, replay_with_gradient_accumulation_matches_eager) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.gradient_accumulation_steps = 2;
  check_graph_replay(&c, CUOPTIM_FLOAT32, CUOPTIM_FLOAT32, (1 + REPLAYS) / 2, 0.0f, "Adam + gradient accumulation 2");
}

/* Nadam's u_product lives on the device and advances in the prologue kernel. */
Test(cuda_graph, replay_nadam_matches_eager) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_NADAM);
  check_graph_replay(&c, CUOPTIM_FLOAT32, CUOPTIM_FLOAT32, 1 + REPLAYS, 0.0f, "Nadam");
}

/* Lamb: three kernels per update (moments and norms, trust ratio, apply). */
Test(cuda_graph, replay_lamb_matches_eager) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_LAMB);
  check_graph_replay(&c, CUOPTIM_FLOAT32, CUOPTIM_FLOAT32, 1 + REPLAYS, 0.0f, "Lamb");
}

Test(cuda_graph, replay_lamb_with_every_feature_matches_eager) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_LAMB);
  set_cosine_warmup(&c);
  c.gradient_accumulation_steps = 2;
  c.global_clipnorm = 1.0;
  c.weight_decay = 0.01;
  c.use_ema = 1;
  c.ema_momentum = 0.9;
  c.ema_overwrite_frequency = 3;
  check_graph_replay(&c, CUOPTIM_FLOAT32, CUOPTIM_FLOAT32, (1 + REPLAYS) / 2, 0.0f,
                     "Lamb + schedule + accumulation + global_clipnorm + weight decay + EMA");
}

/* Muon: the fused stages and the cuBLAS products (their stream and workspace set per step) are
 * captured; each replay runs them all again. */
static cuoptimConfig_t muon_config(void) {
  cuoptimConfig_t c = test_config(CUOPTIM_MUON);
  c.exclude_embeddings = 0; /* embedding/embeddings: a matrix of MUON_SHAPES */
  return c;
}

Test(cuda_graph, replay_muon_matches_eager) {
  NEED_GPU();
  cuoptimConfig_t c = muon_config();
  check_graph_replay(&c, CUOPTIM_FLOAT32, CUOPTIM_FLOAT32, 1 + REPLAYS, 0.0f, "Muon");
}

Test(cuda_graph, replay_muon_with_every_feature_matches_eager) {
  NEED_GPU();
  cuoptimConfig_t c = muon_config();
  set_cosine_warmup(&c);
  c.gradient_accumulation_steps = 2;
  c.clipnorm = 1.0;
  c.use_ema = 1;
  c.ema_momentum = 0.9;
  c.ema_overwrite_frequency = 3;
  check_graph_replay(&c, CUOPTIM_FLOAT32, CUOPTIM_FLOAT32, (1 + REPLAYS) / 2, 0.0f,
                     "Muon + schedule + accumulation + clipnorm + EMA");
}

Test(cuda_graph, replay_float16_muon_dynamic_loss_scale_matches_eager) {
  NEED_GPU();
  cuoptimConfig_t c = muon_config();
  c.dynamic_loss_scale = 1;
  c.initial_scale = 1024.0;
  c.dynamic_growth_steps = 2;
  check_graph_replay(&c, CUOPTIM_FLOAT16, CUOPTIM_FLOAT16, 1 + REPLAYS, 16384.0f, "Muon float16 + dynamic loss scale");
}

/* Adafactor: three kernels per update (moments, RMS, apply); its per-variable alpha_t and clip
 * denominators are formed on the device each replay. */
Test(cuda_graph, replay_adafactor_matches_eager) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAFACTOR);
  check_graph_replay(&c, CUOPTIM_FLOAT32, CUOPTIM_FLOAT32, 1 + REPLAYS, 0.0f, "Adafactor");
}

Test(cuda_graph, replay_bfloat16_adafactor_with_every_feature_matches_eager) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAFACTOR);
  set_cosine_warmup(&c);
  c.gradient_accumulation_steps = 2;
  c.clipnorm = 1.0;
  c.weight_decay = 0.01;
  c.use_ema = 1;
  c.ema_momentum = 0.9;
  c.ema_overwrite_frequency = 3;
  check_graph_replay(&c, CUOPTIM_BFLOAT16, CUOPTIM_BFLOAT16, (1 + REPLAYS) / 2, 0.0f,
                     "bfloat16 Adafactor + schedule + accumulation + clipnorm + weight decay + EMA");
}

Test(cuda_graph, replay_adafactor_dynamic_loss_scale_matches_eager) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAFACTOR);
  c.dynamic_loss_scale = 1;
  c.initial_scale = 1024.0;
  c.dynamic_growth_steps = 2;
  check_graph_replay(&c, CUOPTIM_FLOAT32, CUOPTIM_FLOAT32, 1 + REPLAYS, 16384.0f, "Adafactor + dynamic loss scale");
}

/* The usual mixed-precision loop: float16 parameters (fp32 masters inside), float16 gradients,
 * dynamic loss scaling, AdamW. */
Test(cuda_graph, replay_float16_adamw_dynamic_loss_scale_matches_eager) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAMW);
  c.learning_rate.initial_learning_rate = 0.01;
  c.dynamic_loss_scale = 1;
  c.initial_scale = 1024.0;
  c.dynamic_growth_steps = 2;
  check_graph_replay(&c, CUOPTIM_FLOAT16, CUOPTIM_FLOAT16, 1 + REPLAYS, 16384.0f, "AdamW float16 + dynamic loss scale");
}

/* Capturing the very first step. Reading the code: cuoptimApplyGradients checks the gradients
 * (cudaPointerGetAttributes, a query that capture allows), then, before building the state, asks
 * whether the stream is capturing (cudaStreamIsCapturing, allowed too): it is, so it returns
 * CUOPTIM_STATUS_INVALID_STATE with a message naming the capture, before anything is allocated,
 * enqueued or recorded. The capture stays valid and ends with an empty graph, and the optimizer
 * is as it was: a later eager step is its first step, identical to a fresh optimizer's. */
Test(cuda_graph, capturing_the_first_step_fails_cleanly_and_leaves_the_optimizer_usable) {
  NEED_GPU();
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.global_clipnorm = 1.0;
  CUDA_OK(cudaSetDevice(0));
  cudaStream_t stream = NULL;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  side_t first, fresh;
  make_side(&first, &c, CUOPTIM_FLOAT32, CUOPTIM_FLOAT32);
  make_side(&fresh, &c, CUOPTIM_FLOAT32, CUOPTIM_FLOAT32);
  unsigned char *staging = NULL;
  CUDA_OK(cudaMallocHost((void **)&staging, first.pool * 4));
  memset(staging, 0, first.pool * 4);
  fill_gradients(staging, &first, 0);
  upload_gradients(&first, staging, stream);
  upload_gradients(&fresh, staging, stream);
  CUDA_OK(cudaStreamSynchronize(stream));

  cudaGraph_t graph = NULL;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  cuoptimStatus_t status = apply(&first, stream);
  char message[1024];
  snprintf(message, sizeof message, "%s", cuoptimGetLastErrorMessage());
  cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  (void)cudaGetLastError();
  if (graph) CUDA_OK(cudaGraphDestroy(graph));
  cr_expect_eq(status, CUOPTIM_STATUS_INVALID_STATE, "capturing the first step: status %d (%s), want INVALID_STATE: %s",
               (int)status, cuoptimGetStatusString(status), message);
  cr_expect(strstr(message, "cuoptimApplyGradients") != NULL && strstr(message, "capturing a CUDA graph") != NULL,
            "the message should name the call and the capture: \"%s\"", message);
  cr_expect_eq(ended, cudaSuccess, "cudaStreamEndCapture: %s, want cudaSuccess (nothing was captured)",
               cudaGetErrorName(ended));

  /* Out of capture: the optimizer still works, and its first real step is a first step. */
  OK(apply(&first, stream));
  OK(apply(&fresh, stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  snapshot_t got, want;
  take_snapshot(&first, &c, &got);
  take_snapshot(&fresh, &c, &want);
  cr_expect_eq(got.iterations, 1, "iterations after the failed capture and one eager step: %lld",
               (long long)got.iterations);
  expect_identical(&got, &want, "first step after a failed capture vs a fresh optimizer");
  free_snapshot(&got);
  free_snapshot(&want);
  CUDA_OK(cudaFreeHost(staging));
  free_side(&first);
  free_side(&fresh);
  CUDA_OK(cudaStreamDestroy(stream));
}

/* Two float32 sides of one config, each with gradient pools P (its own `grads`: step-1 values)
 * and Q (step-2 values), for steps that switch pointers between eager steps and replays; each
 * has taken its first step, on P. */
typedef struct {
  cudaStream_t stream;
  side_t eager, graphed;
  unsigned char *q_eager, *q_graphed;
} two_pools_t;

static void make_two_pools(two_pools_t *t, const cuoptimConfig_t *cfg) {
  CUDA_OK(cudaSetDevice(0));
  CUDA_OK(cudaStreamCreateWithFlags(&t->stream, cudaStreamNonBlocking));
  make_side(&t->eager, cfg, CUOPTIM_FLOAT32, CUOPTIM_FLOAT32);
  make_side(&t->graphed, cfg, CUOPTIM_FLOAT32, CUOPTIM_FLOAT32);
  const size_t bytes = t->eager.pool * sizeof(float);
  unsigned char *staging = NULL;
  CUDA_OK(cudaMalloc((void **)&t->q_eager, bytes));
  CUDA_OK(cudaMalloc((void **)&t->q_graphed, bytes));
  CUDA_OK(cudaMallocHost((void **)&staging, bytes));
  memset(staging, 0, bytes);
  fill_gradients(staging, &t->eager, 1);
  CUDA_OK(cudaMemcpy(t->eager.grads, staging, bytes, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(t->graphed.grads, staging, bytes, cudaMemcpyHostToDevice));
  fill_gradients(staging, &t->eager, 2);
  CUDA_OK(cudaMemcpy(t->q_eager, staging, bytes, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(t->q_graphed, staging, bytes, cudaMemcpyHostToDevice));
  CUDA_OK(cudaFreeHost(staging));
  OK(apply(&t->eager, t->stream)); /* the first step builds the state: eager on both sides */
  OK(apply(&t->graphed, t->stream));
}

/* Both sides take a last step on pool Q; then their state must be the same bits. */
static void expect_pools_identical(two_pools_t *t, const cuoptimConfig_t *cfg, int64_t iterations, const char *what) {
  OK(apply_from(&t->eager, t->q_eager, t->stream));
  OK(apply_from(&t->graphed, t->q_graphed, t->stream));
  CUDA_OK(cudaStreamSynchronize(t->stream));
  snapshot_t want, got;
  take_snapshot(&t->eager, cfg, &want);
  take_snapshot(&t->graphed, cfg, &got);
  cr_expect_eq(want.iterations, iterations, "%s: iterations %lld", what, (long long)want.iterations);
  expect_identical(&got, &want, what);
  free_snapshot(&want);
  free_snapshot(&got);
}

static void free_two_pools(two_pools_t *t) {
  CUDA_OK(cudaFree(t->q_eager));
  CUDA_OK(cudaFree(t->q_graphed));
  free_side(&t->eager);
  free_side(&t->graphed);
  CUDA_OK(cudaStreamDestroy(t->stream));
}

/* Graph replays and eager steps with OTHER gradient pointers on the same optimizer: the graph was
 * captured with pool P; eager steps use pool Q. A replay reads P's pointers from the table written
 * when it was captured, the eager steps Q's from theirs — the same sequence run eagerly (P, then
 * Q, P, Q, ...) must give identical bits. */
Test(cuda_graph, replays_interleaved_with_eager_steps_on_other_pointers_match_eager) {
  NEED_GPU();
  cuoptimConfig_t cfg = test_config(CUOPTIM_ADAM);
  cfg.learning_rate.initial_learning_rate = 0.01;
  two_pools_t t;
  make_two_pools(&t, &cfg);
  cudaStream_t stream = t.stream;
  side_t *eager = &t.eager, *graphed = &t.graphed;
  unsigned char *q_eager = t.q_eager, *q_graphed = t.q_graphed;
  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  cuoptimStatus_t captured = apply(graphed, stream);
  cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  OK(captured);
  CUDA_OK(ended);
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  for (int round = 0; round < 3; round++) {
    OK(apply_from(eager, q_eager, stream));
    OK(apply(eager, stream));
    OK(apply_from(graphed, q_graphed, stream));
    CUDA_OK(cudaGraphLaunch(exec, stream));
  }
  expect_pools_identical(&t, &cfg, 8, "replays interleaved with eager steps on other pointers");
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  free_two_pools(&t);
}

/* Two captures in a row, on pools P and Q, with no eager step between: the first takes the table
 * the optimizer holds ready for a capture, the second finds none (a capture cannot allocate) and
 * writes the eager table from its graph instead, after which eager steps upload every entry. The
 * replays of both, interleaved with eager steps on P, must give the bits of the same sequence run
 * eagerly. */
Test(cuda_graph, back_to_back_captures_on_other_pointers_match_eager) {
  NEED_GPU();
  cuoptimConfig_t cfg = test_config(CUOPTIM_ADAM);
  cfg.learning_rate.initial_learning_rate = 0.01;
  cfg.clipnorm = 1.0;
  two_pools_t t;
  make_two_pools(&t, &cfg);
  cudaStream_t stream = t.stream;
  side_t *eager = &t.eager, *graphed = &t.graphed;
  unsigned char *q_eager = t.q_eager, *q_graphed = t.q_graphed;
  cudaGraph_t graphs[2] = {NULL, NULL};
  cudaGraphExec_t execs[2] = {NULL, NULL};
  for (int g = 0; g < 2; g++) {
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    cuoptimStatus_t captured = g == 0 ? apply(graphed, stream) : apply_from(graphed, q_graphed, stream);
    cudaError_t ended = cudaStreamEndCapture(stream, &graphs[g]);
    OK(captured);
    CUDA_OK(ended);
    CUDA_OK(cudaGraphInstantiate(&execs[g], graphs[g], 0));
  }
  for (int round = 0; round < 2; round++) {
    OK(apply_from(eager, q_eager, stream));
    OK(apply(eager, stream));
    OK(apply(eager, stream));
    CUDA_OK(cudaGraphLaunch(execs[1], stream));
    OK(apply(graphed, stream));
    CUDA_OK(cudaGraphLaunch(execs[0], stream));
  }
  expect_pools_identical(&t, &cfg, 8, "back-to-back captures on other pointers, replays among eager steps");
  for (int g = 0; g < 2; g++) {
    CUDA_OK(cudaGraphExecDestroy(execs[g]));
    CUDA_OK(cudaGraphDestroy(graphs[g]));
  }
  free_two_pools(&t);
}

/* ---- many variables: the captured gradient-table upload spans several scatter launches ------------- */

#define MANY_VARS 5000 /* three batches of the gradient table (1,984 entries each) */
#define MANY_REPLAYS 3

static size_t many_size(int k) { return (size_t)(k % 7) + 1; }

/* A side of MANY_VARS float32 variables packed one after another (most of them unaligned for
 * vector loads), in the side_t shape take_snapshot reads (pool, params, param_dtype, opt). */
static void make_many_side(side_t *s, const cuoptimConfig_t *cfg, size_t *offsets) {
  memset(s, 0, sizeof *s);
  s->param_dtype = s->grad_dtype = CUOPTIM_FLOAT32;
  for (int k = 0; k < MANY_VARS; k++) {
    offsets[k] = s->pool;
    s->pool += many_size(k);
  }
  float *image = malloc(s->pool * sizeof *image);
  cr_assert(image);
  for (int k = 0; k < MANY_VARS; k++)
    for (size_t i = 0; i < many_size(k); i++) image[offsets[k] + i] = param_value(k % 5, (size_t)k * 8 + i);
  CUDA_OK(cudaMalloc((void **)&s->params, s->pool * sizeof(float)));
  CUDA_OK(cudaMalloc((void **)&s->grads, s->pool * sizeof(float)));
  CUDA_OK(cudaMemcpy(s->params, image, s->pool * sizeof(float), cudaMemcpyHostToDevice));
  free(image);
  OK(cuoptimCreate(&s->opt, cfg, CUOPTIM_BACKEND_CUDA, 0));
  char name[32];
  for (int k = 0; k < MANY_VARS; k++) {
    cuoptimVariable_t v;
    snprintf(name, sizeof name, "layer_%d/kernel", k);
    OK(cuoptimAddVariable(s->opt, name, s->params + offsets[k] * sizeof(float), CUOPTIM_FLOAT32, many_size(k), &v));
  }
}

static cuoptimStatus_t apply_many(const side_t *s, const size_t *offsets, cudaStream_t stream) {
  static cuoptimGradient_t list[MANY_VARS];
  for (int k = 0; k < MANY_VARS; k++) {
    list[k].variable = k;
    list[k].grad = s->grads + offsets[k] * sizeof(float);
    list[k].dtype = CUOPTIM_FLOAT32;
  }
  return cuoptimApplyGradients(s->opt, MANY_VARS, list, stream);
}

Test(cuda_graph, replay_with_five_thousand_variables_matches_eager) {
  NEED_GPU();
  cuoptimConfig_t cfg = test_config(CUOPTIM_ADAM);
  cfg.learning_rate.initial_learning_rate = 0.01;
  cfg.global_clipnorm = 1.0;
  CUDA_OK(cudaSetDevice(0));
  cudaStream_t stream = NULL;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  static size_t offsets[MANY_VARS];
  side_t eager, graphed;
  make_many_side(&eager, &cfg, offsets);
  make_many_side(&graphed, &cfg, offsets);
  float *staging = NULL;
  CUDA_OK(cudaMallocHost((void **)&staging, eager.pool * sizeof(float)));
  cudaGraphExec_t exec = NULL;
  for (int step = 0; step <= MANY_REPLAYS; step++) {
    for (size_t i = 0; i < eager.pool; i++) staging[i] = grad_value((int)(i % 5), step, i);
    CUDA_OK(cudaMemcpyAsync(eager.grads, staging, eager.pool * sizeof(float), cudaMemcpyHostToDevice, stream));
    CUDA_OK(cudaMemcpyAsync(graphed.grads, staging, graphed.pool * sizeof(float), cudaMemcpyHostToDevice, stream));
    OK(apply_many(&eager, offsets, stream));
    if (step == 0) {
      OK(apply_many(&graphed, offsets, stream)); /* the first step builds the state: eager */
    } else {
      if (step == 1) {
        cudaGraph_t graph = NULL;
        CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
        cuoptimStatus_t captured = apply_many(&graphed, offsets, stream);
        cudaError_t ended = cudaStreamEndCapture(stream, &graph);
        cr_assert_eq(captured, CUOPTIM_STATUS_SUCCESS, "captured step: %s", cuoptimGetLastErrorMessage());
        CUDA_OK(ended);
        CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
        CUDA_OK(cudaGraphDestroy(graph));
      }
      CUDA_OK(cudaGraphLaunch(exec, stream));
      if (step == MANY_REPLAYS) CUDA_OK(cudaGraphExecDestroy(exec));
    }
    CUDA_OK(cudaStreamSynchronize(stream));
  }
  snapshot_t got, want;
  take_snapshot(&graphed, &cfg, &got);
  take_snapshot(&eager, &cfg, &want);
  cr_expect_eq(want.iterations, MANY_REPLAYS + 1);
  expect_identical(&got, &want, "5,000 variables, Adam + global_clipnorm");
  free_snapshot(&got);
  free_snapshot(&want);
  CUDA_OK(cudaFreeHost(staging));
  free_side(&eager);
  free_side(&graphed);
  CUDA_OK(cudaStreamDestroy(stream));
}

/* ---- a MultiOptimizer's step ------------------------------------------------------------------ */

#define MULTI_COUNT 1000
#define MULTI_BIAS 7

typedef struct {
  cuoptimOptimizer_t opt;
  float *kernel, *bias, *grad_kernel, *grad_bias;
} multi_side_t;

/* SGD with momentum (the default, for "dense/bias") and Adam ("dense/kernel"), the same values
 * and gradients on every side. */
static void multi_side_make(multi_side_t *s, const float *kernel, const float *bias) {
  cuoptimConfig_t subs[2] = {test_config(CUOPTIM_ADAM), test_config(CUOPTIM_SGD)};
  subs[1].momentum = 0.9;
  static const char *const patterns[] = {"dense/kernel"};
  static const int uses[] = {0};
  const cuoptimMultiConfig_t mc = {.num_optimizers = 2, .optimizers = subs, .num_patterns = 1, .patterns = patterns,
                                   .pattern_optimizer = uses, .default_optimizer = 1,
                                   .loss_scale_factor = CUOPTIM_NONE};
  OK(cuoptimCreateMulti(&s->opt, &mc, CUOPTIM_BACKEND_CUDA, 0));
  s->kernel = test_mem_from(CUOPTIM_BACKEND_CUDA, kernel, MULTI_COUNT);
  s->bias = test_mem_from(CUOPTIM_BACKEND_CUDA, bias, MULTI_BIAS);
  s->grad_kernel = test_mem_from(CUOPTIM_BACKEND_CUDA, kernel, MULTI_COUNT);
  s->grad_bias = test_mem_from(CUOPTIM_BACKEND_CUDA, bias, MULTI_BIAS);
  cuoptimVariable_t v;
  OK(cuoptimAddVariable(s->opt, "dense/kernel", s->kernel, CUOPTIM_FLOAT32, MULTI_COUNT, &v));
  OK(cuoptimAddVariable(s->opt, "dense/bias", s->bias, CUOPTIM_FLOAT32, MULTI_BIAS, &v));
}

static cuoptimStatus_t multi_side_step(multi_side_t *s, cudaStream_t stream) {
  const cuoptimGradient_t grads[2] = {{0, s->grad_kernel, CUOPTIM_FLOAT32}, {1, s->grad_bias, CUOPTIM_FLOAT32}};
  return cuoptimApplyGradients(s->opt, 2, grads, stream);
}

static void multi_side_free(multi_side_t *s) {
  OK(cuoptimDestroy(s->opt));
  test_mem_free(CUOPTIM_BACKEND_CUDA, s->kernel);
  test_mem_free(CUOPTIM_BACKEND_CUDA, s->bias);
  test_mem_free(CUOPTIM_BACKEND_CUDA, s->grad_kernel);
  test_mem_free(CUOPTIM_BACKEND_CUDA, s->grad_bias);
}

static int64_t iterations_of(cuoptimOptimizer_t opt) {
  int64_t n = -1;
  OK(cuoptimGetIterations(opt, &n));
  return n;
}

/* Captured once, replayed: each replay is a step of both sub-optimizers and of the
 * MultiOptimizer (its count is its first sub-optimizer's steps), bit for bit the eager steps. A
 * sub-optimizer's own step cannot be captured (the MultiOptimizer could not tell its replays). */
Test(cuda_graph, replay_multi_optimizer_matches_eager) {
  NEED_GPU();
  float kernel[MULTI_COUNT], bias[MULTI_BIAS];
  for (int i = 0; i < MULTI_COUNT; i++) kernel[i] = test_pseudo_random(SEED, 1, (uint64_t)i);
  for (int i = 0; i < MULTI_BIAS; i++) bias[i] = test_pseudo_random(SEED, 2, (uint64_t)i);
  CUDA_OK(cudaSetDevice(0));
  cudaStream_t stream = NULL;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  multi_side_t eager, replayed;
  multi_side_make(&eager, kernel, bias);
  multi_side_make(&replayed, kernel, bias);
  const int steps = 1 + REPLAYS;
  for (int s = 0; s < steps; s++) OK(multi_side_step(&eager, stream));

  OK(multi_side_step(&replayed, stream)); /* the first step builds the state: not capturable */
  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  OK(multi_side_step(&replayed, stream));
  cuoptimOptimizer_t sub = NULL;
  OK(cuoptimGetSubOptimizer(replayed.opt, 1, &sub));
  const cuoptimGradient_t lone = {0, replayed.grad_bias, CUOPTIM_FLOAT32};
  cuoptimStatus_t refused = cuoptimApplyGradients(sub, 1, &lone, stream);
  char message[1024];
  snprintf(message, sizeof message, "%s", cuoptimGetLastErrorMessage());
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  cr_expect_eq(refused, CUOPTIM_STATUS_INVALID_STATE, "a sub-optimizer's own step captured: status %d", (int)refused);
  cr_expect(strstr(message, "sub-optimizer's own step") != NULL, "message: %s", message);
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  for (int r = 0; r < REPLAYS; r++) CUDA_OK(cudaGraphLaunch(exec, stream));
  CUDA_OK(cudaStreamSynchronize(stream));

  cr_expect_eq(iterations_of(replayed.opt), steps, "the MultiOptimizer's iterations after %d replays: %lld", REPLAYS,
               (long long)iterations_of(replayed.opt));
  cr_expect_eq(iterations_of(eager.opt), steps);
  for (int k = 0; k < 2; k++) {
    cuoptimOptimizer_t a = NULL, b = NULL;
    OK(cuoptimGetSubOptimizer(eager.opt, k, &a));
    OK(cuoptimGetSubOptimizer(replayed.opt, k, &b));
    cr_expect_eq(iterations_of(a), iterations_of(b), "sub-optimizer %d's iterations", k);
  }
  float got[MULTI_COUNT], want[MULTI_COUNT];
  OK(cuoptimSynchronize(eager.opt));
  OK(cuoptimSynchronize(replayed.opt));
  test_mem_download(CUOPTIM_BACKEND_CUDA, got, replayed.kernel, sizeof got);
  test_mem_download(CUOPTIM_BACKEND_CUDA, want, eager.kernel, sizeof want);
  cr_expect(memcmp(got, want, sizeof got) == 0, "dense/kernel (Adam): replays differ from eager steps");
  cr_expect(memcmp(got, kernel, sizeof got) != 0, "dense/kernel did not move");
  test_mem_download(CUOPTIM_BACKEND_CUDA, got, replayed.bias, MULTI_BIAS * sizeof(float));
  test_mem_download(CUOPTIM_BACKEND_CUDA, want, eager.bias, MULTI_BIAS * sizeof(float));
  cr_expect(memcmp(got, want, MULTI_BIAS * sizeof(float)) == 0, "dense/bias (SGD): replays differ from eager steps");
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  multi_side_free(&eager);
  multi_side_free(&replayed);
  CUDA_OK(cudaStreamDestroy(stream));
}
