/*
 * multi_json.c — the Keras JSON of a MultiOptimizer (keras.optimizers.serialize), in and out.
 *
 * Reading walks the text itself, so that each sub-optimizer's serialized object reaches
 * cuoptimConfigFromKerasJSON byte for byte (its numbers, integers beyond 2^53 and Infinity read
 * as that call reads them). Writing puts the sub-optimizers' cuoptimConfigToKerasJSON texts into
 * the envelope Keras writes, with json.dumps's separators.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "multi.h"

#define FROM_JSON "cuoptimCreateFromKerasJSON"
#define TO_JSON "cuoptimToKerasJSON"
#define PLACE_MAX 200

/* ---- a small walker over JSON text ------------------------------------------------------------ */

typedef struct {
  const char *begin, *end; /* [begin, end) */
} span_t;

static const char *skip_space(const char *p) {
  while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
  return p;
}

/* p at '"': past the closing quote, or NULL. */
static const char *skip_string(const char *p) {
  for (p++; *p != '\0'; p++) {
    if (*p == '\\') {
      if (p[1] == '\0') return NULL;
      p++;
    } else if (*p == '"') {
      return p + 1;
    }
  }
  return NULL;
}

/* Past one value at p (after spaces), or NULL when the text is not well formed there. */
static const char *skip_value(const char *p, int depth) {
  p = skip_space(p);
  if (depth > 64) return NULL;
  if (*p == '"') return skip_string(p);
  if (*p == '{' || *p == '[') {
    char close = *p == '{' ? '}' : ']';
    p = skip_space(p + 1);
    if (*p == close) return p + 1;
    for (;;) {
      if (close == '}') {
        if (*p != '"') return NULL;
        p = skip_string(p);
        if (!p) return NULL;
        p = skip_space(p);
        if (*p != ':') return NULL;
        p++;
      }
      p = skip_value(p, depth + 1);
      if (!p) return NULL;
      p = skip_space(p);
      if (*p == close) return p + 1;
      if (*p != ',') return NULL;
      p = skip_space(p + 1);
    }
  }
  const char *start = p;
  while (*p != '\0' && strchr(",}] \t\r\n", *p) == NULL) p++;
  return p > start ? p : NULL;
}

typedef struct {
  int count;
  char **keys;     /* decoded */
  span_t *values;
} members_t;

static void members_free(members_t *m) {
  for (int i = 0; i < m->count; i++) free(m->keys[i]);
  free(m->keys);
  free(m->values);
  memset(m, 0, sizeof *m);
}

/* A copy of [begin, end) parsed by cJSON (a string or number token). NULL when invalid. */
static cJSON *parse_token(span_t s) {
  size_t n = (size_t)(s.end - s.begin);
  char *copy = malloc(n + 1);
  if (!copy) return NULL;
  memcpy(copy, s.begin, n);
  copy[n] = '\0';
  cJSON *item = cJSON_Parse(copy);
  free(copy);
  return item;
}

static cuoptimStatus_t parse_error(const char *place, const char *why) {
  return cuoptim_error(CUOPTIM_STATUS_PARSE_ERROR, FROM_JSON ": %s: not valid JSON (%s)", place, why);
}

/* The members of the object in `s`, a repeated key keeping its first place and its last value
 * (Python's json.loads). */
static cuoptimStatus_t read_members(span_t s, const char *place, members_t *out) {
  memset(out, 0, sizeof *out);
  const char *p = skip_space(s.begin);
  if (*p != '{') return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: expected an object", place);
  int capacity = 0;
  p = skip_space(p + 1);
  if (*p == '}') return CUOPTIM_STATUS_SUCCESS;
  for (;;) {
    if (*p != '"') return parse_error(place, "a key expected");
    span_t key = {p, skip_string(p)};
    if (!key.end) return parse_error(place, "unterminated string");
    p = skip_space(key.end);
    if (*p != ':') return parse_error(place, "':' expected");
    span_t value = {skip_space(p + 1), skip_value(p + 1, 0)};
    if (!value.end) return parse_error(place, "malformed value");
    cJSON *decoded = parse_token(key);
    if (!decoded || !cJSON_IsString(decoded)) {
      cJSON_Delete(decoded);
      members_free(out);
      return parse_error(place, "malformed key");
    }
    int at = -1;
    for (int i = 0; i < out->count; i++)
      if (strcmp(out->keys[i], decoded->valuestring) == 0) at = i;
    if (at < 0 && out->count == capacity) {
      capacity = capacity ? capacity * 2 : 8;
      char **keys = realloc(out->keys, (size_t)capacity * sizeof *keys);
      if (keys) out->keys = keys;
      span_t *values = realloc(out->values, (size_t)capacity * sizeof *values);
      if (values) out->values = values;
      if (!keys || !values) {
        cJSON_Delete(decoded);
        members_free(out);
        return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, FROM_JSON ": out of host memory");
      }
    }
    if (at < 0) {
      at = out->count++;
      out->keys[at] = strdup(decoded->valuestring);
    }
    cJSON_Delete(decoded);
    out->values[at] = value;
    p = skip_space(value.end);
    if (*p == '}') return CUOPTIM_STATUS_SUCCESS;
    if (*p != ',') {
      members_free(out);
      return parse_error(place, "',' or '}' expected");
    }
    p = skip_space(p + 1);
  }
}

static const span_t *find_member(const members_t *m, const char *key) {
  for (int i = 0; i < m->count; i++)
    if (m->keys[i] && strcmp(m->keys[i], key) == 0) return &m->values[i];
  return NULL;
}

static int is_null(const span_t *s) { return s && s->end - s->begin == 4 && memcmp(s->begin, "null", 4) == 0; }

/* The class_name of the serialized object in `s` (into out), "" when it has none. */
static cuoptimStatus_t class_name_of(span_t s, const char *place, char *out, size_t size) {
  members_t m;
  out[0] = '\0';
  CUOPTIM_CHECK(read_members(s, place, &m));
  const span_t *name = find_member(&m, "class_name");
  cJSON *item = name ? parse_token(*name) : NULL;
  if (item && cJSON_IsString(item)) snprintf(out, size, "%s", item->valuestring);
  cJSON_Delete(item);
  members_free(&m);
  return CUOPTIM_STATUS_SUCCESS;
}

/* ---- reading ---------------------------------------------------------------------------------- */

/* Only these keys in `m` (NULL-terminated list). */
static cuoptimStatus_t check_keys(const members_t *m, const char *const *allowed, const char *place) {
  for (int i = 0; i < m->count; i++) {
    int known = 0;
    for (const char *const *a = allowed; *a; a++) known |= strcmp(*a, m->keys[i]) == 0;
    if (!known)
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s.%.64s: unknown key", place, m->keys[i]);
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* The "config" object of the envelope in `s` whose class_name must be `cls`. */
static cuoptimStatus_t read_envelope(span_t s, const char *cls, const char *place, span_t *config) {
  static const char *const keys[] = {"module", "class_name", "config", "registered_name", NULL};
  members_t m;
  CUOPTIM_CHECK(read_members(s, place, &m));
  cuoptimStatus_t status = check_keys(&m, keys, place);
  char found[CUOPTIM_MAX_NAME];
  if (status == CUOPTIM_STATUS_SUCCESS) status = class_name_of(s, place, found, sizeof found);
  if (status == CUOPTIM_STATUS_SUCCESS && strcmp(found, cls) != 0)
    status = cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s.class_name = \"%.64s\": expected \"%s\"",
                           place, found, cls);
  const span_t *c = find_member(&m, "config");
  if (status == CUOPTIM_STATUS_SUCCESS && !c)
    status = cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s.config: missing", place);
  if (status == CUOPTIM_STATUS_SUCCESS) *config = *c;
  members_free(&m);
  return status;
}

/* One sub-optimizer: its text through cuoptimConfigFromKerasJSON, the message prefixed with its
 * place. */
static cuoptimStatus_t read_sub(span_t s, const char *place, cuoptimConfig_t *config) {
  char cls[CUOPTIM_MAX_NAME];
  CUOPTIM_CHECK(class_name_of(s, place, cls, sizeof cls));
  if (strcmp(cls, "MultiOptimizer") == 0 || strcmp(cls, "LossScaleOptimizer") == 0)
    return cuoptim_error(CUOPTIM_STATUS_NOT_SUPPORTED, FROM_JSON ": %s: a %s cannot be used inside a MultiOptimizer",
                         place, cls);
  size_t n = (size_t)(s.end - s.begin);
  char *text = malloc(n + 1);
  if (!text) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, FROM_JSON ": out of host memory");
  memcpy(text, s.begin, n);
  text[n] = '\0';
  cuoptimStatus_t status = cuoptimConfigFromKerasJSON(config, text);
  free(text);
  if (status == CUOPTIM_STATUS_SUCCESS) return status;
  const char *message = cuoptimGetLastErrorMessage();
  const char *prefix = "cuoptimConfigFromKerasJSON: ";
  if (strncmp(message, prefix, strlen(prefix)) == 0) message += strlen(prefix);
  char copy[1024];
  snprintf(copy, sizeof copy, "%s", message);
  return cuoptim_error(status, FROM_JSON ": %s: %s", place, copy);
}

typedef struct {
  cuoptimMultiConfig_t multi;
  cuoptimConfig_t optimizers[CUOPTIM_MAX_SUB_OPTIMIZERS];
  char *patterns[CUOPTIM_MAX_PATTERNS];
  int pattern_optimizer[CUOPTIM_MAX_PATTERNS];
} multi_text_t;

static void multi_text_free(multi_text_t *t) {
  for (int i = 0; i < t->multi.num_patterns; i++) free(t->patterns[i]);
  free(t);
}

static cuoptimStatus_t read_map_entries(span_t map, multi_text_t *t) {
  static const char *place = "config.optimizer_map.config.optimizer_map";
  if (is_null(&map)) return CUOPTIM_STATUS_SUCCESS;
  members_t m;
  CUOPTIM_CHECK(read_members(map, place, &m));
  cuoptimStatus_t status = CUOPTIM_STATUS_SUCCESS;
  if (m.count >= CUOPTIM_MAX_SUB_OPTIMIZERS)
    status = cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: %d keys: at most %d (with the default, %d "
                           "sub-optimizers)", place, m.count, CUOPTIM_MAX_SUB_OPTIMIZERS - 1,
                           CUOPTIM_MAX_SUB_OPTIMIZERS);
  for (int i = 0; status == CUOPTIM_STATUS_SUCCESS && i < m.count; i++) {
    char where[PLACE_MAX];
    snprintf(where, sizeof where, "%s[\"%.64s\"]", place, m.keys[i]);
    status = read_sub(m.values[i], where, &t->optimizers[i]);
    if (status != CUOPTIM_STATUS_SUCCESS) break;
    t->patterns[i] = m.keys[i];
    m.keys[i] = NULL;
    t->pattern_optimizer[i] = i;
    t->multi.num_patterns = i + 1;
  }
  members_free(&m);
  return status;
}

static cuoptimStatus_t read_number_or_null(const span_t *s, const char *place, double *out) {
  if (!s || is_null(s)) return CUOPTIM_STATUS_SUCCESS; /* stays NONE */
  char *end = NULL;
  double x = strtod(s->begin, &end);
  if (end != s->end || s->begin == s->end)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: expected a number or null", place);
  *out = x;
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t read_name_or_null(const span_t *s, const char *place, char *out, size_t size) {
  if (!s || is_null(s)) return CUOPTIM_STATUS_SUCCESS; /* the default name */
  cJSON *item = parse_token(*s);
  cuoptimStatus_t status = CUOPTIM_STATUS_SUCCESS;
  if (!item || !cJSON_IsString(item))
    status = cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: expected a string or null", place);
  else if (strlen(item->valuestring) >= size)
    status = cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: longer than %zu bytes", place, size - 1);
  else if (item->valuestring[0] != '\0')
    snprintf(out, size, "%s", item->valuestring);
  cJSON_Delete(item);
  return status;
}

static cuoptimStatus_t read_multi(span_t config, multi_text_t *t) {
  static const char *const keys[] = {"optimizer_map", "loss_scale_factor", "name", NULL};
  static const char *const map_keys[] = {"default_optimizer", "optimizer_map", NULL};
  members_t m, mc;
  CUOPTIM_CHECK(read_members(config, "config", &m));
  cuoptimStatus_t status = check_keys(&m, keys, "config");
  const span_t *map = find_member(&m, "optimizer_map");
  if (status == CUOPTIM_STATUS_SUCCESS && !map)
    status = cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": config.optimizer_map: missing (a callable "
                           "optimizer_map cannot be serialized)");
  if (status == CUOPTIM_STATUS_SUCCESS)
    status = read_number_or_null(find_member(&m, "loss_scale_factor"), "config.loss_scale_factor",
                                 &t->multi.loss_scale_factor);
  if (status == CUOPTIM_STATUS_SUCCESS)
    status = read_name_or_null(find_member(&m, "name"), "config.name", t->multi.name, sizeof t->multi.name);
  span_t map_config;
  if (status == CUOPTIM_STATUS_SUCCESS)
    status = read_envelope(*map, "OptimizerMap", "config.optimizer_map", &map_config);
  if (status != CUOPTIM_STATUS_SUCCESS) {
    members_free(&m);
    return status;
  }
  status = read_members(map_config, "config.optimizer_map.config", &mc);
  if (status == CUOPTIM_STATUS_SUCCESS) status = check_keys(&mc, map_keys, "config.optimizer_map.config");
  const span_t *def = status == CUOPTIM_STATUS_SUCCESS ? find_member(&mc, "default_optimizer") : NULL;
  if (status == CUOPTIM_STATUS_SUCCESS && !def)
    status = cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": config.optimizer_map.config.default_optimizer: "
                           "missing");
  const span_t *entries = status == CUOPTIM_STATUS_SUCCESS ? find_member(&mc, "optimizer_map") : NULL;
  if (status == CUOPTIM_STATUS_SUCCESS && entries) status = read_map_entries(*entries, t);
  int d = t->multi.num_patterns;
  if (status == CUOPTIM_STATUS_SUCCESS)
    status = read_sub(*def, "config.optimizer_map.config.default_optimizer", &t->optimizers[d]);
  t->multi.num_optimizers = d + 1;
  t->multi.default_optimizer = d;
  members_free(&mc);
  members_free(&m);
  return status;
}

/* A LossScaleOptimizer around a MultiOptimizer (Keras allows it; cuoptim does not). */
static cuoptimStatus_t refuse_wrapped_multi(span_t root) {
  members_t m, c;
  CUOPTIM_CHECK(read_members(root, "json", &m));
  const span_t *config = find_member(&m, "config");
  cuoptimStatus_t status = CUOPTIM_STATUS_SUCCESS;
  if (config && read_members(*config, "config", &c) == CUOPTIM_STATUS_SUCCESS) {
    const span_t *inner = find_member(&c, "inner_optimizer");
    char cls[CUOPTIM_MAX_NAME] = "";
    if (inner && *skip_space(inner->begin) == '{')
      (void)class_name_of(*inner, "config.inner_optimizer", cls, sizeof cls);
    if (strcmp(cls, "MultiOptimizer") == 0)
      status = cuoptim_error(CUOPTIM_STATUS_NOT_SUPPORTED,
                             FROM_JSON ": config.inner_optimizer: a MultiOptimizer inside a LossScaleOptimizer is not "
                                       "supported");
    members_free(&c);
  }
  members_free(&m);
  return status;
}

static cuoptimStatus_t create_plain(cuoptimOptimizer_t *optimizer, const char *json, cuoptimBackend_t backend,
                                    int device) {
  cuoptimConfig_t config;
  CUOPTIM_CHECK(cuoptimConfigFromKerasJSON(&config, json));
  return cuoptimCreate(optimizer, &config, backend, device);
}

cuoptimStatus_t cuoptimCreateFromKerasJSON(cuoptimOptimizer_t *optimizer, const char *json, cuoptimBackend_t backend,
                                           int device) {
  CUOPTIM_REQUIRE_NOT_NULL(FROM_JSON, optimizer);
  CUOPTIM_REQUIRE_NOT_NULL(FROM_JSON, json);
  if (cuoptim_invalid_utf8_offset(json) >= 0) return create_plain(optimizer, json, backend, device);
  span_t root = {skip_space(json), skip_value(json, 0)};
  /* Text that is not one object: cuoptimConfigFromKerasJSON words the error. */
  if (!root.end || *skip_space(root.end) != '\0' || *root.begin != '{')
    return create_plain(optimizer, json, backend, device);
  char cls[CUOPTIM_MAX_NAME];
  CUOPTIM_CHECK(class_name_of(root, "json", cls, sizeof cls));
  if (strcmp(cls, "LossScaleOptimizer") == 0) CUOPTIM_CHECK(refuse_wrapped_multi(root));
  if (strcmp(cls, "MultiOptimizer") != 0) return create_plain(optimizer, json, backend, device);
  multi_text_t *t = calloc(1, sizeof *t);
  if (!t) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, FROM_JSON ": out of host memory");
  cuoptimMultiConfigInit(&t->multi);
  span_t config;
  cuoptimStatus_t status = read_envelope(root, "MultiOptimizer", "json", &config);
  if (status == CUOPTIM_STATUS_SUCCESS) status = read_multi(config, t);
  if (status == CUOPTIM_STATUS_SUCCESS) {
    t->multi.optimizers = t->optimizers;
    t->multi.patterns = (const char *const *)t->patterns;
    t->multi.pattern_optimizer = t->pattern_optimizer;
    status = cuoptimCreateMulti(optimizer, &t->multi, backend, device);
  }
  multi_text_free(t);
  return status;
}

/* ---- writing ---------------------------------------------------------------------------------- */

typedef struct {
  char *data;
  size_t len, cap;
  int failed;
} buffer_t;

static void append(buffer_t *b, const char *s) {
  size_t n = strlen(s);
  if (b->failed) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = (b->len + n + 1) * 2;
    char *data = realloc(b->data, cap);
    if (!data) {
      b->failed = 1;
      return;
    }
    b->data = data;
    b->cap = cap;
  }
  memcpy(b->data + b->len, s, n + 1);
  b->len += n;
}

static void append_owned(buffer_t *b, char *s) {
  if (!s) b->failed = 1;
  else append(b, s);
  free(s);
}

static cuoptimStatus_t append_sub(buffer_t *b, cuoptimOptimizer_t sub) {
  cuoptimConfig_t config;
  char *text = NULL;
  CUOPTIM_CHECK(cuoptimGetConfig(sub, &config));
  CUOPTIM_CHECK(cuoptim_config_json_text(&config, TO_JSON, &text));
  append(b, text);
  free(text);
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t write_multi(const struct cuoptimOptimizer *opt, buffer_t *b) {
  const struct cuoptimMulti *m = opt->multi;
  append(b, "{\"module\": \"keras.optimizers\", \"class_name\": \"MultiOptimizer\", \"config\": {\"optimizer_map\": "
            "{\"module\": \"keras.optimizers\", \"class_name\": \"OptimizerMap\", \"config\": "
            "{\"default_optimizer\": ");
  CUOPTIM_CHECK(append_sub(b, m->optimizers[m->default_optimizer]));
  append(b, ", \"optimizer_map\": {");
  for (int i = 0; i < m->num_patterns; i++) {
    if (i) append(b, ", ");
    append_owned(b, cuoptim_json_string(m->patterns[i]));
    append(b, ": ");
    CUOPTIM_CHECK(append_sub(b, m->optimizers[m->pattern_optimizer[i]]));
  }
  append(b, "}}, \"registered_name\": null}, \"loss_scale_factor\": ");
  char number[40] = "null";
  if (!CUOPTIM_IS_NONE(m->loss_scale_factor)) cuoptim_python_float_repr(m->loss_scale_factor, number);
  append(b, number);
  append(b, ", \"name\": ");
  append_owned(b, cuoptim_json_string(opt->config.name));
  append(b, "}, \"registered_name\": null}");
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptim_multi_json_text(cuoptimOptimizer_t opt, const char *caller, char **text) {
  buffer_t b = {NULL, 0, 0, 0};
  cuoptimStatus_t status = write_multi(opt, &b);
  if (status == CUOPTIM_STATUS_SUCCESS && b.failed)
    status = cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  if (status != CUOPTIM_STATUS_SUCCESS) {
    free(b.data);
    b.data = NULL;
  }
  *text = b.data;
  return status;
}

cuoptimStatus_t cuoptimToKerasJSON(cuoptimOptimizer_t opt, char *buffer, size_t capacity, size_t *length) {
  if (!opt) return cuoptim_error(CUOPTIM_STATUS_NULL_POINTER, TO_JSON ": optimizer is NULL");
  if (!opt->multi) {
    cuoptimConfig_t config;
    CUOPTIM_CHECK(cuoptimGetConfig(opt, &config));
    return cuoptimConfigToKerasJSON(&config, buffer, capacity, length);
  }
  char *text = NULL;
  cuoptimStatus_t status = cuoptim_multi_json_text(opt, TO_JSON, &text);
  if (status == CUOPTIM_STATUS_SUCCESS) {
    size_t used = strlen(text);
    if (length) *length = used;
    if (buffer == NULL || capacity < used + 1)
      status = cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                             TO_JSON ": capacity = %zu: the text needs %zu bytes (NUL included)%s", capacity, used + 1,
                             buffer == NULL ? " and buffer is NULL" : "");
    else
      memcpy(buffer, text, used + 1);
  }
  free(text);
  return status;
}
