/*
 * test_host_backend.c — the host backend's loops and threads (host/backend_host.c,
 * host/host_threads.c).
 *
 * - Element functions: every step of every optimizer, with the features that change the element
 *   path (weight decay with an exclusion, clipnorm, global_clipnorm, clipvalue, loss_scale_factor,
 *   gradient accumulation, dynamic loss scaling with a skipped step, EMA with overwrite), on
 *   float32, float16 and bfloat16 parameters and gradients at odd byte offsets, on variables that
 *   span several blocks and on many small ones, gives bit for bit what the element functions of
 *   cuda/rules.h give when called one element at a time (the reference below, which is how the host
 *   backend was written before its loops were generated for constant flags), from the same state
 *   and the step's own scalars.
 * - Threads: parameters and the whole state are the same bits whatever CUOPTIM_HOST_THREADS is.
 * - Sums of squares follow the documented order (lanes within a block, blocks in order).
 * - CUOPTIM_HOST_THREADS values that are not a whole number from 1 to 1024 make cuoptimCreate fail
 *   with INVALID_VALUE, naming the variable.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuoptim.h"
#include "internal.h"
#include "testutil.h"

/* ---- configurations --------------------------------------------------------------------------- */

typedef struct {
  const char *name;
  cuoptimOptimizerKind_t kind;
  int variant;
} Kind;

static const Kind kinds[] = {
    {"sgd", CUOPTIM_SGD, 0},       {"sgd_momentum", CUOPTIM_SGD, 1}, {"sgd_nesterov", CUOPTIM_SGD, 2},
    {"rmsprop", CUOPTIM_RMSPROP, 0}, {"rmsprop_momentum", CUOPTIM_RMSPROP, 1},
    {"rmsprop_centered", CUOPTIM_RMSPROP, 2}, {"rmsprop_centered_momentum", CUOPTIM_RMSPROP, 3},
    {"adagrad", CUOPTIM_ADAGRAD, 0}, {"adadelta", CUOPTIM_ADADELTA, 0}, {"adam", CUOPTIM_ADAM, 0},
    {"adam_amsgrad", CUOPTIM_ADAM, 1}, {"adamw", CUOPTIM_ADAMW, 0}, {"adamax", CUOPTIM_ADAMAX, 0},
    {"nadam", CUOPTIM_NADAM, 0},   {"lion", CUOPTIM_LION, 0},       {"lamb", CUOPTIM_LAMB, 0},
    {"ftrl", CUOPTIM_FTRL, 0},     {"ftrl_power", CUOPTIM_FTRL, 1}, {"ftrl_power0", CUOPTIM_FTRL, 2},
};
#define NUM_KINDS ((int)(sizeof kinds / sizeof kinds[0]))

static const char *const features[] = {"plain", "weight_decay", "clipnorm", "global_clipnorm", "clipvalue",
                                       "loss_scale_factor", "accumulation", "dynamic_loss_scale", "ema", "mixed"};
#define NUM_FEATURES ((int)(sizeof features / sizeof features[0]))

static cuoptimConfig_t make_config(const Kind *k, const char *feature) {
  cuoptimConfig_t c = test_config(k->kind);
  if (k->kind == CUOPTIM_SGD) {
    c.learning_rate.initial_learning_rate = 0.05;
    if (k->variant) c.momentum = 0.9;
    c.nesterov = k->variant == 2;
  }
  if (k->kind == CUOPTIM_RMSPROP) {
    if (k->variant & 1) c.momentum = 0.8;
    c.centered = (k->variant & 2) != 0;
  }
  if (k->kind == CUOPTIM_ADAM) c.amsgrad = k->variant;
  if (k->kind == CUOPTIM_FTRL && k->variant == 1) {
    c.learning_rate_power = -0.7;
    c.l1_regularization_strength = 0.001;
    c.l2_regularization_strength = 0.01;
    c.l2_shrinkage_regularization_strength = 0.02;
    c.beta = 0.1;
  }
  if (k->kind == CUOPTIM_FTRL && k->variant == 2) c.learning_rate_power = 0.0;
  int mixed = strcmp(feature, "mixed") == 0;
  if (!strcmp(feature, "weight_decay") || mixed) c.weight_decay = 0.01;
  if (!strcmp(feature, "clipnorm")) c.clipnorm = 0.05;
  if (!strcmp(feature, "global_clipnorm") || mixed) c.global_clipnorm = 0.5;
  if (!strcmp(feature, "clipvalue")) c.clipvalue = 0.004;
  if (!strcmp(feature, "loss_scale_factor")) c.loss_scale_factor = 8.0;
  if (!strcmp(feature, "accumulation") || mixed) c.gradient_accumulation_steps = 3;
  if (!strcmp(feature, "ema") || mixed) {
    c.use_ema = 1;
    c.ema_overwrite_frequency = 3;
  }
  if (!strcmp(feature, "dynamic_loss_scale")) {
    c.dynamic_loss_scale = 1;
    c.initial_scale = 1024.0;
    c.dynamic_growth_steps = 2;
  }
  return c;
}

/* ---- data ------------------------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

/* |x| in [lo, hi], random sign, never zero. */
static float random_value(uint64_t i, float lo, float hi) {
  uint64_t h = mix64(i);
  float u = (float)(h >> 40) * (1.0f / 16777216.0f);
  float x = lo + (hi - lo) * u;
  return (h & 1) ? -x : x;
}

static size_t element_size(cuoptimDtype_t dtype) { return dtype == CUOPTIM_FLOAT32 ? 4 : 2; }

static void put(void *buffer, cuoptimDtype_t dtype, size_t i, float x) {
  if (dtype == CUOPTIM_FLOAT32) {
    memcpy((char *)buffer + 4 * i, &x, 4);
    return;
  }
  uint16_t bits = dtype == CUOPTIM_FLOAT16 ? cuoptim_float_to_half(x) : cuoptim_float_to_bfloat16(x);
  memcpy((char *)buffer + 2 * i, &bits, 2);
}

/* Variables: some span several blocks of 65,536 elements (with a ragged end), the small ones share
 * blocks' batches; together more than the size from which a stage runs on several threads. */
static const size_t big_sizes[] = {1, 7, 4095, 65537, 200003, 3};
#define NUM_BIG ((int)(sizeof big_sizes / sizeof big_sizes[0]))
#define NUM_SMALL 20
#define NUM_VARS (NUM_BIG + NUM_SMALL)
#define STEPS 6

static size_t var_size(int k) { return k < NUM_BIG ? big_sizes[k] : 4096 + (size_t)(k % 5); }

typedef struct {
  cuoptimOptimizer_t opt;
  cuoptimDtype_t param_dtype, grad_dtype;
  char *param_storage[NUM_VARS], *grad_storage[NUM_VARS];
  char *param[NUM_VARS], *grad[NUM_VARS];
  int dynamic;
} Run;

static void run_open(Run *r, const cuoptimConfig_t *c, cuoptimDtype_t param_dtype, cuoptimDtype_t grad_dtype,
                     int threads) {
  memset(r, 0, sizeof *r);
  char text[16];
  snprintf(text, sizeof text, "%d", threads);
  setenv("CUOPTIM_HOST_THREADS", text, 1);
  OK(cuoptimCreate(&r->opt, c, CUOPTIM_BACKEND_HOST, 0));
  unsetenv("CUOPTIM_HOST_THREADS");
  if (!CUOPTIM_IS_NONE(c->weight_decay)) OK(cuoptimExcludeFromWeightDecay(r->opt, "^v3$"));
  r->param_dtype = param_dtype;
  r->grad_dtype = grad_dtype;
  r->dynamic = c->dynamic_loss_scale;
  for (int k = 0; k < NUM_VARS; k++) {
    size_t n = var_size(k);
    r->param_storage[k] = malloc(n * element_size(param_dtype) + 8);
    r->grad_storage[k] = malloc(n * element_size(grad_dtype) + 8);
    cr_assert(r->param_storage[k] && r->grad_storage[k]);
    /* Odd byte offsets: the host backend takes buffers of any alignment. */
    r->param[k] = r->param_storage[k] + k % 3;
    r->grad[k] = r->grad_storage[k] + (k + 1) % 3;
    for (size_t i = 0; i < n; i++) put(r->param[k], param_dtype, i, random_value(((uint64_t)k << 40) + i, 0.01f, 0.1f));
    char name[16];
    snprintf(name, sizeof name, "v%d", k);
    cuoptimVariable_t v;
    OK(cuoptimAddVariable(r->opt, name, r->param[k], param_dtype, n, &v));
  }
}

/* Writes step s's gradients; returns how many are listed (variable 2 has none in steps 2 and 5). */
static int make_gradients(Run *r, int s, cuoptimGradient_t *grads) {
  int n = 0;
  for (int k = 0; k < NUM_VARS; k++) {
    if (k == 2 && (s == 2 || s == 5)) continue;
    float scale = r->dynamic ? 1024.0f : 1.0f;
    for (size_t i = 0; i < var_size(k); i++)
      put(r->grad[k], r->grad_dtype, i,
          scale * random_value(((uint64_t)(s + 1) << 56) ^ ((uint64_t)k << 40) ^ i, 1e-3f, 2e-2f));
    /* A skipped step with dynamic loss scaling: one infinity. */
    if (r->dynamic && s == 4 && k == 4) put(r->grad[k], r->grad_dtype, 12345, INFINITY);
    grads[n++] = (cuoptimGradient_t){k, r->grad[k], r->grad_dtype};
  }
  return n;
}

static void run_close(Run *r) {
  OK(cuoptimDestroy(r->opt));
  for (int k = 0; k < NUM_VARS; k++) {
    free(r->param_storage[k]);
    free(r->grad_storage[k]);
  }
}

/* ---- the reference: one element at a time, through the element functions ---------------------- */

static float load_element(const void *buffer, cuoptimDtype_t dtype, size_t i) {
  if (dtype == CUOPTIM_FLOAT32) {
    float x;
    memcpy(&x, (const char *)buffer + 4 * i, 4);
    return x;
  }
  uint16_t bits;
  memcpy(&bits, (const char *)buffer + 2 * i, 2);
  return dtype == CUOPTIM_FLOAT16 ? cuoptim_half_to_float(bits) : cuoptim_bfloat16_to_float(bits);
}

/* The float32 state of one variable as the reference sees it: working values (master or param),
 * slots, accumulator, average; and the parameter's bytes. */
typedef struct {
  size_t n;
  float *w, *slot[3], *acc, *average;
  unsigned char *param;
} Snapshot;

static float *copy_floats(const float *src, size_t n) {
  if (!src) return NULL;
  float *dst = malloc(n * sizeof *dst);
  cr_assert_not_null(dst);
  memcpy(dst, src, n * sizeof *dst);
  return dst;
}

static void snapshot(const Run *r, int k, Snapshot *s) {
  const cuoptimVariableRec *v = &r->opt->variables[k];
  s->n = v->local_count;
  s->w = malloc(s->n * sizeof *s->w);
  for (size_t i = 0; i < s->n; i++) s->w[i] = v->master ? v->master[i] : load_element(v->local_param, CUOPTIM_FLOAT32, i);
  for (int j = 0; j < 3; j++) s->slot[j] = copy_floats(v->slots[j], s->n);
  s->acc = copy_floats(v->accumulator, s->n);
  s->average = copy_floats(v->average, s->n);
  size_t bytes = s->n * element_size(v->dtype);
  s->param = malloc(bytes);
  memcpy(s->param, v->local_param, bytes);
}

static void snapshot_free(Snapshot *s) {
  free(s->w);
  for (int j = 0; j < 3; j++) free(s->slot[j]);
  free(s->acc);
  free(s->average);
  free(s->param);
}

/* The parameter's bytes after writing working value w at i (a half parameter gets its rounding). */
static void store_param(unsigned char *param, cuoptimDtype_t dtype, size_t i, float w) {
  put(param, dtype, i, w);
}

/* Applies one step to snapshot `s` of variable k, element by element, with the step's scalars
 * (opt->scalars, opt->tensors as the step left them). Lamb takes its trust ratio from there. */
static void reference_step(const Run *r, int k, const void *grad, Snapshot *s) {
  cuoptimOptimizer_t opt = r->opt;
  const cuoptimVariableRec *v = &opt->variables[k];
  const cuoptimRuleParams *p = &opt->prologue.rule;
  const cuoptimStepScalars *sc = opt->scalars;
  const cuoptimTensorScalars *t = &opt->tensors[k];
  if (sc->skip) return;
  float unused[3] = {0, 0, 0}, acc_unused = 0;
  if (grad) {
    for (size_t i = 0; i < s->n; i++) {
      float *s0 = s->slot[0] ? &s->slot[0][i] : &unused[0];
      float *s1 = s->slot[1] ? &s->slot[1][i] : &unused[1];
      float *s2 = s->slot[2] ? &s->slot[2][i] : &unused[2];
      float *acc = s->acc ? &s->acc[i] : &acc_unused;
      float raw = load_element(grad, r->grad_dtype, i);
      if (opt->config.kind == CUOPTIM_LAMB) {
        float decayed, update;
        if (!cuoptim_lamb_pass1_element(p, sc, t, v->use_weight_decay, raw, s->w[i], s0, s1, acc, &decayed, &update))
          continue;
        s->w[i] = cuoptim_lamb_pass2_element(p, sc, t, v->use_weight_decay, s->w[i], *s0, *s1);
        store_param(s->param, v->dtype, i, s->w[i]);
      } else if (cuoptim_update_element(p, sc, t, v->use_weight_decay, raw, &s->w[i], s0, s1, s2, acc, NULL)) {
        store_param(s->param, v->dtype, i, s->w[i]);
      }
    }
  }
  if (opt->config.use_ema)
    for (size_t i = 0; i < s->n; i++) {
      cuoptim_ema_element(sc, &s->w[i], &s->average[i]);
      store_param(s->param, v->dtype, i, s->w[i]);
    }
}

static void expect_floats(const float *want, const float *got, size_t n, const char *what, const char *label, int k,
                          int step) {
  if (!want && !got) return;
  cr_assert(want && got, "%s: %s of v%d present on one side only", label, what, k);
  for (size_t i = 0; i < n; i++)
    if (memcmp(&want[i], &got[i], 4) != 0)
      cr_assert_fail("%s step %d: %s of v%d[%zu] = %.9g, the element functions give %.9g", label, step, what, k, i,
                     (double)got[i], (double)want[i]);
}

static void compare_with_reference(const Run *r, const Snapshot *s, int k, const char *label, int step) {
  const cuoptimVariableRec *v = &r->opt->variables[k];
  float *w = malloc(s->n * sizeof *w);
  for (size_t i = 0; i < s->n; i++) w[i] = v->master ? v->master[i] : load_element(v->local_param, CUOPTIM_FLOAT32, i);
  expect_floats(s->w, w, s->n, "value", label, k, step);
  free(w);
  for (int j = 0; j < 3; j++) expect_floats(s->slot[j], v->slots[j], s->n, "slot", label, k, step);
  expect_floats(s->acc, v->accumulator, s->n, "accumulator", label, k, step);
  expect_floats(s->average, v->average, s->n, "average", label, k, step);
  cr_assert(memcmp(s->param, v->local_param, s->n * element_size(v->dtype)) == 0,
            "%s step %d: the parameter bytes of v%d differ from the element functions'", label, step, k);
}

/* all: every optimizer with every feature; else every optimizer plain and with "mixed", and Adam
 * and Lamb with every feature (the features' loops do not depend on the rule's). */
static void check_against_elements(cuoptimDtype_t param_dtype, cuoptimDtype_t grad_dtype, int all) {
  for (int ki = 0; ki < NUM_KINDS; ki++)
    for (int f = 0; f < NUM_FEATURES; f++) {
      if (!all && f != 0 && strcmp(features[f], "mixed") && kinds[ki].kind != CUOPTIM_ADAM &&
          kinds[ki].kind != CUOPTIM_LAMB)
        continue;
      char label[96];
      snprintf(label, sizeof label, "%s/%s", kinds[ki].name, features[f]);
      cuoptimConfig_t c = make_config(&kinds[ki], features[f]);
      Run r;
      run_open(&r, &c, param_dtype, grad_dtype, 2);
      int count;
      OK(cuoptimGetWeightCount(r.opt, &count)); /* builds the state */
      for (int s = 0; s < STEPS; s++) {
        cuoptimGradient_t grads[NUM_VARS];
        int n = make_gradients(&r, s, grads);
        Snapshot snaps[NUM_VARS];
        for (int k = 0; k < NUM_VARS; k++) snapshot(&r, k, &snaps[k]);
        OK(cuoptimApplyGradients(r.opt, n, grads, NULL));
        for (int k = 0; k < NUM_VARS; k++) {
          const void *grad = NULL;
          for (int j = 0; j < n; j++)
            if (grads[j].variable == k) grad = grads[j].grad;
          reference_step(&r, k, grad, &snaps[k]);
          compare_with_reference(&r, &snaps[k], k, label, s);
          snapshot_free(&snaps[k]);
        }
      }
      run_close(&r);
    }
}

Test(host_backend, float32_loops_match_the_element_functions, .timeout = 600) {
  check_against_elements(CUOPTIM_FLOAT32, CUOPTIM_FLOAT32, 1);
}

Test(host_backend, float16_loops_match_the_element_functions, .timeout = 600) {
  check_against_elements(CUOPTIM_FLOAT16, CUOPTIM_FLOAT16, 0);
}

Test(host_backend, bfloat16_loops_match_the_element_functions, .timeout = 600) {
  check_against_elements(CUOPTIM_BFLOAT16, CUOPTIM_BFLOAT16, 0);
}

Test(host_backend, bfloat16_params_with_float32_gradients_match_the_element_functions, .timeout = 600) {
  check_against_elements(CUOPTIM_BFLOAT16, CUOPTIM_FLOAT32, 0);
}

/* ---- the thread count changes nothing ---------------------------------------------------------- */

typedef struct {
  unsigned char *params[NUM_VARS];
  int num_weights;
  double *weights[256];
  size_t weight_count[256];
  unsigned char *finalized[NUM_VARS];
} Outcome;

static void run_to_outcome(const cuoptimConfig_t *c, cuoptimDtype_t dtype, int threads, Outcome *o) {
  Run r;
  run_open(&r, c, dtype, dtype, threads);
  for (int s = 0; s < STEPS; s++) {
    cuoptimGradient_t grads[NUM_VARS];
    int n = make_gradients(&r, s, grads);
    OK(cuoptimApplyGradients(r.opt, n, grads, NULL));
  }
  for (int k = 0; k < NUM_VARS; k++) {
    size_t bytes = var_size(k) * element_size(dtype);
    o->params[k] = malloc(bytes);
    memcpy(o->params[k], r.param[k], bytes);
  }
  OK(cuoptimGetWeightCount(r.opt, &o->num_weights));
  cr_assert_leq(o->num_weights, 256);
  for (int w = 0; w < o->num_weights; w++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(r.opt, w, &info));
    o->weight_count[w] = info.count;
    o->weights[w] = malloc(info.count * sizeof(double));
    OK(cuoptimGetWeights(r.opt, w, o->weights[w], info.count));
  }
  memset(o->finalized, 0, sizeof o->finalized);
  if (c->use_ema) {
    OK(cuoptimFinalizeVariableValues(r.opt, NULL));
    for (int k = 0; k < NUM_VARS; k++) {
      size_t bytes = var_size(k) * element_size(dtype);
      o->finalized[k] = malloc(bytes);
      memcpy(o->finalized[k], r.param[k], bytes);
    }
  }
  run_close(&r);
}

static void outcome_free(Outcome *o) {
  for (int k = 0; k < NUM_VARS; k++) {
    free(o->params[k]);
    free(o->finalized[k]);
  }
  for (int w = 0; w < o->num_weights; w++) free(o->weights[w]);
}

Test(host_backend, results_do_not_depend_on_the_thread_count, .timeout = 600) {
  static const int thread_counts[] = {2, 3};
  static const cuoptimDtype_t dtypes[] = {CUOPTIM_FLOAT32, CUOPTIM_BFLOAT16};
  for (int ki = 0; ki < NUM_KINDS; ki++)
    for (int f = 0; f < NUM_FEATURES; f++) {
      /* The features whose sums of squares the threads share (global_clipnorm is in "mixed"),
       * and the plain step; bfloat16 parameters with all of them. */
      int mixed = strcmp(features[f], "mixed") == 0;
      if (f != 0 && !mixed && strcmp(features[f], "clipnorm") && strcmp(features[f], "dynamic_loss_scale")) continue;
      cuoptimConfig_t c = make_config(&kinds[ki], features[f]);
      for (int d = 0; d < (mixed ? 2 : 1); d++) {
        Outcome one;
        run_to_outcome(&c, dtypes[d], 1, &one);
        for (int t = 0; t < 2; t++) {
          Outcome many;
          run_to_outcome(&c, dtypes[d], thread_counts[t], &many);
          for (int k = 0; k < NUM_VARS; k++) {
            size_t bytes = var_size(k) * element_size(dtypes[d]);
            cr_assert(memcmp(one.params[k], many.params[k], bytes) == 0, "%s/%s dtype %d: v%d differs with %d threads",
                      kinds[ki].name, features[f], (int)dtypes[d], k, thread_counts[t]);
            if (one.finalized[k])
              cr_assert(memcmp(one.finalized[k], many.finalized[k], bytes) == 0,
                        "%s/%s: finalized v%d differs with %d threads", kinds[ki].name, features[f], k,
                        thread_counts[t]);
          }
          cr_assert_eq(one.num_weights, many.num_weights);
          for (int w = 0; w < one.num_weights; w++)
            cr_assert(memcmp(one.weights[w], many.weights[w], one.weight_count[w] * sizeof(double)) == 0,
                      "%s/%s: state entry %d differs with %d threads", kinds[ki].name, features[f], w,
                      thread_counts[t]);
          outcome_free(&many);
        }
        outcome_free(&one);
      }
    }
}

/* Muon's Newton-Schulz products large enough to share their rows among threads (a wide and a
 * tall matrix, which Muon transposes): the same bits with 1, 2 and 3 threads. */
static void muon_run(int threads, float *wide, float *tall) {
  static const int64_t wide_dims[2] = {160, 200}, tall_dims[2] = {240, 130};
  const size_t nw = 160 * 200, nt = 240 * 130;
  for (size_t i = 0; i < nw; i++) wide[i] = random_value(i, 0.01f, 0.1f);
  for (size_t i = 0; i < nt; i++) tall[i] = random_value(((uint64_t)1 << 40) + i, 0.01f, 0.1f);
  cuoptimConfig_t c = test_config(CUOPTIM_MUON);
  char text[16];
  snprintf(text, sizeof text, "%d", threads);
  setenv("CUOPTIM_HOST_THREADS", text, 1);
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_HOST, 0));
  unsetenv("CUOPTIM_HOST_THREADS");
  cuoptimVariable_t v;
  OK(cuoptimAddVariableWithShape(opt, "wide", wide, CUOPTIM_FLOAT32, 2, wide_dims, &v));
  OK(cuoptimAddVariableWithShape(opt, "tall", tall, CUOPTIM_FLOAT32, 2, tall_dims, &v));
  float *gw = malloc(nw * sizeof *gw), *gt = malloc(nt * sizeof *gt);
  cr_assert(gw && gt);
  for (int s = 0; s < 2; s++) {
    for (size_t i = 0; i < nw; i++) gw[i] = random_value(((uint64_t)(s + 2) << 40) + i, 1e-3f, 2e-2f);
    for (size_t i = 0; i < nt; i++) gt[i] = random_value(((uint64_t)(s + 4) << 40) + i, 1e-3f, 2e-2f);
    cuoptimGradient_t grads[2] = {{0, gw, CUOPTIM_FLOAT32}, {1, gt, CUOPTIM_FLOAT32}};
    OK(cuoptimApplyGradients(opt, 2, grads, NULL));
  }
  free(gw);
  free(gt);
  OK(cuoptimDestroy(opt));
}

Test(host_backend, muon_matrices_do_not_depend_on_the_thread_count, .timeout = 600) {
  const size_t nw = 160 * 200, nt = 240 * 130;
  float *wide[3], *tall[3];
  for (int t = 0; t < 3; t++) {
    wide[t] = malloc(nw * sizeof(float));
    tall[t] = malloc(nt * sizeof(float));
    cr_assert(wide[t] && tall[t]);
    muon_run(t + 1, wide[t], tall[t]);
  }
  for (int t = 1; t < 3; t++) {
    cr_expect(memcmp(wide[0], wide[t], nw * sizeof(float)) == 0, "the wide matrix differs with %d threads", t + 1);
    cr_expect(memcmp(tall[0], tall[t], nt * sizeof(float)) == 0, "the tall matrix differs with %d threads", t + 1);
  }
  cr_expect(wide[0][0] != random_value(0, 0.01f, 0.1f) && tall[0][0] != random_value((uint64_t)1 << 40, 0.01f, 0.1f),
            "the steps moved nothing");
  for (int t = 0; t < 3; t++) {
    free(wide[t]);
    free(tall[t]);
  }
}

/* ---- the order of the sums --------------------------------------------------------------------- */

/* include/cuoptim.h documents it: element i of a block of 65,536 goes to lane i % 8, the lanes are
 * added as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)), the blocks in order from 0. */
static double documented_sum(const float *x, size_t n) {
  double total = 0.0;
  for (size_t b = 0; b < n; b += 65536) {
    double lane[8] = {0};
    for (size_t i = b; i < n && i < b + 65536; i++) lane[(i - b) % 8] += (double)x[i] * (double)x[i];
    total += ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  }
  return total;
}

Test(host_backend, sums_of_squares_follow_the_documented_order) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.clipnorm = 1.0;
  Run r;
  run_open(&r, &c, CUOPTIM_FLOAT32, CUOPTIM_FLOAT32, 2);
  cuoptimGradient_t grads[NUM_VARS];
  int n = make_gradients(&r, 0, grads);
  /* Values whose squares round differently in other orders. */
  for (size_t i = 0; i < var_size(4); i++) put(r.grad[4], CUOPTIM_FLOAT32, i, random_value(i * 7919u, 1e-4f, 3.0f));
  OK(cuoptimApplyGradients(r.opt, n, grads, NULL));
  for (int k = 0; k < NUM_VARS; k++) {
    size_t count = var_size(k);
    float *g = malloc(count * sizeof *g);
    memcpy(g, r.grad[k], count * sizeof *g);
    double want = documented_sum(g, count), got = r.opt->tensors[k].grad_sumsq;
    cr_assert(memcmp(&want, &got, sizeof want) == 0, "v%d: sum of squares %.17g, the documented order gives %.17g", k,
              got, want);
    free(g);
  }
  run_close(&r);
}

/* ---- CUOPTIM_HOST_THREADS ---------------------------------------------------------------------- */

Test(host_backend, create_rejects_a_bad_thread_count) {
  static const char *const bad[] = {"0", "-1", "abc", "2x", " 3", "1025", "99999999999999999999", "1.5"};
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    setenv("CUOPTIM_HOST_THREADS", bad[i], 1);
    cuoptimOptimizer_t opt = (cuoptimOptimizer_t)0x1;
    cuoptimStatus_t status = cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_HOST, 0);
    cr_assert_eq(status, CUOPTIM_STATUS_INVALID_VALUE, "CUOPTIM_HOST_THREADS=\"%s\" gave %d", bad[i], (int)status);
    cr_assert(strstr(cuoptimGetLastErrorMessage(), "CUOPTIM_HOST_THREADS"), "message: %s",
              cuoptimGetLastErrorMessage());
    cr_assert(strstr(cuoptimGetLastErrorMessage(), "cuoptimCreate"), "message: %s", cuoptimGetLastErrorMessage());
    cr_assert_eq(opt, (cuoptimOptimizer_t)0x1, "*optimizer written on failure");
  }
  static const char *const good[] = {"", "1", "2", "1024", "16"};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    setenv("CUOPTIM_HOST_THREADS", good[i], 1);
    cuoptimOptimizer_t opt = NULL;
    OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_HOST, 0));
    OK(cuoptimDestroy(opt));
  }
  unsetenv("CUOPTIM_HOST_THREADS");
}

/* Far more threads than cores, and than batches of some stages. */
Test(host_backend, many_threads_agree) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAMW);
  Outcome one, wide;
  run_to_outcome(&c, CUOPTIM_FLOAT32, 1, &one);
  run_to_outcome(&c, CUOPTIM_FLOAT32, 64, &wide);
  for (int k = 0; k < NUM_VARS; k++)
    cr_assert(memcmp(one.params[k], wide.params[k], var_size(k) * 4) == 0, "v%d differs with 64 threads", k);
  outcome_free(&one);
  outcome_free(&wide);
}
