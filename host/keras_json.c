/*
 * keras_json.c — Keras 3 serialized optimizers <-> cuoptimConfig_t.
 *
 * cuoptimConfigFromKerasJSON reads the JSON text of `keras.optimizers.serialize(opt)` (Keras 3.15:
 * {"module", "class_name", "config", "registered_name"}, learning-rate schedules nested the same
 * way, LossScaleOptimizer wrapping its inner optimizer); cuoptimConfigToKerasJSON writes that text
 * back, byte for byte as Python's json.dumps writes it (", " and ": " separators, Python's float
 * repr, ASCII-only strings), with exactly the config keys Keras writes for the class, in Keras's
 * order. The key tables below are the single description of both directions.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cuoptim.h"
#include "internal.h"

#define FROM_JSON "cuoptimConfigFromKerasJSON"
#define TO_JSON "cuoptimConfigToKerasJSON"

#define OPTIMIZERS_MODULE "keras.optimizers"
#define SCHEDULES_MODULE "keras.optimizers.schedules"
#define LSO_CLASS "LossScaleOptimizer"
#define LSO_DEFAULT_NAME "loss_scale_optimizer"
#define LSO_DEFAULT_INITIAL_SCALE 32768.0
#define LSO_DEFAULT_GROWTH_STEPS 2000

/* Longest key path in a message ("config.inner_optimizer.config.learning_rate.config.x"). */
#define PATH_MAX_LEN 256

/* ---------------------------------------------------------------------------------------------
 * Key tables
 * ------------------------------------------------------------------------------------------- */
typedef enum {
  FT_NUMBER,         /* double; Keras never writes None for it */
  FT_NUMBER_OR_NONE, /* double; None <-> CUOPTIM_NONE */
  FT_STEPS,          /* double that Keras users pass as an int (decay_steps): written as an int
                        when it is integral, so Keras gets back the int it wrote */
  FT_BOOL,           /* int 0/1 <-> false/true */
  FT_COUNT_OR_NONE,  /* int64_t; None <-> 0 */
  FT_NAME,           /* char[CUOPTIM_MAX_NAME]; None <-> "" or the default (see the readers) */
  FT_LEARNING_RATE,  /* cuoptimSchedule_t: a number or a serialized schedule */
  FT_BOUNDARIES,     /* cuoptimSchedule_t boundaries[num_boundaries] */
  FT_VALUES,         /* cuoptimSchedule_t values[num_boundaries + 1] */
  FT_INT64,          /* int64_t, an integer (never None) */
  FT_PATTERNS        /* Muon's exclude_layers: a list of strings <-> cuoptimConfig_t's array */
} field_type_t;

typedef struct {
  const char *key;
  field_type_t type;
  size_t offset;
  int required; /* a positional argument of the Keras constructor */
} field_t;

#define CFG(key, type, member) {key, type, offsetof(cuoptimConfig_t, member), 0}
#define SCH(key, type, member, required) {key, type, offsetof(cuoptimSchedule_t, member), required}
#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

/* BaseOptimizer.get_config, in its order. */
static const field_t BASE_FIELDS[] = {
    CFG("name", FT_NAME, name),
    CFG("learning_rate", FT_LEARNING_RATE, learning_rate),
    CFG("weight_decay", FT_NUMBER_OR_NONE, weight_decay),
    CFG("clipnorm", FT_NUMBER_OR_NONE, clipnorm),
    CFG("global_clipnorm", FT_NUMBER_OR_NONE, global_clipnorm),
    CFG("clipvalue", FT_NUMBER_OR_NONE, clipvalue),
    CFG("use_ema", FT_BOOL, use_ema),
    CFG("ema_momentum", FT_NUMBER, ema_momentum),
    CFG("ema_overwrite_frequency", FT_COUNT_OR_NONE, ema_overwrite_frequency),
    CFG("loss_scale_factor", FT_NUMBER_OR_NONE, loss_scale_factor),
    CFG("gradient_accumulation_steps", FT_COUNT_OR_NONE, gradient_accumulation_steps),
};

/* What each subclass's get_config adds, in its order. */
static const field_t SGD_FIELDS[] = {
    CFG("momentum", FT_NUMBER, momentum),
    CFG("nesterov", FT_BOOL, nesterov),
};
static const field_t RMSPROP_FIELDS[] = {
    CFG("rho", FT_NUMBER, rho),
    CFG("momentum", FT_NUMBER, momentum),
    CFG("epsilon", FT_NUMBER, epsilon),
    CFG("centered", FT_BOOL, centered),
};
static const field_t ADAGRAD_FIELDS[] = {
    CFG("initial_accumulator_value", FT_NUMBER, initial_accumulator_value),
    CFG("epsilon", FT_NUMBER, epsilon),
};
static const field_t ADADELTA_FIELDS[] = {
    CFG("rho", FT_NUMBER, rho),
    CFG("epsilon", FT_NUMBER, epsilon),
};
static const field_t ADAM_FIELDS[] = { /* Adam, AdamW */
    CFG("beta_1", FT_NUMBER, beta_1),
    CFG("beta_2", FT_NUMBER, beta_2),
    CFG("epsilon", FT_NUMBER, epsilon),
    CFG("amsgrad", FT_BOOL, amsgrad),
};
static const field_t BETAS_EPSILON_FIELDS[] = { /* Adamax, Nadam, Lamb */
    CFG("beta_1", FT_NUMBER, beta_1),
    CFG("beta_2", FT_NUMBER, beta_2),
    CFG("epsilon", FT_NUMBER, epsilon),
};
static const field_t LION_FIELDS[] = {
    CFG("beta_1", FT_NUMBER, beta_1),
    CFG("beta_2", FT_NUMBER, beta_2),
};
static const field_t FTRL_FIELDS[] = {
    CFG("learning_rate_power", FT_NUMBER, learning_rate_power),
    CFG("initial_accumulator_value", FT_NUMBER, initial_accumulator_value),
    CFG("l1_regularization_strength", FT_NUMBER, l1_regularization_strength),
    CFG("l2_regularization_strength", FT_NUMBER, l2_regularization_strength),
    CFG("l2_shrinkage_regularization_strength", FT_NUMBER, l2_shrinkage_regularization_strength),
    CFG("beta", FT_NUMBER, beta),
};

static const field_t SCHEDULE_FREE_ADAMW_FIELDS[] = {
    CFG("beta_1", FT_NUMBER, beta_1),
    CFG("beta_2", FT_NUMBER, beta_2),
    CFG("epsilon", FT_NUMBER, epsilon),
    CFG("warmup_steps", FT_STEPS, warmup_steps),
};

/* Muon.get_config's additions, in its order. */
static const field_t MUON_FIELDS[] = {
    CFG("adam_beta_1", FT_NUMBER, adam_beta_1),
    CFG("adam_beta_2", FT_NUMBER, adam_beta_2),
    CFG("epsilon", FT_NUMBER, epsilon),
    CFG("exclude_layers", FT_PATTERNS, exclude_layers),
    CFG("muon_a", FT_NUMBER, muon_a),
    CFG("muon_b", FT_NUMBER, muon_b),
    CFG("muon_c", FT_NUMBER, muon_c),
    CFG("adam_lr_ratio", FT_STEPS, adam_lr_ratio), /* Keras's default is the int 1 */
    CFG("momentum", FT_NUMBER, momentum),
    CFG("ns_steps", FT_INT64, ns_steps),
    CFG("nesterov", FT_BOOL, nesterov),
    CFG("exclude_embeddings", FT_BOOL, exclude_embeddings),
    CFG("adam_weight_decay", FT_NUMBER_OR_NONE, adam_weight_decay),
    CFG("rms_rate", FT_NUMBER_OR_NONE, rms_rate),
};

static const field_t ADAFACTOR_FIELDS[] = {
    CFG("beta_2_decay", FT_NUMBER, beta_2_decay),
    CFG("epsilon_1", FT_NUMBER, epsilon_1),
    CFG("epsilon_2", FT_NUMBER, epsilon_2),
    CFG("clip_threshold", FT_NUMBER, clip_threshold),
    CFG("relative_step", FT_BOOL, relative_step),
};

typedef struct {
  const char *class_name;   /* Keras class name */
  const char *default_name; /* Keras's auto_name(class_name) */
  const field_t *fields;    /* after BASE_FIELDS */
  size_t num_fields;
} optimizer_class_t;

/* Indexed by cuoptimOptimizerKind_t. */
static const optimizer_class_t OPTIMIZER_CLASSES[CUOPTIM_OPTIMIZER_COUNT] = {
    [CUOPTIM_SGD] = {"SGD", "sgd", SGD_FIELDS, COUNT_OF(SGD_FIELDS)},
    [CUOPTIM_RMSPROP] = {"RMSprop", "rm_sprop", RMSPROP_FIELDS, COUNT_OF(RMSPROP_FIELDS)},
    [CUOPTIM_ADAGRAD] = {"Adagrad", "adagrad", ADAGRAD_FIELDS, COUNT_OF(ADAGRAD_FIELDS)},
    [CUOPTIM_ADADELTA] = {"Adadelta", "adadelta", ADADELTA_FIELDS, COUNT_OF(ADADELTA_FIELDS)},
    [CUOPTIM_ADAM] = {"Adam", "adam", ADAM_FIELDS, COUNT_OF(ADAM_FIELDS)},
    [CUOPTIM_ADAMW] = {"AdamW", "adam_w", ADAM_FIELDS, COUNT_OF(ADAM_FIELDS)},
    [CUOPTIM_ADAMAX] = {"Adamax", "adamax", BETAS_EPSILON_FIELDS, COUNT_OF(BETAS_EPSILON_FIELDS)},
    [CUOPTIM_NADAM] = {"Nadam", "nadam", BETAS_EPSILON_FIELDS, COUNT_OF(BETAS_EPSILON_FIELDS)},
    [CUOPTIM_LION] = {"Lion", "lion", LION_FIELDS, COUNT_OF(LION_FIELDS)},
    [CUOPTIM_LAMB] = {"Lamb", "lamb", BETAS_EPSILON_FIELDS, COUNT_OF(BETAS_EPSILON_FIELDS)},
    [CUOPTIM_FTRL] = {"Ftrl", "ftrl", FTRL_FIELDS, COUNT_OF(FTRL_FIELDS)},
    [CUOPTIM_SCHEDULE_FREE_ADAMW] = {"ScheduleFreeAdamW", "schedule_free_adam_w", SCHEDULE_FREE_ADAMW_FIELDS,
                                     COUNT_OF(SCHEDULE_FREE_ADAMW_FIELDS)},
    [CUOPTIM_ADAFACTOR] = {"Adafactor", "adafactor", ADAFACTOR_FIELDS, COUNT_OF(ADAFACTOR_FIELDS)},
    [CUOPTIM_MUON] = {"Muon", "muon", MUON_FIELDS, COUNT_OF(MUON_FIELDS)},
};

/* Each schedule's get_config, in its order (ExponentialDecay and InverseTimeDecay share theirs). */
static const field_t EXPONENTIAL_FIELDS[] = {
    SCH("initial_learning_rate", FT_NUMBER, initial_learning_rate, 1),
    SCH("decay_steps", FT_STEPS, decay_steps, 1),
    SCH("decay_rate", FT_NUMBER, decay_rate, 1),
    SCH("staircase", FT_BOOL, staircase, 0),
    SCH("name", FT_NAME, name, 0),
};
static const field_t PIECEWISE_FIELDS[] = {
    SCH("boundaries", FT_BOUNDARIES, boundaries, 1),
    SCH("values", FT_VALUES, values, 1),
    SCH("name", FT_NAME, name, 0),
};
static const field_t POLYNOMIAL_FIELDS[] = {
    SCH("initial_learning_rate", FT_NUMBER, initial_learning_rate, 1),
    SCH("decay_steps", FT_STEPS, decay_steps, 1),
    SCH("end_learning_rate", FT_NUMBER, end_learning_rate, 0),
    SCH("power", FT_NUMBER, power, 0),
    SCH("cycle", FT_BOOL, cycle, 0),
    SCH("name", FT_NAME, name, 0),
};
static const field_t COSINE_FIELDS[] = {
    SCH("initial_learning_rate", FT_NUMBER, initial_learning_rate, 1),
    SCH("decay_steps", FT_STEPS, decay_steps, 1),
    SCH("alpha", FT_NUMBER, alpha, 0),
    SCH("name", FT_NAME, name, 0),
    SCH("warmup_target", FT_NUMBER_OR_NONE, warmup_target, 0),
    SCH("warmup_steps", FT_STEPS, warmup_steps, 0),
};
static const field_t COSINE_RESTARTS_FIELDS[] = {
    SCH("initial_learning_rate", FT_NUMBER, initial_learning_rate, 1),
    SCH("first_decay_steps", FT_STEPS, decay_steps, 1),
    SCH("t_mul", FT_NUMBER, t_mul, 0),
    SCH("m_mul", FT_NUMBER, m_mul, 0),
    SCH("alpha", FT_NUMBER, alpha, 0),
    SCH("name", FT_NAME, name, 0),
};

typedef struct {
  const char *class_name;   /* Keras class name */
  const char *default_name; /* the constructor's default `name` */
  const field_t *fields;
  size_t num_fields;
} schedule_class_t;

/* Indexed by cuoptimScheduleKind_t; CONSTANT is a plain number. */
static const schedule_class_t SCHEDULE_CLASSES[] = {
    [CUOPTIM_SCHEDULE_CONSTANT] = {NULL, NULL, NULL, 0},
    [CUOPTIM_SCHEDULE_EXPONENTIAL] = {"ExponentialDecay", "ExponentialDecay", EXPONENTIAL_FIELDS,
                                      COUNT_OF(EXPONENTIAL_FIELDS)},
    [CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT] = {"PiecewiseConstantDecay", "PiecewiseConstant",
                                             PIECEWISE_FIELDS, COUNT_OF(PIECEWISE_FIELDS)},
    [CUOPTIM_SCHEDULE_POLYNOMIAL] = {"PolynomialDecay", "PolynomialDecay", POLYNOMIAL_FIELDS,
                                     COUNT_OF(POLYNOMIAL_FIELDS)},
    [CUOPTIM_SCHEDULE_INVERSE_TIME] = {"InverseTimeDecay", "InverseTimeDecay", EXPONENTIAL_FIELDS,
                                       COUNT_OF(EXPONENTIAL_FIELDS)},
    [CUOPTIM_SCHEDULE_COSINE] = {"CosineDecay", "CosineDecay", COSINE_FIELDS, COUNT_OF(COSINE_FIELDS)},
    [CUOPTIM_SCHEDULE_COSINE_RESTARTS] = {"CosineDecayRestarts", "SGDRDecay", COSINE_RESTARTS_FIELDS,
                                          COUNT_OF(COSINE_RESTARTS_FIELDS)},
};
#define NUM_SCHEDULE_CLASSES ((int)COUNT_OF(SCHEDULE_CLASSES))

/* LossScaleOptimizer's constructor accepts these base-optimizer arguments only at their defaults
 * (older Keras versions wrote them); anything else is an error in Keras too. */
typedef struct {
  const char *key;
  int default_is_bool; /* 1: default false; 0 with default_number NaN: default None */
  double default_number;
} lso_legacy_key_t;

static const lso_legacy_key_t LSO_LEGACY_KEYS[] = {
    {"weight_decay", 0, NAN},         {"clipnorm", 0, NAN},
    {"global_clipnorm", 0, NAN},      {"clipvalue", 0, NAN},
    {"use_ema", 1, 0.0},              {"ema_momentum", 0, 0.99},
    {"ema_overwrite_frequency", 0, NAN}, {"loss_scale_factor", 0, NAN},
    {"gradient_accumulation_steps", 0, NAN},
};

/* ---------------------------------------------------------------------------------------------
 * Reading
 * ------------------------------------------------------------------------------------------- */

static const char *json_type_name(const cJSON *item) {
  if (cJSON_IsString(item)) return "a string";
  if (cJSON_IsNumber(item)) return "a number";
  if (cJSON_IsBool(item)) return "a boolean";
  if (cJSON_IsNull(item)) return "null";
  if (cJSON_IsArray(item)) return "an array";
  if (cJSON_IsObject(item)) return "an object";
  return "an invalid value";
}

static cuoptimStatus_t type_error(const char *path, const char *expected, const cJSON *item) {
  return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: expected %s, got %s", path, expected,
                       json_type_name(item));
}

/* ---------------------------------------------------------------------------------------------
 * Input text in messages: messages are one line of ASCII, so text taken from the input is escaped
 * (quote, backslash, control and non-ASCII bytes as \" \\ \xNN) and cut after QUOTE_SOURCE_MAX
 * bytes.
 * ------------------------------------------------------------------------------------------- */
#define QUOTE_SOURCE_MAX 48
#define QUOTED_MAX (QUOTE_SOURCE_MAX * 4 + 8) /* the quotes, "..." and the NUL included */

/* Appends the escaped form of at most QUOTE_SOURCE_MAX bytes of src at dst[*n], keeping
 * dst[0..cap) NUL-terminated. */
static void append_escaped(char *dst, size_t *n, size_t cap, const char *src) {
  size_t i = 0;
  for (; src[i] != '\0' && i < QUOTE_SOURCE_MAX; i++) {
    unsigned char ch = (unsigned char)src[i];
    char piece[8];
    if (ch == '"' || ch == '\\') {
      snprintf(piece, sizeof piece, "\\%c", ch);
    } else if (ch < 0x20 || ch >= 0x7f) {
      snprintf(piece, sizeof piece, "\\x%02x", ch);
    } else {
      piece[0] = (char)ch;
      piece[1] = '\0';
    }
    size_t len = strlen(piece);
    if (*n + len >= cap) break;
    memcpy(dst + *n, piece, len);
    *n += len;
  }
  if (src[i] != '\0' && *n + 3 < cap) {
    memcpy(dst + *n, "...", 3);
    *n += 3;
  }
  dst[*n] = '\0';
}

/* "text" as a message shows an input string. Returns out. */
static const char *quoted(char out[QUOTED_MAX], const char *text) {
  size_t n = 0;
  out[n++] = '"';
  append_escaped(out, &n, QUOTED_MAX - 1, text);
  out[n++] = '"';
  out[n] = '\0';
  return out;
}

/* dst = prefix + "." + key (or key alone at the top), the key escaped, truncated to PATH_MAX_LEN:
 * only used in messages. */
static void path_join(char *dst, const char *prefix, const char *key) {
  size_t n = 0;
  for (const char *p = prefix; *p != '\0' && n + 1 < PATH_MAX_LEN; p++) dst[n++] = *p;
  if (prefix[0] != '\0' && n + 1 < PATH_MAX_LEN) dst[n++] = '.';
  dst[n] = '\0';
  append_escaped(dst, &n, PATH_MAX_LEN, key);
}

/* ---------------------------------------------------------------------------------------------
 * The text itself
 * ------------------------------------------------------------------------------------------- */
/* The length (1 to 4) of the UTF-8 sequence at p if it is valid: shortest form, no surrogate,
 * at most U+10FFFF, as Python's utf-8 codec requires; 0 if it is not. */
static size_t utf8_sequence_length(const unsigned char *p) {
  if (p[0] < 0x80) return 1;
  size_t n;
  uint32_t cp, min;
  if (p[0] >= 0xc2 && p[0] <= 0xdf) {
    n = 2, cp = p[0] & 0x1fu, min = 0x80;
  } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
    n = 3, cp = p[0] & 0x0fu, min = 0x800;
  } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
    n = 4, cp = p[0] & 0x07u, min = 0x10000;
  } else {
    return 0;
  }
  for (size_t i = 1; i < n; i++) {
    if ((p[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3fu);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

/* The offset of the first byte of s that does not start a valid UTF-8 sequence, or -1. */
ptrdiff_t cuoptim_invalid_utf8_offset(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  for (size_t i = 0; p[i] != '\0';) {
    size_t n = utf8_sequence_length(p + i);
    if (n == 0) return (ptrdiff_t)i;
    i += n;
  }
  return -1;
}

/* What cJSON lets through and Python's json.loads does not, or what a C string cannot hold: text
 * that is not UTF-8 (Python's json reads text, Keras cannot have written it), raw control
 * characters inside strings (JSON writes them escaped), and \u0000 (a NUL would cut a name or a
 * key short: "Adam\u0000x" is not Adam). Called on text cJSON parsed. */
static cuoptimStatus_t check_text(const char *json) {
  ptrdiff_t bad = cuoptim_invalid_utf8_offset(json);
  if (bad >= 0) {
    return cuoptim_error(CUOPTIM_STATUS_PARSE_ERROR,
                         FROM_JSON ": json: not valid UTF-8 at byte %td (byte 0x%02x); JSON text is UTF-8", bad,
                         (unsigned char)json[bad]);
  }
  size_t string_start = 0;
  int in_string = 0;
  for (size_t i = 0; json[i] != '\0'; i++) {
    unsigned char ch = (unsigned char)json[i];
    if (!in_string) {
      if (ch == '"') {
        in_string = 1;
        string_start = i;
      }
    } else if (ch == '"') {
      in_string = 0;
    } else if (ch < 0x20) {
      return cuoptim_error(CUOPTIM_STATUS_PARSE_ERROR,
                           FROM_JSON ": json: control character 0x%02x at byte %zu inside the string that starts "
                                     "at byte %zu (JSON writes it as an escape)",
                           ch, i, string_start);
    } else if (ch == '\\') {
      if (strncmp(json + i + 1, "u0000", 5) == 0) {
        return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                             FROM_JSON ": json: the string that starts at byte %zu holds \\u0000 (a NUL character) "
                                       "at byte %zu; cuoptim's names and keys cannot hold one",
                             string_start, i);
      }
      if (json[i + 1] != '\0') i++; /* the escaped character (ASCII in text cJSON accepted) */
    }
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* The next number token at or after *cursor, outside strings (text cJSON parsed: a number is the
 * run of number characters that starts with '-' or a digit); its length in *length; *cursor moves
 * past it. NULL when there is none. */
static const char *next_number_token(const char **cursor, size_t *length) {
  int in_string = 0;
  for (const char *p = *cursor; *p != '\0'; p++) {
    if (in_string) {
      if (*p == '\\' && p[1] != '\0') {
        p++;
      } else if (*p == '"') {
        in_string = 0;
      }
    } else if (*p == '"') {
      in_string = 1;
    } else if (*p == '-' || (*p >= '0' && *p <= '9')) {
      *length = strspn(p, "0123456789+-eE.");
      *cursor = p + *length;
      return p;
    }
  }
  return NULL;
}

/* cJSON keeps a number only as a double, which holds integers exactly only up to 2^53. Each number
 * item gets the text of its token as valuestring (allocated with cJSON's allocator, so cJSON_Delete
 * frees it), so that integer fields are read exactly. The tree is walked in document order, which is
 * the order of the number tokens in `text`. */
static cuoptimStatus_t keep_number_texts(cJSON *item, const char **cursor) {
  for (; item != NULL; item = item->next) {
    if (cJSON_IsNumber(item)) {
      size_t n = 0;
      const char *token = next_number_token(cursor, &n);
      if (token == NULL) {
        return cuoptim_error(CUOPTIM_STATUS_INTERNAL_ERROR,
                             FROM_JSON ": json: fewer number tokens in the text than numbers parsed");
      }
      char *copy = cJSON_malloc(n + 1);
      if (copy == NULL) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, FROM_JSON ": out of memory");
      memcpy(copy, token, n);
      copy[n] = '\0';
      item->valuestring = copy;
    } else if (item->child != NULL) {
      CUOPTIM_CHECK(keep_number_texts(item->child, cursor));
    }
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* The member `key` of object obj; when the key repeats, the last one, as Python's json.loads keeps
 * it (and so Keras). NULL when absent. */
static const cJSON *member(const cJSON *obj, const char *key) {
  const cJSON *found = NULL;
  for (const cJSON *c = obj->child; c != NULL; c = c->next) {
    if (c->string != NULL && strcmp(c->string, key) == 0) found = c;
  }
  return found;
}

static cuoptimStatus_t read_number(const cJSON *item, const char *path, double *out) {
  if (!cJSON_IsNumber(item)) return type_error(path, "a number", item);
  *out = item->valuedouble;
  return CUOPTIM_STATUS_SUCCESS;
}

/* -?[0-9]+: a JSON integer (cJSON also lets leading zeros through; Python does not, Keras never
 * writes them). */
static int is_integer_literal(const char *text) {
  if (*text == '-') text++;
  if (*text == '\0') return 0;
  return text[strspn(text, "0123456789")] == '\0';
}

/* An integer field. An integer token is read exactly from its text (keep_number_texts); another
 * number (5.0, 1e3) must be an integral double in int64 range, as a Python float Keras accepts. */
static cuoptimStatus_t read_integer(const cJSON *item, const char *path, int64_t *out) {
  if (!cJSON_IsNumber(item)) return type_error(path, "an integer", item);
  const char *text = item->valuestring;
  if (text != NULL && is_integer_literal(text)) {
    errno = 0;
    long long v = strtoll(text, NULL, 10);
    if (errno == ERANGE) {
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                           FROM_JSON ": %s = %s: out of the range of a 64-bit integer [-2^63, 2^63)", path, text);
    }
    *out = (int64_t)v;
    return CUOPTIM_STATUS_SUCCESS;
  }
  double v = item->valuedouble;
  /* [-2^63, 2^63): every double in it converts exactly. */
  if (!(v == floor(v)) || !(v >= -9223372036854775808.0) || !(v < 9223372036854775808.0)) {
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s = %.17g: expected an integer", path, v);
  }
  *out = (int64_t)v;
  return CUOPTIM_STATUS_SUCCESS;
}

/* A name. None and "" both mean the default name, which is stored itself, so that parsing what
 * cuoptimConfigToKerasJSON writes (the default for an empty name) gives the same config again. */
static cuoptimStatus_t read_name(const cJSON *item, const char *path, char *dst, const char *default_name) {
  if (cJSON_IsNull(item) || (cJSON_IsString(item) && item->valuestring != NULL && item->valuestring[0] == '\0')) {
    snprintf(dst, CUOPTIM_MAX_NAME, "%s", default_name);
    return CUOPTIM_STATUS_SUCCESS;
  }
  if (!cJSON_IsString(item) || item->valuestring == NULL) return type_error(path, "a string or null", item);
  size_t n = strlen(item->valuestring);
  if (n >= CUOPTIM_MAX_NAME) {
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: the name is %zu bytes long; at most %d fit",
                         path, n, CUOPTIM_MAX_NAME - 1);
  }
  memcpy(dst, item->valuestring, n + 1);
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t read_number_array(const cJSON *item, const char *path, double *dst, int max_count,
                                         int *count) {
  if (!cJSON_IsArray(item)) return type_error(path, "an array of numbers", item);
  int n = cJSON_GetArraySize(item);
  if (n > max_count) {
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: %d elements; at most %d are supported",
                         path, n, max_count);
  }
  int i = 0;
  for (const cJSON *e = item->child; e != NULL; e = e->next, i++) {
    if (!cJSON_IsNumber(e)) {
      char element[PATH_MAX_LEN];
      snprintf(element, sizeof element, "%s[%d]", path, i);
      return type_error(element, "a number", e);
    }
    dst[i] = e->valuedouble;
  }
  *count = n;
  return CUOPTIM_STATUS_SUCCESS;
}

/* Muon's exclude_layers: a list of at most CUOPTIM_MAX_EXCLUDE_LAYERS strings (Keras writes [] for
 * None), each shorter than CUOPTIM_MAX_NAME bytes; the config's validation compiles them. */
static cuoptimStatus_t read_patterns(const cJSON *item, const char *path, cuoptimConfig_t *cfg) {
  if (!cJSON_IsArray(item)) return type_error(path, "a list of strings", item);
  int n = cJSON_GetArraySize(item);
  if (n > CUOPTIM_MAX_EXCLUDE_LAYERS)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: %d patterns; at most %d are supported", path,
                         n, CUOPTIM_MAX_EXCLUDE_LAYERS);
  int i = 0;
  for (const cJSON *e = item->child; e != NULL; e = e->next, i++) {
    char element[PATH_MAX_LEN];
    snprintf(element, sizeof element, "%s[%d]", path, i);
    if (!cJSON_IsString(e) || e->valuestring == NULL) return type_error(element, "a string", e);
    size_t length = strlen(e->valuestring);
    if (length >= CUOPTIM_MAX_NAME)
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: the pattern is %zu bytes long; at most %d fit",
                           element, length, CUOPTIM_MAX_NAME - 1);
    memcpy(cfg->exclude_layers[i], e->valuestring, length + 1);
  }
  cfg->num_exclude_layers = n;
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t parse_learning_rate(cuoptimSchedule_t *schedule, const cJSON *item, const char *path);

/* Applies one key of a config dict. `base` is the cuoptimConfig_t or cuoptimSchedule_t the offsets
 * refer to; `default_name` is what a None or empty name becomes; `num_values` receives the length
 * of a PiecewiseConstantDecay `values` list. */
static cuoptimStatus_t apply_field(void *base, const field_t *field, const cJSON *item, const char *path,
                                   const char *default_name, int *num_values) {
  char *p = (char *)base + field->offset;
  switch (field->type) {
    case FT_NUMBER:
    case FT_STEPS:
      return read_number(item, path, (double *)p);
    case FT_NUMBER_OR_NONE:
      if (cJSON_IsNull(item)) {
        *(double *)p = CUOPTIM_NONE;
        return CUOPTIM_STATUS_SUCCESS;
      }
      if (!cJSON_IsNumber(item)) return type_error(path, "a number or null", item);
      *(double *)p = item->valuedouble;
      return CUOPTIM_STATUS_SUCCESS;
    case FT_BOOL:
      if (!cJSON_IsBool(item)) return type_error(path, "a boolean", item);
      *(int *)p = cJSON_IsTrue(item) ? 1 : 0;
      return CUOPTIM_STATUS_SUCCESS;
    case FT_COUNT_OR_NONE:
      if (cJSON_IsNull(item)) {
        *(int64_t *)p = 0;
        return CUOPTIM_STATUS_SUCCESS;
      }
      if (!cJSON_IsNumber(item)) return type_error(path, "an integer or null", item);
      return read_integer(item, path, (int64_t *)p);
    case FT_NAME:
      return read_name(item, path, p, default_name);
    case FT_LEARNING_RATE:
      return parse_learning_rate((cuoptimSchedule_t *)p, item, path);
    case FT_BOUNDARIES: {
      cuoptimSchedule_t *s = (cuoptimSchedule_t *)base;
      return read_number_array(item, path, s->boundaries, CUOPTIM_MAX_BOUNDARIES, &s->num_boundaries);
    }
    case FT_VALUES: {
      cuoptimSchedule_t *s = (cuoptimSchedule_t *)base;
      return read_number_array(item, path, s->values, CUOPTIM_MAX_BOUNDARIES + 1, num_values);
    }
    case FT_INT64:
      if (!cJSON_IsNumber(item)) return type_error(path, "an integer", item);
      return read_integer(item, path, (int64_t *)p);
    case FT_PATTERNS:
      return read_patterns(item, path, (cuoptimConfig_t *)base);
  }
  return cuoptim_error(CUOPTIM_STATUS_INTERNAL_ERROR, FROM_JSON ": %s: unhandled field type %d", path,
                       (int)field->type);
}

static const field_t *find_field(const field_t *fields, size_t n, const char *key) {
  for (size_t i = 0; i < n; i++) {
    if (strcmp(fields[i].key, key) == 0) return &fields[i];
  }
  return NULL;
}

/* The four keys serialize_keras_object writes around a config. */
typedef struct {
  const cJSON *module;
  const cJSON *class_name;
  const cJSON *config;
  const cJSON *registered_name;
} envelope_t;

static cuoptimStatus_t read_envelope(const cJSON *obj, const char *path, envelope_t *env) {
  memset(env, 0, sizeof *env);
  for (const cJSON *c = obj->child; c != NULL; c = c->next) {
    const char *key = c->string ? c->string : "";
    if (strcmp(key, "module") == 0) {
      env->module = c;
    } else if (strcmp(key, "class_name") == 0) {
      env->class_name = c;
    } else if (strcmp(key, "config") == 0) {
      env->config = c;
    } else if (strcmp(key, "registered_name") == 0) {
      env->registered_name = c;
    } else {
      char where[PATH_MAX_LEN];
      path_join(where, path, key);
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                           FROM_JSON ": %s: unknown key (a serialized Keras object has only module, "
                                     "class_name, config and registered_name)",
                           where);
    }
  }
  char where[PATH_MAX_LEN];
  if (env->class_name == NULL) {
    path_join(where, path, "class_name");
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: missing", where);
  }
  if (!cJSON_IsString(env->class_name) || env->class_name->valuestring == NULL) {
    path_join(where, path, "class_name");
    return type_error(where, "a string", env->class_name);
  }
  if (env->module != NULL && !cJSON_IsNull(env->module) && !cJSON_IsString(env->module)) {
    path_join(where, path, "module");
    return type_error(where, "a string or null", env->module);
  }
  if (env->registered_name != NULL && !cJSON_IsNull(env->registered_name) &&
      !cJSON_IsString(env->registered_name)) {
    path_join(where, path, "registered_name");
    return type_error(where, "a string or null", env->registered_name);
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* A serialized Python function or lambda (serialize_keras_object of a callable). */
static int envelope_is_callable(const envelope_t *env) {
  const char *cls = env->class_name->valuestring;
  if (strcmp(cls, "__lambda__") == 0 || strcmp(cls, "function") == 0) return 1;
  if (env->module != NULL && cJSON_IsString(env->module) && strcmp(env->module->valuestring, "builtins") == 0) {
    return 1;
  }
  if (env->registered_name != NULL && cJSON_IsString(env->registered_name) &&
      strcmp(env->registered_name->valuestring, "function") == 0) {
    return 1;
  }
  return 0;
}

/* Built-in Keras classes are written with module "keras.<...>" (or none in the legacy form) and
 * registered_name null; anything else is a user class that merely shares the name. */
static cuoptimStatus_t check_builtin(const envelope_t *env, const char *path, const char *what) {
  char where[PATH_MAX_LEN];
  char q1[QUOTED_MAX], q2[QUOTED_MAX];
  if (env->module != NULL && cJSON_IsString(env->module)) {
    const char *m = env->module->valuestring;
    if (strcmp(m, "keras") != 0 && strncmp(m, "keras.", 6) != 0) {
      path_join(where, path, "module");
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                           FROM_JSON ": %s = %s: unknown %s class %s (not a built-in Keras class)", where,
                           quoted(q1, m), what, quoted(q2, env->class_name->valuestring));
    }
  }
  if (env->registered_name != NULL && cJSON_IsString(env->registered_name) &&
      strcmp(env->registered_name->valuestring, env->class_name->valuestring) != 0) {
    path_join(where, path, "registered_name");
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         FROM_JSON ": %s = %s: unknown %s class (a registered custom object)", where,
                         quoted(q1, env->registered_name->valuestring), what);
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t require_config_object(const envelope_t *env, const char *path) {
  char where[PATH_MAX_LEN];
  path_join(where, path, "config");
  if (env->config == NULL) return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: missing", where);
  if (!cJSON_IsObject(env->config)) return type_error(where, "an object", env->config);
  return CUOPTIM_STATUS_SUCCESS;
}

static int find_schedule_class(const char *name) {
  for (int k = 1; k < NUM_SCHEDULE_CLASSES; k++) {
    if (strcmp(SCHEDULE_CLASSES[k].class_name, name) == 0) return k;
  }
  return -1;
}

/* The first key of obj that none of `fields`, `more_fields` (may be NULL) and the NULL-terminated
 * `extra` (may be NULL) names; NULL when every key is known. */
static const cJSON *first_unknown_key(const cJSON *obj, const field_t *fields, size_t num_fields,
                                      const field_t *more_fields, size_t num_more, const char *const *extra) {
  for (const cJSON *c = obj->child; c != NULL; c = c->next) {
    const char *key = c->string ? c->string : "";
    if (find_field(fields, num_fields, key) != NULL) continue;
    if (more_fields != NULL && find_field(more_fields, num_more, key) != NULL) continue;
    int known = 0;
    for (size_t i = 0; extra != NULL && extra[i] != NULL && !known; i++) known = strcmp(extra[i], key) == 0;
    if (!known) return c;
  }
  return NULL;
}

static cuoptimStatus_t parse_schedule(cuoptimSchedule_t *out, const cJSON *obj, const char *path) {
  envelope_t env;
  cuoptimStatus_t st = read_envelope(obj, path, &env);
  if (st != CUOPTIM_STATUS_SUCCESS) return st;
  char q[QUOTED_MAX];
  if (envelope_is_callable(&env)) {
    return cuoptim_error(CUOPTIM_STATUS_NOT_SUPPORTED,
                         FROM_JSON ": %s: a learning rate given as a serialized Python callable (class_name "
                                   "%s) is not supported; use a number or a built-in schedule",
                         path, quoted(q, env.class_name->valuestring));
  }
  const char *cls = env.class_name->valuestring;
  int kind = find_schedule_class(cls);
  char where[PATH_MAX_LEN];
  if (kind < 0) {
    path_join(where, path, "class_name");
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: unknown learning-rate schedule class %s",
                         where, quoted(q, cls));
  }
  st = check_builtin(&env, path, "learning-rate schedule");
  if (st != CUOPTIM_STATUS_SUCCESS) return st;
  st = require_config_object(&env, path);
  if (st != CUOPTIM_STATUS_SUCCESS) return st;

  const schedule_class_t *sc = &SCHEDULE_CLASSES[kind];
  cuoptimSchedule_t tmp;
  memset(&tmp, 0, sizeof tmp);
  st = cuoptimScheduleInit(&tmp, (cuoptimScheduleKind_t)kind);
  if (st != CUOPTIM_STATUS_SUCCESS) return st;
  snprintf(tmp.name, sizeof tmp.name, "%s", sc->default_name);

  char config_path[PATH_MAX_LEN];
  path_join(config_path, path, "config");
  const cJSON *unknown = first_unknown_key(env.config, sc->fields, sc->num_fields, NULL, 0, NULL);
  if (unknown != NULL) {
    path_join(where, config_path, unknown->string ? unknown->string : "");
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: unknown key for %s", where, sc->class_name);
  }
  int num_values = -1;
  for (size_t i = 0; i < sc->num_fields; i++) {
    const field_t *f = &sc->fields[i];
    const cJSON *item = member(env.config, f->key);
    path_join(where, config_path, f->key);
    if (item == NULL) {
      if (!f->required) continue;
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: missing (a required argument of %s)",
                           where, sc->class_name);
    }
    st = apply_field(&tmp, f, item, where, sc->default_name, &num_values);
    if (st != CUOPTIM_STATUS_SUCCESS) return st;
  }
  if (kind == CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT && num_values != tmp.num_boundaries + 1) {
    path_join(where, config_path, "values");
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         FROM_JSON ": %s: %d values for %d boundaries; PiecewiseConstantDecay needs one "
                                   "value more than boundaries",
                         where, num_values, tmp.num_boundaries);
  }
  *out = tmp;
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t parse_learning_rate(cuoptimSchedule_t *schedule, const cJSON *item, const char *path) {
  if (cJSON_IsNumber(item)) {
    cuoptimSchedule_t tmp;
    memset(&tmp, 0, sizeof tmp);
    cuoptimStatus_t st = cuoptimScheduleInit(&tmp, CUOPTIM_SCHEDULE_CONSTANT);
    if (st != CUOPTIM_STATUS_SUCCESS) return st;
    tmp.initial_learning_rate = item->valuedouble;
    *schedule = tmp;
    return CUOPTIM_STATUS_SUCCESS;
  }
  if (cJSON_IsObject(item)) return parse_schedule(schedule, item, path);
  return type_error(path, "a number or a serialized learning-rate schedule", item);
}

static int find_optimizer_class(const char *name) {
  /* keras.optimizers.deserialize matches built-in class names case-insensitively. */
  for (int k = 0; k < CUOPTIM_OPTIMIZER_COUNT; k++) {
    if (OPTIMIZER_CLASSES[k].class_name && strcasecmp(OPTIMIZER_CLASSES[k].class_name, name) == 0) return k;
  }
  return -1;
}

static cuoptimStatus_t parse_optimizer(cuoptimConfig_t *cfg, const cJSON *obj, const char *path, int allow_lso);

/* One of the base-optimizer keys LossScaleOptimizer accepts only at its default. */
static cuoptimStatus_t check_lso_legacy_key(const lso_legacy_key_t *legacy, const cJSON *item, const char *where) {
  int is_default;
  if (legacy->default_is_bool) {
    is_default = cJSON_IsFalse(item);
  } else if (isnan(legacy->default_number)) {
    is_default = cJSON_IsNull(item);
  } else {
    is_default = cJSON_IsNumber(item) && item->valuedouble == legacy->default_number;
  }
  if (is_default) return CUOPTIM_STATUS_SUCCESS;
  return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                       FROM_JSON ": %s: LossScaleOptimizer does not support `%s`; set it on the inner_optimizer",
                       where, legacy->key);
}

static cuoptimStatus_t parse_loss_scale_optimizer(cuoptimConfig_t *cfg, const envelope_t *env, const char *path) {
  static const char *const LSO_KEYS[] = {"inner_optimizer", "name", "initial_scale", "dynamic_growth_steps",
                                         "dynamic", NULL};
  char config_path[PATH_MAX_LEN], where[PATH_MAX_LEN];
  path_join(config_path, path, "config");
  for (const cJSON *c = env->config->child; c != NULL; c = c->next) {
    const char *key = c->string ? c->string : "";
    int known = 0;
    for (size_t i = 0; LSO_KEYS[i] != NULL; i++) known |= strcmp(LSO_KEYS[i], key) == 0;
    for (size_t i = 0; i < COUNT_OF(LSO_LEGACY_KEYS); i++) known |= strcmp(LSO_LEGACY_KEYS[i].key, key) == 0;
    if (!known) {
      path_join(where, config_path, key);
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: unknown key for %s", where, LSO_CLASS);
    }
  }
  const cJSON *inner = member(env->config, "inner_optimizer");
  path_join(where, config_path, "inner_optimizer");
  if (inner == NULL) {
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: missing (a required argument of %s)",
                         where, LSO_CLASS);
  }
  cuoptimStatus_t st = parse_optimizer(cfg, inner, where, 0);
  if (st != CUOPTIM_STATUS_SUCCESS) return st;

  cfg->dynamic_loss_scale = 1;
  cfg->initial_scale = LSO_DEFAULT_INITIAL_SCALE;
  cfg->dynamic_growth_steps = LSO_DEFAULT_GROWTH_STEPS;
  snprintf(cfg->loss_scale_name, sizeof cfg->loss_scale_name, "%s", LSO_DEFAULT_NAME);
  /* LossScaleOptimizer's constructor sets inner_optimizer.loss_scale_factor = None. */
  cfg->loss_scale_factor = CUOPTIM_NONE;

  const cJSON *c = member(env->config, "name");
  path_join(where, config_path, "name");
  if (c != NULL) CUOPTIM_CHECK(read_name(c, where, cfg->loss_scale_name, LSO_DEFAULT_NAME));
  c = member(env->config, "initial_scale");
  path_join(where, config_path, "initial_scale");
  if (c != NULL) CUOPTIM_CHECK(read_number(c, where, &cfg->initial_scale));
  c = member(env->config, "dynamic_growth_steps");
  path_join(where, config_path, "dynamic_growth_steps");
  if (c != NULL) CUOPTIM_CHECK(read_integer(c, where, &cfg->dynamic_growth_steps));
  c = member(env->config, "dynamic");
  path_join(where, config_path, "dynamic");
  if (c != NULL) {
    if (!cJSON_IsBool(c)) return type_error(where, "a boolean", c);
    if (!cJSON_IsTrue(c)) {
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                           FROM_JSON ": %s = false: LossScaleOptimizer no longer supports dynamic=False; "
                                     "set loss_scale_factor on the inner optimizer instead",
                           where);
    }
  }
  for (size_t i = 0; i < COUNT_OF(LSO_LEGACY_KEYS); i++) {
    c = member(env->config, LSO_LEGACY_KEYS[i].key);
    path_join(where, config_path, LSO_LEGACY_KEYS[i].key);
    if (c != NULL) CUOPTIM_CHECK(check_lso_legacy_key(&LSO_LEGACY_KEYS[i], c, where));
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t parse_optimizer(cuoptimConfig_t *cfg, const cJSON *obj, const char *path, int allow_lso) {
  if (!cJSON_IsObject(obj)) {
    return type_error(path[0] ? path : "json", "an object (a serialized Keras optimizer)", obj);
  }
  envelope_t env;
  cuoptimStatus_t st = read_envelope(obj, path, &env);
  if (st != CUOPTIM_STATUS_SUCCESS) return st;
  const char *cls = env.class_name->valuestring;
  char where[PATH_MAX_LEN];
  path_join(where, path, "class_name");

  if (strcasecmp(cls, LSO_CLASS) == 0) {
    if (!allow_lso) {
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                           FROM_JSON ": %s: a LossScaleOptimizer inside a LossScaleOptimizer is not supported",
                           where);
    }
    st = check_builtin(&env, path, "optimizer");
    if (st != CUOPTIM_STATUS_SUCCESS) return st;
    st = require_config_object(&env, path);
    if (st != CUOPTIM_STATUS_SUCCESS) return st;
    return parse_loss_scale_optimizer(cfg, &env, path);
  }

  int kind = find_optimizer_class(cls);
  char q[QUOTED_MAX];
  if (kind < 0) {
    if (find_schedule_class(cls) >= 0) {
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                           FROM_JSON ": %s: %s is a learning-rate schedule, not an optimizer class", where,
                           quoted(q, cls));
    }
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: unknown optimizer class %s", where,
                         quoted(q, cls));
  }
  st = check_builtin(&env, path, "optimizer");
  if (st != CUOPTIM_STATUS_SUCCESS) return st;
  st = require_config_object(&env, path);
  if (st != CUOPTIM_STATUS_SUCCESS) return st;

  const optimizer_class_t *oc = &OPTIMIZER_CLASSES[kind];
  st = cuoptimConfigInit(cfg, (cuoptimOptimizerKind_t)kind);
  if (st != CUOPTIM_STATUS_SUCCESS) return st;
  char default_name[CUOPTIM_MAX_NAME];
  memcpy(default_name, cfg->name, sizeof default_name);

  char config_path[PATH_MAX_LEN];
  path_join(config_path, path, "config");
  static const char *const LEGACY_KEYS[] = {"decay", NULL};
  const cJSON *unknown =
      first_unknown_key(env.config, BASE_FIELDS, COUNT_OF(BASE_FIELDS), oc->fields, oc->num_fields, LEGACY_KEYS);
  if (unknown != NULL) {
    path_join(where, config_path, unknown->string ? unknown->string : "");
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, FROM_JSON ": %s: unknown key for %s", where, oc->class_name);
  }
  /* Keras 3 pops `decay` and ignores it (with a warning when it is not None). */
  const cJSON *decay = member(env.config, "decay");
  path_join(where, config_path, "decay");
  if (decay != NULL && !cJSON_IsNumber(decay) && !cJSON_IsNull(decay)) {
    return type_error(where, "a number or null", decay);
  }
  for (size_t i = 0; i < COUNT_OF(BASE_FIELDS) + oc->num_fields; i++) {
    const field_t *f = i < COUNT_OF(BASE_FIELDS) ? &BASE_FIELDS[i] : &oc->fields[i - COUNT_OF(BASE_FIELDS)];
    const cJSON *item = member(env.config, f->key);
    if (item == NULL) continue;
    path_join(where, config_path, f->key);
    st = apply_field(cfg, f, item, where, default_name, NULL);
    if (st != CUOPTIM_STATUS_SUCCESS) return st;
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* Python's json module writes float('inf') as Infinity, which is not JSON; cJSON reads the
 * out-of-range number 1e999 as infinity, so those tokens (outside strings) are rewritten.
 * Returns the text to parse: `json` itself when nothing needed rewriting, else a malloc'ed copy
 * (*owned set); NULL when out of memory. */
static const char *rewrite_infinity(const char *json, char **owned) {
  *owned = NULL;
  if (strstr(json, "Infinity") == NULL) return json;
  size_t n = strlen(json);
  char *out = malloc(n + 1); /* "Infinity" (8) -> "1e999" (5): never longer */
  if (out == NULL) return NULL;
  size_t j = 0;
  int in_string = 0;
  for (size_t i = 0; i < n;) {
    char ch = json[i];
    if (in_string) {
      out[j++] = ch;
      if (ch == '\\' && i + 1 < n) {
        out[j++] = json[i + 1];
        i += 2;
        continue;
      }
      if (ch == '"') in_string = 0;
      i++;
    } else if (ch == '"') {
      in_string = 1;
      out[j++] = ch;
      i++;
    } else if (strncmp(json + i, "Infinity", 8) == 0) {
      memcpy(out + j, "1e999", 5);
      j += 5;
      i += 8;
    } else {
      out[j++] = ch;
      i++;
    }
  }
  out[j] = '\0';
  *owned = out;
  return out;
}

CUOPTIM_API cuoptimStatus_t cuoptimConfigFromKerasJSON(cuoptimConfig_t *config, const char *json) {
  if (config == NULL) return cuoptim_error(CUOPTIM_STATUS_NULL_POINTER, FROM_JSON ": config is NULL");
  if (json == NULL) return cuoptim_error(CUOPTIM_STATUS_NULL_POINTER, FROM_JSON ": json is NULL");

  char *owned = NULL;
  const char *text = rewrite_infinity(json, &owned);
  if (text == NULL) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, FROM_JSON ": out of memory");

  const char *end = NULL;
  cJSON *root = cJSON_ParseWithOpts(text, &end, 1);
  if (root == NULL) {
    cuoptimStatus_t st;
    if (end == NULL || *end == '\0') {
      st = cuoptim_error(CUOPTIM_STATUS_PARSE_ERROR, FROM_JSON ": json: not valid JSON (unexpected end of text)");
    } else {
      char near[32];
      size_t k = 0;
      for (; k + 1 < sizeof near && end[k] != '\0'; k++) {
        unsigned char ch = (unsigned char)end[k];
        near[k] = (ch < 0x20 || ch >= 0x7f || ch == '"') ? '?' : (char)ch;
      }
      near[k] = '\0';
      st = cuoptim_error(CUOPTIM_STATUS_PARSE_ERROR, FROM_JSON ": json: not valid JSON (at byte %zu, near \"%s\")",
                         (size_t)(end - text), near);
    }
    free(owned);
    return st;
  }

  cuoptimStatus_t st = check_text(json);
  const char *cursor = text;
  if (st == CUOPTIM_STATUS_SUCCESS) st = keep_number_texts(root, &cursor);
  cuoptimConfig_t tmp;
  memset(&tmp, 0, sizeof tmp);
  if (st == CUOPTIM_STATUS_SUCCESS) st = parse_optimizer(&tmp, root, "", 1);
  cJSON_Delete(root);
  free(owned);
  if (st != CUOPTIM_STATUS_SUCCESS) return st;
  st = cuoptim_validate_config(&tmp, FROM_JSON);
  if (st != CUOPTIM_STATUS_SUCCESS) return st;
  *config = tmp;
  return CUOPTIM_STATUS_SUCCESS;
}

/* ---------------------------------------------------------------------------------------------
 * Writing: the text of json.dumps(keras.optimizers.serialize(opt)).
 * ------------------------------------------------------------------------------------------- */
/* The text is produced twice: once to count its length (data NULL), once into the caller's
 * buffer, so nothing is allocated and a buffer too small receives nothing. */
typedef struct {
  char *data;   /* NULL: count only */
  size_t len;   /* bytes produced so far */
} text_t;

static void put_bytes(text_t *t, const char *s, size_t n) {
  if (t->data != NULL) memcpy(t->data + t->len, s, n);
  t->len += n;
}

static void put(text_t *t, const char *s) { put_bytes(t, s, strlen(s)); }

/* Python's repr(float): the shortest digits that read back as the same double, positional
 * notation for exponents -5 < e < 16 (with ".0" when integral), else d.ddde+XX. */
static void format_python_float(double x, char out[40]) {
  if (isnan(x)) {
    strcpy(out, "NaN");
    return;
  }
  if (isinf(x)) {
    strcpy(out, x > 0 ? "Infinity" : "-Infinity");
    return;
  }
  if (x == 0.0) {
    strcpy(out, signbit(x) ? "-0.0" : "0.0");
    return;
  }
  char sci[40];
  for (int precision = 1; precision <= 17; precision++) {
    snprintf(sci, sizeof sci, "%.*e", precision - 1, x);
    if (strtod(sci, NULL) == x) break;
  }
  /* sci = [-]d[.ddd]e(+|-)XX */
  const char *p = sci;
  int negative = 0;
  if (*p == '-') {
    negative = 1;
    p++;
  }
  char digits[24];
  int nd = 0;
  for (; *p != 'e'; p++) {
    if (*p != '.') digits[nd++] = *p;
  }
  while (nd > 1 && digits[nd - 1] == '0') nd--;
  digits[nd] = '\0';
  int exponent = atoi(p + 1);

  char *o = out;
  if (negative) *o++ = '-';
  if (exponent < -4 || exponent >= 16) {
    *o++ = digits[0];
    if (nd > 1) {
      *o++ = '.';
      memcpy(o, digits + 1, (size_t)(nd - 1));
      o += nd - 1;
    }
    sprintf(o, "e%c%02d", exponent < 0 ? '-' : '+', exponent < 0 ? -exponent : exponent);
    return;
  }
  int point = exponent + 1; /* digits before the decimal point */
  if (point <= 0) {
    *o++ = '0';
    *o++ = '.';
    for (int i = 0; i < -point; i++) *o++ = '0';
    memcpy(o, digits, (size_t)nd);
    o += nd;
  } else if (point < nd) {
    memcpy(o, digits, (size_t)point);
    o += point;
    *o++ = '.';
    memcpy(o, digits + point, (size_t)(nd - point));
    o += nd - point;
  } else {
    memcpy(o, digits, (size_t)nd);
    o += nd;
    for (int i = nd; i < point; i++) *o++ = '0';
    *o++ = '.';
    *o++ = '0';
  }
  *o = '\0';
}

static void put_float(text_t *t, double x) {
  char buf[40];
  format_python_float(x, buf);
  put(t, buf);
}

/* Step counts: Keras users pass ints and Keras writes them back as ints (-0.0 stays a float: as
 * an int it would read back as +0.0). */
static void put_steps(text_t *t, double x) {
  if (x == floor(x) && fabs(x) < 9007199254740992.0 && !(x == 0 && signbit(x))) {
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, (int64_t)x);
    put(t, buf);
  } else {
    put_float(t, x);
  }
}

static void put_int64(text_t *t, int64_t v) {
  char buf[32];
  snprintf(buf, sizeof buf, "%" PRId64, v);
  put(t, buf);
}

/* json.dumps's two-character escapes; NULL for other characters. */
static const char *short_escape(unsigned char c) {
  switch (c) {
    case '"': return "\\\"";
    case '\\': return "\\\\";
    case '\n': return "\\n";
    case '\r': return "\\r";
    case '\t': return "\\t";
    case '\b': return "\\b";
    case '\f': return "\\f";
    default: return NULL;
  }
}

/* A JSON string as json.dumps writes it (ensure_ascii): control characters, DEL and non-ASCII as
 * \uXXXX (UTF-16 surrogate pairs beyond the BMP). s is valid UTF-8 (cuoptimConfigToKerasJSON
 * checks the names first). */
static void put_string(text_t *t, const char *s) {
  put(t, "\"");
  const unsigned char *p = (const unsigned char *)s;
  while (*p != '\0') {
    unsigned char c = *p;
    char esc[16];
    if (short_escape(c) != NULL) {
      put(t, short_escape(c));
      p++;
    } else if (c >= 0x20 && c < 0x7f) {
      put_bytes(t, (const char *)p, 1);
      p++;
    } else {
      size_t n = utf8_sequence_length(p);
      if (n == 0) n = 1; /* not reached: names are checked */
      uint32_t cp = n == 1 ? c : (uint32_t)(c & (0x7fu >> n));
      for (size_t i = 1; i < n; i++) cp = (cp << 6) | (p[i] & 0x3fu);
      if (cp >= 0x10000) {
        uint32_t v = cp - 0x10000;
        snprintf(esc, sizeof esc, "\\u%04x\\u%04x", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
      } else {
        snprintf(esc, sizeof esc, "\\u%04x", cp);
      }
      put(t, esc);
      p += n;
    }
  }
  put(t, "\"");
}

static void put_key(text_t *t, const char *key, int first) {
  if (!first) put(t, ", ");
  put_string(t, key);
  put(t, ": ");
}

static void put_schedule(text_t *t, const cuoptimSchedule_t *s);

static void put_field(text_t *t, const void *base, const field_t *f, const char *default_name) {
  const char *p = (const char *)base + f->offset;
  switch (f->type) {
    case FT_NUMBER:
      put_float(t, *(const double *)p);
      break;
    case FT_NUMBER_OR_NONE: {
      double v = *(const double *)p;
      if (CUOPTIM_IS_NONE(v)) {
        put(t, "null");
      } else {
        put_float(t, v);
      }
      break;
    }
    case FT_STEPS:
      put_steps(t, *(const double *)p);
      break;
    case FT_BOOL:
      put(t, *(const int *)p ? "true" : "false");
      break;
    case FT_COUNT_OR_NONE: {
      int64_t v = *(const int64_t *)p;
      if (v == 0) {
        put(t, "null");
      } else {
        put_int64(t, v);
      }
      break;
    }
    case FT_NAME: {
      char name[CUOPTIM_MAX_NAME];
      memcpy(name, p, CUOPTIM_MAX_NAME);
      name[CUOPTIM_MAX_NAME - 1] = '\0';
      put_string(t, name[0] ? name : default_name);
      break;
    }
    case FT_LEARNING_RATE: {
      const cuoptimSchedule_t *s = (const cuoptimSchedule_t *)p;
      if (s->kind == CUOPTIM_SCHEDULE_CONSTANT) {
        put_float(t, s->initial_learning_rate);
      } else {
        put_schedule(t, s);
      }
      break;
    }
    case FT_BOUNDARIES:
    case FT_VALUES: {
      const cuoptimSchedule_t *s = (const cuoptimSchedule_t *)base;
      int n = f->type == FT_BOUNDARIES ? s->num_boundaries : s->num_boundaries + 1;
      const double *v = f->type == FT_BOUNDARIES ? s->boundaries : s->values;
      put(t, "[");
      for (int i = 0; i < n; i++) {
        if (i > 0) put(t, ", ");
        if (f->type == FT_BOUNDARIES) {
          put_steps(t, v[i]);
        } else {
          put_float(t, v[i]);
        }
      }
      put(t, "]");
      break;
    }
    case FT_INT64:
      put_int64(t, *(const int64_t *)p);
      break;
    case FT_PATTERNS: {
      const cuoptimConfig_t *c = (const cuoptimConfig_t *)base;
      put(t, "[");
      for (int i = 0; i < c->num_exclude_layers; i++) {
        if (i > 0) put(t, ", ");
        put_string(t, c->exclude_layers[i]);
      }
      put(t, "]");
      break;
    }
  }
}

static void put_envelope_start(text_t *t, const char *module, const char *class_name) {
  put(t, "{");
  put_key(t, "module", 1);
  put_string(t, module);
  put_key(t, "class_name", 0);
  put_string(t, class_name);
  put_key(t, "config", 0);
  put(t, "{");
}

static void put_envelope_end(text_t *t) {
  put(t, "}");
  put_key(t, "registered_name", 0);
  put(t, "null}");
}

static void put_schedule(text_t *t, const cuoptimSchedule_t *s) {
  const schedule_class_t *sc = &SCHEDULE_CLASSES[s->kind];
  put_envelope_start(t, SCHEDULES_MODULE, sc->class_name);
  for (size_t i = 0; i < sc->num_fields; i++) {
    put_key(t, sc->fields[i].key, i == 0);
    put_field(t, s, &sc->fields[i], sc->default_name);
  }
  put_envelope_end(t);
}

static void put_optimizer(text_t *t, const cuoptimConfig_t *cfg) {
  const optimizer_class_t *oc = &OPTIMIZER_CLASSES[cfg->kind];
  put_envelope_start(t, OPTIMIZERS_MODULE, oc->class_name);
  for (size_t i = 0; i < COUNT_OF(BASE_FIELDS); i++) {
    put_key(t, BASE_FIELDS[i].key, i == 0);
    put_field(t, cfg, &BASE_FIELDS[i], oc->default_name);
  }
  for (size_t i = 0; i < oc->num_fields; i++) {
    put_key(t, oc->fields[i].key, 0);
    put_field(t, cfg, &oc->fields[i], oc->default_name);
  }
  put_envelope_end(t);
}

static void put_config(text_t *t, const cuoptimConfig_t *cfg) {
  if (!cfg->dynamic_loss_scale) {
    put_optimizer(t, cfg);
    return;
  }
  char name[CUOPTIM_MAX_NAME];
  memcpy(name, cfg->loss_scale_name, CUOPTIM_MAX_NAME);
  name[CUOPTIM_MAX_NAME - 1] = '\0';
  put_envelope_start(t, OPTIMIZERS_MODULE, LSO_CLASS);
  put_key(t, "name", 1);
  put_string(t, name[0] ? name : LSO_DEFAULT_NAME);
  put_key(t, "inner_optimizer", 0);
  put_optimizer(t, cfg);
  put_key(t, "initial_scale", 0);
  put_float(t, cfg->initial_scale);
  put_key(t, "dynamic_growth_steps", 0);
  put_int64(t, cfg->dynamic_growth_steps);
  put_envelope_end(t);
}

CUOPTIM_API cuoptimStatus_t cuoptimConfigToKerasJSON(const cuoptimConfig_t *config, char *buffer, size_t capacity,
                                                     size_t *length) {
  if (config == NULL) return cuoptim_error(CUOPTIM_STATUS_NULL_POINTER, TO_JSON ": config is NULL");
  cuoptimStatus_t st = cuoptim_validate_config(config, TO_JSON);
  if (st != CUOPTIM_STATUS_SUCCESS) return st;
  /* Validation guarantees these; checked again because they index the tables. */
  if (!cuoptim_kind_is_valid((int)config->kind) || (int)config->learning_rate.kind < 0 ||
      (int)config->learning_rate.kind >= NUM_SCHEDULE_CLASSES ||
      (config->learning_rate.kind == CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT &&
       (config->learning_rate.num_boundaries < 0 || config->learning_rate.num_boundaries > CUOPTIM_MAX_BOUNDARIES))) {
    return cuoptim_error(CUOPTIM_STATUS_INTERNAL_ERROR, TO_JSON ": config passed validation with an out-of-range "
                                                                 "kind or boundary count");
  }

  text_t count = {NULL, 0};
  put_config(&count, config);
  if (length != NULL) *length = count.len;
  if (buffer == NULL || capacity < count.len + 1) {
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         TO_JSON ": capacity = %zu: the text needs %zu bytes (NUL included)%s", capacity,
                         count.len + 1, buffer == NULL ? " and buffer is NULL" : "");
  }
  text_t out = {buffer, 0};
  put_config(&out, config);
  buffer[out.len] = '\0';
  return CUOPTIM_STATUS_SUCCESS;
}

/* ---------------------------------------------------------------------------------------------
 * For the MultiOptimizer's JSON (host/multi.c): the same writers.
 * ------------------------------------------------------------------------------------------- */

void cuoptim_python_float_repr(double x, char out[40]) { format_python_float(x, out); }

char *cuoptim_json_string(const char *s) {
  text_t count = {NULL, 0};
  put_string(&count, s);
  char *out = malloc(count.len + 1);
  if (out == NULL) return NULL;
  text_t t = {out, 0};
  put_string(&t, s);
  out[t.len] = '\0';
  return out;
}

/* Every config's Keras JSON fits (64 boundaries and three names of 127 bytes escaped take under
 * 8 KiB), so no size query, which would leave a message behind a successful call, is needed. */
#define CONFIG_TEXT_BYTES 16384

cuoptimStatus_t cuoptim_config_json_text(const cuoptimConfig_t *config, const char *caller, char **text) {
  size_t length = 0;
  *text = malloc(CONFIG_TEXT_BYTES);
  if (!*text) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  cuoptimStatus_t status = cuoptimConfigToKerasJSON(config, *text, CONFIG_TEXT_BYTES, &length);
  if (status == CUOPTIM_STATUS_INVALID_VALUE && length >= CONFIG_TEXT_BYTES) {
    char *larger = realloc(*text, length + 1);
    if (larger) *text = larger;
    status = larger ? cuoptimConfigToKerasJSON(config, *text, length + 1, NULL)
                    : cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  }
  if (status != CUOPTIM_STATUS_SUCCESS) {
    free(*text);
    *text = NULL;
  }
  return status;
}
