/* The optimizer handle: creation, variables, weight-decay exclusion, building the state (one
 * arena), the Keras-ordered state list, and the scalar getters. Backend-independent. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define ARENA_ALIGNMENT 256
/* Above this a count is a caller's bug (2^40 elements = 4 TiB of float32). */
#define MAX_VARIABLE_COUNT (((size_t)1) << 40)
/* Above this the state of all variables together is (1 EiB): every size sum over variables then
 * stays far from SIZE_MAX, whatever the number of variables. */
#define MAX_STATE_BYTES (((size_t)1) << 60)

static const cuoptimBackendOps *backend_ops(cuoptimBackend_t backend) {
  if (backend == CUOPTIM_BACKEND_HOST) return &cuoptim_host_backend;
  if (backend == CUOPTIM_BACKEND_CUDA) return cuoptim_cuda_backend;
  return NULL;
}

/* The scalar state (Keras's iteration, learning_rate, loss scale, u_product) and the step's
 * scalars, in backend memory from creation on: one 256-byte-aligned block. */
static cuoptimStatus_t allocate_scalars(cuoptimOptimizer_t opt) {
  size_t state_bytes = (sizeof(cuoptimScalarState) + ARENA_ALIGNMENT - 1) / ARENA_ALIGNMENT * ARENA_ALIGNMENT;
  void *block = NULL;
  CUOPTIM_CHECK(opt->ops->alloc(opt, state_bytes + sizeof(cuoptimStepScalars), &block));
  opt->scalar_block = block;
  opt->state = (cuoptimScalarState *)block;
  opt->scalars = (cuoptimStepScalars *)((char *)block + state_bytes);
  cuoptimScalarState initial;
  memset(&initial, 0, sizeof initial);
  initial.learning_rate = (float)opt->config.learning_rate.initial_learning_rate;
  initial.loss_scale = (float)opt->config.initial_scale;
  initial.u_product = 1.0f;
  return opt->ops->upload(opt, opt->state, &initial, sizeof initial);
}

static void free_muon_excludes(cuoptimOptimizer_t opt) {
  for (int i = 0; i < opt->num_muon_excludes; i++) cuoptim_pattern_free(opt->muon_excludes[i]);
  opt->num_muon_excludes = 0;
}

/* Muon's exclude_layers, each compiled on its own (Keras searches them one by one). */
static cuoptimStatus_t compile_muon_excludes(cuoptimOptimizer_t opt, const char *caller) {
  if (opt->config.kind != CUOPTIM_MUON) return CUOPTIM_STATUS_SUCCESS;
  for (int i = 0; i < opt->config.num_exclude_layers; i++) {
    char why[256];
    long position = -1;
    cuoptimStatus_t status =
        cuoptim_pattern_compile(opt->config.exclude_layers[i], &opt->muon_excludes[i], why, sizeof why, &position);
    if (status != CUOPTIM_STATUS_SUCCESS)
      return cuoptim_error(status, "%s: config->exclude_layers[%d]: %s", caller, i, why);
    opt->num_muon_excludes = i + 1;
  }
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimCreate(cuoptimOptimizer_t *optimizer, const cuoptimConfig_t *config, cuoptimBackend_t backend,
                              int device) {
  static const char *caller = "cuoptimCreate";
  CUOPTIM_REQUIRE_NOT_NULL(caller, optimizer);
  CUOPTIM_REQUIRE_NOT_NULL(caller, config);
  CUOPTIM_CHECK(cuoptim_validate_config(config, caller));
  if (backend != CUOPTIM_BACKEND_HOST && backend != CUOPTIM_BACKEND_CUDA)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: backend = %d is not a cuoptimBackend_t", caller,
                         (int)backend);
  const cuoptimBackendOps *ops = backend_ops(backend);
  if (!ops)
    return cuoptim_error(CUOPTIM_STATUS_NOT_SUPPORTED,
                         "%s: backend = CUOPTIM_BACKEND_CUDA: this build of cuoptim has no CUDA backend (built with "
                         "CUOPTIM_WITH_CUDA=OFF); use CUOPTIM_BACKEND_HOST",
                         caller);
  if (backend == CUOPTIM_BACKEND_CUDA && device < 0)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: device = %d: must be a CUDA device ordinal >= 0", caller,
                         device);

  cuoptimOptimizer_t opt = calloc(1, sizeof *opt);
  if (!opt) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  opt->config = *config;
  opt->backend = backend;
  opt->device = device;
  opt->ops = ops;
  cuoptim_prologue_params_init(config, &opt->prologue);
  cuoptim_slot_layout(config, &opt->slots);
  cuoptimStatus_t status = compile_muon_excludes(opt, caller);
  if (status == CUOPTIM_STATUS_SUCCESS) status = ops->init(opt);
  if (status != CUOPTIM_STATUS_SUCCESS) {
    free_muon_excludes(opt);
    free(opt);
    return status;
  }
  status = allocate_scalars(opt);
  if (status != CUOPTIM_STATUS_SUCCESS) {
    cuoptimDestroy(opt);
    return status;
  }
  cuoptim_note_iterations(opt, 0); /* a new optimizer's counter */
  *optimizer = opt;
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimDestroy(cuoptimOptimizer_t opt) {
  if (!opt) return CUOPTIM_STATUS_SUCCESS;
  if (opt->parent)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "cuoptimDestroy: optimizer is a sub-optimizer of a MultiOptimizer: destroy the MultiOptimizer");
  if (opt->multi) return cuoptim_multi_destroy(opt);
  /* The communicator's buffers may be in use by enqueued steps. */
  if (opt->comm && opt->built) (void)opt->ops->synchronize(opt);
  cuoptim_comm_release(opt);
  cuoptim_arena_release(opt);
  if (opt->arena) opt->ops->free(opt, opt->arena);
  if (opt->scalar_block) opt->ops->free(opt, opt->scalar_block);
  cuoptimStatus_t status = opt->ops->release(opt);
  cuoptim_pattern_free(opt->exclude_pattern);
  free_muon_excludes(opt);
  free(opt->exclude_joined);
  for (int i = 0; i < opt->num_excludes; i++) free(opt->excludes[i]);
  free(opt->excludes);
  free(opt->variables);
  free(opt->name_index);
  free(opt->weights);
  free(opt->step_grads);
  free(opt);
  return status;
}

cuoptimStatus_t cuoptimGetConfig(cuoptimOptimizer_t opt, cuoptimConfig_t *config) {
  CUOPTIM_REQUIRE_OPTIMIZER("cuoptimGetConfig", opt);
  CUOPTIM_REQUIRE_NOT_NULL("cuoptimGetConfig", config);
  *config = opt->config;
  return CUOPTIM_STATUS_SUCCESS;
}

/* Keras's _use_weight_decay for a variable called `name`, with the exclusion pattern `pattern`
 * (the patterns joined, `joined`; NULL when none): weight decay is set and re.search finds nothing.
 * Only asked when weight decay is set, as Keras only searches then. A search that exceeds the
 * limits is INVALID_VALUE: it has no answer, and "not excluded" would be a guess. */
static cuoptimStatus_t weight_decay_applies(const cuoptimOptimizer_t opt, cuoptimPattern *pattern, const char *joined,
                                            const char *name, int muon_matrix, const char *caller,
                                            const char *argument, int *applies) {
  /* Muon: each path has its own rate (weight_decay, adam_weight_decay). */
  *applies = muon_matrix ? opt->prologue.rule.muon_has_weight_decay : opt->prologue.rule.has_weight_decay;
  if (!*applies || !pattern) return CUOPTIM_STATUS_SUCCESS;
  char why[256];
  int found = 0;
  cuoptimStatus_t status = cuoptim_pattern_search(pattern, name, &found, why, sizeof why);
  if (status != CUOPTIM_STATUS_SUCCESS)
    return cuoptim_error(status,
                         "%s: %s: searching variable name \"%s\" with the weight-decay exclusion regex \"%.300s\": %s",
                         caller, argument, name, joined, why);
  *applies = !found;
  return CUOPTIM_STATUS_SUCCESS;
}

/* Whether Python's `needle in haystack.lower()` holds, for an ASCII needle: only ASCII letters are
 * lowered (no other character lowers to an ASCII letter of "embedding"). */
static int contains_lowered(const char *haystack, const char *needle) {
  size_t n = strlen(needle);
  for (const char *h = haystack; *h; h++) {
    size_t i = 0;
    while (i < n && h[i] && tolower((unsigned char)h[i]) == needle[i]) i++;
    if (i == n) return 1;
  }
  return 0;
}

/* Muon's _should_use_adamw, negated: a 2-D variable that neither exclude_embeddings nor an
 * exclude_layers pattern sends to the AdamW path. 0 for every other optimizer. */
static cuoptimStatus_t muon_takes_matrix_path(const cuoptimOptimizer_t opt, const char *name, int rank,
                                              const char *caller, int *matrix) {
  *matrix = 0;
  if (opt->config.kind != CUOPTIM_MUON || rank != 2) return CUOPTIM_STATUS_SUCCESS;
  if (opt->config.exclude_embeddings && contains_lowered(name, "embedding")) return CUOPTIM_STATUS_SUCCESS;
  for (int i = 0; i < opt->num_muon_excludes; i++) {
    char why[256];
    int found = 0;
    cuoptimStatus_t status = cuoptim_pattern_search(opt->muon_excludes[i], name, &found, why, sizeof why);
    if (status != CUOPTIM_STATUS_SUCCESS)
      return cuoptim_error(status, "%s: name: searching variable name \"%s\" with exclude_layers[%d] \"%.300s\": %s",
                           caller, name, i, opt->config.exclude_layers[i], why);
    if (found) return CUOPTIM_STATUS_SUCCESS;
  }
  *matrix = 1;
  return CUOPTIM_STATUS_SUCCESS;
}

/* Variables per optimizer: the name index (twice as many slots) stays within 32 bits. */
#define MAX_VARIABLES (1 << 29)

/* ---- variable names: a hash index, so registering n variables costs O(n), not O(n^2) ---------- */

static uint32_t name_hash(const char *name) { /* FNV-1a */
  uint32_t h = 2166136261u;
  for (const unsigned char *c = (const unsigned char *)name; *c; c++) h = (h ^ *c) * 16777619u;
  return h;
}

/* The slot holding `name`, or the empty slot where it would go. */
static uint32_t name_slot(const int32_t *index, uint32_t size, const cuoptimVariableRec *variables, const char *name) {
  uint32_t mask = size - 1, slot = name_hash(name) & mask;
  while (index[slot] != 0 && strcmp(variables[index[slot] - 1].name, name) != 0) slot = (slot + 1) & mask;
  return slot;
}

/* The variable named `name`, or -1. */
static int find_variable(const struct cuoptimOptimizer *opt, const char *name) {
  if (opt->name_index_size == 0) return -1;
  uint32_t slot = name_slot(opt->name_index, opt->name_index_size, opt->variables, name);
  return opt->name_index[slot] - 1;
}

/* Room for one more name (load at most one half); 0 when out of memory. */
static int reserve_name(cuoptimOptimizer_t opt) {
  if ((uint64_t)(opt->num_variables + 1) * 2 <= opt->name_index_size) return 1;
  uint32_t size = opt->name_index_size ? opt->name_index_size * 2 : 64;
  int32_t *index = calloc(size, sizeof *index);
  if (!index) return 0;
  for (int i = 0; i < opt->num_variables; i++)
    index[name_slot(index, size, opt->variables, opt->variables[i].name)] = i + 1;
  free(opt->name_index);
  opt->name_index = index;
  opt->name_index_size = size;
  return 1;
}

/* ---- sizes: every sum over variables is bounded (MAX_STATE_BYTES) or checked ------------------ */

static size_t aligned_bytes(size_t count) {
  size_t bytes = count * sizeof(float); /* count <= 2^40: no overflow */
  return (bytes + ARENA_ALIGNMENT - 1) / ARENA_ALIGNMENT * ARENA_ALIGNMENT;
}

int cuoptim_variable_has_slot(const struct cuoptimOptimizer *opt, int muon_matrix, int slot) {
  if (!opt->slots.present[slot]) return 0;
  return !(opt->config.kind == CUOPTIM_MUON && muon_matrix && slot == 1); /* velocity: the AdamW path's */
}

/* The float buffers the optimizer owns for a variable of `dtype`: master, slots, EMA, accumulator. */
static int owned_buffers(const struct cuoptimOptimizer *opt, cuoptimDtype_t dtype, int muon_matrix) {
  int buffers = dtype != CUOPTIM_FLOAT32;
  for (int s = 0; s < opt->slots.count; s++) buffers += cuoptim_variable_has_slot(opt, muon_matrix, s);
  buffers += opt->prologue.rule.use_ema != 0;
  buffers += opt->prologue.rule.accumulation_steps != 0;
  return buffers;
}

/* Arena bytes of one variable of `count` elements (count <= 2^40, so no overflow); Adafactor's r
 * and c hold at most `count` elements each. */
static size_t variable_state_bytes(const struct cuoptimOptimizer *opt, cuoptimDtype_t dtype, size_t count,
                                   int muon_matrix) {
  int factored = opt->config.kind == CUOPTIM_ADAFACTOR ? 2 : 0;
  return (size_t)(owned_buffers(opt, dtype, muon_matrix) + factored) * aligned_bytes(count) +
         sizeof(cuoptimTensorScalars);
}

size_t cuoptim_factored_count(const cuoptimVariableRec *v, int which) {
  if (v->rank < 2) return 1;
  int64_t dropped = v->dims[which == 0 ? v->rank - 1 : v->rank - 2];
  return v->count / (size_t)dropped;
}

/* *total += bytes; 0 when the sum would not fit. */
static int add_size(size_t *total, size_t bytes) {
  if (bytes > SIZE_MAX - *total) return 0;
  *total += bytes;
  return 1;
}

static cuoptimStatus_t add_variable(cuoptimOptimizer_t opt, const char *name, void *param, cuoptimDtype_t dtype,
                                    size_t count, int rank, const int64_t *dims, cuoptimVariable_t *variable,
                                    const char *caller);

/* The element count of a shape, checked: rank 0..CUOPTIM_MAX_DIMS, every dimension >= 1, the
 * product at most 2^40 (so it cannot overflow). */
static cuoptimStatus_t shape_count(int rank, const int64_t *dims, const char *caller, size_t *count) {
  if (rank < 0 || rank > CUOPTIM_MAX_DIMS)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: rank = %d: must be 0 to %d", caller, rank,
                         CUOPTIM_MAX_DIMS);
  if (rank > 0 && !dims) return cuoptim_error(CUOPTIM_STATUS_NULL_POINTER, "%s: dims is NULL (rank %d)", caller, rank);
  size_t product = 1;
  for (int d = 0; d < rank; d++) {
    if (dims[d] < 1)
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: dims[%d] = %lld: every dimension must be >= 1", caller, d,
                           (long long)dims[d]);
    if ((uint64_t)dims[d] > MAX_VARIABLE_COUNT / product)
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                           "%s: dims[%d] = %lld: the shape holds more than 2^40 elements (the most a variable has)",
                           caller, d, (long long)dims[d]);
    product *= (size_t)dims[d];
  }
  *count = product;
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimAddVariable(cuoptimOptimizer_t opt, const char *name, void *param, cuoptimDtype_t dtype,
                                   size_t count, cuoptimVariable_t *variable) {
  int64_t dims[1] = {(int64_t)count};
  if (opt && opt->multi) return cuoptim_multi_add_variable(opt, name, param, dtype, 1, dims, variable);
  return add_variable(opt, name, param, dtype, count, 1, dims, variable, "cuoptimAddVariable");
}

cuoptimStatus_t cuoptimAddVariableWithShape(cuoptimOptimizer_t opt, const char *name, void *param,
                                            cuoptimDtype_t dtype, int rank, const int64_t *dims,
                                            cuoptimVariable_t *variable) {
  static const char *caller = "cuoptimAddVariableWithShape";
  if (opt && opt->multi) return cuoptim_multi_add_variable(opt, name, param, dtype, rank, dims, variable);
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  size_t count = 0;
  CUOPTIM_CHECK(shape_count(rank, dims, caller, &count));
  return add_variable(opt, name, param, dtype, count, rank, dims, variable, caller);
}

cuoptimStatus_t cuoptimGetVariableShape(cuoptimOptimizer_t opt, cuoptimVariable_t variable, int *rank,
                                        int64_t dims[CUOPTIM_MAX_DIMS]) {
  static const char *caller = "cuoptimGetVariableShape";
  if (opt && opt->multi) return cuoptim_multi_variable_shape(opt, variable, rank, dims);
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  CUOPTIM_REQUIRE_NOT_NULL(caller, rank);
  CUOPTIM_REQUIRE_NOT_NULL(caller, dims);
  if (variable < 0 || variable >= opt->num_variables)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: variable = %d: no such variable (%d registered)", caller,
                         (int)variable, opt->num_variables);
  const cuoptimVariableRec *v = &opt->variables[variable];
  *rank = v->rank;
  for (int d = 0; d < CUOPTIM_MAX_DIMS; d++) dims[d] = d < v->rank ? v->dims[d] : 0;
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t add_variable(cuoptimOptimizer_t opt, const char *name, void *param, cuoptimDtype_t dtype,
                                    size_t count, int rank, const int64_t *dims, cuoptimVariable_t *variable,
                                    const char *caller) {
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  if (!cuoptim_multi_may_add(opt))
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "%s: optimizer is a sub-optimizer of a MultiOptimizer: register the variable on the "
                         "MultiOptimizer, which routes it by name",
                         caller);
  CUOPTIM_REQUIRE_NOT_NULL(caller, name);
  CUOPTIM_REQUIRE_NOT_NULL(caller, param);
  CUOPTIM_REQUIRE_NOT_NULL(caller, variable);
  size_t length = strlen(name);
  if (length == 0) return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: name is empty", caller);
  if (length >= CUOPTIM_MAX_NAME)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: name \"%.40s...\" is %zu bytes long: at most %d", caller,
                         name, length, CUOPTIM_MAX_NAME - 1);
  if (dtype != CUOPTIM_FLOAT32 && dtype != CUOPTIM_FLOAT16 && dtype != CUOPTIM_BFLOAT16)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: dtype = %d is not a cuoptimDtype_t", caller, (int)dtype);
  if (count == 0) return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: count = 0: a variable needs elements", caller);
  if (count > MAX_VARIABLE_COUNT)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: count = %zu: larger than 2^40 elements", caller, count);
  if (opt->built)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE,
                         "%s: the optimizer state is already built (a step or a state access happened): "
                         "add every variable before",
                         caller);
  int existing = find_variable(opt, name);
  if (existing >= 0)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: name \"%s\" is already variable %d", caller, name,
                         existing);
  if (opt->num_variables >= MAX_VARIABLES)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: too many variables (at most %d)", caller, MAX_VARIABLES);
  int muon_matrix = 0;
  CUOPTIM_CHECK(muon_takes_matrix_path(opt, name, rank, caller, &muon_matrix));
  size_t state_bytes = variable_state_bytes(opt, dtype, count, muon_matrix);
  if (state_bytes > MAX_STATE_BYTES - opt->state_bytes)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "%s: count = %zu: the optimizer state of all variables would exceed 2^60 bytes (%zu bytes "
                         "registered, this variable needs %zu)",
                         caller, count, opt->state_bytes, state_bytes);
  CUOPTIM_CHECK(opt->ops->check_pointer(opt, param, dtype, caller, "param"));
  int applies = 0;
  CUOPTIM_CHECK(weight_decay_applies(opt, opt->exclude_pattern, opt->exclude_joined, name, muon_matrix, caller, "name",
                                     &applies));
  if (!reserve_name(opt)) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);

  if (opt->num_variables == opt->variable_capacity) {
    int capacity = opt->variable_capacity ? opt->variable_capacity * 2 : 16;
    cuoptimVariableRec *grown = realloc(opt->variables, (size_t)capacity * sizeof *grown);
    cuoptimStepGradient *grads = realloc(opt->step_grads, (size_t)capacity * sizeof *grads);
    if (grown) opt->variables = grown;
    if (grads) opt->step_grads = grads;
    if (!grown || !grads) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
    opt->variable_capacity = capacity;
  }
  cuoptimVariableRec *v = &opt->variables[opt->num_variables];
  memset(v, 0, sizeof *v);
  memcpy(v->name, name, length + 1);
  v->param = param;
  v->dtype = dtype;
  v->count = count;
  v->rank = rank;
  for (int d = 0; d < rank; d++) v->dims[d] = dims[d];
  v->use_weight_decay = applies;
  v->muon_matrix = muon_matrix;
  memset(&opt->step_grads[opt->num_variables], 0, sizeof *opt->step_grads);
  opt->name_index[name_slot(opt->name_index, opt->name_index_size, opt->variables, name)] = opt->num_variables + 1;
  opt->state_bytes += state_bytes;
  *variable = opt->num_variables++;
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimGetVariableCount(cuoptimOptimizer_t opt, int *count) {
  if (opt && opt->multi) return cuoptim_multi_variable_count(opt, count);
  CUOPTIM_REQUIRE_OPTIMIZER("cuoptimGetVariableCount", opt);
  CUOPTIM_REQUIRE_NOT_NULL("cuoptimGetVariableCount", count);
  *count = opt->num_variables;
  return CUOPTIM_STATUS_SUCCESS;
}

/* The number of code points of UTF-8 text. */
static long code_points(const char *text) {
  long n = 0;
  for (const unsigned char *c = (const unsigned char *)text; *c; c++) n += (*c & 0xC0) != 0x80;
  return n;
}

/* The patterns joined with "|" once `regex` is added, as Keras joins them; NULL when out of memory. */
static char *join_patterns(const char *joined, const char *regex) {
  size_t before = joined ? strlen(joined) + 1 : 0, length = strlen(regex);
  char *text = malloc(before + length + 1);
  if (!text) return NULL;
  if (joined) {
    memcpy(text, joined, before - 1);
    text[before - 1] = '|';
  }
  memcpy(text + before, regex, length + 1);
  return text;
}

/* The refusal of `regex` by cuoptim_pattern_compile, its position counted in `regex` itself. */
static cuoptimStatus_t refuse_regex(cuoptimStatus_t status, const char *caller, const char *regex, const char *joined,
                                    const char *why, long position) {
  long start = joined ? code_points(joined) + 1 : 0;
  if (position >= start)
    return cuoptim_error(status, "%s: regex \"%.300s\": %s at position %ld", caller, regex, why, position - start);
  if (position >= 0)
    return cuoptim_error(status, "%s: regex \"%.300s\": %s at position %ld of the earlier patterns joined with it "
                         "(\"%.300s\")", caller, regex, why, position, joined);
  return cuoptim_error(status, "%s: regex \"%.300s\": %s", caller, regex, why);
}

/* Adds `regex` to the list and installs the joined pattern and each variable's flag. */
static cuoptimStatus_t install_exclusion(cuoptimOptimizer_t opt, const char *regex, char *joined,
                                         cuoptimPattern *pattern, const int *applies, const char *caller) {
  char **grown = realloc(opt->excludes, (size_t)(opt->num_excludes + 1) * sizeof *grown);
  if (grown) opt->excludes = grown;
  char *copy = grown ? malloc(strlen(regex) + 1) : NULL;
  if (!copy) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  strcpy(copy, regex);
  opt->excludes[opt->num_excludes++] = copy;
  cuoptim_pattern_free(opt->exclude_pattern);
  free(opt->exclude_joined);
  opt->exclude_pattern = pattern;
  opt->exclude_joined = joined;
  for (int i = 0; i < opt->num_variables; i++) opt->variables[i].use_weight_decay = applies[i];
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimExcludeFromWeightDecay(cuoptimOptimizer_t opt, const char *regex) {
  static const char *caller = "cuoptimExcludeFromWeightDecay";
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  CUOPTIM_REQUIRE_NOT_NULL(caller, regex);
  /* Keras: "This method must be called before the optimizer's `build` method is called." The
   * backends copy each variable's flag into their tables when the state is built. */
  if (opt->built)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE,
                         "%s: regex \"%.300s\": the optimizer state is already built (a step or a state access "
                         "happened): exclude variables from weight decay before, as Keras requires",
                         caller, regex);
  /* Keras joins set(var_names): a pattern given again changes nothing. */
  for (int i = 0; i < opt->num_excludes; i++)
    if (strcmp(opt->excludes[i], regex) == 0) return CUOPTIM_STATUS_SUCCESS;
  char *joined = join_patterns(opt->exclude_joined, regex);
  if (!joined) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  if (strlen(joined) > CUOPTIM_PATTERN_MAX_BYTES) {
    size_t length = strlen(joined);
    free(joined);
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "%s: regex \"%.300s\": the patterns joined with \"|\" would be %zu bytes long: at most %d",
                         caller, regex, length, CUOPTIM_PATTERN_MAX_BYTES);
  }
  cuoptimPattern *pattern = NULL;
  char why[512];
  long position = -1;
  cuoptimStatus_t status = cuoptim_pattern_compile(joined, &pattern, why, sizeof why, &position);
  if (status != CUOPTIM_STATUS_SUCCESS) {
    free(joined);
    return refuse_regex(status, caller, regex, opt->exclude_joined, why, position);
  }
  /* Every variable's answer first: a search that fails leaves everything as it was. */
  int *applies = malloc(((size_t)opt->num_variables + 1) * sizeof *applies);
  if (!applies) status = cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  for (int i = 0; status == CUOPTIM_STATUS_SUCCESS && i < opt->num_variables; i++)
    status = weight_decay_applies(opt, pattern, joined, opt->variables[i].name, opt->variables[i].muon_matrix, caller,
                                  "regex", &applies[i]);
  if (status == CUOPTIM_STATUS_SUCCESS) status = install_exclusion(opt, regex, joined, pattern, applies, caller);
  if (status != CUOPTIM_STATUS_SUCCESS) {
    cuoptim_pattern_free(pattern);
    free(joined);
  }
  free(applies);
  return status;
}

static cuoptimStatus_t check_variable(const cuoptimOptimizer_t opt, cuoptimVariable_t variable, const char *caller,
                                      const char *what) {
  if (variable < 0 || variable >= opt->num_variables)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: %s = %d: no such variable (%d registered)", caller, what,
                         (int)variable, opt->num_variables);
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimUsesWeightDecay(cuoptimOptimizer_t opt, cuoptimVariable_t variable, int *uses) {
  static const char *caller = "cuoptimUsesWeightDecay";
  if (opt && opt->multi) return cuoptim_multi_uses_weight_decay(opt, variable, uses);
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  CUOPTIM_REQUIRE_NOT_NULL(caller, uses);
  CUOPTIM_CHECK(check_variable(opt, variable, caller, "variable"));
  *uses = opt->variables[variable].use_weight_decay;
  return CUOPTIM_STATUS_SUCCESS;
}

/* ---- building the state ----------------------------------------------------------------------- */

/* Lays out every owned float buffer in one arena and sets *bytes to its size; with base == NULL only
 * measures. 0 when the size does not fit in a size_t (AddVariable's bound makes that impossible;
 * checked all the same, since a wrapped size would lay buffers past a small allocation). */
static int layout_arena(cuoptimOptimizer_t opt, char *base, size_t *bytes) {
  size_t offset = 0;
  const cuoptimRuleParams *p = &opt->prologue.rule;
#define PLACE(field, count)                                              \
  do {                                                                   \
    if (base) (field) = (float *)(base + offset);                        \
    if (!add_size(&offset, aligned_bytes(count))) return 0;              \
  } while (0)
  for (int i = 0; i < opt->num_variables; i++) {
    cuoptimVariableRec *v = &opt->variables[i];
    if (v->dtype != CUOPTIM_FLOAT32) PLACE(v->master, v->local_count);
    for (int s = 0; s < opt->slots.count; s++)
      if (cuoptim_variable_has_slot(opt, v->muon_matrix, s)) PLACE(v->slots[s], v->local_count);
    if (p->use_ema) PLACE(v->average, v->local_count);
    if (p->accumulation_steps) PLACE(v->accumulator, v->local_count);
    if (p->kind == CUOPTIM_ADAFACTOR)
      for (int j = 0; j < 2; j++) PLACE(v->factored[j], cuoptim_factored_count(v, j));
  }
#undef PLACE
  /* The per-variable scalars after the buffers. */
  size_t tensors_offset = offset;
  if (!add_size(&offset, (size_t)opt->num_variables * sizeof(cuoptimTensorScalars))) return 0;
  if (base) opt->tensors = (cuoptimTensorScalars *)(base + tensors_offset);
  *bytes = offset;
  return 1;
}

static cuoptimWeightEntry *add_weight(cuoptimOptimizer_t opt, cuoptimWeightKind kind, size_t count, int is_integer) {
  cuoptimWeightEntry *w = &opt->weights[opt->num_weights++];
  memset(w, 0, sizeof *w);
  w->kind = kind;
  w->info.count = count;
  w->info.is_integer = is_integer;
  return w;
}

static void add_scalar_weight(cuoptimOptimizer_t opt, cuoptimWeightKind kind, int is_integer, const char *name) {
  snprintf(add_weight(opt, kind, 1, is_integer)->info.name, CUOPTIM_MAX_WEIGHT_NAME, "%s", name);
}

/* `buffer` is the variable's field that will point into the arena once the state is built. */
static void add_buffer_weight(cuoptimOptimizer_t opt, cuoptimVariableRec *v, float **buffer, const char *suffix) {
  cuoptimWeightEntry *w = add_weight(opt, CUOPTIM_WEIGHT_BUFFER, v->count, 0);
  w->buffer = buffer;
  w->variable = (int)(v - opt->variables);
  /* Fits: a name has at most CUOPTIM_MAX_NAME - 1 bytes, a suffix at most 21 ("accumulated_delta_var"). */
  snprintf(w->info.name, sizeof w->info.name, "%.*s_%.24s", CUOPTIM_MAX_NAME - 1, v->name, suffix);
  /* Keras names a slot after its variable's path with '/' made '_' ("dense/kernel" ->
   * "dense_kernel_momentum"): a name given as a path gives Keras's slot names. */
  for (char *c = w->info.name; *c != '\0'; c++)
    if (*c == '/') *c = '_';
}

/* Adafactor's r or c of variable v: Keras names both after the variable itself. */
static void add_factored_weight(cuoptimOptimizer_t opt, cuoptimVariableRec *v, int which) {
  cuoptimWeightEntry *w = add_weight(opt, CUOPTIM_WEIGHT_FACTORED, cuoptim_factored_count(v, which), 0);
  w->buffer = &v->factored[which];
  w->variable = (int)(v - opt->variables);
  snprintf(w->info.name, sizeof w->info.name, "%s", v->name);
}

/* The state in Keras's `optimizer.variables` order (tests/data/README.md has the observed table),
 * described from the config and the variables alone: describing it allocates no state, so a
 * call that fails its argument checks leaves the optimizer unbuilt. */
static cuoptimStatus_t describe_weights(cuoptimOptimizer_t opt) {
  /* Variables are only ever appended, so the list is current while their number is unchanged. */
  if (opt->weights && opt->described_variables == opt->num_variables) return CUOPTIM_STATUS_SUCCESS;
  const cuoptimConfig_t *c = &opt->config;
  int n = opt->num_variables;
  size_t most = 8 + (size_t)n * 5; /* n <= 2^29: no overflow */
  cuoptimWeightEntry *weights = calloc(most, sizeof *weights);
  if (!weights) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptim: out of host memory");
  free(opt->weights);
  opt->weights = weights;
  opt->num_weights = 0;
  opt->described_variables = n;
  if (c->dynamic_loss_scale) {
    /* The LossScaleOptimizer's own base-class variables (built with learning_rate 0.0; never
     * stepped), then its scale state, then the inner optimizer's variables. */
    add_scalar_weight(opt, CUOPTIM_WEIGHT_OUTER_ITERATION, 1, "iteration");
    add_scalar_weight(opt, CUOPTIM_WEIGHT_OUTER_LEARNING_RATE, 0, "learning_rate");
    add_scalar_weight(opt, CUOPTIM_WEIGHT_LOSS_SCALE_COUNTER, 1, "step_counter");
    add_scalar_weight(opt, CUOPTIM_WEIGHT_LOSS_SCALE, 0, "dynamic_scale");
  }
  add_scalar_weight(opt, CUOPTIM_WEIGHT_ITERATION, 1, "iteration");
  if (c->learning_rate.kind == CUOPTIM_SCHEDULE_CONSTANT)
    add_scalar_weight(opt, CUOPTIM_WEIGHT_LEARNING_RATE, 0, "learning_rate");
  if (c->use_ema)
    for (int i = 0; i < n; i++) add_buffer_weight(opt, &opt->variables[i], &opt->variables[i].average, "average");
  if (c->gradient_accumulation_steps)
    for (int i = 0; i < n; i++)
      add_buffer_weight(opt, &opt->variables[i], &opt->variables[i].accumulator, "gradient_accumulator");
  for (int group = 0; group < 3; group++)
    for (int i = 0; i < n; i++) {
      /* Adafactor: r, c, then the velocity, per variable. Keras's placeholders for rank < 2 are
       * not in a LossScaleOptimizer's list (observed in Keras 3.15.1, tests/data/cases). */
      int listed = opt->variables[i].rank >= 2 || !c->dynamic_loss_scale;
      if (c->kind == CUOPTIM_ADAFACTOR && group == 0 && listed)
        for (int j = 0; j < 2; j++) add_factored_weight(opt, &opt->variables[i], j);
      for (int s = 0; s < opt->slots.count; s++)
        if (cuoptim_variable_has_slot(opt, opt->variables[i].muon_matrix, s) && opt->slots.group[s] == group)
          add_buffer_weight(opt, &opt->variables[i], &opt->variables[i].slots[s], opt->slots.names[s]);
    }
  /* Nadam's u_product is an unnamed backend.Variable: Keras calls it "variable". */
  if (c->kind == CUOPTIM_NADAM && n > 0) add_scalar_weight(opt, CUOPTIM_WEIGHT_U_PRODUCT, 0, "variable");
  return CUOPTIM_STATUS_SUCCESS;
}

static void forget_layout(cuoptimOptimizer_t opt) {
  for (int i = 0; i < opt->num_variables; i++) {
    cuoptimVariableRec *v = &opt->variables[i];
    v->master = v->average = v->accumulator = NULL;
    v->slots[0] = v->slots[1] = v->slots[2] = NULL;
    v->factored[0] = v->factored[1] = NULL;
  }
  opt->tensors = NULL;
}

cuoptimStatus_t cuoptim_build(cuoptimOptimizer_t opt, const char *caller, const cuoptimStream_t *stream) {
  if (opt->built) return CUOPTIM_STATUS_SUCCESS;
  cuoptim_comm_assign_shares(opt);
  if (stream) CUOPTIM_CHECK(opt->ops->check_build_stream(opt, *stream, caller));
  size_t bytes = 0;
  if (!layout_arena(opt, NULL, &bytes))
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: the optimizer state of %d variables exceeds the address space",
                         caller, opt->num_variables);
  CUOPTIM_CHECK(describe_weights(opt));
  void *arena = NULL;
  CUOPTIM_CHECK(opt->ops->alloc(opt, bytes, &arena));
  opt->arena = arena;
  opt->arena_bytes = bytes;
  layout_arena(opt, arena, &bytes);
  cuoptimStatus_t status = opt->ops->build(opt, stream);
  if (status == CUOPTIM_STATUS_SUCCESS) status = cuoptim_arena_build(opt, caller);
  if (status != CUOPTIM_STATUS_SUCCESS) {
    opt->ops->free(opt, opt->arena);
    opt->arena = NULL;
    forget_layout(opt);
    cuoptim_log(CUOPTIM_LOG_WARN, "%s: building the optimizer state failed", caller);
    return status;
  }
  opt->built = 1;
  return CUOPTIM_STATUS_SUCCESS;
}

/* ---- scalar state ----------------------------------------------------------------------------- */

/* The scalar state exists from creation on, so reading it does not build (freeze) the variables. */
static cuoptimStatus_t read_state(cuoptimOptimizer_t opt, const char *caller, cuoptimScalarState *state) {
  return opt->ops->download(opt, state, opt->state, sizeof *state);
}

static cuoptimStatus_t write_state(cuoptimOptimizer_t opt, const cuoptimScalarState *state) {
  return opt->ops->upload(opt, opt->state, state, sizeof *state);
}

cuoptimStatus_t cuoptim_raw_iterations(cuoptimOptimizer_t opt, const char *caller, int64_t *raw) {
  cuoptimScalarState state;
  CUOPTIM_CHECK(read_state(opt, caller, &state));
  *raw = state.iterations;
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimGetIterations(cuoptimOptimizer_t opt, int64_t *iterations) {
  static const char *caller = "cuoptimGetIterations";
  if (opt && opt->multi) return cuoptim_multi_iterations(opt, iterations);
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  CUOPTIM_REQUIRE_NOT_NULL(caller, iterations);
  cuoptimScalarState state;
  CUOPTIM_CHECK(read_state(opt, caller, &state));
  *iterations = cuoptim_public_iterations(&opt->prologue.rule, state.iterations);
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimGetLearningRate(cuoptimOptimizer_t opt, float *learning_rate) {
  static const char *caller = "cuoptimGetLearningRate";
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  CUOPTIM_REQUIRE_NOT_NULL(caller, learning_rate);
  cuoptimScalarState state;
  CUOPTIM_CHECK(read_state(opt, caller, &state));
  *learning_rate = cuoptim_learning_rate(&opt->prologue, &state);
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimSetLearningRate(cuoptimOptimizer_t opt, double learning_rate) {
  static const char *caller = "cuoptimSetLearningRate";
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  /* The step computes with the float32 value: 1e308 is finite as a double, infinite there. */
  if (!isfinite((float)learning_rate))
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: learning_rate = %g: must be finite in float32", caller,
                         learning_rate);
  if (opt->config.learning_rate.kind != CUOPTIM_SCHEDULE_CONSTANT)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE,
                         "%s: the optimizer uses a learning-rate schedule; its learning rate cannot be set", caller);
  cuoptimScalarState state;
  CUOPTIM_CHECK(read_state(opt, caller, &state));
  state.learning_rate = (float)learning_rate;
  CUOPTIM_CHECK(write_state(opt, &state));
  opt->config.learning_rate.initial_learning_rate = (double)state.learning_rate;
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimGetLossScale(cuoptimOptimizer_t opt, float *scale) {
  static const char *caller = "cuoptimGetLossScale";
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  CUOPTIM_REQUIRE_NOT_NULL(caller, scale);
  if (!opt->config.dynamic_loss_scale)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE, "%s: the optimizer has no dynamic loss scale", caller);
  cuoptimScalarState state;
  CUOPTIM_CHECK(read_state(opt, caller, &state));
  *scale = state.loss_scale;
  return CUOPTIM_STATUS_SUCCESS;
}

/* ---- the Keras-ordered state ------------------------------------------------------------------ */

cuoptimStatus_t cuoptimGetWeightCount(cuoptimOptimizer_t opt, int *count) {
  static const char *caller = "cuoptimGetWeightCount";
  if (opt && opt->multi) return cuoptim_multi_weight_count(opt, count);
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  CUOPTIM_REQUIRE_NOT_NULL(caller, count);
  CUOPTIM_CHECK(cuoptim_build(opt, caller, NULL));
  *count = opt->num_weights;
  return CUOPTIM_STATUS_SUCCESS;
}

/* Entry `index` of the state list, checked without building the state (a failed call builds
 * nothing). The pointer stays valid while no variable is added (building keeps the list). */
static cuoptimStatus_t find_weight(cuoptimOptimizer_t opt, int index, const char *caller, cuoptimWeightEntry **entry) {
  CUOPTIM_CHECK(describe_weights(opt));
  if (index < 0 || index >= opt->num_weights)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: index = %d: the optimizer has %d state entries", caller,
                         index, opt->num_weights);
  *entry = &opt->weights[index];
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimGetWeightInfo(cuoptimOptimizer_t opt, int index, cuoptimWeightInfo_t *info) {
  static const char *caller = "cuoptimGetWeightInfo";
  if (opt && opt->multi) return cuoptim_multi_weight_info(opt, index, info);
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  CUOPTIM_REQUIRE_NOT_NULL(caller, info);
  cuoptimWeightEntry *entry = NULL;
  CUOPTIM_CHECK(find_weight(opt, index, caller, &entry));
  CUOPTIM_CHECK(cuoptim_build(opt, caller, NULL));
  *info = entry->info;
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t check_count(const cuoptimWeightEntry *entry, size_t count, const char *caller) {
  if (count != entry->info.count)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: count = %zu: entry \"%s\" has %zu elements", caller, count,
                         entry->info.name, entry->info.count);
  return CUOPTIM_STATUS_SUCCESS;
}

/* Copies a float32 buffer of the backend to or from doubles, through a bounded host staging buffer. */
#define STAGING_ELEMENTS ((size_t)1 << 20)

/* Copies `count` elements between a float32 buffer of the backend and host doubles: from `in`
 * to the buffer when `in` is given, else from the buffer to `out`; through a bounded host staging
 * buffer (float32 converts to double exactly). */
static cuoptimStatus_t transfer_buffer(cuoptimOptimizer_t opt, float *buffer, const double *in, double *out,
                                       size_t count, const char *caller) {
  size_t capacity = count < STAGING_ELEMENTS ? count : STAGING_ELEMENTS;
  float *staging = malloc(capacity * sizeof(float));
  if (!staging) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  cuoptimStatus_t status = CUOPTIM_STATUS_SUCCESS;
  for (size_t done = 0; done < count && status == CUOPTIM_STATUS_SUCCESS; done += capacity) {
    size_t chunk = count - done < capacity ? count - done : capacity;
    if (in) {
      for (size_t i = 0; i < chunk; i++) staging[i] = (float)in[done + i];
      status = opt->ops->upload(opt, buffer + done, staging, chunk * sizeof(float));
    } else {
      status = opt->ops->download(opt, staging, buffer + done, chunk * sizeof(float));
      for (size_t i = 0; status == CUOPTIM_STATUS_SUCCESS && i < chunk; i++) out[done + i] = staging[i];
    }
  }
  free(staging);
  return status;
}

/* Local accumulation between applied steps: Keras's accumulator is the sum of the ranks' (a
 * collective). */
static cuoptimStatus_t get_partial_accumulator(cuoptimOptimizer_t opt, const cuoptimVariableRec *v, double *values,
                                               const char *caller) {
  float *mine = malloc((v->count ? v->count : 1) * sizeof *mine);
  if (!mine) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  cuoptimStatus_t status = opt->ops->download(opt, mine, v->accumulator, v->count * sizeof *mine);
  if (status == CUOPTIM_STATUS_SUCCESS) status = cuoptim_comm_sum_accumulator(opt, mine, v->count, mine, caller);
  for (size_t i = 0; status == CUOPTIM_STATUS_SUCCESS && i < v->count; i++) values[i] = mine[i];
  free(mine);
  return status;
}

/* Local accumulation between applied steps: rank 0 keeps the values, the others zeros, so that
 * the ranks' sum is the value. */
static cuoptimStatus_t set_partial_accumulator(cuoptimOptimizer_t opt, const cuoptimVariableRec *v,
                                               const double *values, const char *caller) {
  if (opt->comm->rank == 0) return transfer_buffer(opt, v->accumulator, values, NULL, v->count, caller);
  double *zeros = calloc(v->count ? v->count : 1, sizeof *zeros);
  if (!zeros) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  cuoptimStatus_t status = transfer_buffer(opt, v->accumulator, zeros, NULL, v->count, caller);
  free(zeros);
  return status;
}

/* A buffer entry into `values` (its full count): this rank's part, and with sharded state every
 * other rank's, gathered (a collective: every rank makes the same call). */
static cuoptimStatus_t get_buffer(cuoptimOptimizer_t opt, const cuoptimWeightEntry *entry, double *values,
                                  const char *caller) {
  const cuoptimVariableRec *v = &opt->variables[entry->variable];
  if (entry->buffer == &v->accumulator && cuoptim_comm_accumulators_partial(opt))
    return get_partial_accumulator(opt, v, values, caller);
  if (!cuoptim_comm_sharded(opt)) return transfer_buffer(opt, *entry->buffer, NULL, values, v->count, caller);
  float *full = malloc(v->count * sizeof *full);
  if (!full) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  cuoptimStatus_t status = opt->ops->download(opt, full + v->local_offset, *entry->buffer, v->local_count * sizeof *full);
  if (status == CUOPTIM_STATUS_SUCCESS)
    status = opt->comm->ops->allgather_shares_host(opt, full + v->local_offset, full, v->count, sizeof *full,
                                                   "cuoptimGetWeights (gathering the shards)");
  for (size_t i = 0; status == CUOPTIM_STATUS_SUCCESS && i < v->count; i++) values[i] = full[i];
  free(full);
  return status;
}

cuoptimStatus_t cuoptimGetWeights(cuoptimOptimizer_t opt, int index, double *values, size_t count) {
  static const char *caller = "cuoptimGetWeights";
  if (opt && opt->multi) return cuoptim_multi_get_weights(opt, index, values, count);
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  CUOPTIM_REQUIRE_NOT_NULL(caller, values);
  cuoptimWeightEntry *entry = NULL;
  CUOPTIM_CHECK(find_weight(opt, index, caller, &entry));
  CUOPTIM_CHECK(check_count(entry, count, caller));
  CUOPTIM_CHECK(cuoptim_build(opt, caller, NULL));
  if (entry->kind == CUOPTIM_WEIGHT_BUFFER) return get_buffer(opt, entry, values, caller);
  if (entry->kind == CUOPTIM_WEIGHT_FACTORED)
    return transfer_buffer(opt, *entry->buffer, NULL, values, entry->info.count, caller);
  cuoptimScalarState state;
  CUOPTIM_CHECK(read_state(opt, caller, &state));
  switch (entry->kind) {
    case CUOPTIM_WEIGHT_ITERATION: values[0] = (double)state.iterations; break;
    case CUOPTIM_WEIGHT_LEARNING_RATE: values[0] = state.learning_rate; break;
    case CUOPTIM_WEIGHT_LOSS_SCALE_COUNTER: values[0] = (double)state.loss_scale_counter; break;
    case CUOPTIM_WEIGHT_LOSS_SCALE: values[0] = state.loss_scale; break;
    case CUOPTIM_WEIGHT_U_PRODUCT: values[0] = state.u_product; break;
    case CUOPTIM_WEIGHT_OUTER_ITERATION: values[0] = (double)opt->outer_iterations; break;
    case CUOPTIM_WEIGHT_OUTER_LEARNING_RATE: values[0] = opt->outer_learning_rate; break;
    default: return cuoptim_error(CUOPTIM_STATUS_INTERNAL_ERROR, "%s: unknown entry kind", caller);
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static int is_counter_value(double x) { return x >= 0 && x <= 9.0e15 && floor(x) == x; }

/* Whether float32 holds x without turning a finite value into an infinity. */
static int fits_float(double x) { return !isfinite(x) || isfinite((float)x); }

/* The values SetWeights would store, checked before anything is written: counters are integers
 * >= 0, scalars finite in float32 (the step computes with them), buffer elements not finite
 * values that overflow float32. */
static cuoptimStatus_t check_weight_values(const cuoptimWeightEntry *entry, const double *values, size_t count,
                                           const char *caller) {
  const char *name = entry->info.name;
  if (entry->kind == CUOPTIM_WEIGHT_BUFFER || entry->kind == CUOPTIM_WEIGHT_FACTORED) {
    for (size_t i = 0; i < count; i++)
      if (!fits_float(values[i]))
        return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                             "%s: values[%zu] = %g: outside float32's range (entry \"%s\" is float32)", caller, i,
                             values[i], name);
    return CUOPTIM_STATUS_SUCCESS;
  }
  if (entry->info.is_integer && !is_counter_value(values[0]))
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: values[0] = %g: \"%s\" is a counter (an integer >= 0)",
                         caller, values[0], name);
  if (!entry->info.is_integer && !isfinite((float)values[0]))
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: values[0] = %g: \"%s\" must be finite in float32", caller,
                         values[0], name);
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimSetWeights(cuoptimOptimizer_t opt, int index, const double *values, size_t count) {
  static const char *caller = "cuoptimSetWeights";
  if (opt && opt->multi) return cuoptim_multi_set_weights(opt, index, values, count);
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  CUOPTIM_REQUIRE_NOT_NULL(caller, values);
  cuoptimWeightEntry *entry = NULL;
  CUOPTIM_CHECK(find_weight(opt, index, caller, &entry));
  CUOPTIM_CHECK(check_count(entry, count, caller));
  CUOPTIM_CHECK(check_weight_values(entry, values, count, caller));
  CUOPTIM_CHECK(cuoptim_build(opt, caller, NULL));
  if (entry->kind == CUOPTIM_WEIGHT_BUFFER) {
    const cuoptimVariableRec *v = &opt->variables[entry->variable];
    int accumulator = entry->buffer == &v->accumulator;
    if (accumulator && cuoptim_comm_accumulators_partial(opt)) return set_partial_accumulator(opt, v, values, caller);
    CUOPTIM_CHECK(transfer_buffer(opt, *entry->buffer, values + v->local_offset, NULL, v->local_count, caller));
    /* The same values on every rank: this accumulator is replicated, the others still zero. */
    if (accumulator && cuoptim_comm_accumulates_locally(opt)) opt->accumulators = CUOPTIM_ACCUMULATORS_REPLICATED;
    return CUOPTIM_STATUS_SUCCESS;
  }
  if (entry->kind == CUOPTIM_WEIGHT_FACTORED)
    return transfer_buffer(opt, *entry->buffer, values, NULL, entry->info.count, caller);
  cuoptimScalarState state;
  CUOPTIM_CHECK(read_state(opt, caller, &state));
  const int64_t old_iterations = state.iterations;
  switch (entry->kind) {
    case CUOPTIM_WEIGHT_ITERATION: state.iterations = (int64_t)values[0]; break;
    case CUOPTIM_WEIGHT_LEARNING_RATE: state.learning_rate = (float)values[0]; break;
    case CUOPTIM_WEIGHT_LOSS_SCALE_COUNTER: state.loss_scale_counter = (int64_t)values[0]; break;
    case CUOPTIM_WEIGHT_LOSS_SCALE: state.loss_scale = (float)values[0]; break;
    case CUOPTIM_WEIGHT_U_PRODUCT: state.u_product = (float)values[0]; break;
    case CUOPTIM_WEIGHT_OUTER_ITERATION: opt->outer_iterations = (int64_t)values[0]; return CUOPTIM_STATUS_SUCCESS;
    case CUOPTIM_WEIGHT_OUTER_LEARNING_RATE: opt->outer_learning_rate = (float)values[0]; return CUOPTIM_STATUS_SUCCESS;
    default: return cuoptim_error(CUOPTIM_STATUS_INTERNAL_ERROR, "%s: unknown entry kind", caller);
  }
  CUOPTIM_CHECK(write_state(opt, &state));
  if (entry->kind == CUOPTIM_WEIGHT_ITERATION) {
    cuoptim_note_iterations(opt, state.iterations);
    if (opt->parent) cuoptim_multi_sub_counter_moved(opt, old_iterations, state.iterations);
  }
  if (entry->kind == CUOPTIM_WEIGHT_LEARNING_RATE) opt->config.learning_rate.initial_learning_rate = state.learning_rate;
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimFinalizeVariableValues(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  static const char *caller = "cuoptimFinalizeVariableValues";
  if (opt && opt->multi) return cuoptim_multi_finalize(opt, stream);
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  if (!opt->config.use_ema || opt->num_variables == 0) return CUOPTIM_STATUS_SUCCESS;
  CUOPTIM_CHECK(cuoptim_build(opt, caller, &stream));
  CUOPTIM_CHECK(opt->ops->finalize(opt, stream));
  if (!cuoptim_comm_sharded(opt)) return CUOPTIM_STATUS_SUCCESS;
  /* Sharded: every rank's share of the averages gathered, and waited for by later state calls. */
  CUOPTIM_CHECK(cuoptim_comm_end_step(opt, stream));
  return opt->ops->stage_enqueued(opt, "gathering the shards after cuoptimFinalizeVariableValues", stream);
}

cuoptimStatus_t cuoptimScheduleFreeAveragedWeights(cuoptimOptimizer_t opt, cuoptimVariable_t variable, void *out,
                                                   cuoptimStream_t stream) {
  static const char *caller = "cuoptimScheduleFreeAveragedWeights";
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  CUOPTIM_REQUIRE_NOT_NULL(caller, out);
  CUOPTIM_CHECK(check_variable(opt, variable, caller, "variable"));
  if (opt->config.kind != CUOPTIM_SCHEDULE_FREE_ADAMW)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "%s: optimizer is %s: only ScheduleFreeAdamW keeps averaged weights apart from the variables",
                         caller, cuoptimOptimizerName(opt->config.kind));
  if (cuoptim_comm_sharded(opt))
    return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE,
                         "%s: the state is sharded (options.shard_state): this rank holds only its share of the "
                         "sequence z, and the averaged weights need all of it",
                         caller);
  const cuoptimVariableRec *v = &opt->variables[variable];
  CUOPTIM_CHECK(opt->ops->check_pointer(opt, out, v->dtype, caller, "out"));
  CUOPTIM_CHECK(cuoptim_build(opt, caller, &stream));
  return opt->ops->averaged_weights(opt, variable, out, stream);
}

cuoptimStatus_t cuoptimSynchronize(cuoptimOptimizer_t opt) {
  if (opt && opt->multi) return cuoptim_multi_synchronize(opt, -1);
  CUOPTIM_REQUIRE_OPTIMIZER("cuoptimSynchronize", opt);
  return opt->ops->synchronize(opt);
}

cuoptimStatus_t cuoptim_describe_weights(cuoptimOptimizer_t opt) { return describe_weights(opt); }

/* ---- waiting with a deadline ------------------------------------------------------------------ */

static int64_t monotonic_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* now + timeout_ms, saturating (a timeout of centuries is a wait without end). */
static int64_t deadline_after(int64_t now_ns, int64_t timeout_ms) {
  if (timeout_ms > (INT64_MAX - now_ns) / 1000000) return INT64_MAX;
  return now_ns + timeout_ms * 1000000;
}

/* Sleeps `ns`, at most until `deadline`. */
static void sleep_until_at_most(int64_t ns, int64_t deadline) {
  int64_t now = monotonic_ns();
  if (deadline - now < ns) ns = deadline - now;
  if (ns <= 0) return;
  struct timespec t = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
  nanosleep(&t, NULL);
}

/* What cuoptimSynchronizeTimeout polls, without waiting: *complete = 1 when all the optimizer waits
 * for has completed, else `in_flight` names the earliest piece still running. Everything a wait
 * with a deadline must watch is asked here, in each round: the backend's enqueued work, and, for
 * an optimizer with a communicator, its asynchronous error, so that a failed peer ends the wait
 * with that error rather than with the timeout. */
static cuoptimStatus_t query_in_flight(cuoptimOptimizer_t opt, int *complete, char *in_flight, size_t size) {
  if (opt->comm && opt->comm->ops->poll) {
    cuoptimStatus_t status = opt->comm->ops->poll(opt, "cuoptimSynchronizeTimeout");
    if (status != CUOPTIM_STATUS_SUCCESS) {
      opt->comm->broken = 1; /* as after any failed collective: no further step communicates */
      return status;
    }
  }
  return opt->ops->query(opt, complete, in_flight, size);
}

/* Polls from every 50 us up to every 1 ms: a step's stages take tens of microseconds and up. */
#define POLL_FIRST_NS 50000
#define POLL_LONGEST_NS 1000000

cuoptimStatus_t cuoptimSynchronizeTimeout(cuoptimOptimizer_t opt, int64_t timeout_ms) {
  static const char *caller = "cuoptimSynchronizeTimeout";
  if (timeout_ms < 0)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: timeout_ms = %lld: must be >= 0", caller,
                         (long long)timeout_ms);
  if (opt && opt->multi) return cuoptim_multi_synchronize(opt, timeout_ms);
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  const int64_t deadline = deadline_after(monotonic_ns(), timeout_ms);
  char in_flight[256];
  for (int64_t pause = POLL_FIRST_NS;; pause = pause * 2 < POLL_LONGEST_NS ? pause * 2 : POLL_LONGEST_NS) {
    int complete = 0;
    in_flight[0] = '\0';
    CUOPTIM_CHECK(query_in_flight(opt, &complete, in_flight, sizeof in_flight));
    if (complete) return CUOPTIM_STATUS_SUCCESS;
    if (monotonic_ns() >= deadline)
      return cuoptim_error(CUOPTIM_STATUS_TIMEOUT, "%s: timeout_ms = %lld passed and %s has not completed", caller,
                           (long long)timeout_ms, in_flight);
    sleep_until_at_most(pause, deadline);
  }
}
