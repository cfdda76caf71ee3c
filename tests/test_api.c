/*
 * test_api.c — the contract of include/cuoptim.h for bad input.
 *
 * Every public call with each bad argument returns the documented status and leaves a message
 * that names the call and the argument; a failed call changes nothing. Also: status strings, the
 * version, optimizer names, Keras's constructor validation (cuoptimCreate / cuoptimConfigValidate),
 * and what the CUDA backend does with and without a GPU.
 *
 * Messages: before each expected failure a different call is made to fail first, so a message
 * left over from an earlier call cannot satisfy the check.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuoptim.h"
#include "testutil.h"

/* Sets the thread's last message to one that names neither `call` nor most arguments. */
static void prime_error(const char *call) {
  if (strcmp(call, "cuoptimScheduleInit") == 0)
    (void)cuoptimConfigInit(NULL, CUOPTIM_SGD);
  else
    (void)cuoptimScheduleInit(NULL, CUOPTIM_SCHEDULE_CONSTANT);
  cr_assert_neq(cuoptimGetLastErrorMessage()[0], '\0');
  cr_assert_null(strstr(cuoptimGetLastErrorMessage(), call));
}

static int is_identifier_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* Whether `word` occurs in `text` not as part of a longer identifier ("n" in "n = -1", not in
 * "cuoptimMinimize"). */
static int names_word(const char *text, const char *word) {
  size_t len = strlen(word);
  for (const char *p = strstr(text, word); p; p = strstr(p + 1, word)) {
    int before = p > text && is_identifier_char(p[-1]);
    int after = is_identifier_char(p[len]);
    if (!before && !after) return 1;
  }
  return 0;
}

/* `expr` must return `expected` and leave a message naming `call` and the argument `arg` (as a
 * word). */
#define EXPECT_FAIL(expected, call, arg, expr)                                                                  \
  do {                                                                                                          \
    prime_error(call);                                                                                          \
    cuoptimStatus_t st_ = (expr);                                                                               \
    const char *msg_ = cuoptimGetLastErrorMessage();                                                            \
    cr_assert_eq(st_, (expected), "%s returned %d (%s), expected %d (%s); message: \"%s\"", #expr, (int)st_,    \
                 cuoptimGetStatusString(st_), (int)(expected), cuoptimGetStatusString(expected), msg_);         \
    cr_assert_not_null(msg_);                                                                                   \
    cr_assert(strstr(msg_, (call)) != NULL, "%s: message \"%s\" does not name the call %s", #expr, msg_, call); \
    cr_assert(names_word(msg_, (arg)), "%s: message \"%s\" does not name \"%s\"", #expr, msg_, arg);            \
  } while (0)

static cuoptimOptimizer_t create_host(const cuoptimConfig_t *c) {
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, c, CUOPTIM_BACKEND_HOST, 0));
  cr_assert_not_null(opt);
  return opt;
}

static cuoptimOptimizer_t create_kind(cuoptimOptimizerKind_t kind) {
  cuoptimConfig_t c = test_config(kind);
  return create_host(&c);
}

/* A sentinel handle value that no successful cuoptimCreate returns. */
#define SENTINEL_HANDLE ((cuoptimOptimizer_t)(uintptr_t)0x5a5a5a5a)

/* =================================================================================================
 * Status strings, version, names, last error
 * ================================================================================================= */

/* One more than the largest status value. */
static int status_count(void) {
  int largest = -1;
#define LARGEST_STATUS_(name, value, text) \
  if (value > largest) largest = value;
  CUOPTIM_STATUS_LIST(LARGEST_STATUS_)
#undef LARGEST_STATUS_
  return largest + 1;
}

Test(api, every_status_has_its_string) {
  int seen = 0;
#define CHECK_STATUS_(name, value, text)                     \
  do {                                                       \
    const char *s = cuoptimGetStatusString(name);            \
    cr_assert_not_null(s, #name);                            \
    cr_assert_neq(s[0], '\0', #name " has an empty string"); \
    cr_assert_str_eq(s, text, #name ": \"%s\"", s);          \
    cr_assert_str_neq(s, "unknown status", #name);           \
    cr_assert_eq((int)name, value);                          \
    seen++;                                                  \
  } while (0);
  CUOPTIM_STATUS_LIST(CHECK_STATUS_)
#undef CHECK_STATUS_
  cr_assert_eq(seen, status_count(), "the values are 0, 1, 2, ... without a gap");
}

Test(api, unknown_status_gives_unknown_status) {
  const int values[] = {status_count(), status_count() + 1, 100, -1, 0x7fffffff};
  for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
    const char *s = cuoptimGetStatusString((cuoptimStatus_t)values[i]);
    cr_assert_not_null(s);
    cr_assert_str_eq(s, "unknown status", "status %d", values[i]);
  }
}

Test(api, version_macro_equals_library_version) {
  cr_assert_eq(CUOPTIM_VERSION, cuoptimGetVersion());
  cr_assert_eq(CUOPTIM_VERSION, CUOPTIM_VERSION_MAJOR * 10000 + CUOPTIM_VERSION_MINOR * 100 + CUOPTIM_VERSION_PATCH);
}

Test(api, optimizer_names_are_keras_class_names) {
  static const char *const names[CUOPTIM_OPTIMIZER_COUNT] = {
      "SGD", "RMSprop", "Adagrad", "Adadelta", "Adam", "AdamW", "Adamax", "Nadam", "Lion", "Lamb", "Ftrl",
      "ScheduleFreeAdamW", "Adafactor", "Muon"};
  for (int k = 0; k < CUOPTIM_OPTIMIZER_COUNT; k++) {
    const char *name = cuoptimOptimizerName((cuoptimOptimizerKind_t)k);
    if (!names[k]) { /* a value no kind has (yet) */
      cr_assert_null(name, "kind %d", k);
      continue;
    }
    cr_assert_not_null(name, "kind %d", k);
    cr_assert_str_eq(name, names[k]);
  }
  cr_assert_null(cuoptimOptimizerName((cuoptimOptimizerKind_t)-1));
  cr_assert_null(cuoptimOptimizerName(CUOPTIM_OPTIMIZER_COUNT));
  cr_assert_null(cuoptimOptimizerName((cuoptimOptimizerKind_t)1000));
}

Test(api, last_error_message_is_empty_before_any_failure) {
  const char *m = cuoptimGetLastErrorMessage();
  cr_assert_not_null(m);
  cr_assert_str_eq(m, "");
}

static void *fail_in_thread(void *arg) {
  (void)arg;
  (void)cuoptimConfigInit(NULL, CUOPTIM_ADAM);
  return NULL;
}

Test(api, last_error_message_is_thread_local) {
  (void)cuoptimScheduleInit(NULL, CUOPTIM_SCHEDULE_CONSTANT);
  char before[1024];
  snprintf(before, sizeof before, "%s", cuoptimGetLastErrorMessage());
  cr_assert(strstr(before, "cuoptimScheduleInit") != NULL);
  pthread_t thread;
  cr_assert_eq(pthread_create(&thread, NULL, fail_in_thread, NULL), 0);
  pthread_join(thread, NULL);
  cr_assert_str_eq(cuoptimGetLastErrorMessage(), before, "another thread's failure changed this thread's message");
}

Test(api, successful_calls_keep_the_last_message) {
  (void)cuoptimScheduleInit(NULL, CUOPTIM_SCHEDULE_CONSTANT);
  char before[1024];
  snprintf(before, sizeof before, "%s", cuoptimGetLastErrorMessage());
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  cuoptimOptimizer_t opt = create_host(&c);
  OK(cuoptimDestroy(opt));
  cr_assert_str_eq(cuoptimGetLastErrorMessage(), before);
}

/* =================================================================================================
 * cuoptimConfigInit, cuoptimScheduleInit, cuoptimConfigValidate
 * ================================================================================================= */

Test(api, config_init_null_config) {
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimConfigInit", "config", cuoptimConfigInit(NULL, CUOPTIM_ADAM));
}

Test(api, config_init_unknown_kind) {
  static const int kinds[] = {-1, CUOPTIM_OPTIMIZER_COUNT, 99, INT32_MIN};
  for (size_t i = 0; i < 4; i++) {
    cuoptimConfig_t c;
    memset(&c, 0xab, sizeof c);
    cuoptimConfig_t copy = c;
    EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimConfigInit", "kind",
                cuoptimConfigInit(&c, (cuoptimOptimizerKind_t)kinds[i]));
    cr_assert_eq(memcmp(&c, &copy, sizeof c), 0, "a failed cuoptimConfigInit wrote into *config");
  }
}

/* Keras's constructor defaults (SEMANTICS.md §3) and auto names (optimizer_test.py
 * test_optimizer_auto_naming: "adam", "sgd", "adam_w"; the others from real Keras 3.15.1). */
Test(api, config_init_gives_keras_defaults) {
  static const char *const names[CUOPTIM_OPTIMIZER_COUNT] = {
      "sgd", "rm_sprop", "adagrad", "adadelta", "adam", "adam_w", "adamax", "nadam", "lion", "lamb", "ftrl",
      "schedule_free_adam_w", "adafactor", "muon"};
  for (int k = 0; k < CUOPTIM_OPTIMIZER_COUNT; k++) {
    if (!names[k]) continue;
    cuoptimConfig_t c = test_config((cuoptimOptimizerKind_t)k);
    const char *kn = cuoptimOptimizerName((cuoptimOptimizerKind_t)k);
    cr_assert_eq(c.kind, (cuoptimOptimizerKind_t)k);
    cr_assert_str_eq(c.name, names[k], "%s name", kn);
    cr_assert_eq(c.learning_rate.kind, CUOPTIM_SCHEDULE_CONSTANT, "%s", kn);
    cr_assert_eq(c.learning_rate.initial_learning_rate,
                 k == CUOPTIM_SGD ? 0.01 : k == CUOPTIM_SCHEDULE_FREE_ADAMW ? 0.0025 : 0.001, "%s learning rate", kn);
    if (k == CUOPTIM_ADAMW || k == CUOPTIM_MUON)
      cr_assert_eq(c.weight_decay, 0.004);
    else
      cr_assert(CUOPTIM_IS_NONE(c.weight_decay), "%s weight_decay", kn);
    cr_assert(CUOPTIM_IS_NONE(c.clipnorm) && CUOPTIM_IS_NONE(c.clipvalue) && CUOPTIM_IS_NONE(c.global_clipnorm), "%s",
              kn);
    cr_assert_eq(c.use_ema, 0);
    cr_assert_eq(c.ema_momentum, 0.99);
    cr_assert_eq(c.ema_overwrite_frequency, 0);
    cr_assert(CUOPTIM_IS_NONE(c.loss_scale_factor));
    cr_assert_eq(c.gradient_accumulation_steps, 0);
    cr_assert_eq(c.beta_1, 0.9, "%s beta_1", kn);
    cr_assert_eq(c.beta_2, k == CUOPTIM_LION ? 0.99 : 0.999, "%s beta_2", kn);
    cr_assert_eq(c.epsilon, k == CUOPTIM_SCHEDULE_FREE_ADAMW ? 1e-8 : 1e-7, "%s epsilon", kn);
    cr_assert_eq(c.warmup_steps, 0.0, "%s warmup_steps", kn);
    if (k == CUOPTIM_RMSPROP) cr_assert_eq(c.rho, 0.9);
    if (k == CUOPTIM_ADADELTA) cr_assert_eq(c.rho, 0.95);
    cr_assert_eq(c.momentum, k == CUOPTIM_MUON ? 0.95 : 0.0);
    cr_assert_eq(c.nesterov, k == CUOPTIM_MUON);
    /* Muon's own fields (keras/src/optimizers/muon.py), the same for every kind. */
    cr_assert_eq(c.adam_beta_1, 0.9);
    cr_assert_eq(c.adam_beta_2, 0.999);
    cr_assert_eq(c.adam_weight_decay, 0.004);
    cr_assert_eq(c.adam_lr_ratio, 1.0);
    cr_assert_eq(c.muon_a, 3.4445);
    cr_assert_eq(c.muon_b, -4.7750);
    cr_assert_eq(c.muon_c, 2.0315);
    cr_assert_eq(c.ns_steps, 5);
    cr_assert_eq(c.rms_rate, 0.2);
    cr_assert_eq(c.exclude_embeddings, 1);
    cr_assert_eq(c.num_exclude_layers, 0);
    cr_assert_eq(c.centered, 0);
    cr_assert_eq(c.amsgrad, 0);
    cr_assert_eq(c.initial_accumulator_value, 0.1);
    cr_assert_eq(c.learning_rate_power, -0.5);
    cr_assert_eq(c.l1_regularization_strength, 0.0);
    cr_assert_eq(c.l2_regularization_strength, 0.0);
    cr_assert_eq(c.l2_shrinkage_regularization_strength, 0.0);
    cr_assert_eq(c.beta, 0.0);
    cr_assert_eq(c.dynamic_loss_scale, 0);
    cr_assert_eq(c.initial_scale, 32768.0);
    cr_assert_eq(c.dynamic_growth_steps, 2000);
    cr_assert_eq(c.beta_2_decay, -0.8, "%s beta_2_decay", kn);
    cr_assert_eq(c.epsilon_1, 1e-30, "%s epsilon_1", kn);
    cr_assert_eq(c.epsilon_2, 1e-3, "%s epsilon_2", kn);
    cr_assert_eq(c.clip_threshold, 1.0, "%s clip_threshold", kn);
    cr_assert_eq(c.relative_step, 1, "%s relative_step", kn);
    OK(cuoptimConfigValidate(&c));
  }
}

Test(api, schedule_init_null_schedule) {
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimScheduleInit", "schedule",
              cuoptimScheduleInit(NULL, CUOPTIM_SCHEDULE_COSINE));
}

Test(api, schedule_init_unknown_kind) {
  static const int kinds[] = {-1, 7, 1000};
  for (size_t i = 0; i < 3; i++) {
    cuoptimSchedule_t s;
    memset(&s, 0xcd, sizeof s);
    cuoptimSchedule_t copy = s;
    EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimScheduleInit", "kind",
                cuoptimScheduleInit(&s, (cuoptimScheduleKind_t)kinds[i]));
    cr_assert_eq(memcmp(&s, &copy, sizeof s), 0, "a failed cuoptimScheduleInit wrote into *schedule");
  }
}

Test(api, schedule_init_defaults_validate) {
  for (int k = CUOPTIM_SCHEDULE_CONSTANT; k <= CUOPTIM_SCHEDULE_COSINE_RESTARTS; k++) {
    cuoptimConfig_t c = test_config(CUOPTIM_SGD);
    OK(cuoptimScheduleInit(&c.learning_rate, (cuoptimScheduleKind_t)k));
    OK(cuoptimConfigValidate(&c));
  }
}

Test(api, config_validate_null_config) {
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimConfigValidate", "config", cuoptimConfigValidate(NULL));
}

/* =================================================================================================
 * cuoptimCreate: Keras's constructor validation
 * ================================================================================================= */

typedef struct {
  const char *what; /* shown on failure */
  cuoptimOptimizerKind_t kind;
  void (*mutate)(cuoptimConfig_t *c);
  const char *arg; /* the message must contain it */
} invalid_case;

static void sgd_momentum_negative(cuoptimConfig_t *c) { c->momentum = -1.0; }
static void sgd_momentum_above_one(cuoptimConfig_t *c) { c->momentum = 2.0; }
static void sgd_momentum_nan(cuoptimConfig_t *c) { c->momentum = NAN; }
static void sgd_nesterov_two(cuoptimConfig_t *c) { c->nesterov = 2; }
static void adafactor_relative_step_two(cuoptimConfig_t *c) { c->relative_step = 2; }
static void lion_beta_1_zero(cuoptimConfig_t *c) { c->beta_1 = 0.0; }
static void lion_beta_1_above_one(cuoptimConfig_t *c) { c->beta_1 = 1.1; }
static void lion_beta_1_negative(cuoptimConfig_t *c) { c->beta_1 = -0.1; }
static void ftrl_initial_accumulator_negative(cuoptimConfig_t *c) { c->initial_accumulator_value = -0.1; }
static void ftrl_lr_power_positive(cuoptimConfig_t *c) { c->learning_rate_power = 0.1; }
static void ftrl_l1_negative(cuoptimConfig_t *c) { c->l1_regularization_strength = -0.1; }
static void ftrl_l2_negative(cuoptimConfig_t *c) { c->l2_regularization_strength = -0.1; }
static void ftrl_l2_shrinkage_negative(cuoptimConfig_t *c) { c->l2_shrinkage_regularization_strength = -0.1; }
static void clipnorm_and_clipvalue(cuoptimConfig_t *c) { c->clipnorm = c->clipvalue = 0.1; }
static void clipnorm_and_global(cuoptimConfig_t *c) { c->clipnorm = c->global_clipnorm = 0.1; }
static void clipvalue_and_global(cuoptimConfig_t *c) { c->clipvalue = c->global_clipnorm = 0.1; }
static void all_three_clips(cuoptimConfig_t *c) { c->clipnorm = c->clipvalue = c->global_clipnorm = 1.0; }
static void accumulation_one(cuoptimConfig_t *c) { c->gradient_accumulation_steps = 1; }
static void accumulation_negative(cuoptimConfig_t *c) { c->gradient_accumulation_steps = -2; }
static void ema_momentum_above_one(cuoptimConfig_t *c) {
  c->use_ema = 1;
  c->ema_momentum = 1.5;
}
static void ema_momentum_negative(cuoptimConfig_t *c) {
  c->use_ema = 1;
  c->ema_momentum = -0.1;
}
static void ema_overwrite_negative(cuoptimConfig_t *c) {
  c->use_ema = 1;
  c->ema_overwrite_frequency = -1;
}
static void use_ema_two(cuoptimConfig_t *c) { c->use_ema = 2; }
static void adamw_weight_decay_none(cuoptimConfig_t *c) { c->weight_decay = CUOPTIM_NONE; }
static void lr_nan(cuoptimConfig_t *c) { c->learning_rate.initial_learning_rate = NAN; }
static void lr_inf(cuoptimConfig_t *c) { c->learning_rate.initial_learning_rate = INFINITY; }
static void lr_minus_inf(cuoptimConfig_t *c) { c->learning_rate.initial_learning_rate = -INFINITY; }
static void set_schedule(cuoptimConfig_t *c, cuoptimScheduleKind_t kind, double decay_steps) {
  OK(cuoptimScheduleInit(&c->learning_rate, kind));
  c->learning_rate.decay_steps = decay_steps;
}
static void exponential_decay_steps_zero(cuoptimConfig_t *c) { set_schedule(c, CUOPTIM_SCHEDULE_EXPONENTIAL, 0); }
static void polynomial_decay_steps_zero(cuoptimConfig_t *c) { set_schedule(c, CUOPTIM_SCHEDULE_POLYNOMIAL, 0); }
static void inverse_time_decay_steps_zero(cuoptimConfig_t *c) { set_schedule(c, CUOPTIM_SCHEDULE_INVERSE_TIME, 0); }
static void cosine_decay_steps_zero(cuoptimConfig_t *c) { set_schedule(c, CUOPTIM_SCHEDULE_COSINE, 0); }
static void restarts_decay_steps_zero(cuoptimConfig_t *c) { set_schedule(c, CUOPTIM_SCHEDULE_COSINE_RESTARTS, 0); }
static void exponential_decay_steps_negative(cuoptimConfig_t *c) { set_schedule(c, CUOPTIM_SCHEDULE_EXPONENTIAL, -5); }
static void schedule_lr_nan(cuoptimConfig_t *c) {
  set_schedule(c, CUOPTIM_SCHEDULE_COSINE, 10);
  c->learning_rate.initial_learning_rate = NAN;
}
static void piecewise_no_boundaries(cuoptimConfig_t *c) {
  OK(cuoptimScheduleInit(&c->learning_rate, CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT));
  c->learning_rate.num_boundaries = 0;
}
static void piecewise_too_many_boundaries(cuoptimConfig_t *c) {
  OK(cuoptimScheduleInit(&c->learning_rate, CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT));
  c->learning_rate.num_boundaries = CUOPTIM_MAX_BOUNDARIES + 1;
}
static void schedule_kind_unknown(cuoptimConfig_t *c) { c->learning_rate.kind = (cuoptimScheduleKind_t)42; }
static void kind_unknown(cuoptimConfig_t *c) { c->kind = (cuoptimOptimizerKind_t)42; }
static void name_unterminated(cuoptimConfig_t *c) { memset(c->name, 'x', sizeof c->name); }
static void dynamic_with_loss_scale_factor(cuoptimConfig_t *c) {
  /* loss_scale_optimizer_test.py test_finite_step_with_inner_loss_scale: Keras silently drops the
   * inner factor; cuoptim's contract requires it to be None with dynamic_loss_scale. */
  c->dynamic_loss_scale = 1;
  c->loss_scale_factor = 100.0;
}
static void dynamic_growth_steps_zero(cuoptimConfig_t *c) {
  c->dynamic_loss_scale = 1;
  c->dynamic_growth_steps = 0;
}
static void initial_scale_zero(cuoptimConfig_t *c) {
  c->dynamic_loss_scale = 1;
  c->initial_scale = 0.0;
}

static const invalid_case INVALID_CASES[] = {
    {"SGD(momentum=-1.0)", CUOPTIM_SGD, sgd_momentum_negative, "momentum"},
    {"SGD(momentum=2.0)", CUOPTIM_SGD, sgd_momentum_above_one, "momentum"},
    {"SGD(momentum=nan)", CUOPTIM_SGD, sgd_momentum_nan, "momentum"},
    {"SGD(nesterov=2)", CUOPTIM_SGD, sgd_nesterov_two, "nesterov"},
    {"Adafactor(relative_step=2)", CUOPTIM_ADAFACTOR, adafactor_relative_step_two, "relative_step"},
    {"Lion(beta_1=0.0)", CUOPTIM_LION, lion_beta_1_zero, "beta_1"},
    {"Lion(beta_1=1.1)", CUOPTIM_LION, lion_beta_1_above_one, "beta_1"},
    {"Lion(beta_1=-0.1)", CUOPTIM_LION, lion_beta_1_negative, "beta_1"},
    {"Ftrl(initial_accumulator_value=-0.1)", CUOPTIM_FTRL, ftrl_initial_accumulator_negative,
     "initial_accumulator_value"},
    {"Ftrl(learning_rate_power=0.1)", CUOPTIM_FTRL, ftrl_lr_power_positive, "learning_rate_power"},
    {"Ftrl(l1_regularization_strength=-0.1)", CUOPTIM_FTRL, ftrl_l1_negative, "l1_regularization_strength"},
    {"Ftrl(l2_regularization_strength=-0.1)", CUOPTIM_FTRL, ftrl_l2_negative, "l2_regularization_strength"},
    {"Ftrl(l2_shrinkage_regularization_strength=-0.1)", CUOPTIM_FTRL, ftrl_l2_shrinkage_negative,
     "l2_shrinkage_regularization_strength"},
    {"SGD(clipnorm=0.1, clipvalue=0.1)", CUOPTIM_SGD, clipnorm_and_clipvalue, "clipvalue"},
    {"SGD(clipnorm=0.1, global_clipnorm=0.1)", CUOPTIM_SGD, clipnorm_and_global, "global_clipnorm"},
    {"Adam(clipvalue=0.1, global_clipnorm=0.1)", CUOPTIM_ADAM, clipvalue_and_global, "global_clipnorm"},
    {"Adam(clipnorm=1, clipvalue=1, global_clipnorm=1)", CUOPTIM_ADAM, all_three_clips, "clipnorm"},
    {"Adam(gradient_accumulation_steps=1)", CUOPTIM_ADAM, accumulation_one, "gradient_accumulation_steps"},
    {"Adam(gradient_accumulation_steps=-2)", CUOPTIM_ADAM, accumulation_negative, "gradient_accumulation_steps"},
    {"Adam(use_ema=True, ema_momentum=1.5)", CUOPTIM_ADAM, ema_momentum_above_one, "ema_momentum"},
    {"Adam(use_ema=True, ema_momentum=-0.1)", CUOPTIM_ADAM, ema_momentum_negative, "ema_momentum"},
    {"Adam(use_ema=True, ema_overwrite_frequency=-1)", CUOPTIM_ADAM, ema_overwrite_negative, "ema_overwrite_frequency"},
    {"Adam(use_ema=2)", CUOPTIM_ADAM, use_ema_two, "use_ema"},
    {"AdamW(weight_decay=None)", CUOPTIM_ADAMW, adamw_weight_decay_none, "weight_decay"},
    {"Adam(learning_rate=nan)", CUOPTIM_ADAM, lr_nan, "learning_rate"},
    {"Adam(learning_rate=inf)", CUOPTIM_ADAM, lr_inf, "learning_rate"},
    {"SGD(learning_rate=-inf)", CUOPTIM_SGD, lr_minus_inf, "learning_rate"},
    {"ExponentialDecay(decay_steps=0)", CUOPTIM_SGD, exponential_decay_steps_zero, "decay_steps"},
    {"ExponentialDecay(decay_steps=-5)", CUOPTIM_SGD, exponential_decay_steps_negative, "decay_steps"},
    {"PolynomialDecay(decay_steps=0)", CUOPTIM_SGD, polynomial_decay_steps_zero, "decay_steps"},
    {"InverseTimeDecay(decay_steps=0)", CUOPTIM_SGD, inverse_time_decay_steps_zero, "decay_steps"},
    {"CosineDecay(decay_steps=0)", CUOPTIM_SGD, cosine_decay_steps_zero, "decay_steps"},
    {"CosineDecayRestarts(first_decay_steps=0)", CUOPTIM_SGD, restarts_decay_steps_zero, "decay_steps"},
    {"CosineDecay(initial_learning_rate=nan)", CUOPTIM_SGD, schedule_lr_nan, "initial_learning_rate"},
    {"PiecewiseConstantDecay(boundaries=[])", CUOPTIM_SGD, piecewise_no_boundaries, "num_boundaries"},
    {"PiecewiseConstantDecay(65 boundaries)", CUOPTIM_SGD, piecewise_too_many_boundaries, "num_boundaries"},
    {"schedule kind 42", CUOPTIM_SGD, schedule_kind_unknown, "kind"},
    {"optimizer kind 42", CUOPTIM_SGD, kind_unknown, "kind"},
    {"name without NUL", CUOPTIM_SGD, name_unterminated, "name"},
    {"dynamic_loss_scale with loss_scale_factor=100", CUOPTIM_SGD, dynamic_with_loss_scale_factor, "loss_scale_factor"},
    {"LossScaleOptimizer(dynamic_growth_steps=0)", CUOPTIM_SGD, dynamic_growth_steps_zero, "dynamic_growth_steps"},
    {"LossScaleOptimizer(initial_scale=0)", CUOPTIM_SGD, initial_scale_zero, "initial_scale"},
};

Test(api, create_rejects_what_keras_rejects) {
  for (size_t i = 0; i < sizeof INVALID_CASES / sizeof INVALID_CASES[0]; i++) {
    const invalid_case *k = &INVALID_CASES[i];
    cuoptimConfig_t c = test_config(k->kind);
    k->mutate(&c);
    cuoptimOptimizer_t opt = SENTINEL_HANDLE;
    prime_error("cuoptimCreate");
    cuoptimStatus_t st = cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_HOST, 0);
    const char *m = cuoptimGetLastErrorMessage();
    cr_assert_eq(st, CUOPTIM_STATUS_INVALID_VALUE, "%s: cuoptimCreate returned %s (%s)", k->what,
                 cuoptimGetStatusString(st), m);
    cr_assert(strstr(m, "cuoptimCreate") != NULL, "%s: message \"%s\" does not name cuoptimCreate", k->what, m);
    cr_assert(names_word(m, k->arg), "%s: message \"%s\" does not name %s", k->what, m, k->arg);
    cr_assert_eq(opt, SENTINEL_HANDLE, "%s: a failed cuoptimCreate wrote *optimizer", k->what);

    prime_error("cuoptimConfigValidate");
    st = cuoptimConfigValidate(&c);
    m = cuoptimGetLastErrorMessage();
    cr_assert_eq(st, CUOPTIM_STATUS_INVALID_VALUE, "%s: cuoptimConfigValidate returned %s", k->what,
                 cuoptimGetStatusString(st));
    cr_assert(names_word(m, k->arg), "%s: cuoptimConfigValidate message \"%s\" does not name %s", k->what, m, k->arg);
  }
}

/* The edges Keras accepts. */
static void check_accepted(const char *what, const cuoptimConfig_t *c) {
  cuoptimOptimizer_t opt = NULL;
  cuoptimStatus_t st = cuoptimCreate(&opt, c, CUOPTIM_BACKEND_HOST, 0);
  cr_assert_eq(st, CUOPTIM_STATUS_SUCCESS, "%s: rejected (%s: %s)", what, cuoptimGetStatusString(st),
               cuoptimGetLastErrorMessage());
  OK(cuoptimDestroy(opt));
}

Test(api, create_accepts_what_keras_accepts) {
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  c.momentum = 0.0;
  check_accepted("SGD(momentum=0.0)", &c);
  c.momentum = 1.0;
  check_accepted("SGD(momentum=1.0)", &c);
  c = test_config(CUOPTIM_LION);
  c.beta_1 = 1.0;
  check_accepted("Lion(beta_1=1.0)", &c);
  c = test_config(CUOPTIM_FTRL);
  c.initial_accumulator_value = 0.0;
  c.learning_rate_power = 0.0;
  c.l1_regularization_strength = c.l2_regularization_strength = c.l2_shrinkage_regularization_strength = 0.0;
  check_accepted("Ftrl(zeros)", &c);
  c = test_config(CUOPTIM_ADAM);
  c.use_ema = 1;
  c.ema_momentum = 0.0;
  check_accepted("Adam(use_ema=True, ema_momentum=0.0)", &c);
  c.ema_momentum = 1.0;
  c.ema_overwrite_frequency = 1;
  check_accepted("Adam(use_ema=True, ema_momentum=1.0, ema_overwrite_frequency=1)", &c);
  c = test_config(CUOPTIM_ADAM);
  c.use_ema = 0;
  c.ema_momentum = 1.5; /* Keras checks ema_momentum only with use_ema */
  check_accepted("Adam(use_ema=False, ema_momentum=1.5)", &c);
  c = test_config(CUOPTIM_ADAM);
  c.gradient_accumulation_steps = 2;
  check_accepted("Adam(gradient_accumulation_steps=2)", &c);
  c = test_config(CUOPTIM_ADAM);
  c.clipnorm = 0.0; /* one clip option, disabled by 0 */
  check_accepted("Adam(clipnorm=0.0)", &c);
  c = test_config(CUOPTIM_SGD);
  c.dynamic_loss_scale = 1;
  c.dynamic_growth_steps = 1;
  check_accepted("LossScaleOptimizer(SGD(), dynamic_growth_steps=1)", &c);
}

Test(api, create_null_pointers) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  cuoptimOptimizer_t opt = SENTINEL_HANDLE;
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimCreate", "optimizer",
              cuoptimCreate(NULL, &c, CUOPTIM_BACKEND_HOST, 0));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimCreate", "config",
              cuoptimCreate(&opt, NULL, CUOPTIM_BACKEND_HOST, 0));
  cr_assert_eq(opt, SENTINEL_HANDLE);
}

Test(api, create_unknown_backend) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  static const int backends[] = {2, -1, 77};
  for (size_t i = 0; i < 3; i++) {
    cuoptimOptimizer_t opt = SENTINEL_HANDLE;
    EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimCreate", "backend",
                cuoptimCreate(&opt, &c, (cuoptimBackend_t)backends[i], 0));
    cr_assert_eq(opt, SENTINEL_HANDLE);
  }
}

Test(api, create_copies_the_config) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.learning_rate.initial_learning_rate = 0.25;
  c.beta_1 = 0.8;
  snprintf(c.name, sizeof c.name, "my_adam");
  cuoptimOptimizer_t opt = create_host(&c);
  c.learning_rate.initial_learning_rate = 0.5;
  c.beta_1 = 0.1;
  snprintf(c.name, sizeof c.name, "changed");
  cuoptimConfig_t got;
  OK(cuoptimGetConfig(opt, &got));
  cr_assert_eq(got.learning_rate.initial_learning_rate, 0.25);
  cr_assert_eq(got.beta_1, 0.8);
  cr_assert_str_eq(got.name, "my_adam");
  cr_assert_eq(got.kind, CUOPTIM_ADAM);
  float lr = 0;
  OK(cuoptimGetLearningRate(opt, &lr));
  cr_assert_eq(lr, 0.25f);
  OK(cuoptimDestroy(opt));
}

Test(api, destroy_null_is_success) { cr_assert_eq(cuoptimDestroy(NULL), CUOPTIM_STATUS_SUCCESS); }

Test(api, get_config_null_pointers) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_SGD);
  cuoptimConfig_t c;
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetConfig", "optimizer", cuoptimGetConfig(NULL, &c));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetConfig", "config", cuoptimGetConfig(opt, NULL));
  OK(cuoptimDestroy(opt));
}

/* =================================================================================================
 * cuoptimAddVariable, cuoptimGetVariableCount
 * ================================================================================================= */

static float PARAM[16];
static float GRAD[16];

static int variable_count(cuoptimOptimizer_t opt) {
  int n = -1;
  OK(cuoptimGetVariableCount(opt, &n));
  return n;
}

Test(api, add_variable_null_pointers) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_ADAM);
  cuoptimVariable_t var = 77;
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimAddVariable", "optimizer",
              cuoptimAddVariable(NULL, "w", PARAM, CUOPTIM_FLOAT32, 4, &var));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimAddVariable", "name",
              cuoptimAddVariable(opt, NULL, PARAM, CUOPTIM_FLOAT32, 4, &var));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimAddVariable", "param",
              cuoptimAddVariable(opt, "w", NULL, CUOPTIM_FLOAT32, 4, &var));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimAddVariable", "variable",
              cuoptimAddVariable(opt, "w", PARAM, CUOPTIM_FLOAT32, 4, NULL));
  cr_assert_eq(var, 77, "a failed cuoptimAddVariable wrote *variable");
  cr_assert_eq(variable_count(opt), 0);
  OK(cuoptimDestroy(opt));
}

Test(api, add_variable_bad_values) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_ADAM);
  cuoptimVariable_t var = -1;
  OK(cuoptimAddVariable(opt, "w", PARAM, CUOPTIM_FLOAT32, 4, &var));
  cr_assert_eq(var, 0);
  var = 77;
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimAddVariable", "name",
              cuoptimAddVariable(opt, "", PARAM, CUOPTIM_FLOAT32, 4, &var));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimAddVariable", "name",
              cuoptimAddVariable(opt, "w", PARAM + 4, CUOPTIM_FLOAT32, 4, &var));
  char long_name[300];
  memset(long_name, 'n', sizeof long_name - 1);
  long_name[sizeof long_name - 1] = '\0';
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimAddVariable", "name",
              cuoptimAddVariable(opt, long_name, PARAM, CUOPTIM_FLOAT32, 4, &var));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimAddVariable", "count",
              cuoptimAddVariable(opt, "v", PARAM, CUOPTIM_FLOAT32, 0, &var));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimAddVariable", "count",
              cuoptimAddVariable(opt, "v", PARAM, CUOPTIM_FLOAT32, ((size_t)1 << 40) + 1, &var));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimAddVariable", "count",
              cuoptimAddVariable(opt, "v", PARAM, CUOPTIM_FLOAT32, SIZE_MAX, &var));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimAddVariable", "dtype",
              cuoptimAddVariable(opt, "v", PARAM, (cuoptimDtype_t)3, 4, &var));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimAddVariable", "dtype",
              cuoptimAddVariable(opt, "v", PARAM, (cuoptimDtype_t)-1, 4, &var));
  cr_assert_eq(var, 77, "a failed cuoptimAddVariable wrote *variable");
  cr_assert_eq(variable_count(opt), 1, "failed calls registered a variable");
  /* The name is still free after the failures; indices continue at 1. */
  OK(cuoptimAddVariable(opt, "v", PARAM + 4, CUOPTIM_FLOAT16, 4, &var));
  cr_assert_eq(var, 1);
  OK(cuoptimAddVariable(opt, "u", PARAM + 8, CUOPTIM_BFLOAT16, 2, &var));
  cr_assert_eq(var, 2);
  cr_assert_eq(variable_count(opt), 3);
  OK(cuoptimDestroy(opt));
}

/* Shapes: registered row-major, read back as given; the count is their product; cuoptimAddVariable
 * is the shape [count]. */
Test(api, add_variable_with_shape_keeps_the_shape) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_ADAM);
  const int64_t matrix[2] = {3, 5}, tensor[3] = {2, 1, 7};
  cuoptimVariable_t a = -1, b = -1, c = -1, d = -1;
  static float buffer[64];
  OK(cuoptimAddVariableWithShape(opt, "kernel", buffer, CUOPTIM_FLOAT32, 2, matrix, &a));
  OK(cuoptimAddVariableWithShape(opt, "conv", buffer + 16, CUOPTIM_FLOAT16, 3, tensor, &b));
  OK(cuoptimAddVariableWithShape(opt, "scale", buffer + 40, CUOPTIM_FLOAT32, 0, NULL, &c));
  OK(cuoptimAddVariable(opt, "bias", buffer + 48, CUOPTIM_FLOAT32, 5, &d));
  cr_assert(a == 0 && b == 1 && c == 2 && d == 3);
  const int want_rank[4] = {2, 3, 0, 1};
  const int64_t want_dims[4][3] = {{3, 5}, {2, 1, 7}, {0}, {5}};
  const size_t want_count[4] = {15, 14, 1, 5};
  for (int v = 0; v < 4; v++) {
    int rank = -1;
    int64_t dims[CUOPTIM_MAX_DIMS];
    memset(dims, 0x5a, sizeof dims);
    OK(cuoptimGetVariableShape(opt, v, &rank, dims));
    cr_expect_eq(rank, want_rank[v], "variable %d: rank %d", v, rank);
    for (int k = 0; k < CUOPTIM_MAX_DIMS; k++)
      cr_expect_eq(dims[k], k < rank ? want_dims[v][k] : 0, "variable %d: dims[%d] = %lld", v, k, (long long)dims[k]);
  }
  /* The state sizes follow the counts. */
  int count = 0;
  OK(cuoptimGetWeightCount(opt, &count));
  size_t seen[4] = {0};
  for (int w = 0; w < count; w++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(opt, w, &info));
    for (int v = 0; v < 4; v++)
      if (strstr(info.name, v == 0 ? "kernel_" : v == 1 ? "conv_" : v == 2 ? "scale_" : "bias_") == info.name)
        seen[v] = info.count;
  }
  for (int v = 0; v < 4; v++) cr_expect_eq(seen[v], want_count[v], "variable %d: slots of %zu elements", v, seen[v]);
  OK(cuoptimDestroy(opt));
}

Test(api, add_variable_with_shape_bad_values) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_ADAM);
  cuoptimVariable_t var = 77;
  const int64_t good[2] = {2, 2};
  const int64_t zero[2] = {2, 0}, negative[2] = {-3, 2}, huge[3] = {(int64_t)1 << 20, (int64_t)1 << 20, 2};
  int64_t many[CUOPTIM_MAX_DIMS + 1];
  for (int k = 0; k <= CUOPTIM_MAX_DIMS; k++) many[k] = 1;
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimAddVariableWithShape", "optimizer",
              cuoptimAddVariableWithShape(NULL, "w", PARAM, CUOPTIM_FLOAT32, 2, good, &var));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimAddVariableWithShape", "dims",
              cuoptimAddVariableWithShape(opt, "w", PARAM, CUOPTIM_FLOAT32, 2, NULL, &var));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimAddVariableWithShape", "name",
              cuoptimAddVariableWithShape(opt, NULL, PARAM, CUOPTIM_FLOAT32, 2, good, &var));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimAddVariableWithShape", "rank",
              cuoptimAddVariableWithShape(opt, "w", PARAM, CUOPTIM_FLOAT32, -1, good, &var));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimAddVariableWithShape", "rank",
              cuoptimAddVariableWithShape(opt, "w", PARAM, CUOPTIM_FLOAT32, CUOPTIM_MAX_DIMS + 1, many, &var));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimAddVariableWithShape", "dims",
              cuoptimAddVariableWithShape(opt, "w", PARAM, CUOPTIM_FLOAT32, 2, zero, &var));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimAddVariableWithShape", "dims",
              cuoptimAddVariableWithShape(opt, "w", PARAM, CUOPTIM_FLOAT32, 2, negative, &var));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimAddVariableWithShape", "dims",
              cuoptimAddVariableWithShape(opt, "w", PARAM, CUOPTIM_FLOAT32, 3, huge, &var));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimAddVariableWithShape", "dtype",
              cuoptimAddVariableWithShape(opt, "w", PARAM, (cuoptimDtype_t)9, 2, good, &var));
  cr_assert_eq(var, 77, "a failed call wrote *variable");
  cr_assert_eq(variable_count(opt), 0, "failed calls registered a variable");
  OK(cuoptimAddVariableWithShape(opt, "w", PARAM, CUOPTIM_FLOAT32, CUOPTIM_MAX_DIMS, many, &var));
  int rank = 0;
  int64_t dims[CUOPTIM_MAX_DIMS];
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetVariableShape", "optimizer", cuoptimGetVariableShape(NULL, 0, &rank, dims));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetVariableShape", "rank", cuoptimGetVariableShape(opt, 0, NULL, dims));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetVariableShape", "dims", cuoptimGetVariableShape(opt, 0, &rank, NULL));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimGetVariableShape", "variable", cuoptimGetVariableShape(opt, 1, &rank, dims));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimGetVariableShape", "variable", cuoptimGetVariableShape(opt, -1, &rank, dims));
  OK(cuoptimDestroy(opt));
}

/* Duplicates are found among many names (the index grows and rehashes several times), and the
 * message names the variable that holds the name. */
Test(api, add_variable_finds_a_duplicate_among_many_names) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_SGD);
  enum { N = 5000 };
  char name[32];
  for (int i = 0; i < N; i++) {
    cuoptimVariable_t var = -1;
    snprintf(name, sizeof name, "layer_%d/kernel", i);
    OK(cuoptimAddVariable(opt, name, PARAM, CUOPTIM_FLOAT32, 4, &var));
    cr_assert_eq(var, i);
  }
  for (int i = 0; i < N; i += 977) {
    cuoptimVariable_t var = 77;
    snprintf(name, sizeof name, "layer_%d/kernel", i);
    EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimAddVariable", "name",
                cuoptimAddVariable(opt, name, PARAM, CUOPTIM_FLOAT32, 4, &var));
    char expected[64];
    snprintf(expected, sizeof expected, "is already variable %d", i);
    cr_expect(strstr(cuoptimGetLastErrorMessage(), expected), "\"%s\" should say \"%s\"",
              cuoptimGetLastErrorMessage(), expected);
    cr_assert_eq(var, 77);
  }
  cuoptimVariable_t var = -1;
  OK(cuoptimAddVariable(opt, "layer_5000/kernel", PARAM, CUOPTIM_FLOAT32, 4, &var));
  cr_assert_eq(var, N);
  cr_assert_eq(variable_count(opt), N + 1);
  OK(cuoptimDestroy(opt));
}

Test(api, add_variable_count_two_to_the_40_is_accepted) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_SGD);
  cuoptimVariable_t var = -1;
  OK(cuoptimAddVariable(opt, "huge", PARAM, CUOPTIM_FLOAT32, (size_t)1 << 40, &var)); /* never stepped */
  cr_assert_eq(var, 0);
  OK(cuoptimDestroy(opt));
}

Test(api, add_variable_after_first_step_is_invalid_state) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_ADAM);
  cuoptimVariable_t var;
  OK(cuoptimAddVariable(opt, "w", PARAM, CUOPTIM_FLOAT32, 4, &var));
  cuoptimGradient_t g = {.variable = var, .grad = GRAD, .dtype = CUOPTIM_FLOAT32};
  OK(cuoptimApplyGradients(opt, 1, &g, NULL));
  var = 77;
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_STATE, "cuoptimAddVariable", "cuoptimAddVariable",
              cuoptimAddVariable(opt, "late", PARAM + 4, CUOPTIM_FLOAT32, 4, &var));
  cr_assert_eq(var, 77);
  cr_assert_eq(variable_count(opt), 1);
  OK(cuoptimDestroy(opt));
}

/* The contract forbids adding variables only after the first step; in Keras, reading
 * optimizer.iterations or optimizer.learning_rate (or setting the learning rate) does not build
 * the optimizer. */
Test(api, add_variable_after_scalar_queries_before_first_step) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_ADAM);
  cr_assert_eq(test_iterations(opt), 0);
  float lr = 0;
  OK(cuoptimGetLearningRate(opt, &lr));
  cr_assert_eq(lr, 0.001f);
  OK(cuoptimSetLearningRate(opt, 0.01));
  cuoptimVariable_t var = -1;
  cuoptimStatus_t st = cuoptimAddVariable(opt, "w", PARAM, CUOPTIM_FLOAT32, 4, &var);
  cr_assert_eq(st, CUOPTIM_STATUS_SUCCESS,
               "cuoptimAddVariable before the first step, after cuoptimGetIterations/GetLearningRate/"
               "SetLearningRate: %s (%s)",
               cuoptimGetStatusString(st), cuoptimGetLastErrorMessage());
  cuoptimGradient_t g = {.variable = var, .grad = GRAD, .dtype = CUOPTIM_FLOAT32};
  OK(cuoptimApplyGradients(opt, 1, &g, NULL));
  cr_assert_eq(test_iterations(opt), 1);
  OK(cuoptimDestroy(opt));
}

/* The same for the state list: cuoptim.h allows cuoptimAddVariable until the first step. */
/* Listing the state builds it, as the first step does (documented in cuoptim.h): the variable list
 * is then fixed, and a later cuoptimAddVariable is refused without changing anything. */
Test(api, add_variable_after_state_listing_is_invalid_state) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_ADAM);
  cuoptimVariable_t var = -1;
  OK(cuoptimAddVariable(opt, "a", PARAM, CUOPTIM_FLOAT32, 4, &var));
  int count = 0;
  OK(cuoptimGetWeightCount(opt, &count));
  cr_assert_eq(count, 4);
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_STATE, "cuoptimAddVariable", "built",
              cuoptimAddVariable(opt, "b", PARAM + 4, CUOPTIM_FLOAT32, 4, &var));
  int variables = 0;
  OK(cuoptimGetVariableCount(opt, &variables));
  cr_assert_eq(variables, 1);
  OK(cuoptimGetWeightCount(opt, &count));
  cr_assert_eq(count, 4, "the state list is unchanged");
  OK(cuoptimDestroy(opt));
}

Test(api, get_variable_count_null_pointers) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_SGD);
  int n;
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetVariableCount", "optimizer", cuoptimGetVariableCount(NULL, &n));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetVariableCount", "count", cuoptimGetVariableCount(opt, NULL));
  OK(cuoptimDestroy(opt));
}

/* =================================================================================================
 * cuoptimExcludeFromWeightDecay, cuoptimUsesWeightDecay
 * ================================================================================================= */

Test(api, exclude_from_weight_decay_null_pointers) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_ADAMW);
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimExcludeFromWeightDecay", "optimizer",
              cuoptimExcludeFromWeightDecay(NULL, "bias"));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimExcludeFromWeightDecay", "regex",
              cuoptimExcludeFromWeightDecay(opt, NULL));
  OK(cuoptimDestroy(opt));
}

Test(api, exclude_from_weight_decay_invalid_regex) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_ADAMW);
  cuoptimVariable_t var;
  OK(cuoptimAddVariable(opt, "bias(", PARAM, CUOPTIM_FLOAT32, 4, &var));
  /* Errors for Python's re.compile ("a{1" is no error there: a literal "{"). */
  static const char *const bad[] = {"(", "bias(", "[a-", "a{2,1}", "*a", "\\p{L}", "(?<n>a)", "a)"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimExcludeFromWeightDecay", "regex",
                cuoptimExcludeFromWeightDecay(opt, bad[i]));
  int uses = -1;
  OK(cuoptimUsesWeightDecay(opt, var, &uses));
  cr_assert_eq(uses, 1, "a rejected regex excluded the variable");
  OK(cuoptimDestroy(opt));
}

/* Keras: "This method must be called before the optimizer's `build` method is called." Once the
 * state is built (by a step or a state access) a new pattern is refused and changes nothing. The
 * check precedes any backend code: the CUDA backend's tables hold each variable's flag from the
 * build on, so a later exclusion would have reached the host backend only. */
Test(api, exclude_from_weight_decay_after_build_is_refused) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 0.1);
  c.weight_decay = 0.5;
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_HOST, 0));
  float bias[1] = {1.0f}, zero[1] = {0.0f};
  cuoptimVariable_t var;
  OK(cuoptimAddVariable(opt, "bias", bias, CUOPTIM_FLOAT32, 1, &var));
  cuoptimGradient_t g = {var, zero, CUOPTIM_FLOAT32};
  OK(cuoptimApplyGradients(opt, 1, &g, NULL));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_STATE, "cuoptimExcludeFromWeightDecay", "regex",
              cuoptimExcludeFromWeightDecay(opt, "bias"));
  int uses = -1;
  OK(cuoptimUsesWeightDecay(opt, var, &uses));
  cr_assert_eq(uses, 1, "a refused exclusion changed the variable's weight decay");
  float before = bias[0];
  OK(cuoptimApplyGradients(opt, 1, &g, NULL));
  cr_assert_lt(bias[0], before, "the second step did not decay the variable (%.9g, was %.9g)", bias[0], before);
  OK(cuoptimDestroy(opt));

  /* A state access builds the state too. */
  OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_HOST, 0));
  OK(cuoptimAddVariable(opt, "bias", bias, CUOPTIM_FLOAT32, 1, &var));
  int count = 0;
  OK(cuoptimGetWeightCount(opt, &count));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_STATE, "cuoptimExcludeFromWeightDecay", "regex",
              cuoptimExcludeFromWeightDecay(opt, "bias"));
  OK(cuoptimDestroy(opt));
}

/* Constructs Python's re accepts whose meaning cuoptim cannot reproduce exactly on PCRE2: refused,
 * never run with another meaning; and the Python errors that a joined pattern raises. */
Test(api, exclude_from_weight_decay_refuses_what_it_cannot_match_as_python) {
  static const char *const refused[] = {
      "\\N{EM DASH}",    /* a character by its Unicode name */
      "(?i)caf\xc3\xa9", /* case-insensitive non-ASCII: Python's case tables */
      "(?i)(a)\\1",      /* case-insensitive back-reference */
      "(?a:\\W)x",       /* ASCII rules inside a Unicode pattern */
      "(a)?(?(2)b)(c)",  /* a condition on a later group */
      "(?t)a",           /* the deprecated template flag */
      "(?P<\xc3\xa9>a)", /* a non-ASCII group name */
      "a{65536}",        /* beyond PCRE2's largest repeat */
  };
  for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
    cuoptimOptimizer_t opt = create_kind(CUOPTIM_ADAMW);
    cuoptimVariable_t var;
    OK(cuoptimAddVariable(opt, "dense_bias", PARAM, CUOPTIM_FLOAT32, 4, &var));
    EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimExcludeFromWeightDecay", "regex",
                cuoptimExcludeFromWeightDecay(opt, refused[i]));
    cr_assert(strstr(cuoptimGetLastErrorMessage(), "not supported") != NULL, "%s: message \"%s\"", refused[i],
              cuoptimGetLastErrorMessage());
    OK(cuoptimDestroy(opt));
  }
  /* re.compile("bias|(?i)kernel"): "global flags not at the start of the expression". */
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_ADAMW);
  OK(cuoptimExcludeFromWeightDecay(opt, "bias"));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimExcludeFromWeightDecay", "regex",
              cuoptimExcludeFromWeightDecay(opt, "(?i)kernel"));
  cr_assert(strstr(cuoptimGetLastErrorMessage(), "global flags not at the start") != NULL, "message \"%s\"",
            cuoptimGetLastErrorMessage());
  /* The earlier pattern still holds, alone. */
  cuoptimVariable_t kernel, bias;
  OK(cuoptimAddVariable(opt, "KERNEL", PARAM, CUOPTIM_FLOAT32, 4, &kernel));
  OK(cuoptimAddVariable(opt, "dense_bias", PARAM + 4, CUOPTIM_FLOAT32, 4, &bias));
  int uses_kernel = -1, uses_bias = -1;
  OK(cuoptimUsesWeightDecay(opt, kernel, &uses_kernel));
  OK(cuoptimUsesWeightDecay(opt, bias, &uses_bias));
  cr_assert(uses_kernel == 1 && uses_bias == 0, "KERNEL uses weight decay: %d (want 1), dense_bias: %d (want 0)",
            uses_kernel, uses_bias);
  OK(cuoptimDestroy(opt));
}

/* Patterns whose compilation blows up (POSIX regcomp: 79 s and 20 GB for the first) are refused
 * at once with a message; patterns too deep or too long likewise. */
Test(api, exclude_from_weight_decay_refuses_explosive_patterns_quickly, .timeout = 20) {
  char deep[1024] = "", long_pattern[20000];
  for (int i = 0; i < 300; i++) strcat(deep, "(");
  strcat(deep, "a");
  for (int i = 0; i < 300; i++) strcat(deep, ")");
  memset(long_pattern, 'a', sizeof long_pattern - 1);
  long_pattern[sizeof long_pattern - 1] = '\0';
  const char *const explosive[] = {"((a{1,100}){1,100}){1,100}", "(a{1,65535}){1,65535}",
                                   "((((a{1,1000}){1,1000}){1,1000}){1,1000})", deep, long_pattern};
  for (size_t i = 0; i < sizeof explosive / sizeof explosive[0]; i++) {
    cuoptimOptimizer_t opt = create_kind(CUOPTIM_ADAMW);
    EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimExcludeFromWeightDecay", "regex",
                cuoptimExcludeFromWeightDecay(opt, explosive[i]));
    OK(cuoptimDestroy(opt));
  }
}

/* Searches that backtrack without end (POSIX regexec: 53 s per name for the back-reference) stop at
 * the match limit and are errors that name the pattern and the variable, never "no match": from
 * cuoptimAddVariable for a name added after the pattern, from cuoptimExcludeFromWeightDecay for
 * one added before. Either failed call changes nothing. */
static const char *const BACKTRACKING[] = {"(a*)*b", "(a+)+\\1b", "^(a|aa)+$", "(x+x+)+y", "(.*a){20}b"};

static void long_name(char *name, char c, const char *tail) {
  memset(name, c, 80);
  strcpy(name + 80, tail);
}

Test(api, backtracking_search_on_add_variable_is_an_error, .timeout = 20) {
  for (size_t i = 0; i < sizeof BACKTRACKING / sizeof BACKTRACKING[0]; i++) {
    char name[128];
    long_name(name, BACKTRACKING[i][1] == 'x' ? 'x' : 'a', BACKTRACKING[i][1] == 'x' ? "_y" : "c_b!");
    cuoptimOptimizer_t opt = create_kind(CUOPTIM_ADAMW);
    OK(cuoptimExcludeFromWeightDecay(opt, BACKTRACKING[i]));
    cuoptimVariable_t var = -7;
    EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimAddVariable", "name",
                cuoptimAddVariable(opt, name, PARAM, CUOPTIM_FLOAT32, 4, &var));
    const char *message = cuoptimGetLastErrorMessage();
    cr_assert(strstr(message, BACKTRACKING[i]) != NULL && strstr(message, name) != NULL,
              "the message names neither the pattern %s nor the variable: \"%s\"", BACKTRACKING[i], message);
    cr_assert_eq(var, -7, "a failed cuoptimAddVariable wrote *variable");
    int count = -1;
    OK(cuoptimGetVariableCount(opt, &count));
    cr_assert_eq(count, 0, "a failed cuoptimAddVariable registered the variable");
    OK(cuoptimDestroy(opt));
  }
}

Test(api, backtracking_search_on_exclude_is_an_error, .timeout = 20) {
  for (size_t i = 0; i < sizeof BACKTRACKING / sizeof BACKTRACKING[0]; i++) {
    char name[128];
    long_name(name, BACKTRACKING[i][1] == 'x' ? 'x' : 'a', BACKTRACKING[i][1] == 'x' ? "_y" : "c_b!");
    cuoptimOptimizer_t opt = create_kind(CUOPTIM_ADAMW);
    cuoptimVariable_t plain, hard;
    OK(cuoptimAddVariable(opt, "dense_bias", PARAM, CUOPTIM_FLOAT32, 4, &plain));
    OK(cuoptimAddVariable(opt, name, PARAM + 4, CUOPTIM_FLOAT32, 4, &hard));
    EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimExcludeFromWeightDecay", "regex",
                cuoptimExcludeFromWeightDecay(opt, BACKTRACKING[i]));
    const char *message = cuoptimGetLastErrorMessage();
    cr_assert(strstr(message, BACKTRACKING[i]) != NULL && strstr(message, name) != NULL,
              "the message names neither the pattern %s nor the variable: \"%s\"", BACKTRACKING[i], message);
    /* Nothing changed: a later pattern is joined with the earlier ones only. */
    OK(cuoptimExcludeFromWeightDecay(opt, "bias$"));
    int uses_plain = -1, uses_hard = -1;
    OK(cuoptimUsesWeightDecay(opt, plain, &uses_plain));
    OK(cuoptimUsesWeightDecay(opt, hard, &uses_hard));
    cr_assert(uses_plain == 0 && uses_hard == 1, "dense_bias uses weight decay: %d (want 0), %s: %d (want 1)",
              uses_plain, name, uses_hard);
    OK(cuoptimDestroy(opt));
  }
}

Test(api, uses_weight_decay_bad_input) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_ADAMW);
  cuoptimVariable_t var;
  OK(cuoptimAddVariable(opt, "w", PARAM, CUOPTIM_FLOAT32, 4, &var));
  int uses = 42;
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimUsesWeightDecay", "optimizer",
              cuoptimUsesWeightDecay(NULL, var, &uses));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimUsesWeightDecay", "uses", cuoptimUsesWeightDecay(opt, var, NULL));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimUsesWeightDecay", "variable",
              cuoptimUsesWeightDecay(opt, 1, &uses));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimUsesWeightDecay", "variable",
              cuoptimUsesWeightDecay(opt, -1, &uses));
  cr_assert_eq(uses, 42, "a failed cuoptimUsesWeightDecay wrote *uses");
  OK(cuoptimDestroy(opt));
}

/* =================================================================================================
 * cuoptimApplyGradients
 * ================================================================================================= */

/* Adam with two variables of 4 elements, each from its own buffer. */
typedef struct {
  cuoptimOptimizer_t opt;
  float w[2][4];
  float g[2][4];
} adam2_t;

static void adam2_init(adam2_t *a) {
  memset(a, 0, sizeof *a);
  a->opt = create_kind(CUOPTIM_ADAM);
  for (int k = 0; k < 2; k++)
    for (int i = 0; i < 4; i++) {
      a->w[k][i] = (float)(k * 4 + i + 1);
      a->g[k][i] = 0.5f * (float)(i + 1) - (float)k;
    }
  cuoptimVariable_t var;
  OK(cuoptimAddVariable(a->opt, "a", a->w[0], CUOPTIM_FLOAT32, 4, &var));
  OK(cuoptimAddVariable(a->opt, "b", a->w[1], CUOPTIM_FLOAT32, 4, &var));
}

static void apply_both(adam2_t *a) {
  cuoptimGradient_t grads[2] = {{.variable = 0, .grad = a->g[0], .dtype = CUOPTIM_FLOAT32},
                                {.variable = 1, .grad = a->g[1], .dtype = CUOPTIM_FLOAT32}};
  OK(cuoptimApplyGradients(a->opt, 2, grads, NULL));
}

/* A snapshot of everything observable: the variables, every state entry, the iterations. */
typedef struct {
  float w[2][4];
  double state[32];
  int count;
  int64_t iterations;
} snapshot_t;

static void take_snapshot(adam2_t *a, snapshot_t *s) {
  memset(s, 0, sizeof *s);
  memcpy(s->w, a->w, sizeof s->w);
  OK(cuoptimGetWeightCount(a->opt, &s->count));
  int at = 0;
  for (int i = 0; i < s->count; i++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(a->opt, i, &info));
    cr_assert_leq(at + (int)info.count, 32);
    OK(cuoptimGetWeights(a->opt, i, s->state + at, info.count));
    at += (int)info.count;
  }
  s->iterations = test_iterations(a->opt);
}

static void expect_unchanged(adam2_t *a, const snapshot_t *before, const char *what) {
  snapshot_t now;
  take_snapshot(a, &now);
  cr_assert_eq(memcmp(now.w, before->w, sizeof now.w), 0, "%s changed a variable", what);
  cr_assert_eq(now.count, before->count, "%s changed the state list", what);
  cr_assert_eq(memcmp(now.state, before->state, sizeof now.state), 0, "%s changed the optimizer state", what);
  cr_assert_eq(now.iterations, before->iterations, "%s changed iterations", what);
}

Test(api, apply_gradients_null_pointers) {
  adam2_t a;
  adam2_init(&a);
  cuoptimGradient_t g = {.variable = 0, .grad = a.g[0], .dtype = CUOPTIM_FLOAT32};
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimApplyGradients", "optimizer",
              cuoptimApplyGradients(NULL, 1, &g, NULL));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimApplyGradients", "grads",
              cuoptimApplyGradients(a.opt, 1, NULL, NULL));
  cr_assert_eq(test_iterations(a.opt), 0);
  OK(cuoptimDestroy(a.opt));
}

Test(api, apply_gradients_bad_lists_change_nothing) {
  adam2_t a;
  adam2_init(&a);
  apply_both(&a); /* some state to protect */
  snapshot_t before;
  take_snapshot(&a, &before);
  cr_assert_eq(before.iterations, 1);

  cuoptimGradient_t good = {.variable = 0, .grad = a.g[0], .dtype = CUOPTIM_FLOAT32};
  cuoptimGradient_t list[3];

  list[0] = good;
  list[1] = (cuoptimGradient_t){.variable = 2, .grad = a.g[1], .dtype = CUOPTIM_FLOAT32};
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimApplyGradients", "variable",
              cuoptimApplyGradients(a.opt, 2, list, NULL));
  expect_unchanged(&a, &before, "an unknown variable index");

  list[1].variable = -1;
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimApplyGradients", "variable",
              cuoptimApplyGradients(a.opt, 2, list, NULL));
  expect_unchanged(&a, &before, "a negative variable index");

  list[1] = good;
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimApplyGradients", "variable",
              cuoptimApplyGradients(a.opt, 2, list, NULL));
  expect_unchanged(&a, &before, "a variable listed twice");

  list[1] = (cuoptimGradient_t){.variable = 1, .grad = a.g[1], .dtype = (cuoptimDtype_t)9};
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimApplyGradients", "dtype",
              cuoptimApplyGradients(a.opt, 2, list, NULL));
  expect_unchanged(&a, &before, "an unknown gradient dtype");

  list[0] = (cuoptimGradient_t){.variable = 0, .grad = NULL, .dtype = CUOPTIM_FLOAT32};
  list[1] = (cuoptimGradient_t){.variable = 1, .grad = NULL, .dtype = CUOPTIM_FLOAT32};
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimApplyGradients", "gradient",
              cuoptimApplyGradients(a.opt, 2, list, NULL));
  expect_unchanged(&a, &before, "all-NULL gradients");

  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimApplyGradients", "n", cuoptimApplyGradients(a.opt, -1, list, NULL));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimApplyGradients", "n", cuoptimApplyGradients(a.opt, -1, NULL, NULL));
  expect_unchanged(&a, &before, "n < 0");

  /* After the rejected calls, a step gives what it gives on an optimizer that never saw them. */
  adam2_t twin;
  adam2_init(&twin);
  apply_both(&twin);
  apply_both(&twin);
  apply_both(&a);
  cr_assert_eq(memcmp(a.w, twin.w, sizeof a.w), 0, "rejected calls changed the next step");
  cr_assert_eq(test_iterations(a.opt), 2);
  OK(cuoptimDestroy(a.opt));
  OK(cuoptimDestroy(twin.opt));
}

Test(api, apply_gradients_n_zero_is_a_no_op) {
  adam2_t a;
  adam2_init(&a);
  snapshot_t before;
  memcpy(before.w, a.w, sizeof a.w);
  OK(cuoptimApplyGradients(a.opt, 0, NULL, NULL));
  cuoptimGradient_t g = {.variable = 0, .grad = a.g[0], .dtype = CUOPTIM_FLOAT32};
  OK(cuoptimApplyGradients(a.opt, 0, &g, NULL));
  cr_assert_eq(test_iterations(a.opt), 0);
  cr_assert_eq(memcmp(a.w, before.w, sizeof a.w), 0);
  apply_both(&a);
  take_snapshot(&a, &before);
  OK(cuoptimApplyGradients(a.opt, 0, NULL, NULL));
  expect_unchanged(&a, &before, "n == 0");
  OK(cuoptimDestroy(a.opt));
}

Test(api, apply_gradients_without_variables) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_SGD);
  cuoptimGradient_t g = {.variable = 0, .grad = GRAD, .dtype = CUOPTIM_FLOAT32};
  prime_error("cuoptimApplyGradients");
  cuoptimStatus_t st = cuoptimApplyGradients(opt, 1, &g, NULL);
  cr_assert_eq(st, CUOPTIM_STATUS_INVALID_VALUE, "%s", cuoptimGetStatusString(st));
  cr_assert(strstr(cuoptimGetLastErrorMessage(), "cuoptimApplyGradients") != NULL);
  cr_assert_eq(test_iterations(opt), 0);
  OK(cuoptimDestroy(opt));
}

/* =================================================================================================
 * cuoptimMinimize
 * ================================================================================================= */

typedef struct {
  adam2_t *a;
  cuoptimStatus_t result; /* what the callback returns */
  int mode;               /* 0: normal, 1: leave *n, 2: n = 2 and grads NULL, 3: n = 0 */
  int calls;
  void *seen_user;
  cuoptimOptimizer_t seen_opt;
  cuoptimStream_t seen_stream;
  cuoptimGradient_t grads[2];
} minimize_t;

static cuoptimStatus_t test_grad_fn(void *user, cuoptimOptimizer_t opt, cuoptimStream_t stream, int *n,
                                    const cuoptimGradient_t **grads) {
  minimize_t *m = user;
  m->calls++;
  m->seen_user = user;
  m->seen_opt = opt;
  m->seen_stream = stream;
  if (m->result != CUOPTIM_STATUS_SUCCESS) {
    *n = 2; /* even with a list described, nothing must be applied */
    m->grads[0] = (cuoptimGradient_t){.variable = 0, .grad = m->a->g[0], .dtype = CUOPTIM_FLOAT32};
    m->grads[1] = (cuoptimGradient_t){.variable = 1, .grad = m->a->g[1], .dtype = CUOPTIM_FLOAT32};
    *grads = m->grads;
    return m->result;
  }
  switch (m->mode) {
    case 1:
      return CUOPTIM_STATUS_SUCCESS;
    case 2:
      *n = 2;
      *grads = NULL;
      return CUOPTIM_STATUS_SUCCESS;
    case 3:
      *n = 0;
      return CUOPTIM_STATUS_SUCCESS;
    default:
      m->grads[0] = (cuoptimGradient_t){.variable = 0, .grad = m->a->g[0], .dtype = CUOPTIM_FLOAT32};
      m->grads[1] = (cuoptimGradient_t){.variable = 1, .grad = m->a->g[1], .dtype = CUOPTIM_FLOAT32};
      *n = 2;
      *grads = m->grads;
      return CUOPTIM_STATUS_SUCCESS;
  }
}

Test(api, minimize_null_pointers) {
  adam2_t a;
  adam2_init(&a);
  minimize_t m = {.a = &a};
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimMinimize", "optimizer",
              cuoptimMinimize(NULL, test_grad_fn, &m, NULL));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimMinimize", "grad_fn", cuoptimMinimize(a.opt, NULL, &m, NULL));
  cr_assert_eq(m.calls, 0);
  OK(cuoptimDestroy(a.opt));
}

Test(api, minimize_passes_callback_errors_through) {
  static const cuoptimStatus_t errors[] = {CUOPTIM_STATUS_NCCL_ERROR, CUOPTIM_STATUS_INVALID_VALUE,
                                           CUOPTIM_STATUS_CUDA_ERROR, CUOPTIM_STATUS_INTERNAL_ERROR};
  adam2_t a;
  adam2_init(&a);
  apply_both(&a);
  snapshot_t before;
  take_snapshot(&a, &before);
  for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++) {
    minimize_t m = {.a = &a, .result = errors[i]};
    cuoptimStatus_t st = cuoptimMinimize(a.opt, test_grad_fn, &m, NULL);
    cr_assert_eq(st, errors[i], "the callback's %s came back as %s", cuoptimGetStatusString(errors[i]),
                 cuoptimGetStatusString(st));
    cr_assert_eq(m.calls, 1);
    expect_unchanged(&a, &before, "a failing callback");
  }
  OK(cuoptimDestroy(a.opt));
}

Test(api, minimize_callback_leaving_n_unset) {
  adam2_t a;
  adam2_init(&a);
  minimize_t m = {.a = &a, .mode = 1};
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimMinimize", "grad_fn",
              cuoptimMinimize(a.opt, test_grad_fn, &m, NULL));
  cr_assert_eq(test_iterations(a.opt), 0);
  m.mode = 2;
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimMinimize", "grads", cuoptimMinimize(a.opt, test_grad_fn, &m, NULL));
  cr_assert_eq(test_iterations(a.opt), 0);
  m.mode = 3;
  OK(cuoptimMinimize(a.opt, test_grad_fn, &m, NULL)); /* n == 0: no-op, as apply_gradients([]) */
  cr_assert_eq(test_iterations(a.opt), 0);
  OK(cuoptimDestroy(a.opt));
}

Test(api, minimize_calls_back_with_its_arguments_and_applies) {
  adam2_t a, twin;
  adam2_init(&a);
  adam2_init(&twin);
  minimize_t m = {.a = &a};
  cuoptimStream_t stream = (cuoptimStream_t)(uintptr_t)0x1234; /* ignored by the host backend */
  OK(cuoptimMinimize(a.opt, test_grad_fn, &m, stream));
  cr_assert_eq(m.calls, 1);
  cr_assert_eq(m.seen_user, &m);
  cr_assert_eq(m.seen_opt, a.opt);
  cr_assert_eq(m.seen_stream, stream);
  apply_both(&twin);
  cr_assert_eq(memcmp(a.w, twin.w, sizeof a.w), 0, "cuoptimMinimize differs from cuoptimApplyGradients");
  cr_assert_eq(test_iterations(a.opt), 1);
  OK(cuoptimDestroy(a.opt));
  OK(cuoptimDestroy(twin.opt));
}

/* =================================================================================================
 * Scalars: iterations, learning rate, loss scale
 * ================================================================================================= */

Test(api, get_iterations_and_learning_rate_null_pointers) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_SGD);
  int64_t it;
  float lr;
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetIterations", "optimizer", cuoptimGetIterations(NULL, &it));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetIterations", "iterations", cuoptimGetIterations(opt, NULL));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetLearningRate", "optimizer", cuoptimGetLearningRate(NULL, &lr));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetLearningRate", "learning_rate",
              cuoptimGetLearningRate(opt, NULL));
  OK(cuoptimDestroy(opt));
}

Test(api, set_learning_rate_bad_input) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_SGD);
  cuoptimVariable_t var;
  OK(cuoptimAddVariable(opt, "w", PARAM, CUOPTIM_FLOAT32, 4, &var));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimSetLearningRate", "optimizer", cuoptimSetLearningRate(NULL, 0.1));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetLearningRate", "learning_rate",
              cuoptimSetLearningRate(opt, NAN));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetLearningRate", "learning_rate",
              cuoptimSetLearningRate(opt, INFINITY));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetLearningRate", "learning_rate",
              cuoptimSetLearningRate(opt, -INFINITY));
  float lr = 0;
  OK(cuoptimGetLearningRate(opt, &lr));
  cr_assert_eq(lr, 0.01f, "a rejected cuoptimSetLearningRate changed the learning rate");
  /* The float32 variable is assigned. */
  OK(cuoptimSetLearningRate(opt, 0.1));
  OK(cuoptimGetLearningRate(opt, &lr));
  cr_assert_eq(lr, 0.1f);
  double stored = 0;
  OK(cuoptimGetWeights(opt, 1, &stored, 1));
  cr_assert_eq(stored, (double)0.1f);
  OK(cuoptimDestroy(opt));
}

Test(api, set_learning_rate_with_a_schedule_is_invalid_state) {
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  OK(cuoptimScheduleInit(&c.learning_rate, CUOPTIM_SCHEDULE_EXPONENTIAL));
  c.learning_rate.decay_steps = 10;
  cuoptimOptimizer_t opt = create_host(&c);
  float before = 0, after = 0;
  OK(cuoptimGetLearningRate(opt, &before));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_STATE, "cuoptimSetLearningRate", "schedule", cuoptimSetLearningRate(opt, 0.5));
  OK(cuoptimGetLearningRate(opt, &after));
  cr_assert_eq(before, after);
  OK(cuoptimDestroy(opt));
}

Test(api, get_loss_scale_bad_input) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_SGD);
  float scale = 7.0f;
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetLossScale", "optimizer", cuoptimGetLossScale(NULL, &scale));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetLossScale", "scale", cuoptimGetLossScale(opt, NULL));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_STATE, "cuoptimGetLossScale", "cuoptimGetLossScale",
              cuoptimGetLossScale(opt, &scale));
  cr_assert_eq(scale, 7.0f, "a failed cuoptimGetLossScale wrote *scale");
  OK(cuoptimDestroy(opt));
  cuoptimConfig_t c = test_config(CUOPTIM_SGD);
  c.dynamic_loss_scale = 1;
  c.initial_scale = 1024.0;
  opt = create_host(&c);
  OK(cuoptimGetLossScale(opt, &scale));
  cr_assert_eq(scale, 1024.0f);
  OK(cuoptimDestroy(opt));
}

/* =================================================================================================
 * Optimizer state: cuoptimGetWeightCount / GetWeightInfo / GetWeights / SetWeights
 * ================================================================================================= */

Test(api, weight_count_and_info_bad_input) {
  adam2_t a;
  adam2_init(&a);
  int count = -1;
  cuoptimWeightInfo_t info;
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetWeightCount", "optimizer", cuoptimGetWeightCount(NULL, &count));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetWeightCount", "count", cuoptimGetWeightCount(a.opt, NULL));
  OK(cuoptimGetWeightCount(a.opt, &count));
  cr_assert_eq(count, 6,
               "Adam with 2 variables: iteration, learning_rate, a_momentum, a_velocity, b_momentum, "
               "b_velocity; got %d entries",
               count);
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetWeightInfo", "optimizer", cuoptimGetWeightInfo(NULL, 0, &info));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetWeightInfo", "info", cuoptimGetWeightInfo(a.opt, 0, NULL));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimGetWeightInfo", "index", cuoptimGetWeightInfo(a.opt, -1, &info));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimGetWeightInfo", "index", cuoptimGetWeightInfo(a.opt, count, &info));
  static const char *const names[6] = {"iteration",  "learning_rate", "a_momentum",
                                       "a_velocity", "b_momentum",    "b_velocity"};
  static const size_t counts[6] = {1, 1, 4, 4, 4, 4};
  for (int i = 0; i < count; i++) {
    OK(cuoptimGetWeightInfo(a.opt, i, &info));
    cr_assert_str_eq(info.name, names[i]);
    cr_assert_eq(info.count, counts[i]);
    cr_assert_eq(info.is_integer, i == 0);
  }
  OK(cuoptimDestroy(a.opt));
}

/* A name given as a Keras path: its slots are named as Keras names them ('/' made '_'). */
Test(api, slot_names_of_a_path_are_kerass) {
  cuoptimConfig_t config;
  OK(cuoptimConfigInit(&config, CUOPTIM_ADAM));
  config.use_ema = 1;
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &config, CUOPTIM_BACKEND_HOST, 0));
  float param[2] = {1, 2};
  int index = -1;
  OK(cuoptimAddVariable(opt, "dense/kernel", param, CUOPTIM_FLOAT32, 2, &index));
  static const char *const names[5] = {"iteration", "learning_rate", "dense_kernel_average", "dense_kernel_momentum",
                                       "dense_kernel_velocity"};
  int count = 0;
  OK(cuoptimGetWeightCount(opt, &count));
  cr_assert_eq(count, 5);
  for (int i = 0; i < count; i++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(opt, i, &info));
    cr_expect_str_eq(info.name, names[i]);
  }
  OK(cuoptimDestroy(opt));
}

Test(api, get_weights_bad_input) {
  adam2_t a;
  adam2_init(&a);
  double values[8] = {0};
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetWeights", "optimizer", cuoptimGetWeights(NULL, 0, values, 1));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetWeights", "values", cuoptimGetWeights(a.opt, 0, NULL, 1));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimGetWeights", "index", cuoptimGetWeights(a.opt, -1, values, 1));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimGetWeights", "index", cuoptimGetWeights(a.opt, 6, values, 1));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimGetWeights", "count", cuoptimGetWeights(a.opt, 0, values, 0));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimGetWeights", "count", cuoptimGetWeights(a.opt, 0, values, 2));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimGetWeights", "count", cuoptimGetWeights(a.opt, 2, values, 3));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimGetWeights", "count", cuoptimGetWeights(a.opt, 2, values, 5));
  OK(cuoptimGetWeights(a.opt, 2, values, 4));
  OK(cuoptimDestroy(a.opt));
}

Test(api, set_weights_bad_input_changes_nothing) {
  adam2_t a;
  adam2_init(&a);
  apply_both(&a);
  snapshot_t before;
  take_snapshot(&a, &before);
  double values[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimSetWeights", "optimizer", cuoptimSetWeights(NULL, 0, values, 1));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimSetWeights", "values", cuoptimSetWeights(a.opt, 0, NULL, 1));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetWeights", "index", cuoptimSetWeights(a.opt, -1, values, 1));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetWeights", "index", cuoptimSetWeights(a.opt, 6, values, 1));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetWeights", "count", cuoptimSetWeights(a.opt, 0, values, 2));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetWeights", "count", cuoptimSetWeights(a.opt, 2, values, 3));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetWeights", "count", cuoptimSetWeights(a.opt, 2, values, 8));
  static const double bad_counters[] = {1.5, -1.0, NAN, INFINITY, 0.25};
  for (size_t i = 0; i < sizeof bad_counters / sizeof bad_counters[0]; i++)
    EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetWeights", "iteration",
                cuoptimSetWeights(a.opt, 0, &bad_counters[i], 1));
  static const double bad_scalars[] = {NAN, INFINITY, -INFINITY};
  for (size_t i = 0; i < sizeof bad_scalars / sizeof bad_scalars[0]; i++)
    EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetWeights", "learning_rate",
                cuoptimSetWeights(a.opt, 1, &bad_scalars[i], 1));
  expect_unchanged(&a, &before, "rejected cuoptimSetWeights calls");
  double seven = 7.0;
  OK(cuoptimSetWeights(a.opt, 0, &seven, 1));
  cr_assert_eq(test_iterations(a.opt), 7);
  OK(cuoptimDestroy(a.opt));
}

/* A failed state call is checked before the state is built: variables can still be added. */
static void expect_still_unbuilt(cuoptimOptimizer_t opt, const char *what) {
  static int serial;
  char name[32];
  snprintf(name, sizeof name, "late_%d", serial++);
  cuoptimVariable_t var;
  cuoptimStatus_t st = cuoptimAddVariable(opt, name, PARAM, CUOPTIM_FLOAT32, 4, &var);
  cr_assert_eq(st, CUOPTIM_STATUS_SUCCESS, "after a failed %s, cuoptimAddVariable returned %s: %s", what,
               cuoptimGetStatusString(st), cuoptimGetLastErrorMessage());
}

Test(api, failed_state_calls_build_nothing) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_ADAM);
  cuoptimVariable_t var;
  OK(cuoptimAddVariable(opt, "w", PARAM, CUOPTIM_FLOAT32, 4, &var));
  cuoptimWeightInfo_t info;
  double values[8] = {0};
  /* Entries: iteration, learning_rate, w_momentum, w_velocity (and more as variables are added). */
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimGetWeightInfo", "index", cuoptimGetWeightInfo(opt, 99, &info));
  expect_still_unbuilt(opt, "cuoptimGetWeightInfo");
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimGetWeights", "index", cuoptimGetWeights(opt, -1, values, 1));
  expect_still_unbuilt(opt, "cuoptimGetWeights (index)");
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimGetWeights", "count", cuoptimGetWeights(opt, 2, values, 3));
  expect_still_unbuilt(opt, "cuoptimGetWeights (count)");
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetWeights", "index", cuoptimSetWeights(opt, 99, values, 1));
  expect_still_unbuilt(opt, "cuoptimSetWeights (index)");
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetWeights", "count", cuoptimSetWeights(opt, 0, values, 2));
  expect_still_unbuilt(opt, "cuoptimSetWeights (count)");
  double half = 0.5, huge = 1e300;
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetWeights", "iteration", cuoptimSetWeights(opt, 0, &half, 1));
  expect_still_unbuilt(opt, "cuoptimSetWeights (counter value)");
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetWeights", "learning_rate", cuoptimSetWeights(opt, 1, &huge, 1));
  expect_still_unbuilt(opt, "cuoptimSetWeights (scalar value)");
  /* The list the failed calls checked against follows the variables added since. */
  int count = 0;
  OK(cuoptimGetWeightCount(opt, &count));
  cr_assert_eq(count, 2 + 2 * 8, "Adam with 8 variables has %d entries, expected 18", count);
  OK(cuoptimGetWeightInfo(opt, count - 1, &info));
  cr_assert_str_eq(info.name, "late_6_velocity");
  OK(cuoptimDestroy(opt));
}

Test(api, float32_overflow_is_refused_where_the_step_computes) {
  adam2_t a;
  adam2_init(&a);
  apply_both(&a);
  snapshot_t before;
  take_snapshot(&a, &before);
  /* Finite as doubles, infinite as the float32 the step uses. */
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetLearningRate", "learning_rate",
              cuoptimSetLearningRate(a.opt, 1e308));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetLearningRate", "learning_rate",
              cuoptimSetLearningRate(a.opt, -3.5e38));
  double huge = 1e300;
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetWeights", "learning_rate", cuoptimSetWeights(a.opt, 1, &huge, 1));
  /* An array is checked whole before any element is written. */
  double slot[4] = {1, 2, 3, 1e39};
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetWeights", "values", cuoptimSetWeights(a.opt, 2, slot, 4));
  expect_unchanged(&a, &before, "float32-overflowing values");
  /* The largest float32 and an explicit infinity in an array are representable: accepted. */
  OK(cuoptimSetLearningRate(a.opt, 3.4028234663852886e38));
  slot[3] = INFINITY;
  OK(cuoptimSetWeights(a.opt, 2, slot, 4));
  double back[4];
  OK(cuoptimGetWeights(a.opt, 2, back, 4));
  cr_assert(back[0] == 1 && back[3] == INFINITY);
  OK(cuoptimDestroy(a.opt));
}

Test(api, names_may_use_every_byte_of_cuoptim_max_name) {
  cuoptimOptimizer_t opt = create_kind(CUOPTIM_ADADELTA); /* the longest slot: accumulated_delta_var */
  char name[CUOPTIM_MAX_NAME + 1];
  memset(name, 'n', sizeof name);
  name[CUOPTIM_MAX_NAME] = '\0';
  cuoptimVariable_t var;
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimAddVariable", "name",
              cuoptimAddVariable(opt, name, PARAM, CUOPTIM_FLOAT32, 4, &var));
  name[CUOPTIM_MAX_NAME - 1] = '\0';
  OK(cuoptimAddVariable(opt, name, PARAM, CUOPTIM_FLOAT32, 4, &var));
  int count = 0;
  OK(cuoptimGetWeightCount(opt, &count));
  cuoptimWeightInfo_t info;
  OK(cuoptimGetWeightInfo(opt, count - 1, &info));
  char expected[CUOPTIM_MAX_WEIGHT_NAME];
  snprintf(expected, sizeof expected, "%s_accumulated_delta_var", name);
  cr_assert_str_eq(info.name, expected, "the slot name of a %d-byte variable name is cut", CUOPTIM_MAX_NAME - 1);
  OK(cuoptimDestroy(opt));
}

/* Many variables, each within the 2^40-element limit, whose state sizes sum past 2^64: the sum
 * must be refused, not wrapped to a small arena that the build then overruns. */
Test(api, state_size_sums_are_bounded, .timeout = 120) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.amsgrad = 1;                      /* three slots */
  c.use_ema = 1;                      /* an average */
  c.gradient_accumulation_steps = 2;  /* an accumulator */
  cuoptimOptimizer_t opt = create_host(&c);
  /* float16: plus a master copy, six float32 buffers of up to 2^42 bytes per variable. */
  const size_t max_count = (size_t)1 << 40, per_variable = 6 * (max_count * 4);
  const int full = (int)(SIZE_MAX / per_variable); /* this many largest variables stay below 2^64 */
  /* One more variable, sized so the unchecked sum wraps past 2^64 to a few hundred bytes. */
  const size_t rest = (size_t)0 - (size_t)full * per_variable;
  const size_t last_count = (rest + 6 * 256 - 1) / (6 * 256) * 256 / 4;
  cr_assert_leq(last_count, max_count);
  int refused_at = -1;
  cuoptimStatus_t refusal = CUOPTIM_STATUS_SUCCESS;
  for (int i = 0; i <= full && refused_at < 0; i++) {
    char name[32];
    snprintf(name, sizeof name, "v%d", i);
    cuoptimVariable_t var;
    cuoptimStatus_t st = cuoptimAddVariable(opt, name, PARAM, CUOPTIM_FLOAT16, i < full ? max_count : last_count, &var);
    if (st != CUOPTIM_STATUS_SUCCESS) {
      refused_at = i;
      refusal = st;
    }
  }
  cr_assert_eq(refusal, CUOPTIM_STATUS_INVALID_VALUE, "a state beyond 2^60 bytes was not refused (%d variables added)",
               refused_at < 0 ? full + 1 : refused_at);
  cr_assert(strstr(cuoptimGetLastErrorMessage(), "count") != NULL, "message: %s", cuoptimGetLastErrorMessage());
  /* What was accepted is still below the bound: building it fails cleanly for lack of memory. */
  int entries = 0;
  cuoptimStatus_t st = cuoptimGetWeightCount(opt, &entries);
  cr_assert_eq(st, CUOPTIM_STATUS_ALLOC_FAILED, "building ~2^60 bytes of state returned %s",
               cuoptimGetStatusString(st));
  OK(cuoptimDestroy(opt));
}

/* =================================================================================================
 * cuoptimFinalizeVariableValues, cuoptimSynchronize
 * ================================================================================================= */

Test(api, finalize_and_synchronize_null_optimizer) {
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimFinalizeVariableValues", "optimizer",
              cuoptimFinalizeVariableValues(NULL, NULL));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimSynchronize", "optimizer", cuoptimSynchronize(NULL));
}

Test(api, synchronize_timeout_rejects_null_optimizer_and_negative_timeout) {
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimSynchronizeTimeout", "optimizer",
              cuoptimSynchronizeTimeout(NULL, 0));
  adam2_t a;
  adam2_init(&a);
  apply_both(&a);
  snapshot_t before;
  take_snapshot(&a, &before);
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSynchronizeTimeout", "timeout_ms",
              cuoptimSynchronizeTimeout(a.opt, -1));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSynchronizeTimeout", "timeout_ms",
              cuoptimSynchronizeTimeout(a.opt, INT64_MIN));
  expect_unchanged(&a, &before, "cuoptimSynchronizeTimeout with a negative timeout");
  OK(cuoptimDestroy(a.opt));
}

/* The host backend's work is done when each call returns: no timeout can pass, even 0 ms; the
 * longest timeout does not overflow the deadline. */
Test(api, synchronize_timeout_on_the_host_backend_succeeds_at_once) {
  adam2_t a;
  adam2_init(&a);
  apply_both(&a);
  OK(cuoptimSynchronizeTimeout(a.opt, 0));
  OK(cuoptimSynchronizeTimeout(a.opt, INT64_MAX));
  OK(cuoptimDestroy(a.opt));
}

/* Bad input of cuoptimScheduleFreeAveragedWeights, each refused with the argument named and the
 * state unchanged: an Adam optimizer has no averaged weights. */
Test(api, schedule_free_averaged_weights_rejects_bad_input) {
  float out[8];
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimScheduleFreeAveragedWeights", "optimizer",
              cuoptimScheduleFreeAveragedWeights(NULL, 0, out, NULL));
  adam2_t a;
  adam2_init(&a);
  apply_both(&a);
  snapshot_t before;
  take_snapshot(&a, &before);
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimScheduleFreeAveragedWeights", "out",
              cuoptimScheduleFreeAveragedWeights(a.opt, 0, NULL, NULL));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimScheduleFreeAveragedWeights", "variable = 7",
              cuoptimScheduleFreeAveragedWeights(a.opt, 7, out, NULL));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimScheduleFreeAveragedWeights", "variable = -1",
              cuoptimScheduleFreeAveragedWeights(a.opt, -1, out, NULL));
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimScheduleFreeAveragedWeights", "only ScheduleFreeAdamW",
              cuoptimScheduleFreeAveragedWeights(a.opt, 0, out, NULL));
  expect_unchanged(&a, &before, "cuoptimScheduleFreeAveragedWeights refused");
  OK(cuoptimDestroy(a.opt));
}

Test(api, finalize_without_ema_changes_nothing) {
  adam2_t a;
  adam2_init(&a);
  apply_both(&a);
  snapshot_t before;
  take_snapshot(&a, &before);
  OK(cuoptimFinalizeVariableValues(a.opt, NULL));
  OK(cuoptimSynchronize(a.opt));
  expect_unchanged(&a, &before, "cuoptimFinalizeVariableValues without use_ema");
  OK(cuoptimDestroy(a.opt));
}

/* =================================================================================================
 * Keras JSON: pointer arguments and the size query (the parser itself is tested elsewhere)
 * ================================================================================================= */

Test(api, config_json_null_pointers) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  char buffer[16];
  size_t length = 0;
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimConfigFromKerasJSON", "config",
              cuoptimConfigFromKerasJSON(NULL, "{}"));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimConfigFromKerasJSON", "json", cuoptimConfigFromKerasJSON(&c, NULL));
  EXPECT_FAIL(CUOPTIM_STATUS_NULL_POINTER, "cuoptimConfigToKerasJSON", "config",
              cuoptimConfigToKerasJSON(NULL, buffer, sizeof buffer, &length));
}

Test(api, config_from_malformed_json_changes_nothing) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM), copy = c;
  EXPECT_FAIL(CUOPTIM_STATUS_PARSE_ERROR, "cuoptimConfigFromKerasJSON", "cuoptimConfigFromKerasJSON",
              cuoptimConfigFromKerasJSON(&c, "{\"class_name\": \"Adam\", "));
  cr_assert_eq(memcmp(&c, &copy, sizeof c), 0, "a failed cuoptimConfigFromKerasJSON wrote *config");
}

Test(api, config_to_json_size_query) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  size_t length = 0;
  prime_error("cuoptimConfigToKerasJSON");
  cuoptimStatus_t st = cuoptimConfigToKerasJSON(&c, NULL, 0, &length);
  cr_assert_eq(st, CUOPTIM_STATUS_INVALID_VALUE, "size query: %s", cuoptimGetStatusString(st));
  cr_assert_gt(length, 0, "the size query did not report the length");
  char small[4] = {'x', 'x', 'x', 'x'};
  size_t again = 0;
  st = cuoptimConfigToKerasJSON(&c, small, sizeof small, &again);
  cr_assert_eq(st, CUOPTIM_STATUS_INVALID_VALUE);
  cr_assert_eq(again, length);
  cr_assert_eq(memcmp(small, "xxxx", 4), 0, "a too-small buffer was written");
  char *buffer = malloc(length + 1);
  OK(cuoptimConfigToKerasJSON(&c, buffer, length + 1, NULL));
  cr_assert_eq(strlen(buffer), length);
  free(buffer);
}

/* =================================================================================================
 * CUDA backend
 * ================================================================================================= */

Test(api, cuda_backend_without_gpu_fails_cleanly) {
  if (test_has_gpu()) cr_skip_test("a CUDA device is present");
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  cuoptimOptimizer_t opt = SENTINEL_HANDLE;
  prime_error("cuoptimCreate");
  cuoptimStatus_t st = cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_CUDA, 0);
  cr_assert(st == CUOPTIM_STATUS_NOT_SUPPORTED || st == CUOPTIM_STATUS_NO_DEVICE,
            "cuoptimCreate(CUDA) without a GPU returned %s", cuoptimGetStatusString(st));
  cr_assert(strstr(cuoptimGetLastErrorMessage(), "cuoptimCreate") != NULL, "message: \"%s\"",
            cuoptimGetLastErrorMessage());
  cr_assert_eq(opt, SENTINEL_HANDLE);
  st = cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_CUDA, 3);
  cr_assert_neq(st, CUOPTIM_STATUS_SUCCESS);
  cr_assert_neq(cuoptimGetLastErrorMessage()[0], '\0');
  cr_assert_eq(opt, SENTINEL_HANDLE);
}

Test(api, cuda_backend_bad_device_ordinal) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  cuoptimOptimizer_t opt = SENTINEL_HANDLE;
  prime_error("cuoptimCreate");
  cuoptimStatus_t st = cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_CUDA, -1);
  cr_assert_neq(st, CUOPTIM_STATUS_SUCCESS);
  cr_assert(strstr(cuoptimGetLastErrorMessage(), "cuoptimCreate") != NULL);
  cr_assert_eq(opt, SENTINEL_HANDLE);
  int devices = test_device_count();
  if (devices > 0) {
    st = cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_CUDA, devices);
    cr_assert(st == CUOPTIM_STATUS_INVALID_VALUE || st == CUOPTIM_STATUS_NO_DEVICE || st == CUOPTIM_STATUS_CUDA_ERROR,
              "device %d of %d: %s", devices, devices, cuoptimGetStatusString(st));
    cr_assert_eq(opt, SENTINEL_HANDLE);
  }
}

Test(api, cuda_backend_rejects_host_pointers) {
  if (!test_has_gpu()) cr_skip_test("no CUDA device");
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  cuoptimOptimizer_t opt = NULL;
  cuoptimStatus_t st = cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_CUDA, 0);
  cr_assert_eq(st, CUOPTIM_STATUS_SUCCESS, "cuoptimCreate(CUDA, 0) with a GPU: %s (%s)", cuoptimGetStatusString(st),
               cuoptimGetLastErrorMessage());
  float *host = malloc(4 * sizeof(float));
  cuoptimVariable_t var = 77;
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimAddVariable", "param",
              cuoptimAddVariable(opt, "w", host, CUOPTIM_FLOAT32, 4, &var));
  cr_assert_eq(var, 77);
  float *device = test_mem_alloc(CUOPTIM_BACKEND_CUDA, 4 * sizeof(float));
  OK(cuoptimAddVariable(opt, "w", device, CUOPTIM_FLOAT32, 4, &var));
  cr_assert_eq(var, 0);
  OK(cuoptimDestroy(opt));
  test_mem_free(CUOPTIM_BACKEND_CUDA, device);
  free(host);
}

/* A host-only build (CUOPTIM_WITH_CUDA=OFF) has no CUDA backend: NOT_SUPPORTED whatever the device,
 * with a message that says why and what to use instead. */
Test(api, cuda_backend_of_a_host_only_build_is_not_supported) {
#ifdef CUOPTIM_HAVE_CUDA
  cr_skip_test("this build has the CUDA backend");
#else
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  const int devices[] = {0, 3, -1};
  for (size_t i = 0; i < sizeof devices / sizeof devices[0]; i++) {
    cuoptimOptimizer_t opt = SENTINEL_HANDLE;
    prime_error("cuoptimCreate");
    cuoptimStatus_t st = cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_CUDA, devices[i]);
    cr_assert_eq(st, CUOPTIM_STATUS_NOT_SUPPORTED, "device %d: %s", devices[i], cuoptimGetStatusString(st));
    const char *msg = cuoptimGetLastErrorMessage();
    cr_assert(strstr(msg, "cuoptimCreate") && strstr(msg, "CUOPTIM_BACKEND_CUDA") && strstr(msg, "CUOPTIM_WITH_CUDA=OFF") &&
                  strstr(msg, "CUOPTIM_BACKEND_HOST"),
              "device %d: message \"%s\"", devices[i], msg);
    cr_assert_eq(opt, SENTINEL_HANDLE);
  }
#endif
}

/* =================================================================================================
 * cuoptimCreate: what the float32 step sees
 * ================================================================================================= */

/* The step computes in float32: values finite in double but not in float32 (or positive ones that
 * round to 0 where the step divides) would turn every parameter into inf or NaN. NaN is None only
 * in the optional fields; elsewhere it would also make a config whose JSON cannot be read back. */
static void lr_above_float32(cuoptimConfig_t *c) { c->learning_rate.initial_learning_rate = 1e39; }
static void clipnorm_above_float32(cuoptimConfig_t *c) { c->clipnorm = 1e39; }
static void clipnorm_rounds_to_zero(cuoptimConfig_t *c) { c->clipnorm = 1e-50; }
static void clipvalue_above_float32(cuoptimConfig_t *c) { c->clipvalue = 1e39; }
static void global_clipnorm_above_float32(cuoptimConfig_t *c) { c->global_clipnorm = 1e39; }
static void global_clipnorm_inverse_above_float32(cuoptimConfig_t *c) { c->global_clipnorm = 1e-40; }
static void weight_decay_above_float32(cuoptimConfig_t *c) { c->weight_decay = 1e39; }
static void loss_scale_factor_rounds_to_zero(cuoptimConfig_t *c) { c->loss_scale_factor = 1e-50; }
static void loss_scale_factor_above_float32(cuoptimConfig_t *c) { c->loss_scale_factor = -1e39; }
static void initial_scale_rounds_to_zero(cuoptimConfig_t *c) {
  c->dynamic_loss_scale = 1;
  c->initial_scale = 1e-50;
}
static void initial_scale_above_float32(cuoptimConfig_t *c) {
  c->dynamic_loss_scale = 1;
  c->initial_scale = 1e39;
}
static void beta_1_above_float32(cuoptimConfig_t *c) { c->beta_1 = 1e39; }
static void beta_2_nan(cuoptimConfig_t *c) { c->beta_2 = NAN; }
static void epsilon_nan(cuoptimConfig_t *c) { c->epsilon = NAN; }
static void epsilon_above_float32(cuoptimConfig_t *c) { c->epsilon = 1e39; }
static void rho_nan(cuoptimConfig_t *c) { c->rho = NAN; }
static void momentum_nan(cuoptimConfig_t *c) { c->momentum = NAN; }
static void initial_accumulator_nan(cuoptimConfig_t *c) { c->initial_accumulator_value = NAN; }
static void ftrl_beta_nan(cuoptimConfig_t *c) { c->beta = NAN; }
static void ftrl_l1_above_float32(cuoptimConfig_t *c) { c->l1_regularization_strength = 1e39; }
static void ftrl_lr_power_minus_inf(cuoptimConfig_t *c) { c->learning_rate_power = -INFINITY; }
static void ftrl_two_l2_shrinkage_above_float32(cuoptimConfig_t *c) { c->l2_shrinkage_regularization_strength = 2e38; }
static void ema_momentum_nan_without_ema(cuoptimConfig_t *c) { c->ema_momentum = NAN; }
static void exponential_decay_rate_above_float32(cuoptimConfig_t *c) {
  set_schedule(c, CUOPTIM_SCHEDULE_EXPONENTIAL, 10);
  c->learning_rate.decay_rate = 1e39;
}
static void exponential_decay_steps_rounds_to_zero(cuoptimConfig_t *c) {
  set_schedule(c, CUOPTIM_SCHEDULE_EXPONENTIAL, 1e-50);
}
static void polynomial_power_nan(cuoptimConfig_t *c) {
  set_schedule(c, CUOPTIM_SCHEDULE_POLYNOMIAL, 10);
  c->learning_rate.power = NAN;
}
static void polynomial_end_above_float32(cuoptimConfig_t *c) {
  set_schedule(c, CUOPTIM_SCHEDULE_POLYNOMIAL, 10);
  c->learning_rate.end_learning_rate = 1e39;
}
static void cosine_alpha_nan(cuoptimConfig_t *c) {
  set_schedule(c, CUOPTIM_SCHEDULE_COSINE, 10);
  c->learning_rate.alpha = NAN;
}
static void cosine_warmup_steps_nan_without_warmup(cuoptimConfig_t *c) {
  set_schedule(c, CUOPTIM_SCHEDULE_COSINE, 10);
  c->learning_rate.warmup_steps = NAN;
}
static void cosine_warmup_target_above_float32(cuoptimConfig_t *c) {
  set_schedule(c, CUOPTIM_SCHEDULE_COSINE, 10);
  c->learning_rate.warmup_target = 1e39;
}
static void restarts_t_mul_nan(cuoptimConfig_t *c) {
  set_schedule(c, CUOPTIM_SCHEDULE_COSINE_RESTARTS, 10);
  c->learning_rate.t_mul = NAN;
}
static void restarts_initial_above_float32(cuoptimConfig_t *c) {
  set_schedule(c, CUOPTIM_SCHEDULE_COSINE_RESTARTS, 10);
  c->learning_rate.initial_learning_rate = 1e39;
}
static void piecewise_value_above_float32(cuoptimConfig_t *c) {
  cuoptimScheduleInit(&c->learning_rate, CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT);
  c->learning_rate.values[1] = 1e39;
}

static void adafactor_beta_2_decay_nan(cuoptimConfig_t *c) { c->beta_2_decay = NAN; }
static void adafactor_epsilon_1_above_float32(cuoptimConfig_t *c) { c->epsilon_1 = 1e39; }
static void adafactor_epsilon_2_inf(cuoptimConfig_t *c) { c->epsilon_2 = INFINITY; }
static void adafactor_clip_threshold_nan(cuoptimConfig_t *c) { c->clip_threshold = NAN; }

static const invalid_case FLOAT32_CASES[] = {
    {"Adafactor(beta_2_decay=nan)", CUOPTIM_ADAFACTOR, adafactor_beta_2_decay_nan, "beta_2_decay"},
    {"Adafactor(epsilon_1=1e39)", CUOPTIM_ADAFACTOR, adafactor_epsilon_1_above_float32, "epsilon_1"},
    {"Adafactor(epsilon_2=inf)", CUOPTIM_ADAFACTOR, adafactor_epsilon_2_inf, "epsilon_2"},
    {"Adafactor(clip_threshold=nan)", CUOPTIM_ADAFACTOR, adafactor_clip_threshold_nan, "clip_threshold"},
    {"SGD(learning_rate=1e39)", CUOPTIM_SGD, lr_above_float32, "initial_learning_rate"},
    {"SGD(clipnorm=1e39)", CUOPTIM_SGD, clipnorm_above_float32, "clipnorm"},
    {"SGD(clipnorm=1e-50)", CUOPTIM_SGD, clipnorm_rounds_to_zero, "clipnorm"},
    {"SGD(clipvalue=1e39)", CUOPTIM_SGD, clipvalue_above_float32, "clipvalue"},
    {"SGD(global_clipnorm=1e39)", CUOPTIM_SGD, global_clipnorm_above_float32, "global_clipnorm"},
    {"SGD(global_clipnorm=1e-40)", CUOPTIM_SGD, global_clipnorm_inverse_above_float32, "global_clipnorm"},
    {"Adam(weight_decay=1e39)", CUOPTIM_ADAM, weight_decay_above_float32, "weight_decay"},
    {"SGD(loss_scale_factor=1e-50)", CUOPTIM_SGD, loss_scale_factor_rounds_to_zero, "loss_scale_factor"},
    {"SGD(loss_scale_factor=-1e39)", CUOPTIM_SGD, loss_scale_factor_above_float32, "loss_scale_factor"},
    {"LossScaleOptimizer(initial_scale=1e-50)", CUOPTIM_SGD, initial_scale_rounds_to_zero, "initial_scale"},
    {"LossScaleOptimizer(initial_scale=1e39)", CUOPTIM_SGD, initial_scale_above_float32, "initial_scale"},
    {"Adam(beta_1=1e39)", CUOPTIM_ADAM, beta_1_above_float32, "beta_1"},
    {"Nadam(beta_2=nan)", CUOPTIM_NADAM, beta_2_nan, "beta_2"},
    {"Lion(beta_2=nan)", CUOPTIM_LION, beta_2_nan, "beta_2"},
    {"Adamax(epsilon=nan)", CUOPTIM_ADAMAX, epsilon_nan, "epsilon"},
    {"Lamb(epsilon=1e39)", CUOPTIM_LAMB, epsilon_above_float32, "epsilon"},
    {"RMSprop(rho=nan)", CUOPTIM_RMSPROP, rho_nan, "rho"},
    {"Adadelta(rho=nan)", CUOPTIM_ADADELTA, rho_nan, "rho"},
    {"RMSprop(momentum=nan)", CUOPTIM_RMSPROP, momentum_nan, "momentum"},
    {"Adagrad(initial_accumulator_value=nan)", CUOPTIM_ADAGRAD, initial_accumulator_nan, "initial_accumulator_value"},
    {"Ftrl(beta=nan)", CUOPTIM_FTRL, ftrl_beta_nan, "beta"},
    {"Ftrl(l1_regularization_strength=1e39)", CUOPTIM_FTRL, ftrl_l1_above_float32, "l1_regularization_strength"},
    {"Ftrl(learning_rate_power=-inf)", CUOPTIM_FTRL, ftrl_lr_power_minus_inf, "learning_rate_power"},
    {"Ftrl(l2_shrinkage_regularization_strength=2e38)", CUOPTIM_FTRL, ftrl_two_l2_shrinkage_above_float32,
     "l2_shrinkage_regularization_strength"},
    {"Adam(use_ema=False, ema_momentum=nan)", CUOPTIM_ADAM, ema_momentum_nan_without_ema, "ema_momentum"},
    {"ExponentialDecay(decay_rate=1e39)", CUOPTIM_SGD, exponential_decay_rate_above_float32, "decay_rate"},
    {"ExponentialDecay(decay_steps=1e-50)", CUOPTIM_SGD, exponential_decay_steps_rounds_to_zero, "decay_steps"},
    {"PolynomialDecay(power=nan)", CUOPTIM_SGD, polynomial_power_nan, "power"},
    {"PolynomialDecay(end_learning_rate=1e39)", CUOPTIM_SGD, polynomial_end_above_float32, "end_learning_rate"},
    {"CosineDecay(alpha=nan)", CUOPTIM_SGD, cosine_alpha_nan, "alpha"},
    {"CosineDecay(warmup_steps=nan)", CUOPTIM_SGD, cosine_warmup_steps_nan_without_warmup, "warmup_steps"},
    {"CosineDecay(warmup_target=1e39)", CUOPTIM_SGD, cosine_warmup_target_above_float32, "warmup_target"},
    {"CosineDecayRestarts(t_mul=nan)", CUOPTIM_SGD, restarts_t_mul_nan, "t_mul"},
    {"CosineDecayRestarts(initial_learning_rate=1e39)", CUOPTIM_SGD, restarts_initial_above_float32,
     "initial_learning_rate"},
    {"PiecewiseConstantDecay(values=[.., 1e39])", CUOPTIM_SGD, piecewise_value_above_float32, "values"},
};

Test(api, create_rejects_what_the_float32_step_cannot_compute) {
  for (size_t i = 0; i < sizeof FLOAT32_CASES / sizeof FLOAT32_CASES[0]; i++) {
    const invalid_case *k = &FLOAT32_CASES[i];
    cuoptimConfig_t c = test_config(k->kind);
    k->mutate(&c);
    cuoptimOptimizer_t opt = SENTINEL_HANDLE;
    prime_error("cuoptimCreate");
    cuoptimStatus_t st = cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_HOST, 0);
    const char *m = cuoptimGetLastErrorMessage();
    cr_expect_eq(st, CUOPTIM_STATUS_INVALID_VALUE, "%s: cuoptimCreate returned %s (%s)", k->what,
                 cuoptimGetStatusString(st), m);
    if (st == CUOPTIM_STATUS_SUCCESS) {
      OK(cuoptimDestroy(opt));
      continue;
    }
    cr_expect(strstr(m, "cuoptimCreate") != NULL && names_word(m, k->arg), "%s: message \"%s\" does not name %s",
              k->what, m, k->arg);
    cr_expect_eq(opt, SENTINEL_HANDLE, "%s: a failed cuoptimCreate wrote *optimizer", k->what);
    prime_error("cuoptimConfigValidate");
    cr_expect_eq(cuoptimConfigValidate(&c), CUOPTIM_STATUS_INVALID_VALUE, "%s: cuoptimConfigValidate accepted it",
                 k->what);
    cr_expect(names_word(cuoptimGetLastErrorMessage(), k->arg), "%s: \"%s\"", k->what, cuoptimGetLastErrorMessage());
  }
}

/* What stays finite in float32 is accepted, however odd (Keras validates little). */
Test(api, create_accepts_values_the_float32_step_can_compute) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, -0.01);
  check_accepted("SGD(learning_rate=-0.01)", &c);
  c = test_config_lr(CUOPTIM_SGD, 1e-45); /* a float32 denormal */
  check_accepted("SGD(learning_rate=1e-45)", &c);
  c = test_config_lr(CUOPTIM_SGD, 3.4028234663852886e38); /* FLT_MAX */
  check_accepted("SGD(learning_rate=FLT_MAX)", &c);
  c = test_config(CUOPTIM_SGD);
  set_schedule(&c, CUOPTIM_SCHEDULE_POLYNOMIAL, INFINITY); /* the schedule stays at its start */
  check_accepted("PolynomialDecay(decay_steps=inf)", &c);
  set_schedule(&c, CUOPTIM_SCHEDULE_COSINE, 1e-45);
  c.learning_rate.warmup_target = 0.5;
  c.learning_rate.warmup_steps = INFINITY;
  check_accepted("CosineDecay(decay_steps=1e-45, warmup_target=0.5, warmup_steps=inf)", &c);
  c = test_config(CUOPTIM_SGD);
  c.clipvalue = 1e-50; /* clips to 0: defined */
  check_accepted("SGD(clipvalue=1e-50)", &c);
  c = test_config(CUOPTIM_SGD);
  c.clipnorm = -1e300; /* <= 0 disables it */
  check_accepted("SGD(clipnorm=-1e300)", &c);
  c = test_config(CUOPTIM_SGD);
  c.global_clipnorm = 1e-30;
  check_accepted("SGD(global_clipnorm=1e-30)", &c);
  c = test_config(CUOPTIM_SGD);
  c.loss_scale_factor = -2.0;
  check_accepted("SGD(loss_scale_factor=-2.0)", &c);
  c = test_config(CUOPTIM_ADAM);
  c.ema_momentum = INFINITY; /* unused without use_ema */
  check_accepted("Adam(use_ema=False, ema_momentum=inf)", &c);
  c = test_config(CUOPTIM_ADAM);
  c.beta_1 = -5.0;
  c.epsilon = -1e-7;
  check_accepted("Adam(beta_1=-5.0, epsilon=-1e-7)", &c);
  c = test_config(CUOPTIM_SGD);
  c.beta_1 = NAN; /* not an SGD field: ignored */
  check_accepted("SGD with beta_1 = NaN", &c);
}

/* gradient_accumulation_steps: any int64 >= 2, as Keras's Python int. G = 2^32 + 2 would become 2
 * in 32 bits. */
static void accumulation_above_int32(cuoptimBackend_t backend) {
  const int64_t G = (INT64_C(1) << 32) + 2;
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 1.0);
  c.gradient_accumulation_steps = G;
  OK(cuoptimConfigValidate(&c));
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, backend, 0));
  static const float start[2] = {1.0f, 2.0f};
  /* The step divides by float32(G) = 2^32. */
  static const float grad[2] = {2147483648.0f, 4294967296.0f};
  float *w = test_mem_from(backend, start, 2);
  float *g = test_mem_from(backend, grad, 2);
  cuoptimVariable_t var;
  OK(cuoptimAddVariable(opt, "w", w, CUOPTIM_FLOAT32, 2, &var));
  cuoptimGradient_t pair = {var, g, CUOPTIM_FLOAT32};
  /* Raw step 0: a micro-step. */
  OK(cuoptimApplyGradients(opt, 1, &pair, NULL));
  float out[2];
  OK(cuoptimSynchronize(opt));
  test_mem_download(backend, out, w, sizeof out);
  cr_expect(out[0] == 1.0f && out[1] == 2.0f, "%s: a micro-step changed w: %g %g", test_backend_name(backend),
            out[0], out[1]);
  cr_expect_eq(test_iterations(opt), 0);
  /* Raw step G - 1: the G-th micro-step applies (g + acc) / 2^32 = (1, 2). */
  double raw = (double)(G - 1);
  OK(cuoptimSetWeights(opt, 0, &raw, 1));
  OK(cuoptimApplyGradients(opt, 1, &pair, NULL));
  OK(cuoptimSynchronize(opt));
  test_mem_download(backend, out, w, sizeof out);
  cr_expect(out[0] == 0.0f && out[1] == 0.0f, "%s: w = %g %g after the G-th micro-step, expected 0 0",
            test_backend_name(backend), out[0], out[1]);
  cr_expect_eq(test_iterations(opt), 1, "%s: iterations %lld", test_backend_name(backend),
               (long long)test_iterations(opt));
  OK(cuoptimDestroy(opt));
  test_mem_free(backend, w);
  test_mem_free(backend, g);

  c.gradient_accumulation_steps = INT64_MAX;
  OK(cuoptimConfigValidate(&c));
}

Test(api, create_accepts_gradient_accumulation_steps_above_int32) {
  accumulation_above_int32(CUOPTIM_BACKEND_HOST);
  if (test_has_gpu()) accumulation_above_int32(CUOPTIM_BACKEND_CUDA);
}

/* Muon's fields: each bad value refused by cuoptimConfigValidate and cuoptimCreate, the message
 * naming the field. */
typedef struct {
  const char *what;
  void (*spoil)(cuoptimConfig_t *c);
  const char *field;
} muon_bad_t;

static void muon_adam_beta_1_nan(cuoptimConfig_t *c) { c->adam_beta_1 = NAN; }
static void muon_adam_beta_2_huge(cuoptimConfig_t *c) { c->adam_beta_2 = 1e39; }
static void muon_adam_weight_decay_inf(cuoptimConfig_t *c) { c->adam_weight_decay = INFINITY; }
static void muon_adam_lr_ratio_nan(cuoptimConfig_t *c) { c->adam_lr_ratio = NAN; }
static void muon_a_inf(cuoptimConfig_t *c) { c->muon_a = INFINITY; }
static void muon_b_huge(cuoptimConfig_t *c) { c->muon_b = -1e40; }
static void muon_c_nan(cuoptimConfig_t *c) { c->muon_c = NAN; }
static void muon_momentum_inf(cuoptimConfig_t *c) { c->momentum = INFINITY; }
static void muon_ns_steps_negative(cuoptimConfig_t *c) { c->ns_steps = -1; }
static void muon_ns_steps_huge(cuoptimConfig_t *c) { c->ns_steps = CUOPTIM_MUON_MAX_NS_STEPS + 1; }
static void muon_rms_rate_inf(cuoptimConfig_t *c) { c->rms_rate = INFINITY; }
static void muon_nesterov_two(cuoptimConfig_t *c) { c->nesterov = 2; }
static void muon_exclude_embeddings_two(cuoptimConfig_t *c) { c->exclude_embeddings = -1; }
static void muon_epsilon_nan(cuoptimConfig_t *c) { c->epsilon = NAN; }
static void muon_num_exclude_layers_negative(cuoptimConfig_t *c) { c->num_exclude_layers = -1; }
static void muon_num_exclude_layers_huge(cuoptimConfig_t *c) { c->num_exclude_layers = CUOPTIM_MAX_EXCLUDE_LAYERS + 1; }
static void muon_exclude_layers_bad_regex(cuoptimConfig_t *c) {
  c->num_exclude_layers = 2;
  snprintf(c->exclude_layers[0], CUOPTIM_MAX_NAME, "ok");
  snprintf(c->exclude_layers[1], CUOPTIM_MAX_NAME, "a(");
}
static void muon_exclude_layers_unterminated(cuoptimConfig_t *c) {
  c->num_exclude_layers = 1;
  memset(c->exclude_layers[0], 'a', CUOPTIM_MAX_NAME);
}
static void muon_exclude_layers_not_utf8(cuoptimConfig_t *c) {
  c->num_exclude_layers = 1;
  snprintf(c->exclude_layers[0], CUOPTIM_MAX_NAME, "\xff");
}

Test(api, muon_config_rejects_each_bad_field) {
  static const muon_bad_t cases[] = {
      {"adam_beta_1 NaN", muon_adam_beta_1_nan, "adam_beta_1"},
      {"adam_beta_2 1e39", muon_adam_beta_2_huge, "adam_beta_2"},
      {"adam_weight_decay inf", muon_adam_weight_decay_inf, "adam_weight_decay"},
      {"adam_lr_ratio NaN", muon_adam_lr_ratio_nan, "adam_lr_ratio"},
      {"muon_a inf", muon_a_inf, "muon_a"},
      {"muon_b -1e40", muon_b_huge, "muon_b"},
      {"muon_c NaN", muon_c_nan, "muon_c"},
      {"momentum inf", muon_momentum_inf, "momentum"},
      {"ns_steps -1", muon_ns_steps_negative, "ns_steps"},
      {"ns_steps too many", muon_ns_steps_huge, "ns_steps"},
      {"rms_rate inf", muon_rms_rate_inf, "rms_rate"},
      {"nesterov 2", muon_nesterov_two, "nesterov"},
      {"exclude_embeddings -1", muon_exclude_embeddings_two, "exclude_embeddings"},
      {"epsilon NaN", muon_epsilon_nan, "epsilon"},
      {"num_exclude_layers -1", muon_num_exclude_layers_negative, "num_exclude_layers"},
      {"num_exclude_layers 9", muon_num_exclude_layers_huge, "num_exclude_layers"},
      {"exclude_layers \"a(\"", muon_exclude_layers_bad_regex, "exclude_layers[1]"},
      {"exclude_layers unterminated", muon_exclude_layers_unterminated, "exclude_layers[0]"},
      {"exclude_layers not UTF-8", muon_exclude_layers_not_utf8, "exclude_layers[0]"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cuoptimConfig_t c = test_config(CUOPTIM_MUON);
    cases[i].spoil(&c);
    EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimConfigValidate", cases[i].field, cuoptimConfigValidate(&c));
    for (int b = 0; b < 2; b++) { /* the CUDA backend validates the same, where a GPU is present */
      cuoptimBackend_t backend = b ? CUOPTIM_BACKEND_CUDA : CUOPTIM_BACKEND_HOST;
      if (b && !test_has_gpu()) continue;
      cuoptimOptimizer_t opt = NULL;
      EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimCreate", cases[i].field, cuoptimCreate(&opt, &c, backend, 0));
      cr_assert_null(opt, "%s", cases[i].what);
    }
  }
  /* None is accepted where Keras takes it. */
  cuoptimConfig_t c = test_config(CUOPTIM_MUON);
  c.rms_rate = CUOPTIM_NONE;
  c.adam_weight_decay = CUOPTIM_NONE;
  c.weight_decay = CUOPTIM_NONE;
  c.ns_steps = 0;
  OK(cuoptimConfigValidate(&c));
}

/* options.shard_state refused for `kind` on `backend`, naming the option. */
static void expect_sharded_state_refused(cuoptimOptimizerKind_t kind, cuoptimBackend_t backend) {
  cuoptimConfig_t c = test_config(kind);
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, backend, 0));
  cuoptimCommOptions_t options;
  OK(cuoptimCommOptionsInit(&options));
  options.shard_state = 1;
  int comm = 0; /* never read: the options are refused first */
  EXPECT_FAIL(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimSetCommunicator", "shard_state",
              cuoptimSetCommunicator(opt, &comm, &options));
  cuoptimDestroy(opt);
}

/* Muon's state needs whole matrices: sharding it is refused, on both backends. */
Test(api, muon_refuses_sharded_state) {
  expect_sharded_state_refused(CUOPTIM_MUON, CUOPTIM_BACKEND_HOST);
  if (test_has_gpu()) expect_sharded_state_refused(CUOPTIM_MUON, CUOPTIM_BACKEND_CUDA);
}

/* Adafactor's row and column accumulators need whole variables: refused on both backends. */
Test(api, adafactor_refuses_sharded_state) {
  expect_sharded_state_refused(CUOPTIM_ADAFACTOR, CUOPTIM_BACKEND_HOST);
  if (test_has_gpu()) expect_sharded_state_refused(CUOPTIM_ADAFACTOR, CUOPTIM_BACKEND_CUDA);
}

/* Every kind runs on the CUDA backend, Adafactor and Muon too. */
Test(api, create_accepts_adafactor_and_muon_on_the_cuda_backend) {
  test_require_backend(CUOPTIM_BACKEND_CUDA);
  static const cuoptimOptimizerKind_t kinds[] = {CUOPTIM_ADAFACTOR, CUOPTIM_MUON};
  for (int k = 0; k < 2; k++) {
    cuoptimConfig_t c = test_config(kinds[k]);
    cuoptimOptimizer_t opt = NULL;
    OK(cuoptimCreate(&opt, &c, CUOPTIM_BACKEND_CUDA, 0));
    cr_assert_not_null(opt);
    OK(cuoptimDestroy(opt));
  }
}
