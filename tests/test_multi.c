/*
 * test_multi.c — keras.optimizers.MultiOptimizer with an OptimizerMap: Keras's
 * multi_optimizer_test.py ported to cuoptim, and every new call's bad input.
 *
 * The tests that step take the backend as a parameter: suite multi runs them on the host
 * backend, suite multi_cuda on device memory (skipped without a GPU). Names follow Keras's tests
 * (keras test_stateful_apply -> stateful_apply_matches_keras).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuoptim.h"
#include "testutil.h"

/* json.dumps(keras.optimizers.serialize(m)) of Keras 3.15.1, for multi_optimizer_test.py's
 * test_serialization map (RMSprop default, Adam "^dense_1/.*", SGD "^dense_2/.*"). */
static const char KERAS_SERIALIZED[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"MultiOptimizer\", \"config\": {\"optimizer_map\":"
    " {\"module\": \"keras.optimizers\", \"class_name\": \"OptimizerMap\", \"config\": {\"default_optimize"
    "r\": {\"module\": \"keras.optimizers\", \"class_name\": \"RMSprop\", \"config\": {\"name\": \"rm_sprop\","
    " \"learning_rate\": 9.999999747378752e-05, \"weight_decay\": null, \"clipnorm\": null, \"global_c"
    "lipnorm\": null, \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99, \"ema_overwrite_"
    "frequency\": null, \"loss_scale_factor\": null, \"gradient_accumulation_steps\": null, \"rho\": 0"
    ".9, \"momentum\": 0.0, \"epsilon\": 1e-07, \"centered\": false}, \"registered_name\": null}, \"opti"
    "mizer_map\": {\"^dense_1/.*\": {\"module\": \"keras.optimizers\", \"class_name\": \"Adam\", \"config\":"
    " {\"name\": \"adam\", \"learning_rate\": 0.0010000000474974513, \"weight_decay\": null, \"clipnorm\""
    ": null, \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99"
    ", \"ema_overwrite_frequency\": null, \"loss_scale_factor\": null, \"gradient_accumulation_steps"
    "\": null, \"beta_1\": 0.9, \"beta_2\": 0.999, \"epsilon\": 1e-07, \"amsgrad\": false}, \"registered_"
    "name\": null}, \"^dense_2/.*\": {\"module\": \"keras.optimizers\", \"class_name\": \"SGD\", \"config\":"
    " {\"name\": \"sgd\", \"learning_rate\": 0.009999999776482582, \"weight_decay\": null, \"clipnorm\": "
    "null, \"global_clipnorm\": null, \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99, "
    "\"ema_overwrite_frequency\": null, \"loss_scale_factor\": null, \"gradient_accumulation_steps\":"
    " null, \"momentum\": 0.0, \"nesterov\": false}, \"registered_name\": null}}}, \"registered_name\":"
    " null}, \"loss_scale_factor\": null, \"name\": \"multi_optimizer\"}, \"registered_name\": null}";

/* MultiOptimizer(OptimizerMap(SGD(0.1)), loss_scale_factor=5.0, name="mo"): an empty map. */
static const char KERAS_SERIALIZED_EMPTY_MAP[] =
    "{\"module\": \"keras.optimizers\", \"class_name\": \"MultiOptimizer\", \"config\": {\"optimizer_map\":"
    " {\"module\": \"keras.optimizers\", \"class_name\": \"OptimizerMap\", \"config\": {\"default_optimize"
    "r\": {\"module\": \"keras.optimizers\", \"class_name\": \"SGD\", \"config\": {\"name\": \"sgd_1\", \"learn"
    "ing_rate\": 0.10000000149011612, \"weight_decay\": null, \"clipnorm\": null, \"global_clipnorm\":"
    " null, \"clipvalue\": null, \"use_ema\": false, \"ema_momentum\": 0.99, \"ema_overwrite_frequency"
    "\": null, \"loss_scale_factor\": 5.0, \"gradient_accumulation_steps\": null, \"momentum\": 0.0, \""
    "nesterov\": false}, \"registered_name\": null}, \"optimizer_map\": {}}, \"registered_name\": null"
    "}, \"loss_scale_factor\": 5.0, \"name\": \"mo\"}, \"registered_name\": null}";

/* ---- helpers ------------------------------------------------------------------------------------ */

/* Both backends run the same body. */
#define MULTI_TEST(name)                                      \
  static void name##_on(cuoptimBackend_t backend);            \
  Test(multi, name) { name##_on(CUOPTIM_BACKEND_HOST); }      \
  Test(multi_cuda, name) {                                    \
    test_require_backend(CUOPTIM_BACKEND_CUDA);               \
    name##_on(CUOPTIM_BACKEND_CUDA);                          \
  }                                                           \
  static void name##_on(cuoptimBackend_t backend)

static cuoptimConfig_t config_of(cuoptimOptimizerKind_t kind, double learning_rate) {
  cuoptimConfig_t c;
  OK(cuoptimConfigInit(&c, kind));
  c.learning_rate.initial_learning_rate = learning_rate;
  return c;
}

/* A MultiOptimizer of `n` sub-optimizers; key i uses sub-optimizer uses[i]. */
static cuoptimStatus_t try_create(cuoptimOptimizer_t *opt, const cuoptimConfig_t *subs, int n, const char *const *keys,
                                  const int *uses, int num_keys, int default_optimizer, double loss_scale_factor,
                                  cuoptimBackend_t backend) {
  cuoptimMultiConfig_t m;
  OK(cuoptimMultiConfigInit(&m));
  m.num_optimizers = n;
  m.optimizers = subs;
  m.num_patterns = num_keys;
  m.patterns = keys;
  m.pattern_optimizer = uses;
  m.default_optimizer = default_optimizer;
  m.loss_scale_factor = loss_scale_factor;
  return cuoptimCreateMulti(opt, &m, backend, 0);
}

/* The variables of a test: host values, their backend copies, one gradient buffer each. */
#define MAX_VARS 6
typedef struct {
  cuoptimBackend_t backend;
  cuoptimOptimizer_t opt;
  int n;
  size_t count[MAX_VARS];
  float *param[MAX_VARS];
  float *grad[MAX_VARS];
} vars_t;

static void add_var(vars_t *v, const char *name, const float *init, size_t count) {
  int k = v->n++;
  v->count[k] = count;
  v->param[k] = test_mem_from(v->backend, init, count);
  v->grad[k] = test_mem_from(v->backend, init, count);
  cuoptimVariable_t index = -1;
  OK(cuoptimAddVariable(v->opt, name, v->param[k], CUOPTIM_FLOAT32, count, &index));
  cr_assert_eq(index, k);
}

/* One step: grads[k] for variable k (NULL: no gradient, listed with grad NULL). */
static cuoptimStatus_t try_step(vars_t *v, const float *const *grads) {
  cuoptimGradient_t pairs[MAX_VARS];
  for (int k = 0; k < v->n; k++) {
    if (grads[k]) test_mem_upload(v->backend, v->grad[k], grads[k], v->count[k] * sizeof(float));
    pairs[k].variable = k;
    pairs[k].grad = grads[k] ? v->grad[k] : NULL;
    pairs[k].dtype = CUOPTIM_FLOAT32;
  }
  return cuoptimApplyGradients(v->opt, v->n, pairs, NULL);
}

static void expect_param(vars_t *v, int k, const float *want, double tol) {
  float got[64];
  OK(cuoptimSynchronize(v->opt));
  test_mem_download(v->backend, got, v->param[k], v->count[k] * sizeof(float));
  for (size_t i = 0; i < v->count[k]; i++)
    cr_expect(fabs(got[i] - want[i]) <= tol + tol * fabs(want[i]), "variable %d[%zu]: got %.9g, want %.9g", k, i,
              (double)got[i], (double)want[i]);
}

static void vars_destroy(vars_t *v) {
  OK(cuoptimDestroy(v->opt));
  for (int k = 0; k < v->n; k++) {
    test_mem_free(v->backend, v->param[k]);
    test_mem_free(v->backend, v->grad[k]);
  }
}

static int variable_optimizer(cuoptimOptimizer_t opt, cuoptimVariable_t variable) {
  int index = -1;
  OK(cuoptimGetVariableOptimizer(opt, variable, &index, NULL));
  return index;
}

static int64_t iterations_of(cuoptimOptimizer_t opt) {
  int64_t it = -1;
  OK(cuoptimGetIterations(opt, &it));
  return it;
}

static int64_t sub_iterations(cuoptimOptimizer_t opt, int index) {
  cuoptimOptimizer_t sub = NULL;
  OK(cuoptimGetSubOptimizer(opt, index, &sub));
  return iterations_of(sub);
}

static void expect_error(cuoptimStatus_t got, cuoptimStatus_t want, const char *fragment) {
  cr_expect_eq(got, want, "status %d (%s), want %d: %s", (int)got, cuoptimGetStatusString(got), (int)want,
               cuoptimGetLastErrorMessage());
  cr_expect(strstr(cuoptimGetLastErrorMessage(), fragment) != NULL, "message \"%s\" lacks \"%s\"",
            cuoptimGetLastErrorMessage(), fragment);
}

static const float ONE[1] = {1.0f};

/* ---- multi_optimizer_test.py ----------------------------------------------------------------------- */

/* test_optimizer_map_matching: keys are fullmatched; two matching keys are an error. */
Test(multi, optimizer_map_matching_matches_keras) {
  cuoptimConfig_t subs[3] = {config_of(CUOPTIM_ADAM, 1e-3), config_of(CUOPTIM_SGD, 1e-2),
                             config_of(CUOPTIM_RMSPROP, 1e-3)};
  const char *keys[] = {"^dense/.*", "^conv/.*"};
  const int uses[] = {0, 1};
  vars_t v = {CUOPTIM_BACKEND_HOST, NULL, 0, {0}, {0}, {0}};
  OK(try_create(&v.opt, subs, 3, keys, uses, 2, 2, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST));
  add_var(&v, "dense/kernel", ONE, 1);
  add_var(&v, "conv/kernel", ONE, 1);
  add_var(&v, "bias", ONE, 1);
  cr_expect_eq(variable_optimizer(v.opt, 0), 0);
  cr_expect_eq(variable_optimizer(v.opt, 1), 1);
  cr_expect_eq(variable_optimizer(v.opt, 2), 2);
  /* fullmatch, not search: "xdense/k" does not start with "dense/". */
  add_var(&v, "xdense/k", ONE, 1);
  cr_expect_eq(variable_optimizer(v.opt, 3), 2);
  vars_destroy(&v);

  const char *conflict[] = {".*kernel.*", ".*dense.*"};
  cuoptimOptimizer_t opt = NULL;
  OK(try_create(&opt, subs, 3, conflict, uses, 2, 2, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST));
  cuoptimVariable_t index = -1;
  expect_error(cuoptimAddVariable(opt, "dense/kernel", (void *)ONE, CUOPTIM_FLOAT32, 1, &index),
               CUOPTIM_STATUS_INVALID_VALUE, "multiple optimizers assigned");
  int count = -1;
  OK(cuoptimGetVariableCount(opt, &count));
  cr_expect_eq(count, 0);
  OK(cuoptimDestroy(opt));
}

/* OptimizerMap.__getitem__'s docstring: an exact key wins over a pattern that also matches; a key
 * without regex characters matches only itself. */
Test(multi, exact_key_first_then_fullmatch_matches_keras_docstring) {
  cuoptimConfig_t subs[3] = {config_of(CUOPTIM_ADAM, 1e-3), config_of(CUOPTIM_SGD, 1e-2),
                             config_of(CUOPTIM_RMSPROP, 1e-3)};
  const char *keys[] = {"encoder/layer_0/dense", "encoder/.*", "decoder"};
  const int uses[] = {0, 1, 0};
  vars_t v = {CUOPTIM_BACKEND_HOST, NULL, 0, {0}, {0}, {0}};
  OK(try_create(&v.opt, subs, 3, keys, uses, 3, 2, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST));
  add_var(&v, "decoder", ONE, 1);
  add_var(&v, "encoder/layer_0/dense", ONE, 1);
  add_var(&v, "encoder/layer_0/attention/query", ONE, 1);
  add_var(&v, "decoder/layer_0/dense", ONE, 1);
  cr_expect_eq(variable_optimizer(v.opt, 0), 0);
  cr_expect_eq(variable_optimizer(v.opt, 1), 0);
  cr_expect_eq(variable_optimizer(v.opt, 2), 1);
  cr_expect_eq(variable_optimizer(v.opt, 3), 2);
  vars_destroy(&v);
}

/* test_multi_optimizer_initialization and test_default_fallback. */
Test(multi, initialization_and_default_fallback_match_keras) {
  cuoptimConfig_t subs[3] = {config_of(CUOPTIM_ADAM, 1e-3), config_of(CUOPTIM_SGD, 1e-2),
                             config_of(CUOPTIM_RMSPROP, 1e-4)};
  const char *keys[] = {"^dense_1/.*", "^dense_2/.*"};
  const int uses[] = {0, 1};
  vars_t v = {CUOPTIM_BACKEND_HOST, NULL, 0, {0}, {0}, {0}};
  OK(try_create(&v.opt, subs, 3, keys, uses, 2, 2, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST));
  add_var(&v, "dense_1/kernel", ONE, 1);
  add_var(&v, "dense_2/kernel", ONE, 1);
  add_var(&v, "other/kernel", ONE, 1);
  int count = 0;
  OK(cuoptimGetSubOptimizerCount(v.opt, &count));
  cr_expect_eq(count, 3);
  const cuoptimOptimizerKind_t kinds[3] = {CUOPTIM_ADAM, CUOPTIM_SGD, CUOPTIM_RMSPROP};
  for (int k = 0; k < 3; k++) {
    cuoptimOptimizer_t sub = NULL;
    cuoptimConfig_t c;
    OK(cuoptimGetSubOptimizer(v.opt, k, &sub));
    OK(cuoptimGetConfig(sub, &c));
    cr_expect_eq(c.kind, kinds[k]);
    cr_expect_eq(variable_optimizer(v.opt, k), k);
  }
  vars_destroy(&v);
}

/* test_stateful_apply: three SGDs; each sub-optimizer's and the MultiOptimizer's iterations. */
MULTI_TEST(stateful_apply_matches_keras) {
  cuoptimConfig_t subs[3] = {config_of(CUOPTIM_SGD, 0.1), config_of(CUOPTIM_SGD, 1.0), config_of(CUOPTIM_SGD, 0.0)};
  const char *keys[] = {"^dense_1/.*", "^dense_2/.*"};
  const int uses[] = {0, 1};
  vars_t v = {backend, NULL, 0, {0}, {0}, {0}};
  OK(try_create(&v.opt, subs, 3, keys, uses, 2, 2, CUOPTIM_NONE, backend));
  const float w1[2] = {2, 2}, w2[2] = {3, 3}, w3[2] = {4, 4}, g[2] = {1, 1};
  add_var(&v, "dense_1/kernel", w1, 2);
  add_var(&v, "dense_2/kernel", w2, 2);
  add_var(&v, "other/kernel", w3, 2);
  const float *grads[3] = {g, g, g};
  OK(try_step(&v, grads));
  const float want1[2] = {1.9f, 1.9f}, want2[2] = {2, 2};
  expect_param(&v, 0, want1, 1e-6);
  expect_param(&v, 1, want2, 1e-6);
  expect_param(&v, 2, w3, 1e-6);
  cr_expect_eq(iterations_of(v.opt), 1);
  for (int k = 0; k < 3; k++) cr_expect_eq(sub_iterations(v.opt, k), 1);
  vars_destroy(&v);
}

/* test_stateless_apply's numbers (the same step through the stateful API): a shared default. */
MULTI_TEST(stateless_apply_numbers_match_keras) {
  cuoptimConfig_t subs[2] = {config_of(CUOPTIM_SGD, 0.1), config_of(CUOPTIM_SGD, 1.0)};
  const char *keys[] = {"^dense_1/.*"};
  const int uses[] = {0};
  vars_t v = {backend, NULL, 0, {0}, {0}, {0}};
  OK(try_create(&v.opt, subs, 2, keys, uses, 1, 1, CUOPTIM_NONE, backend));
  const float w1[2] = {2, 2}, w2[2] = {3, 3}, g[2] = {1, 1};
  add_var(&v, "dense_1/kernel", w1, 2);
  add_var(&v, "dense_2/kernel", w2, 2);
  const float *grads[2] = {g, g};
  OK(try_step(&v, grads));
  const float want1[2] = {1.9f, 1.9f}, want2[2] = {2, 2};
  expect_param(&v, 0, want1, 1e-6);
  expect_param(&v, 1, want2, 1e-6);
  vars_destroy(&v);
}

/* test_serialization: Keras's own JSON reads into the same map and writes back byte for byte. */
Test(multi, serialization_round_trips_keras_json) {
  const char *texts[2] = {KERAS_SERIALIZED, KERAS_SERIALIZED_EMPTY_MAP};
  const int subs[2] = {3, 1};
  for (int t = 0; t < 2; t++) {
    cuoptimOptimizer_t opt = NULL;
    OK(cuoptimCreateFromKerasJSON(&opt, texts[t], CUOPTIM_BACKEND_HOST, 0));
    int count = 0;
    OK(cuoptimGetSubOptimizerCount(opt, &count));
    cr_expect_eq(count, subs[t]);
    size_t length = 0;
    cr_expect_eq(cuoptimToKerasJSON(opt, NULL, 0, &length), CUOPTIM_STATUS_INVALID_VALUE);
    cr_expect_eq(length, strlen(texts[t]));
    char *text = malloc(length + 1);
    OK(cuoptimToKerasJSON(opt, text, length + 1, NULL));
    cr_expect_str_eq(text, texts[t]);
    free(text);
    OK(cuoptimDestroy(opt));
  }
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreateFromKerasJSON(&opt, KERAS_SERIALIZED, CUOPTIM_BACKEND_HOST, 0));
  const cuoptimOptimizerKind_t kinds[3] = {CUOPTIM_ADAM, CUOPTIM_SGD, CUOPTIM_RMSPROP};
  for (int k = 0; k < 3; k++) {
    cuoptimOptimizer_t sub = NULL;
    cuoptimConfig_t c;
    OK(cuoptimGetSubOptimizer(opt, k, &sub));
    OK(cuoptimGetConfig(sub, &c));
    cr_expect_eq(c.kind, kinds[k]);
  }
  cuoptimVariable_t w1 = -1;
  OK(cuoptimAddVariable(opt, "dense_1/kernel", (void *)ONE, CUOPTIM_FLOAT32, 1, &w1));
  cr_expect_eq(variable_optimizer(opt, w1), 0);
  OK(cuoptimDestroy(opt));
}

/* test_loss_scaling: the top loss_scale_factor replaces the sub-optimizers' own. */
Test(multi, loss_scale_factor_overrides_sub_optimizers_as_keras) {
  cuoptimConfig_t subs[3] = {config_of(CUOPTIM_ADAM, 1e-3), config_of(CUOPTIM_SGD, 1e-2),
                             config_of(CUOPTIM_RMSPROP, 1e-4)};
  subs[0].loss_scale_factor = 3.0;
  subs[1].loss_scale_factor = 4.0;
  subs[2].loss_scale_factor = 8.0;
  const char *keys[] = {"^dense_1/.*", "^dense_2/.*"};
  const int uses[] = {0, 1};
  cuoptimOptimizer_t opt = NULL;
  OK(try_create(&opt, subs, 3, keys, uses, 2, 2, 5.0, CUOPTIM_BACKEND_HOST));
  for (int k = 0; k < 3; k++) {
    cuoptimOptimizer_t sub = NULL;
    cuoptimConfig_t c;
    OK(cuoptimGetSubOptimizer(opt, k, &sub));
    OK(cuoptimGetConfig(sub, &c));
    cr_expect_eq(c.loss_scale_factor, 5.0);
  }
  OK(cuoptimDestroy(opt));
  /* None at the top is None in every sub-optimizer, as Keras's constructor assigns it. */
  OK(try_create(&opt, subs, 3, keys, uses, 2, 2, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST));
  cuoptimOptimizer_t sub = NULL;
  cuoptimConfig_t c;
  OK(cuoptimGetSubOptimizer(opt, 0, &sub));
  OK(cuoptimGetConfig(sub, &c));
  cr_expect(CUOPTIM_IS_NONE(c.loss_scale_factor));
  OK(cuoptimDestroy(opt));
}

/* test_gradient_unscaling: one SGD both mapped and the default; gradients divided by 5, not 2. */
MULTI_TEST(gradient_unscaling_matches_keras) {
  cuoptimConfig_t subs[1] = {config_of(CUOPTIM_SGD, 0.1)};
  subs[0].loss_scale_factor = 2.0;
  const char *keys[] = {"^dense_1/.*"};
  const int uses[] = {0};
  vars_t v = {backend, NULL, 0, {0}, {0}, {0}};
  OK(try_create(&v.opt, subs, 1, keys, uses, 1, 0, 5.0, backend));
  const float w[2] = {2, 2}, g[2] = {10, 10};
  add_var(&v, "dense_1/kernel", w, 2);
  const float *grads[1] = {g};
  OK(try_step(&v, grads));
  const float want[2] = {1.8f, 1.8f};
  expect_param(&v, 0, want, 1e-6);
  vars_destroy(&v);
}

/* test_model_fit_with_multi_optimizer's counters: a sub-optimizer without variables is never
 * stepped (iterations 0) while the others and the MultiOptimizer count the step. */
MULTI_TEST(unused_sub_optimizer_keeps_iterations_zero_as_keras) {
  cuoptimConfig_t subs[3] = {config_of(CUOPTIM_SGD, 1e-3), config_of(CUOPTIM_SGD, 1e-2), config_of(CUOPTIM_SGD, 0.1)};
  const char *keys[] = {".*dense_1/.*", ".*dense_2/.*"};
  const int uses[] = {0, 1};
  vars_t v = {backend, NULL, 0, {0}, {0}, {0}};
  OK(try_create(&v.opt, subs, 3, keys, uses, 2, 2, CUOPTIM_NONE, backend));
  const float w1[2] = {1, 1}, w2[2] = {1, 1}, g1[2] = {2, 2}, g2[2] = {4, 4};
  add_var(&v, "sequential/dense_1/kernel", w1, 2);
  add_var(&v, "sequential/dense_2/kernel", w2, 2);
  const float *grads[2] = {g1, g2};
  OK(try_step(&v, grads));
  const float want1[2] = {0.998f, 0.998f}, want2[2] = {0.96f, 0.96f};
  expect_param(&v, 0, want1, 1e-6);
  expect_param(&v, 1, want2, 1e-6);
  cr_expect_eq(iterations_of(v.opt), 1);
  cr_expect_eq(sub_iterations(v.opt, 0), 1);
  cr_expect_eq(sub_iterations(v.opt, 1), 1);
  cr_expect_eq(sub_iterations(v.opt, 2), 0);
  vars_destroy(&v);
}

/* test_learning_rate_scheduler_with_multi_optimizer: the learning rate lives on the
 * sub-optimizers; the MultiOptimizer has none (Keras raises AttributeError). */
Test(multi, learning_rate_is_the_sub_optimizers_as_keras) {
  cuoptimConfig_t subs[2] = {config_of(CUOPTIM_SGD, 0.1), config_of(CUOPTIM_SGD, 0.01)};
  const char *keys[] = {".*dense_1/.*"};
  const int uses[] = {0};
  cuoptimOptimizer_t opt = NULL;
  OK(try_create(&opt, subs, 2, keys, uses, 1, 1, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST));
  float lr = 0;
  expect_error(cuoptimGetLearningRate(opt, &lr), CUOPTIM_STATUS_NOT_SUPPORTED, "no learning rate");
  expect_error(cuoptimSetLearningRate(opt, 0.5), CUOPTIM_STATUS_NOT_SUPPORTED, "cuoptimSetLearningRate");
  const float want[2] = {0.05f, 0.005f};
  for (int k = 0; k < 2; k++) {
    cuoptimOptimizer_t sub = NULL;
    OK(cuoptimGetSubOptimizer(opt, k, &sub));
    OK(cuoptimGetLearningRate(sub, &lr));
    OK(cuoptimSetLearningRate(sub, lr * 0.5));
    OK(cuoptimGetLearningRate(sub, &lr));
    cr_expect(fabsf(lr - want[k]) <= 1e-6f * want[k], "sub %d: %g", k, (double)lr);
  }
  OK(cuoptimDestroy(opt));
}

/* ScheduleFreeAdamW's averaged weights belong to its sub-optimizer: the MultiOptimizer refuses the
 * call and says where to ask. */
Test(multi, schedule_free_averaged_weights_are_asked_of_the_sub_optimizer) {
  cuoptimConfig_t subs[2] = {config_of(CUOPTIM_SCHEDULE_FREE_ADAMW, 0.1), config_of(CUOPTIM_SGD, 0.01)};
  const char *keys[] = {"sf/.*"};
  const int uses[] = {0};
  cuoptimOptimizer_t opt = NULL;
  OK(try_create(&opt, subs, 2, keys, uses, 1, 1, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST));
  float out[4];
  expect_error(cuoptimScheduleFreeAveragedWeights(opt, 0, out, NULL), CUOPTIM_STATUS_NOT_SUPPORTED,
               "cuoptimGetVariableOptimizer");
  OK(cuoptimDestroy(opt));
}

/* test_swap_ema_weights_with_multi_optimizer: finalize swaps in the averages of the EMA
 * sub-optimizer's variables only. */
MULTI_TEST(finalize_uses_ema_of_its_sub_optimizer_only_as_keras) {
  cuoptimConfig_t subs[2] = {config_of(CUOPTIM_SGD, 0.1), config_of(CUOPTIM_SGD, 0.1)};
  subs[0].use_ema = 1;
  subs[0].ema_momentum = 0.9;
  const char *keys[] = {".*dense_1/.*"};
  const int uses[] = {0};
  vars_t v = {backend, NULL, 0, {0}, {0}, {0}};
  OK(try_create(&v.opt, subs, 2, keys, uses, 1, 1, CUOPTIM_NONE, backend));
  const float w1[2] = {2, 2}, w2[2] = {3, 3}, g[2] = {1, 1};
  add_var(&v, "seq/dense_1/kernel", w1, 2);
  add_var(&v, "seq/dense_2/kernel", w2, 2);
  const float *grads[2] = {g, g};
  OK(try_step(&v, grads));
  /* The state: multi iteration, learning_rate; SGD+EMA: iteration, learning_rate, average; SGD:
   * iteration, learning_rate. */
  int count = 0;
  OK(cuoptimGetWeightCount(v.opt, &count));
  cr_assert_eq(count, 7);
  cuoptimWeightInfo_t info;
  OK(cuoptimGetWeightInfo(v.opt, 4, &info));
  cr_expect_str_eq(info.name, "seq_dense_1_kernel_average");
  const double ema[2] = {9.0, 9.0};
  OK(cuoptimSetWeights(v.opt, 4, ema, 2));
  OK(cuoptimFinalizeVariableValues(v.opt, NULL));
  const float nine[2] = {9, 9}, w2_after[2] = {2.9f, 2.9f};
  expect_param(&v, 0, nine, 1e-6);
  expect_param(&v, 1, w2_after, 1e-6);
  vars_destroy(&v);
}

/* test_multi_optimizer_blocks_nested_optimizers, and Keras's LossScaleOptimizer around a
 * MultiOptimizer, which cuoptim does not support. */
Test(multi, nested_optimizers_are_refused_as_keras) {
  cuoptimConfig_t subs[1] = {config_of(CUOPTIM_SGD, 0.1)};
  subs[0].dynamic_loss_scale = 1;
  cuoptimOptimizer_t opt = NULL;
  expect_error(try_create(&opt, subs, 1, NULL, NULL, 0, 0, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST),
               CUOPTIM_STATUS_NOT_SUPPORTED, "LossScaleOptimizer");
  cr_expect_null(opt);
  /* Keras's JSON with the default replaced by a LossScaleOptimizer, and by a MultiOptimizer. */
  const char *lso = "{\"module\": \"keras.optimizers\", \"class_name\": \"LossScaleOptimizer\", \"config\": "
                    "{\"name\": \"loss_scale_optimizer\", \"inner_optimizer\": {\"module\": \"keras.optimizers\", "
                    "\"class_name\": \"SGD\", \"config\": {}, \"registered_name\": null}}, \"registered_name\": null}";
  const char *head = strstr(KERAS_SERIALIZED_EMPTY_MAP, "{\"module\": \"keras.optimizers\", \"class_name\": \"SGD\"");
  const char *tail = strstr(KERAS_SERIALIZED_EMPTY_MAP, ", \"optimizer_map\": {}");
  cr_assert(head && tail);
  const char *inner[2] = {lso, KERAS_SERIALIZED_EMPTY_MAP};
  for (int i = 0; i < 2; i++) {
    char text[4096];
    snprintf(text, sizeof text, "%.*s%s%s", (int)(head - KERAS_SERIALIZED_EMPTY_MAP), KERAS_SERIALIZED_EMPTY_MAP,
             inner[i], tail);
    expect_error(cuoptimCreateFromKerasJSON(&opt, text, CUOPTIM_BACKEND_HOST, 0), CUOPTIM_STATUS_NOT_SUPPORTED,
                 "config.optimizer_map.config.default_optimizer");
  }
  char wrapped[4096];
  snprintf(wrapped, sizeof wrapped,
           "{\"module\": \"keras.optimizers\", \"class_name\": \"LossScaleOptimizer\", \"config\": {\"name\": \"lso\", "
           "\"inner_optimizer\": %s}, \"registered_name\": null}",
           KERAS_SERIALIZED_EMPTY_MAP);
  expect_error(cuoptimCreateFromKerasJSON(&opt, wrapped, CUOPTIM_BACKEND_HOST, 0), CUOPTIM_STATUS_NOT_SUPPORTED,
               "inside a LossScaleOptimizer");
}

/* Keras's _filter_empty_gradients: a sub-optimizer whose gradients are all None fails the step,
 * here before anything is stepped. */
MULTI_TEST(sub_optimizer_without_any_gradient_fails_the_step_as_keras) {
  cuoptimConfig_t subs[2] = {config_of(CUOPTIM_SGD, 0.1), config_of(CUOPTIM_SGD, 0.1)};
  const char *keys[] = {"a.*"};
  const int uses[] = {0};
  vars_t v = {backend, NULL, 0, {0}, {0}, {0}};
  OK(try_create(&v.opt, subs, 2, keys, uses, 1, 1, CUOPTIM_NONE, backend));
  const float w[2] = {1, 1}, g[2] = {1, 1};
  add_var(&v, "a1", w, 2);
  add_var(&v, "a2", w, 2);
  add_var(&v, "b", w, 2);
  const float *none_for_b[3] = {g, g, NULL};
  expect_error(try_step(&v, none_for_b), CUOPTIM_STATUS_INVALID_VALUE, "No gradients provided for any variable");
  expect_param(&v, 0, w, 0);
  cr_expect_eq(iterations_of(v.opt), 0);
  const float *one_none[3] = {g, NULL, g};
  OK(try_step(&v, one_none));
  const float stepped[2] = {0.9f, 0.9f};
  expect_param(&v, 0, stepped, 1e-6);
  expect_param(&v, 1, w, 0);
  expect_param(&v, 2, stepped, 1e-6);
  cr_expect_eq(iterations_of(v.opt), 1);
  vars_destroy(&v);
}

/* set_weights in Keras's `variables` order: the MultiOptimizer's own, then each sub-optimizer's. */
MULTI_TEST(weights_follow_keras_variables_order) {
  cuoptimConfig_t subs[2] = {config_of(CUOPTIM_ADAM, 0.01), config_of(CUOPTIM_SGD, 0.1)};
  subs[1].momentum = 0.9;
  const char *keys[] = {"d.*"};
  const int uses[] = {0};
  vars_t v = {backend, NULL, 0, {0}, {0}, {0}};
  OK(try_create(&v.opt, subs, 2, keys, uses, 1, 1, CUOPTIM_NONE, backend));
  const float w[2] = {1, 2};
  add_var(&v, "other", w, 2);
  add_var(&v, "dense", w, 2);
  const char *names[] = {"iteration", "learning_rate", "iteration", "learning_rate", "dense_momentum",
                         "dense_velocity", "iteration", "learning_rate", "other_momentum"};
  int count = 0;
  OK(cuoptimGetWeightCount(v.opt, &count));
  cr_assert_eq(count, 9);
  for (int i = 0; i < count; i++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(v.opt, i, &info));
    cr_expect_str_eq(info.name, names[i]);
  }
  double x = 7;
  OK(cuoptimSetWeights(v.opt, 0, &x, 1));
  cr_expect_eq(iterations_of(v.opt), 7);
  double lr = -1;
  OK(cuoptimGetWeights(v.opt, 1, &lr, 1));
  cr_expect_eq(lr, 0.0);
  const double m[2] = {0.5, -0.25};
  OK(cuoptimSetWeights(v.opt, 8, m, 2));
  double back[2] = {0, 0};
  OK(cuoptimGetWeights(v.opt, 8, back, 2));
  cr_expect(back[0] == 0.5 && back[1] == -0.25);
  x = 3;
  OK(cuoptimSetWeights(v.opt, 6, &x, 1));
  cr_expect_eq(sub_iterations(v.opt, 1), 3);
  /* Variables cannot be added once the state is built. */
  cuoptimVariable_t index = -1;
  expect_error(cuoptimAddVariable(v.opt, "late", (void *)v.param[0], CUOPTIM_FLOAT32, 2, &index),
               CUOPTIM_STATUS_INVALID_STATE, "built");
  vars_destroy(&v);
}

/* ---- bad input of every new call ---------------------------------------------------------------- */

Test(multi, create_multi_rejects_bad_input) {
  cuoptimConfig_t subs[2] = {config_of(CUOPTIM_ADAM, 0.01), config_of(CUOPTIM_SGD, 0.1)};
  const char *keys[] = {"a.*", "b.*"};
  const int uses[] = {0, 0};
  cuoptimOptimizer_t opt = NULL;
  cuoptimMultiConfig_t m;
  expect_error(cuoptimMultiConfigInit(NULL), CUOPTIM_STATUS_NULL_POINTER, "config");
  OK(cuoptimMultiConfigInit(&m));
  expect_error(cuoptimCreateMulti(NULL, &m, CUOPTIM_BACKEND_HOST, 0), CUOPTIM_STATUS_NULL_POINTER, "optimizer");
  expect_error(cuoptimCreateMulti(&opt, NULL, CUOPTIM_BACKEND_HOST, 0), CUOPTIM_STATUS_NULL_POINTER, "config");
  expect_error(cuoptimCreateMulti(&opt, &m, CUOPTIM_BACKEND_HOST, 0), CUOPTIM_STATUS_INVALID_VALUE, "num_optimizers");
  m.num_optimizers = 1;
  expect_error(cuoptimCreateMulti(&opt, &m, CUOPTIM_BACKEND_HOST, 0), CUOPTIM_STATUS_NULL_POINTER, "optimizers");
  expect_error(try_create(&opt, subs, 2, keys, uses, -1, 1, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST),
               CUOPTIM_STATUS_INVALID_VALUE, "num_patterns");
  expect_error(try_create(&opt, subs, 2, NULL, uses, 1, 1, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST),
               CUOPTIM_STATUS_NULL_POINTER, "patterns");
  expect_error(try_create(&opt, subs, 2, keys, NULL, 1, 1, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST),
               CUOPTIM_STATUS_NULL_POINTER, "pattern_optimizer");
  expect_error(try_create(&opt, subs, 2, keys, uses, 1, 2, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST),
               CUOPTIM_STATUS_INVALID_VALUE, "default_optimizer");
  const int late[] = {1, 0};
  expect_error(try_create(&opt, subs, 2, keys, late, 2, 1, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST),
               CUOPTIM_STATUS_INVALID_VALUE, "Keras's order");
  expect_error(try_create(&opt, subs, 2, keys, uses, 2, 0, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST),
               CUOPTIM_STATUS_INVALID_VALUE, "used by no pattern");
  const char *twice[] = {"a.*", "a.*"};
  expect_error(try_create(&opt, subs, 2, twice, uses, 2, 1, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST),
               CUOPTIM_STATUS_INVALID_VALUE, "repeats");
  const char *empty[] = {""};
  expect_error(try_create(&opt, subs, 2, empty, uses, 1, 1, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST),
               CUOPTIM_STATUS_INVALID_VALUE, "empty");
  const char *null_key[] = {NULL};
  expect_error(try_create(&opt, subs, 2, null_key, uses, 1, 1, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST),
               CUOPTIM_STATUS_NULL_POINTER, "patterns[0]");
  const char *bad_regex[] = {"a("};
  expect_error(try_create(&opt, subs, 2, bad_regex, uses, 1, 1, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST),
               CUOPTIM_STATUS_INVALID_VALUE, "patterns[0]");
  expect_error(try_create(&opt, subs, 2, keys, uses, 1, 1, -1.0, CUOPTIM_BACKEND_HOST), CUOPTIM_STATUS_INVALID_VALUE,
               "loss_scale_factor");
  cuoptimConfig_t bad[2] = {subs[0], subs[1]};
  bad[1].beta_1 = 0.5;
  bad[1].momentum = 2.0;
  expect_error(try_create(&opt, bad, 2, keys, uses, 1, 1, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST),
               CUOPTIM_STATUS_INVALID_VALUE, "momentum");
  expect_error(try_create(&opt, subs, 2, keys, uses, 1, 1, CUOPTIM_NONE, (cuoptimBackend_t)7),
               CUOPTIM_STATUS_INVALID_VALUE, "backend");
  cr_expect_null(opt);
  /* A global flag opens the key; fullmatch keeps it first. */
  const char *flags[] = {"(?i)A.*"};
  OK(try_create(&opt, subs, 2, flags, uses, 1, 1, CUOPTIM_NONE, CUOPTIM_BACKEND_HOST));
  cuoptimVariable_t index = -1;
  OK(cuoptimAddVariable(opt, "abc", (void *)ONE, CUOPTIM_FLOAT32, 1, &index));
  cr_expect_eq(variable_optimizer(opt, index), 0);
  OK(cuoptimDestroy(opt));
}

Test(multi, create_from_keras_json_rejects_bad_input) {
  cuoptimOptimizer_t opt = NULL;
  expect_error(cuoptimCreateFromKerasJSON(NULL, KERAS_SERIALIZED, CUOPTIM_BACKEND_HOST, 0),
               CUOPTIM_STATUS_NULL_POINTER, "optimizer");
  expect_error(cuoptimCreateFromKerasJSON(&opt, NULL, CUOPTIM_BACKEND_HOST, 0), CUOPTIM_STATUS_NULL_POINTER, "json");
  expect_error(cuoptimCreateFromKerasJSON(&opt, "{\"class_name\": ", CUOPTIM_BACKEND_HOST, 0),
               CUOPTIM_STATUS_PARSE_ERROR, "not valid JSON");
  char text[8192];
  /* An unknown key of the MultiOptimizer's config. */
  const char *at = strstr(KERAS_SERIALIZED_EMPTY_MAP, "\"loss_scale_factor\": 5.0, \"name\"");
  snprintf(text, sizeof text, "%.*s\"momentum\": 1, %s", (int)(at - KERAS_SERIALIZED_EMPTY_MAP),
           KERAS_SERIALIZED_EMPTY_MAP, at);
  expect_error(cuoptimCreateFromKerasJSON(&opt, text, CUOPTIM_BACKEND_HOST, 0), CUOPTIM_STATUS_INVALID_VALUE,
               "config.momentum: unknown key");
  /* A sub-optimizer cuoptimConfigFromKerasJSON refuses: its place is named. */
  at = strstr(KERAS_SERIALIZED, "\"momentum\": 0.0, \"nesterov\"");
  snprintf(text, sizeof text, "%.*s\"momentum\": 7.0%s", (int)(at - KERAS_SERIALIZED), KERAS_SERIALIZED,
           at + strlen("\"momentum\": 0.0"));
  expect_error(cuoptimCreateFromKerasJSON(&opt, text, CUOPTIM_BACKEND_HOST, 0), CUOPTIM_STATUS_INVALID_VALUE,
               "config.optimizer_map.config.optimizer_map[\"^dense_2/.*\"]: config->momentum");
  /* A wrong class for the map. */
  at = strstr(KERAS_SERIALIZED_EMPTY_MAP, "OptimizerMap");
  snprintf(text, sizeof text, "%.*sOptimizerDict%s", (int)(at - KERAS_SERIALIZED_EMPTY_MAP),
           KERAS_SERIALIZED_EMPTY_MAP, at + strlen("OptimizerMap"));
  expect_error(cuoptimCreateFromKerasJSON(&opt, text, CUOPTIM_BACKEND_HOST, 0), CUOPTIM_STATUS_INVALID_VALUE,
               "expected \"OptimizerMap\"");
  cr_expect_null(opt);
  /* A plain optimizer's JSON creates a plain optimizer. */
  const char *sgd = strstr(KERAS_SERIALIZED_EMPTY_MAP, "{\"module\": \"keras.optimizers\", \"class_name\": \"SGD\"");
  const char *end = strstr(sgd, ", \"optimizer_map\"");
  snprintf(text, sizeof text, "%.*s", (int)(end - sgd), sgd);
  OK(cuoptimCreateFromKerasJSON(&opt, text, CUOPTIM_BACKEND_HOST, 0));
  int count = -1;
  OK(cuoptimGetSubOptimizerCount(opt, &count));
  cr_expect_eq(count, 0);
  char back[4096];
  OK(cuoptimToKerasJSON(opt, back, sizeof back, NULL));
  cr_expect_str_eq(back, text);
  OK(cuoptimDestroy(opt));
}

Test(multi, to_keras_json_and_sub_optimizer_calls_reject_bad_input) {
  size_t length = 0;
  char small[8];
  expect_error(cuoptimToKerasJSON(NULL, small, sizeof small, &length), CUOPTIM_STATUS_NULL_POINTER, "optimizer");
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreateFromKerasJSON(&opt, KERAS_SERIALIZED, CUOPTIM_BACKEND_HOST, 0));
  expect_error(cuoptimToKerasJSON(opt, small, sizeof small, &length), CUOPTIM_STATUS_INVALID_VALUE, "capacity = 8");
  cr_expect_eq(length, strlen(KERAS_SERIALIZED));
  int count = 0;
  expect_error(cuoptimGetSubOptimizerCount(NULL, &count), CUOPTIM_STATUS_NULL_POINTER, "optimizer");
  expect_error(cuoptimGetSubOptimizerCount(opt, NULL), CUOPTIM_STATUS_NULL_POINTER, "count");
  cuoptimOptimizer_t sub = NULL;
  expect_error(cuoptimGetSubOptimizer(NULL, 0, &sub), CUOPTIM_STATUS_NULL_POINTER, "optimizer");
  expect_error(cuoptimGetSubOptimizer(opt, 3, &sub), CUOPTIM_STATUS_INVALID_VALUE, "index = 3");
  expect_error(cuoptimGetSubOptimizer(opt, 0, NULL), CUOPTIM_STATUS_NULL_POINTER, "sub");
  OK(cuoptimGetSubOptimizer(opt, 0, &sub));
  cuoptimOptimizer_t inner = NULL;
  expect_error(cuoptimGetSubOptimizer(sub, 0, &inner), CUOPTIM_STATUS_INVALID_VALUE, "not a MultiOptimizer");
  int index = -1;
  expect_error(cuoptimGetVariableOptimizer(NULL, 0, &index, NULL), CUOPTIM_STATUS_NULL_POINTER, "optimizer");
  expect_error(cuoptimGetVariableOptimizer(sub, 0, &index, NULL), CUOPTIM_STATUS_INVALID_VALUE, "not a MultiOptimizer");
  expect_error(cuoptimGetVariableOptimizer(opt, 0, &index, NULL), CUOPTIM_STATUS_INVALID_VALUE, "0 variables");
  expect_error(cuoptimGetVariableOptimizer(opt, 0, NULL, NULL), CUOPTIM_STATUS_NULL_POINTER, "index");
  /* A sub-optimizer belongs to its MultiOptimizer. */
  cuoptimVariable_t v = -1;
  expect_error(cuoptimAddVariable(sub, "x", (void *)ONE, CUOPTIM_FLOAT32, 1, &v), CUOPTIM_STATUS_INVALID_VALUE,
               "sub-optimizer");
  expect_error(cuoptimDestroy(sub), CUOPTIM_STATUS_INVALID_VALUE, "destroy the MultiOptimizer");
  /* Calls without meaning on a MultiOptimizer say so. */
  cuoptimConfig_t c;
  expect_error(cuoptimGetConfig(opt, &c), CUOPTIM_STATUS_NOT_SUPPORTED, "MultiOptimizer");
  expect_error(cuoptimExcludeFromWeightDecay(opt, "x"), CUOPTIM_STATUS_NOT_SUPPORTED, "sub-optimizer");
  expect_error(cuoptimSave(opt, ""), CUOPTIM_STATUS_INVALID_VALUE, "path is empty");
  cuoptimCommOptions_t options;
  OK(cuoptimCommOptionsInit(&options));
  int not_a_communicator = 0;
  expect_error(cuoptimSetCommunicator(opt, &not_a_communicator, NULL), CUOPTIM_STATUS_NULL_POINTER, "options");
  OK(cuoptimSetCommunicator(opt, NULL, &options)); /* none: every sub-optimizer detached */
  expect_error(cuoptimEnableGradientArena(opt), CUOPTIM_STATUS_NOT_SUPPORTED, "cuoptimEnableGradientArena");
  float scale = 0;
  expect_error(cuoptimGetLossScale(opt, &scale), CUOPTIM_STATUS_NOT_SUPPORTED, "cuoptimGetLossScale");
  /* Steps: bad pairs are refused before any sub-optimizer runs. */
  expect_error(cuoptimApplyGradients(opt, 1, NULL, NULL), CUOPTIM_STATUS_NULL_POINTER, "grads");
  expect_error(cuoptimApplyGradients(opt, -1, NULL, NULL), CUOPTIM_STATUS_INVALID_VALUE, "n = -1");
  /* A state call that fails its checks builds nothing: variables may still be added. */
  double value = 0;
  expect_error(cuoptimGetWeights(opt, 99, &value, 1), CUOPTIM_STATUS_INVALID_VALUE, "index = 99");
  expect_error(cuoptimGetWeights(opt, 0, &value, 2), CUOPTIM_STATUS_INVALID_VALUE, "count = 2");
  expect_error(cuoptimSetWeights(opt, 1, &value, 0), CUOPTIM_STATUS_INVALID_VALUE, "count = 0");
  float w[1] = {1}, g[1] = {1};
  OK(cuoptimAddVariable(opt, "dense_1/k", w, CUOPTIM_FLOAT32, 1, &v));
  cuoptimGradient_t twice[2] = {{v, g, CUOPTIM_FLOAT32}, {v, g, CUOPTIM_FLOAT32}};
  expect_error(cuoptimApplyGradients(opt, 2, twice, NULL), CUOPTIM_STATUS_INVALID_VALUE, "listed twice");
  cuoptimGradient_t unknown = {5, g, CUOPTIM_FLOAT32};
  expect_error(cuoptimApplyGradients(opt, 1, &unknown, NULL), CUOPTIM_STATUS_INVALID_VALUE, "variable = 5");
  cuoptimGradient_t dtype = {v, g, (cuoptimDtype_t)9};
  expect_error(cuoptimApplyGradients(opt, 1, &dtype, NULL), CUOPTIM_STATUS_INVALID_VALUE, "dtype");
  cr_expect_eq(iterations_of(opt), 0);
  cr_expect(w[0] == 1.0f);
  OK(cuoptimApplyGradients(opt, 1, twice, NULL));
  cr_expect_eq(iterations_of(opt), 1);
  expect_error(cuoptimSetCommunicator(opt, NULL, &options), CUOPTIM_STATUS_INVALID_STATE, "state is built");
  int rank = -1, world = -1;
  OK(cuoptimGetRank(opt, &rank, &world));
  cr_expect(rank == 0 && world == 1);
  size_t bytes = 0;
  OK(cuoptimGetStateBytes(opt, &bytes));
  cr_expect_gt(bytes, 0);
  OK(cuoptimSynchronizeTimeout(opt, 1000));
  expect_error(cuoptimSynchronizeTimeout(opt, -1), CUOPTIM_STATUS_INVALID_VALUE, "timeout_ms");
  OK(cuoptimDestroy(opt));
}

/* ---- an Adafactor sub-optimizer ---------------------------------------------------------------- */

/* Adafactor for the kernels (one factored [4, 6], one of rank 1), Adam the bias: the Adafactor
 * sub-optimizer steps its variables bit for bit as a plain Adafactor optimizer with those variables
 * alone, on either backend. */
MULTI_TEST(adafactor_sub_optimizer_steps_as_a_plain_adafactor) {
  cuoptimConfig_t subs[2] = {config_of(CUOPTIM_ADAFACTOR, 0.02), config_of(CUOPTIM_ADAM, 0.01)};
  static const char *const keys[1] = {".*kernel"};
  static const int uses[1] = {0};
  static const int64_t matrix[2] = {4, 6}, vector[1] = {5}, bias[1] = {6};
  float init[24], grads[3][24];
  for (int i = 0; i < 24; i++) {
    init[i] = 0.1f * (float)(i % 7) - 0.3f;
    for (int s = 0; s < 3; s++) grads[s][i] = 0.05f * (float)((i * (s + 3)) % 11) - 0.2f;
  }
  cuoptimOptimizer_t multi = NULL, plain = NULL;
  OK(try_create(&multi, subs, 2, keys, uses, 1, 1, CUOPTIM_NONE, backend));
  OK(cuoptimCreate(&plain, &subs[0], backend, 0));
  float *mp[3], *pp[2], *g = test_mem_from(backend, init, 24);
  const char *const names[3] = {"dense/kernel", "conv/kernel", "dense/bias"};
  const int ranks[3] = {2, 1, 1};
  const int64_t *dims[3] = {matrix, vector, bias};
  for (int k = 0; k < 3; k++) {
    cuoptimVariable_t index = -1;
    mp[k] = test_mem_from(backend, init, 24);
    OK(cuoptimAddVariableWithShape(multi, names[k], mp[k], CUOPTIM_FLOAT32, ranks[k], dims[k], &index));
    if (k == 2) continue;
    pp[k] = test_mem_from(backend, init, 24);
    OK(cuoptimAddVariableWithShape(plain, names[k], pp[k], CUOPTIM_FLOAT32, ranks[k], dims[k], &index));
  }
  for (int s = 0; s < 3; s++) {
    test_mem_upload(backend, g, grads[s], sizeof grads[s]);
    cuoptimGradient_t pairs[3] = {{0, g, CUOPTIM_FLOAT32}, {1, g, CUOPTIM_FLOAT32}, {2, g, CUOPTIM_FLOAT32}};
    OK(cuoptimApplyGradients(multi, 3, pairs, NULL));
    OK(cuoptimApplyGradients(plain, 2, pairs, NULL));
    OK(cuoptimSynchronize(multi));
    OK(cuoptimSynchronize(plain));
  }
  for (int k = 0; k < 2; k++) {
    float got[24], want[24];
    test_mem_download(backend, got, mp[k], 24 * sizeof(float));
    test_mem_download(backend, want, pp[k], 24 * sizeof(float));
    cr_expect(memcmp(got, want, (size_t)(k ? 5 : 24) * sizeof(float)) == 0, "%s: the sub-optimizer's steps differ",
              names[k]);
    cr_expect(memcmp(got, init, (size_t)(k ? 5 : 24) * sizeof(float)) != 0, "%s did not move", names[k]);
  }
  cr_expect_eq(sub_iterations(multi, 0), 3);
  OK(cuoptimDestroy(multi));
  OK(cuoptimDestroy(plain));
  for (int k = 0; k < 3; k++) test_mem_free(backend, mp[k]);
  for (int k = 0; k < 2; k++) test_mem_free(backend, pp[k]);
  test_mem_free(backend, g);
}

/* Keras's `iterations` of the MultiOptimizer counts its steps, whatever is set on its parts: its
 * own "iteration" entry, a sub-optimizer's (through either handle), a sub-optimizer's own step
 * and a checkpoint (cuoptimSave/cuoptimLoad) leave it where Keras would. */
MULTI_TEST(iterations_count_the_multi_optimizers_steps) {
  cuoptimConfig_t subs[2] = {config_of(CUOPTIM_ADAM, 0.01), config_of(CUOPTIM_SGD, 0.1)};
  subs[0].gradient_accumulation_steps = 2; /* its raw counter still advances every step */
  const char *keys[] = {"kernel"};
  const int uses[] = {0};
  vars_t v = {backend, NULL, 0, {0}, {0}, {0}};
  OK(try_create(&v.opt, subs, 2, keys, uses, 1, 1, CUOPTIM_NONE, backend));
  const float w[3] = {1, 2, 3}, g[3] = {0.5f, -0.25f, 1};
  add_var(&v, "kernel", w, 3);
  add_var(&v, "bias", w, 3);
  const float *grads[2] = {g, g};
  cuoptimOptimizer_t adam = NULL, sgd = NULL;
  OK(cuoptimGetSubOptimizer(v.opt, 0, &adam));
  OK(cuoptimGetSubOptimizer(v.opt, 1, &sgd));
  int64_t n = -1;
  for (int s = 0; s < 3; s++) OK(try_step(&v, grads));
  OK(cuoptimGetIterations(v.opt, &n));
  cr_expect_eq(n, 3, "after 3 steps: %lld", (long long)n);
  OK(cuoptimGetIterations(adam, &n));
  cr_expect_eq(n, 1, "Adam with accumulation 2 after 3 steps: %lld", (long long)n);

  const double ten = 10;
  OK(cuoptimSetWeights(v.opt, 0, &ten, 1)); /* the MultiOptimizer's own "iteration" */
  OK(try_step(&v, grads));
  OK(cuoptimGetIterations(v.opt, &n));
  cr_expect_eq(n, 11, "set to 10, then a step: %lld", (long long)n);

  const double hundred = 100;
  OK(cuoptimSetWeights(v.opt, 2, &hundred, 1)); /* Adam's "iteration", through the MultiOptimizer */
  OK(cuoptimSetWeights(sgd, 0, &hundred, 1));   /* SGD's, through its own handle */
  double values[1] = {-1};
  OK(cuoptimGetWeights(v.opt, 0, values, 1));
  cr_expect_eq(values[0], 11, "its parts' counters set: %g", values[0]);
  OK(try_step(&v, grads));
  OK(cuoptimGetIterations(v.opt, &n));
  cr_expect_eq(n, 12, "a step after: %lld", (long long)n);

  const float *adam_grads[1] = {g};
  cuoptimGradient_t lone = {0, v.grad[0], CUOPTIM_FLOAT32};
  test_mem_upload(backend, v.grad[0], adam_grads[0], 3 * sizeof(float));
  OK(cuoptimApplyGradients(adam, 1, &lone, NULL)); /* a step of Adam alone */
  OK(cuoptimGetIterations(v.opt, &n));
  cr_expect_eq(n, 12, "a sub-optimizer's own step is not the MultiOptimizer's: %lld", (long long)n);
  OK(cuoptimGetWeights(v.opt, 2, values, 1));
  cr_expect_eq(values[0], 102, "Adam's raw counter: %g", values[0]);

  char path[256];
  snprintf(path, sizeof path, "%s/cuoptim-multi-iterations-%d.safetensors",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)backend);
  OK(cuoptimSave(v.opt, path));
  OK(cuoptimSetWeights(v.opt, 0, &ten, 1));
  OK(cuoptimLoad(v.opt, path));
  OK(cuoptimGetIterations(v.opt, &n));
  cr_expect_eq(n, 12, "loaded: %lld", (long long)n);
  OK(try_step(&v, grads));
  OK(cuoptimGetIterations(v.opt, &n));
  cr_expect_eq(n, 13, "a step after the load: %lld", (long long)n);
  remove(path);
  vars_destroy(&v);
}
