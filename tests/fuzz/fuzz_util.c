/* What the fuzz targets share (fuzz_util.h). */
#include "fuzz_util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fuzz_fail(const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  fprintf(stderr, "property failed: ");
  vfprintf(stderr, fmt, args);
  fprintf(stderr, "\n");
  va_end(args);
  abort();
}

void fuzz_check_status(const char *call, cuoptimStatus_t status, unsigned allowed) {
  if ((unsigned)status >= 32 || !(allowed & FUZZ_ST(status)))
    fuzz_fail("%s returned %d (%s), not a status its contract allows here; message: %s", call, (int)status,
              cuoptimGetStatusString(status), cuoptimGetLastErrorMessage());
  if (status != CUOPTIM_STATUS_SUCCESS && strstr(cuoptimGetLastErrorMessage(), call) == NULL)
    fuzz_fail("%s failed (%s) with a message that does not name it: \"%s\"", call, cuoptimGetStatusString(status),
              cuoptimGetLastErrorMessage());
}

/* ---- comparing configs ------------------------------------------------------------------------ */

/* The name Keras gives a schedule constructed without one (what "" is written as). */
static const char *schedule_default_name(cuoptimScheduleKind_t kind) {
  switch (kind) {
    case CUOPTIM_SCHEDULE_EXPONENTIAL: return "ExponentialDecay";
    case CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT: return "PiecewiseConstant";
    case CUOPTIM_SCHEDULE_POLYNOMIAL: return "PolynomialDecay";
    case CUOPTIM_SCHEDULE_INVERSE_TIME: return "InverseTimeDecay";
    case CUOPTIM_SCHEDULE_COSINE: return "CosineDecay";
    case CUOPTIM_SCHEDULE_COSINE_RESTARTS: return "SGDRDecay";
    default: return "";
  }
}

static int same_number(double a, double b) { return a == b || (isnan(a) && isnan(b)); }

static int names_differ(const char *a, const char *b, const char *default_name, int as_written) {
  if (memchr(a, '\0', CUOPTIM_MAX_NAME) == NULL || memchr(b, '\0', CUOPTIM_MAX_NAME) == NULL) return 1;
  /* Written, "" reads back as the default name; a valid config's names are UTF-8 and stay as they are. */
  if (as_written && a[0] == '\0') a = default_name;
  return strcmp(a, b) != 0;
}

#define DIFFER(what)                              \
  do {                                            \
    snprintf(why, why_size, "%s differs", what);  \
    return 0;                                     \
  } while (0)
#define SAME_NUMBER(field) \
  if (!same_number(a->field, b->field)) DIFFER(#field)
#define SAME_INT(field) \
  if (a->field != b->field) DIFFER(#field)

static int schedules_equal(const cuoptimSchedule_t *a, const cuoptimSchedule_t *b, int as_written, char *why,
                           size_t why_size) {
  SAME_INT(kind);
  SAME_NUMBER(initial_learning_rate);
  SAME_NUMBER(decay_steps);
  SAME_NUMBER(decay_rate);
  SAME_INT(staircase);
  SAME_NUMBER(end_learning_rate);
  SAME_NUMBER(power);
  SAME_INT(cycle);
  SAME_NUMBER(alpha);
  SAME_NUMBER(warmup_target);
  SAME_NUMBER(warmup_steps);
  SAME_NUMBER(t_mul);
  SAME_NUMBER(m_mul);
  if (a->kind == CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT) {
    SAME_INT(num_boundaries);
    if (a->num_boundaries < 0 || a->num_boundaries > CUOPTIM_MAX_BOUNDARIES) DIFFER("num_boundaries (out of range)");
    for (int i = 0; i < a->num_boundaries; i++) SAME_NUMBER(boundaries[i]);
    for (int i = 0; i <= a->num_boundaries; i++) SAME_NUMBER(values[i]);
  }
  if (a->kind != CUOPTIM_SCHEDULE_CONSTANT && names_differ(a->name, b->name, schedule_default_name(a->kind), as_written))
    DIFFER("learning_rate.name");
  return 1;
}

/* Every field is listed below; a new one must be added there (and here). */
_Static_assert(sizeof(cuoptimConfig_t) == 2888 || sizeof(void *) != 8,
               "cuoptimConfig_t changed: compare the new fields in fuzz_configs_equal");

static int muon_fields_equal(const cuoptimConfig_t *a, const cuoptimConfig_t *b, char *why, size_t why_size) {
  SAME_NUMBER(adam_beta_1);
  SAME_NUMBER(adam_beta_2);
  SAME_NUMBER(adam_weight_decay);
  SAME_NUMBER(adam_lr_ratio);
  SAME_NUMBER(muon_a);
  SAME_NUMBER(muon_b);
  SAME_NUMBER(muon_c);
  SAME_INT(ns_steps);
  SAME_NUMBER(rms_rate);
  SAME_INT(exclude_embeddings);
  SAME_INT(num_exclude_layers);
  for (int i = 0; i < a->num_exclude_layers && i < CUOPTIM_MAX_EXCLUDE_LAYERS; i++)
    if (strncmp(a->exclude_layers[i], b->exclude_layers[i], CUOPTIM_MAX_NAME) != 0) DIFFER("exclude_layers");
  return 1;
}

int fuzz_configs_equal(const cuoptimConfig_t *a, const cuoptimConfig_t *b, int as_written, char *why,
                       size_t why_size) {
  SAME_INT(kind);
  if (!cuoptimOptimizerName(a->kind)) DIFFER("kind (not a kind)");
  cuoptimConfig_t defaults;
  cuoptimConfigInit(&defaults, a->kind);
  if (names_differ(a->name, b->name, defaults.name, as_written)) DIFFER("name");
  if (!schedules_equal(&a->learning_rate, &b->learning_rate, as_written, why, why_size)) return 0;
  SAME_NUMBER(weight_decay);
  SAME_NUMBER(clipnorm);
  SAME_NUMBER(clipvalue);
  SAME_NUMBER(global_clipnorm);
  SAME_INT(use_ema);
  SAME_NUMBER(ema_momentum);
  SAME_INT(ema_overwrite_frequency);
  SAME_NUMBER(loss_scale_factor);
  SAME_INT(gradient_accumulation_steps);
  SAME_NUMBER(beta_1);
  SAME_NUMBER(beta_2);
  SAME_NUMBER(epsilon);
  SAME_NUMBER(warmup_steps);
  SAME_NUMBER(rho);
  SAME_NUMBER(momentum);
  SAME_INT(nesterov);
  SAME_INT(centered);
  SAME_INT(amsgrad);
  SAME_NUMBER(initial_accumulator_value);
  SAME_NUMBER(learning_rate_power);
  SAME_NUMBER(l1_regularization_strength);
  SAME_NUMBER(l2_regularization_strength);
  SAME_NUMBER(l2_shrinkage_regularization_strength);
  SAME_NUMBER(beta);
  /* Muon's fields travel in its JSON only. */
  if (a->kind == CUOPTIM_MUON && !muon_fields_equal(a, b, why, why_size)) return 0;
  SAME_NUMBER(beta_2_decay);
  SAME_NUMBER(epsilon_1);
  SAME_NUMBER(epsilon_2);
  SAME_NUMBER(clip_threshold);
  SAME_INT(relative_step);
  SAME_INT(dynamic_loss_scale);
  SAME_NUMBER(initial_scale);
  SAME_INT(dynamic_growth_steps);
  if (a->dynamic_loss_scale && names_differ(a->loss_scale_name, b->loss_scale_name, "loss_scale_optimizer", as_written))
    DIFFER("loss_scale_name");
  return 1;
}

/* ---- the JSON round trip ---------------------------------------------------------------------- */

/* The text of a valid config, after checking the writer's buffer contract. malloc'ed. */
static char *write_json(const cuoptimConfig_t *config) {
  size_t need = 0;
  cuoptimStatus_t st = cuoptimConfigToKerasJSON(config, NULL, 0, &need);
  if (st != CUOPTIM_STATUS_INVALID_VALUE || need == 0)
    fuzz_fail("cuoptimConfigToKerasJSON(buffer NULL) returned %s with length %zu", cuoptimGetStatusString(st), need);
  char *text = malloc(need + 1);
  if (text == NULL) abort();
  memset(text, 0x5a, need + 1);
  size_t length = 0;
  st = cuoptimConfigToKerasJSON(config, text, need, &length);
  for (size_t i = 0; i <= need; i++)
    if ((unsigned char)text[i] != 0x5a) fuzz_fail("cuoptimConfigToKerasJSON wrote into a buffer one byte short");
  if (st != CUOPTIM_STATUS_INVALID_VALUE || length != need)
    fuzz_fail("cuoptimConfigToKerasJSON(capacity %zu) returned %s, length %zu", need, cuoptimGetStatusString(st), length);
  st = cuoptimConfigToKerasJSON(config, text, need + 1, &length);
  if (st != CUOPTIM_STATUS_SUCCESS || length != need || strlen(text) != need)
    fuzz_fail("cuoptimConfigToKerasJSON(capacity %zu) returned %s, length %zu, strlen %zu", need + 1,
              cuoptimGetStatusString(st), length, strlen(text));
  for (size_t i = 0; i < need; i++)
    if (text[i] < 0x20 || text[i] > 0x7e) fuzz_fail("byte %zu of the JSON text is 0x%02x, not printable ASCII", i, (unsigned char)text[i]);
  return text;
}

void fuzz_check_json_round_trip(const cuoptimConfig_t *config, int compare_fields) {
  char *text = write_json(config);
  cuoptimConfig_t back;
  memset(&back, 0xa5, sizeof back);
  cuoptimStatus_t st = cuoptimConfigFromKerasJSON(&back, text);
  if (st != CUOPTIM_STATUS_SUCCESS)
    fuzz_fail("the written JSON does not read back: %s (%s)\ntext: %s", cuoptimGetLastErrorMessage(),
              cuoptimGetStatusString(st), text);
  char why[128];
  if (compare_fields && !fuzz_configs_equal(config, &back, 1, why, sizeof why))
    fuzz_fail("the config read back from its JSON differs: %s\ntext: %s", why, text);
  char *again = write_json(&back);
  if (strcmp(text, again) != 0)
    fuzz_fail("writing the config read back gives another text:\n%s\n%s", text, again);
  free(again);
  free(text);
}
