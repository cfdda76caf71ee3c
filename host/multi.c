/*
 * multi.c — keras.optimizers.MultiOptimizer with an OptimizerMap (cuoptim.h, "MultiOptimizer").
 *
 * A MultiOptimizer handle owns one plain optimizer per sub-optimizer; each variable is registered
 * on the sub-optimizer its name selects (exact key, else re.fullmatch over the keys, else the
 * default), and a step is one cuoptimApplyGradients per sub-optimizer that received gradients,
 * so each keeps its own fused stages. The MultiOptimizer's own state (Keras's `iteration` and the
 * unused `learning_rate` 0.0) lives on the host.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "multi.h"

#define MULTI_DEFAULT_NAME "multi_optimizer"
#define CREATE_MULTI "cuoptimCreateMulti"
#define FROM_JSON "cuoptimCreateFromKerasJSON"

/* ---- refusals --------------------------------------------------------------------------------- */

typedef struct {
  const char *call;
  const char *why;
} refusal;

static const refusal REFUSALS[] = {
    {"cuoptimGetLearningRate", "a MultiOptimizer has no learning rate (Keras raises AttributeError); ask a "
                               "sub-optimizer (cuoptimGetSubOptimizer)"},
    {"cuoptimSetLearningRate", "a MultiOptimizer has no learning rate (Keras raises AttributeError); set a "
                               "sub-optimizer's (cuoptimGetSubOptimizer)"},
    {"cuoptimGetConfig", "a MultiOptimizer has no single config; ask a sub-optimizer (cuoptimGetSubOptimizer) "
                         "or write its Keras JSON (cuoptimToKerasJSON)"},
    {"cuoptimExcludeFromWeightDecay", "exclusions belong to a sub-optimizer: call it on cuoptimGetSubOptimizer's "
                                      "handle before the first step"},
    {"cuoptimScheduleFreeAveragedWeights", "ask the ScheduleFreeAdamW sub-optimizer (cuoptimGetSubOptimizer) with "
                                           "the variable's index there (cuoptimGetVariableOptimizer)"},
};

cuoptimStatus_t cuoptim_multi_refuse(const char *caller) {
  for (size_t i = 0; i < sizeof REFUSALS / sizeof REFUSALS[0]; i++)
    if (strcmp(REFUSALS[i].call, caller) == 0)
      return cuoptim_error(CUOPTIM_STATUS_NOT_SUPPORTED, "%s: optimizer is a MultiOptimizer: %s", caller,
                           REFUSALS[i].why);
  return cuoptim_error(CUOPTIM_STATUS_NOT_SUPPORTED, "%s: optimizer is a MultiOptimizer: not supported for it", caller);
}

int cuoptim_multi_may_add(const struct cuoptimOptimizer *opt) {
  return opt->parent == NULL || opt->parent->multi->adding;
}

/* ---- creation --------------------------------------------------------------------------------- */

/* Python's global inline flags at the start of `p` ("(?i)", "(?ai)", ...): their length. */
static size_t leading_global_flags(const char *p, int *verbose) {
  size_t n = 0;
  *verbose = 0;
  while (p[n] == '(' && p[n + 1] == '?') {
    size_t k = n + 2;
    while (p[k] != '\0' && strchr("aiLmsux", p[k]) != NULL) {
      if (p[k] == 'x') *verbose = 1;
      k++;
    }
    if (k == n + 2 || p[k] != ')') break;
    n = k + 1;
  }
  return n;
}

/* re.fullmatch(p, s) as re.search(r"\A(?:p)\Z", s); global flags stay first, where Python wants
 * them; under (?x) a newline ends a comment the pattern may end in. */
static cuoptimStatus_t compile_fullmatch(const char *pattern, int index, const char *caller, cuoptimPattern **out) {
  int verbose = 0;
  size_t flags = leading_global_flags(pattern, &verbose);
  size_t length = strlen(pattern);
  char *wrapped = malloc(length + 16);
  if (!wrapped) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  snprintf(wrapped, length + 16, "%.*s\\A(?:%s%s)\\Z", (int)flags, pattern, pattern + flags, verbose ? "\n" : "");
  char why[256] = "";
  long position = -1;
  cuoptimStatus_t status = cuoptim_pattern_compile(wrapped, out, why, sizeof why, &position);
  free(wrapped);
  if (status == CUOPTIM_STATUS_INVALID_VALUE)
    return cuoptim_error(status, "%s: config->patterns[%d] = \"%.64s\": %s", caller, index, pattern, why);
  if (status != CUOPTIM_STATUS_SUCCESS)
    return cuoptim_error(status, "%s: compiling config->patterns[%d]: %s", caller, index, why);
  return CUOPTIM_STATUS_SUCCESS;
}

/* Keras's `optimizers` order: each sub-optimizer at its first use by a key, the default after. */
static cuoptimStatus_t check_order(const cuoptimMultiConfig_t *config, const char *caller) {
  int next = 0;
  for (int i = 0; i <= config->num_patterns; i++) {
    int used = i < config->num_patterns ? config->pattern_optimizer[i] : config->default_optimizer;
    const char *what = i < config->num_patterns ? "config->pattern_optimizer" : "config->default_optimizer";
    if (used < 0 || used >= config->num_optimizers)
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: %s%s%.0d = %d: must be in [0, num_optimizers = %d)",
                           caller, what, i < config->num_patterns ? "[i], i = " : "", i, used, config->num_optimizers);
    if (used > next)
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                           "%s: %s uses sub-optimizer %d before sub-optimizer %d is used: list the sub-optimizers "
                           "in Keras's order (first use by a key, the default last)",
                           caller, what, used, next);
    if (used == next) next++;
  }
  if (next != config->num_optimizers)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "%s: config->optimizers[%d] is used by no pattern and is not the default", caller, next);
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t check_patterns(const cuoptimMultiConfig_t *config, const char *caller) {
  for (int i = 0; i < config->num_patterns; i++) {
    const char *p = config->patterns[i];
    if (p == NULL) return cuoptim_error(CUOPTIM_STATUS_NULL_POINTER, "%s: config->patterns[%d] is NULL", caller, i);
    if (p[0] == '\0')
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: config->patterns[%d] is empty", caller, i);
    if (strlen(p) > 16384)
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: config->patterns[%d]: longer than 16384 bytes", caller,
                           i);
    if (cuoptim_invalid_utf8_offset(p) >= 0)
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: config->patterns[%d]: not valid UTF-8", caller, i);
    for (int j = 0; j < i; j++)
      if (strcmp(config->patterns[j], p) == 0)
        return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                             "%s: config->patterns[%d] = \"%.64s\" repeats config->patterns[%d] (Keras refuses "
                             "duplicated keys)",
                             caller, i, p, j);
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t check_multi_config(const cuoptimMultiConfig_t *config, const char *caller) {
  if (config->num_optimizers < 1 || config->num_optimizers > CUOPTIM_MAX_SUB_OPTIMIZERS)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: config->num_optimizers = %d: must be in [1, %d]", caller,
                         config->num_optimizers, CUOPTIM_MAX_SUB_OPTIMIZERS);
  if (config->optimizers == NULL)
    return cuoptim_error(CUOPTIM_STATUS_NULL_POINTER, "%s: config->optimizers is NULL", caller);
  if (config->num_patterns < 0 || config->num_patterns > CUOPTIM_MAX_PATTERNS)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: config->num_patterns = %d: must be in [0, %d]", caller,
                         config->num_patterns, CUOPTIM_MAX_PATTERNS);
  if (config->num_patterns > 0 && config->patterns == NULL)
    return cuoptim_error(CUOPTIM_STATUS_NULL_POINTER, "%s: config->patterns is NULL", caller);
  if (config->num_patterns > 0 && config->pattern_optimizer == NULL)
    return cuoptim_error(CUOPTIM_STATUS_NULL_POINTER, "%s: config->pattern_optimizer is NULL", caller);
  if (!CUOPTIM_IS_NONE(config->loss_scale_factor) &&
      !(config->loss_scale_factor > 0 && isfinite((float)config->loss_scale_factor) &&
        (float)config->loss_scale_factor > 0))
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "%s: config->loss_scale_factor = %g: must be NONE or > 0 and finite in float32", caller,
                         config->loss_scale_factor);
  if (memchr(config->name, '\0', sizeof config->name) == NULL)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: config->name is not NUL-terminated", caller);
  if (cuoptim_invalid_utf8_offset(config->name) >= 0)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: config->name is not valid UTF-8", caller);
  CUOPTIM_CHECK(check_patterns(config, caller));
  CUOPTIM_CHECK(check_order(config, caller));
  for (int i = 0; i < config->num_optimizers; i++) {
    if (config->optimizers[i].dynamic_loss_scale)
      return cuoptim_error(CUOPTIM_STATUS_NOT_SUPPORTED,
                           "%s: config->optimizers[%d] is a LossScaleOptimizer: it cannot be used inside a "
                           "MultiOptimizer (as Keras)",
                           caller, i);
    cuoptimConfig_t sub = config->optimizers[i];
    sub.loss_scale_factor = config->loss_scale_factor;
    CUOPTIM_CHECK(cuoptim_validate_config(&sub, caller));
  }
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimMultiConfigInit(cuoptimMultiConfig_t *config) {
  CUOPTIM_REQUIRE_NOT_NULL("cuoptimMultiConfigInit", config);
  memset(config, 0, sizeof *config);
  config->loss_scale_factor = CUOPTIM_NONE;
  strcpy(config->name, MULTI_DEFAULT_NAME);
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t allocate_multi(struct cuoptimMulti *m, const cuoptimMultiConfig_t *config, const char *caller) {
  m->num_optimizers = config->num_optimizers;
  m->num_patterns = config->num_patterns;
  m->optimizers = calloc((size_t)m->num_optimizers, sizeof *m->optimizers);
  m->given = calloc((size_t)m->num_optimizers, sizeof *m->given);
  m->non_null = calloc((size_t)m->num_optimizers, sizeof *m->non_null);
  m->patterns = calloc((size_t)m->num_patterns + 1, sizeof *m->patterns);
  m->pattern_optimizer = calloc((size_t)m->num_patterns + 1, sizeof *m->pattern_optimizer);
  m->fullmatch = calloc((size_t)m->num_patterns + 1, sizeof *m->fullmatch);
  if (!m->optimizers || !m->given || !m->non_null || !m->patterns || !m->pattern_optimizer || !m->fullmatch)
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  for (int i = 0; i < m->num_patterns; i++) {
    m->patterns[i] = strdup(config->patterns[i]);
    if (!m->patterns[i]) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
    m->pattern_optimizer[i] = config->pattern_optimizer[i];
    CUOPTIM_CHECK(compile_fullmatch(config->patterns[i], i, caller, &m->fullmatch[i]));
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t create_subs(cuoptimOptimizer_t opt, const cuoptimMultiConfig_t *config, int device) {
  struct cuoptimMulti *m = opt->multi;
  for (int i = 0; i < m->num_optimizers; i++) {
    cuoptimConfig_t sub = config->optimizers[i];
    sub.loss_scale_factor = config->loss_scale_factor;
    CUOPTIM_CHECK(cuoptimCreate(&m->optimizers[i], &sub, opt->backend, device));
    m->optimizers[i]->parent = opt;
  }
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimCreateMulti(cuoptimOptimizer_t *optimizer, const cuoptimMultiConfig_t *config,
                                   cuoptimBackend_t backend, int device) {
  static const char *caller = CREATE_MULTI;
  CUOPTIM_REQUIRE_NOT_NULL(caller, optimizer);
  CUOPTIM_REQUIRE_NOT_NULL(caller, config);
  CUOPTIM_CHECK(check_multi_config(config, caller));
  cuoptimOptimizer_t opt = calloc(1, sizeof *opt);
  struct cuoptimMulti *m = calloc(1, sizeof *m);
  if (!opt || !m) {
    free(opt);
    free(m);
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  }
  opt->multi = m;
  opt->backend = backend;
  opt->device = device;
  snprintf(opt->config.name, sizeof opt->config.name, "%s", config->name[0] ? config->name : MULTI_DEFAULT_NAME);
  m->default_optimizer = config->default_optimizer;
  m->loss_scale_factor = config->loss_scale_factor;
  cuoptimStatus_t status = allocate_multi(m, config, caller);
  if (status == CUOPTIM_STATUS_SUCCESS) status = create_subs(opt, config, device);
  if (status != CUOPTIM_STATUS_SUCCESS) {
    cuoptim_multi_destroy(opt);
    return status;
  }
  *optimizer = opt;
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptim_multi_destroy(cuoptimOptimizer_t opt) {
  struct cuoptimMulti *m = opt->multi;
  cuoptimStatus_t status = CUOPTIM_STATUS_SUCCESS;
  for (int i = 0; m->optimizers && i < m->num_optimizers; i++) {
    if (!m->optimizers[i]) continue;
    m->optimizers[i]->parent = NULL;
    cuoptimStatus_t s = cuoptimDestroy(m->optimizers[i]);
    if (status == CUOPTIM_STATUS_SUCCESS) status = s;
  }
  for (int i = 0; m->patterns && i < m->num_patterns; i++) {
    free(m->patterns[i]);
    if (m->fullmatch) cuoptim_pattern_free(m->fullmatch[i]);
  }
  free(m->optimizers);
  free(m->patterns);
  free(m->pattern_optimizer);
  free(m->fullmatch);
  free(m->given);
  free(m->non_null);
  free(m->routes);
  free(m->listed);
  free(m->scratch);
  free(m);
  free(opt);
  return status;
}

/* ---- variables -------------------------------------------------------------------------------- */

/* OptimizerMap.__getitem__: exact key, else the one key that fullmatches, else the default. */
static cuoptimStatus_t select_optimizer(const struct cuoptimMulti *m, const char *name, const char *caller, int *out) {
  for (int i = 0; i < m->num_patterns; i++)
    if (strcmp(m->patterns[i], name) == 0) {
      *out = m->pattern_optimizer[i];
      return CUOPTIM_STATUS_SUCCESS;
    }
  int match = -1;
  for (int i = 0; i < m->num_patterns; i++) {
    int found = 0;
    char why[256] = "";
    cuoptimStatus_t status = cuoptim_pattern_search(m->fullmatch[i], name, &found, why, sizeof why);
    if (status != CUOPTIM_STATUS_SUCCESS)
      return cuoptim_error(status, "%s: name = \"%.64s\": pattern \"%.64s\": %s", caller, name, m->patterns[i], why);
    if (!found) continue;
    if (match >= 0)
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                           "%s: name = \"%.64s\": multiple optimizers assigned to the variable (patterns \"%.64s\" "
                           "and \"%.64s\" both match)",
                           caller, name, m->patterns[match], m->patterns[i]);
    match = i;
  }
  *out = match >= 0 ? m->pattern_optimizer[match] : m->default_optimizer;
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t grow_routes(struct cuoptimMulti *m, const char *caller) {
  if (m->num_variables < m->capacity) return CUOPTIM_STATUS_SUCCESS;
  int capacity = m->capacity ? m->capacity * 2 : 16;
  multi_route *routes = realloc(m->routes, (size_t)capacity * sizeof *routes);
  if (!routes) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  m->routes = routes;
  uint32_t *listed = realloc(m->listed, (size_t)capacity * sizeof *listed);
  if (!listed) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  m->listed = listed;
  m->capacity = capacity;
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptim_multi_add_variable(cuoptimOptimizer_t opt, const char *name, void *param, cuoptimDtype_t dtype,
                                           int rank, const int64_t *dims, cuoptimVariable_t *variable) {
  static const char *caller = "cuoptimAddVariable";
  struct cuoptimMulti *m = opt->multi;
  CUOPTIM_REQUIRE_NOT_NULL(caller, name);
  CUOPTIM_REQUIRE_NOT_NULL(caller, variable);
  if (m->built)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE,
                         "%s: the MultiOptimizer's state is built (first step or state access): variables can no "
                         "longer be added",
                         caller);
  /* An empty or long name goes to the default, whose own check refuses it with its message. A
   * name is unique across the MultiOptimizer: the same name always selects the same
   * sub-optimizer, which refuses it the second time. */
  int chosen = m->default_optimizer;
  if (name[0] != '\0' && strnlen(name, CUOPTIM_MAX_NAME) < CUOPTIM_MAX_NAME)
    CUOPTIM_CHECK(select_optimizer(m, name, caller, &chosen));
  CUOPTIM_CHECK(grow_routes(m, caller));
  cuoptimVariable_t index = -1;
  m->adding = 1;
  cuoptimStatus_t status =
      cuoptimAddVariableWithShape(m->optimizers[chosen], name, param, dtype, rank, dims, &index);
  m->adding = 0;
  if (status != CUOPTIM_STATUS_SUCCESS) return status;
  m->routes[m->num_variables].optimizer = chosen;
  m->routes[m->num_variables].index = index;
  m->listed[m->num_variables] = 0;
  *variable = m->num_variables++;
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t find_route(const struct cuoptimMulti *m, cuoptimVariable_t variable, const char *caller,
                                  const multi_route **route) {
  if (variable < 0 || variable >= m->num_variables)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: variable = %d: the MultiOptimizer has %d variables", caller,
                         (int)variable, m->num_variables);
  *route = &m->routes[variable];
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptim_multi_variable_shape(cuoptimOptimizer_t opt, cuoptimVariable_t variable, int *rank,
                                             int64_t *dims) {
  const multi_route *route = NULL;
  CUOPTIM_REQUIRE_NOT_NULL("cuoptimGetVariableShape", rank);
  CUOPTIM_REQUIRE_NOT_NULL("cuoptimGetVariableShape", dims);
  CUOPTIM_CHECK(find_route(opt->multi, variable, "cuoptimGetVariableShape", &route));
  return cuoptimGetVariableShape(opt->multi->optimizers[route->optimizer], route->index, rank, dims);
}

cuoptimStatus_t cuoptim_multi_variable_count(cuoptimOptimizer_t opt, int *count) {
  CUOPTIM_REQUIRE_NOT_NULL("cuoptimGetVariableCount", count);
  *count = opt->multi->num_variables;
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptim_multi_uses_weight_decay(cuoptimOptimizer_t opt, cuoptimVariable_t variable, int *uses) {
  const multi_route *route = NULL;
  CUOPTIM_REQUIRE_NOT_NULL("cuoptimUsesWeightDecay", uses);
  CUOPTIM_CHECK(find_route(opt->multi, variable, "cuoptimUsesWeightDecay", &route));
  return cuoptimUsesWeightDecay(opt->multi->optimizers[route->optimizer], route->index, uses);
}

/* ---- the step --------------------------------------------------------------------------------- */

/* Every check of the step before any sub-optimizer runs: the pairs, and that each sub-optimizer
 * with variables receives a gradient (Keras: "No gradients provided for any variable."). */
static cuoptimStatus_t check_step(struct cuoptimMulti *m, int n, const cuoptimGradient_t *grads, const char *caller) {
  int *vars = m->given; /* first: each sub-optimizer's variable count */
  memset(vars, 0, (size_t)m->num_optimizers * sizeof *vars);
  memset(m->non_null, 0, (size_t)m->num_optimizers * sizeof *m->non_null);
  for (int v = 0; v < m->num_variables; v++) vars[m->routes[v].optimizer]++;
  if (++m->round == 0) {
    memset(m->listed, 0, (size_t)m->num_variables * sizeof *m->listed);
    m->round = 1;
  }
  for (int i = 0; i < n; i++) {
    const multi_route *route = NULL;
    CUOPTIM_CHECK(find_route(m, grads[i].variable, caller, &route));
    if ((int)grads[i].dtype < 0 || grads[i].dtype > CUOPTIM_BFLOAT16)
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: grads[%d].dtype = %d is not a cuoptimDtype_t", caller, i,
                           (int)grads[i].dtype);
    if (m->listed[grads[i].variable] == m->round)
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: grads[%d]: variable %d is listed twice", caller, i,
                           (int)grads[i].variable);
    m->listed[grads[i].variable] = m->round;
    if (grads[i].grad) m->non_null[route->optimizer]++;
  }
  for (int k = 0; k < m->num_optimizers; k++)
    if (vars[k] > 0 && m->non_null[k] == 0)
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                           "%s: sub-optimizer %d (\"%s\") has %d variables and none of them has a gradient in this "
                           "step (Keras raises \"No gradients provided for any variable.\")",
                           caller, k, m->optimizers[k]->config.name, vars[k]);
  return CUOPTIM_STATUS_SUCCESS;
}

/* The pairs grouped by sub-optimizer (each group in the caller's order), with each variable's
 * index in its sub-optimizer; m->given[k] the size of group k. */
static cuoptimStatus_t group_gradients(struct cuoptimMulti *m, int n, const cuoptimGradient_t *grads,
                                       const char *caller) {
  if (n > m->scratch_capacity) {
    cuoptimGradient_t *scratch = realloc(m->scratch, (size_t)n * sizeof *scratch);
    if (!scratch) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
    m->scratch = scratch;
    m->scratch_capacity = n;
  }
  memset(m->given, 0, (size_t)m->num_optimizers * sizeof *m->given);
  for (int i = 0; i < n; i++) m->given[m->routes[grads[i].variable].optimizer]++;
  int start = 0;
  for (int k = 0; k < m->num_optimizers; k++) {
    int count = m->given[k];
    m->given[k] = start; /* for now: where group k's next pair goes */
    start += count;
  }
  for (int i = 0; i < n; i++) {
    const multi_route *route = &m->routes[grads[i].variable];
    cuoptimGradient_t *pair = &m->scratch[m->given[route->optimizer]++];
    *pair = grads[i];
    pair->variable = route->index;
  }
  /* given[k] is now the end of group k: back to sizes */
  for (int k = m->num_optimizers - 1; k > 0; k--) m->given[k] -= m->given[k - 1];
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptim_multi_apply(cuoptimOptimizer_t opt, int n, const cuoptimGradient_t *grads,
                                    cuoptimStream_t stream) {
  static const char *caller = "cuoptimApplyGradients";
  struct cuoptimMulti *m = opt->multi;
  if (n < 0) return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: n = %d: must be >= 0", caller, n);
  if (n == 0) return CUOPTIM_STATUS_SUCCESS; /* Keras returns early, iterations unchanged */
  CUOPTIM_REQUIRE_NOT_NULL(caller, grads);
  if (m->num_variables == 0)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: the optimizer has no variables (cuoptimAddVariable)",
                         caller);
  CUOPTIM_CHECK(check_step(m, n, grads, caller));
  CUOPTIM_CHECK(group_gradients(m, n, grads, caller));
  m->built = 1;
  /* Every sub-optimizer with variables steps (check_step): the witness's counter counts this step
   * (a captured one on each replay), so the MultiOptimizer keeps no counter of its own. */
  cuoptimStatus_t status = CUOPTIM_STATUS_SUCCESS;
  m->stepping = 1;
  int start = 0;
  for (int k = 0; k < m->num_optimizers && status == CUOPTIM_STATUS_SUCCESS; k++) {
    int count = m->given[k];
    if (count > 0) status = cuoptimApplyGradients(m->optimizers[k], count, m->scratch + start, stream);
    start += count;
  }
  m->stepping = 0;
  return status;
}

/* The first sub-optimizer with variables (which steps in every step), or -1. */
static int witness_of(const struct cuoptimMulti *m) {
  for (int k = 0; k < m->num_optimizers; k++)
    if (m->optimizers[k]->num_variables > 0) return k;
  return -1;
}

cuoptimStatus_t cuoptim_multi_count(cuoptimOptimizer_t opt, const char *caller, int64_t *count) {
  struct cuoptimMulti *m = opt->multi;
  int w = witness_of(m);
  int64_t raw = 0;
  if (w >= 0) CUOPTIM_CHECK(cuoptim_raw_iterations(m->optimizers[w], caller, &raw));
  *count = m->iterations + (w >= 0 ? raw - m->witness_base : 0);
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptim_multi_set_count(cuoptimOptimizer_t opt, int64_t count, const char *caller) {
  struct cuoptimMulti *m = opt->multi;
  int w = witness_of(m);
  int64_t raw = 0;
  if (w >= 0) CUOPTIM_CHECK(cuoptim_raw_iterations(m->optimizers[w], caller, &raw));
  m->iterations = count;
  m->witness_base = raw;
  return CUOPTIM_STATUS_SUCCESS;
}

void cuoptim_multi_sub_counter_moved(cuoptimOptimizer_t sub, int64_t old_raw, int64_t new_raw) {
  struct cuoptimMulti *m = sub->parent->multi;
  int w = witness_of(m);
  if (w < 0 || m->optimizers[w] != sub) return;
  m->iterations += old_raw - m->witness_base; /* the count as it was */
  m->witness_base = new_raw;
}

int cuoptim_multi_lone_step_of(const struct cuoptimOptimizer *opt) {
  return opt->parent != NULL && !opt->parent->multi->stepping;
}

cuoptimStatus_t cuoptim_multi_lone_step(cuoptimOptimizer_t sub, int n, const cuoptimGradient_t *grads,
                                        cuoptimStream_t stream) {
  struct cuoptimMulti *m = sub->parent->multi;
  if (sub->ops->capturing(sub, stream))
    return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE,
                         "cuoptimApplyGradients: stream is capturing a CUDA graph: a sub-optimizer's own step "
                         "cannot be captured (its MultiOptimizer's step count could not tell its replays from "
                         "the MultiOptimizer's); capture the MultiOptimizer's step");
  m->stepping = 1; /* this call steps it as any optimizer */
  cuoptimStatus_t status = cuoptimApplyGradients(sub, n, grads, stream);
  m->stepping = 0;
  /* Not a MultiOptimizer step: if the witness stepped, the count must not move. */
  int w = witness_of(m);
  if (status == CUOPTIM_STATUS_SUCCESS && n > 0 && w >= 0 && m->optimizers[w] == sub) m->witness_base++;
  return status;
}

cuoptimStatus_t cuoptim_multi_iterations(cuoptimOptimizer_t opt, int64_t *iterations) {
  CUOPTIM_REQUIRE_NOT_NULL("cuoptimGetIterations", iterations);
  return cuoptim_multi_count(opt, "cuoptimGetIterations", iterations);
}

/* ---- the state, in Keras's `variables` order --------------------------------------------------- */

#define OWN_ENTRIES 2 /* iteration, learning_rate */

/* Each sub-optimizer's entries, counted without building its state (a call that fails its
 * argument checks builds nothing); *total the MultiOptimizer's. */
static cuoptimStatus_t count_entries(struct cuoptimMulti *m, int *total) {
  int sum = OWN_ENTRIES;
  for (int k = 0; k < m->num_optimizers; k++) {
    CUOPTIM_CHECK(cuoptim_describe_weights(m->optimizers[k]));
    sum += m->optimizers[k]->num_weights;
  }
  *total = sum;
  return CUOPTIM_STATUS_SUCCESS;
}

/* Builds every sub-optimizer (Keras's MultiOptimizer.build builds them all at once). */
static cuoptimStatus_t build_all(struct cuoptimMulti *m, int *total) {
  int sum = OWN_ENTRIES;
  for (int k = 0; k < m->num_optimizers; k++) {
    int count = 0;
    CUOPTIM_CHECK(cuoptimGetWeightCount(m->optimizers[k], &count));
    sum += count;
  }
  m->built = 1;
  *total = sum;
  return CUOPTIM_STATUS_SUCCESS;
}

/* Entry `index` of the MultiOptimizer: its own (*sub = -1, *local = index) or sub-optimizer *sub's
 * entry *local. Builds nothing. */
static cuoptimStatus_t locate_entry(struct cuoptimMulti *m, int index, const char *caller, int *sub, int *local) {
  int total = 0;
  CUOPTIM_CHECK(count_entries(m, &total));
  if (index < 0 || index >= total)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: index = %d: the optimizer has %d state entries", caller,
                         index, total);
  *sub = -1;
  *local = index;
  for (int k = 0, rest = index - OWN_ENTRIES; rest >= 0 && k < m->num_optimizers; k++) {
    int count = m->optimizers[k]->num_weights;
    if (rest < count) {
      *sub = k;
      *local = rest;
    }
    rest -= count;
  }
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptim_multi_weight_count(cuoptimOptimizer_t opt, int *count) {
  CUOPTIM_REQUIRE_NOT_NULL("cuoptimGetWeightCount", count);
  return build_all(opt->multi, count);
}

static void own_info(int local, cuoptimWeightInfo_t *info) {
  memset(info, 0, sizeof *info);
  strcpy(info->name, local == 0 ? "iteration" : "learning_rate");
  info->count = 1;
  info->is_integer = local == 0;
}

cuoptimStatus_t cuoptim_multi_weight_info(cuoptimOptimizer_t opt, int index, cuoptimWeightInfo_t *info) {
  static const char *caller = "cuoptimGetWeightInfo";
  CUOPTIM_REQUIRE_NOT_NULL(caller, info);
  int sub = -1, local = 0;
  CUOPTIM_CHECK(locate_entry(opt->multi, index, caller, &sub, &local));
  int total = 0;
  CUOPTIM_CHECK(build_all(opt->multi, &total));
  if (sub >= 0) return cuoptimGetWeightInfo(opt->multi->optimizers[sub], local, info);
  own_info(local, info);
  return CUOPTIM_STATUS_SUCCESS;
}

/* locate_entry, and for the MultiOptimizer's own scalars the count (a sub-optimizer checks its
 * own); then the state built. */
static cuoptimStatus_t locate_values(struct cuoptimMulti *m, int index, size_t count, const char *caller, int *sub,
                                     int *local) {
  CUOPTIM_CHECK(locate_entry(m, index, caller, sub, local));
  if (*sub < 0 && count != 1)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: count = %zu: entry \"%s\" has 1 element", caller, count,
                         *local == 0 ? "iteration" : "learning_rate");
  int total = 0;
  return build_all(m, &total);
}

cuoptimStatus_t cuoptim_multi_get_weights(cuoptimOptimizer_t opt, int index, double *values, size_t count) {
  static const char *caller = "cuoptimGetWeights";
  struct cuoptimMulti *m = opt->multi;
  CUOPTIM_REQUIRE_NOT_NULL(caller, values);
  int sub = -1, local = 0;
  CUOPTIM_CHECK(locate_values(m, index, count, caller, &sub, &local));
  if (sub >= 0) return cuoptimGetWeights(m->optimizers[sub], local, values, count);
  int64_t iterations = 0;
  if (local == 0) CUOPTIM_CHECK(cuoptim_multi_count(opt, caller, &iterations));
  values[0] = local == 0 ? (double)iterations : (double)m->learning_rate;
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptim_multi_set_weights(cuoptimOptimizer_t opt, int index, const double *values, size_t count) {
  static const char *caller = "cuoptimSetWeights";
  struct cuoptimMulti *m = opt->multi;
  CUOPTIM_REQUIRE_NOT_NULL(caller, values);
  int sub = -1, local = 0;
  CUOPTIM_CHECK(locate_values(m, index, count, caller, &sub, &local));
  if (sub >= 0) return cuoptimSetWeights(m->optimizers[sub], local, values, count);
  const char *name = local == 0 ? "iteration" : "learning_rate";
  double x = values[0];
  if (local == 0) {
    if (!(x >= 0 && x <= 9.0e15 && floor(x) == x))
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: values[0] = %g: \"%s\" is a counter (an integer >= 0)",
                           caller, x, name);
    CUOPTIM_CHECK(cuoptim_multi_set_count(opt, (int64_t)x, caller));
  } else {
    if (!isfinite((float)x))
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: values[0] = %g: \"%s\" must be finite in float32",
                           caller, x, name);
    m->learning_rate = (float)x;
  }
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptim_multi_finalize(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  struct cuoptimMulti *m = opt->multi;
  for (int k = 0; k < m->num_optimizers; k++) {
    int count = 0;
    CUOPTIM_CHECK(cuoptimGetVariableCount(m->optimizers[k], &count));
    if (count > 0) CUOPTIM_CHECK(cuoptimFinalizeVariableValues(m->optimizers[k], stream));
  }
  m->built = 1;
  return CUOPTIM_STATUS_SUCCESS;
}

static int64_t now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* timeout_ms < 0: cuoptimSynchronize; else one deadline for all the sub-optimizers. */
cuoptimStatus_t cuoptim_multi_synchronize(cuoptimOptimizer_t opt, int64_t timeout_ms) {
  struct cuoptimMulti *m = opt->multi;
  int64_t start = now_ms();
  for (int k = 0; k < m->num_optimizers; k++) {
    if (timeout_ms < 0) {
      CUOPTIM_CHECK(cuoptimSynchronize(m->optimizers[k]));
      continue;
    }
    int64_t left = timeout_ms - (now_ms() - start);
    CUOPTIM_CHECK(cuoptimSynchronizeTimeout(m->optimizers[k], left > 0 ? left : 0));
  }
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptim_multi_state_bytes(cuoptimOptimizer_t opt, size_t *bytes) {
  CUOPTIM_REQUIRE_NOT_NULL("cuoptimGetStateBytes", bytes);
  size_t sum = 0;
  for (int k = 0; k < opt->multi->num_optimizers; k++) {
    size_t b = 0;
    CUOPTIM_CHECK(cuoptimGetStateBytes(opt->multi->optimizers[k], &b));
    sum += b;
  }
  *bytes = sum;
  return CUOPTIM_STATUS_SUCCESS;
}

/* ---- sub-optimizers --------------------------------------------------------------------------- */

cuoptimStatus_t cuoptimGetSubOptimizerCount(cuoptimOptimizer_t opt, int *count) {
  if (!opt) return cuoptim_error(CUOPTIM_STATUS_NULL_POINTER, "cuoptimGetSubOptimizerCount: optimizer is NULL");
  CUOPTIM_REQUIRE_NOT_NULL("cuoptimGetSubOptimizerCount", count);
  *count = opt->multi ? opt->multi->num_optimizers : 0;
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t require_multi(cuoptimOptimizer_t opt, const char *caller) {
  if (!opt) return cuoptim_error(CUOPTIM_STATUS_NULL_POINTER, "%s: optimizer is NULL", caller);
  if (!opt->multi)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: optimizer is not a MultiOptimizer (cuoptimCreateMulti)",
                         caller);
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimGetSubOptimizer(cuoptimOptimizer_t opt, int index, cuoptimOptimizer_t *sub) {
  static const char *caller = "cuoptimGetSubOptimizer";
  CUOPTIM_CHECK(require_multi(opt, caller));
  CUOPTIM_REQUIRE_NOT_NULL(caller, sub);
  if (index < 0 || index >= opt->multi->num_optimizers)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: index = %d: the MultiOptimizer has %d sub-optimizers",
                         caller, index, opt->multi->num_optimizers);
  *sub = opt->multi->optimizers[index];
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimGetVariableOptimizer(cuoptimOptimizer_t opt, cuoptimVariable_t variable, int *index,
                                            cuoptimVariable_t *sub_variable) {
  static const char *caller = "cuoptimGetVariableOptimizer";
  CUOPTIM_CHECK(require_multi(opt, caller));
  CUOPTIM_REQUIRE_NOT_NULL(caller, index);
  const multi_route *route = NULL;
  CUOPTIM_CHECK(find_route(opt->multi, variable, caller, &route));
  *index = route->optimizer;
  if (sub_variable) *sub_variable = route->index;
  return CUOPTIM_STATUS_SUCCESS;
}
