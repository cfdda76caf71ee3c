/*
 * case.c — load, run and compare case files (see case.h; format in DESIGN.md "Case files and
 * cuoptim-replay").
 *
 * Loading validates everything before anything runs, so that a malformed case is reported as
 * such (with the JSON path of the problem) instead of as a wrong result.
 */
#include "case.h"

#include <cjson/cJSON.h>
#ifdef CUOPTIM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
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

/* ---------------------------------------------------------------------------------------------
 * Input text in messages: one line, printable, bounded
 * ------------------------------------------------------------------------------------------- */

/* A NUL-terminated text being filled; once a piece does not fit, nothing more goes in (so an
 * escape is never cut in half). */
typedef struct {
  char *out;
  size_t size;
  size_t len;
  int full;
} sink_t;

static void sink_put(sink_t *s, const char *piece, size_t n) {
  if (s->full || s->len + n >= s->size) {
    s->full = 1;
    return;
  }
  memcpy(s->out + s->len, piece, n);
  s->len += n;
  s->out[s->len] = '\0';
}

static int is_continuation(unsigned char ch) { return (ch & 0xC0) == 0x80; }

/* The length of the valid UTF-8 sequence at p (no overlong forms, surrogates or code points past
 * U+10FFFF), or 0; its code point in *cp. */
static size_t utf8_sequence(const unsigned char *p, unsigned *cp) {
  unsigned char b0 = p[0];
  if (b0 >= 0xC2 && b0 <= 0xDF && is_continuation(p[1])) {
    *cp = (unsigned)(b0 & 0x1F) << 6 | (p[1] & 0x3F);
    return 2;
  }
  if (b0 >= 0xE0 && b0 <= 0xEF && is_continuation(p[1]) && is_continuation(p[2])) {
    if ((b0 == 0xE0 && p[1] < 0xA0) || (b0 == 0xED && p[1] > 0x9F)) return 0;
    *cp = (unsigned)(b0 & 0x0F) << 12 | (unsigned)(p[1] & 0x3F) << 6 | (p[2] & 0x3F);
    return 3;
  }
  if (b0 >= 0xF0 && b0 <= 0xF4 && is_continuation(p[1]) && is_continuation(p[2]) && is_continuation(p[3])) {
    if ((b0 == 0xF0 && p[1] < 0x90) || (b0 == 0xF4 && p[1] > 0x8F)) return 0;
    *cp = (unsigned)(b0 & 0x07) << 18 | (unsigned)(p[1] & 0x3F) << 12 | (unsigned)(p[2] & 0x3F) << 6 | (p[3] & 0x3F);
    return 4;
  }
  return 0;
}

/* Writes `text` to `s` with what a terminal would act on instead of printing escaped: C0 and C1
 * controls, DEL, the Unicode line and paragraph separators, bytes that are not UTF-8; with
 * quote_chars, also " and \ (the text then sits between quotes). Stops before the character that
 * would take it past max_bytes bytes of `text`; returns whether it stopped early. */
static int put_escaped(sink_t *s, const char *text, size_t max_bytes, int quote_chars) {
  const unsigned char *p = (const unsigned char *)text;
  size_t used = 0;
  while (p[used] != '\0') {
    unsigned char ch = p[used];
    unsigned cp = ch;
    size_t n = ch < 0x80 ? 1 : utf8_sequence(p + used, &cp);
    if (used + (n ? n : 1) > max_bytes) return 1;
    char esc[16];
    if (n == 0) {
      snprintf(esc, sizeof esc, "\\x%02x", ch);
      sink_put(s, esc, strlen(esc));
      used++;
      continue;
    }
    if (quote_chars && (ch == '"' || ch == '\\')) {
      esc[0] = '\\';
      esc[1] = (char)ch;
      sink_put(s, esc, 2);
    } else if (ch == '\n' || ch == '\r' || ch == '\t') {
      esc[0] = '\\';
      esc[1] = ch == '\n' ? 'n' : ch == '\r' ? 'r' : 't';
      sink_put(s, esc, 2);
    } else if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F) || cp == 0x2028 || cp == 0x2029) {
      snprintf(esc, sizeof esc, "\\u%04x", cp);
      sink_put(s, esc, strlen(esc));
    } else {
      sink_put(s, (const char *)p + used, n);
    }
    used += n;
  }
  return 0;
}

void cuoptim_case_quote(const char *text, char *out, size_t out_size) {
  if (out == NULL || out_size == 0) return;
  out[0] = '\0';
  sink_t s = {out, out_size, 0, 0};
  sink_put(&s, "\"", 1);
  int cut = put_escaped(&s, text != NULL ? text : "", CUOPTIM_CASE_QUOTE_BYTES, 1);
  sink_put(&s, cut ? "\"..." : "\"", cut ? 4 : 1);
}

void cuoptim_case_printable(const char *text, char *out, size_t out_size) {
  if (out == NULL || out_size == 0) return;
  out[0] = '\0';
  sink_t s = {out, out_size, 0, 0};
  put_escaped(&s, text != NULL ? text : "", (size_t)-1, 0);
}

/* Rewrites the message in error[] with cuoptim_case_printable (a library message may echo input). */
static void make_printable(char *error, size_t size) {
  if (error == NULL || size == 0) return;
  char *copy = dup_string(error);
  if (copy == NULL) {
    for (char *p = error; *p != '\0'; p++)
      if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7F) *p = '?';
    return;
  }
  cuoptim_case_printable(copy, error, size);
  free(copy);
}

/* A quoted copy of input text for a message (cuoptim_case_quote). */
typedef struct {
  char text[CUOPTIM_CASE_QUOTED_SIZE];
} quoted_t;

static quoted_t quoted(const char *text) {
  quoted_t q;
  cuoptim_case_quote(text, q.text, sizeof q.text);
  return q;
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
  if (cJSON_IsString(item)) {
    quoted_t q = quoted(item->valuestring);
    return set_error(error, size, "%s[%zu]: expected a number, got the string %s (only \"nan\", \"inf\" and "
                     "\"-inf\" stand for numbers)", path, index, q.text);
  }
  return set_error(error, size, "%s[%zu]: expected a number, got %s", path, index, type_name(item));
}

/* `count` float32 values from the array `arr` (a bare number is accepted for a scalar when
 * scalar_ok). */
/* Checks that `arr` holds `count` numbers (or, where `scalar_ok` and count is 1, is one number)
 * before anything is allocated for them: a shape promising 2^40 elements next to a short array
 * is refused without allocating 4 TiB. */
static int check_length(const cJSON *arr, size_t count, int scalar_ok, const char *path, char *error, size_t size) {
  if (scalar_ok && count == 1 && !cJSON_IsArray(arr)) return 0; /* the number itself is read next */
  if (!cJSON_IsArray(arr)) return set_error(error, size, "%s: expected an array of %zu numbers, got %s", path, count, type_name(arr));
  size_t n = (size_t)cJSON_GetArraySize(arr);
  if (n != count) return set_error(error, size, "%s: expected %zu numbers, got %zu", path, count, n);
  return 0;
}

/* A malloc'ed array of the `count` numbers of `arr` as float32, in *out (freed by the caller). */
static int read_floats(const cJSON *arr, size_t count, int scalar_ok, float **out, const char *path, char *error,
                       size_t size) {
  if (check_length(arr, count, scalar_ok, path, error, size) != 0) return -1;
  float *values = malloc((count ? count : 1) * sizeof *values);
  if (values == NULL) return set_error(error, size, "%s: out of memory", path);
  *out = values;
  double x;
  if (!cJSON_IsArray(arr)) {
    if (read_number(arr, &x) != 0) return set_error(error, size, "%s: expected an array of %zu numbers, got %s", path, count, type_name(arr));
    float f = (float)x;
    if (isinf(f) && isfinite(x)) return set_error(error, size, "%s: %g is not a float32 value", path, x);
    values[0] = f;
    return 0;
  }
  size_t i = 0;
  const cJSON *item;
  cJSON_ArrayForEach(item, arr) {
    if (read_number(item, &x) != 0) return number_error(item, path, i, error, size);
    float f = (float)x;
    if (isinf(f) && isfinite(x)) return set_error(error, size, "%s[%zu]: %g is not a float32 value", path, i, x);
    values[i++] = f;
  }
  return 0;
}

/* The same as doubles. */
static int read_doubles(const cJSON *arr, size_t count, double **out, const char *path, char *error, size_t size) {
  if (check_length(arr, count, 1, path, error, size) != 0) return -1;
  double *values = malloc((count ? count : 1) * sizeof *values);
  if (values == NULL) return set_error(error, size, "%s: out of memory", path);
  *out = values;
  double x;
  if (!cJSON_IsArray(arr)) {
    if (read_number(arr, &x) != 0) return set_error(error, size, "%s: expected an array of %zu numbers, got %s", path, count, type_name(arr));
    values[0] = x;
    return 0;
  }
  size_t i = 0;
  const cJSON *item;
  cJSON_ArrayForEach(item, arr) {
    if (read_number(item, &x) != 0) return number_error(item, path, i, error, size);
    values[i++] = x;
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
      quoted_t q = quoted(key);
      return set_error(error, size, "%s%sunknown key %s (expected: %s)", path, path[0] ? ": " : "", q.text, list);
    }
    for (const cJSON *prev = obj->child; prev != item; prev = prev->next)
      if (prev->string != NULL && strcmp(prev->string, key) == 0) {
        quoted_t q = quoted(key);
        return set_error(error, size, "%s%skey %s appears twice", path, path[0] ? ": " : "", q.text);
      }
  }
  return 0;
}

static char *read_file(const char *path, size_t *length, char *error, size_t size) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    set_error(error, size, "cannot open: %s", strerror(errno));
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
    set_error(error, size, "out of memory");
  } else if (ferror(f)) {
    set_error(error, size, "read error");
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
 * Names: an index from an entry's name to the first entry of that name
 * ------------------------------------------------------------------------------------------- */

/* An open-addressing hash table of entry indices, so that a case with many variables or state
 * entries is checked and aligned in linear time. It indexes an array of structs that each hold
 * a NUL-terminated name. */
typedef struct {
  const char *base; /* the array */
  size_t stride;    /* sizeof one struct */
  size_t offset;    /* offsetof its name */
  int *slots;       /* -1, or the index of the first entry added with a name */
  size_t mask;      /* number of slots - 1 (a power of two, at least twice the entries) */
} name_index_t;

static const char *name_at(const name_index_t *ix, int i) {
  return ix->base + (size_t)i * ix->stride + ix->offset;
}

static size_t hash_name(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (; *s != '\0'; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return (size_t)h;
}

/* An empty index for at most `n` entries of `array`. Returns 0, or -1 when out of memory. */
static int name_index_init(name_index_t *ix, const void *array, size_t stride, size_t offset, int n) {
  ix->base = array;
  ix->stride = stride;
  ix->offset = offset;
  size_t slots = 16;
  while (slots < 2 * (size_t)(n > 0 ? n : 0)) slots *= 2;
  ix->mask = slots - 1;
  ix->slots = malloc(slots * sizeof *ix->slots);
  if (ix->slots == NULL) return -1;
  for (size_t k = 0; k < slots; k++) ix->slots[k] = -1;
  return 0;
}

static void name_index_free(name_index_t *ix) {
  free(ix->slots);
  ix->slots = NULL;
}

/* The slot that holds `name`, or the empty slot where it would go. */
static size_t name_index_slot(const name_index_t *ix, const char *name) {
  size_t k = hash_name(name) & ix->mask;
  while (ix->slots[k] >= 0 && strcmp(name_at(ix, ix->slots[k]), name) != 0) k = (k + 1) & ix->mask;
  return k;
}

/* The first entry added with `name`, or -1. */
static int name_index_find(const name_index_t *ix, const char *name) {
  return ix->slots[name_index_slot(ix, name)];
}

/* Adds entry i unless an entry of its name is there already: returns that entry, else -1. */
static int name_index_add(name_index_t *ix, int i) {
  size_t k = name_index_slot(ix, name_at(ix, i));
  if (ix->slots[k] >= 0) return ix->slots[k];
  ix->slots[k] = i;
  return -1;
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
  *out = calloc((size_t)c->num_variables + 1, sizeof **out); /* read_floats allocates each array */
  if (*out == NULL) return set_error(error, size, "%s: out of memory", path);
  int v = 0;
  const cJSON *item;
  cJSON_ArrayForEach(item, arr) {
    char sub[PATH_LEN];
    snprintf(sub, sizeof sub, "%s[%d]", path, v);
    if (read_floats(item, c->variables[v].count, c->variables[v].ndim == 0, &(*out)[v], sub, error, size) != 0) return -1;
    v++;
  }
  return 0;
}

static int duplicate_name(const char *path, const char *name, int first, char *error, size_t size) {
  quoted_t q = quoted(name);
  return set_error(error, size, "%s.name: %s is also the name of variables[%d]", path, q.text, first);
}

/* `names` indexes c->variables as they are read, to find a repeated name in linear time. */
static int read_variables(cuoptimCase *c, const cJSON *arr, name_index_t *names, char *error, size_t size) {
  static const char *const keys[] = {"name", "shape", "value", NULL};
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
    int first = name_index_add(names, v);
    if (first >= 0) return duplicate_name(path, var->name, first, error, size);
    snprintf(sub, sizeof sub, "%s.shape", path);
    if (read_shape(cJSON_GetObjectItemCaseSensitive(item, "shape"), &var->ndim, var->shape, &var->count, sub, error,
                   size) != 0)
      return -1;
    snprintf(sub, sizeof sub, "%s.value", path);
    if (read_floats(cJSON_GetObjectItemCaseSensitive(item, "value"), var->count, var->ndim == 0, &var->value, sub,
                    error, size) != 0)
      return -1;
    v++;
  }
  return 0;
}

static int load_variables(cuoptimCase *c, const cJSON *arr, char *error, size_t size) {
  if (!cJSON_IsArray(arr)) return set_error(error, size, "variables: expected an array, got %s", type_name(arr));
  int n = cJSON_GetArraySize(arr);
  if (n == 0) return set_error(error, size, "variables: the case has no variables");
  c->variables = calloc((size_t)n, sizeof *c->variables);
  if (c->variables == NULL) return set_error(error, size, "variables: out of memory");
  c->num_variables = n;
  name_index_t names;
  if (name_index_init(&names, c->variables, sizeof *c->variables, offsetof(cuoptimCaseVariable, name), n) != 0)
    return set_error(error, size, "variables: out of memory");
  int rc = read_variables(c, arr, &names, error, size);
  name_index_free(&names);
  return rc;
}

/* One step's gradients at `path` ("steps[3]", "rank_steps[3][1]"): an array of one gradient per
 * variable, each null (no gradient) or the variable's count of numbers. *out gets one pointer per
 * variable (NULL for none), freed by cuoptim_case_free through the array that holds it. */
static int read_step(const cuoptimCase *c, const cJSON *step, const char *path, float ***out, char *error,
                     size_t size) {
  if (!cJSON_IsArray(step))
    return set_error(error, size, "%s: expected an array of %d gradients, got %s", path, c->num_variables, type_name(step));
  int m = cJSON_GetArraySize(step);
  if (m != c->num_variables)
    return set_error(error, size, "%s: expected %d gradients (one per variable, null for none), got %d", path,
                     c->num_variables, m);
  *out = calloc((size_t)m, sizeof **out);
  if (*out == NULL) return set_error(error, size, "%s: out of memory", path);
  int v = 0;
  const cJSON *grad;
  cJSON_ArrayForEach(grad, step) {
    if (!cJSON_IsNull(grad)) {
      char sub[PATH_LEN + 16];
      snprintf(sub, sizeof sub, "%s[%d]", path, v);
      const cuoptimCaseVariable *var = &c->variables[v];
      if (!cJSON_IsArray(grad) && !(var->ndim == 0 && (cJSON_IsNumber(grad) || cJSON_IsString(grad)))) {
        quoted_t q = quoted(var->name);
        return set_error(error, size, "%s: expected null or an array of %zu numbers (gradient of %s), got %s", sub,
                         var->count, q.text, type_name(grad));
      }
      if (read_floats(grad, var->count, var->ndim == 0, &(*out)[v], sub, error, size) != 0) return -1;
    }
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
  c->has_steps = 1;
  int s = 0;
  const cJSON *step;
  cJSON_ArrayForEach(step, arr) {
    char path[PATH_LEN];
    snprintf(path, sizeof path, "steps[%d]", s);
    if (read_step(c, step, path, &c->steps[s], error, size) != 0) return -1;
    s++;
  }
  return 0;
}

/* Checks that every step of rank_steps is an array of the same number of ranks (at least 1),
 * before anything is allocated for them: the pointers allocated then number no more than the
 * entries the file holds. Returns that number, or -1. */
static int count_ranks(const cJSON *arr, char *error, size_t size) {
  if (!cJSON_IsArray(arr))
    return set_error(error, size, "rank_steps: expected an array of steps (each an array of ranks), got %s", type_name(arr));
  if (cJSON_GetArraySize(arr) == 0) return set_error(error, size, "rank_steps: expected at least one step, got an empty array");
  const cJSON *first = cJSON_GetArrayItem(arr, 0);
  if (!cJSON_IsArray(first))
    return set_error(error, size, "rank_steps[0]: expected an array with the gradients of each rank, got %s", type_name(first));
  int ranks = cJSON_GetArraySize(first);
  if (ranks == 0) return set_error(error, size, "rank_steps[0]: expected the gradients of at least one rank, got an empty array");
  int s = 0;
  const cJSON *step;
  cJSON_ArrayForEach(step, arr) {
    if (!cJSON_IsArray(step))
      return set_error(error, size, "rank_steps[%d]: expected an array with the gradients of each of the %d ranks, got %s",
                       s, ranks, type_name(step));
    int m = cJSON_GetArraySize(step);
    if (m != ranks)
      return set_error(error, size, "rank_steps[%d]: expected the gradients of %d ranks (as rank_steps[0]), got %d", s,
                       ranks, m);
    s++;
  }
  return ranks;
}

/* rank_steps[s][r]: the gradients of rank r in step s, stored as c->rank_steps[r][s] so that each
 * rank's steps have the shape of c->steps. */
static int load_rank_steps(cuoptimCase *c, const cJSON *arr, char *error, size_t size) {
  int ranks = count_ranks(arr, error, size);
  if (ranks < 0) return -1;
  int n = cJSON_GetArraySize(arr);
  c->rank_steps = calloc((size_t)ranks + 1, sizeof *c->rank_steps);
  if (c->rank_steps == NULL) return set_error(error, size, "rank_steps: out of memory");
  c->num_ranks = ranks;
  c->num_rank_steps = n;
  c->has_rank_steps = 1;
  for (int r = 0; r < ranks; r++) {
    c->rank_steps[r] = calloc((size_t)n + 1, sizeof *c->rank_steps[r]);
    if (c->rank_steps[r] == NULL) return set_error(error, size, "rank_steps: out of memory");
  }
  int s = 0;
  const cJSON *step;
  cJSON_ArrayForEach(step, arr) {
    int r = 0;
    const cJSON *per_rank;
    cJSON_ArrayForEach(per_rank, step) {
      char path[PATH_LEN];
      snprintf(path, sizeof path, "rank_steps[%d][%d]", s, r);
      if (read_step(c, per_rank, path, &c->rank_steps[r][s], error, size) != 0) return -1;
      r++;
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
    if (strlen(name->valuestring) >= CUOPTIM_MAX_WEIGHT_NAME)
      return set_error(error, size, "%s.name: longer than %d characters", path, CUOPTIM_MAX_WEIGHT_NAME - 1);
    strcpy(st->name, name->valuestring);
    int ndim;
    int64_t shape[CUOPTIM_CASE_MAX_DIMS];
    snprintf(sub, sizeof sub, "%s.shape", path);
    if (read_shape(cJSON_GetObjectItemCaseSensitive(item, "shape"), &ndim, shape, &st->count, sub, error, size) != 0)
      return -1;
    snprintf(sub, sizeof sub, "%s.value", path);
    if (read_doubles(cJSON_GetObjectItemCaseSensitive(item, "value"), st->count, &st->value, sub, error, size) != 0)
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

/* ---------------------------------------------------------------------------------------------
 * The optimizer's own text
 *
 * The library gets the "optimizer" object exactly as the file writes it: printed back by cJSON,
 * an infinite number would become null (None) and some doubles would move by an ulp. cJSON keeps
 * no offsets, so the scanner below finds the value's bytes; it runs on text that cJSON has parsed
 * already, so it only has to agree with cJSON on where tokens end.
 * ------------------------------------------------------------------------------------------- */

/* cJSON skips every byte up to the space as white space. */
static const char *skip_space(const char *p) {
  while (*p != '\0' && (unsigned char)*p <= ' ') p++;
  return p;
}

/* Past the string that starts at p (at its '"'), or NULL. */
static const char *skip_string(const char *p) {
  for (p++; *p != '"'; p++) {
    if (*p == '\0') return NULL;
    if (*p == '\\' && *++p == '\0') return NULL;
  }
  return p + 1;
}

/* Past the value that starts at p, or NULL. */
static const char *skip_value(const char *p) {
  if (*p == '"') return skip_string(p);
  if (*p == '{' || *p == '[') {
    int depth = 0;
    while (*p != '\0') {
      if (*p == '"') {
        p = skip_string(p);
        if (p == NULL) return NULL;
        continue;
      }
      if (*p == '{' || *p == '[') depth++;
      if ((*p == '}' || *p == ']') && --depth == 0) return p + 1;
      p++;
    }
    return NULL;
  }
  /* A number, true, false or null: up to the space or the delimiter after it. */
  const char *start = p;
  while ((unsigned char)*p > ' ' && *p != ',' && *p != '}' && *p != ']') p++;
  return p > start ? p : NULL;
}

/* Whether the key token [token, token + length) (quotes included) reads as `key`, escapes
 * decoded by cJSON itself so that this finds the member cJSON_GetObjectItemCaseSensitive finds. */
static int key_is(const char *token, size_t length, const char *key) {
  cJSON *decoded = cJSON_ParseWithLength(token, length);
  int same = cJSON_IsString(decoded) && strcmp(decoded->valuestring, key) == 0;
  cJSON_Delete(decoded);
  return same;
}

/* The bytes [*begin, *end) of the value of the first top-level member `key` of `text`, a JSON
 * object that cJSON has parsed. Returns 0, or -1 when not found. */
static int find_member_text(const char *text, const char *key, const char **begin, const char **end) {
  const char *p = text;
  if (strncmp(p, "\xEF\xBB\xBF", 3) == 0) p += 3; /* cJSON skips a UTF-8 byte order mark */
  p = skip_space(p);
  if (*p != '{') return -1;
  for (p = skip_space(p + 1); *p == '"'; p = skip_space(p + 1)) {
    const char *name = p;
    p = skip_string(p);
    if (p == NULL) return -1;
    size_t name_length = (size_t)(p - name);
    p = skip_space(p);
    if (*p != ':') return -1;
    const char *value = skip_space(p + 1);
    p = skip_value(value);
    if (p == NULL) return -1;
    if (key_is(name, name_length, key)) {
      *begin = value;
      *end = p;
      return 0;
    }
    p = skip_space(p);
    if (*p != ',') return -1;
  }
  return -1;
}

/* A malloc'ed copy of the "optimizer" member's text, or NULL (message in error[]). */
static char *optimizer_text(const char *text, char *error, size_t size) {
  const char *begin = NULL, *end = NULL;
  if (find_member_text(text, "optimizer", &begin, &end) != 0) {
    set_error(error, size, "optimizer: its text was not found in the file (the case loader is out of step with cJSON)");
    return NULL;
  }
  size_t n = (size_t)(end - begin);
  char *copy = malloc(n + 1);
  if (copy == NULL) {
    set_error(error, size, "optimizer: out of memory");
    return NULL;
  }
  memcpy(copy, begin, n);
  copy[n] = '\0';
  return copy;
}

/* `text` is the file, `root` what cJSON made of it. */
/* The case's optimizer: a plain one's config, or a MultiOptimizer, which a scratch host
 * optimizer judges (and says whether any sub-optimizer uses EMA or accumulates gradients). */
static cuoptimStatus_t load_optimizer(cuoptimCase *c) {
  cuoptimStatus_t st = cuoptimConfigFromKerasJSON(&c->config, c->optimizer_json);
  if (st == CUOPTIM_STATUS_SUCCESS) c->kinds = 1u << c->config.kind;
  if (st == CUOPTIM_STATUS_SUCCESS || strstr(c->optimizer_json, "\"MultiOptimizer\"") == NULL) return st;
  cuoptimOptimizer_t judge = NULL;
  st = cuoptimCreateFromKerasJSON(&judge, c->optimizer_json, CUOPTIM_BACKEND_HOST, 0);
  if (st != CUOPTIM_STATUS_SUCCESS) return st;
  memset(&c->config, 0, sizeof c->config);
  c->multi = 1;
  int subs = 0;
  (void)cuoptimGetSubOptimizerCount(judge, &subs);
  for (int k = 0; k < subs; k++) {
    cuoptimOptimizer_t sub = NULL;
    cuoptimConfig_t config;
    if (cuoptimGetSubOptimizer(judge, k, &sub) == CUOPTIM_STATUS_SUCCESS &&
        cuoptimGetConfig(sub, &config) == CUOPTIM_STATUS_SUCCESS) {
      c->kinds |= 1u << config.kind;
      if (config.use_ema) c->config.use_ema = 1;
      if (config.gradient_accumulation_steps > c->config.gradient_accumulation_steps)
        c->config.gradient_accumulation_steps = config.gradient_accumulation_steps;
    }
  }
  cuoptimDestroy(judge);
  return CUOPTIM_STATUS_SUCCESS;
}

static int exclude_given(const cJSON *root) {
  const cJSON *exclude = cJSON_GetObjectItemCaseSensitive(root, "exclude_from_weight_decay");
  return exclude != NULL && !cJSON_IsNull(exclude) && !(cJSON_IsArray(exclude) && cJSON_GetArraySize(exclude) == 0);
}

static int load_root(cuoptimCase *c, const cJSON *root, const char *text, char *error, size_t size) {
  static const char *const keys[] = {"format", "source", "description", "optimizer", "exclude_from_weight_decay",
                                     "variables", "steps", "rank_steps", "expected", NULL};
  if (!cJSON_IsObject(root)) return set_error(error, size, "the case is %s, expected an object", type_name(root));
  const cJSON *format = cJSON_GetObjectItemCaseSensitive(root, "format");
  if (format == NULL) return set_error(error, size, "format: missing (expected \"" CUOPTIM_CASE_FORMAT "\")");
  if (!cJSON_IsString(format) || strcmp(format->valuestring, CUOPTIM_CASE_FORMAT) != 0) {
    quoted_t q = quoted(cJSON_IsString(format) ? format->valuestring : "");
    return set_error(error, size, "format: expected \"" CUOPTIM_CASE_FORMAT "\", got %s",
                     cJSON_IsString(format) ? q.text : type_name(format));
  }
  if (check_keys(root, keys, "", error, size) != 0) return -1;
  if (optional_string(root, "source", &c->source, error, size) != 0) return -1;
  if (optional_string(root, "description", &c->description, error, size) != 0) return -1;

  const cJSON *opt = cJSON_GetObjectItemCaseSensitive(root, "optimizer");
  if (opt == NULL) return set_error(error, size, "optimizer: missing");
  if (!cJSON_IsObject(opt)) return set_error(error, size, "optimizer: expected an object, got %s", type_name(opt));
  c->optimizer_json = optimizer_text(text, error, size);
  if (c->optimizer_json == NULL) return -1;
  cuoptimStatus_t st = load_optimizer(c);
  if (st != CUOPTIM_STATUS_SUCCESS)
    return set_error(error, size, "optimizer: %s (%s)", cuoptimGetLastErrorMessage(), cuoptimGetStatusString(st));
  if (c->multi && exclude_given(root))
    return set_error(error, size, "exclude_from_weight_decay: not supported with a MultiOptimizer");

  const cJSON *exclude = cJSON_GetObjectItemCaseSensitive(root, "exclude_from_weight_decay");
  if (exclude != NULL && load_exclusions(c, exclude, error, size) != 0) return -1;

  const cJSON *vars = cJSON_GetObjectItemCaseSensitive(root, "variables");
  if (vars == NULL) return set_error(error, size, "variables: missing");
  if (load_variables(c, vars, error, size) != 0) return -1;

  /* A multi-rank case may leave out the single-process steps. */
  const cJSON *steps = cJSON_GetObjectItemCaseSensitive(root, "steps");
  const cJSON *ranks = cJSON_GetObjectItemCaseSensitive(root, "rank_steps");
  if (steps == NULL && ranks == NULL) return set_error(error, size, "steps: missing (and no rank_steps)");
  if (steps != NULL && load_steps(c, steps, error, size) != 0) return -1;
  if (ranks != NULL && load_rank_steps(c, ranks, error, size) != 0) return -1;

  const cJSON *expected = cJSON_GetObjectItemCaseSensitive(root, "expected");
  if (expected != NULL && load_expected(c, expected, error, size) != 0) return -1;
  return 0;
}

/* Reads and parses the file: *text (the file, NUL-terminated) and *root on success. */
static int parse_file(const char *path, char **text_out, cJSON **root_out, char *error, size_t size) {
  size_t length = 0;
  char *text = read_file(path, &length, error, size);
  if (text == NULL) return -1;
  if (strlen(text) != length) {
    free(text);
    return set_error(error, size, "not JSON (the file contains a NUL byte)");
  }
  const char *end = NULL;
  /* With require_null_terminated, cJSON counts the terminating NUL in the length. */
  cJSON *root = cJSON_ParseWithLengthOpts(text, length + 1, &end, 1);
  if (root == NULL) {
    size_t offset = end != NULL ? (size_t)(end - text) : length;
    int line, column;
    line_column(text, offset, &line, &column);
    if (offset >= length)
      set_error(error, size, "not valid JSON: unexpected end of the file (truncated?)");
    else
      set_error(error, size, "not valid JSON: syntax error at line %d, column %d", line, column);
    free(text);
    return -1;
  }
  *text_out = text;
  *root_out = root;
  return 0;
}

int cuoptim_case_load(const char *path, cuoptimCase *c, char *error, size_t error_size) {
  if (c == NULL) return set_error(error, error_size, "cuoptim_case_load: case is NULL");
  memset(c, 0, sizeof *c);
  if (path == NULL) return set_error(error, error_size, "cuoptim_case_load: path is NULL");
  char message[1024];
  char *text = NULL;
  cJSON *root = NULL;
  int rc = parse_file(path, &text, &root, message, sizeof message);
  if (rc == 0) {
    c->path = dup_string(path);
    rc = c->path == NULL ? set_error(message, sizeof message, "out of memory")
                         : load_root(c, root, text, message, sizeof message);
  }
  cJSON_Delete(root);
  free(text);
  if (rc != 0) {
    /* The path and library messages (which may echo the file) made printable on one line. */
    set_error(error, error_size, "%s: %s", path, message);
    make_printable(error, error_size);
    cuoptim_case_free(c);
    return -1;
  }
  return 0;
}

/* steps[s][v] for s < num_steps (NULL entries skipped), and the array itself. */
static void free_steps(float ***steps, int num_steps, int num_variables) {
  if (steps == NULL) return;
  for (int s = 0; s < num_steps; s++) {
    if (steps[s] == NULL) continue;
    for (int v = 0; v < num_variables; v++) free(steps[s][v]);
    free(steps[s]);
  }
  free(steps);
}

void cuoptim_case_free(cuoptimCase *c) {
  if (c == NULL) return;
  free(c->path);
  free(c->source);
  free(c->description);
  free(c->optimizer_json);
  if (c->exclude != NULL)
    for (int i = 0; i < c->num_exclude; i++) free(c->exclude[i]);
  free(c->exclude);
  free_steps(c->steps, c->num_steps, c->num_variables);
  if (c->rank_steps != NULL) {
    for (int r = 0; r < c->num_ranks; r++) free_steps(c->rank_steps[r], c->num_rank_steps, c->num_variables);
    free(c->rank_steps);
  }
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
  void **grads;  /* one gradient buffer per variable, in the backend's memory */
} buffers_t;

/* Device memory of the runs on the CUDA backend. Each returns 0 or, with the message in `error`
 * (`what` first), a cuoptim status. */
#ifdef CUOPTIM_HAVE_CUDA
static int cuda_failed(cudaError_t err, const char *what, char *error, size_t size) {
  (void)cudaGetLastError();
  set_error(error, size, "%s: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err));
  return CUOPTIM_STATUS_CUDA_ERROR;
}

static int device_alloc(void **ptr, size_t bytes, const char *what, char *error, size_t size) {
  cudaError_t err = cudaMalloc(ptr, bytes);
  return err == cudaSuccess ? 0 : cuda_failed(err, what, error, size);
}

static int device_copy(void *dst, const void *src, size_t bytes, int to_device, const char *what, char *error,
                       size_t size) {
  cudaError_t err = cudaMemcpy(dst, src, bytes, to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost);
  return err == cudaSuccess ? 0 : cuda_failed(err, what, error, size);
}

static void device_free(void *ptr) { cudaFree(ptr); }
#else
/* A host-only build (CUOPTIM_WITH_CUDA=OFF) has no device memory; cuoptimCreate refuses its CUDA
 * backend before any is asked for. */
static int no_device(const char *what, char *error, size_t size) {
  set_error(error, size, "%s: this build has no CUDA backend (CUOPTIM_WITH_CUDA=OFF)", what);
  return CUOPTIM_STATUS_NOT_SUPPORTED;
}

static int device_alloc(void **ptr, size_t bytes, const char *what, char *error, size_t size) {
  *ptr = NULL;
  return no_device(what, error, size);
}

static int device_copy(void *dst, const void *src, size_t bytes, int to_device, const char *what, char *error,
                       size_t size) {
  return no_device(what, error, size);
}

static void device_free(void *ptr) {}
#endif

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
      if (b->params != NULL && b->params[v] != NULL) device_free(b->params[v]);
      if (b->grads != NULL && b->grads[v] != NULL) device_free(b->grads[v]);
    } else {
      if (b->params != NULL) free(b->params[v]);
      if (b->grads != NULL) free(b->grads[v]);
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
      quoted_t name = quoted(c->variables[v].name);
      int rc = device_alloc(&b->params[v], bytes, name.text, error, size);
      if (rc == 0) rc = device_alloc(&b->grads[v], bytes, name.text, error, size);
      if (rc == 0)
        rc = device_copy(b->params[v], c->variables[v].value, c->variables[v].count * sizeof(float), 1, name.text,
                         error, size);
      if (rc != 0) return rc;
    } else {
      b->params[v] = malloc(bytes);
      b->grads[v] = malloc(bytes);
      if (b->params[v] == NULL || b->grads[v] == NULL) {
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
      int rc = device_copy(out[v], b->params[v], bytes, 0, quoted(c->variables[v].name).text, error, size);
      if (rc != 0) return rc;
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

/* Applies steps[0 .. num_steps): each step's gradients are first copied into the run's buffers. */
static int run_steps(const cuoptimCase *c, float ***steps, int num_steps, cuoptimOptimizer_t opt,
                     const buffers_t *b, const char *label, char *error, size_t size) {
  cuoptimGradient_t *pairs = calloc((size_t)c->num_variables, sizeof *pairs);
  if (pairs == NULL) {
    set_error(error, size, "out of memory");
    return CUOPTIM_STATUS_ALLOC_FAILED;
  }
  int rc = 0;
  for (int s = 0; s < num_steps && rc == 0; s++) {
    char where[64];
    snprintf(where, sizeof where, "%s[%d]", label, s);
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
      const float *g = steps[s][v];
      if (g == NULL) continue;
      if (b->backend == CUOPTIM_BACKEND_CUDA) {
        rc = device_copy(b->grads[v], g, c->variables[v].count * sizeof(float), 1, where, error, size);
      } else {
        memcpy(b->grads[v], g, c->variables[v].count * sizeof(float));
      }
      pairs[v].grad = b->grads[v];
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
  return cuoptim_case_run_with(c, backend, NULL, r, error, error_size);
}

int cuoptim_case_run_with(const cuoptimCase *c, cuoptimBackend_t backend, const cuoptimCaseRunOptions *options,
                          cuoptimCaseResult *r, char *error, size_t error_size) {
  if (r == NULL || c == NULL) {
    set_error(error, error_size, "cuoptim_case_run: NULL argument");
    return CUOPTIM_STATUS_NULL_POINTER;
  }
  memset(r, 0, sizeof *r);
  float ***steps = c->steps;
  int num_steps = c->num_steps;
  const char *label = "steps";
  if (options != NULL && options->steps != NULL) {
    steps = options->steps;
    num_steps = options->num_steps;
    label = options->label != NULL ? options->label : "the given steps";
  } else if (!c->has_steps) {
    set_error(error, error_size, "the case has no \"steps\", only rank_steps for %d ranks (a data-parallel run)",
              c->num_ranks);
    return CUOPTIM_STATUS_INVALID_VALUE;
  }
  cuoptimOptimizer_t opt = NULL;
  buffers_t b;
  memset(&b, 0, sizeof b);
  b.backend = backend;
  int rc = 0;
  int device = options ? options->device : 0;
  cuoptimStatus_t st = c->multi ? cuoptimCreateFromKerasJSON(&opt, c->optimizer_json, backend, device)
                                : cuoptimCreate(&opt, &c->config, backend, device);
  if (st != CUOPTIM_STATUS_SUCCESS) {
    rc = library_failed(st, NULL, error, error_size);
    goto done;
  }
  rc = alloc_buffers(c, &b, error, error_size);
  if (rc != 0) goto done;
  for (int v = 0; v < c->num_variables; v++) {
    cuoptimVariable_t handle = -1;
    st = cuoptimAddVariableWithShape(opt, c->variables[v].name, b.params[v], CUOPTIM_FLOAT32, c->variables[v].ndim,
                                     c->variables[v].shape, &handle);
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
  if (options != NULL && options->communicator != NULL) {
    st = cuoptimSetCommunicator(opt, options->communicator, &options->comm_options);
    if (st != CUOPTIM_STATUS_SUCCESS) {
      rc = library_failed(st, NULL, error, error_size);
      goto done;
    }
  }
  rc = run_steps(c, steps, num_steps, opt, &b, label, error, error_size);
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
  if (rc != 0) {
    make_printable(error, error_size); /* library messages may echo names */
    cuoptim_case_result_free(r);
  }
  return rc;
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t bytes) {
  const unsigned char *p = data;
  for (size_t i = 0; i < bytes; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

uint64_t cuoptim_case_result_hash(const cuoptimCase *c, const cuoptimCaseResult *r) {
  uint64_t h = 1469598103934665603ull;
  h = fnv1a(h, &r->iterations, sizeof r->iterations);
  for (int v = 0; v < r->num_variables && r->variables != NULL; v++)
    h = fnv1a(h, r->variables[v], c->variables[v].count * sizeof(float));
  for (int i = 0; i < r->num_state && r->state != NULL; i++) {
    const cuoptimCaseState *e = &r->state[i];
    uint64_t count = e->count;
    h = fnv1a(h, e->name, strlen(e->name) + 1);
    h = fnv1a(h, &count, sizeof count);
    h = fnv1a(h, e->value, e->count * sizeof(double));
  }
  int finalized = r->has_finalized && r->finalized != NULL;
  h = fnv1a(h, &finalized, sizeof finalized);
  for (int v = 0; finalized && v < r->num_variables; v++)
    h = fnv1a(h, r->finalized[v], c->variables[v].count * sizeof(float));
  return h;
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

/* "name" or "name[index]", the name made printable (it comes from the case or the library). */
static void where_of(char *out, size_t size, const char *name, size_t index, size_t count) {
  char shown[CUOPTIM_MAX_WEIGHT_NAME * 6];
  cuoptim_case_printable(name, shown, sizeof shown);
  if (count == 1)
    snprintf(out, size, "%s", shown);
  else
    snprintf(out, size, "%s[%zu]", shown, index);
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
      char where[CUOPTIM_MAX_WEIGHT_NAME + 32];
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
    quoted_t q = quoted(got->name);
    add_message(g, "%s has %zu elements, %s has %zu", q.text, got->count, want_label, want->count);
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

/* pair[i]: the entry of `want` that got[i] is matched with by name, or -1. The k-th entry of a
 * name on one side is matched with the k-th of that name on the other. */
static int match_by_name(const cuoptimCaseState *got, int num_got, const cuoptimCaseState *want, int num_want,
                         int *pair) {
  name_index_t names;
  if (name_index_init(&names, want, sizeof *want, offsetof(cuoptimCaseState, name), num_want) != 0) return -1;
  /* next[j]: the next entry of want named like want[j]; unused[f], for the first entry f of a
   * name: the first of its entries not matched yet; last[f]: the last of its entries. */
  int *next = malloc(((size_t)num_want + 1) * sizeof *next);
  int *unused = malloc(((size_t)num_want + 1) * sizeof *unused);
  int *last = malloc(((size_t)num_want + 1) * sizeof *last);
  int rc = next != NULL && unused != NULL && last != NULL ? 0 : -1;
  for (int j = 0; rc == 0 && j < num_want; j++) {
    next[j] = -1;
    int first = name_index_add(&names, j);
    if (first < 0) {
      unused[j] = last[j] = j;
    } else {
      next[last[first]] = j;
      last[first] = j;
    }
  }
  for (int i = 0; rc == 0 && i < num_got; i++) {
    int first = name_index_find(&names, got[i].name);
    pair[i] = first < 0 ? -1 : unused[first];
    if (pair[i] >= 0) unused[first] = next[pair[i]];
  }
  free(next);
  free(unused);
  free(last);
  name_index_free(&names);
  return rc;
}

/* Keeps in pair[] only a longest run of matches whose `want` positions increase with the `got`
 * positions (the others become -1): with unique names, that is the longest common subsequence of
 * the two name lists, found in n log n (patience sorting). */
static int keep_longest_ordered(int *pair, int num_got) {
  int *tail = malloc(((size_t)num_got + 1) * sizeof *tail); /* tail[k]: got index ending the best run of k+1 */
  int *prev = malloc(((size_t)num_got + 1) * sizeof *prev); /* the got index before i in its run */
  if (tail == NULL || prev == NULL) {
    free(tail);
    free(prev);
    return -1;
  }
  int length = 0;
  for (int i = 0; i < num_got; i++) {
    if (pair[i] < 0) continue;
    int lo = 0, hi = length; /* the first run whose end is not below pair[i] */
    while (lo < hi) {
      int mid = lo + (hi - lo) / 2;
      if (pair[tail[mid]] < pair[i])
        lo = mid + 1;
      else
        hi = mid;
    }
    prev[i] = lo > 0 ? tail[lo - 1] : -1;
    tail[lo] = i;
    if (lo == length) length++;
  }
  /* Marks the run by negating pair + 2 (so that -1 stays free), then unmarks it. */
  for (int i = length > 0 ? tail[length - 1] : -1; i >= 0; i = prev[i]) pair[i] = -(pair[i] + 2);
  for (int i = 0; i < num_got; i++) pair[i] = pair[i] <= -2 ? -pair[i] - 2 : -1;
  free(tail);
  free(prev);
  return 0;
}

/* When the names differ, the entries are aligned by name (the longest common subsequence of the
 * two name lists) so that the message lists exactly what is missing or extra, and the values of
 * the entries both sides have are still compared. */
static void compare_state_aligned(cuoptimCaseGroupComparison *g, const cuoptimCaseState *got, int num_got,
                                  const cuoptimCaseState *want, int num_want, const char *want_label,
                                  double rtol, double atol) {
  int *pair = malloc(((size_t)num_got + 1) * sizeof *pair);
  char *wanted = calloc((size_t)num_want + 1, 1); /* want[j] is matched */
  if (pair == NULL || wanted == NULL || match_by_name(got, num_got, want, num_want, pair) != 0 ||
      keep_longest_ordered(pair, num_got) != 0) {
    free(pair);
    free(wanted);
    add_message(g, "entry names differ from %s's (out of memory aligning them)", want_label);
    return;
  }
  char missing[200] = "", extra[200] = "";
  int num_extra = 0;
  for (int i = 0; i < num_got; i++) {
    if (pair[i] >= 0) {
      compare_entry(g, &got[i], &want[pair[i]], want_label, rtol, atol);
      wanted[pair[i]] = 1;
    } else if (num_extra++ < 4) {
      quoted_t q = quoted(got[i].name);
      append(extra, sizeof extra, "%s[%d] %s", num_extra > 1 ? ", " : "", i, q.text);
    }
  }
  int num_missing = 0;
  for (int j = 0; j < num_want; j++) {
    if (wanted[j] || num_missing++ >= 4) continue;
    quoted_t q = quoted(want[j].name);
    append(missing, sizeof missing, "%s[%d] %s", num_missing > 1 ? ", " : "", j, q.text);
  }
  free(pair);
  free(wanted);
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
