/*
 * case.c — load, run and compare case files (see case.h; format in DESIGN.md "Case files and
 * cuoptim-replay").
 *
 * Loading validates everything before anything runs, so that a malformed case is reported as
 * such (with the JSON path of the problem) instead of as a wrong result.
 */
#include "case.h"

#include <cjson/cJSON.h>
#include <cuda_runtime_api.h>
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The library rejects more elements than this per variable (cuoptimAddVariable). */
#define MAX_ELEMENTS ((uint64_t)1 << 40)
/* Longest JSON path in a message. */
#define PATH_LEN 256

static int set_error(char *error, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int set_error(char *error, size_t size, const char *fmt, ...) {
  if (error != NULL && size > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error, size, fmt, ap);
    va_end(ap);
  }
  return -1;
}

static char *dup_string(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p != NULL) memcpy(p, s, n);
  return p;
}

static const char *type_name(const cJSON *item) {
  if (item == NULL) return "nothing";
  if (cJSON_IsNull(item)) return "null";
  if (cJSON_IsBool(item)) return "a boolean";
  if (cJSON_IsNumber(item)) return "a number";
  if (cJSON_IsString(item)) return "a string";
  if (cJSON_IsArray(item)) return "an array";
  if (cJSON_IsObject(item)) return "an object";
  return "an invalid value";
}

/* ---------------------------------------------------------------------------------------------
 * Reading values
 * ------------------------------------------------------------------------------------------- */

/* A number, or one of the strings that stand for the non-finite values JSON lacks. */
static int read_number(const cJSON *item, double *out) {
  if (cJSON_IsNumber(item)) {
    *out = item->valuedouble;
    return 0;
  }
  if (cJSON_IsString(item)) {
    const char *s = item->valuestring;
    if (strcasecmp(s, "nan") == 0 || strcasecmp(s, "-nan") == 0) {
      *out = NAN;
      return 0;
    }
    if (strcasecmp(s, "inf") == 0 || strcasecmp(s, "+inf") == 0 || strcasecmp(s, "infinity") == 0) {
      *out = INFINITY;
      return 0;
    }
    if (strcasecmp(s, "-inf") == 0 || strcasecmp(s, "-infinity") == 0) {
      *out = -INFINITY;
      return 0;
    }
  }
  return -1;
}

static int number_error(const cJSON *item, const char *path, size_t index, char *error, size_t size) {
  if (cJSON_IsString(item))
    return set_error(error, size, "%s[%zu]: expected a number, got the string \"%.40s\" (only \"nan\", \"inf\" and "
                     "\"-inf\" stand for numbers)", path, index, item->valuestring);
  return set_error(error, size, "%s[%zu]: expected a number, got %s", path, index, type_name(item));
}

/* `count` float32 values from the array `arr` (a bare number is accepted for a scalar when
 * scalar_ok). */
static int read_floats(const cJSON *arr, size_t count, int scalar_ok, float *out, const char *path, char *error,
                       size_t size) {
  double x;
  if (scalar_ok && count == 1 && !cJSON_IsArray(arr) && read_number(arr, &x) == 0) {
    float f = (float)x;
    if (isinf(f) && isfinite(x)) return set_error(error, size, "%s: %g is not a float32 value", path, x);
    out[0] = f;
    return 0;
  }
  if (!cJSON_IsArray(arr)) return set_error(error, size, "%s: expected an array of %zu numbers, got %s", path, count, type_name(arr));
  size_t n = (size_t)cJSON_GetArraySize(arr);
  if (n != count) return set_error(error, size, "%s: expected %zu numbers, got %zu", path, count, n);
  size_t i = 0;
  const cJSON *item;
  cJSON_ArrayForEach(item, arr) {
    if (read_number(item, &x) != 0) return number_error(item, path, i, error, size);
    float f = (float)x;
    if (isinf(f) && isfinite(x)) return set_error(error, size, "%s[%zu]: %g is not a float32 value", path, i, x);
    out[i++] = f;
  }
  return 0;
}

static int read_doubles(const cJSON *arr, size_t count, double *out, const char *path, char *error, size_t size) {
  double x;
  if (count == 1 && !cJSON_IsArray(arr) && read_number(arr, &x) == 0) {
    out[0] = x;
    return 0;
  }
  if (!cJSON_IsArray(arr)) return set_error(error, size, "%s: expected an array of %zu numbers, got %s", path, count, type_name(arr));
  size_t n = (size_t)cJSON_GetArraySize(arr);
  if (n != count) return set_error(error, size, "%s: expected %zu numbers, got %zu", path, count, n);
  size_t i = 0;
  const cJSON *item;
  cJSON_ArrayForEach(item, arr) {
    if (read_number(item, &x) != 0) return number_error(item, path, i, error, size);
    out[i++] = x;
  }
  return 0;
}

/* A non-negative integer written as a JSON number. */
static int read_count(const cJSON *item, int64_t *out, const char *path, char *error, size_t size) {
  if (!cJSON_IsNumber(item)) return set_error(error, size, "%s: expected a non-negative integer, got %s", path, type_name(item));
  double x = item->valuedouble;
  if (!(x >= 0 && x <= 9007199254740992.0) || floor(x) != x)
    return set_error(error, size, "%s: expected a non-negative integer, got %g", path, x);
  *out = (int64_t)x;
  return 0;
}

static int read_shape(const cJSON *arr, int *ndim, int64_t *shape, size_t *count, const char *path, char *error,
                      size_t size) {
  if (!cJSON_IsArray(arr)) return set_error(error, size, "%s: expected an array of dimensions, got %s", path, type_name(arr));
  int n = cJSON_GetArraySize(arr);
  if (n > CUOPTIM_CASE_MAX_DIMS) return set_error(error, size, "%s: %d dimensions, at most %d supported", path, n, CUOPTIM_CASE_MAX_DIMS);
  uint64_t product = 1;
  int i = 0;
  const cJSON *item;
  cJSON_ArrayForEach(item, arr) {
    char sub[PATH_LEN];
    snprintf(sub, sizeof sub, "%s[%d]", path, i);
    if (read_count(item, &shape[i], sub, error, size) != 0) return -1;
    if (shape[i] != 0 && product > MAX_ELEMENTS / (uint64_t)shape[i])
      return set_error(error, size, "%s: more than 2^40 elements", path);
    product *= (uint64_t)shape[i];
    i++;
  }
  *ndim = n;
  *count = (size_t)product;
  return 0;
}

/* Rejects keys outside `allowed` (a typo would otherwise be silently ignored) and repeated keys
 * (cJSON would silently use the first). */
static int check_keys(const cJSON *obj, const char *const *allowed, const char *path, char *error, size_t size) {
  const cJSON *item;
  cJSON_ArrayForEach(item, obj) {
    const char *key = item->string ? item->string : "";
    int known = 0;
    for (const char *const *a = allowed; *a != NULL; a++)
      if (strcmp(*a, key) == 0) known = 1;
    if (!known) {
      char list[256] = "";
      for (const char *const *a = allowed; *a != NULL; a++) {
        if (list[0] != '\0') strncat(list, ", ", sizeof list - strlen(list) - 1);
        strncat(list, *a, sizeof list - strlen(list) - 1);
      }
      return set_error(error, size, "%s%sunknown key \"%.60s\" (expected: %s)", path, path[0] ? ": " : "", key, list);
    }
    for (const cJSON *prev = obj->child; prev != item; prev = prev->next)
      if (prev->string != NULL && strcmp(prev->string, key) == 0)
        return set_error(error, size, "%s%skey \"%.60s\" appears twice", path, path[0] ? ": " : "", key);
  }
  return 0;
}

static char *read_file(const char *path, size_t *length, char *error, size_t size) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    set_error(error, size, "%s: cannot open: %s", path, strerror(errno));
    return NULL;
  }
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap);
  while (buf != NULL) {
    if (len + 1 >= cap) {
      char *p = realloc(buf, cap * 2);
      if (p == NULL) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = p;
      cap *= 2;
    }
    size_t got = fread(buf + len, 1, cap - len - 1, f);
    len += got;
    if (got == 0) break;
  }
  if (buf == NULL) {
    set_error(error, size, "%s: out of memory", path);
  } else if (ferror(f)) {
    set_error(error, size, "%s: read error", path);
    free(buf);
    buf = NULL;
  } else {
    buf[len] = '\0';
    *length = len;
  }
  fclose(f);
  return buf;
}

/* ---------------------------------------------------------------------------------------------
 * Loading
 * ------------------------------------------------------------------------------------------- */

static float **alloc_per_variable(const cuoptimCase *c) {
  float **arrays = calloc((size_t)c->num_variables + 1, sizeof *arrays);
  if (arrays == NULL) return NULL;
  for (int v = 0; v < c->num_variables; v++) {
    arrays[v] = malloc((c->variables[v].count ? c->variables[v].count : 1) * sizeof(float));
    if (arrays[v] == NULL) {
      for (int k = 0; k < v; k++) free(arrays[k]);
      free(arrays);
      return NULL;
    }
  }
  return arrays;
}

static void free_per_variable(float **arrays, int n) {
  if (arrays == NULL) return;
  for (int v = 0; v < n; v++) free(arrays[v]);
  free(arrays);
}

/* One float array per variable, each of the variable's length ("variables" and
 * "finalized_variables" of expected). */
static int load_per_variable(cuoptimCase *c, const cJSON *arr, const char *path, float ***out, char *error,
                             size_t size) {
  if (!cJSON_IsArray(arr)) return set_error(error, size, "%s: expected an array of %d arrays, got %s", path, c->num_variables, type_name(arr));
  int n = cJSON_GetArraySize(arr);
  if (n != c->num_variables)
    return set_error(error, size, "%s: expected %d arrays (one per variable), got %d", path, c->num_variables, n);
  *out = alloc_per_variable(c);
  if (*out == NULL) return set_error(error, size, "%s: out of memory", path);
  int v = 0;
  const cJSON *item;
  cJSON_ArrayForEach(item, arr) {
    char sub[PATH_LEN];
    snprintf(sub, sizeof sub, "%s[%d]", path, v);
    if (read_floats(item, c->variables[v].count, c->variables[v].ndim == 0, (*out)[v], sub, error, size) != 0) return -1;
    v++;
  }
  return 0;
}

static int load_variables(cuoptimCase *c, const cJSON *arr, char *error, size_t size) {
  static const char *const keys[] = {"name", "shape", "value", NULL};
  if (!cJSON_IsArray(arr)) return set_error(error, size, "variables: expected an array, got %s", type_name(arr));
  int n = cJSON_GetArraySize(arr);
  if (n == 0) return set_error(error, size, "variables: the case has no variables");
  c->variables = calloc((size_t)n, sizeof *c->variables);
  if (c->variables == NULL) return set_error(error, size, "variables: out of memory");
  c->num_variables = n;
  int v = 0;
  const cJSON *item;
  cJSON_ArrayForEach(item, arr) {
    cuoptimCaseVariable *var = &c->variables[v];
    char path[PATH_LEN], sub[PATH_LEN + 32];
    snprintf(path, sizeof path, "variables[%d]", v);
    if (!cJSON_IsObject(item)) return set_error(error, size, "%s: expected an object, got %s", path, type_name(item));
    if (check_keys(item, keys, path, error, size) != 0) return -1;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(item, "name");
    if (!cJSON_IsString(name)) return set_error(error, size, "%s.name: expected a string, got %s", path, type_name(name));
    size_t len = strlen(name->valuestring);
    if (len == 0 || len >= CUOPTIM_MAX_NAME)
      return set_error(error, size, "%s.name: length %zu, expected 1 to %d characters", path, len, CUOPTIM_MAX_NAME - 1);
    memcpy(var->name, name->valuestring, len + 1);
    for (int k = 0; k < v; k++)
      if (strcmp(c->variables[k].name, var->name) == 0)
        return set_error(error, size, "%s.name: \"%s\" is also the name of variables[%d]", path, var->name, k);
    snprintf(sub, sizeof sub, "%s.shape", path);
    if (read_shape(cJSON_GetObjectItemCaseSensitive(item, "shape"), &var->ndim, var->shape, &var->count, sub, error,
                   size) != 0)
      return -1;
    var->value = malloc((var->count ? var->count : 1) * sizeof(float));
    if (var->value == NULL) return set_error(error, size, "%s: out of memory", path);
    snprintf(sub, sizeof sub, "%s.value", path);
    if (read_floats(cJSON_GetObjectItemCaseSensitive(item, "value"), var->count, var->ndim == 0, var->value, sub,
                    error, size) != 0)
      return -1;
    v++;
  }
  return 0;
}

static int load_steps(cuoptimCase *c, const cJSON *arr, char *error, size_t size) {
  if (!cJSON_IsArray(arr)) return set_error(error, size, "steps: expected an array, got %s", type_name(arr));
  int n = cJSON_GetArraySize(arr);
  c->steps = calloc((size_t)n + 1, sizeof *c->steps);
  if (c->steps == NULL) return set_error(error, size, "steps: out of memory");
  c->num_steps = n;
  int s = 0;
  const cJSON *step;
  cJSON_ArrayForEach(step, arr) {
    if (!cJSON_IsArray(step))
      return set_error(error, size, "steps[%d]: expected an array of %d gradients, got %s", s, c->num_variables, type_name(step));
    int m = cJSON_GetArraySize(step);
    if (m != c->num_variables)
      return set_error(error, size, "steps[%d]: expected %d gradients (one per variable, null for none), got %d", s,
                       c->num_variables, m);
    c->steps[s] = calloc((size_t)m, sizeof *c->steps[s]);
    if (c->steps[s] == NULL) return set_error(error, size, "steps[%d]: out of memory", s);
    int v = 0;
    const cJSON *grad;
    cJSON_ArrayForEach(grad, step) {
      if (!cJSON_IsNull(grad)) {
        char path[PATH_LEN];
        snprintf(path, sizeof path, "steps[%d][%d]", s, v);
        const cuoptimCaseVariable *var = &c->variables[v];
        c->steps[s][v] = malloc((var->count ? var->count : 1) * sizeof(float));
        if (c->steps[s][v] == NULL) return set_error(error, size, "%s: out of memory", path);
        if (!cJSON_IsArray(grad) && !(var->ndim == 0 && (cJSON_IsNumber(grad) || cJSON_IsString(grad))))
          return set_error(error, size, "%s: expected null or an array of %zu numbers (gradient of %s), got %s", path,
                           var->count, var->name, type_name(grad));
        if (read_floats(grad, var->count, var->ndim == 0, c->steps[s][v], path, error, size) != 0) return -1;
      }
      v++;
    }
    s++;
  }
  return 0;
}

static int load_expected_state(cuoptimCase *c, const cJSON *arr, char *error, size_t size) {
  static const char *const keys[] = {"name", "shape", "value", NULL};
  if (!cJSON_IsArray(arr)) return set_error(error, size, "expected.optimizer_variables: expected an array, got %s", type_name(arr));
  int n = cJSON_GetArraySize(arr);
  c->expected_state = calloc((size_t)n + 1, sizeof *c->expected_state);
  if (c->expected_state == NULL) return set_error(error, size, "expected.optimizer_variables: out of memory");
  c->num_expected_state = n;
  c->has_expected_state = 1;
  int i = 0;
  const cJSON *item;
  cJSON_ArrayForEach(item, arr) {
    cuoptimCaseState *st = &c->expected_state[i];
    char path[PATH_LEN], sub[PATH_LEN + 32];
    snprintf(path, sizeof path, "expected.optimizer_variables[%d]", i);
    if (!cJSON_IsObject(item)) return set_error(error, size, "%s: expected an object, got %s", path, type_name(item));
    if (check_keys(item, keys, path, error, size) != 0) return -1;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(item, "name");
    if (!cJSON_IsString(name)) return set_error(error, size, "%s.name: expected a string, got %s", path, type_name(name));
    if (strlen(name->valuestring) >= CUOPTIM_MAX_NAME)
      return set_error(error, size, "%s.name: longer than %d characters", path, CUOPTIM_MAX_NAME - 1);
    strcpy(st->name, name->valuestring);
    int ndim;
    int64_t shape[CUOPTIM_CASE_MAX_DIMS];
    snprintf(sub, sizeof sub, "%s.shape", path);
    if (read_shape(cJSON_GetObjectItemCaseSensitive(item, "shape"), &ndim, shape, &st->count, sub, error, size) != 0)
      return -1;
    st->value = malloc((st->count ? st->count : 1) * sizeof(double));
    if (st->value == NULL) return set_error(error, size, "%s: out of memory", path);
    snprintf(sub, sizeof sub, "%s.value", path);
    if (read_doubles(cJSON_GetObjectItemCaseSensitive(item, "value"), st->count, st->value, sub, error, size) != 0)
      return -1;
    i++;
  }
  return 0;
}

static int load_expected(cuoptimCase *c, const cJSON *obj, char *error, size_t size) {
  static const char *const keys[] = {"iterations", "variables", "optimizer_variables", "finalized_variables", NULL};
  if (!cJSON_IsObject(obj)) return set_error(error, size, "expected: expected an object, got %s", type_name(obj));
  if (check_keys(obj, keys, "expected", error, size) != 0) return -1;
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, "iterations");
  if (it == NULL) return set_error(error, size, "expected.iterations: missing");
  if (read_count(it, &c->expected_iterations, "expected.iterations", error, size) != 0) return -1;
  const cJSON *vars = cJSON_GetObjectItemCaseSensitive(obj, "variables");
  if (vars == NULL) return set_error(error, size, "expected.variables: missing");
  if (load_per_variable(c, vars, "expected.variables", &c->expected_variables, error, size) != 0) return -1;
  const cJSON *state = cJSON_GetObjectItemCaseSensitive(obj, "optimizer_variables");
  if (state != NULL && load_expected_state(c, state, error, size) != 0) return -1;
  const cJSON *fin = cJSON_GetObjectItemCaseSensitive(obj, "finalized_variables");
  if (fin != NULL) {
    if (load_per_variable(c, fin, "expected.finalized_variables", &c->expected_finalized, error, size) != 0) return -1;
    c->has_expected_finalized = 1;
  }
  c->has_expected = 1;
  return 0;
}

/* The patterns are Python `re` expressions, joined with "|" as Keras joins them: the library's
 * own cuoptimExcludeFromWeightDecay judges them, on a scratch host optimizer, in file order. */
static int load_exclusions(cuoptimCase *c, const cJSON *arr, char *error, size_t size) {
  if (!cJSON_IsArray(arr))
    return set_error(error, size, "exclude_from_weight_decay: expected an array of regular expressions, got %s", type_name(arr));
  int n = cJSON_GetArraySize(arr);
  c->exclude = calloc((size_t)n + 1, sizeof *c->exclude);
  if (c->exclude == NULL) return set_error(error, size, "exclude_from_weight_decay: out of memory");
  c->num_exclude = n;
  cuoptimConfig_t config;
  cuoptimOptimizer_t judge = NULL;
  if (cuoptimConfigInit(&config, CUOPTIM_SGD) != CUOPTIM_STATUS_SUCCESS ||
      cuoptimCreate(&judge, &config, CUOPTIM_BACKEND_HOST, 0) != CUOPTIM_STATUS_SUCCESS)
    return set_error(error, size, "exclude_from_weight_decay: %s", cuoptimGetLastErrorMessage());
  int i = 0, rc = 0;
  const cJSON *item;
  cJSON_ArrayForEach(item, arr) {
    if (!cJSON_IsString(item)) {
      rc = set_error(error, size, "exclude_from_weight_decay[%d]: expected a string, got %s", i, type_name(item));
      break;
    }
    if (cuoptimExcludeFromWeightDecay(judge, item->valuestring) != CUOPTIM_STATUS_SUCCESS) {
      rc = set_error(error, size, "exclude_from_weight_decay[%d]: %s", i, cuoptimGetLastErrorMessage());
      break;
    }
    c->exclude[i] = dup_string(item->valuestring);
    if (c->exclude[i] == NULL) {
      rc = set_error(error, size, "exclude_from_weight_decay: out of memory");
      break;
    }
    i++;
  }
  cuoptimDestroy(judge);
  return rc;
}

static int optional_string(const cJSON *root, const char *key, char **out, char *error, size_t size) {
  const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
  if (item != NULL && !cJSON_IsString(item))
    return set_error(error, size, "%s: expected a string, got %s", key, type_name(item));
  *out = dup_string(item != NULL ? item->valuestring : "");
  if (*out == NULL) return set_error(error, size, "%s: out of memory", key);
  return 0;
}

/* Line and column of byte `offset` of `text`, both from 1. */
static void line_column(const char *text, size_t offset, int *line, int *column) {
  *line = 1;
  *column = 1;
  for (size_t i = 0; i < offset && text[i] != '\0'; i++) {
    if (text[i] == '\n') {
      (*line)++;
      *column = 1;
    } else {
      (*column)++;
    }
  }
}

static int load_root(cuoptimCase *c, const cJSON *root, char *error, size_t size) {
  static const char *const keys[] = {"format", "source", "description", "optimizer", "exclude_from_weight_decay",
                                     "variables", "steps", "rank_steps", "expected", NULL};
  if (!cJSON_IsObject(root)) return set_error(error, size, "the case is %s, expected an object", type_name(root));
  const cJSON *format = cJSON_GetObjectItemCaseSensitive(root, "format");
  if (format == NULL) return set_error(error, size, "format: missing (expected \"" CUOPTIM_CASE_FORMAT "\")");
  if (!cJSON_IsString(format) || strcmp(format->valuestring, CUOPTIM_CASE_FORMAT) != 0)
    return set_error(error, size, "format: expected \"" CUOPTIM_CASE_FORMAT "\", got %s%.60s%s",
                     cJSON_IsString(format) ? "\"" : "", cJSON_IsString(format) ? format->valuestring : type_name(format),
                     cJSON_IsString(format) ? "\"" : "");
  if (check_keys(root, keys, "", error, size) != 0) return -1;
  if (optional_string(root, "source", &c->source, error, size) != 0) return -1;
  if (optional_string(root, "description", &c->description, error, size) != 0) return -1;

  const cJSON *opt = cJSON_GetObjectItemCaseSensitive(root, "optimizer");
  if (opt == NULL) return set_error(error, size, "optimizer: missing");
  if (!cJSON_IsObject(opt)) return set_error(error, size, "optimizer: expected an object, got %s", type_name(opt));
  c->optimizer_json = cJSON_PrintUnformatted(opt);
  if (c->optimizer_json == NULL) return set_error(error, size, "optimizer: out of memory");
  cuoptimStatus_t st = cuoptimConfigFromKerasJSON(&c->config, c->optimizer_json);
  if (st != CUOPTIM_STATUS_SUCCESS)
    return set_error(error, size, "optimizer: %s (%s)", cuoptimGetLastErrorMessage(), cuoptimGetStatusString(st));

  const cJSON *exclude = cJSON_GetObjectItemCaseSensitive(root, "exclude_from_weight_decay");
  if (exclude != NULL && load_exclusions(c, exclude, error, size) != 0) return -1;

  const cJSON *vars = cJSON_GetObjectItemCaseSensitive(root, "variables");
  if (vars == NULL) return set_error(error, size, "variables: missing");
  if (load_variables(c, vars, error, size) != 0) return -1;

  const cJSON *steps = cJSON_GetObjectItemCaseSensitive(root, "steps");
  if (steps == NULL) return set_error(error, size, "steps: missing");
  if (load_steps(c, steps, error, size) != 0) return -1;

  const cJSON *ranks = cJSON_GetObjectItemCaseSensitive(root, "rank_steps");
  if (ranks != NULL) {
    if (!cJSON_IsArray(ranks)) return set_error(error, size, "rank_steps: expected an array, got %s", type_name(ranks));
    c->has_rank_steps = 1;
  }

  const cJSON *expected = cJSON_GetObjectItemCaseSensitive(root, "expected");
  if (expected != NULL && load_expected(c, expected, error, size) != 0) return -1;
  return 0;
}

int cuoptim_case_load(const char *path, cuoptimCase *c, char *error, size_t error_size) {
  if (c == NULL) return set_error(error, error_size, "cuoptim_case_load: case is NULL");
  memset(c, 0, sizeof *c);
  if (path == NULL) return set_error(error, error_size, "cuoptim_case_load: path is NULL");
  size_t length = 0;
  char *text = read_file(path, &length, error, error_size);
  if (text == NULL) return -1;
  if (strlen(text) != length) {
    free(text);
    return set_error(error, error_size, "%s: not JSON (the file contains a NUL byte)", path);
  }
  const char *end = NULL;
  /* With require_null_terminated, cJSON counts the terminating NUL in the length. */
  cJSON *root = cJSON_ParseWithLengthOpts(text, length + 1, &end, 1);
  if (root == NULL) {
    size_t offset = end != NULL ? (size_t)(end - text) : length;
    int line, column;
    line_column(text, offset, &line, &column);
    if (offset >= length)
      set_error(error, error_size, "%s: not valid JSON: unexpected end of the file (truncated?)", path);
    else
      set_error(error, error_size, "%s: not valid JSON: syntax error at line %d, column %d", path, line, column);
    free(text);
    return -1;
  }
  free(text);
  c->path = dup_string(path);
  char message[1024];
  int rc = c->path == NULL ? set_error(message, sizeof message, "out of memory")
                           : load_root(c, root, message, sizeof message);
  cJSON_Delete(root);
  if (rc != 0) {
    set_error(error, error_size, "%s: %s", path, message);
    cuoptim_case_free(c);
    return -1;
  }
  return 0;
}

void cuoptim_case_free(cuoptimCase *c) {
  if (c == NULL) return;
  free(c->path);
  free(c->source);
  free(c->description);
  cJSON_free(c->optimizer_json);
  if (c->exclude != NULL)
    for (int i = 0; i < c->num_exclude; i++) free(c->exclude[i]);
  free(c->exclude);
  if (c->steps != NULL) {
    for (int s = 0; s < c->num_steps; s++) {
      if (c->steps[s] == NULL) continue;
      for (int v = 0; v < c->num_variables; v++) free(c->steps[s][v]);
      free(c->steps[s]);
    }
  }
  free(c->steps);
  free_per_variable(c->expected_variables, c->num_variables);
  free_per_variable(c->expected_finalized, c->num_variables);
  if (c->expected_state != NULL)
    for (int i = 0; i < c->num_expected_state; i++) free(c->expected_state[i].value);
  free(c->expected_state);
  if (c->variables != NULL)
    for (int v = 0; v < c->num_variables; v++) free(c->variables[v].value);
  free(c->variables);
  memset(c, 0, sizeof *c);
}

/* ---------------------------------------------------------------------------------------------
 * Running
 * ------------------------------------------------------------------------------------------- */

typedef struct {
  cuoptimBackend_t backend;
  int n;
  void **params; /* host or device buffers of the variables */
  void **grads;  /* CUDA: one device gradient buffer per variable */
} buffers_t;

static int cuda_failed(cudaError_t err, const char *what, char *error, size_t size) {
  (void)cudaGetLastError();
  set_error(error, size, "%s: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err));
  return CUOPTIM_STATUS_CUDA_ERROR;
}

static int library_failed(cuoptimStatus_t st, const char *where, char *error, size_t size) {
  const char *msg = cuoptimGetLastErrorMessage();
  if (where != NULL)
    set_error(error, size, "%s: %s (%s)", where, msg[0] ? msg : "(no message)", cuoptimGetStatusString(st));
  else
    set_error(error, size, "%s (%s)", msg[0] ? msg : "(no message)", cuoptimGetStatusString(st));
  return (int)st;
}

static void free_buffers(buffers_t *b) {
  for (int v = 0; v < b->n; v++) {
    if (b->backend == CUOPTIM_BACKEND_CUDA) {
      if (b->params != NULL && b->params[v] != NULL) cudaFree(b->params[v]);
      if (b->grads != NULL && b->grads[v] != NULL) cudaFree(b->grads[v]);
    } else if (b->params != NULL) {
      free(b->params[v]);
    }
  }
  free(b->params);
  free(b->grads);
}

static int alloc_buffers(const cuoptimCase *c, buffers_t *b, char *error, size_t size) {
  b->n = c->num_variables;
  b->params = calloc((size_t)b->n, sizeof *b->params);
  b->grads = calloc((size_t)b->n, sizeof *b->grads);
  if (b->params == NULL || b->grads == NULL) {
    set_error(error, size, "out of memory");
    return CUOPTIM_STATUS_ALLOC_FAILED;
  }
  for (int v = 0; v < b->n; v++) {
    size_t bytes = (c->variables[v].count ? c->variables[v].count : 1) * sizeof(float);
    if (b->backend == CUOPTIM_BACKEND_CUDA) {
      cudaError_t err = cudaMalloc(&b->params[v], bytes);
      if (err == cudaSuccess) err = cudaMalloc(&b->grads[v], bytes);
      if (err == cudaSuccess)
        err = cudaMemcpy(b->params[v], c->variables[v].value, c->variables[v].count * sizeof(float),
                         cudaMemcpyHostToDevice);
      if (err != cudaSuccess) return cuda_failed(err, c->variables[v].name, error, size);
    } else {
      b->params[v] = malloc(bytes);
      if (b->params[v] == NULL) {
        set_error(error, size, "out of memory");
        return CUOPTIM_STATUS_ALLOC_FAILED;
      }
      memcpy(b->params[v], c->variables[v].value, c->variables[v].count * sizeof(float));
    }
  }
  return 0;
}

/* Copies the variables' current values into out[v]. */
static int read_params(const cuoptimCase *c, const buffers_t *b, float **out, char *error, size_t size) {
  for (int v = 0; v < b->n; v++) {
    size_t bytes = c->variables[v].count * sizeof(float);
    if (b->backend == CUOPTIM_BACKEND_CUDA) {
      cudaError_t err = cudaMemcpy(out[v], b->params[v], bytes, cudaMemcpyDeviceToHost);
      if (err != cudaSuccess) return cuda_failed(err, c->variables[v].name, error, size);
    } else {
      memcpy(out[v], b->params[v], bytes);
    }
  }
  return 0;
}

static int read_state(cuoptimOptimizer_t opt, cuoptimCaseResult *r, char *error, size_t size) {
  int n = 0;
  cuoptimStatus_t st = cuoptimGetWeightCount(opt, &n);
  if (st != CUOPTIM_STATUS_SUCCESS) return library_failed(st, NULL, error, size);
  r->state = calloc((size_t)n + 1, sizeof *r->state);
  if (r->state == NULL) {
    set_error(error, size, "out of memory");
    return CUOPTIM_STATUS_ALLOC_FAILED;
  }
  r->num_state = n;
  for (int i = 0; i < n; i++) {
    cuoptimWeightInfo_t info;
    st = cuoptimGetWeightInfo(opt, i, &info);
    if (st != CUOPTIM_STATUS_SUCCESS) return library_failed(st, NULL, error, size);
    cuoptimCaseState *e = &r->state[i];
    memcpy(e->name, info.name, sizeof e->name);
    e->name[sizeof e->name - 1] = '\0';
    e->count = info.count;
    e->is_integer = info.is_integer;
    e->value = malloc((info.count ? info.count : 1) * sizeof(double));
    if (e->value == NULL) {
      set_error(error, size, "out of memory");
      return CUOPTIM_STATUS_ALLOC_FAILED;
    }
    st = cuoptimGetWeights(opt, i, e->value, info.count);
    if (st != CUOPTIM_STATUS_SUCCESS) return library_failed(st, NULL, error, size);
  }
  return 0;
}

static int run_steps(const cuoptimCase *c, cuoptimOptimizer_t opt, const buffers_t *b, char *error, size_t size) {
  cuoptimGradient_t *pairs = calloc((size_t)c->num_variables, sizeof *pairs);
  if (pairs == NULL) {
    set_error(error, size, "out of memory");
    return CUOPTIM_STATUS_ALLOC_FAILED;
  }
  int rc = 0;
  for (int s = 0; s < c->num_steps && rc == 0; s++) {
    char where[64];
    snprintf(where, sizeof where, "steps[%d]", s);
    if (b->backend == CUOPTIM_BACKEND_CUDA) {
      /* The previous step may still read the gradient buffers. */
      cuoptimStatus_t st = cuoptimSynchronize(opt);
      if (st != CUOPTIM_STATUS_SUCCESS) {
        rc = library_failed(st, where, error, size);
        break;
      }
    }
    for (int v = 0; v < c->num_variables && rc == 0; v++) {
      pairs[v].variable = v;
      pairs[v].dtype = CUOPTIM_FLOAT32;
      pairs[v].grad = NULL;
      const float *g = c->steps[s][v];
      if (g == NULL) continue;
      if (b->backend == CUOPTIM_BACKEND_CUDA) {
        cudaError_t err = cudaMemcpy(b->grads[v], g, c->variables[v].count * sizeof(float), cudaMemcpyHostToDevice);
        if (err != cudaSuccess) rc = cuda_failed(err, where, error, size);
        pairs[v].grad = b->grads[v];
      } else {
        pairs[v].grad = g;
      }
    }
    if (rc != 0) break;
    cuoptimStatus_t st = cuoptimApplyGradients(opt, c->num_variables, pairs, NULL);
    if (st != CUOPTIM_STATUS_SUCCESS) rc = library_failed(st, where, error, size);
  }
  free(pairs);
  return rc;
}

int cuoptim_case_run(const cuoptimCase *c, cuoptimBackend_t backend, cuoptimCaseResult *r, char *error,
                     size_t error_size) {
  if (r == NULL || c == NULL) {
    set_error(error, error_size, "cuoptim_case_run: NULL argument");
    return CUOPTIM_STATUS_NULL_POINTER;
  }
  memset(r, 0, sizeof *r);
  cuoptimOptimizer_t opt = NULL;
  buffers_t b;
  memset(&b, 0, sizeof b);
  b.backend = backend;
  int rc = 0;
  cuoptimStatus_t st = cuoptimCreate(&opt, &c->config, backend, 0);
  if (st != CUOPTIM_STATUS_SUCCESS) {
    rc = library_failed(st, NULL, error, error_size);
    goto done;
  }
  rc = alloc_buffers(c, &b, error, error_size);
  if (rc != 0) goto done;
  for (int v = 0; v < c->num_variables; v++) {
    cuoptimVariable_t handle = -1;
    st = cuoptimAddVariable(opt, c->variables[v].name, b.params[v], CUOPTIM_FLOAT32, c->variables[v].count, &handle);
    if (st != CUOPTIM_STATUS_SUCCESS) {
      char where[64];
      snprintf(where, sizeof where, "variables[%d]", v);
      rc = library_failed(st, where, error, error_size);
      goto done;
    }
    if (handle != v) {
      set_error(error, error_size, "variables[%d]: cuoptimAddVariable returned index %d", v, (int)handle);
      rc = CUOPTIM_STATUS_INTERNAL_ERROR;
      goto done;
    }
  }
  for (int i = 0; i < c->num_exclude; i++) {
    st = cuoptimExcludeFromWeightDecay(opt, c->exclude[i]);
    if (st != CUOPTIM_STATUS_SUCCESS) {
      char where[64];
      snprintf(where, sizeof where, "exclude_from_weight_decay[%d]", i);
      rc = library_failed(st, where, error, error_size);
      goto done;
    }
  }
  rc = run_steps(c, opt, &b, error, error_size);
  if (rc != 0) goto done;
  st = cuoptimSynchronize(opt);
  if (st != CUOPTIM_STATUS_SUCCESS) {
    rc = library_failed(st, NULL, error, error_size);
    goto done;
  }

  r->num_variables = c->num_variables;
  r->variables = alloc_per_variable(c);
  r->finalized = alloc_per_variable(c);
  if (r->variables == NULL || r->finalized == NULL) {
    set_error(error, error_size, "out of memory");
    rc = CUOPTIM_STATUS_ALLOC_FAILED;
    goto done;
  }
  rc = read_params(c, &b, r->variables, error, error_size);
  if (rc != 0) goto done;
  st = cuoptimGetIterations(opt, &r->iterations);
  if (st != CUOPTIM_STATUS_SUCCESS) {
    rc = library_failed(st, NULL, error, error_size);
    goto done;
  }
  rc = read_state(opt, r, error, error_size);
  if (rc != 0) goto done;

  /* Last, because it overwrites the variables: Keras's finalize_variable_values (a no-op without
   * use_ema, so the finalized values are always recorded). */
  st = cuoptimFinalizeVariableValues(opt, NULL);
  if (st == CUOPTIM_STATUS_SUCCESS) st = cuoptimSynchronize(opt);
  if (st != CUOPTIM_STATUS_SUCCESS) {
    rc = library_failed(st, NULL, error, error_size);
    goto done;
  }
  rc = read_params(c, &b, r->finalized, error, error_size);
  if (rc != 0) goto done;
  r->has_finalized = 1;

done:
  if (opt != NULL) {
    st = cuoptimDestroy(opt);
    if (st != CUOPTIM_STATUS_SUCCESS && rc == 0) rc = library_failed(st, NULL, error, error_size);
  }
  free_buffers(&b);
  if (rc != 0) cuoptim_case_result_free(r);
  return rc;
}

void cuoptim_case_result_free(cuoptimCaseResult *r) {
  if (r == NULL) return;
  free_per_variable(r->variables, r->num_variables);
  free_per_variable(r->finalized, r->num_variables);
  if (r->state != NULL)
    for (int i = 0; i < r->num_state; i++) free(r->state[i].value);
  free(r->state);
  memset(r, 0, sizeof *r);
}

/* ---------------------------------------------------------------------------------------------
 * Comparing
 * ------------------------------------------------------------------------------------------- */

static void where_of(char *out, size_t size, const char *name, size_t index, size_t count) {
  if (count == 1)
    snprintf(out, size, "%s", name);
  else
    snprintf(out, size, "%s[%zu]", name, index);
}

static void group_begin(cuoptimCaseGroupComparison *g, const char *group) {
  memset(g, 0, sizeof *g);
  g->group = group;
  g->compared = 1;
  g->pass = 1;
}

/* One value: equal when within atol + rtol * |want|, or both NaN, or the same infinity; exact
 * values (counters) must be equal. */
static void check_value(cuoptimCaseGroupComparison *g, double got, double want, double rtol, double atol, int exact,
                        const char *name, size_t index, size_t count) {
  g->count++;
  double abs_err, rel_err;
  int ok;
  if (isnan(got) || isnan(want)) {
    ok = isnan(got) && isnan(want);
    abs_err = ok ? 0.0 : INFINITY;
    rel_err = abs_err;
  } else if (isinf(got) || isinf(want)) {
    ok = got == want;
    abs_err = ok ? 0.0 : INFINITY;
    rel_err = abs_err;
  } else {
    abs_err = fabs(got - want);
    rel_err = want != 0 ? abs_err / fabs(want) : 0.0;
    ok = exact ? got == want : abs_err <= atol + rtol * fabs(want);
  }
  if (abs_err > g->max_abs || (g->max_abs_where[0] == '\0' && !ok)) {
    g->max_abs = abs_err;
    where_of(g->max_abs_where, sizeof g->max_abs_where, name, index, count);
  }
  if (rel_err > g->max_rel) {
    g->max_rel = rel_err;
    where_of(g->max_rel_where, sizeof g->max_rel_where, name, index, count);
  }
  if (!ok) {
    if (g->failures == 0) {
      char where[CUOPTIM_MAX_NAME + 32];
      where_of(where, sizeof where, name, index, count);
      snprintf(g->first_failure, sizeof g->first_failure, "%s: got %.9g, want %.9g", where, got, want);
    }
    g->failures++;
    g->pass = 0;
  }
}

static void compare_arrays(cuoptimCaseGroupComparison *g, const cuoptimCase *c, float *const *got,
                           float *const *want, double rtol, double atol) {
  for (int v = 0; v < c->num_variables; v++) {
    const cuoptimCaseVariable *var = &c->variables[v];
    for (size_t i = 0; i < var->count; i++)
      check_value(g, got[v][i], want[v][i], rtol, atol, 0, var->name, i, var->count);
  }
}

static void add_message(cuoptimCaseGroupComparison *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void add_message(cuoptimCaseGroupComparison *g, const char *fmt, ...) {
  g->pass = 0;
  if (g->message[0] != '\0') return; /* the first structural problem is the telling one */
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g->message, sizeof g->message, fmt, ap);
  va_end(ap);
}

static void compare_entry(cuoptimCaseGroupComparison *g, const cuoptimCaseState *got, const cuoptimCaseState *want,
                          const char *want_label, double rtol, double atol) {
  if (got->count != want->count) {
    add_message(g, "\"%s\" has %zu elements, %s has %zu", got->name, got->count, want_label, want->count);
    return;
  }
  /* Keras writes float32 state with the shortest decimal that reads back as that float32
   * ("0.01"); read as a double it is not the float32 value, so round it back. */
  for (size_t j = 0; j < got->count; j++) {
    double w = want->value[j];
    if (!got->is_integer) w = (double)(float)w;
    check_value(g, got->value[j], w, rtol, atol, got->is_integer, got->name, j, got->count);
  }
}

static void append(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void append(char *buf, size_t size, const char *fmt, ...) {
  size_t len = strlen(buf);
  if (len + 1 >= size) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf + len, size - len, fmt, ap);
  va_end(ap);
}

/* When the names differ, the entries are aligned by name (longest common subsequence) so that
 * the message lists exactly what is missing or extra, and the values of the entries both sides
 * have are still compared. */
static void compare_state_aligned(cuoptimCaseGroupComparison *g, const cuoptimCaseState *got, int num_got,
                                  const cuoptimCaseState *want, int num_want, const char *want_label,
                                  double rtol, double atol) {
  size_t cols = (size_t)num_want + 1;
  int *lcs = calloc(((size_t)num_got + 1) * cols, sizeof *lcs);
  if (lcs == NULL) {
    add_message(g, "entry names differ from %s's (out of memory aligning them)", want_label);
    return;
  }
  for (int i = num_got - 1; i >= 0; i--)
    for (int j = num_want - 1; j >= 0; j--)
      lcs[i * cols + j] = strcmp(got[i].name, want[j].name) == 0
                              ? 1 + lcs[(i + 1) * cols + j + 1]
                              : (lcs[(i + 1) * cols + j] > lcs[i * cols + j + 1] ? lcs[(i + 1) * cols + j]
                                                                                : lcs[i * cols + j + 1]);
  char missing[200] = "", extra[200] = "";
  int num_missing = 0, num_extra = 0;
  int i = 0, j = 0;
  while (i < num_got || j < num_want) {
    if (i < num_got && j < num_want && strcmp(got[i].name, want[j].name) == 0) {
      compare_entry(g, &got[i], &want[j], want_label, rtol, atol);
      i++;
      j++;
    } else if (j < num_want && (i == num_got || lcs[i * cols + j + 1] >= lcs[(i + 1) * cols + j])) {
      if (num_missing++ < 4) append(missing, sizeof missing, "%s[%d] \"%s\"", num_missing > 1 ? ", " : "", j, want[j].name);
      j++;
    } else {
      if (num_extra++ < 4) append(extra, sizeof extra, "%s[%d] \"%s\"", num_extra > 1 ? ", " : "", i, got[i].name);
      i++;
    }
  }
  free(lcs);
  char message[512];
  snprintf(message, sizeof message, "entries differ from %s's (%d vs %d)", want_label, num_got, num_want);
  if (num_missing > 0)
    append(message, sizeof message, "; missing %s's %s%s", want_label, missing, num_missing > 4 ? ", ..." : "");
  if (num_extra > 0) append(message, sizeof message, "; extra %s%s", extra, num_extra > 4 ? ", ..." : "");
  add_message(g, "%s", message);
}

/* State entries by position: names and counts must equal, then the values. `want_label` names the
 * side that plays the reference in messages ("Keras"). */
static void compare_state(cuoptimCaseGroupComparison *g, const cuoptimCaseState *got, int num_got,
                          const cuoptimCaseState *want, int num_want, const char *want_label, double rtol,
                          double atol) {
  int same_names = num_got == num_want;
  for (int i = 0; same_names && i < num_got; i++)
    if (strcmp(got[i].name, want[i].name) != 0) same_names = 0;
  if (!same_names) {
    compare_state_aligned(g, got, num_got, want, num_want, want_label, rtol, atol);
    return;
  }
  for (int i = 0; i < num_got; i++) compare_entry(g, &got[i], &want[i], want_label, rtol, atol);
}

static void finish(cuoptimCaseComparison *cmp) {
  cmp->pass = 1;
  for (int i = 0; i < CUOPTIM_CASE_GROUP_COUNT; i++) {
    const cuoptimCaseGroupComparison *g = &cmp->groups[i];
    if (!g->compared) continue;
    if (!g->pass) cmp->pass = 0;
    if (i == CUOPTIM_CASE_GROUP_ITERATIONS) continue;
    if (g->max_abs > cmp->max_abs) cmp->max_abs = g->max_abs;
    if (g->max_rel > cmp->max_rel) cmp->max_rel = g->max_rel;
  }
}

static void compare_iterations(cuoptimCaseGroupComparison *g, int64_t got, int64_t want) {
  group_begin(g, "iterations");
  check_value(g, (double)got, (double)want, 0.0, 0.0, 1, "iterations", 0, 1);
  g->got_iterations = got;
  g->want_iterations = want;
}

int cuoptim_case_compare(const cuoptimCase *c, const cuoptimCaseResult *r, double rtol, double atol,
                         cuoptimCaseComparison *cmp) {
  memset(cmp, 0, sizeof *cmp);
  cmp->groups[CUOPTIM_CASE_GROUP_ITERATIONS].group = "iterations";
  cmp->groups[CUOPTIM_CASE_GROUP_VARIABLES].group = "variables";
  cmp->groups[CUOPTIM_CASE_GROUP_STATE].group = "optimizer_variables";
  cmp->groups[CUOPTIM_CASE_GROUP_FINALIZED].group = "finalized_variables";
  if (!c->has_expected) return 1;
  compare_iterations(&cmp->groups[CUOPTIM_CASE_GROUP_ITERATIONS], r->iterations, c->expected_iterations);
  group_begin(&cmp->groups[CUOPTIM_CASE_GROUP_VARIABLES], "variables");
  compare_arrays(&cmp->groups[CUOPTIM_CASE_GROUP_VARIABLES], c, r->variables, c->expected_variables, rtol, atol);
  if (c->has_expected_state) {
    cuoptimCaseGroupComparison *g = &cmp->groups[CUOPTIM_CASE_GROUP_STATE];
    group_begin(g, "optimizer_variables");
    compare_state(g, r->state, r->num_state, c->expected_state, c->num_expected_state, "Keras", rtol, atol);
  }
  if (c->has_expected_finalized) {
    cuoptimCaseGroupComparison *g = &cmp->groups[CUOPTIM_CASE_GROUP_FINALIZED];
    group_begin(g, "finalized_variables");
    if (!r->has_finalized)
      add_message(g, "the run recorded no finalized variables");
    else
      compare_arrays(g, c, r->finalized, c->expected_finalized, rtol, atol);
  }
  finish(cmp);
  return cmp->pass ? 0 : 1;
}

int cuoptim_case_compare_results(const cuoptimCase *c, const cuoptimCaseResult *a, const cuoptimCaseResult *b,
                                 double rtol, double atol, cuoptimCaseComparison *cmp) {
  memset(cmp, 0, sizeof *cmp);
  compare_iterations(&cmp->groups[CUOPTIM_CASE_GROUP_ITERATIONS], a->iterations, b->iterations);
  group_begin(&cmp->groups[CUOPTIM_CASE_GROUP_VARIABLES], "variables");
  compare_arrays(&cmp->groups[CUOPTIM_CASE_GROUP_VARIABLES], c, a->variables, b->variables, rtol, atol);
  cuoptimCaseGroupComparison *g = &cmp->groups[CUOPTIM_CASE_GROUP_STATE];
  group_begin(g, "optimizer_variables");
  compare_state(g, a->state, a->num_state, b->state, b->num_state, "the reference", rtol, atol);
  g = &cmp->groups[CUOPTIM_CASE_GROUP_FINALIZED];
  group_begin(g, "finalized_variables");
  if (!a->has_finalized || !b->has_finalized)
    add_message(g, "a run recorded no finalized variables");
  else
    compare_arrays(g, c, a->finalized, b->finalized, rtol, atol);
  finish(cmp);
  return cmp->pass ? 0 : 1;
}

void cuoptim_case_format_group(const cuoptimCaseGroupComparison *g, char *out, size_t out_size) {
  if (!g->compared) {
    snprintf(out, out_size, "%s: not in the case", g->group);
    return;
  }
  if (g->group != NULL && strcmp(g->group, "iterations") == 0) {
    snprintf(out, out_size, "iterations: got %" PRId64 ", want %" PRId64 ": %s", g->got_iterations, g->want_iterations,
             g->pass ? "ok" : "FAIL");
    return;
  }
  char failures[1024] = "";
  if (g->message[0] != '\0' && g->failures > 0)
    snprintf(failures, sizeof failures, " (%s; %zu values beyond tolerance, first %s)", g->message, g->failures,
             g->first_failure);
  else if (g->message[0] != '\0')
    snprintf(failures, sizeof failures, " (%s)", g->message);
  else if (g->failures > 0)
    snprintf(failures, sizeof failures, " (%zu values beyond tolerance, first %s)", g->failures, g->first_failure);
  snprintf(out, out_size, "%s: %zu values, max abs err %.3g%s%s, max rel err %.3g%s%s: %s%s", g->group, g->count,
           g->max_abs, g->max_abs_where[0] ? " at " : "", g->max_abs_where, g->max_rel,
           g->max_rel_where[0] ? " at " : "", g->max_rel_where, g->pass ? "ok" : "FAIL", failures);
}
