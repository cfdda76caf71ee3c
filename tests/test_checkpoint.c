/*
 * test_checkpoint.c — cuoptimSave and cuoptimLoad.
 *
 * - Round trip: every state entry, every fp32 master, the iterations, learning rate and loss scale
 *   come back bit for bit, also across backends.
 * - Resume: saving at step k, loading into a fresh optimizer (parameters restored as they were at
 *   k) and going on gives bit for bit the parameters and state of training straight through, for
 *   float32, float16 and bfloat16 parameters, on both backends, with the features that keep state
 *   (EMA with overwrite, gradient accumulation saved mid-cycle, amsgrad, schedules, a learning rate
 *   set by cuoptimSetLearningRate, dynamic loss scaling with skipped steps, Nadam's u_product).
 * - Crash safety: a save made to fail at each of its file operations in turn leaves the previous
 *   checkpoint loadable and no temporary file; a load made to fail at each read changes nothing.
 * - Refusals: every kind of bad file (truncated, corrupted header or data, wrong length, dtype,
 *   shape, offsets, tensors missing, unknown or twice, another optimizer, config or variables,
 *   values out of range, empty, missing, a directory) and bad arguments are refused with a status
 *   and a message naming the file and the reason, and the optimizer is compared before and after:
 *   every state entry, master, parameter and scalar unchanged, an unbuilt optimizer still unbuilt.
 * - MultiOptimizer: its counter and every sub-optimizer's state in one file (AdamW saved mid-way
 *   through gradient accumulation, SGD with EMA, Nadam; masters), resumed bit for bit on both
 *   backends and moved between them; the names and metadata documented; a plain optimizer's file
 *   and a MultiOptimizer's refused into each other, another layout (fewer sub-optimizers, another
 *   kind, routing or shape) and a corrupted file refused with every sub-optimizer unchanged; bad
 *   arguments; a sub-optimizer's own checkpoint.
 * - Python: tests/check_safetensors.py opens a checkpoint with the `safetensors` package and checks
 *   names, shapes, dtypes, values, metadata and CRCs against a JSON dump written here; the file
 *   rewritten by safetensors.numpy.save_file (tensors in its own order) loads back.
 *
 * The CUDA variants (suite checkpoint_cuda) skip without a usable device.
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cuoptim.h"
#include "internal.h"
#include "testutil.h"

/* ---- a scratch directory per test ------------------------------------------------------------- */

static char test_directory[256];

static void make_directory(void) {
  snprintf(test_directory, sizeof test_directory, "%s/cuoptim-checkpoint-XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  cr_assert_not_null(mkdtemp(test_directory), "mkdtemp: %s", strerror(errno));
}

static void remove_directory(void) {
  DIR *dir = opendir(test_directory);
  if (!dir) return;
  struct dirent *e;
  char path[600];
  while ((e = readdir(dir)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    snprintf(path, sizeof path, "%s/%s", test_directory, e->d_name);
    unlink(path);
  }
  closedir(dir);
  rmdir(test_directory);
}

TestSuite(checkpoint, .init = make_directory, .fini = remove_directory);
TestSuite(checkpoint_cuda, .init = make_directory, .fini = remove_directory);

/* A path in the test's directory (a few static buffers in turn). */
static const char *path_of(const char *file) {
  static char paths[4][600];
  static int next;
  char *p = paths[next++ % 4];
  snprintf(p, sizeof paths[0], "%s/%s", test_directory, file);
  return p;
}

/* The names of the files in the test's directory other than `keep`, joined (empty: none). */
static void other_files(const char *keep, char *out, size_t capacity) {
  out[0] = '\0';
  DIR *dir = opendir(test_directory);
  cr_assert_not_null(dir);
  struct dirent *e;
  while ((e = readdir(dir)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 || strcmp(e->d_name, keep) == 0) continue;
    size_t used = strlen(out);
    snprintf(out + used, capacity - used, "%s ", e->d_name);
  }
  closedir(dir);
}

/* ---- the training problem ------------------------------------------------------------------------ */

#define MAX_VARS 4
#define RUN_VARS 6 /* the most variables of a run: the MultiOptimizer's */
#define STEPS 9
#define SAVE_AT 4

static const char *const VAR_NAMES[MAX_VARS] = {"dense/kernel", "dense/bias", "embedding/embeddings", "norm/gamma"};
static const size_t VAR_SIZES[MAX_VARS] = {4099, 7, 1, 333};

typedef struct {
  const char *label;
  cuoptimConfig_t config;
  const char *exclude;      /* weight-decay exclusion, or NULL */
  double learning_rate;     /* > 0: cuoptimSetLearningRate before the first step */
  int inf_steps[2];         /* steps whose gradient holds +inf (skipped with dynamic loss scaling) */
  int shaped;               /* dense/kernel [4099, 1] and norm/gamma [9, 37] (else every variable rank 1) */
} Setup;

typedef struct {
  cuoptimBackend_t backend;
  Setup setup;
  cuoptimOptimizer_t opt;
  int n;
  int none_on_odd;        /* the variable without a gradient on odd steps */
  const char *names[RUN_VARS];
  size_t count[RUN_VARS];
  cuoptimDtype_t dtype[RUN_VARS];
  void *param[RUN_VARS]; /* backend memory */
  float *grad[RUN_VARS]; /* backend memory, float32 */
} Run;

/* AdamW with every feature that keeps state, a warm-up cosine schedule (no learning-rate entry). */
static Setup setup_adamw(void) {
  Setup s = {.label = "AdamW", .exclude = "bias$", .inf_steps = {-1, -1}};
  s.config = test_config(CUOPTIM_ADAMW);
  s.config.amsgrad = 1;
  s.config.weight_decay = 0.05;
  s.config.use_ema = 1;
  s.config.ema_overwrite_frequency = 3;
  s.config.gradient_accumulation_steps = 3; /* step 4 is saved mid-cycle */
  s.config.global_clipnorm = 2.0;
  OK(cuoptimScheduleInit(&s.config.learning_rate, CUOPTIM_SCHEDULE_COSINE));
  s.config.learning_rate.initial_learning_rate = 0.01;
  s.config.learning_rate.decay_steps = 20;
  s.config.learning_rate.warmup_target = 0.02;
  s.config.learning_rate.warmup_steps = 3;
  return s;
}

/* Nadam under a dynamic loss scale: skipped steps before and after the save, scale growth. */
static Setup setup_nadam_loss_scale(void) {
  Setup s = {.label = "LossScaleOptimizer(Nadam)", .learning_rate = 0.002, .inf_steps = {2, 6}};
  s.config = test_config(CUOPTIM_NADAM);
  s.config.dynamic_loss_scale = 1;
  s.config.initial_scale = 8.0;
  s.config.dynamic_growth_steps = 2;
  s.config.clipnorm = 0.5;
  return s;
}

/* Ftrl with both accumulators, EMA and clipvalue. */
static Setup setup_ftrl(void) {
  Setup s = {.label = "Ftrl", .inf_steps = {-1, -1}};
  s.config = test_config(CUOPTIM_FTRL);
  s.config.l1_regularization_strength = 0.01;
  s.config.l2_regularization_strength = 0.02;
  s.config.l2_shrinkage_regularization_strength = 0.01;
  s.config.beta = 0.1;
  s.config.use_ema = 1;
  s.config.clipvalue = 1.0;
  s.config.gradient_accumulation_steps = 2;
  return s;
}

/* Adafactor: its row and column entries (here the scalar placeholders of rank-1 variables, which
 * Keras names after the variable) are stored as "<variable>_row" and "<variable>_column". */
static Setup setup_adafactor(void) {
  Setup s = {.label = "Adafactor", .inf_steps = {-1, -1}};
  s.config = test_config_lr(CUOPTIM_ADAFACTOR, 0.01);
  s.config.use_ema = 1;
  s.config.gradient_accumulation_steps = 2;
  return s;
}

/* Adafactor with factored variables (real r and c), clipnorm, weight decay and a dynamic loss scale. */
static Setup setup_adafactor_factored(void) {
  Setup s = {.label = "Adafactor (factored)", .exclude = "bias$", .inf_steps = {2, -1}, .shaped = 1};
  s.config = test_config_lr(CUOPTIM_ADAFACTOR, 0.01);
  s.config.clipnorm = 1.0;
  s.config.weight_decay = 0.01;
  s.config.use_ema = 1;
  s.config.dynamic_loss_scale = 1;
  s.config.initial_scale = 4.0;
  s.config.dynamic_growth_steps = 2;
  return s;
}

/* Adam with weight decay and an exclusion, EMA, under a dynamic loss scale: every kind of tensor
 * (I64 counters, the LossScaleOptimizer's own entries, masters). */
static Setup setup_adam_everything(void) {
  Setup s = {.label = "LossScaleOptimizer(Adam)", .exclude = "bias$", .inf_steps = {1, -1}};
  s.config = test_config(CUOPTIM_ADAM);
  s.config.weight_decay = 0.004;
  s.config.use_ema = 1;
  s.config.dynamic_loss_scale = 1;
  s.config.initial_scale = 4.0;
  s.config.dynamic_growth_steps = 2;
  return s;
}

static float initial_value(int k, size_t i) { return test_pseudo_random(11, 500 + (uint64_t)k, i); }

/* Registers the variables on r->opt: variable 1 float32, the others `dtype`, variable 0 of shape
 * `dims0` ([rows, columns]; NULL: a vector, or the shaped setup's); parameters from `params` (host bytes, one array per
 * variable) or the initial values. */
static void run_add_variables(Run *r, cuoptimDtype_t dtype, unsigned char *const *params, int num_vars,
                              const char *const *names, const size_t *sizes, const int64_t *dims0) {
  cuoptimBackend_t backend = r->backend;
  r->n = num_vars;
  for (int k = 0; k < num_vars; k++) {
    r->names[k] = names[k];
    r->count[k] = sizes[k];
    r->dtype[k] = k == 1 ? CUOPTIM_FLOAT32 : dtype;
    size_t bytes = sizes[k] * test_dtype_bytes(r->dtype[k]);
    unsigned char *host = malloc(bytes);
    cr_assert_not_null(host);
    if (params)
      memcpy(host, params[k], bytes);
    else
      for (size_t i = 0; i < sizes[k]; i++) test_store_element(host, r->dtype[k], i, initial_value(k, i));
    r->param[k] = test_mem_alloc(backend, bytes);
    test_mem_upload(backend, r->param[k], host, bytes);
    free(host);
    r->grad[k] = test_mem_alloc(backend, sizes[k] * sizeof(float));
    int64_t vector[1] = {(int64_t)sizes[k]};
    cuoptimVariable_t index = -1;
    /* Adafactor's shaped setup factors dense/kernel [4099, 1] and norm/gamma [9, 37]. */
    static const int64_t shapes[MAX_VARS][2] = {{4099, 1}, {7}, {1}, {9, 37}};
    const int64_t *dims = vector;
    int rank = 1;
    if (k == 0 && dims0) {
      rank = 2;
      dims = dims0;
    } else if (r->setup.shaped && num_vars == MAX_VARS && (k == 0 || k == 3)) {
      rank = 2;
      dims = shapes[k];
    }
    OK(cuoptimAddVariableWithShape(r->opt, names[k], r->param[k], r->dtype[k], rank, dims, &index));
    cr_assert_eq(index, k);
  }
}

/* Creates the optimizer and its variables (run_add_variables). */
static void run_init_with(Run *r, const Setup *s, cuoptimBackend_t backend, cuoptimDtype_t dtype,
                          unsigned char *const *params, int num_vars, const char *const *names, const size_t *sizes) {
  memset(r, 0, sizeof *r);
  r->backend = backend;
  r->setup = *s;
  r->none_on_odd = 2;
  OK(cuoptimCreate(&r->opt, &s->config, backend, 0));
  if (s->exclude) OK(cuoptimExcludeFromWeightDecay(r->opt, s->exclude));
  if (s->learning_rate > 0) OK(cuoptimSetLearningRate(r->opt, s->learning_rate));
  run_add_variables(r, dtype, params, num_vars, names, sizes, NULL);
}

static void run_init(Run *r, const Setup *s, cuoptimBackend_t backend, cuoptimDtype_t dtype,
                     unsigned char *const *params) {
  run_init_with(r, s, backend, dtype, params, MAX_VARS, VAR_NAMES, VAR_SIZES);
}

static void run_destroy(Run *r) {
  OK(cuoptimDestroy(r->opt));
  for (int k = 0; k < r->n; k++) {
    test_mem_free(r->backend, r->param[k]);
    test_mem_free(r->backend, r->grad[k]);
  }
  memset(r, 0, sizeof *r);
}

/* Step `step`: every variable gets a gradient but r->none_on_odd on odd steps (Keras's None). */
static void run_step(Run *r, int step) {
  cuoptimGradient_t list[RUN_VARS];
  int n = 0;
  for (int k = 0; k < r->n; k++) {
    if (k == r->none_on_odd && step % 2 == 1) continue;
    float *g = malloc(r->count[k] * sizeof *g);
    cr_assert_not_null(g);
    for (size_t i = 0; i < r->count[k]; i++) g[i] = test_pseudo_random(77, (uint64_t)(k * 100 + step), i);
    if (k == 0 && (step == r->setup.inf_steps[0] || step == r->setup.inf_steps[1])) g[0] = INFINITY;
    test_mem_upload(r->backend, r->grad[k], g, r->count[k] * sizeof *g);
    free(g);
    list[n++] = (cuoptimGradient_t){.variable = k, .grad = r->grad[k], .dtype = CUOPTIM_FLOAT32};
  }
  OK(cuoptimApplyGradients(r->opt, n, list, NULL));
}

static void run_steps(Run *r, int from, int to) {
  for (int step = from; step < to; step++) run_step(r, step);
}

/* The caller's parameters (host bytes, one malloc'd array per variable). */
static void run_params(Run *r, unsigned char **params) {
  OK(cuoptimSynchronize(r->opt));
  for (int k = 0; k < r->n; k++) {
    size_t bytes = r->count[k] * test_dtype_bytes(r->dtype[k]);
    params[k] = malloc(bytes);
    cr_assert_not_null(params[k]);
    test_mem_download(r->backend, params[k], r->param[k], bytes);
  }
}

static void free_params(unsigned char **params, int n) {
  for (int k = 0; k < n; k++) free(params[k]);
}

/* ---- everything a caller can observe, bit for bit ------------------------------------------------ */

/* Every state entry in Keras's order (cuoptimGetWeightInfo/cuoptimGetWeights). */
typedef struct {
  int count;
  cuoptimWeightInfo_t *info;
  double **values;
} Entries;

static void entries_read(cuoptimOptimizer_t opt, Entries *e) {
  OK(cuoptimGetWeightCount(opt, &e->count));
  e->info = calloc((size_t)e->count, sizeof *e->info);
  e->values = calloc((size_t)e->count, sizeof *e->values);
  for (int i = 0; i < e->count; i++) {
    OK(cuoptimGetWeightInfo(opt, i, &e->info[i]));
    e->values[i] = malloc(e->info[i].count * sizeof(double));
    OK(cuoptimGetWeights(opt, i, e->values[i], e->info[i].count));
  }
}

static void entries_free(Entries *e) {
  for (int i = 0; i < e->count; i++) free(e->values[i]);
  free(e->values);
  free(e->info);
  memset(e, 0, sizeof *e);
}

static int same_bits(const void *a, const void *b, size_t bytes) { return memcmp(a, b, bytes) == 0; }

static void entries_assert_equal(const Entries *got, const Entries *want, const char *what) {
  cr_assert_eq(got->count, want->count, "%s: %d state entries, expected %d", what, got->count, want->count);
  for (int i = 0; i < got->count; i++) {
    cr_assert_str_eq(got->info[i].name, want->info[i].name, "%s: entry %d", what, i);
    cr_assert_eq(got->info[i].count, want->info[i].count, "%s: entry %d (%s) count", what, i, got->info[i].name);
    for (size_t j = 0; j < got->info[i].count; j++)
      cr_assert(same_bits(&got->values[i][j], &want->values[i][j], sizeof(double)),
                "%s: entry %d \"%s\"[%zu] = %.9g, expected %.9g", what, i, got->info[i].name, j, got->values[i][j],
                want->values[i][j]);
  }
}

typedef struct {
  int built, n;
  Entries entries;
  unsigned char *params[MAX_VARS];
  size_t param_bytes[MAX_VARS];
  float *masters[MAX_VARS];
  size_t master_count[MAX_VARS];
  int64_t iterations;
  float learning_rate, loss_scale;
  double config_learning_rate;
  int64_t outer_iterations;
  float outer_learning_rate;
} Snapshot;

static void snapshot_take(Run *r, Snapshot *s) {
  memset(s, 0, sizeof *s);
  cuoptimOptimizer_t opt = r->opt;
  OK(cuoptimSynchronize(opt));
  s->built = opt->built;
  s->n = r->n;
  s->iterations = test_iterations(opt);
  OK(cuoptimGetLearningRate(opt, &s->learning_rate));
  if (r->setup.config.dynamic_loss_scale) OK(cuoptimGetLossScale(opt, &s->loss_scale));
  cuoptimConfig_t config;
  OK(cuoptimGetConfig(opt, &config));
  s->config_learning_rate = config.learning_rate.initial_learning_rate;
  s->outer_iterations = opt->outer_iterations;
  s->outer_learning_rate = opt->outer_learning_rate;
  for (int k = 0; k < r->n; k++) {
    s->param_bytes[k] = r->count[k] * test_dtype_bytes(r->dtype[k]);
    s->params[k] = malloc(s->param_bytes[k]);
    test_mem_download(r->backend, s->params[k], r->param[k], s->param_bytes[k]);
  }
  if (!s->built) return; /* reading the state would build it */
  entries_read(opt, &s->entries);
  for (int k = 0; k < r->n; k++) {
    if (!opt->variables[k].master) continue;
    s->master_count[k] = r->count[k];
    s->masters[k] = malloc(r->count[k] * sizeof(float));
    test_mem_download(r->backend, s->masters[k], opt->variables[k].master, r->count[k] * sizeof(float));
  }
}

static void snapshot_free(Snapshot *s) {
  entries_free(&s->entries);
  for (int k = 0; k < MAX_VARS; k++) {
    free(s->params[k]);
    free(s->masters[k]);
  }
  memset(s, 0, sizeof *s);
}

/* Bit for bit equal, or the assertion names what differs. With `params` 0 the caller's
 * parameters are not compared (a load never touches them, but they need not agree). */
static void snapshot_assert_equal(const Snapshot *got, const Snapshot *want, int params, const char *what) {
  cr_assert_eq(got->built, want->built, "%s: built %d, expected %d", what, got->built, want->built);
  cr_assert_eq(got->iterations, want->iterations, "%s: iterations %lld, expected %lld", what,
               (long long)got->iterations, (long long)want->iterations);
  cr_assert(same_bits(&got->learning_rate, &want->learning_rate, sizeof(float)), "%s: learning rate %.9g, expected %.9g",
            what, (double)got->learning_rate, (double)want->learning_rate);
  cr_assert(same_bits(&got->loss_scale, &want->loss_scale, sizeof(float)), "%s: loss scale %g, expected %g", what,
            (double)got->loss_scale, (double)want->loss_scale);
  cr_assert(same_bits(&got->config_learning_rate, &want->config_learning_rate, sizeof(double)),
            "%s: config learning rate %.17g, expected %.17g", what, got->config_learning_rate,
            want->config_learning_rate);
  cr_assert_eq(got->outer_iterations, want->outer_iterations, "%s: outer iteration", what);
  cr_assert(same_bits(&got->outer_learning_rate, &want->outer_learning_rate, sizeof(float)),
            "%s: outer learning rate", what);
  entries_assert_equal(&got->entries, &want->entries, what);
  for (int k = 0; k < got->n; k++) {
    cr_assert_eq(got->master_count[k], want->master_count[k], "%s: master of variable %d", what, k);
    for (size_t j = 0; j < got->master_count[k]; j++)
      cr_assert(same_bits(&got->masters[k][j], &want->masters[k][j], sizeof(float)),
                "%s: master of \"%s\"[%zu] = %.9g, expected %.9g", what, VAR_NAMES[k], j, (double)got->masters[k][j],
                (double)want->masters[k][j]);
    if (params)
      cr_assert(same_bits(got->params[k], want->params[k], got->param_bytes[k]), "%s: parameters of variable %d differ",
                what, k);
  }
}

static const char *dtype_label(cuoptimDtype_t dtype) {
  return dtype == CUOPTIM_FLOAT16 ? "float16" : dtype == CUOPTIM_BFLOAT16 ? "bfloat16" : "float32";
}

/* ---- round trip ---------------------------------------------------------------------------------- */

/* Saved by `from`, loaded by `to`: the loaded state is the saved one, bit for bit. */
static void round_trip(Setup (*make)(void), cuoptimBackend_t from, cuoptimBackend_t to, cuoptimDtype_t dtype) {
  test_require_backend(from);
  test_require_backend(to);
  Setup setup = make();
  Run a, b;
  run_init(&a, &setup, from, dtype, NULL);
  run_steps(&a, 0, SAVE_AT);
  Snapshot before, after, saved;
  snapshot_take(&a, &before);
  const char *path = path_of("state.safetensors");
  OK(cuoptimSave(a.opt, path));
  snapshot_take(&a, &saved);
  snapshot_assert_equal(&saved, &before, 1, "the saving optimizer after cuoptimSave");

  unsigned char *params[MAX_VARS];
  run_params(&a, params);
  run_init(&b, &setup, to, dtype, params);
  OK(cuoptimLoad(b.opt, path));
  snapshot_take(&b, &after);
  char what[160];
  snprintf(what, sizeof what, "%s %s saved on %s, loaded on %s", setup.label, dtype_label(dtype),
           test_backend_name(from), test_backend_name(to));
  snapshot_assert_equal(&after, &before, 1, what);
  char others[256];
  other_files("state.safetensors", others, sizeof others);
  cr_assert_str_eq(others, "", "files left beside the checkpoint: %s", others);
  free_params(params, MAX_VARS);
  snapshot_free(&before);
  snapshot_free(&after);
  snapshot_free(&saved);
  run_destroy(&a);
  run_destroy(&b);
}

Test(checkpoint, round_trip_restores_every_entry_and_master) {
  round_trip(setup_adam_everything, CUOPTIM_BACKEND_HOST, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT16);
  round_trip(setup_adamw, CUOPTIM_BACKEND_HOST, CUOPTIM_BACKEND_HOST, CUOPTIM_BFLOAT16);
  round_trip(setup_nadam_loss_scale, CUOPTIM_BACKEND_HOST, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT32);
  round_trip(setup_ftrl, CUOPTIM_BACKEND_HOST, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT16);
  round_trip(setup_adafactor, CUOPTIM_BACKEND_HOST, CUOPTIM_BACKEND_HOST, CUOPTIM_BFLOAT16);
  round_trip(setup_adafactor_factored, CUOPTIM_BACKEND_HOST, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT16);
}

Test(checkpoint_cuda, round_trip_restores_every_entry_and_master) {
  round_trip(setup_adam_everything, CUOPTIM_BACKEND_CUDA, CUOPTIM_BACKEND_CUDA, CUOPTIM_FLOAT16);
  round_trip(setup_adamw, CUOPTIM_BACKEND_CUDA, CUOPTIM_BACKEND_CUDA, CUOPTIM_BFLOAT16);
  round_trip(setup_adafactor, CUOPTIM_BACKEND_CUDA, CUOPTIM_BACKEND_CUDA, CUOPTIM_BFLOAT16);
  round_trip(setup_adafactor_factored, CUOPTIM_BACKEND_CUDA, CUOPTIM_BACKEND_CUDA, CUOPTIM_FLOAT32);
}

Test(checkpoint_cuda, checkpoints_move_between_backends) {
  round_trip(setup_adam_everything, CUOPTIM_BACKEND_HOST, CUOPTIM_BACKEND_CUDA, CUOPTIM_BFLOAT16);
  round_trip(setup_nadam_loss_scale, CUOPTIM_BACKEND_CUDA, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT16);
  round_trip(setup_adafactor_factored, CUOPTIM_BACKEND_HOST, CUOPTIM_BACKEND_CUDA, CUOPTIM_BFLOAT16);
  round_trip(setup_adafactor_factored, CUOPTIM_BACKEND_CUDA, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT16);
}

/* A staging buffer much smaller than the state: tensors split across many chunks, several small
 * tensors in one. */
Test(checkpoint, round_trip_through_a_small_staging_buffer) {
  cuoptim_checkpoint_set_staging_bytes(100);
  round_trip(setup_adam_everything, CUOPTIM_BACKEND_HOST, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT16);
  cuoptim_checkpoint_set_staging_bytes(0);
}

Test(checkpoint_cuda, round_trip_through_a_small_staging_buffer) {
  cuoptim_checkpoint_set_staging_bytes(100);
  round_trip(setup_adamw, CUOPTIM_BACKEND_CUDA, CUOPTIM_BACKEND_CUDA, CUOPTIM_FLOAT16);
  cuoptim_checkpoint_set_staging_bytes(0);
}

/* A state of several times the default 4 MiB staging buffer. */
Test(checkpoint, round_trip_of_a_state_larger_than_the_staging_buffer) {
  static const char *const names[1] = {"big"};
  static const size_t sizes[1] = {(size_t)3 << 20};
  Setup setup = setup_adam_everything();
  Run a, b;
  run_init_with(&a, &setup, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT32, NULL, 1, names, sizes);
  run_steps(&a, 0, 2);
  Snapshot before, after;
  snapshot_take(&a, &before);
  OK(cuoptimSave(a.opt, path_of("big.safetensors")));
  struct stat st;
  cr_assert_eq(stat(path_of("big.safetensors"), &st), 0);
  cr_assert_gt(st.st_size, (off_t)(4 * sizes[0] * 3), "a file of %lld bytes", (long long)st.st_size);
  unsigned char *params[1];
  run_params(&a, params);
  run_init_with(&b, &setup, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT32, params, 1, names, sizes);
  OK(cuoptimLoad(b.opt, path_of("big.safetensors")));
  snapshot_take(&b, &after);
  snapshot_assert_equal(&after, &before, 1, "a 36 MiB state");
  free_params(params, 1);
  snapshot_free(&before);
  snapshot_free(&after);
  run_destroy(&a);
  run_destroy(&b);
}

/* Saving an optimizer before any step builds its state and saves the initial one. */
Test(checkpoint, saving_before_the_first_step_saves_the_initial_state) {
  Setup setup = setup_ftrl();
  Run a, b;
  run_init(&a, &setup, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT16, NULL);
  OK(cuoptimSave(a.opt, path_of("initial.safetensors")));
  cr_assert(a.opt->built, "cuoptimSave builds the state");
  run_init(&b, &setup, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT16, NULL);
  run_steps(&b, 0, 3);
  OK(cuoptimLoad(b.opt, path_of("initial.safetensors")));
  Snapshot sa, sb;
  snapshot_take(&a, &sa);
  snapshot_take(&b, &sb);
  snapshot_assert_equal(&sb, &sa, 0, "the initial state loaded over a stepped one");
  snapshot_free(&sa);
  snapshot_free(&sb);
  run_destroy(&a);
  run_destroy(&b);
}

/* ---- resume equals straight through ------------------------------------------------------------ */

static void resume(Setup (*make)(void), cuoptimBackend_t backend, cuoptimDtype_t dtype) {
  test_require_backend(backend);
  Setup setup = make();
  char what[160];
  snprintf(what, sizeof what, "%s, %s, %s backend: resumed at step %d of %d", setup.label, dtype_label(dtype),
           test_backend_name(backend), SAVE_AT, STEPS);
  /* Straight through. */
  Run straight;
  run_init(&straight, &setup, backend, dtype, NULL);
  run_steps(&straight, 0, STEPS);
  Snapshot want;
  snapshot_take(&straight, &want);
  run_destroy(&straight);

  /* Saved at SAVE_AT; the saving run goes on too (saving must not disturb it). */
  Run first;
  run_init(&first, &setup, backend, dtype, NULL);
  run_steps(&first, 0, SAVE_AT);
  const char *path = path_of("resume.safetensors");
  OK(cuoptimSave(first.opt, path));
  unsigned char *params[MAX_VARS];
  run_params(&first, params);
  run_steps(&first, SAVE_AT, STEPS);
  Snapshot went_on;
  snapshot_take(&first, &went_on);
  run_destroy(&first);
  snapshot_assert_equal(&went_on, &want, 1, what);

  /* A fresh optimizer, the caller's parameters of step SAVE_AT, the checkpoint, the rest. */
  Run second;
  run_init(&second, &setup, backend, dtype, params);
  OK(cuoptimLoad(second.opt, path));
  run_steps(&second, SAVE_AT, STEPS);
  Snapshot got;
  snapshot_take(&second, &got);
  run_destroy(&second);
  snapshot_assert_equal(&got, &want, 1, what);
  free_params(params, MAX_VARS);
  snapshot_free(&want);
  snapshot_free(&went_on);
  snapshot_free(&got);
}

#define RESUME_TESTS(setup, label)                                                                            \
  Test(checkpoint, resume_##label##_float32) { resume(setup, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT32); }        \
  Test(checkpoint, resume_##label##_float16) { resume(setup, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT16); }        \
  Test(checkpoint, resume_##label##_bfloat16) { resume(setup, CUOPTIM_BACKEND_HOST, CUOPTIM_BFLOAT16); }      \
  Test(checkpoint_cuda, resume_##label##_float32) { resume(setup, CUOPTIM_BACKEND_CUDA, CUOPTIM_FLOAT32); }   \
  Test(checkpoint_cuda, resume_##label##_float16) { resume(setup, CUOPTIM_BACKEND_CUDA, CUOPTIM_FLOAT16); }   \
  Test(checkpoint_cuda, resume_##label##_bfloat16) { resume(setup, CUOPTIM_BACKEND_CUDA, CUOPTIM_BFLOAT16); }

RESUME_TESTS(setup_adamw, adamw_amsgrad_ema_accumulation_schedule)
RESUME_TESTS(setup_nadam_loss_scale, nadam_dynamic_loss_scale)
RESUME_TESTS(setup_ftrl, ftrl_ema_accumulation)
RESUME_TESTS(setup_adam_everything, adam_weight_decay_ema_loss_scale)
RESUME_TESTS(setup_adafactor, adafactor_ema_accumulation)
RESUME_TESTS(setup_adafactor_factored, adafactor_factored_clipnorm_weight_decay_loss_scale)

/* ---- crash safety ---------------------------------------------------------------------------------- */

/* Loads `path` into a fresh optimizer like `r`'s (parameters `params`) and compares its state. */
static void assert_file_holds(Run *r, unsigned char *const *params, const char *path, const Snapshot *want,
                              const char *what) {
  Run fresh;
  run_init(&fresh, &r->setup, r->backend, r->dtype[0], params);
  OK(cuoptimLoad(fresh.opt, path));
  Snapshot got;
  snapshot_take(&fresh, &got);
  snapshot_assert_equal(&got, want, 0, what);
  snapshot_free(&got);
  run_destroy(&fresh);
}

/* Every file operation of a save (create, each write, the header rewrite, fsync, close, rename,
 * the directory's fsync) made to fail in turn. */
static void interrupted_save(cuoptimBackend_t backend) {
  test_require_backend(backend);
  cuoptim_checkpoint_set_staging_bytes(4096); /* many data writes */
  Setup setup = setup_adam_everything();
  Run r;
  run_init(&r, &setup, backend, CUOPTIM_FLOAT16, NULL);
  run_steps(&r, 0, 2);
  const char *path = path_of("ckpt.safetensors");
  OK(cuoptimSave(r.opt, path));
  Snapshot old_state, new_state;
  snapshot_take(&r, &old_state);
  unsigned char *params[MAX_VARS];
  run_params(&r, params);
  run_steps(&r, 2, 5);
  snapshot_take(&r, &new_state);

  int failures = 0, after_rename = 0;
  for (long n = 1;; n++) {
    cr_assert_lt(n, 10000, "cuoptimSave never succeeded");
    cuoptim_checkpoint_fail_io_at(n);
    cuoptimStatus_t st = cuoptimSave(r.opt, path);
    long ran = cuoptim_checkpoint_fail_io_at(0);
    if (st == CUOPTIM_STATUS_SUCCESS) {
      cr_assert_lt(ran, n, "cuoptimSave succeeded although its file operation %ld failed", n);
      break;
    }
    failures++;
    const char *message = cuoptimGetLastErrorMessage();
    cr_assert_eq(st, CUOPTIM_STATUS_IO_ERROR, "operation %ld: %s: %s", n, cuoptimGetStatusString(st), message);
    cr_assert(strstr(message, "cuoptimSave") && strstr(message, path) && strstr(message, strerror(EIO)),
              "operation %ld: the message names the call, the file and the reason: %s", n, message);
    char others[512];
    other_files("ckpt.safetensors", others, sizeof others);
    cr_assert_str_eq(others, "", "operation %ld failed: files left behind: %s", n, others);
    char what[600];
    snprintf(what, sizeof what, "the checkpoint after a save failed at its file operation %ld (%s)", n, message);
    int replaced = strstr(message, "saved, but") != NULL;
    after_rename += replaced;
    assert_file_holds(&r, params, path, replaced ? &new_state : &old_state, what);
  }
  /* create, length, header, >= 2 data writes, length and header again, fsync, close, rename, directory */
  cr_assert_geq(failures, 10, "only %d file operations", failures);
  cr_assert_eq(after_rename, 1, "only the directory's fsync comes after the rename");
  assert_file_holds(&r, params, path, &new_state, "the checkpoint after the save that succeeded");
  free_params(params, MAX_VARS);
  snapshot_free(&old_state);
  snapshot_free(&new_state);
  run_destroy(&r);
  cuoptim_checkpoint_set_staging_bytes(0);
}

Test(checkpoint, a_save_interrupted_at_any_step_leaves_the_old_checkpoint) { interrupted_save(CUOPTIM_BACKEND_HOST); }
Test(checkpoint_cuda, a_save_interrupted_at_any_step_leaves_the_old_checkpoint) {
  interrupted_save(CUOPTIM_BACKEND_CUDA);
}

/* Every read of a load made to fail in turn, into a stepped and into an unbuilt optimizer. */
static void interrupted_load(cuoptimBackend_t backend) {
  test_require_backend(backend);
  cuoptim_checkpoint_set_staging_bytes(4096);
  Setup setup = setup_adam_everything();
  Run source, stepped, unbuilt;
  run_init(&source, &setup, backend, CUOPTIM_BFLOAT16, NULL);
  run_steps(&source, 0, 3);
  const char *path = path_of("ckpt.safetensors");
  OK(cuoptimSave(source.opt, path));
  run_init(&stepped, &setup, backend, CUOPTIM_BFLOAT16, NULL);
  run_steps(&stepped, 0, 1);
  run_init(&unbuilt, &setup, backend, CUOPTIM_BFLOAT16, NULL);
  Snapshot before, unbuilt_before;
  snapshot_take(&stepped, &before);
  snapshot_take(&unbuilt, &unbuilt_before);
  int failures = 0;
  for (long n = 1;; n++) {
    cr_assert_lt(n, 10000);
    cuoptim_checkpoint_fail_io_at(n);
    cuoptimStatus_t st = cuoptimLoad(stepped.opt, path);
    cuoptim_checkpoint_fail_io_at(n);
    cuoptimStatus_t st_unbuilt = cuoptimLoad(unbuilt.opt, path);
    cuoptim_checkpoint_fail_io_at(0);
    if (st == CUOPTIM_STATUS_SUCCESS) {
      cr_assert_eq(st_unbuilt, CUOPTIM_STATUS_SUCCESS);
      break;
    }
    failures++;
    cr_assert_eq(st, CUOPTIM_STATUS_IO_ERROR, "read %ld: %s", n, cuoptimGetLastErrorMessage());
    cr_assert_eq(st_unbuilt, CUOPTIM_STATUS_IO_ERROR, "read %ld: %s", n, cuoptimGetLastErrorMessage());
    Snapshot after;
    snapshot_take(&stepped, &after);
    snapshot_assert_equal(&after, &before, 1, "a load whose read failed");
    snapshot_free(&after);
    snapshot_take(&unbuilt, &after);
    snapshot_assert_equal(&after, &unbuilt_before, 1, "a load whose read failed, into an unbuilt optimizer");
    snapshot_free(&after);
  }
  cr_assert_geq(failures, 4, "open, the length, the header, the data in chunks: %d reads", failures);
  Snapshot want, got;
  snapshot_take(&source, &want);
  snapshot_take(&stepped, &got);
  snapshot_assert_equal(&got, &want, 0, "the load that succeeded");
  snapshot_free(&want);
  snapshot_free(&got);
  snapshot_free(&before);
  snapshot_free(&unbuilt_before);
  run_destroy(&source);
  run_destroy(&stepped);
  run_destroy(&unbuilt);
  cuoptim_checkpoint_set_staging_bytes(0);
}

Test(checkpoint, a_load_whose_read_fails_changes_nothing) { interrupted_load(CUOPTIM_BACKEND_HOST); }
Test(checkpoint_cuda, a_load_whose_read_fails_changes_nothing) { interrupted_load(CUOPTIM_BACKEND_CUDA); }

/* ---- bad files ----------------------------------------------------------------------------------- */

typedef struct {
  unsigned char *bytes;
  size_t size;
} Bytes;

static Bytes read_bytes(const char *path) {
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f, "%s: %s", path, strerror(errno));
  fseek(f, 0, SEEK_END);
  Bytes b = {NULL, (size_t)ftell(f)};
  fseek(f, 0, SEEK_SET);
  b.bytes = malloc(b.size + 1);
  cr_assert_eq(fread(b.bytes, 1, b.size, f), b.size);
  fclose(f);
  return b;
}

static void write_bytes(const char *path, const unsigned char *bytes, size_t size) {
  FILE *f = fopen(path, "wb");
  cr_assert_not_null(f, "%s: %s", path, strerror(errno));
  cr_assert_eq(fwrite(bytes, 1, size, f), size);
  cr_assert_eq(fclose(f), 0);
}

/* zlib's crc32, bit by bit (independent of the library's table-driven one). */
static uint32_t reference_crc32(const unsigned char *p, size_t n) {
  uint32_t crc = 0xffffffffu;
  for (size_t i = 0; i < n; i++) {
    crc ^= p[i];
    for (int k = 0; k < 8; k++) crc = (crc & 1) ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
  }
  return ~crc;
}

/* A checkpoint taken apart: the parsed header and the data. */
typedef struct {
  cJSON *root;
  unsigned char *data;
  size_t data_size;
} Parsed;

static Parsed parse_bytes(Bytes b) {
  uint64_t n;
  memcpy(&n, b.bytes, 8);
  Parsed p;
  char *text = malloc(n + 1);
  memcpy(text, b.bytes + 8, n);
  text[n] = '\0';
  p.root = cJSON_Parse(text);
  cr_assert_not_null(p.root, "the checkpoint's header is JSON");
  free(text);
  p.data_size = b.size - 8 - n;
  p.data = malloc(p.data_size + 1);
  memcpy(p.data, b.bytes + 8 + n, p.data_size);
  return p;
}

static void parsed_free(Parsed *p) {
  cJSON_Delete(p->root);
  free(p->data);
}

/* length + header text padded to 8 + data. */
static Bytes assemble(const char *header, const unsigned char *data, size_t data_size) {
  size_t n = strlen(header), padded = (n + 7) / 8 * 8;
  Bytes b = {malloc(8 + padded + data_size + 1), 8 + padded + data_size};
  uint64_t length = padded;
  memcpy(b.bytes, &length, 8);
  memcpy(b.bytes + 8, header, n);
  memset(b.bytes + 8 + n, ' ', padded - n);
  if (data_size) memcpy(b.bytes + 8 + padded, data, data_size);
  return b;
}

static Bytes assemble_parsed(const Parsed *p) {
  char *text = cJSON_PrintUnformatted(p->root);
  Bytes b = assemble(text, p->data, p->data_size);
  free(text);
  return b;
}

static cJSON *metadata_of(Parsed *p) { return cJSON_GetObjectItemCaseSensitive(p->root, "__metadata__"); }

static void set_metadata(Parsed *p, const char *key, const char *value) {
  cJSON *meta = metadata_of(p);
  if (cJSON_GetObjectItemCaseSensitive(meta, key))
    cJSON_ReplaceItemInObjectCaseSensitive(meta, key, cJSON_CreateString(value));
  else
    cJSON_AddStringToObject(meta, key, value);
}

/* A metadata value that is JSON text, parsed (to be changed and put back with put_metadata_json). */
static cJSON *metadata_json(Parsed *p, const char *key) {
  return cJSON_Parse(cJSON_GetObjectItemCaseSensitive(metadata_of(p), key)->valuestring);
}

static void put_metadata_json(Parsed *p, const char *key, cJSON *value) {
  char *text = cJSON_PrintUnformatted(value);
  set_metadata(p, key, text);
  free(text);
  cJSON_Delete(value);
}

static void tensor_offsets(Parsed *p, const char *name, size_t *begin, size_t *end) {
  cJSON *offsets = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(p->root, name), "data_offsets");
  cr_assert_not_null(offsets, "tensor %s", name);
  *begin = (size_t)cJSON_GetArrayItem(offsets, 0)->valuedouble;
  *end = (size_t)cJSON_GetArrayItem(offsets, 1)->valuedouble;
}

static void set_offsets(Parsed *p, const char *name, double begin, double end) {
  cJSON *item = cJSON_GetObjectItemCaseSensitive(p->root, name);
  cJSON *offsets = cJSON_CreateArray();
  cJSON_AddItemToArray(offsets, cJSON_CreateNumber(begin));
  cJSON_AddItemToArray(offsets, cJSON_CreateNumber(end));
  cJSON_ReplaceItemInObjectCaseSensitive(item, "data_offsets", offsets);
}

static void set_field(Parsed *p, const char *name, const char *field, cJSON *value) {
  cJSON_ReplaceItemInObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(p->root, name), field, value);
}

/* Overwrites a tensor's data and its CRC in the metadata (a well-formed file with other values). */
static void set_tensor_data(Parsed *p, const char *name, const void *bytes, size_t n) {
  size_t begin, end;
  tensor_offsets(p, name, &begin, &end);
  cr_assert_eq(end - begin, n);
  memcpy(p->data + begin, bytes, n);
  cJSON *crcs = metadata_json(p, "crc32");
  char hex[9];
  snprintf(hex, sizeof hex, "%08x", reference_crc32(p->data + begin, n));
  cJSON_ReplaceItemInObjectCaseSensitive(crcs, name, cJSON_CreateString(hex));
  put_metadata_json(p, "crc32", crcs);
}

/* Optimizers a bad file is loaded into: one stepped (built), one fresh (unbuilt), and what they
 * held before. */
typedef struct {
  Run stepped, unbuilt;
  Snapshot stepped_before, unbuilt_before;
  const char *path;
  int checked;
} Targets;

static void targets_init(Targets *t, const Setup *setup, cuoptimBackend_t backend, cuoptimDtype_t dtype) {
  run_init(&t->stepped, setup, backend, dtype, NULL);
  run_steps(&t->stepped, 3, 5); /* other gradients than the saved run's */
  run_init(&t->unbuilt, setup, backend, dtype, NULL);
  snapshot_take(&t->stepped, &t->stepped_before);
  snapshot_take(&t->unbuilt, &t->unbuilt_before);
  t->path = path_of("bad.safetensors");
}

static void targets_destroy(Targets *t) {
  snapshot_free(&t->stepped_before);
  snapshot_free(&t->unbuilt_before);
  run_destroy(&t->stepped);
  run_destroy(&t->unbuilt);
}

static void assert_unchanged(Run *r, const Snapshot *before, const char *what) {
  Snapshot after;
  snapshot_take(r, &after);
  snapshot_assert_equal(&after, before, 1, what);
  snapshot_free(&after);
}

/* Loading the file at t->path is refused with `status` and a message holding `needle`, the call and
 * the file; neither optimizer changes. */
static void expect_refused_file(Targets *t, cuoptimStatus_t status, const char *needle, const char *what) {
  Run *runs[2] = {&t->stepped, &t->unbuilt};
  const Snapshot *before[2] = {&t->stepped_before, &t->unbuilt_before};
  for (int i = 0; i < 2; i++) {
    cuoptimStatus_t st = cuoptimLoad(runs[i]->opt, t->path);
    const char *message = cuoptimGetLastErrorMessage();
    cr_assert_eq(st, status, "%s: %s (%s), expected %s", what, cuoptimGetStatusString(st), message,
                 cuoptimGetStatusString(status));
    cr_assert(strstr(message, "cuoptimLoad") && strstr(message, t->path), "%s: the message names the call and the file: %s",
              what, message);
    cr_assert(strstr(message, needle), "%s: the message says \"%s\": %s", what, needle, message);
    char label[300];
    snprintf(label, sizeof label, "%s (%s optimizer)", what, i == 0 ? "stepped" : "unbuilt");
    assert_unchanged(runs[i], before[i], label);
  }
  t->checked++;
}

static void expect_refused(Targets *t, Bytes b, cuoptimStatus_t status, const char *needle, const char *what) {
  write_bytes(t->path, b.bytes, b.size);
  free(b.bytes);
  expect_refused_file(t, status, needle, what);
}

/* The header changed by `change`, the file put together again and refused. */
static void expect_refused_change(Targets *t, Bytes good, void (*change)(Parsed *), cuoptimStatus_t status,
                                  const char *needle, const char *what) {
  Parsed p = parse_bytes(good);
  change(&p);
  expect_refused(t, assemble_parsed(&p), status, needle, what);
  parsed_free(&p);
}

static Bytes copy_bytes(Bytes b, size_t size) {
  Bytes c = {malloc(size + 1), size};
  memcpy(c.bytes, b.bytes, size < b.size ? size : b.size);
  if (size > b.size) memset(c.bytes + b.size, 0, size - b.size);
  return c;
}

/* The changes (the saved state: LossScaleOptimizer(Adam), EMA, float16 "dense/kernel"). */
static void wrong_dtype(Parsed *p) { set_field(p, "dense_kernel_momentum", "dtype", cJSON_CreateString("F16")); }
static void same_size_dtype(Parsed *p) { set_field(p, "dense_kernel_momentum", "dtype", cJSON_CreateString("I32")); }
static void wrong_counter_dtype(Parsed *p) { set_field(p, "iteration", "dtype", cJSON_CreateString("F64")); }
static void wrong_shape(Parsed *p) {
  cJSON *shape = cJSON_CreateArray();
  cJSON_AddItemToArray(shape, cJSON_CreateNumber(4100));
  set_field(p, "dense_kernel_velocity", "shape", shape);
}
static void two_dimensional_shape(Parsed *p) {
  cJSON *shape = cJSON_CreateArray();
  cJSON_AddItemToArray(shape, cJSON_CreateNumber(1));
  cJSON_AddItemToArray(shape, cJSON_CreateNumber(4099));
  set_field(p, "dense_kernel_velocity", "shape", shape);
}
static void scalar_as_array(Parsed *p) {
  cJSON *shape = cJSON_CreateArray();
  cJSON_AddItemToArray(shape, cJSON_CreateNumber(1));
  set_field(p, "dynamic_scale", "shape", shape);
}
static void missing_tensor(Parsed *p) { cJSON_DeleteItemFromObjectCaseSensitive(p->root, "norm_gamma_average"); }
static void missing_master(Parsed *p) { cJSON_DeleteItemFromObjectCaseSensitive(p->root, "dense/kernel/master"); }
static void extra_tensor(Parsed *p) {
  cJSON *t = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(p->root, "dense_bias_momentum"), 1);
  cJSON_AddItemToObject(p->root, "dense/bias_extra", t);
}
static void tensor_twice(Parsed *p) {
  cJSON *t = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(p->root, "dense_bias_momentum"), 1);
  cJSON_AddItemToObject(p->root, "dense_bias_momentum", t);
}
static void metadata_twice(Parsed *p) {
  cJSON_AddItemToObject(p->root, "__metadata__", cJSON_Duplicate(metadata_of(p), 1));
}
static void overlapping_offsets(Parsed *p) {
  size_t b, e;
  tensor_offsets(p, "dense_bias_momentum", &b, &e);
  set_offsets(p, "dense_bias_velocity", (double)b, (double)e);
}
static void offsets_out_of_range(Parsed *p) {
  size_t b, e;
  tensor_offsets(p, "norm/gamma/master", &b, &e);
  set_offsets(p, "norm/gamma/master", (double)b + 1e6, (double)e + 1e6);
}
static void offsets_reversed(Parsed *p) {
  size_t b, e;
  tensor_offsets(p, "dense_bias_velocity", &b, &e);
  set_offsets(p, "dense_bias_velocity", (double)e, (double)b);
}
static void offsets_not_integers(Parsed *p) { set_offsets(p, "dense_bias_velocity", 0.5, 28.5); }
static void offsets_negative(Parsed *p) { set_offsets(p, "dense_bias_velocity", -28, 0); }
static void offsets_beyond_2_53(Parsed *p) { set_offsets(p, "dense_bias_velocity", 1e300, 1e300 + 28); }
static void offsets_missing(Parsed *p) {
  cJSON_DeleteItemFromObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(p->root, "iteration"), "data_offsets");
}
static void tensor_not_object(Parsed *p) {
  cJSON_ReplaceItemInObjectCaseSensitive(p->root, "iteration", cJSON_CreateString("F32"));
}
static void no_metadata(Parsed *p) { cJSON_DeleteItemFromObjectCaseSensitive(p->root, "__metadata__"); }
static void other_format(Parsed *p) { set_metadata(p, "format", "pytorch"); }
static void newer_format(Parsed *p) { set_metadata(p, "format_version", "2"); }
static void no_crc32(Parsed *p) { cJSON_DeleteItemFromObjectCaseSensitive(metadata_of(p), "crc32"); }
static void no_config(Parsed *p) { cJSON_DeleteItemFromObjectCaseSensitive(metadata_of(p), "keras_config"); }
static void metadata_not_string(Parsed *p) {
  cJSON_ReplaceItemInObjectCaseSensitive(metadata_of(p), "format_version", cJSON_CreateNumber(1));
}
static void config_not_json(Parsed *p) { set_metadata(p, "keras_config", "{\"class_name\": "); }
static void other_beta_1(Parsed *p) {
  cJSON *config = metadata_json(p, "keras_config");
  cJSON *inner = cJSON_GetObjectItemCaseSensitive(
      cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(config, "config"), "inner_optimizer"), "config");
  cr_assert_not_null(inner, "the LossScaleOptimizer's inner config");
  cJSON_ReplaceItemInObjectCaseSensitive(inner, "beta_1", cJSON_CreateNumber(0.8));
  put_metadata_json(p, "keras_config", config);
}
static void other_optimizer(Parsed *p) {
  cuoptimConfig_t sgd = test_config(CUOPTIM_SGD);
  char text[8192];
  OK(cuoptimConfigToKerasJSON(&sgd, text, sizeof text, NULL));
  set_metadata(p, "keras_config", text);
}
static void variable_renamed(Parsed *p) {
  cJSON *table = metadata_json(p, "variables");
  cJSON_ReplaceItemInObjectCaseSensitive(cJSON_GetArrayItem(table, 0), "name", cJSON_CreateString("dense/weights"));
  put_metadata_json(p, "variables", table);
}
static void variable_dropped(Parsed *p) {
  cJSON *table = metadata_json(p, "variables");
  cJSON_DeleteItemFromArray(table, 3);
  put_metadata_json(p, "variables", table);
}
static void variable_table_not_array(Parsed *p) { set_metadata(p, "variables", "{}"); }
static void crc_wrong(Parsed *p) {
  cJSON *crcs = metadata_json(p, "crc32");
  cJSON_ReplaceItemInObjectCaseSensitive(crcs, "embedding_embeddings_velocity", cJSON_CreateString("00000000"));
  put_metadata_json(p, "crc32", crcs);
}
static void crc_missing(Parsed *p) {
  cJSON *crcs = metadata_json(p, "crc32");
  cJSON_DeleteItemFromObjectCaseSensitive(crcs, "step_counter");
  put_metadata_json(p, "crc32", crcs);
}
static void crc_not_hex(Parsed *p) {
  cJSON *crcs = metadata_json(p, "crc32");
  cJSON_ReplaceItemInObjectCaseSensitive(crcs, "step_counter", cJSON_CreateString("0x12345"));
  put_metadata_json(p, "crc32", crcs);
}
static void crc_of_unknown_tensor(Parsed *p) {
  cJSON *crcs = metadata_json(p, "crc32");
  cJSON_AddStringToObject(crcs, "dense/bias_extra", "00000000");
  put_metadata_json(p, "crc32", crcs);
}
static void negative_iteration(Parsed *p) {
  int64_t minus_one = -1;
  set_tensor_data(p, "iteration", &minus_one, sizeof minus_one);
}
static void huge_counter(Parsed *p) {
  int64_t huge = INT64_MAX;
  set_tensor_data(p, "step_counter", &huge, sizeof huge);
}
static void infinite_loss_scale(Parsed *p) {
  float inf = INFINITY;
  set_tensor_data(p, "dynamic_scale", &inf, sizeof inf);
}
static void nan_outer_learning_rate(Parsed *p) {
  float nan = NAN;
  set_tensor_data(p, "loss_scale_optimizer/learning_rate", &nan, sizeof nan);
}
static void corrupted_data(Parsed *p) {
  size_t b, e;
  tensor_offsets(p, "dense/kernel/master", &b, &e);
  p->data[b + (e - b) / 2] ^= 0x10;
}

/* The header text of `good` with `from` replaced by `to` (same header length when they are). */
static Bytes header_edit(Bytes good, const char *from, const char *to) {
  uint64_t n;
  memcpy(&n, good.bytes, 8);
  char *text = malloc(n + 1);
  memcpy(text, good.bytes + 8, n);
  text[n] = '\0';
  char *at = strstr(text, from);
  cr_assert_not_null(at, "\"%s\" in the header", from);
  size_t before = (size_t)(at - text), from_n = strlen(from), to_n = strlen(to);
  char *edited = malloc(n + to_n + 1);
  memcpy(edited, text, before);
  memcpy(edited + before, to, to_n);
  memcpy(edited + before + to_n, at + from_n, n - before - from_n + 1);
  /* Keep the header length (trailing spaces) so only the text changes. */
  Bytes b = {malloc(good.size + to_n + 8), 0};
  size_t edited_n = strlen(edited);
  uint64_t length = edited_n > n ? edited_n : n;
  memcpy(b.bytes, &length, 8);
  memset(b.bytes + 8, ' ', length);
  memcpy(b.bytes + 8, edited, edited_n);
  memcpy(b.bytes + 8 + length, good.bytes + 8 + n, good.size - 8 - n);
  b.size = 8 + length + good.size - 8 - n;
  free(text);
  free(edited);
  return b;
}

static void refuses_every_kind_of_bad_file(cuoptimBackend_t backend) {
  test_require_backend(backend);
  Setup setup = setup_adam_everything();
  Run source;
  run_init(&source, &setup, backend, CUOPTIM_FLOAT16, NULL);
  run_steps(&source, 0, 3);
  const char *good_path = path_of("good.safetensors");
  OK(cuoptimSave(source.opt, good_path));
  Bytes good = read_bytes(good_path);
  uint64_t header_n;
  memcpy(&header_n, good.bytes, 8);
  Targets t;
  targets_init(&t, &setup, backend, CUOPTIM_FLOAT16);

  /* Not there, not a file, not safetensors. */
  t.path = path_of("nonexistent.safetensors");
  expect_refused_file(&t, CUOPTIM_STATUS_IO_ERROR, strerror(ENOENT), "a file that does not exist");
  t.path = test_directory;
  expect_refused_file(&t, CUOPTIM_STATUS_INVALID_VALUE, "not a regular file", "a directory");
  t.path = path_of("bad.safetensors");
  expect_refused(&t, copy_bytes(good, 0), CUOPTIM_STATUS_INVALID_VALUE, "too short", "an empty file");
  expect_refused(&t, copy_bytes(good, 5), CUOPTIM_STATUS_INVALID_VALUE, "too short", "5 bytes");

  /* Truncated at several points, and one byte too many. */
  const size_t cuts[] = {8, 9, 8 + (size_t)header_n / 2, 8 + (size_t)header_n - 1};
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++)
    expect_refused(&t, copy_bytes(good, cuts[i]), CUOPTIM_STATUS_INVALID_VALUE, "truncated", "cut in the header");
  const size_t data_cuts[] = {8 + (size_t)header_n, 8 + (size_t)header_n + 3, good.size / 2 + header_n / 2,
                              good.size - 1};
  for (size_t i = 0; i < sizeof data_cuts / sizeof data_cuts[0]; i++)
    expect_refused(&t, copy_bytes(good, data_cuts[i]), CUOPTIM_STATUS_INVALID_VALUE, "truncated", "cut in the data");
  expect_refused(&t, copy_bytes(good, good.size + 1), CUOPTIM_STATUS_INVALID_VALUE, "1 bytes after the last tensor",
                 "a byte after the data");

  /* Wrong header length. */
  Bytes b = copy_bytes(good, good.size);
  uint64_t huge = (uint64_t)1 << 40;
  memcpy(b.bytes, &huge, 8);
  expect_refused(&t, b, CUOPTIM_STATUS_INVALID_VALUE, "header length 1099511627776", "a 2^40-byte header length");
  b = copy_bytes(good, good.size);
  uint64_t one = 1;
  memcpy(b.bytes, &one, 8);
  expect_refused(&t, b, CUOPTIM_STATUS_INVALID_VALUE, "header length 1:", "a 1-byte header length");
  b = copy_bytes(good, good.size);
  uint64_t shorter = header_n - 8;
  memcpy(b.bytes, &shorter, 8);
  expect_refused(&t, b, CUOPTIM_STATUS_PARSE_ERROR, "not valid JSON", "a header length 8 bytes short");
  b = copy_bytes(good, good.size);
  uint64_t longer = header_n + 8;
  memcpy(b.bytes, &longer, 8);
  /* The first tensor, the LossScaleOptimizer's own iteration, is 0: its bytes are NUL. */
  expect_refused(&t, b, CUOPTIM_STATUS_PARSE_ERROR, "NUL byte", "a header length 8 bytes long");

  /* Corrupted header text. */
  expect_refused(&t, header_edit(good, "{\"__metadata__\"", "[\"__metadata__\""), CUOPTIM_STATUS_PARSE_ERROR,
                 "does not start with '{'", "a header that is an array");
  expect_refused(&t, header_edit(good, "\"dtype\":\"F32\"", "\"dtype\":F32\""), CUOPTIM_STATUS_PARSE_ERROR,
                 "not valid JSON", "a quote missing");
  expect_refused(&t, header_edit(good, "\"format\"", "\"form\xff\""), CUOPTIM_STATUS_PARSE_ERROR, "not valid UTF-8",
                 "a byte that is not UTF-8");
  b = header_edit(good, "\"format\"", "\"form\"");
  b.bytes[8 + 10] = '\0';
  expect_refused(&t, b, CUOPTIM_STATUS_PARSE_ERROR, "NUL byte at byte 10", "a NUL byte in the header");
  expect_refused(&t, assemble("{}", NULL, 0), CUOPTIM_STATUS_INVALID_VALUE, "no \"__metadata__\"", "an empty header");
  expect_refused(&t, assemble("{\"iteration\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]}}",
                              (const unsigned char *)"\0\0\0\0\0\0\0\0", 8),
                 CUOPTIM_STATUS_INVALID_VALUE, "no \"__metadata__\"", "a plain safetensors file");

  /* Tensors that do not fit. */
  expect_refused_change(&t, good, wrong_dtype, CUOPTIM_STATUS_INVALID_VALUE,
                        "tensor \"dense_kernel_momentum\" has dtype F16", "a float16 slot");
  expect_refused_change(&t, good, same_size_dtype, CUOPTIM_STATUS_INVALID_VALUE, "has dtype I32",
                        "an int32 slot of the same size");
  expect_refused_change(&t, good, wrong_counter_dtype, CUOPTIM_STATUS_INVALID_VALUE,
                        "tensor \"iteration\" has dtype F64", "a float64 counter");
  expect_refused_change(&t, good, wrong_shape, CUOPTIM_STATUS_INVALID_VALUE, "has shape [4100]: the optimizer's is [4099]",
                        "one element too many");
  expect_refused_change(&t, good, two_dimensional_shape, CUOPTIM_STATUS_INVALID_VALUE, "has shape [1,4099]",
                        "a 2-D shape");
  expect_refused_change(&t, good, scalar_as_array, CUOPTIM_STATUS_INVALID_VALUE, "the optimizer's is []",
                        "a scalar of shape [1]");
  expect_refused_change(&t, good, missing_tensor, CUOPTIM_STATUS_INVALID_VALUE, "tensor \"norm_gamma_average\" is missing",
                        "an average missing");
  expect_refused_change(&t, good, missing_master, CUOPTIM_STATUS_INVALID_VALUE, "\"dense/kernel/master\" is missing",
                        "a master missing");
  expect_refused_change(&t, good, extra_tensor, CUOPTIM_STATUS_INVALID_VALUE,
                        "tensor \"dense/bias_extra\" is not part of this optimizer's state", "an extra tensor");
  expect_refused_change(&t, good, tensor_twice, CUOPTIM_STATUS_INVALID_VALUE, "appears twice", "a tensor twice");
  expect_refused_change(&t, good, metadata_twice, CUOPTIM_STATUS_INVALID_VALUE, "\"__metadata__\" twice",
                        "the metadata twice");
  expect_refused_change(&t, good, overlapping_offsets, CUOPTIM_STATUS_INVALID_VALUE, "overlap", "overlapping tensors");
  expect_refused_change(&t, good, offsets_out_of_range, CUOPTIM_STATUS_INVALID_VALUE, "belong to no tensor",
                        "offsets beyond the data");
  expect_refused_change(&t, good, offsets_reversed, CUOPTIM_STATUS_INVALID_VALUE, "hold -28 bytes", "offsets reversed");
  expect_refused_change(&t, good, offsets_not_integers, CUOPTIM_STATUS_INVALID_VALUE, "integer offsets",
                        "fractional offsets");
  expect_refused_change(&t, good, offsets_negative, CUOPTIM_STATUS_INVALID_VALUE, "integer offsets",
                        "negative offsets");
  expect_refused_change(&t, good, offsets_beyond_2_53, CUOPTIM_STATUS_INVALID_VALUE, "integer offsets",
                        "offsets beyond 2^53");
  expect_refused_change(&t, good, offsets_missing, CUOPTIM_STATUS_INVALID_VALUE, "tensor \"iteration\": not {",
                        "no data_offsets");
  expect_refused_change(&t, good, tensor_not_object, CUOPTIM_STATUS_INVALID_VALUE, "tensor \"iteration\": not {",
                        "a tensor that is a string");

  /* Metadata. */
  expect_refused_change(&t, good, no_metadata, CUOPTIM_STATUS_INVALID_VALUE, "no \"__metadata__\"", "no metadata");
  expect_refused_change(&t, good, other_format, CUOPTIM_STATUS_INVALID_VALUE, "format is \"pytorch\"", "another format");
  expect_refused_change(&t, good, newer_format, CUOPTIM_STATUS_NOT_SUPPORTED, "format_version is \"2\"",
                        "a newer format version");
  expect_refused_change(&t, good, metadata_not_string, CUOPTIM_STATUS_INVALID_VALUE,
                        "__metadata__ \"format_version\" is not a string", "a number in the metadata");
  expect_refused_change(&t, good, no_crc32, CUOPTIM_STATUS_INVALID_VALUE, "no \"crc32\"", "no crc32 table");
  expect_refused_change(&t, good, no_config, CUOPTIM_STATUS_INVALID_VALUE, "no \"keras_config\"", "no config");
  expect_refused_change(&t, good, config_not_json, CUOPTIM_STATUS_PARSE_ERROR, "keras_config", "a config not JSON");
  expect_refused_change(&t, good, other_beta_1, CUOPTIM_STATUS_INVALID_VALUE,
                        "at .config.inner_optimizer.config.beta_1: 0.8 in the file, 0.9 in the optimizer",
                        "another beta_1");
  expect_refused_change(&t, good, other_optimizer, CUOPTIM_STATUS_INVALID_VALUE,
                        "the state of SGD, this optimizer is LossScaleOptimizer(Adam)", "another optimizer");
  expect_refused_change(&t, good, variable_renamed, CUOPTIM_STATUS_INVALID_VALUE,
                        "variables[0]: named \"dense/weights\" in the file, \"dense/kernel\" in the optimizer",
                        "a variable renamed");
  expect_refused_change(&t, good, variable_dropped, CUOPTIM_STATUS_INVALID_VALUE,
                        "the file has 3 variables, the optimizer 4", "a variable missing from the table");
  expect_refused_change(&t, good, variable_table_not_array, CUOPTIM_STATUS_INVALID_VALUE, "not a JSON array",
                        "a variable table that is no array");
  expect_refused_change(&t, good, crc_missing, CUOPTIM_STATUS_INVALID_VALUE,
                        "crc32 has no entry for tensor \"step_counter\"", "a CRC missing");
  expect_refused_change(&t, good, crc_not_hex, CUOPTIM_STATUS_INVALID_VALUE, "not 8 lower-case hex digits",
                        "a CRC that is not hex");
  expect_refused_change(&t, good, crc_of_unknown_tensor, CUOPTIM_STATUS_INVALID_VALUE,
                        "crc32 names \"dense/bias_extra\"", "a CRC of no tensor");

  /* Data. */
  expect_refused_change(&t, good, crc_wrong, CUOPTIM_STATUS_INVALID_VALUE,
                        "tensor \"embedding_embeddings_velocity\": its data has CRC-32", "a wrong CRC");
  expect_refused_change(&t, good, corrupted_data, CUOPTIM_STATUS_INVALID_VALUE,
                        "tensor \"dense/kernel/master\": its data has CRC-32", "a flipped bit in a master");
  expect_refused_change(&t, good, negative_iteration, CUOPTIM_STATUS_INVALID_VALUE,
                        "tensor \"iteration\" = -1: a counter must lie in [0, 9e15]", "a negative iteration count");
  expect_refused_change(&t, good, huge_counter, CUOPTIM_STATUS_INVALID_VALUE, "tensor \"step_counter\" = 9223372036854775807",
                        "a counter beyond 9e15");
  expect_refused_change(&t, good, infinite_loss_scale, CUOPTIM_STATUS_INVALID_VALUE,
                        "tensor \"dynamic_scale\" = inf: must be finite", "an infinite loss scale");
  expect_refused_change(&t, good, nan_outer_learning_rate, CUOPTIM_STATUS_INVALID_VALUE,
                        "tensor \"loss_scale_optimizer/learning_rate\" = nan", "a NaN learning rate");

  /* The same file, well-formed, still loads into both. */
  OK(cuoptimLoad(t.stepped.opt, good_path));
  OK(cuoptimLoad(t.unbuilt.opt, good_path));
  cr_assert_gt(t.checked, 60, "%d refusals checked", t.checked);
  free(good.bytes);
  targets_destroy(&t);
  run_destroy(&source);
}

Test(checkpoint, refuses_every_kind_of_bad_file_and_changes_nothing) {
  refuses_every_kind_of_bad_file(CUOPTIM_BACKEND_HOST);
}
Test(checkpoint_cuda, refuses_every_kind_of_bad_file_and_changes_nothing) {
  refuses_every_kind_of_bad_file(CUOPTIM_BACKEND_CUDA);
}

/* Loading into optimizers that differ from the one that saved: another optimizer, other
 * hyperparameters, other variables (names, sizes, dtypes, number, weight decay). */
Test(checkpoint, refuses_the_checkpoint_of_another_optimizer_or_other_variables) {
  Setup setup = setup_adam_everything();
  Run source;
  run_init(&source, &setup, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT16, NULL);
  run_steps(&source, 0, 2);
  const char *path = path_of("adam.safetensors");
  OK(cuoptimSave(source.opt, path));
  run_destroy(&source);

  static const char *const renamed[MAX_VARS] = {"dense/kernel", "dense/b", "embedding/embeddings", "norm/gamma"};
  static const size_t resized[MAX_VARS] = {4099, 7, 2, 333};
  typedef struct {
    Setup setup;
    cuoptimDtype_t dtype;
    int num_vars;
    const char *const *names;
    const size_t *sizes;
    const char *needle;
  } Case;
  Case cases[8];
  int n = 0;
  Setup plain_adam = setup, sgd = setup, other_eps = setup, no_exclusion = setup;
  plain_adam.config.dynamic_loss_scale = 0;
  plain_adam.label = "Adam";
  sgd.config = test_config(CUOPTIM_SGD);
  sgd.config.momentum = 0.9;
  sgd.config.dynamic_loss_scale = 1;
  sgd.config.initial_scale = 4.0;
  sgd.config.dynamic_growth_steps = 2;
  sgd.config.use_ema = 1;
  sgd.config.weight_decay = 0.004;
  other_eps.config.epsilon = 1e-6;
  no_exclusion.exclude = NULL;
  cases[n++] = (Case){sgd, CUOPTIM_FLOAT16, MAX_VARS, VAR_NAMES, VAR_SIZES,
                                  "the file holds the state of LossScaleOptimizer(Adam), this optimizer is LossScaleOptimizer(SGD)"};
  cases[n++] = (Case){plain_adam, CUOPTIM_FLOAT16, MAX_VARS, VAR_NAMES, VAR_SIZES,
                                  "this optimizer is Adam"};
  cases[n++] = (Case){other_eps, CUOPTIM_FLOAT16, MAX_VARS, VAR_NAMES, VAR_SIZES,
                                  "config.epsilon: 1e-07 in the file, 1e-06 in the optimizer"};
  cases[n++] = (Case){setup, CUOPTIM_FLOAT16, MAX_VARS, renamed, VAR_SIZES,
                                  "variables[1]: named \"dense/bias\" in the file, \"dense/b\" in the optimizer"};
  cases[n++] = (Case){setup, CUOPTIM_FLOAT16, MAX_VARS, VAR_NAMES, resized,
                                  "\"embedding/embeddings\" has 1 elements in the file, 2 in the optimizer"};
  cases[n++] = (Case){setup, CUOPTIM_BFLOAT16, MAX_VARS, VAR_NAMES, VAR_SIZES,
                                  "\"dense/kernel\" is float16 in the file, bfloat16 in the optimizer"};
  cases[n++] = (Case){setup, CUOPTIM_FLOAT16, 3, VAR_NAMES, VAR_SIZES,
                                  "the optimizer has only 3 variables, the file 4"};
  cases[n++] = (Case){no_exclusion, CUOPTIM_FLOAT16, MAX_VARS, VAR_NAMES, VAR_SIZES,
                                  "weight decay applies to \"dense/bias\" in the optimizer, not in the file"};
  for (int i = 0; i < n; i++) {
    Run target;
    run_init_with(&target, &cases[i].setup, CUOPTIM_BACKEND_HOST, cases[i].dtype, NULL, cases[i].num_vars,
                  cases[i].names, cases[i].sizes);
    Snapshot before;
    snapshot_take(&target, &before);
    cuoptimStatus_t st = cuoptimLoad(target.opt, path);
    const char *message = cuoptimGetLastErrorMessage();
    cr_assert_eq(st, CUOPTIM_STATUS_INVALID_VALUE, "case %d: %s: %s", i, cuoptimGetStatusString(st), message);
    cr_assert(strstr(message, cases[i].needle), "case %d: the message says \"%s\": %s", i, cases[i].needle, message);
    assert_unchanged(&target, &before, "a refused checkpoint of another optimizer");
    snapshot_free(&before);
    run_destroy(&target);
  }
}

/* A constant learning rate is state: a checkpoint loads into an optimizer created with another
 * one, and brings its own. */
Test(checkpoint, the_constant_learning_rate_comes_from_the_checkpoint) {
  Setup setup = setup_nadam_loss_scale();
  Run a, b;
  run_init(&a, &setup, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT32, NULL);
  run_steps(&a, 0, 2);
  OK(cuoptimSetLearningRate(a.opt, 0.125));
  OK(cuoptimSave(a.opt, path_of("lr.safetensors")));
  setup.learning_rate = 0.5;
  run_init(&b, &setup, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT32, NULL);
  OK(cuoptimLoad(b.opt, path_of("lr.safetensors")));
  float lr = 0;
  OK(cuoptimGetLearningRate(b.opt, &lr));
  cr_assert_eq(lr, 0.125f);
  cuoptimConfig_t config;
  OK(cuoptimGetConfig(b.opt, &config));
  cr_assert_eq(config.learning_rate.initial_learning_rate, 0.125);
  run_destroy(&a);
  run_destroy(&b);
}

/* ---- arguments and saves that cannot be made ------------------------------------------------------ */

static void expect_status(cuoptimStatus_t st, cuoptimStatus_t want, const char *needle, const char *what) {
  const char *message = cuoptimGetLastErrorMessage();
  cr_assert_eq(st, want, "%s: %s (%s)", what, cuoptimGetStatusString(st), message);
  cr_assert(strstr(message, needle), "%s: the message says \"%s\": %s", what, needle, message);
}

Test(checkpoint, bad_arguments_are_refused) {
  Setup setup = setup_ftrl();
  Run r;
  run_init(&r, &setup, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT32, NULL);
  expect_status(cuoptimSave(NULL, path_of("x")), CUOPTIM_STATUS_NULL_POINTER, "cuoptimSave: optimizer is NULL",
                "Save(NULL)");
  expect_status(cuoptimSave(r.opt, NULL), CUOPTIM_STATUS_NULL_POINTER, "cuoptimSave: path is NULL", "Save(path NULL)");
  expect_status(cuoptimSave(r.opt, ""), CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSave: path is empty", "Save(\"\")");
  expect_status(cuoptimLoad(NULL, path_of("x")), CUOPTIM_STATUS_NULL_POINTER, "cuoptimLoad: optimizer is NULL",
                "Load(NULL)");
  expect_status(cuoptimLoad(r.opt, NULL), CUOPTIM_STATUS_NULL_POINTER, "cuoptimLoad: path is NULL", "Load(path NULL)");
  expect_status(cuoptimLoad(r.opt, ""), CUOPTIM_STATUS_INVALID_VALUE, "cuoptimLoad: path is empty", "Load(\"\")");
  cr_assert(!r.opt->built, "refused calls build nothing");
  /* A directory that does not exist: nothing is written, the state is built (Save builds it). */
  char missing[700];
  snprintf(missing, sizeof missing, "%s/no/such/dir/x.safetensors", test_directory);
  expect_status(cuoptimSave(r.opt, missing), CUOPTIM_STATUS_IO_ERROR, strerror(ENOENT), "Save into a missing directory");
  char others[256];
  other_files("", others, sizeof others);
  cr_assert_str_eq(others, "", "nothing written: %s", others);
  run_destroy(&r);
}

/* Keras names Adagrad's slot of "x_gradient" and the gradient accumulator of "x" alike: such a state
 * cannot be stored by name, and the refusal builds nothing and writes nothing. */
Test(checkpoint, a_state_with_two_entries_of_one_name_is_refused) {
  static const char *const names[2] = {"x", "x_gradient"};
  static const size_t sizes[2] = {3, 5};
  Setup setup = {.label = "Adagrad", .inf_steps = {-1, -1}};
  setup.config = test_config(CUOPTIM_ADAGRAD);
  setup.config.gradient_accumulation_steps = 2;
  Run r;
  run_init_with(&r, &setup, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT32, NULL, 2, names, sizes);
  expect_status(cuoptimSave(r.opt, path_of("dup.safetensors")), CUOPTIM_STATUS_NOT_SUPPORTED,
                "are both named \"x_gradient_accumulator\"", "Save with two entries of one name");
  cr_assert(!r.opt->built, "the refused save built nothing");
  char others[256];
  other_files("", others, sizeof others);
  cr_assert_str_eq(others, "", "nothing written: %s", others);
  expect_status(cuoptimLoad(r.opt, path_of("dup.safetensors")), CUOPTIM_STATUS_NOT_SUPPORTED,
                "are both named \"x_gradient_accumulator\"", "Load with two entries of one name");
  cr_assert(!r.opt->built, "the refused load built nothing");
  run_destroy(&r);
}

/* ---- Python's safetensors reads the file ---------------------------------------------------------- */

#ifndef CUOPTIM_TEST_PYTHON
#define CUOPTIM_TEST_PYTHON "python3"
#endif

static void dump_expected(Run *r, const char *checkpoint, const char *dump_path) {
  cuoptimOptimizer_t opt = r->opt;
  cJSON *root = cJSON_CreateObject();
  cJSON *tensors = cJSON_AddArrayToObject(root, "tensors");
  int count = 0;
  OK(cuoptimGetWeightCount(opt, &count));
  for (int i = 0; i < count; i++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(opt, i, &info));
    double *values = malloc(info.count * sizeof *values);
    OK(cuoptimGetWeights(opt, i, values, info.count));
    cJSON *t = cJSON_CreateObject();
    char name[CUOPTIM_MAX_WEIGHT_NAME + 32];
    cuoptimWeightKind kind = opt->weights[i].kind;
    int outer = kind == CUOPTIM_WEIGHT_OUTER_ITERATION || kind == CUOPTIM_WEIGHT_OUTER_LEARNING_RATE;
    snprintf(name, sizeof name, "%s%s", outer ? "loss_scale_optimizer/" : "", info.name);
    cJSON_AddStringToObject(t, "name", name);
    cJSON_AddStringToObject(t, "dtype", info.is_integer ? "I64" : "F32");
    cJSON *shape = cJSON_AddArrayToObject(t, "shape");
    if (kind == CUOPTIM_WEIGHT_BUFFER) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)info.count));
    cJSON *bits = cJSON_AddArrayToObject(t, "bits");
    for (size_t j = 0; j < info.count; j++) {
      if (info.is_integer) {
        cJSON_AddItemToArray(bits, cJSON_CreateNumber(values[j]));
      } else {
        float f = (float)values[j];
        uint32_t u;
        memcpy(&u, &f, sizeof u);
        cJSON_AddItemToArray(bits, cJSON_CreateNumber((double)u));
      }
    }
    cJSON_AddItemToArray(tensors, t);
    free(values);
  }
  for (int k = 0; k < r->n; k++) {
    if (r->dtype[k] == CUOPTIM_FLOAT32) continue;
    float *master = malloc(r->count[k] * sizeof *master);
    test_mem_download(r->backend, master, opt->variables[k].master, r->count[k] * sizeof *master);
    cJSON *t = cJSON_CreateObject();
    char name[CUOPTIM_MAX_NAME + 16];
    snprintf(name, sizeof name, "%s/master", r->names[k]);
    cJSON_AddStringToObject(t, "name", name);
    cJSON_AddStringToObject(t, "dtype", "F32");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(t, "shape"), cJSON_CreateNumber((double)r->count[k]));
    cJSON *bits = cJSON_AddArrayToObject(t, "bits");
    for (size_t j = 0; j < r->count[k]; j++) {
      uint32_t u;
      memcpy(&u, &master[j], sizeof u);
      cJSON_AddItemToArray(bits, cJSON_CreateNumber((double)u));
    }
    cJSON_AddItemToArray(tensors, t);
    free(master);
  }
  cJSON *variables = cJSON_AddArrayToObject(root, "variables");
  for (int k = 0; k < r->n; k++) {
    cJSON *v = cJSON_CreateObject();
    cJSON_AddStringToObject(v, "name", r->names[k]);
    cJSON_AddStringToObject(v, "dtype", dtype_label(r->dtype[k]));
    cJSON_AddNumberToObject(v, "count", (double)r->count[k]);
    int uses = 0;
    OK(cuoptimUsesWeightDecay(opt, k, &uses));
    cJSON_AddBoolToObject(v, "weight_decay", uses);
    cJSON_AddItemToArray(variables, v);
  }
  char config[16384];
  cuoptimConfig_t c;
  OK(cuoptimGetConfig(opt, &c));
  OK(cuoptimConfigToKerasJSON(&c, config, sizeof config, NULL));
  cJSON_AddStringToObject(root, "keras_config", config);
  char version[32];
  snprintf(version, sizeof version, "%d.%d.%d", CUOPTIM_VERSION_MAJOR, CUOPTIM_VERSION_MINOR, CUOPTIM_VERSION_PATCH);
  cJSON_AddStringToObject(root, "cuoptim_version", version);
  cJSON_AddStringToObject(root, "checkpoint", checkpoint);
  char *text = cJSON_Print(root);
  write_bytes(dump_path, (const unsigned char *)text, strlen(text));
  free(text);
  cJSON_Delete(root);
}

Test(checkpoint, python_safetensors_reads_names_shapes_and_values_and_its_rewrite_loads) {
  const char *python = getenv("CUOPTIM_TEST_PYTHON") ? getenv("CUOPTIM_TEST_PYTHON") : CUOPTIM_TEST_PYTHON;
  char probe[1200];
  snprintf(probe, sizeof probe, "'%s' -c 'import safetensors, numpy' 2>&1", python);
  int ready = system(probe);
  cr_assert_eq(ready, 0,
               "%s cannot import safetensors and numpy: run scripts/setup.sh (it makes the virtual environment "
               ".venv-tools) or set CUOPTIM_TEST_PYTHON",
               python);
  Setup setup = setup_adam_everything();
  setup.config.gradient_accumulation_steps = 2; /* every kind of state entry */
  Run r;
  run_init(&r, &setup, CUOPTIM_BACKEND_HOST, CUOPTIM_BFLOAT16, NULL);
  run_steps(&r, 0, 5);
  const char *checkpoint = path_of("python.safetensors"), *dump = path_of("expected.json");
  OK(cuoptimSave(r.opt, checkpoint));
  dump_expected(&r, checkpoint, dump);
  const char *rewritten = path_of("rewritten.safetensors");
  char command[3000];
  snprintf(command, sizeof command, "'%s' '%s/check_safetensors.py' '%s' '%s' '%s' 2>&1", python, CUOPTIM_TEST_SCRIPTS,
           checkpoint, dump, rewritten);
  FILE *out = popen(command, "r");
  cr_assert_not_null(out, "popen %s", command);
  char output[8192] = "";
  size_t used = fread(output, 1, sizeof output - 1, out);
  output[used] = '\0';
  int status = pclose(out);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s failed:\n%s", command, output);
  cr_assert(strstr(output, "checked"), "the script reports what it checked:\n%s", output);

  /* The file as Python's save_file writes it (its own tensor order) loads and gives the same state. */
  Bytes ours = read_bytes(checkpoint), theirs = read_bytes(rewritten);
  cr_assert(ours.size != theirs.size || memcmp(ours.bytes, theirs.bytes, ours.size) != 0,
            "save_file wrote the very same bytes: the tensor order is not exercised");
  free(ours.bytes);
  free(theirs.bytes);
  Run fresh;
  unsigned char *params[MAX_VARS];
  run_params(&r, params);
  run_init(&fresh, &setup, CUOPTIM_BACKEND_HOST, CUOPTIM_BFLOAT16, params);
  OK(cuoptimLoad(fresh.opt, rewritten));
  Snapshot want, got;
  snapshot_take(&r, &want);
  snapshot_take(&fresh, &got);
  snapshot_assert_equal(&got, &want, 1, "the checkpoint rewritten by safetensors.numpy.save_file");
  snapshot_free(&want);
  snapshot_free(&got);
  free_params(params, MAX_VARS);
  run_destroy(&fresh);
  run_destroy(&r);
}

/* ---- a MultiOptimizer's checkpoint --------------------------------------------------------------- */

/* Three sub-optimizers, each with state of its own kind: AdamW ("dense/.*": amsgrad, weight decay,
 * a schedule, gradient accumulation saved mid-cycle), SGD ("embedding/.*": momentum, EMA with
 * overwrite, a learning rate set by cuoptimSetLearningRate) and the default Nadam (u_product,
 * clipnorm); the variables interleaved across them, half precision ones with masters. */
#define MULTI_VARS 6
#define MULTI_SUBS 3

typedef struct {
  int num_subs;                 /* 3, or 2 without the SGD (its variables go to the default) */
  cuoptimOptimizerKind_t sub_1; /* CUOPTIM_SGD, or another kind */
  const char *embedding_key;    /* the SGD's key */
  int transposed;               /* "dense/kernel" registered as [141, 29] rather than [29, 141] */
} MultiLayout;

static const MultiLayout MULTI_LAYOUT = {MULTI_SUBS, CUOPTIM_SGD, "embedding/.*", 0};

static const char *const MULTI_NAMES[MULTI_VARS] = {"dense/kernel", "embedding/embeddings", "norm/gamma",
                                                    "dense/bias",   "embedding/pos",        "head/w"};
static const size_t MULTI_SIZES[MULTI_VARS] = {29 * 141, 33, 333, 7, 5, 1};

static cuoptimConfig_t multi_sub_config(const MultiLayout *layout, int k) {
  if (k == 0) {
    cuoptimConfig_t c = setup_adamw().config;
    c.use_ema = 0;
    return c;
  }
  if (k == 1 && layout->num_subs == MULTI_SUBS) {
    cuoptimConfig_t c = test_config_lr(layout->sub_1, 0.05);
    if (layout->sub_1 == CUOPTIM_SGD) {
      c.momentum = 0.9;
      c.nesterov = 1;
    }
    c.use_ema = 1;
    c.ema_overwrite_frequency = 3;
    return c;
  }
  cuoptimConfig_t c = test_config_lr(CUOPTIM_NADAM, 0.003);
  c.clipnorm = 0.5;
  return c;
}

/* The MultiOptimizer and its variables (run_add_variables: "dense/kernel" a 29 x 141 matrix). */
static void multi_init(Run *r, const MultiLayout *layout, cuoptimBackend_t backend, cuoptimDtype_t dtype,
                       unsigned char *const *params) {
  memset(r, 0, sizeof *r);
  r->backend = backend;
  r->setup = (Setup){.label = "MultiOptimizer", .inf_steps = {-1, -1}};
  r->none_on_odd = 4; /* "embedding/pos": the SGD still has "embedding/embeddings" */
  cuoptimConfig_t subs[MULTI_SUBS];
  for (int k = 0; k < layout->num_subs; k++) subs[k] = multi_sub_config(layout, k);
  const char *keys[2] = {"dense/.*", layout->embedding_key};
  const int uses[2] = {0, 1};
  cuoptimMultiConfig_t m;
  OK(cuoptimMultiConfigInit(&m));
  m.num_optimizers = layout->num_subs;
  m.optimizers = subs;
  m.num_patterns = layout->num_subs == MULTI_SUBS ? 2 : 1;
  m.patterns = keys;
  m.pattern_optimizer = uses;
  m.default_optimizer = layout->num_subs - 1;
  OK(cuoptimCreateMulti(&r->opt, &m, backend, 0));
  if (layout->num_subs == MULTI_SUBS) {
    cuoptimOptimizer_t sgd = NULL;
    OK(cuoptimGetSubOptimizer(r->opt, 1, &sgd));
    OK(cuoptimSetLearningRate(sgd, 0.04));
  }
  static const int64_t matrix[2] = {29, 141}, transposed[2] = {141, 29};
  run_add_variables(r, dtype, params, MULTI_VARS, MULTI_NAMES, MULTI_SIZES, layout->transposed ? transposed : matrix);
}

/* Everything a caller can observe of a MultiOptimizer: its counter, every state entry in Keras's
 * order (every sub-optimizer's), each sub-optimizer's learning rate and whether it is built, the
 * masters and the parameters. */
typedef struct {
  int built[MULTI_SUBS], num_subs;
  int64_t iterations;
  float learning_rate[MULTI_SUBS];
  double config_learning_rate[MULTI_SUBS];
  Entries entries;
  unsigned char *params[MULTI_VARS];
  size_t param_bytes[MULTI_VARS];
  float *masters[MULTI_VARS];
} MultiSnapshot;

static void multi_snapshot(Run *r, MultiSnapshot *s) {
  memset(s, 0, sizeof *s);
  cuoptimOptimizer_t opt = r->opt;
  OK(cuoptimSynchronize(opt));
  OK(cuoptimGetSubOptimizerCount(opt, &s->num_subs));
  OK(cuoptimGetIterations(opt, &s->iterations));
  int built = 1;
  for (int k = 0; k < s->num_subs; k++) {
    cuoptimOptimizer_t sub = NULL;
    OK(cuoptimGetSubOptimizer(opt, k, &sub));
    s->built[k] = sub->built;
    built = built && sub->built;
    OK(cuoptimGetLearningRate(sub, &s->learning_rate[k]));
    cuoptimConfig_t config;
    OK(cuoptimGetConfig(sub, &config));
    s->config_learning_rate[k] = config.learning_rate.initial_learning_rate;
  }
  for (int k = 0; k < MULTI_VARS; k++) {
    s->param_bytes[k] = MULTI_SIZES[k] * test_dtype_bytes(r->dtype[k]);
    s->params[k] = malloc(s->param_bytes[k]);
    test_mem_download(r->backend, s->params[k], r->param[k], s->param_bytes[k]);
  }
  if (!built) return; /* reading the state would build it */
  entries_read(opt, &s->entries);
  for (int k = 0; k < MULTI_VARS; k++) {
    int which = -1;
    cuoptimVariable_t index = -1;
    cuoptimOptimizer_t sub = NULL;
    OK(cuoptimGetVariableOptimizer(opt, k, &which, &index));
    OK(cuoptimGetSubOptimizer(opt, which, &sub));
    if (!sub->variables[index].master) continue;
    s->masters[k] = malloc(MULTI_SIZES[k] * sizeof(float));
    test_mem_download(r->backend, s->masters[k], sub->variables[index].master, MULTI_SIZES[k] * sizeof(float));
  }
}

static void multi_snapshot_free(MultiSnapshot *s) {
  entries_free(&s->entries);
  for (int k = 0; k < MULTI_VARS; k++) {
    free(s->params[k]);
    free(s->masters[k]);
  }
  memset(s, 0, sizeof *s);
}

static void multi_assert_equal(const MultiSnapshot *got, const MultiSnapshot *want, int params, const char *what) {
  cr_assert_eq(got->num_subs, want->num_subs, "%s: sub-optimizers", what);
  cr_assert_eq(got->iterations, want->iterations, "%s: iterations %lld, expected %lld", what,
               (long long)got->iterations, (long long)want->iterations);
  for (int k = 0; k < got->num_subs; k++) {
    cr_assert_eq(got->built[k], want->built[k], "%s: sub-optimizer %d built %d, expected %d", what, k, got->built[k],
                 want->built[k]);
    cr_assert(same_bits(&got->learning_rate[k], &want->learning_rate[k], sizeof(float)),
              "%s: sub-optimizer %d learning rate %.9g, expected %.9g", what, k, (double)got->learning_rate[k],
              (double)want->learning_rate[k]);
    cr_assert(same_bits(&got->config_learning_rate[k], &want->config_learning_rate[k], sizeof(double)),
              "%s: sub-optimizer %d config learning rate", what, k);
  }
  entries_assert_equal(&got->entries, &want->entries, what);
  for (int k = 0; k < MULTI_VARS; k++) {
    cr_assert_eq(got->masters[k] != NULL, want->masters[k] != NULL, "%s: master of variable %d", what, k);
    if (got->masters[k])
      cr_assert(same_bits(got->masters[k], want->masters[k], MULTI_SIZES[k] * sizeof(float)),
                "%s: master of \"%s\" differs", what, MULTI_NAMES[k]);
    if (params)
      cr_assert(same_bits(got->params[k], want->params[k], got->param_bytes[k]), "%s: parameters of \"%s\" differ",
                what, MULTI_NAMES[k]);
  }
}

/* Saved at SAVE_AT (the AdamW mid-cycle of its 3 accumulation steps, the SGD's EMA between
 * overwrites), loaded into a fresh MultiOptimizer built the same way, trained on: bit for bit the
 * run straight through; and the saving run, going on, too. */
static void multi_resume(cuoptimBackend_t backend, cuoptimDtype_t dtype) {
  test_require_backend(backend);
  char what[160];
  snprintf(what, sizeof what, "MultiOptimizer, %s, %s backend: resumed at step %d of %d", dtype_label(dtype),
           test_backend_name(backend), SAVE_AT, STEPS);
  Run straight, first, second;
  multi_init(&straight, &MULTI_LAYOUT, backend, dtype, NULL);
  run_steps(&straight, 0, STEPS);
  MultiSnapshot want, went_on, got;
  multi_snapshot(&straight, &want);
  run_destroy(&straight);

  multi_init(&first, &MULTI_LAYOUT, backend, dtype, NULL);
  run_steps(&first, 0, SAVE_AT);
  const char *path = path_of("multi.safetensors");
  OK(cuoptimSave(first.opt, path));
  unsigned char *params[MULTI_VARS];
  run_params(&first, params);
  run_steps(&first, SAVE_AT, STEPS);
  multi_snapshot(&first, &went_on);
  run_destroy(&first);
  multi_assert_equal(&went_on, &want, 1, what);

  multi_init(&second, &MULTI_LAYOUT, backend, dtype, params);
  OK(cuoptimLoad(second.opt, path));
  int64_t iterations = -1;
  OK(cuoptimGetIterations(second.opt, &iterations));
  cr_assert_eq(iterations, SAVE_AT, "the MultiOptimizer's counter is loaded");
  run_steps(&second, SAVE_AT, STEPS);
  multi_snapshot(&second, &got);
  run_destroy(&second);
  multi_assert_equal(&got, &want, 1, what);
  char others[256];
  other_files("multi.safetensors", others, sizeof others);
  cr_assert_str_eq(others, "", "files left beside the checkpoint: %s", others);
  free_params(params, MULTI_VARS);
  multi_snapshot_free(&want);
  multi_snapshot_free(&went_on);
  multi_snapshot_free(&got);
}

Test(checkpoint, multi_optimizer_resume_float32) { multi_resume(CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT32); }
Test(checkpoint, multi_optimizer_resume_float16) { multi_resume(CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT16); }
Test(checkpoint, multi_optimizer_resume_bfloat16) { multi_resume(CUOPTIM_BACKEND_HOST, CUOPTIM_BFLOAT16); }
Test(checkpoint_cuda, multi_optimizer_resume_float32) { multi_resume(CUOPTIM_BACKEND_CUDA, CUOPTIM_FLOAT32); }
Test(checkpoint_cuda, multi_optimizer_resume_float16) { multi_resume(CUOPTIM_BACKEND_CUDA, CUOPTIM_FLOAT16); }
Test(checkpoint_cuda, multi_optimizer_resume_bfloat16) { multi_resume(CUOPTIM_BACKEND_CUDA, CUOPTIM_BFLOAT16); }

/* Saved by `from`, loaded by `to`: the loaded state is the saved one, bit for bit. */
static void multi_round_trip(cuoptimBackend_t from, cuoptimBackend_t to, cuoptimDtype_t dtype) {
  test_require_backend(from);
  test_require_backend(to);
  Run a, b;
  multi_init(&a, &MULTI_LAYOUT, from, dtype, NULL);
  run_steps(&a, 0, SAVE_AT);
  MultiSnapshot before, after;
  multi_snapshot(&a, &before);
  const char *path = path_of("multi.safetensors");
  OK(cuoptimSave(a.opt, path));
  unsigned char *params[MULTI_VARS];
  run_params(&a, params);
  multi_init(&b, &MULTI_LAYOUT, to, dtype, params);
  OK(cuoptimLoad(b.opt, path));
  multi_snapshot(&b, &after);
  char what[160];
  snprintf(what, sizeof what, "MultiOptimizer %s saved on %s, loaded on %s", dtype_label(dtype),
           test_backend_name(from), test_backend_name(to));
  multi_assert_equal(&after, &before, 1, what);
  free_params(params, MULTI_VARS);
  multi_snapshot_free(&before);
  multi_snapshot_free(&after);
  run_destroy(&a);
  run_destroy(&b);
}

Test(checkpoint, multi_optimizer_round_trip_through_a_small_staging_buffer) {
  cuoptim_checkpoint_set_staging_bytes(100);
  multi_round_trip(CUOPTIM_BACKEND_HOST, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT16);
  cuoptim_checkpoint_set_staging_bytes(0);
}

Test(checkpoint_cuda, multi_optimizer_checkpoints_move_between_backends) {
  multi_round_trip(CUOPTIM_BACKEND_HOST, CUOPTIM_BACKEND_CUDA, CUOPTIM_BFLOAT16);
  multi_round_trip(CUOPTIM_BACKEND_CUDA, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT16);
}

/* The names and metadata the header documents: the MultiOptimizer's own entries unprefixed, each
 * sub-optimizer's under "optimizers/<k>/", a layout and every sub-optimizer's config and table. */
Test(checkpoint, multi_optimizer_names_its_tensors_by_sub_optimizer) {
  Run a;
  multi_init(&a, &MULTI_LAYOUT, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT16, NULL);
  run_steps(&a, 0, 2);
  const char *path = path_of("multi.safetensors");
  OK(cuoptimSave(a.opt, path));
  Bytes b = read_bytes(path);
  Parsed p = parse_bytes(b);
  free(b.bytes);
  static const char *const names[] = {"iteration",
                                      "learning_rate",
                                      "optimizers/0/iteration",
                                      "optimizers/0/dense_kernel_momentum",
                                      "optimizers/0/dense_kernel_velocity_hat",
                                      "optimizers/0/dense/kernel/master",
                                      "optimizers/1/learning_rate",
                                      "optimizers/1/embedding_pos_momentum",
                                      "optimizers/1/embedding_pos_average",
                                      "optimizers/2/variable",
                                      "optimizers/2/norm/gamma/master"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    cr_expect_not_null(cJSON_GetObjectItemCaseSensitive(p.root, names[i]), "no tensor \"%s\"", names[i]);
  cJSON *meta = metadata_of(&p);
  static const char *const keys[] = {"multi_optimizer",          "keras_config",           "crc32",
                                     "optimizers/0/keras_config", "optimizers/2/variables", "optimizers/1/variables"};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
    cr_expect_not_null(cJSON_GetObjectItemCaseSensitive(meta, keys[i]), "no metadata \"%s\"", keys[i]);
  cr_expect_null(cJSON_GetObjectItemCaseSensitive(meta, "variables"));
  cJSON *config = metadata_json(&p, "keras_config");
  cJSON *class_name = cJSON_GetObjectItemCaseSensitive(config, "class_name");
  cr_expect(cJSON_IsString(class_name) && strcmp(class_name->valuestring, "MultiOptimizer") == 0);
  cJSON_Delete(config);
  parsed_free(&p);
  run_destroy(&a);
}

/* `call` refused with `status` and a message holding `needle`. */
static void expect_refusal(cuoptimStatus_t got, cuoptimStatus_t status, const char *needle, const char *what) {
  cr_assert_eq(got, status, "%s: status %s, expected %s: %s", what, cuoptimGetStatusString(got),
               cuoptimGetStatusString(status), cuoptimGetLastErrorMessage());
  cr_assert(strstr(cuoptimGetLastErrorMessage(), needle) != NULL, "%s: the message \"%s\" lacks \"%s\"", what,
            cuoptimGetLastErrorMessage(), needle);
}

/* A MultiOptimizer refuses `path` (status, a message naming the file and holding `needle`) and
 * changes nothing, stepped or not built yet. */
static void expect_multi_refuses(const MultiLayout *layout, const char *path, cuoptimStatus_t status,
                                 const char *needle, const char *what) {
  for (int stepped = 0; stepped <= 1; stepped++) {
    Run r;
    multi_init(&r, layout, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT16, NULL);
    if (stepped) run_steps(&r, 0, 3);
    MultiSnapshot before, after;
    multi_snapshot(&r, &before);
    expect_refusal(cuoptimLoad(r.opt, path), status, needle, what);
    cr_assert(strstr(cuoptimGetLastErrorMessage(), path) != NULL, "%s: the message \"%s\" names no file", what,
              cuoptimGetLastErrorMessage());
    multi_snapshot(&r, &after);
    multi_assert_equal(&after, &before, 1, what);
    multi_snapshot_free(&before);
    multi_snapshot_free(&after);
    run_destroy(&r);
  }
}

static const char *save_multi(const MultiLayout *layout, const char *file) {
  Run a;
  multi_init(&a, layout, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT16, NULL);
  run_steps(&a, 0, SAVE_AT);
  const char *path = path_of(file);
  OK(cuoptimSave(a.opt, path));
  run_destroy(&a);
  return path;
}

/* A plain optimizer's file and a MultiOptimizer's do not load into each other. */
Test(checkpoint, multi_optimizer_and_plain_files_do_not_mix) {
  Setup setup = setup_adamw();
  Run plain;
  run_init(&plain, &setup, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT16, NULL);
  run_steps(&plain, 0, 2);
  const char *plain_path = path_of("plain.safetensors");
  OK(cuoptimSave(plain.opt, plain_path));
  expect_multi_refuses(&MULTI_LAYOUT, plain_path, CUOPTIM_STATUS_INVALID_VALUE, "state of a plain optimizer",
                       "a plain optimizer's file into a MultiOptimizer");

  const char *multi_path = save_multi(&MULTI_LAYOUT, "multi.safetensors");
  Snapshot before, after;
  snapshot_take(&plain, &before);
  expect_refusal(cuoptimLoad(plain.opt, multi_path), CUOPTIM_STATUS_INVALID_VALUE, "state of a MultiOptimizer",
                 "a MultiOptimizer's file into a plain optimizer");
  snapshot_take(&plain, &after);
  snapshot_assert_equal(&after, &before, 1, "a plain optimizer after refusing a MultiOptimizer's file");
  snapshot_free(&before);
  snapshot_free(&after);
  run_destroy(&plain);
}

/* A file of another MultiOptimizer layout is refused, and says where the layouts part. */
Test(checkpoint, multi_optimizer_refuses_another_layout) {
  const char *path = save_multi(&MULTI_LAYOUT, "multi.safetensors");
  MultiLayout fewer = MULTI_LAYOUT, kind = MULTI_LAYOUT, routing = MULTI_LAYOUT, shape = MULTI_LAYOUT;
  fewer.num_subs = 2;
  kind.sub_1 = CUOPTIM_ADAM;
  routing.embedding_key = "embedding/emb.*"; /* "embedding/pos" goes to the default */
  shape.transposed = 1;
  expect_multi_refuses(&fewer, path, CUOPTIM_STATUS_INVALID_VALUE, "MultiOptimizer of 3 sub-optimizers, this one has 2",
                       "fewer sub-optimizers");
  expect_multi_refuses(&kind, path, CUOPTIM_STATUS_INVALID_VALUE,
                       "sub-optimizer 1: the file holds the state of SGD, this optimizer is Adam",
                       "another kind of sub-optimizer");
  expect_multi_refuses(&routing, path, CUOPTIM_STATUS_INVALID_VALUE, "multi_optimizer.patterns[1]",
                       "another routing of the variables");
  expect_multi_refuses(&shape, path, CUOPTIM_STATUS_INVALID_VALUE, "multi_optimizer.variables[0].shape[0]: 29",
                       "another shape");
  /* The same layout in the other direction: a file of fewer sub-optimizers. */
  const char *fewer_path = save_multi(&fewer, "fewer.safetensors");
  expect_multi_refuses(&MULTI_LAYOUT, fewer_path, CUOPTIM_STATUS_INVALID_VALUE,
                       "MultiOptimizer of 2 sub-optimizers, this one has 3", "more sub-optimizers");
}

/* All or nothing: a file whose last sub-optimizer's data is corrupted changes no sub-optimizer. */
Test(checkpoint, multi_optimizer_load_of_a_corrupted_file_changes_nothing) {
  const char *path = save_multi(&MULTI_LAYOUT, "multi.safetensors");
  Bytes b = read_bytes(path);
  Parsed p = parse_bytes(b);
  free(b.bytes);
  size_t begin = 0, end = 0;
  tensor_offsets(&p, "optimizers/2/head_w_velocity", &begin, &end);
  p.data[begin] ^= 0x40;
  Bytes corrupted = assemble_parsed(&p);
  const char *bad = path_of("corrupted.safetensors");
  write_bytes(bad, corrupted.bytes, corrupted.size);
  free(corrupted.bytes);
  parsed_free(&p);
  expect_multi_refuses(&MULTI_LAYOUT, bad, CUOPTIM_STATUS_INVALID_VALUE, "\"optimizers/2/head_w_velocity\": its data",
                       "a corrupted sub-optimizer tensor");
}

/* NULL handle or path, empty path: refused before any file is touched. */
Test(checkpoint, multi_optimizer_save_and_load_reject_bad_arguments) {
  Run r;
  multi_init(&r, &MULTI_LAYOUT, CUOPTIM_BACKEND_HOST, CUOPTIM_FLOAT32, NULL);
  const char *path = path_of("multi.safetensors");
  expect_refusal(cuoptimSave(NULL, path), CUOPTIM_STATUS_NULL_POINTER, "cuoptimSave: optimizer is NULL", "Save(NULL)");
  expect_refusal(cuoptimLoad(NULL, path), CUOPTIM_STATUS_NULL_POINTER, "cuoptimLoad: optimizer is NULL", "Load(NULL)");
  expect_refusal(cuoptimSave(r.opt, NULL), CUOPTIM_STATUS_NULL_POINTER, "cuoptimSave: path", "Save(path NULL)");
  expect_refusal(cuoptimLoad(r.opt, NULL), CUOPTIM_STATUS_NULL_POINTER, "cuoptimLoad: path", "Load(path NULL)");
  expect_refusal(cuoptimSave(r.opt, ""), CUOPTIM_STATUS_INVALID_VALUE, "path is empty", "Save(\"\")");
  expect_refusal(cuoptimLoad(r.opt, path), CUOPTIM_STATUS_IO_ERROR, "cannot open", "Load of a missing file");
  for (int k = 0; k < MULTI_SUBS; k++) {
    cuoptimOptimizer_t sub = NULL;
    OK(cuoptimGetSubOptimizer(r.opt, k, &sub));
    cr_assert(!sub->built, "a refused call builds nothing");
  }
  char others[256];
  other_files("", others, sizeof others);
  cr_assert_str_eq(others, "", "files left: %s", others);
  run_destroy(&r);
}

/* A sub-optimizer's handle saves and loads its own state as a plain optimizer does; its file is a
 * plain optimizer's to the MultiOptimizer, and the MultiOptimizer's is not its. */
Test(checkpoint, a_sub_optimizer_checkpoints_its_own_state) {
  Run a, b;
  multi_init(&a, &MULTI_LAYOUT, CUOPTIM_BACKEND_HOST, CUOPTIM_BFLOAT16, NULL);
  run_steps(&a, 0, SAVE_AT);
  cuoptimOptimizer_t sub_a = NULL, sub_b = NULL;
  OK(cuoptimGetSubOptimizer(a.opt, 1, &sub_a));
  const char *path = path_of("sub.safetensors");
  OK(cuoptimSave(sub_a, path));
  multi_init(&b, &MULTI_LAYOUT, CUOPTIM_BACKEND_HOST, CUOPTIM_BFLOAT16, NULL);
  expect_refusal(cuoptimLoad(b.opt, path), CUOPTIM_STATUS_INVALID_VALUE, "cuoptimGetSubOptimizer",
                 "a sub-optimizer's file into its MultiOptimizer");
  OK(cuoptimGetSubOptimizer(b.opt, 1, &sub_b));
  OK(cuoptimLoad(sub_b, path));
  int count = 0;
  OK(cuoptimGetWeightCount(sub_a, &count));
  for (int i = 0; i < count; i++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(sub_a, i, &info));
    double *x = malloc(info.count * sizeof *x), *y = malloc(info.count * sizeof *y);
    OK(cuoptimGetWeights(sub_a, i, x, info.count));
    OK(cuoptimGetWeights(sub_b, i, y, info.count));
    cr_assert(same_bits(x, y, info.count * sizeof *x), "entry %s of the sub-optimizer", info.name);
    free(x);
    free(y);
  }
  const char *multi_path = path_of("multi.safetensors");
  OK(cuoptimSave(a.opt, multi_path));
  expect_refusal(cuoptimLoad(sub_b, multi_path), CUOPTIM_STATUS_INVALID_VALUE, "state of a MultiOptimizer",
                 "a MultiOptimizer's file into a sub-optimizer");
  run_destroy(&a);
  run_destroy(&b);
}
