/* Keras's defaults, Keras's validation, and the float32 constants the rules use. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* Indexed by kind; a value below CUOPTIM_OPTIMIZER_COUNT without a name is not a kind. */
static const char *const optimizer_class_names[CUOPTIM_OPTIMIZER_COUNT] = {
    "SGD", "RMSprop", "Adagrad", "Adadelta", "Adam", "AdamW", "Adamax", "Nadam", "Lion", "Lamb", "Ftrl",
    "ScheduleFreeAdamW", "Adafactor", "Muon"};
/* Keras's auto_name of each class (snake case of the class name). */
static const char *const optimizer_default_names[CUOPTIM_OPTIMIZER_COUNT] = {
    "sgd", "rm_sprop", "adagrad", "adadelta", "adam", "adam_w", "adamax", "nadam", "lion", "lamb", "ftrl",
    "schedule_free_adam_w", "adafactor", "muon"};

int cuoptim_kind_is_valid(int kind) {
  return kind >= 0 && kind < CUOPTIM_OPTIMIZER_COUNT && optimizer_class_names[kind] != NULL;
}

const char *cuoptimOptimizerName(cuoptimOptimizerKind_t kind) {
  if (!cuoptim_kind_is_valid((int)kind)) return NULL;
  return optimizer_class_names[kind];
}

cuoptimStatus_t cuoptimScheduleInit(cuoptimSchedule_t *schedule, cuoptimScheduleKind_t kind) {
  CUOPTIM_REQUIRE_NOT_NULL("cuoptimScheduleInit", schedule);
  if ((int)kind < CUOPTIM_SCHEDULE_CONSTANT || kind > CUOPTIM_SCHEDULE_COSINE_RESTARTS)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimScheduleInit: kind = %d is not a cuoptimScheduleKind_t",
                         (int)kind);
  memset(schedule, 0, sizeof *schedule);
  schedule->kind = kind;
  schedule->initial_learning_rate = 0.001;
  schedule->decay_steps = 1;
  schedule->decay_rate = 0.96;
  schedule->end_learning_rate = 0.0001;
  schedule->power = 1.0;
  schedule->alpha = 0.0;
  schedule->warmup_target = CUOPTIM_NONE;
  schedule->warmup_steps = 0;
  schedule->t_mul = 2.0;
  schedule->m_mul = 1.0;
  if (kind == CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT) {
    schedule->num_boundaries = 1;
    schedule->boundaries[0] = 1;
    schedule->values[0] = 0.001;
    schedule->values[1] = 0.0001;
  }
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimConfigInit(cuoptimConfig_t *config, cuoptimOptimizerKind_t kind) {
  CUOPTIM_REQUIRE_NOT_NULL("cuoptimConfigInit", config);
  if (!cuoptim_kind_is_valid((int)kind))
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "cuoptimConfigInit: kind = %d is not a cuoptimOptimizerKind_t", (int)kind);
  cuoptimConfig_t c;
  memset(&c, 0, sizeof c);
  c.kind = kind;
  snprintf(c.name, sizeof c.name, "%s", optimizer_default_names[kind]);
  cuoptimScheduleInit(&c.learning_rate, CUOPTIM_SCHEDULE_CONSTANT);
  c.learning_rate.initial_learning_rate = kind == CUOPTIM_SGD ? 0.01 : kind == CUOPTIM_SCHEDULE_FREE_ADAMW ? 0.0025 : 0.001;
  c.weight_decay = kind == CUOPTIM_ADAMW || kind == CUOPTIM_MUON ? 0.004 : CUOPTIM_NONE;
  c.clipnorm = c.clipvalue = c.global_clipnorm = CUOPTIM_NONE;
  c.use_ema = 0;
  c.ema_momentum = 0.99;
  c.ema_overwrite_frequency = 0;
  c.loss_scale_factor = CUOPTIM_NONE;
  c.gradient_accumulation_steps = 0;
  c.beta_1 = 0.9;
  c.beta_2 = kind == CUOPTIM_LION ? 0.99 : 0.999;
  c.epsilon = kind == CUOPTIM_SCHEDULE_FREE_ADAMW ? 1e-8 : 1e-7;
  c.warmup_steps = 0;
  c.rho = kind == CUOPTIM_ADADELTA ? 0.95 : 0.9;
  c.momentum = kind == CUOPTIM_MUON ? 0.95 : 0.0;
  c.nesterov = kind == CUOPTIM_MUON;
  c.adam_beta_1 = 0.9;
  c.adam_beta_2 = 0.999;
  c.adam_weight_decay = 0.004;
  c.adam_lr_ratio = 1.0;
  c.muon_a = 3.4445;
  c.muon_b = -4.7750;
  c.muon_c = 2.0315;
  c.ns_steps = 5;
  c.rms_rate = 0.2;
  c.exclude_embeddings = 1;
  c.initial_accumulator_value = 0.1;
  c.learning_rate_power = -0.5;
  c.beta_2_decay = -0.8;
  c.epsilon_1 = 1e-30;
  c.epsilon_2 = 1e-3;
  c.clip_threshold = 1.0;
  c.relative_step = 1;
  c.dynamic_loss_scale = 0;
  c.initial_scale = 32768.0;
  c.dynamic_growth_steps = 2000;
  *config = c;
  return CUOPTIM_STATUS_SUCCESS;
}

#define INVALID(...) cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, __VA_ARGS__)

static int is_flag(int x) { return x == 0 || x == 1; }

static int has_nul(const char *s, size_t n) { return memchr(s, '\0', n) != NULL; }

/* The step computes in float32: a hyperparameter that is finite in double may
 * still overflow, or a positive one vanish, once rounded. These checks look at the value the step
 * will see. */

/* A field without a None meaning: NaN is refused (it would also make a config whose JSON cannot
 * be read back, JSON having no NaN). */
static cuoptimStatus_t require_number(double x, const char *caller, const char *field) {
  if (isnan(x))
    return INVALID("%s: %s = nan: must be a number (NaN stands for None only in the optional fields)", caller,
                   field);
  return CUOPTIM_STATUS_SUCCESS;
}

/* A value the step uses as a float32: a number that stays finite once rounded to float32. */
static cuoptimStatus_t require_float32(double x, const char *caller, const char *field) {
  CUOPTIM_CHECK(require_number(x, caller, field));
  if (!isfinite((float)x))
    return INVALID("%s: %s = %g: not finite in float32, the precision the step computes in", caller, field, x);
  return CUOPTIM_STATUS_SUCCESS;
}

/* A constant formed from field x in double and then rounded to float32 (`what`, e.g. "1 - beta_1"). */
static cuoptimStatus_t require_float32_derived(double derived, double x, const char *caller, const char *field,
                                               const char *what) {
  if (!isfinite((float)derived))
    return INVALID("%s: %s = %g: %s is not finite in float32, the precision the step computes in", caller, field, x,
                   what);
  return CUOPTIM_STATUS_SUCCESS;
}

/* A positive value the step divides by must not round to float32 zero. */
static cuoptimStatus_t require_float32_nonzero(double x, const char *caller, const char *field) {
  if ((float)x == 0.0f)
    return INVALID("%s: %s = %g: rounds to 0 in float32, and the step divides by it", caller, field, x);
  return CUOPTIM_STATUS_SUCCESS;
}

#define SCHEDULE_FIELD(member) "config->learning_rate." #member
#define CONFIG_FIELD(member) "config->" #member

/* decay_steps (first_decay_steps): > 0 as Keras requires, and not 0 in float32, where the schedule
 * divides the step by it. Infinity is accepted, as Keras does: the schedule then stays at its
 * initial value. */
static cuoptimStatus_t validate_decay_steps(const cuoptimSchedule_t *s, const char *caller) {
  if (!(s->decay_steps > 0))
    return INVALID("%s: %s = %g: must be > 0 (Keras: `decay_steps` must be > 0)", caller, SCHEDULE_FIELD(decay_steps),
                   s->decay_steps);
  return require_float32_nonzero(s->decay_steps, caller, SCHEDULE_FIELD(decay_steps));
}

/* Keras documents PiecewiseConstantDecay's boundaries as strictly increasing: only then does its
 * sum of (indicator x value) pick one value per step. */
static cuoptimStatus_t validate_piecewise(const cuoptimSchedule_t *s, const char *caller) {
  const char *f = "config->learning_rate";
  if (s->num_boundaries < 1 || s->num_boundaries > CUOPTIM_MAX_BOUNDARIES)
    return INVALID("%s: %s.num_boundaries = %d: must lie in [1, %d] (Keras needs len(values) == "
                   "len(boundaries) + 1 and at least one boundary)",
                   caller, f, s->num_boundaries, CUOPTIM_MAX_BOUNDARIES);
  char field[64];
  for (int i = 0; i <= s->num_boundaries; i++) {
    snprintf(field, sizeof field, "%s.values[%d]", f, i);
    CUOPTIM_CHECK(require_float32(s->values[i], caller, field));
  }
  for (int i = 0; i < s->num_boundaries; i++) {
    if (!isfinite(s->boundaries[i]) || fabs(s->boundaries[i]) > 9.0e18)
      return INVALID("%s: %s.boundaries[%d] = %g: must be a finite step number", caller, f, i, s->boundaries[i]);
    if (i > 0 && !(s->boundaries[i] > s->boundaries[i - 1]))
      return INVALID("%s: %s.boundaries[%d] = %.17g: not greater than boundaries[%d] = %.17g (Keras requires "
                     "strictly increasing boundaries)",
                     caller, f, i, s->boundaries[i], i - 1, s->boundaries[i - 1]);
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* A Keras name is a Python str: bytes that are not UTF-8 have no Keras (or JSON) form. Only the
 * names Keras would hold are checked: the schedule's with a schedule, LossScaleOptimizer's with it. */
static cuoptimStatus_t validate_name_is_text(const char *name, const char *field, const char *caller) {
  ptrdiff_t bad = cuoptim_invalid_utf8_offset(name);
  if (bad < 0) return CUOPTIM_STATUS_SUCCESS;
  return INVALID("%s: config->%s is not valid UTF-8 (byte %td is 0x%02x); a Keras name is text", caller, field, bad,
                 (unsigned char)name[bad]);
}

static cuoptimStatus_t validate_names_are_text(const cuoptimConfig_t *c, const char *caller) {
  CUOPTIM_CHECK(validate_name_is_text(c->name, "name", caller));
  if (c->learning_rate.kind != CUOPTIM_SCHEDULE_CONSTANT && has_nul(c->learning_rate.name, sizeof c->learning_rate.name))
    CUOPTIM_CHECK(validate_name_is_text(c->learning_rate.name, "learning_rate.name", caller));
  if (c->dynamic_loss_scale) CUOPTIM_CHECK(validate_name_is_text(c->loss_scale_name, "loss_scale_name", caller));
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t validate_schedule(const cuoptimSchedule_t *s, const char *caller) {
  const char *f = "config->learning_rate";
  if (!has_nul(s->name, sizeof s->name))
    return INVALID("%s: %s.name is not NUL-terminated", caller, f);
  switch (s->kind) {
    case CUOPTIM_SCHEDULE_CONSTANT:
      return require_float32(s->initial_learning_rate, caller, SCHEDULE_FIELD(initial_learning_rate));
    case CUOPTIM_SCHEDULE_EXPONENTIAL:
    case CUOPTIM_SCHEDULE_INVERSE_TIME:
      CUOPTIM_CHECK(validate_decay_steps(s, caller));
      CUOPTIM_CHECK(require_float32(s->initial_learning_rate, caller, SCHEDULE_FIELD(initial_learning_rate)));
      CUOPTIM_CHECK(require_float32(s->decay_rate, caller, SCHEDULE_FIELD(decay_rate)));
      if (!is_flag(s->staircase)) return INVALID("%s: %s.staircase = %d: must be 0 or 1", caller, f, s->staircase);
      return CUOPTIM_STATUS_SUCCESS;
    case CUOPTIM_SCHEDULE_POLYNOMIAL:
      CUOPTIM_CHECK(validate_decay_steps(s, caller));
      CUOPTIM_CHECK(require_float32(s->initial_learning_rate, caller, SCHEDULE_FIELD(initial_learning_rate)));
      CUOPTIM_CHECK(require_float32(s->end_learning_rate, caller, SCHEDULE_FIELD(end_learning_rate)));
      CUOPTIM_CHECK(require_float32(s->power, caller, SCHEDULE_FIELD(power)));
      if (!is_flag(s->cycle)) return INVALID("%s: %s.cycle = %d: must be 0 or 1", caller, f, s->cycle);
      return CUOPTIM_STATUS_SUCCESS;
    case CUOPTIM_SCHEDULE_COSINE:
      CUOPTIM_CHECK(validate_decay_steps(s, caller));
      CUOPTIM_CHECK(require_float32(s->initial_learning_rate, caller, SCHEDULE_FIELD(initial_learning_rate)));
      CUOPTIM_CHECK(require_float32(s->alpha, caller, SCHEDULE_FIELD(alpha)));
      CUOPTIM_CHECK(require_float32_derived(1.0 - s->alpha, s->alpha, caller, SCHEDULE_FIELD(alpha), "1 - alpha"));
      /* warmup_steps is a step count: infinity means the warm-up never ends. */
      CUOPTIM_CHECK(require_number(s->warmup_steps, caller, SCHEDULE_FIELD(warmup_steps)));
      if (!CUOPTIM_IS_NONE(s->warmup_target)) {
        CUOPTIM_CHECK(require_float32(s->warmup_target, caller, SCHEDULE_FIELD(warmup_target)));
        if (!(s->warmup_steps >= 0))
          return INVALID("%s: %s.warmup_steps = %g: must be >= 0", caller, f, s->warmup_steps);
      }
      return CUOPTIM_STATUS_SUCCESS;
    case CUOPTIM_SCHEDULE_COSINE_RESTARTS:
      CUOPTIM_CHECK(validate_decay_steps(s, caller));
      CUOPTIM_CHECK(require_float32(s->initial_learning_rate, caller, SCHEDULE_FIELD(initial_learning_rate)));
      CUOPTIM_CHECK(require_float32(s->t_mul, caller, SCHEDULE_FIELD(t_mul)));
      CUOPTIM_CHECK(require_float32(s->m_mul, caller, SCHEDULE_FIELD(m_mul)));
      CUOPTIM_CHECK(require_float32(s->alpha, caller, SCHEDULE_FIELD(alpha)));
      return CUOPTIM_STATUS_SUCCESS;
    case CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT:
      return validate_piecewise(s, caller);
  }
  return INVALID("%s: %s.kind = %d is not a cuoptimScheduleKind_t", caller, f, (int)s->kind);
}

/* Keras's `None or > 0` style options: NaN (None) or a finite number. */
static int is_none_or_finite(double x) { return CUOPTIM_IS_NONE(x) || isfinite(x); }

/* The clip options: at most one set; a value <= 0 disables the option (SEMANTICS.md §1.4); an
 * active one must stay finite and nonzero in float32 (clipnorm divides by max(norm, clipnorm),
 * global_clipnorm's scale uses float32(1 / global_clipnorm)). */
static cuoptimStatus_t validate_clip(const cuoptimConfig_t *c, const char *caller) {
  int clips = !CUOPTIM_IS_NONE(c->clipnorm) + !CUOPTIM_IS_NONE(c->clipvalue) + !CUOPTIM_IS_NONE(c->global_clipnorm);
  if (clips > 1)
    return INVALID("%s: config->clipnorm, clipvalue, global_clipnorm: only one of them can be set (%d are)", caller,
                   clips);
  if (!is_none_or_finite(c->clipnorm)) return INVALID("%s: config->clipnorm = %g: must be finite", caller, c->clipnorm);
  if (!is_none_or_finite(c->clipvalue))
    return INVALID("%s: config->clipvalue = %g: must be finite", caller, c->clipvalue);
  if (!is_none_or_finite(c->global_clipnorm))
    return INVALID("%s: config->global_clipnorm = %g: must be finite", caller, c->global_clipnorm);
  if (c->clipnorm > 0) {
    CUOPTIM_CHECK(require_float32(c->clipnorm, caller, CONFIG_FIELD(clipnorm)));
    CUOPTIM_CHECK(require_float32_nonzero(c->clipnorm, caller, CONFIG_FIELD(clipnorm)));
  }
  if (c->clipvalue > 0) CUOPTIM_CHECK(require_float32(c->clipvalue, caller, CONFIG_FIELD(clipvalue)));
  if (c->global_clipnorm > 0) {
    CUOPTIM_CHECK(require_float32(c->global_clipnorm, caller, CONFIG_FIELD(global_clipnorm)));
    CUOPTIM_CHECK(require_float32_nonzero(c->global_clipnorm, caller, CONFIG_FIELD(global_clipnorm)));
    CUOPTIM_CHECK(require_float32_derived(1.0 / c->global_clipnorm, c->global_clipnorm, caller,
                                          CONFIG_FIELD(global_clipnorm), "1 / global_clipnorm"));
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* The base optimizer's options (SEMANTICS.md §1.1). */
static cuoptimStatus_t validate_base(const cuoptimConfig_t *c, const char *caller) {
  /* Every int64 >= 2 works: the step divides and takes remainders of the int64 counter by it. */
  if (c->gradient_accumulation_steps != 0 && c->gradient_accumulation_steps < 2)
    return INVALID("%s: config->gradient_accumulation_steps = %lld: must be an integer >= 2 (or 0 for None)", caller,
                   (long long)c->gradient_accumulation_steps);
  if (!is_flag(c->use_ema)) return INVALID("%s: config->use_ema = %d: must be 0 or 1", caller, c->use_ema);
  if (c->use_ema) {
    if (!(c->ema_momentum >= 0 && c->ema_momentum <= 1))
      return INVALID("%s: config->ema_momentum = %g: must be in the range [0, 1]", caller, c->ema_momentum);
    if (c->ema_overwrite_frequency < 0)
      return INVALID("%s: config->ema_overwrite_frequency = %lld: must be an integer >= 1 or 0 (None)", caller,
                     (long long)c->ema_overwrite_frequency);
  }
  /* Unused without use_ema, but written to JSON, which cannot hold NaN. */
  CUOPTIM_CHECK(require_number(c->ema_momentum, caller, CONFIG_FIELD(ema_momentum)));
  CUOPTIM_CHECK(validate_clip(c, caller));
  if (!CUOPTIM_IS_NONE(c->weight_decay))
    CUOPTIM_CHECK(require_float32(c->weight_decay, caller, CONFIG_FIELD(weight_decay)));
  if (!CUOPTIM_IS_NONE(c->loss_scale_factor)) {
    CUOPTIM_CHECK(require_float32(c->loss_scale_factor, caller, CONFIG_FIELD(loss_scale_factor)));
    if (c->loss_scale_factor == 0)
      return INVALID("%s: config->loss_scale_factor = 0: gradients are divided by it", caller);
    CUOPTIM_CHECK(require_float32_nonzero(c->loss_scale_factor, caller, CONFIG_FIELD(loss_scale_factor)));
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* beta (beta_1 or beta_2): the step uses float32(beta) and float32(1 - beta). */
static cuoptimStatus_t validate_beta(double beta, const char *caller, const char *field, const char *one_minus) {
  CUOPTIM_CHECK(require_float32(beta, caller, field));
  return require_float32_derived(1.0 - beta, beta, caller, field, one_minus);
}

static cuoptimStatus_t validate_betas_epsilon(const cuoptimConfig_t *c, const char *caller) {
  CUOPTIM_CHECK(validate_beta(c->beta_1, caller, CONFIG_FIELD(beta_1), "1 - beta_1"));
  CUOPTIM_CHECK(validate_beta(c->beta_2, caller, CONFIG_FIELD(beta_2), "1 - beta_2"));
  return require_float32(c->epsilon, caller, CONFIG_FIELD(epsilon));
}

static cuoptimStatus_t validate_rho_epsilon(const cuoptimConfig_t *c, const char *caller) {
  CUOPTIM_CHECK(validate_beta(c->rho, caller, CONFIG_FIELD(rho), "1 - rho"));
  return require_float32(c->epsilon, caller, CONFIG_FIELD(epsilon));
}

/* Keras's Ftrl constructor checks; every field then reaches the step as a float32. */
static cuoptimStatus_t validate_ftrl(const cuoptimConfig_t *c, const char *caller) {
  if (!(c->initial_accumulator_value >= 0))
    return INVALID("%s: config->initial_accumulator_value = %g: must be >= 0", caller, c->initial_accumulator_value);
  if (!(c->learning_rate_power <= 0))
    return INVALID("%s: config->learning_rate_power = %g: must be <= 0", caller, c->learning_rate_power);
  if (!(c->l1_regularization_strength >= 0))
    return INVALID("%s: config->l1_regularization_strength = %g: must be >= 0", caller, c->l1_regularization_strength);
  if (!(c->l2_regularization_strength >= 0))
    return INVALID("%s: config->l2_regularization_strength = %g: must be >= 0", caller, c->l2_regularization_strength);
  if (!(c->l2_shrinkage_regularization_strength >= 0))
    return INVALID("%s: config->l2_shrinkage_regularization_strength = %g: must be >= 0", caller,
                   c->l2_shrinkage_regularization_strength);
  CUOPTIM_CHECK(require_float32(c->initial_accumulator_value, caller, CONFIG_FIELD(initial_accumulator_value)));
  CUOPTIM_CHECK(require_float32(c->learning_rate_power, caller, CONFIG_FIELD(learning_rate_power)));
  CUOPTIM_CHECK(require_float32(c->l1_regularization_strength, caller, CONFIG_FIELD(l1_regularization_strength)));
  CUOPTIM_CHECK(require_float32(c->l2_regularization_strength, caller, CONFIG_FIELD(l2_regularization_strength)));
  CUOPTIM_CHECK(require_float32_derived(2.0 * c->l2_shrinkage_regularization_strength,
                                        c->l2_shrinkage_regularization_strength, caller,
                                        CONFIG_FIELD(l2_shrinkage_regularization_strength),
                                        "2 * l2_shrinkage_regularization_strength"));
  return require_float32(c->beta, caller, CONFIG_FIELD(beta));
}

/* Muon's exclude_layers: a count in range, each pattern NUL-terminated UTF-8 that compiles as
 * Python's re.search would (each on its own). */
static cuoptimStatus_t validate_exclude_layers(const cuoptimConfig_t *c, const char *caller) {
  if (c->num_exclude_layers < 0 || c->num_exclude_layers > CUOPTIM_MAX_EXCLUDE_LAYERS)
    return INVALID("%s: config->num_exclude_layers = %d: must lie in [0, %d]", caller, c->num_exclude_layers,
                   CUOPTIM_MAX_EXCLUDE_LAYERS);
  for (int i = 0; i < c->num_exclude_layers; i++) {
    const char *text = c->exclude_layers[i];
    if (!has_nul(text, CUOPTIM_MAX_NAME))
      return INVALID("%s: config->exclude_layers[%d] is not NUL-terminated", caller, i);
    if (cuoptim_invalid_utf8_offset(text) >= 0)
      return INVALID("%s: config->exclude_layers[%d] is not valid UTF-8", caller, i);
    cuoptimPattern *pattern = NULL;
    char why[256];
    long position = -1;
    cuoptimStatus_t status = cuoptim_pattern_compile(text, &pattern, why, sizeof why, &position);
    if (status != CUOPTIM_STATUS_SUCCESS)
      return cuoptim_error(status, "%s: config->exclude_layers[%d] = \"%s\": %s (position %ld)", caller, i, text,
                           why, position);
    cuoptim_pattern_free(pattern);
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* Muon: Keras checks nothing; every number reaches the step as a float32. */
static cuoptimStatus_t validate_muon(const cuoptimConfig_t *c, const char *caller) {
  CUOPTIM_CHECK(validate_beta(c->adam_beta_1, caller, CONFIG_FIELD(adam_beta_1), "1 - adam_beta_1"));
  CUOPTIM_CHECK(validate_beta(c->adam_beta_2, caller, CONFIG_FIELD(adam_beta_2), "1 - adam_beta_2"));
  CUOPTIM_CHECK(require_float32(c->epsilon, caller, CONFIG_FIELD(epsilon)));
  if (!CUOPTIM_IS_NONE(c->adam_weight_decay))
    CUOPTIM_CHECK(require_float32(c->adam_weight_decay, caller, CONFIG_FIELD(adam_weight_decay)));
  CUOPTIM_CHECK(require_float32(c->adam_lr_ratio, caller, CONFIG_FIELD(adam_lr_ratio)));
  CUOPTIM_CHECK(require_float32(c->muon_a, caller, CONFIG_FIELD(muon_a)));
  CUOPTIM_CHECK(require_float32(c->muon_b, caller, CONFIG_FIELD(muon_b)));
  CUOPTIM_CHECK(require_float32(c->muon_c, caller, CONFIG_FIELD(muon_c)));
  CUOPTIM_CHECK(validate_beta(c->momentum, caller, CONFIG_FIELD(momentum), "momentum - 1"));
  if (!CUOPTIM_IS_NONE(c->rms_rate)) CUOPTIM_CHECK(require_float32(c->rms_rate, caller, CONFIG_FIELD(rms_rate)));
  if (c->ns_steps < 0 || c->ns_steps > CUOPTIM_MUON_MAX_NS_STEPS)
    return INVALID("%s: config->ns_steps = %lld: must lie in [0, %d]", caller, (long long)c->ns_steps,
                   CUOPTIM_MUON_MAX_NS_STEPS);
  if (!is_flag(c->nesterov)) return INVALID("%s: config->nesterov = %d: must be 0 or 1", caller, c->nesterov);
  if (!is_flag(c->exclude_embeddings))
    return INVALID("%s: config->exclude_embeddings = %d: must be 0 or 1", caller, c->exclude_embeddings);
  return validate_exclude_layers(c, caller);
}

/* Adafactor: Keras checks none of them; the step needs them finite in float32. */
static cuoptimStatus_t validate_adafactor(const cuoptimConfig_t *c, const char *caller) {
  CUOPTIM_CHECK(require_float32(c->beta_2_decay, caller, CONFIG_FIELD(beta_2_decay)));
  CUOPTIM_CHECK(require_float32(c->epsilon_1, caller, CONFIG_FIELD(epsilon_1)));
  CUOPTIM_CHECK(require_float32(c->epsilon_2, caller, CONFIG_FIELD(epsilon_2)));
  CUOPTIM_CHECK(require_float32(c->clip_threshold, caller, CONFIG_FIELD(clip_threshold)));
  if (!is_flag(c->relative_step))
    return INVALID("%s: config->relative_step = %d: must be 0 or 1", caller, c->relative_step);
  return CUOPTIM_STATUS_SUCCESS;
}

/* Per optimizer: the checks Keras's constructors make, and float32 finiteness of the fields the
 * kind uses (the others are ignored, and not written to JSON). */
static cuoptimStatus_t validate_rule(const cuoptimConfig_t *c, const char *caller) {
  switch (c->kind) {
    case CUOPTIM_SGD:
      if (!(c->momentum >= 0 && c->momentum <= 1))
        return INVALID("%s: config->momentum = %g: must be a float between [0, 1]", caller, c->momentum);
      if (!is_flag(c->nesterov)) return INVALID("%s: config->nesterov = %d: must be 0 or 1", caller, c->nesterov);
      return CUOPTIM_STATUS_SUCCESS;
    case CUOPTIM_RMSPROP:
      CUOPTIM_CHECK(validate_rho_epsilon(c, caller));
      CUOPTIM_CHECK(require_float32(c->momentum, caller, CONFIG_FIELD(momentum)));
      if (!is_flag(c->centered)) return INVALID("%s: config->centered = %d: must be 0 or 1", caller, c->centered);
      return CUOPTIM_STATUS_SUCCESS;
    case CUOPTIM_ADAGRAD:
      CUOPTIM_CHECK(require_float32(c->initial_accumulator_value, caller, CONFIG_FIELD(initial_accumulator_value)));
      return require_float32(c->epsilon, caller, CONFIG_FIELD(epsilon));
    case CUOPTIM_ADADELTA: return validate_rho_epsilon(c, caller);
    case CUOPTIM_ADAMW:
      if (CUOPTIM_IS_NONE(c->weight_decay))
        return INVALID("%s: config->weight_decay is None: AdamW requires a weight decay", caller);
      /* fall through */
    case CUOPTIM_ADAM:
      CUOPTIM_CHECK(validate_betas_epsilon(c, caller));
      if (!is_flag(c->amsgrad)) return INVALID("%s: config->amsgrad = %d: must be 0 or 1", caller, c->amsgrad);
      return CUOPTIM_STATUS_SUCCESS;
    case CUOPTIM_ADAMAX:
    case CUOPTIM_NADAM:
    case CUOPTIM_LAMB: return validate_betas_epsilon(c, caller);
    case CUOPTIM_LION:
      if (!(c->beta_1 > 0 && c->beta_1 <= 1))
        return INVALID("%s: config->beta_1 = %g: must be between (0, 1]", caller, c->beta_1);
      return validate_beta(c->beta_2, caller, CONFIG_FIELD(beta_2), "1 - beta_2");
    case CUOPTIM_FTRL: return validate_ftrl(c, caller);
    case CUOPTIM_SCHEDULE_FREE_ADAMW:
      /* Keras checks none of them; the step needs them finite, and divides by beta_1. */
      CUOPTIM_CHECK(require_float32(c->beta_1, caller, CONFIG_FIELD(beta_1)));
      CUOPTIM_CHECK(require_float32_nonzero(c->beta_1, caller, CONFIG_FIELD(beta_1)));
      CUOPTIM_CHECK(require_float32(c->beta_2, caller, CONFIG_FIELD(beta_2)));
      CUOPTIM_CHECK(require_float32(c->epsilon, caller, CONFIG_FIELD(epsilon)));
      return require_float32(c->warmup_steps, caller, CONFIG_FIELD(warmup_steps));
    case CUOPTIM_ADAFACTOR: return validate_adafactor(c, caller);
    case CUOPTIM_MUON: return validate_muon(c, caller);
    default: return CUOPTIM_STATUS_SUCCESS;
  }
}

/* LossScaleOptimizer (SEMANTICS.md §4): the gradients are divided by the float32 scale. */
static cuoptimStatus_t validate_loss_scale(const cuoptimConfig_t *c, const char *caller) {
  if (!is_flag(c->dynamic_loss_scale))
    return INVALID("%s: config->dynamic_loss_scale = %d: must be 0 or 1", caller, c->dynamic_loss_scale);
  if (!c->dynamic_loss_scale) return CUOPTIM_STATUS_SUCCESS;
  if (!(isfinite(c->initial_scale) && c->initial_scale > 0))
    return INVALID("%s: config->initial_scale = %g: must be a finite number > 0", caller, c->initial_scale);
  CUOPTIM_CHECK(require_float32(c->initial_scale, caller, CONFIG_FIELD(initial_scale)));
  CUOPTIM_CHECK(require_float32_nonzero(c->initial_scale, caller, CONFIG_FIELD(initial_scale)));
  if (c->dynamic_growth_steps < 1)
    return INVALID("%s: config->dynamic_growth_steps = %lld: must be >= 1", caller, (long long)c->dynamic_growth_steps);
  if (!CUOPTIM_IS_NONE(c->loss_scale_factor))
    return INVALID("%s: config->loss_scale_factor = %g: must be None with dynamic_loss_scale (the "
                   "LossScaleOptimizer sets the inner optimizer's to None)",
                   caller, c->loss_scale_factor);
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptim_validate_config(const cuoptimConfig_t *config, const char *caller) {
  CUOPTIM_REQUIRE_NOT_NULL(caller, config);
  const cuoptimConfig_t *c = config;
  if (!cuoptim_kind_is_valid((int)c->kind))
    return INVALID("%s: config->kind = %d is not a cuoptimOptimizerKind_t", caller, (int)c->kind);
  if (!has_nul(c->name, sizeof c->name)) return INVALID("%s: config->name is not NUL-terminated", caller);
  if (!has_nul(c->loss_scale_name, sizeof c->loss_scale_name))
    return INVALID("%s: config->loss_scale_name is not NUL-terminated", caller);
  CUOPTIM_CHECK(validate_names_are_text(c, caller));
  CUOPTIM_CHECK(validate_schedule(&c->learning_rate, caller));
  CUOPTIM_CHECK(validate_base(c, caller));
  CUOPTIM_CHECK(validate_rule(c, caller));
  return validate_loss_scale(c, caller);
}

cuoptimStatus_t cuoptimConfigValidate(const cuoptimConfig_t *config) {
  return cuoptim_validate_config(config, "cuoptimConfigValidate");
}

static int64_t to_step(double x) { return (int64_t)x; /* Keras casts boundaries to the step's int type */ }

static void schedule_params_init(const cuoptimSchedule_t *s, cuoptimScheduleParams *q) {
  memset(q, 0, sizeof *q);
  q->kind = s->kind;
  q->staircase = s->staircase;
  q->cycle = s->cycle;
  q->has_warmup = !CUOPTIM_IS_NONE(s->warmup_target);
  q->initial_learning_rate = (float)s->initial_learning_rate;
  q->decay_steps = (float)s->decay_steps;
  q->decay_rate = (float)s->decay_rate;
  q->end_learning_rate = (float)s->end_learning_rate;
  q->power = (float)s->power;
  q->alpha = (float)s->alpha;
  q->one_minus_alpha_double = (float)(1.0 - s->alpha);
  q->warmup_target = q->has_warmup ? (float)s->warmup_target : 0.0f;
  q->warmup_steps = (float)s->warmup_steps;
  q->t_mul = (float)s->t_mul;
  q->m_mul = (float)s->m_mul;
  q->num_boundaries = s->kind == CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT ? s->num_boundaries : 0;
  for (int i = 0; i < q->num_boundaries; i++) q->boundaries[i] = to_step(s->boundaries[i]);
  for (int i = 0; i <= q->num_boundaries; i++) q->values[i] = (float)s->values[i];
}

static int clip_kind(const cuoptimConfig_t *c) {
  /* A value <= 0 disables the option (SEMANTICS.md §1.4). */
  if (!CUOPTIM_IS_NONE(c->clipnorm) && c->clipnorm > 0) return CUOPTIM_CLIP_NORM;
  if (!CUOPTIM_IS_NONE(c->global_clipnorm) && c->global_clipnorm > 0) return CUOPTIM_CLIP_GLOBAL_NORM;
  if (!CUOPTIM_IS_NONE(c->clipvalue) && c->clipvalue > 0) return CUOPTIM_CLIP_VALUE;
  return CUOPTIM_CLIP_NONE;
}

/* Muon: its AdamW path runs the element-wise Adam rule, so the fields that rule reads take the
 * adam_ values; the Muon path's own constants go to the muon_ fields. */
static void muon_params_init(const cuoptimConfig_t *c, cuoptimRuleParams *p) {
  p->muon_has_weight_decay = !CUOPTIM_IS_NONE(c->weight_decay);
  p->muon_weight_decay = p->muon_has_weight_decay ? (float)c->weight_decay : 0.0f;
  p->has_weight_decay = !CUOPTIM_IS_NONE(c->adam_weight_decay);
  p->weight_decay = p->has_weight_decay ? (float)c->adam_weight_decay : 0.0f;
  p->beta_1 = (float)c->adam_beta_1;
  p->beta_2 = (float)c->adam_beta_2;
  p->one_minus_beta_1 = (float)(1.0 - c->adam_beta_1);
  p->one_minus_beta_2 = (float)(1.0 - c->adam_beta_2);
  p->amsgrad = 0;
  p->muon_momentum_minus_1 = (float)(c->momentum - 1.0);
  p->muon_adam_lr_ratio = (float)c->adam_lr_ratio;
  p->muon_has_rms_rate = !CUOPTIM_IS_NONE(c->rms_rate);
  p->muon_rms_rate = p->muon_has_rms_rate ? (float)c->rms_rate : 1.0f;
  p->muon_a = (float)c->muon_a;
  p->muon_b = (float)c->muon_b;
  p->muon_c = (float)c->muon_c;
  p->muon_ns_steps = (int32_t)c->ns_steps;
}

void cuoptim_prologue_params_init(const cuoptimConfig_t *c, cuoptimPrologueParams *q) {
  memset(q, 0, sizeof *q);
  cuoptimRuleParams *p = &q->rule;
  p->kind = c->kind;
  p->clip = clip_kind(c);
  p->has_weight_decay = !CUOPTIM_IS_NONE(c->weight_decay);
  p->has_loss_scale_factor = !CUOPTIM_IS_NONE(c->loss_scale_factor);
  p->dynamic_loss_scale = c->dynamic_loss_scale;
  p->accumulation_steps = c->gradient_accumulation_steps;
  p->use_ema = c->use_ema;
  p->nesterov = c->nesterov;
  p->centered = c->centered;
  p->amsgrad = c->amsgrad;
  /* SGD keeps a momentum slot when momentum != 0, RMSprop when momentum > 0. */
  p->has_momentum = c->kind == CUOPTIM_SGD ? c->momentum != 0 : (c->kind == CUOPTIM_RMSPROP && c->momentum > 0);
  p->weight_decay = p->has_weight_decay ? (float)c->weight_decay : 0.0f;
  p->clipnorm = (float)c->clipnorm;
  p->clipvalue = (float)c->clipvalue;
  p->global_clipnorm = (float)c->global_clipnorm;
  p->loss_scale_factor = p->has_loss_scale_factor ? (float)c->loss_scale_factor : 1.0f;
  p->accumulation_steps_f = (float)c->gradient_accumulation_steps;
  p->ema_momentum = (float)c->ema_momentum;
  p->beta_1 = (float)c->beta_1;
  p->beta_2 = (float)c->beta_2;
  p->one_minus_beta_1 = (float)(1.0 - c->beta_1);
  p->one_minus_beta_2 = (float)(1.0 - c->beta_2);
  p->epsilon = (float)c->epsilon;
  p->rho = (float)c->rho;
  p->one_minus_rho = (float)(1.0 - c->rho);
  p->momentum = (float)c->momentum;
  p->lr_power_neg = (float)(-c->learning_rate_power);
  p->l1 = (float)c->l1_regularization_strength;
  p->l2 = (float)c->l2_regularization_strength;
  p->two_l2_shrinkage = (float)(2.0 * c->l2_shrinkage_regularization_strength);
  p->ftrl_beta = (float)c->beta;
  p->sf_has_warmup = c->kind == CUOPTIM_SCHEDULE_FREE_ADAMW && c->warmup_steps > 0; /* Keras: a Python test */
  p->sf_warmup_steps = p->sf_has_warmup ? (float)c->warmup_steps : 1.0f;
  if (c->kind == CUOPTIM_MUON) muon_params_init(c, p);
  p->af_beta_2_decay = (float)c->beta_2_decay;
  p->af_epsilon_1 = (float)c->epsilon_1;
  p->af_epsilon_2 = (float)c->epsilon_2;
  p->af_clip_threshold = (float)c->clip_threshold;
  schedule_params_init(&c->learning_rate, &q->schedule);
  q->ema_overwrite_frequency = c->use_ema ? c->ema_overwrite_frequency : 0;
  q->dynamic_growth_steps = c->dynamic_growth_steps;
  q->global_clipnorm_inverse = (float)(1.0 / c->global_clipnorm);
  q->nadam_decay = 0.96f;
}

int cuoptim_slot_layout(const cuoptimConfig_t *c, cuoptimSlotLayout *layout) {
  memset(layout, 0, sizeof *layout);
  const char **names = layout->names;
  int n = 0;
  switch (c->kind) {
    case CUOPTIM_SGD: names[n++] = "momentum"; break;
    case CUOPTIM_RMSPROP:
      names[n++] = "velocity";
      names[n++] = "momentum";
      names[n++] = "average_gradient";
      break;
    case CUOPTIM_ADAGRAD: names[n++] = "accumulator"; break;
    case CUOPTIM_ADADELTA:
      names[n++] = "accumulated_grad";
      names[n++] = "accumulated_delta_var";
      break;
    case CUOPTIM_ADAM:
    case CUOPTIM_ADAMW:
      names[n++] = "momentum";
      names[n++] = "velocity";
      names[n++] = "velocity_hat";
      break;
    case CUOPTIM_ADAMAX:
      names[n++] = "momentum";
      names[n++] = "norm";
      break;
    case CUOPTIM_NADAM:
    case CUOPTIM_LAMB:
    case CUOPTIM_SCHEDULE_FREE_ADAMW:
    case CUOPTIM_MUON: /* velocity: the AdamW path's variables only (cuoptim_variable_has_slot) */
      names[n++] = "momentum";
      names[n++] = "velocity";
      break;
    case CUOPTIM_LION: names[n++] = "momentum"; break;
    case CUOPTIM_ADAFACTOR: names[n++] = "velocity"; break; /* r and c: cuoptimVariableRec.factored */
    case CUOPTIM_FTRL:
      names[n++] = "accumulator";
      names[n++] = "linear";
      break;
    default: break;
  }
  for (int i = 0; i < n; i++) layout->present[i] = 1;
  /* Optional slots, and Keras's separate add_optimizer_variables calls (one group each). */
  if (c->kind == CUOPTIM_SGD) layout->present[0] = c->momentum != 0;
  if (c->kind == CUOPTIM_RMSPROP) {
    layout->present[1] = c->momentum > 0;
    layout->present[2] = c->centered != 0;
    layout->group[1] = 1;
    layout->group[2] = 2;
  }
  if (c->kind == CUOPTIM_ADAM || c->kind == CUOPTIM_ADAMW) {
    layout->present[2] = c->amsgrad != 0;
    layout->group[2] = 1;
  }
  layout->count = n;
  return n;
}

int cuoptim_slot_copies_variable(const cuoptimConfig_t *c, int slot) {
  return c->kind == CUOPTIM_SCHEDULE_FREE_ADAMW && slot == 0; /* its momentum starts as the variable */
}

float cuoptim_slot_initial_value(const cuoptimConfig_t *c, int slot) {
  if ((c->kind == CUOPTIM_ADAGRAD || c->kind == CUOPTIM_FTRL) && slot == 0) return (float)c->initial_accumulator_value;
  return 0.0f;
}
