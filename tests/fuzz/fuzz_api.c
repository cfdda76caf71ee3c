/*
 * fuzz_api — sequences of public calls on the host backend, checked against include/cuoptim.h.
 *
 * The input is a small program. Byte 0: bit 0 chooses "tame" mode; byte 1 the optimizer kind;
 * byte 2 the number of config changes, each then read from the input; after that, until the
 * input ends (at most MAX_OPS), one byte picks a call (enum op) and the next bytes its arguments.
 * Tame mode changes the config only in ways listed in TAME_CHANGES and uses small finite
 * parameters, gradients and learning rates; wild mode writes any value into any field.
 *
 * Properties, for every call: the status is one the header lists for it, and where the harness
 * can tell (its model of the optimizer: variables, names, whether the state is built, exclusion
 * patterns) exactly the one it predicts; a failure names the call in its message and changes
 * nothing observable (variable count, iterations, learning rate, loss scale, config, weight-decay
 * flags, the caller's parameters and, once built, every state entry); results agree with what
 * was set (indices, learning rate, weights read back, weight decay after exclusions). A created
 * config survives the JSON round trip. In tame mode parameters and state stay finite. ASan and
 * LSan catch memory errors and leaks.
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuoptim.h"
#include "fuzz_util.h"
#include "pattern.h"

#define MAX_OPS 48
#define MAX_VARS 8
#define MAX_ELEMENTS 16
#define MAX_PATTERNS 8
#define MAX_WEIGHTS (8 + 5 * MAX_VARS)

#define S(x) FUZZ_ST(CUOPTIM_STATUS_##x)
#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

/* ---- reading the input ------------------------------------------------------------------------ */

typedef struct {
  const uint8_t *p;
  size_t n;
} Input;

static unsigned take(Input *in) {
  if (in->n == 0) return 0;
  in->n--;
  return *in->p++;
}

static const double WILD_DOUBLES[] = {0.0,  -0.0, 1.0,    -1.0,     0.5,     0.9,     0.999,  1e-7,  2.0,   3.0,
                                      0.1,  -0.5, 2000.0, 1e16,     1e300,   -1e300,  1e-310, 1e-45, 65504, 3.5e38,
                                      NAN,  INFINITY, -INFINITY};
static const int64_t WILD_INTS[] = {0, 1, 2, 3, -1, 2000, INT32_MAX, (int64_t)INT32_MAX + 1, (int64_t)1 << 53,
                                    ((int64_t)1 << 53) + 1, INT64_MAX, INT64_MIN};
static const float TAME_VALUES[] = {0.0f, 1.0f, -1.0f, 0.5f, -2.0f, 3.0f, 0.25f};
static const double TAME_LEARNING_RATES[] = {0.001, 0.01, 0.1, 1.0};

/* A double from the table, or (rarely) 8 raw bytes. */
static double wild_double(Input *in) {
  unsigned b = take(in);
  if (b < 0xf0) return WILD_DOUBLES[b % COUNT_OF(WILD_DOUBLES)];
  uint64_t bits = 0;
  for (int i = 0; i < 8; i++) bits = bits << 8 | take(in);
  double x;
  memcpy(&x, &bits, sizeof x);
  return x;
}

static int64_t wild_int(Input *in) { return WILD_INTS[take(in) % COUNT_OF(WILD_INTS)]; }

/* ---- the config ------------------------------------------------------------------------------- */

typedef enum { F_DOUBLE, F_INT, F_INT64, F_NAME, F_SCHEDULE } FieldType;
typedef struct {
  FieldType type;
  size_t offset;
} Field;
#define FIELD(type, member) {type, offsetof(cuoptimConfig_t, member)}

static const Field FIELDS[] = {
    FIELD(F_NAME, name), FIELD(F_SCHEDULE, learning_rate.kind),
    FIELD(F_DOUBLE, learning_rate.initial_learning_rate), FIELD(F_DOUBLE, learning_rate.decay_steps),
    FIELD(F_DOUBLE, learning_rate.decay_rate), FIELD(F_INT, learning_rate.staircase),
    FIELD(F_DOUBLE, learning_rate.end_learning_rate), FIELD(F_DOUBLE, learning_rate.power),
    FIELD(F_INT, learning_rate.cycle), FIELD(F_DOUBLE, learning_rate.alpha),
    FIELD(F_DOUBLE, learning_rate.warmup_target), FIELD(F_DOUBLE, learning_rate.warmup_steps),
    FIELD(F_DOUBLE, learning_rate.t_mul), FIELD(F_DOUBLE, learning_rate.m_mul),
    FIELD(F_INT, learning_rate.num_boundaries), FIELD(F_DOUBLE, learning_rate.boundaries[0]),
    FIELD(F_DOUBLE, learning_rate.boundaries[1]), FIELD(F_DOUBLE, learning_rate.values[0]),
    FIELD(F_DOUBLE, learning_rate.values[1]), FIELD(F_DOUBLE, learning_rate.values[2]),
    FIELD(F_NAME, learning_rate.name), FIELD(F_DOUBLE, weight_decay), FIELD(F_DOUBLE, clipnorm),
    FIELD(F_DOUBLE, clipvalue), FIELD(F_DOUBLE, global_clipnorm), FIELD(F_INT, use_ema),
    FIELD(F_DOUBLE, ema_momentum), FIELD(F_INT64, ema_overwrite_frequency), FIELD(F_DOUBLE, loss_scale_factor),
    FIELD(F_INT64, gradient_accumulation_steps), FIELD(F_DOUBLE, beta_1), FIELD(F_DOUBLE, beta_2),
    FIELD(F_DOUBLE, epsilon), FIELD(F_DOUBLE, rho), FIELD(F_DOUBLE, momentum), FIELD(F_INT, nesterov),
    FIELD(F_INT, centered), FIELD(F_INT, amsgrad), FIELD(F_DOUBLE, initial_accumulator_value),
    FIELD(F_DOUBLE, learning_rate_power), FIELD(F_DOUBLE, l1_regularization_strength),
    FIELD(F_DOUBLE, l2_regularization_strength), FIELD(F_DOUBLE, l2_shrinkage_regularization_strength),
    FIELD(F_DOUBLE, beta), FIELD(F_INT, dynamic_loss_scale), FIELD(F_DOUBLE, initial_scale),
    FIELD(F_INT64, dynamic_growth_steps), FIELD(F_NAME, loss_scale_name), FIELD(F_DOUBLE, warmup_steps),
};

/* Changes that keep every step finite with finite, small inputs. */
typedef struct {
  Field field;
  double value;
} Change;
static const Change TAME_CHANGES[] = {
    {FIELD(F_INT, use_ema), 1},         {FIELD(F_INT64, ema_overwrite_frequency), 3},
    {FIELD(F_INT64, gradient_accumulation_steps), 2}, {FIELD(F_INT64, gradient_accumulation_steps), 3},
    {FIELD(F_DOUBLE, clipnorm), 1.0},   {FIELD(F_DOUBLE, clipvalue), 0.5},
    {FIELD(F_DOUBLE, global_clipnorm), 1.0}, {FIELD(F_INT, amsgrad), 1},
    {FIELD(F_INT, nesterov), 1},        {FIELD(F_DOUBLE, momentum), 0.9},
    {FIELD(F_INT, centered), 1},        {FIELD(F_INT, dynamic_loss_scale), 1},
    {FIELD(F_INT64, dynamic_growth_steps), 2}, {FIELD(F_DOUBLE, loss_scale_factor), 2.0},
    {FIELD(F_DOUBLE, weight_decay), 0.01}, {FIELD(F_SCHEDULE, learning_rate.kind), CUOPTIM_SCHEDULE_EXPONENTIAL},
    {FIELD(F_SCHEDULE, learning_rate.kind), CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT},
    {FIELD(F_SCHEDULE, learning_rate.kind), CUOPTIM_SCHEDULE_POLYNOMIAL},
    {FIELD(F_SCHEDULE, learning_rate.kind), CUOPTIM_SCHEDULE_INVERSE_TIME},
    {FIELD(F_SCHEDULE, learning_rate.kind), CUOPTIM_SCHEDULE_COSINE},
    {FIELD(F_SCHEDULE, learning_rate.kind), CUOPTIM_SCHEDULE_COSINE_RESTARTS},
};

static void read_name(Input *in, char *out, size_t max) {
  size_t n = take(in) % max;
  for (size_t i = 0; i < n; i++) out[i] = (char)take(in);
  out[n] = '\0';
}

static void set_field(cuoptimConfig_t *c, const Field *f, double value, Input *in, int tame) {
  char *p = (char *)c + f->offset;
  switch (f->type) {
    case F_DOUBLE: *(double *)p = tame ? value : wild_double(in); break;
    case F_INT: *(int *)p = tame ? (int)value : (int)wild_int(in); break;
    case F_INT64: *(int64_t *)p = tame ? (int64_t)value : wild_int(in); break;
    case F_NAME: read_name(in, p, CUOPTIM_MAX_NAME); break;
    case F_SCHEDULE: {
      int kind = tame ? (int)value : (int)(take(in) % 8);
      cuoptimSchedule_t *s = &c->learning_rate;
      if (cuoptimScheduleInit(s, (cuoptimScheduleKind_t)kind) != CUOPTIM_STATUS_SUCCESS) s->kind = kind;
      /* The cosine schedules reach a learning rate of 0 with alpha 0, which Ftrl divides by (as
       * Keras does): tame schedules stay above it. */
      if (tame) s->alpha = 0.1;
      break;
    }
  }
}

static void read_config(Input *in, int tame, cuoptimConfig_t *c) {
  cuoptimOptimizerKind_t kind = (cuoptimOptimizerKind_t)(take(in) % CUOPTIM_OPTIMIZER_COUNT);
  if (!cuoptimOptimizerName(kind)) kind = CUOPTIM_ADAM; /* a value no kind has */
  cuoptimConfigInit(c, kind);
  for (unsigned k = take(in) % 8; k > 0; k--) {
    if (tame) {
      const Change *change = &TAME_CHANGES[take(in) % COUNT_OF(TAME_CHANGES)];
      set_field(c, &change->field, change->value, in, 1);
    } else {
      set_field(c, &FIELDS[take(in) % COUNT_OF(FIELDS)], 0, in, 0);
    }
  }
}

/* ---- the harness's model of the optimizer ----------------------------------------------------- */

typedef struct {
  char name[CUOPTIM_MAX_NAME];
  cuoptimDtype_t dtype;
  size_t count;
  unsigned char *param; /* the caller's buffer: count elements of dtype */
} Var;

typedef struct {
  cuoptimOptimizer_t opt;
  cuoptimConfig_t config;
  int tame;
  int num_vars;
  Var vars[MAX_VARS];
  int built; /* the optimizer state is built: 0 or 1 */
  int num_patterns;
  char patterns[MAX_PATTERNS][32]; /* the accepted exclusions, each once, in call order */
} Model;

/* What a failure must leave as it was. */
typedef struct {
  int num_vars;
  int64_t iterations;
  float learning_rate;
  float loss_scale;
  cuoptimConfig_t config;
  int uses_weight_decay[MAX_VARS];
  unsigned char params[MAX_VARS][MAX_ELEMENTS * 4];
  int has_weights; /* the state was built: the entries below were read */
  int num_weights;
  cuoptimWeightInfo_t info[MAX_WEIGHTS];
  double weights[MAX_WEIGHTS][MAX_ELEMENTS];
} Snapshot;

static size_t element_size(cuoptimDtype_t dtype) { return dtype == CUOPTIM_FLOAT32 ? 4 : 2; }

static void must_succeed(const char *call, cuoptimStatus_t st) { fuzz_check_status(call, st, S(SUCCESS)); }

static void take_snapshot(const Model *m, Snapshot *s) {
  memset(s, 0, sizeof *s);
  must_succeed("cuoptimGetVariableCount", cuoptimGetVariableCount(m->opt, &s->num_vars));
  must_succeed("cuoptimGetIterations", cuoptimGetIterations(m->opt, &s->iterations));
  must_succeed("cuoptimGetLearningRate", cuoptimGetLearningRate(m->opt, &s->learning_rate));
  if (m->config.dynamic_loss_scale) must_succeed("cuoptimGetLossScale", cuoptimGetLossScale(m->opt, &s->loss_scale));
  must_succeed("cuoptimGetConfig", cuoptimGetConfig(m->opt, &s->config));
  for (int v = 0; v < m->num_vars; v++) {
    must_succeed("cuoptimUsesWeightDecay", cuoptimUsesWeightDecay(m->opt, v, &s->uses_weight_decay[v]));
    memcpy(s->params[v], m->vars[v].param, m->vars[v].count * element_size(m->vars[v].dtype));
  }
  if (!m->built) return; /* reading the state would build it */
  s->has_weights = 1;
  must_succeed("cuoptimGetWeightCount", cuoptimGetWeightCount(m->opt, &s->num_weights));
  if (s->num_weights > MAX_WEIGHTS) fuzz_fail("%d state entries, more than %d", s->num_weights, MAX_WEIGHTS);
  for (int i = 0; i < s->num_weights; i++) {
    must_succeed("cuoptimGetWeightInfo", cuoptimGetWeightInfo(m->opt, i, &s->info[i]));
    if (s->info[i].count < 1 || s->info[i].count > MAX_ELEMENTS || memchr(s->info[i].name, 0, CUOPTIM_MAX_WEIGHT_NAME) == NULL ||
        s->info[i].name[0] == '\0')
      fuzz_fail("state entry %d: bad info (count %zu)", i, s->info[i].count);
    must_succeed("cuoptimGetWeights", cuoptimGetWeights(m->opt, i, s->weights[i], s->info[i].count));
  }
}

static void check_unchanged(const Model *m, const Snapshot *before, const char *call) {
  Snapshot after;
  take_snapshot(m, &after);
  char why[128] = "";
  if (after.num_vars != before->num_vars) fuzz_fail("failed %s changed the variable count", call);
  if (after.iterations != before->iterations) fuzz_fail("failed %s changed the iterations", call);
  if (memcmp(&after.learning_rate, &before->learning_rate, sizeof(float)) != 0 ||
      memcmp(&after.loss_scale, &before->loss_scale, sizeof(float)) != 0)
    fuzz_fail("failed %s changed the learning rate or the loss scale", call);
  if (!fuzz_configs_equal(&before->config, &after.config, 0, why, sizeof why))
    fuzz_fail("failed %s changed the config: %s", call, why);
  if (memcmp(after.uses_weight_decay, before->uses_weight_decay, sizeof after.uses_weight_decay) != 0)
    fuzz_fail("failed %s changed a weight-decay flag", call);
  if (memcmp(after.params, before->params, sizeof after.params) != 0) fuzz_fail("failed %s changed a parameter", call);
  if (!before->has_weights || !after.has_weights) return;
  if (after.num_weights != before->num_weights) fuzz_fail("failed %s changed the number of state entries", call);
  for (int k = 0; k < after.num_weights; k++) {
    const cuoptimWeightInfo_t *a = &after.info[k], *b = &before->info[k];
    if (strcmp(a->name, b->name) != 0 || a->count != b->count || a->is_integer != b->is_integer ||
        memcmp(after.weights[k], before->weights[k], sizeof after.weights[k]) != 0)
      fuzz_fail("failed %s changed state entry %d (%s)", call, k, b->name);
  }
}

static int value_is_finite(const unsigned char *p, cuoptimDtype_t dtype) {
  if (dtype == CUOPTIM_FLOAT32) {
    float f;
    memcpy(&f, p, sizeof f);
    return isfinite(f);
  }
  uint16_t bits;
  memcpy(&bits, p, sizeof bits);
  return dtype == CUOPTIM_FLOAT16 ? (bits & 0x7c00) != 0x7c00 : (bits & 0x7f80) != 0x7f80;
}

/* The optimizer's config on stderr, for the report of a finding. */
static void print_config(const Model *m) {
  char text[8192];
  if (cuoptimConfigToKerasJSON(&m->config, text, sizeof text, NULL) == CUOPTIM_STATUS_SUCCESS)
    fprintf(stderr, "config: %s\n", text);
}

/* Tame mode: finite inputs and moderate hyperparameters give finite parameters and state. */
static void check_finite(const Model *m, const char *after_call) {
  for (int v = 0; v < m->num_vars; v++)
    for (size_t i = 0; i < m->vars[v].count; i++)
      if (!value_is_finite(m->vars[v].param + i * element_size(m->vars[v].dtype), m->vars[v].dtype)) {
        print_config(m);
        fuzz_fail("tame inputs: after %s, %s[%zu] (dtype %d) is not finite", after_call, m->vars[v].name, i,
                  (int)m->vars[v].dtype);
      }
  Snapshot s;
  take_snapshot(m, &s);
  if (!isfinite(s.learning_rate)) fuzz_fail("tame inputs: after %s, the learning rate is not finite", after_call);
  for (int k = 0; k < s.num_weights; k++)
    for (size_t i = 0; i < s.info[k].count; i++)
      if (!isfinite(s.weights[k][i])) fuzz_fail("tame inputs: after %s, %s[%zu] is not finite", after_call, s.info[k].name, i);
}

/* Keras's _use_weight_decay for `name`: weight decay set and re.search of the accepted patterns
 * joined with "|" (Keras's re.compile("|".join(names))) finds nothing. The search is the
 * library's own pattern module, called directly: what is checked is that every variable's flag,
 * whenever it was added, is the answer for the whole joined pattern. -1: the search has no
 * answer (a limit), and the library must then have refused. */
static int model_uses_weight_decay(const Model *m, const char *name) {
  if (CUOPTIM_IS_NONE(m->config.weight_decay)) return 0;
  if (m->num_patterns == 0) return 1;
  char joined[MAX_PATTERNS * 33] = "";
  for (int k = 0; k < m->num_patterns; k++) {
    if (k > 0) strcat(joined, "|");
    strcat(joined, m->patterns[k]);
  }
  cuoptimPattern *pattern = NULL;
  char why[256];
  long position = -1;
  if (cuoptim_pattern_compile(joined, &pattern, why, sizeof why, &position) != CUOPTIM_STATUS_SUCCESS)
    fuzz_fail("the accepted patterns joined, \"%s\", do not compile: %s", joined, why);
  int found = 0;
  cuoptimStatus_t st = cuoptim_pattern_search(pattern, name, &found, why, sizeof why);
  cuoptim_pattern_free(pattern);
  if (st != CUOPTIM_STATUS_SUCCESS) return -1;
  return !found;
}

/* ---- the calls -------------------------------------------------------------------------------- */

static const char *const COMMON_NAMES[] = {"dense_kernel", "dense_bias", "embedding", "norm_gamma", "norm_bias",
                                           "conv/kernel", "x"};
static const size_t COUNTS[] = {0, 1, 2, 3, 4, 5, 7, 8, 16, ((size_t)1 << 40) + 1, SIZE_MAX};
static const uint16_t TAME_HALF[] = {0x0000, 0x3c00, 0xbc00, 0x3800, 0x4000, 0xc400};
static const uint16_t TAME_BFLOAT16[] = {0x0000, 0x3f80, 0xbf80, 0x3f00, 0x4000, 0xc080};

/* count elements of dtype: small finite values when tame, else anything. */
static void fill_values(Input *in, int tame, cuoptimDtype_t dtype, size_t count, unsigned char *out) {
  for (size_t i = 0; i < count; i++) {
    unsigned b = take(in);
    if (dtype == CUOPTIM_FLOAT32) {
      float f = tame ? TAME_VALUES[b % COUNT_OF(TAME_VALUES)] : (float)WILD_DOUBLES[b % COUNT_OF(WILD_DOUBLES)];
      memcpy(out + 4 * i, &f, 4);
    } else {
      uint16_t bits = (uint16_t)(b << 8 | take(in));
      if (tame) bits = (dtype == CUOPTIM_FLOAT16 ? TAME_HALF : TAME_BFLOAT16)[b % COUNT_OF(TAME_HALF)];
      memcpy(out + 2 * i, &bits, 2);
    }
  }
}

static void read_variable_name(Input *in, char *name) {
  unsigned b = take(in);
  if (b < 128) {
    strcpy(name, COMMON_NAMES[b % COUNT_OF(COMMON_NAMES)]);
  } else if (b < 255) {
    size_t n = b & 31;
    for (size_t i = 0; i < n; i++) name[i] = (char)take(in);
    name[n] = '\0';
  } else { /* around the longest name allowed */
    size_t n = 90 + take(in) % 37;
    memset(name, 'a', n);
    name[n] = '\0';
  }
}

static cuoptimStatus_t op_add_variable(Model *m, Input *in) {
  if (m->num_vars == MAX_VARS) return CUOPTIM_STATUS_SUCCESS;
  char name[CUOPTIM_MAX_NAME];
  read_variable_name(in, name);
  unsigned d = take(in) % 5;
  cuoptimDtype_t dtype = d < 3 ? (cuoptimDtype_t)d : (cuoptimDtype_t)(d == 3 ? 3 : -1);
  size_t count = COUNTS[take(in) % COUNT_OF(COUNTS)];
  size_t stored = count >= 1 && count <= MAX_ELEMENTS ? count : 1; /* a buffer even for counts refused */
  unsigned char *param = calloc(stored, 4);
  if (param == NULL) abort();
  if (d < 3) fill_values(in, m->tame, dtype, stored, param);

  size_t length = strlen(name);
  int duplicate = 0;
  for (int v = 0; v < m->num_vars; v++) duplicate |= strcmp(m->vars[v].name, name) == 0;
  int bad = length == 0 || length >= CUOPTIM_MAX_NAME || d >= 3 || count == 0 || count > ((size_t)1 << 40) ||
            duplicate;
  unsigned allowed = bad ? S(INVALID_VALUE) : S(SUCCESS);
  /* A name the exclusion search cannot answer within its limits is refused. */
  if (!bad && model_uses_weight_decay(m, name) < 0) allowed = S(INVALID_VALUE);
  if (m->built) allowed = S(INVALID_STATE) | (bad ? S(INVALID_VALUE) : 0);

  cuoptimVariable_t index = -1;
  cuoptimStatus_t st = cuoptimAddVariable(m->opt, name, param, dtype, count, &index);
  fuzz_check_status("cuoptimAddVariable", st, allowed);
  if (st != CUOPTIM_STATUS_SUCCESS) {
    free(param);
    return st;
  }
  if (index != m->num_vars) fuzz_fail("cuoptimAddVariable returned index %d for variable %d", (int)index, m->num_vars);
  Var *var = &m->vars[m->num_vars++];
  memcpy(var->name, name, length + 1);
  var->dtype = dtype;
  var->count = count;
  var->param = param;
  int uses = -1;
  must_succeed("cuoptimUsesWeightDecay", cuoptimUsesWeightDecay(m->opt, index, &uses));
  if (uses != model_uses_weight_decay(m, name)) fuzz_fail("new variable \"%s\": uses weight decay %d", name, uses);
  return st;
}

static cuoptimStatus_t op_exclude(Model *m, Input *in) {
  if (m->num_patterns == MAX_PATTERNS) return CUOPTIM_STATUS_SUCCESS;
  char pattern[32];
  unsigned b = take(in);
  if (b < 128) {
    static const char *const PATTERNS[] = {"bias$", "^embedding", "gamma", "kernel", "(", "a{2", "[[:alpha:]]+", ""};
    strcpy(pattern, PATTERNS[b % 8]);
  } else {
    read_name(in, pattern, 21);
  }
  int repeated = 0;
  for (int k = 0; k < m->num_patterns; k++) repeated |= strcmp(m->patterns[k], pattern) == 0;
  /* Keras refuses exclusions once the optimizer is built; a bad pattern or a search that meets a
   * limit is INVALID_VALUE; a pattern given again changes nothing. */
  unsigned allowed = m->built ? S(INVALID_STATE) : repeated ? S(SUCCESS) : S(SUCCESS) | S(INVALID_VALUE);
  cuoptimStatus_t st = cuoptimExcludeFromWeightDecay(m->opt, pattern);
  fuzz_check_status("cuoptimExcludeFromWeightDecay", st, allowed);
  if (st != CUOPTIM_STATUS_SUCCESS || repeated) return st;
  strcpy(m->patterns[m->num_patterns++], pattern);
  for (int v = 0; v < m->num_vars; v++) {
    int uses = -1;
    must_succeed("cuoptimUsesWeightDecay", cuoptimUsesWeightDecay(m->opt, v, &uses));
    if (uses != model_uses_weight_decay(m, m->vars[v].name))
      fuzz_fail("after excluding \"%s\": \"%s\" uses weight decay %d", pattern, m->vars[v].name, uses);
  }
  return st;
}

/* Reads a gradient list into grads/buffers; returns the status cuoptimApplyGradients must give. */
static unsigned read_gradients(const Model *m, Input *in, int n, cuoptimGradient_t *grads, unsigned char **buffers) {
  if (n < 0 || m->num_vars == 0) return n == 0 ? S(SUCCESS) : S(INVALID_VALUE);
  int bad = 0, given = 0, listed[MAX_VARS] = {0};
  for (int k = 0; k < n; k++) {
    unsigned b = take(in);
    int v = b < 240 ? (int)(b % (unsigned)m->num_vars) : (b & 1) ? -1 : m->num_vars;
    unsigned t = take(in);
    cuoptimDtype_t dtype = t < 250 ? (cuoptimDtype_t)(t % 3) : (cuoptimDtype_t)7;
    int valid_var = v >= 0 && v < m->num_vars;
    bad |= !valid_var || t >= 250 || (valid_var && listed[v]++);
    grads[k].variable = v;
    grads[k].dtype = dtype;
    grads[k].grad = NULL;
    buffers[k] = NULL;
    if (take(in) % 4 == 0) continue; /* no gradient */
    size_t count = valid_var ? m->vars[v].count : 1;
    buffers[k] = calloc(count, 4);
    if (buffers[k] == NULL) abort();
    fill_values(in, m->tame, t < 250 ? dtype : CUOPTIM_FLOAT32, count, buffers[k]);
    grads[k].grad = buffers[k];
    given++;
  }
  return n == 0 ? S(SUCCESS) : (bad || given == 0) ? S(INVALID_VALUE) : S(SUCCESS);
}

static void after_step(Model *m, const Snapshot *before, const char *call) {
  int64_t iterations = 0;
  must_succeed("cuoptimGetIterations", cuoptimGetIterations(m->opt, &iterations));
  if (iterations < before->iterations || iterations > before->iterations + 1)
    fuzz_fail("%s moved iterations from %lld to %lld", call, (long long)before->iterations, (long long)iterations);
  m->built = 1;
  if (m->tame) check_finite(m, call);
}

static cuoptimStatus_t op_apply(Model *m, Input *in, const Snapshot *before) {
  unsigned b = take(in);
  int n = b == 255 ? -1 : (int)(b % (unsigned)(m->num_vars + 2));
  cuoptimGradient_t grads[MAX_VARS + 2] = {{0}};
  unsigned char *buffers[MAX_VARS + 2] = {NULL};
  unsigned allowed = read_gradients(m, in, n, grads, buffers);
  cuoptimStatus_t st = cuoptimApplyGradients(m->opt, n, grads, NULL);
  fuzz_check_status("cuoptimApplyGradients", st, allowed);
  if (st == CUOPTIM_STATUS_SUCCESS && n > 0) after_step(m, before, "cuoptimApplyGradients");
  for (int k = 0; k < n; k++) free(buffers[k]);
  return st;
}

typedef struct {
  int mode;
  cuoptimStatus_t status;
  int n;
  const cuoptimGradient_t *grads;
} Callback;

static cuoptimStatus_t gradient_fn(void *user, cuoptimOptimizer_t opt, cuoptimStream_t stream, int *n,
                                   const cuoptimGradient_t **grads) {
  const Callback *cb = user;
  if (cb->mode == 0) return cb->status;
  if (cb->mode == 2) {
    *n = cb->n;
    *grads = cb->grads;
  }
  return CUOPTIM_STATUS_SUCCESS; /* mode 1 leaves *n unset */
}

static cuoptimStatus_t op_minimize(Model *m, Input *in, const Snapshot *before) {
  Callback cb = {(int)(take(in) % 3), (cuoptimStatus_t)(1 + take(in) % 12), 0, NULL};
  cuoptimGradient_t grads[MAX_VARS + 2] = {{0}};
  unsigned char *buffers[MAX_VARS + 2] = {NULL};
  unsigned allowed = cb.mode == 0 ? FUZZ_ST(cb.status) : S(INVALID_VALUE);
  if (cb.mode == 2) {
    cb.n = (int)(take(in) % (unsigned)(m->num_vars + 2));
    allowed = read_gradients(m, in, cb.n, grads, buffers);
    cb.grads = grads;
  }
  cuoptimStatus_t st = cuoptimMinimize(m->opt, gradient_fn, &cb, NULL);
  if (cb.mode == 0 && st == cb.status) {
    /* The callback's status comes back as it is: its message is the callback's business. */
  } else {
    /* cuoptimMinimize applies through cuoptimApplyGradients (its contract): either name will do. */
    int applied = strstr(cuoptimGetLastErrorMessage(), "cuoptimApplyGradients") != NULL;
    fuzz_check_status(applied ? "cuoptimApplyGradients" : "cuoptimMinimize", st, allowed);
  }
  if (st == CUOPTIM_STATUS_SUCCESS && cb.n > 0) after_step(m, before, "cuoptimMinimize");
  for (int k = 0; k < cb.n; k++) free(buffers[k]);
  return st;
}

/* A weight index: mostly valid ones once built. */
static int read_weight_index(Input *in, int num_weights) {
  unsigned b = take(in);
  if (b >= 240) return (b & 1) ? -1 : num_weights;
  return num_weights > 0 ? (int)(b % (unsigned)num_weights) : (int)(b % 4);
}

static cuoptimStatus_t op_weights(Model *m, Input *in, const Snapshot *before, int set) {
  int index = read_weight_index(in, before->num_weights);
  int known = m->built && index >= 0 && index < before->num_weights;
  size_t count = known && take(in) < 224 ? before->info[index].count : take(in) % (MAX_ELEMENTS + 2);
  double values[MAX_ELEMENTS + 2];
  if (set && m->tame && !known) return CUOPTIM_STATUS_SUCCESS; /* tame mode sets only what it read */
  for (size_t i = 0; i < count; i++)
    values[i] = !set ? NAN : !m->tame ? wild_double(in) : i < MAX_ELEMENTS ? before->weights[index][i] : 0.0;
  unsigned allowed = S(SUCCESS) | S(INVALID_VALUE);
  if (m->built && (!known || count != before->info[index].count)) allowed = S(INVALID_VALUE);
  if (m->built && known && count == before->info[index].count && !set) allowed = S(SUCCESS);
  const char *call = set ? "cuoptimSetWeights" : "cuoptimGetWeights";
  cuoptimStatus_t st = set ? cuoptimSetWeights(m->opt, index, values, count)
                           : cuoptimGetWeights(m->opt, index, values, count);
  fuzz_check_status(call, st, allowed);
  if (st != CUOPTIM_STATUS_SUCCESS) return st;
  m->built = 1;
  if (set) { /* what was set reads back, rounded to float32 */
    cuoptimWeightInfo_t info;
    double got[MAX_ELEMENTS + 2];
    must_succeed("cuoptimGetWeightInfo", cuoptimGetWeightInfo(m->opt, index, &info));
    must_succeed("cuoptimGetWeights", cuoptimGetWeights(m->opt, index, got, count));
    for (size_t i = 0; i < count; i++) {
      double want = info.is_integer ? values[i] : (double)(float)values[i];
      if (!(got[i] == want || (isnan(got[i]) && isnan(want))))
        fuzz_fail("cuoptimSetWeights(%s[%zu] = %.17g) reads back %.17g", info.name, i, values[i], got[i]);
    }
    if (m->tame) check_finite(m, call);
  }
  return st;
}

static cuoptimStatus_t op_weight_info(Model *m, Input *in, const Snapshot *before) {
  int index = read_weight_index(in, before->num_weights);
  cuoptimWeightInfo_t info;
  unsigned allowed = S(SUCCESS) | S(INVALID_VALUE);
  if (m->built) allowed = index >= 0 && index < before->num_weights ? S(SUCCESS) : S(INVALID_VALUE);
  cuoptimStatus_t st = cuoptimGetWeightInfo(m->opt, index, &info);
  fuzz_check_status("cuoptimGetWeightInfo", st, allowed);
  if (st == CUOPTIM_STATUS_SUCCESS) m->built = 1;
  return st;
}

static cuoptimStatus_t op_learning_rate(Model *m, Input *in) {
  double lr = m->tame ? TAME_LEARNING_RATES[take(in) % COUNT_OF(TAME_LEARNING_RATES)] : wild_double(in);
  unsigned allowed = 0;
  if (!isfinite((float)lr)) allowed |= S(INVALID_VALUE); /* the step computes in float32 */
  if (m->config.learning_rate.kind != CUOPTIM_SCHEDULE_CONSTANT) allowed |= S(INVALID_STATE);
  cuoptimStatus_t st = cuoptimSetLearningRate(m->opt, lr);
  fuzz_check_status("cuoptimSetLearningRate", st, allowed ? allowed : S(SUCCESS));
  if (st != CUOPTIM_STATUS_SUCCESS) return st;
  float got = NAN;
  must_succeed("cuoptimGetLearningRate", cuoptimGetLearningRate(m->opt, &got));
  if (!(got == (float)lr || (isnan(got) && isnan((float)lr))))
    fuzz_fail("cuoptimSetLearningRate(%.17g), then cuoptimGetLearningRate gives %.9g", lr, (double)got);
  return st;
}

static cuoptimStatus_t op_queries(Model *m, Input *in) {
  int count = -1, uses = -1;
  float scale = 0;
  must_succeed("cuoptimGetVariableCount", cuoptimGetVariableCount(m->opt, &count));
  if (count != m->num_vars) fuzz_fail("cuoptimGetVariableCount = %d, %d were added", count, m->num_vars);
  cuoptimStatus_t st = cuoptimGetLossScale(m->opt, &scale);
  fuzz_check_status("cuoptimGetLossScale", st, m->config.dynamic_loss_scale ? S(SUCCESS) : S(INVALID_STATE));
  int v = (int)(take(in) % (unsigned)(m->num_vars + 1)) - (take(in) & 1);
  int valid = v >= 0 && v < m->num_vars;
  st = cuoptimUsesWeightDecay(m->opt, v, &uses);
  fuzz_check_status("cuoptimUsesWeightDecay", st, valid ? S(SUCCESS) : S(INVALID_VALUE));
  if (valid && uses != model_uses_weight_decay(m, m->vars[v].name))
    fuzz_fail("\"%s\": uses weight decay %d", m->vars[v].name, uses);
  return st;
}

static cuoptimStatus_t op_finalize(Model *m) {
  cuoptimStatus_t st = cuoptimFinalizeVariableValues(m->opt, NULL);
  must_succeed("cuoptimFinalizeVariableValues", st);
  if (m->config.use_ema && m->num_vars > 0) {
    m->built = 1;
    if (m->tame) check_finite(m, "cuoptimFinalizeVariableValues");
  }
  return st;
}

static cuoptimStatus_t op_weight_count(Model *m) {
  int count = -1;
  cuoptimStatus_t st = cuoptimGetWeightCount(m->opt, &count);
  must_succeed("cuoptimGetWeightCount", st);
  m->built = 1;
  return st;
}

/* One call with a NULL where the contract requires a pointer: NULL_POINTER, nothing changes. */
static cuoptimStatus_t op_null_argument(Model *m, Input *in) {
  cuoptimOptimizer_t o = m->opt;
  float f;
  double d[1];
  int i;
  int64_t n;
  cuoptimVariable_t v;
  cuoptimWeightInfo_t info;
  cuoptimConfig_t config;
  unsigned char buffer[4] = {0};
  unsigned allowed = S(NULL_POINTER);
  cuoptimStatus_t st;
  const char *call;
  switch (take(in) % 18) {
    case 0: call = "cuoptimAddVariable", st = cuoptimAddVariable(o, NULL, buffer, CUOPTIM_FLOAT32, 1, &v); break;
    case 1: call = "cuoptimAddVariable", st = cuoptimAddVariable(o, "p", NULL, CUOPTIM_FLOAT32, 1, &v); break;
    case 2: call = "cuoptimAddVariable", st = cuoptimAddVariable(o, "p", buffer, CUOPTIM_FLOAT32, 1, NULL); break;
    case 3: call = "cuoptimGetVariableCount", st = cuoptimGetVariableCount(o, NULL); break;
    case 4: call = "cuoptimExcludeFromWeightDecay", st = cuoptimExcludeFromWeightDecay(o, NULL); break;
    case 5: call = "cuoptimUsesWeightDecay", st = cuoptimUsesWeightDecay(o, 0, NULL); break;
    case 6: call = "cuoptimApplyGradients", st = cuoptimApplyGradients(o, 1, NULL, NULL); break;
    case 7: call = "cuoptimGetIterations", st = cuoptimGetIterations(o, NULL); break;
    case 8: call = "cuoptimGetLearningRate", st = cuoptimGetLearningRate(o, NULL); break;
    case 9:
      call = "cuoptimGetLossScale", st = cuoptimGetLossScale(o, NULL);
      if (!m->config.dynamic_loss_scale) allowed |= S(INVALID_STATE);
      break;
    case 10: call = "cuoptimGetWeightCount", st = cuoptimGetWeightCount(o, NULL); break;
    case 11: call = "cuoptimGetWeightInfo", st = cuoptimGetWeightInfo(o, 0, NULL); break;
    case 12: call = "cuoptimGetWeights", st = cuoptimGetWeights(o, 0, NULL, 1); break;
    case 13: call = "cuoptimSetWeights", st = cuoptimSetWeights(o, 0, NULL, 1); break;
    case 14: call = "cuoptimGetConfig", st = cuoptimGetConfig(o, NULL); break;
    case 15: call = "cuoptimMinimize", st = cuoptimMinimize(o, NULL, NULL, NULL); break;
    case 16: /* every call on a NULL optimizer */
      call = "a call on a NULL optimizer";
      st = cuoptimGetIterations(NULL, &n);
      if (st == CUOPTIM_STATUS_NULL_POINTER) st = cuoptimGetConfig(NULL, &config);
      if (st == CUOPTIM_STATUS_NULL_POINTER) st = cuoptimGetWeightInfo(NULL, 0, &info);
      if (st == CUOPTIM_STATUS_NULL_POINTER) st = cuoptimGetWeights(NULL, 0, d, 1);
      if (st == CUOPTIM_STATUS_NULL_POINTER) st = cuoptimSetLearningRate(NULL, 0.1);
      if (st == CUOPTIM_STATUS_NULL_POINTER) st = cuoptimGetLearningRate(NULL, &f);
      if (st == CUOPTIM_STATUS_NULL_POINTER) st = cuoptimGetWeightCount(NULL, &i);
      if (st == CUOPTIM_STATUS_NULL_POINTER) st = cuoptimSynchronize(NULL);
      if (st == CUOPTIM_STATUS_NULL_POINTER) st = cuoptimFinalizeVariableValues(NULL, NULL);
      if (st == CUOPTIM_STATUS_NULL_POINTER) st = cuoptimAddVariable(NULL, "p", buffer, CUOPTIM_FLOAT32, 1, &v);
      if (st == CUOPTIM_STATUS_NULL_POINTER && cuoptimDestroy(NULL) != CUOPTIM_STATUS_SUCCESS)
        fuzz_fail("cuoptimDestroy(NULL) is not a no-op");
      if (st != CUOPTIM_STATUS_NULL_POINTER) fuzz_fail("%s returned %s", call, cuoptimGetStatusString(st));
      return st;
    default: call = "cuoptimCreate", st = cuoptimCreate(NULL, &m->config, CUOPTIM_BACKEND_HOST, 0); break;
  }
  fuzz_check_status(call, st, allowed);
  return st;
}

enum op {
  OP_ADD_VARIABLE, OP_EXCLUDE, OP_APPLY, OP_MINIMIZE, OP_GET_WEIGHTS, OP_SET_WEIGHTS, OP_WEIGHT_INFO,
  OP_WEIGHT_COUNT, OP_LEARNING_RATE, OP_QUERIES, OP_FINALIZE, OP_NULL_ARGUMENT, OP_COUNT
};
static const char *const OP_NAMES[OP_COUNT] = {
    "cuoptimAddVariable", "cuoptimExcludeFromWeightDecay", "cuoptimApplyGradients", "cuoptimMinimize",
    "cuoptimGetWeights", "cuoptimSetWeights", "cuoptimGetWeightInfo", "cuoptimGetWeightCount",
    "cuoptimSetLearningRate", "queries", "cuoptimFinalizeVariableValues", "a call with a NULL argument"};

static cuoptimStatus_t run_op(Model *m, Input *in, const Snapshot *before, enum op op) {
  switch (op) {
    case OP_ADD_VARIABLE: return op_add_variable(m, in);
    case OP_EXCLUDE: return op_exclude(m, in);
    case OP_APPLY: return op_apply(m, in, before);
    case OP_MINIMIZE: return op_minimize(m, in, before);
    case OP_GET_WEIGHTS: return op_weights(m, in, before, 0);
    case OP_SET_WEIGHTS: return op_weights(m, in, before, 1);
    case OP_WEIGHT_INFO: return op_weight_info(m, in, before);
    case OP_WEIGHT_COUNT: return op_weight_count(m);
    case OP_LEARNING_RATE: return op_learning_rate(m, in);
    case OP_QUERIES: return op_queries(m, in);
    case OP_FINALIZE: return op_finalize(m);
    default: return op_null_argument(m, in);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  Input in = {data, size};
  static Model m; /* large; one input at a time */
  memset(&m, 0, sizeof m);
  m.tame = take(&in) & 1;
  read_config(&in, m.tame, &m.config);

  cuoptimStatus_t valid = cuoptimConfigValidate(&m.config);
  fuzz_check_status("cuoptimConfigValidate", valid, S(SUCCESS) | S(INVALID_VALUE));
  cuoptimStatus_t st = cuoptimCreate(&m.opt, &m.config, CUOPTIM_BACKEND_HOST, 0);
  fuzz_check_status("cuoptimCreate", st, FUZZ_ST(valid));
  if (st != CUOPTIM_STATUS_SUCCESS) return 0;
  fuzz_check_json_round_trip(&m.config, 0);

  static Snapshot before;
  for (int k = 0; k < MAX_OPS && in.n > 0; k++) {
    take_snapshot(&m, &before);
    enum op op = (enum op)(take(&in) % OP_COUNT);
    if (run_op(&m, &in, &before, op) != CUOPTIM_STATUS_SUCCESS) check_unchanged(&m, &before, OP_NAMES[op]);
  }

  must_succeed("cuoptimDestroy", cuoptimDestroy(m.opt));
  for (int v = 0; v < m.num_vars; v++) free(m.vars[v].param);
  return 0;
}
