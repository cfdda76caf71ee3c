/* Checkpoints: cuoptimSave and cuoptimLoad (include/cuoptim.h states the contract and the format).
 *
 * The file is safetensors: an 8-byte little-endian header length, a JSON header padded with spaces
 * so that the data starts at a multiple of 8, then every tensor's raw little-endian bytes,
 * contiguous. Save streams the state from backend memory through one bounded staging buffer into
 * a temporary file, fsyncs it and renames it over the old one. Load checks the whole header
 * against the optimizer, reads every byte into a scratch copy in backend memory while checking
 * each tensor's CRC-32, and replaces the state only once all of it is known good, so a bad file
 * or a failed read changes nothing.
 *
 * A MultiOptimizer's file is one plan over several parts: its own two scalars and each
 * sub-optimizer's tensors under "optimizers/<k>/". Every sub-optimizer lives on the same backend
 * and device, so the first one's transfer copies them all, once the others' work is complete;
 * Load checks every part before it builds or replaces any.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "internal.h"
#include "multi.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoints hold tensors in the host's byte order, which safetensors requires to be little-endian"
#endif

#define FORMAT_NAME "cuoptim-checkpoint"
#define FORMAT_VERSION "1"
/* safetensors' own limit: its readers refuse a longer header. */
#define MAX_HEADER_BYTES 100000000ull
/* The LossScaleOptimizer's own `iteration` and `learning_rate` carry the inner optimizer's names. */
#define OUTER_PREFIX "loss_scale_optimizer/"
#define MASTER_SUFFIX "/master"
/* Counters and scalars as cuoptimSetWeights accepts them. */
#define MAX_COUNTER 9.0e15
/* JSON numbers are doubles: offsets and shapes are exact integers up to 2^53. */
#define MAX_JSON_INTEGER 9007199254740992.0
/* Pieces of tensors staged before one wait: bounds the bookkeeping, not the bytes. */
#define MAX_PIECES 1024

/* ---- test hooks ------------------------------------------------------------------------------- */

static _Thread_local long io_fail_at, io_count;
static _Thread_local size_t staging_override;

long cuoptim_checkpoint_fail_io_at(long n) {
  long ran = io_count;
  io_count = 0;
  io_fail_at = n > 0 ? n : 0;
  return ran;
}

void cuoptim_checkpoint_set_staging_bytes(size_t bytes) { staging_override = bytes; }

/* Counts one file operation; 1 when the test hook makes this one fail (errno = EIO). */
static int io_injected_failure(void) {
  io_count++;
  if (io_fail_at > 0 && io_count == io_fail_at) {
    errno = EIO;
    return 1;
  }
  return 0;
}

static size_t staging_bytes(void) {
  size_t bytes = staging_override ? staging_override : CUOPTIM_CHECKPOINT_STAGING_BYTES;
  return bytes < 64 ? 64 : bytes;
}

/* ---- CRC-32 (zlib's crc32: IEEE polynomial, reflected), slicing by 8 ---------------------------- */

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    crc_table[0][i] = c;
  }
  for (int t = 1; t < 8; t++)
    for (uint32_t i = 0; i < 256; i++)
      crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

/* zlib's crc32(crc, p, n): the CRC of the bytes so far `crc` (0 to start) extended by p[0..n). */
static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n) {
  pthread_once(&crc_once, crc_init);
  crc = ~crc;
  for (; n >= 8; p += 8, n -= 8) {
    uint32_t lo, hi;
    memcpy(&lo, p, 4);
    memcpy(&hi, p + 4, 4);
    lo ^= crc;
    crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^ crc_table[5][(lo >> 16) & 0xff] ^
          crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
          crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
  }
  while (n--) crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return ~crc;
}

/* ---- the tensors of a checkpoint ---------------------------------------------------------------- */

/* A MultiOptimizer's checkpoint stores sub-optimizer k's tensors under "optimizers/<k>/". */
#define SUB_PREFIX "optimizers/"
#define PART_PREFIX_BYTES 24
/* Room for a name the plan makes: the prefixed outer entries, the masters, a sub-optimizer's. */
#define OWN_NAME_BYTES (PART_PREFIX_BYTES + sizeof OUTER_PREFIX + CUOPTIM_MAX_WEIGHT_NAME + sizeof "_column")

/* The scalar state and the LossScaleOptimizer's own two values (a MultiOptimizer's own two), as a
 * checkpoint reads and sets them. */
typedef struct {
  cuoptimScalarState state;
  int64_t outer_iterations;
  float outer_learning_rate;
} Scalars;

/* The optimizers whose state a checkpoint holds: a plain optimizer alone; or a MultiOptimizer
 * (part 0: its own "iteration" and "learning_rate") and each of its sub-optimizers (part k + 1). */
typedef struct {
  cuoptimOptimizer_t opt;
  char prefix[PART_PREFIX_BYTES]; /* of its tensors' names */
  Scalars scalars;                /* Save: read from the backend; Load: the loaded values */
} Part;

/* The MultiOptimizer's own entries: outer scalars, as the LossScaleOptimizer's, but unprefixed. */
static const cuoptimWeightEntry MULTI_ENTRIES[2] = {
    {.info = {.name = "iteration", .count = 1, .is_integer = 1}, .kind = CUOPTIM_WEIGHT_OUTER_ITERATION},
    {.info = {.name = "learning_rate", .count = 1}, .kind = CUOPTIM_WEIGHT_OUTER_LEARNING_RATE},
};

typedef struct {
  const char *name;                /* the entry's own name, or one in the plan's own_names */
  const cuoptimWeightEntry *entry; /* NULL: the master of variables[variable] */
  int index;                       /* the entry's position in its part's state list, or -1 */
  int part;                        /* whose: an index into the plan's parts */
  int variable;
  int integer;                     /* I64, else F32 */
  int scalar;                      /* shape [], else [count] */
  size_t count, bytes;
  size_t offset;                   /* Save: where it goes in the data; Load: where the file has it */
  uint32_t crc;                    /* Save: of the data written; Load: what the header says */
  uint32_t crc_read;               /* Load: of the data read */
  int seen, has_crc;               /* Load: found in the header / in its crc32 table */
  unsigned char value[8];          /* a scalar's bytes */
} Tensor;

typedef struct {
  int num_parts;
  Part *parts;
  cuoptimOptimizer_t io; /* whose backend copies the data: the optimizer, or the first sub-optimizer */
  int count;
  Tensor *tensors;   /* per part: the state list's order, then the masters in variable order */
  Tensor **by_name;  /* sorted by name */
  Tensor **by_offset;
  char *own_names;   /* OWN_NAME_BYTES each */
  size_t data_bytes; /* of the tensors together */
} Plan;

static void plan_free(Plan *plan) {
  free(plan->parts);
  free(plan->own_names);
  free(plan->tensors);
  free(plan->by_name);
  free(plan->by_offset);
  memset(plan, 0, sizeof *plan);
}

static int compare_names(const void *a, const void *b) {
  return strcmp((*(Tensor *const *)a)->name, (*(Tensor *const *)b)->name);
}

static int compare_offsets(const void *a, const void *b) {
  size_t x = (*(Tensor *const *)a)->offset, y = (*(Tensor *const *)b)->offset;
  return x < y ? -1 : x > y;
}

static Tensor *find_tensor(const Plan *plan, const char *name) {
  Tensor key, *keyp = &key;
  key.name = name;
  Tensor **found = bsearch(&keyp, plan->by_name, (size_t)plan->count, sizeof *plan->by_name, compare_names);
  return found ? *found : NULL;
}

static const char *dtype_code(const Tensor *t) { return t->integer ? "I64" : "F32"; }

/* The tensor's shape as JSON: [] for a scalar, [count] for an array. */
static void shape_text(const Tensor *t, char *text, size_t capacity) {
  if (t->scalar)
    snprintf(text, capacity, "[]");
  else
    snprintf(text, capacity, "[%zu]", t->count);
}

static int number_of_masters(const struct cuoptimOptimizer *opt) {
  int masters = 0;
  for (int i = 0; i < opt->num_variables; i++) masters += opt->variables[i].dtype != CUOPTIM_FLOAT32;
  return masters;
}

/* Adafactor's r and c, which Keras names after the variable: stored as "<variable>_row" and
 * "<variable>_column" so that each has a name of its own. */
static int number_of_factored(const struct cuoptimOptimizer *opt) {
  int factored = 0;
  for (int i = 0; i < opt->num_weights; i++) factored += opt->weights[i].kind == CUOPTIM_WEIGHT_FACTORED;
  return factored;
}

static int is_outer(const cuoptimWeightEntry *e) {
  return e->kind == CUOPTIM_WEIGHT_OUTER_ITERATION || e->kind == CUOPTIM_WEIGHT_OUTER_LEARNING_RATE;
}

/* The elements of a variable's arrays this rank keeps (all of them unless sharded), known before
 * the state is built. */
static size_t share_count(const struct cuoptimOptimizer *opt, const cuoptimVariableRec *v) {
  if (!cuoptim_comm_sharded(opt)) return v->count;
  size_t offset, length;
  cuoptim_comm_share(v->count, opt->comm->world, opt->comm->rank, &offset, &length);
  return length;
}

/* The parts of `opt`'s checkpoint (plan->parts), each described (not necessarily built). */
static cuoptimStatus_t plan_parts(cuoptimOptimizer_t opt, const char *caller, Plan *plan) {
  const struct cuoptimMulti *m = opt->multi;
  plan->num_parts = m ? m->num_optimizers + 1 : 1;
  plan->parts = calloc((size_t)plan->num_parts, sizeof *plan->parts);
  if (!plan->parts) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  plan->parts[0].opt = opt;
  plan->io = m ? m->optimizers[0] : opt;
  for (int k = 1; k < plan->num_parts; k++) {
    plan->parts[k].opt = m->optimizers[k - 1];
    snprintf(plan->parts[k].prefix, sizeof plan->parts[k].prefix, SUB_PREFIX "%d/", k - 1);
  }
  for (int k = 0; k < plan->num_parts; k++)
    if (!plan->parts[k].opt->multi) CUOPTIM_CHECK(cuoptim_describe_weights(plan->parts[k].opt));
  return CUOPTIM_STATUS_SUCCESS;
}

/* The tensors of part `p` and the names the plan makes for them. */
static void part_counts(const Plan *plan, int p, int *tensors, int *names) {
  const Part *part = &plan->parts[p];
  if (part->opt->multi) {
    *tensors = 2;
    *names = 0;
    return;
  }
  int masters = number_of_masters(part->opt);
  *tensors = part->opt->num_weights + masters;
  *names = part->prefix[0] ? *tensors : masters + number_of_factored(part->opt) + 2;
}

/* t->name: the entry's own name, or `pre` name `suffix` under the part's prefix in the next of
 * the plan's own names. */
static void name_tensor(Tensor *t, const Part *part, const char *pre, const char *name, const char *suffix,
                        char **own) {
  if (!part->prefix[0] && !pre[0] && !suffix[0]) {
    t->name = name;
    return;
  }
  snprintf(*own, OWN_NAME_BYTES, "%s%s%s%s", part->prefix, pre, name, suffix);
  t->name = *own;
  *own += OWN_NAME_BYTES;
}

/* Part `p`'s tensors from tensors[*n] on. */
static void plan_part(Plan *plan, int p, int *n, char **own) {
  const Part *part = &plan->parts[p];
  const struct cuoptimOptimizer *opt = part->opt;
  if (opt->multi) {
    for (int i = 0; i < 2; i++) {
      Tensor *t = &plan->tensors[(*n)++];
      t->name = MULTI_ENTRIES[i].info.name;
      t->entry = &MULTI_ENTRIES[i];
      t->index = i;
      t->part = p;
      t->variable = -1;
      t->integer = MULTI_ENTRIES[i].info.is_integer;
      t->scalar = 1;
      t->count = 1;
    }
    return;
  }
  for (int i = 0; i < opt->num_weights; i++) {
    const cuoptimWeightEntry *e = &opt->weights[i];
    Tensor *t = &plan->tensors[(*n)++];
    const char *suffix = "";
    if (e->kind == CUOPTIM_WEIGHT_FACTORED) { /* r, then c, of each variable */
      int column = i > 0 && opt->weights[i - 1].kind == CUOPTIM_WEIGHT_FACTORED &&
                   opt->weights[i - 1].variable == e->variable;
      suffix = column ? "_column" : "_row";
    }
    name_tensor(t, part, is_outer(e) ? OUTER_PREFIX : "", e->info.name, suffix, own);
    t->entry = e;
    t->index = i;
    t->part = p;
    t->variable = -1;
    t->integer = e->info.is_integer;
    t->scalar = e->kind != CUOPTIM_WEIGHT_BUFFER && e->kind != CUOPTIM_WEIGHT_FACTORED;
    /* Sharded state: this rank's share of each array (a file per rank). */
    t->count = e->kind == CUOPTIM_WEIGHT_BUFFER ? share_count(opt, &opt->variables[e->variable]) : e->info.count;
  }
  for (int v = 0; v < opt->num_variables; v++) {
    const cuoptimVariableRec *var = &opt->variables[v];
    if (var->dtype == CUOPTIM_FLOAT32) continue;
    Tensor *t = &plan->tensors[(*n)++];
    name_tensor(t, part, "", var->name, MASTER_SUFFIX, own);
    t->index = -1;
    t->part = p;
    t->variable = v;
    t->count = share_count(opt, var);
  }
}

/* Every tensor of the optimizer's checkpoint, in file order, from the state lists (described, not
 * necessarily built). Two entries with the same name (Keras allows it: Adagrad's `x_gradient`
 * accumulator and the gradient accumulator of `x`) cannot both be stored by name. */
static cuoptimStatus_t plan_build(cuoptimOptimizer_t opt, const char *caller, const char *path, Plan *plan) {
  memset(plan, 0, sizeof *plan);
  cuoptimStatus_t status = plan_parts(opt, caller, plan);
  if (status != CUOPTIM_STATUS_SUCCESS) {
    plan_free(plan);
    return status;
  }
  int count = 0, names = 0;
  for (int p = 0; p < plan->num_parts; p++) {
    int tensors = 0, own = 0;
    part_counts(plan, p, &tensors, &own);
    count += tensors;
    names += own;
  }
  plan->tensors = calloc((size_t)count, sizeof *plan->tensors);
  plan->by_name = malloc((size_t)count * sizeof *plan->by_name);
  plan->by_offset = malloc((size_t)count * sizeof *plan->by_offset);
  plan->own_names = malloc(((size_t)names + 1) * OWN_NAME_BYTES);
  if (!plan->tensors || !plan->by_name || !plan->by_offset || !plan->own_names) {
    plan_free(plan);
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  }
  plan->count = count;
  int n = 0;
  char *own = plan->own_names;
  for (int p = 0; p < plan->num_parts; p++) plan_part(plan, p, &n, &own);
  /* The counters first, so that every 8-byte value is aligned in the file (the data starts at a
   * multiple of 8), as safetensors' own writer orders by alignment. */
  size_t offset = 0;
  for (int pass = 1; pass >= 0; pass--)
    for (int i = 0; i < count; i++) {
      Tensor *t = &plan->tensors[i];
      if (t->integer != pass) continue;
      t->bytes = t->count * (t->integer ? sizeof(int64_t) : sizeof(float)); /* state <= 2^60 bytes: no overflow */
      t->offset = offset;
      offset += t->bytes;
    }
  for (int i = 0; i < count; i++) {
    plan->by_name[i] = &plan->tensors[i];
    plan->by_offset[i] = &plan->tensors[i];
  }
  qsort(plan->by_offset, (size_t)count, sizeof *plan->by_offset, compare_offsets);
  plan->data_bytes = offset;
  qsort(plan->by_name, (size_t)count, sizeof *plan->by_name, compare_names);
  for (int i = 1; i < count; i++) {
    const Tensor *a = plan->by_name[i - 1], *b = plan->by_name[i];
    if (strcmp(a->name, b->name) == 0) {
      status = cuoptim_error(
          CUOPTIM_STATUS_NOT_SUPPORTED,
          "%s: \"%.300s\": state entries %d and %d are both named \"%s\" (Keras names a slot \"<variable>_<slot>\", "
          "and two such names meet); a checkpoint stores each tensor under its own name: rename one variable",
          caller, path, a->index < b->index ? a->index : b->index, a->index < b->index ? b->index : a->index,
          a->name);
      plan_free(plan);
      return status;
    }
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* ---- scalar values ------------------------------------------------------------------------------ */

static void scalar_bytes(const Scalars *s, cuoptimWeightKind kind, unsigned char out[8]) {
  int64_t counter = 0;
  float value = 0.0f;
  switch (kind) {
    case CUOPTIM_WEIGHT_ITERATION: counter = s->state.iterations; break;
    case CUOPTIM_WEIGHT_LOSS_SCALE_COUNTER: counter = s->state.loss_scale_counter; break;
    case CUOPTIM_WEIGHT_OUTER_ITERATION: counter = s->outer_iterations; break;
    case CUOPTIM_WEIGHT_LEARNING_RATE: value = s->state.learning_rate; break;
    case CUOPTIM_WEIGHT_LOSS_SCALE: value = s->state.loss_scale; break;
    case CUOPTIM_WEIGHT_U_PRODUCT: value = s->state.u_product; break;
    case CUOPTIM_WEIGHT_OUTER_LEARNING_RATE: value = s->outer_learning_rate; break;
    case CUOPTIM_WEIGHT_BUFFER:
    case CUOPTIM_WEIGHT_FACTORED: break;
  }
  memset(out, 0, 8);
  if (kind == CUOPTIM_WEIGHT_ITERATION || kind == CUOPTIM_WEIGHT_LOSS_SCALE_COUNTER ||
      kind == CUOPTIM_WEIGHT_OUTER_ITERATION)
    memcpy(out, &counter, sizeof counter);
  else
    memcpy(out, &value, sizeof value);
}

/* A loaded scalar, checked as cuoptimSetWeights checks its values. */
static cuoptimStatus_t check_scalar(const Tensor *t, const char *caller, const char *path) {
  if (t->integer) {
    int64_t counter;
    memcpy(&counter, t->value, sizeof counter);
    if (counter < 0 || (double)counter > MAX_COUNTER)
      return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                           "%s: \"%.300s\": tensor \"%s\" = %lld: a counter must lie in [0, 9e15]", caller, path,
                           t->name, (long long)counter);
    return CUOPTIM_STATUS_SUCCESS;
  }
  float value;
  memcpy(&value, t->value, sizeof value);
  if (!isfinite(value))
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: \"%.300s\": tensor \"%s\" = %g: must be finite", caller,
                         path, t->name, (double)value);
  return CUOPTIM_STATUS_SUCCESS;
}

static void apply_scalar(Scalars *s, const Tensor *t) {
  int64_t counter;
  float value;
  memcpy(&counter, t->value, sizeof counter);
  memcpy(&value, t->value, sizeof value);
  switch (t->entry->kind) {
    case CUOPTIM_WEIGHT_ITERATION: s->state.iterations = counter; break;
    case CUOPTIM_WEIGHT_LOSS_SCALE_COUNTER: s->state.loss_scale_counter = counter; break;
    case CUOPTIM_WEIGHT_OUTER_ITERATION: s->outer_iterations = counter; break;
    case CUOPTIM_WEIGHT_LEARNING_RATE: s->state.learning_rate = value; break;
    case CUOPTIM_WEIGHT_LOSS_SCALE: s->state.loss_scale = value; break;
    case CUOPTIM_WEIGHT_U_PRODUCT: s->state.u_product = value; break;
    case CUOPTIM_WEIGHT_OUTER_LEARNING_RATE: s->outer_learning_rate = value; break;
    case CUOPTIM_WEIGHT_BUFFER:
    case CUOPTIM_WEIGHT_FACTORED: break;
  }
}

/* The backend buffer a built optimizer keeps the tensor in (arrays only). */
static void *tensor_buffer(const Plan *plan, const Tensor *t) {
  return t->entry ? (void *)*t->entry->buffer : (void *)plan->parts[t->part].opt->variables[t->variable].master;
}

/* ---- the metadata --------------------------------------------------------------------------------- */

/* The variable table: [{"name", "dtype", "count", "weight_decay"}, ...] in registration order. */
static char *variables_text(const struct cuoptimOptimizer *opt) {
  cJSON *table = cJSON_CreateArray();
  int ok = table != NULL;
  for (int i = 0; ok && i < opt->num_variables; i++) {
    const cuoptimVariableRec *v = &opt->variables[i];
    cJSON *row = cJSON_CreateObject();
    ok = row && cJSON_AddItemToArray(table, row);
    if (!ok) {
      cJSON_Delete(row);
      break;
    }
    char count[32];
    snprintf(count, sizeof count, "%zu", v->count);
    ok = cJSON_AddStringToObject(row, "name", v->name) && cJSON_AddStringToObject(row, "dtype", cuoptim_dtype_name(v->dtype)) &&
         cJSON_AddRawToObject(row, "count", count) && cJSON_AddBoolToObject(row, "weight_decay", v->use_weight_decay);
  }
  char *text = ok ? cJSON_PrintUnformatted(table) : NULL;
  cJSON_Delete(table);
  return text;
}

/* The crc32 table: {"tensor name": "8 hex digits", ...}. */
static char *crc_text(const Plan *plan) {
  cJSON *table = cJSON_CreateObject();
  int ok = table != NULL;
  for (int i = 0; ok && i < plan->count; i++) {
    char hex[9];
    snprintf(hex, sizeof hex, "%08x", plan->tensors[i].crc);
    ok = cJSON_AddStringToObject(table, plan->tensors[i].name, hex) != NULL;
  }
  char *text = ok ? cJSON_PrintUnformatted(table) : NULL;
  cJSON_Delete(table);
  return text;
}

/* A MultiOptimizer's layout: {"sub_optimizers", "name", "patterns", "pattern_optimizer",
 * "default_optimizer", "variables": [{"name", "optimizer", "shape"}, ...] in its variables' order}
 * (NULL: out of memory). */
static cJSON *multi_layout(const struct cuoptimOptimizer *opt) {
  const struct cuoptimMulti *m = opt->multi;
  cJSON *layout = cJSON_CreateObject();
  cJSON *patterns = cJSON_AddArrayToObject(layout, "patterns");
  cJSON *uses = cJSON_AddArrayToObject(layout, "pattern_optimizer");
  int ok = patterns && uses && cJSON_AddNumberToObject(layout, "sub_optimizers", m->num_optimizers) &&
           cJSON_AddStringToObject(layout, "name", opt->config.name) &&
           cJSON_AddNumberToObject(layout, "default_optimizer", m->default_optimizer);
  for (int i = 0; ok && i < m->num_patterns; i++)
    ok = cJSON_AddItemToArray(patterns, cJSON_CreateString(m->patterns[i])) &&
         cJSON_AddItemToArray(uses, cJSON_CreateNumber(m->pattern_optimizer[i]));
  cJSON *table = ok ? cJSON_AddArrayToObject(layout, "variables") : NULL;
  ok = table != NULL;
  for (int i = 0; ok && i < m->num_variables; i++) {
    const cuoptimVariableRec *v = &m->optimizers[m->routes[i].optimizer]->variables[m->routes[i].index];
    cJSON *row = cJSON_CreateObject();
    ok = row && cJSON_AddItemToArray(table, row);
    if (!ok) {
      cJSON_Delete(row);
      break;
    }
    cJSON *shape = cJSON_AddArrayToObject(row, "shape");
    ok = shape && cJSON_AddStringToObject(row, "name", v->name) &&
         cJSON_AddNumberToObject(row, "optimizer", m->routes[i].optimizer);
    for (int d = 0; ok && d < v->rank; d++) ok = cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)v->dims[d]));
  }
  if (!ok) {
    cJSON_Delete(layout);
    return NULL;
  }
  return layout;
}

/* The metadata that says whose state the file holds: a plain optimizer's "keras_config" and
 * "variables"; a MultiOptimizer's "keras_config" (its own), "multi_optimizer" (its layout) and
 * each sub-optimizer's "optimizers/<k>/keras_config" and "optimizers/<k>/variables". */
static int add_owner_metadata(cJSON *meta, const Plan *plan, const char *config) {
  int ok = cJSON_AddStringToObject(meta, "keras_config", config) != NULL;
  const struct cuoptimOptimizer *opt = plan->parts[0].opt;
  if (!opt->multi) {
    char *variables = variables_text(opt);
    ok = ok && variables && cJSON_AddStringToObject(meta, "variables", variables);
    free(variables);
    return ok;
  }
  cJSON *layout = multi_layout(opt);
  char *text = layout ? cJSON_PrintUnformatted(layout) : NULL;
  ok = ok && text && cJSON_AddStringToObject(meta, "multi_optimizer", text);
  cJSON_Delete(layout);
  free(text);
  for (int p = 1; ok && p < plan->num_parts; p++) {
    const Part *part = &plan->parts[p];
    char key[PART_PREFIX_BYTES + 16], *sub_config = NULL, *variables = variables_text(part->opt);
    ok = variables && cuoptim_config_json_text(&part->opt->config, "cuoptimSave", &sub_config) == CUOPTIM_STATUS_SUCCESS;
    snprintf(key, sizeof key, "%skeras_config", part->prefix);
    ok = ok && cJSON_AddStringToObject(meta, key, sub_config);
    snprintf(key, sizeof key, "%svariables", part->prefix);
    ok = ok && cJSON_AddStringToObject(meta, key, variables);
    free(sub_config);
    free(variables);
  }
  return ok;
}

/* The whole header, padded with spaces to a multiple of 8 bytes (malloc'd; NULL: out of memory). */
static char *header_text(const Plan *plan, const char *config, size_t *length) {
  char version[32];
  snprintf(version, sizeof version, "%d.%d.%d", CUOPTIM_VERSION_MAJOR, CUOPTIM_VERSION_MINOR, CUOPTIM_VERSION_PATCH);
  char *crcs = crc_text(plan);
  cJSON *root = cJSON_CreateObject();
  cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
  int ok = crcs && meta && cJSON_AddStringToObject(meta, "format", FORMAT_NAME) &&
           cJSON_AddStringToObject(meta, "format_version", FORMAT_VERSION) &&
           cJSON_AddStringToObject(meta, "cuoptim_version", version) && add_owner_metadata(meta, plan, config) &&
           cJSON_AddStringToObject(meta, "crc32", crcs);
  /* Every sub-optimizer of a MultiOptimizer attaches the same communicator: the first speaks for all. */
  const struct cuoptimOptimizer *io = plan->io;
  char rank[16], world[16];
  if (ok && cuoptim_comm_sharded(io)) {
    snprintf(rank, sizeof rank, "%d", io->comm->rank);
    snprintf(world, sizeof world, "%d", io->comm->world);
    ok = cJSON_AddStringToObject(meta, "shard_rank", rank) && cJSON_AddStringToObject(meta, "shard_world", world);
  }
  for (int i = 0; ok && i < plan->count; i++) {
    const Tensor *t = &plan->tensors[i];
    char shape[40], offsets[64];
    shape_text(t, shape, sizeof shape);
    snprintf(offsets, sizeof offsets, "[%zu,%zu]", t->offset, t->offset + t->bytes);
    cJSON *item = cJSON_AddObjectToObject(root, t->name);
    ok = item && cJSON_AddStringToObject(item, "dtype", dtype_code(t)) && cJSON_AddRawToObject(item, "shape", shape) &&
         cJSON_AddRawToObject(item, "data_offsets", offsets);
  }
  char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
  cJSON_Delete(root);
  free(crcs);
  if (!text) return NULL;
  size_t used = strlen(text), padded = (used + 7) / 8 * 8;
  char *header = realloc(text, padded + 1);
  if (!header) {
    free(text);
    return NULL;
  }
  memset(header + used, ' ', padded - used);
  header[padded] = '\0';
  *length = padded;
  return header;
}

/* ---- Save --------------------------------------------------------------------------------------- */

typedef struct {
  int tensor;
  size_t at, bytes;
} Piece;

/* The staging buffer on its way to the file: pieces of tensors gathered until it is full. */
typedef struct {
  cuoptimOptimizer_t opt;
  cuoptimTransfer *transfer;
  Plan *plan;
  const char *caller, *path, *temp;
  int fd;
  size_t capacity, used;
  int pieces;
  Piece piece[MAX_PIECES];
} Writer;

static cuoptimStatus_t io_fail(const char *caller, const char *path, const char *what, const char *temp) {
  int error = errno;
  if (temp)
    return cuoptim_error(CUOPTIM_STATUS_IO_ERROR, "%s: \"%.300s\": %s \"%.300s\": %s", caller, path, what, temp,
                         strerror(error));
  return cuoptim_error(CUOPTIM_STATUS_IO_ERROR, "%s: \"%.300s\": %s: %s", caller, path, what, strerror(error));
}

/* Writes all of bytes[0..n) at `offset` (one file operation for the test hook). */
static int write_all(int fd, const void *bytes, size_t n, off_t offset) {
  if (io_injected_failure()) return 0;
  const char *p = bytes;
  while (n > 0) {
    ssize_t done = pwrite(fd, p, n, offset);
    if (done < 0 && errno == EINTR) continue;
    if (done < 0) return 0;
    if (done == 0) {
      errno = EIO;
      return 0;
    }
    p += done;
    n -= (size_t)done;
    offset += done;
  }
  return 1;
}

static cuoptimStatus_t writer_flush(Writer *w, off_t *position) {
  if (w->used == 0) return CUOPTIM_STATUS_SUCCESS;
  CUOPTIM_CHECK(w->opt->ops->transfer_wait(w->opt, w->transfer));
  const unsigned char *staging = w->transfer->staging;
  for (int i = 0; i < w->pieces; i++) {
    Tensor *t = &w->plan->tensors[w->piece[i].tensor];
    t->crc = crc32_update(t->crc, staging + w->piece[i].at, w->piece[i].bytes);
  }
  if (!write_all(w->fd, staging, w->used, *position))
    return io_fail(w->caller, w->path, "writing the temporary file", w->temp);
  *position += (off_t)w->used;
  w->used = 0;
  w->pieces = 0;
  return CUOPTIM_STATUS_SUCCESS;
}

/* Appends tensor `tensor`'s bytes, from host memory or (from_backend) from backend memory. */
static cuoptimStatus_t writer_append(Writer *w, int tensor, const void *source, size_t bytes, int from_backend,
                                     off_t *position) {
  const char *src = source;
  while (bytes > 0) {
    size_t room = w->capacity - w->used, n = bytes < room ? bytes : room;
    char *dst = (char *)w->transfer->staging + w->used;
    if (from_backend)
      CUOPTIM_CHECK(w->opt->ops->transfer_copy(w->opt, w->transfer, dst, src, n, CUOPTIM_COPY_TO_HOST));
    else
      memcpy(dst, src, n);
    w->piece[w->pieces++] = (Piece){tensor, w->used, n};
    w->used += n;
    src += n;
    bytes -= n;
    if (w->used == w->capacity || w->pieces == MAX_PIECES) CUOPTIM_CHECK(writer_flush(w, position));
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* The header (length and JSON) at the start of the file. */
static cuoptimStatus_t write_header(Writer *w, const char *header, size_t length) {
  unsigned char prefix[8];
  uint64_t n = length;
  memcpy(prefix, &n, sizeof prefix);
  if (!write_all(w->fd, prefix, sizeof prefix, 0) || !write_all(w->fd, header, length, (off_t)sizeof prefix))
    return io_fail(w->caller, w->path, "writing the header of the temporary file", w->temp);
  return CUOPTIM_STATUS_SUCCESS;
}

/* The data of every tensor, after a header of `header_length` bytes. */
static cuoptimStatus_t write_data(Writer *w, size_t header_length) {
  off_t position = (off_t)(8 + header_length);
  for (int k = 0; k < w->plan->count; k++) {
    Tensor *t = w->plan->by_offset[k];
    int i = (int)(t - w->plan->tensors);
    t->crc = 0;
    if (t->scalar) {
      unsigned char value[8];
      scalar_bytes(&w->plan->parts[t->part].scalars, t->entry->kind, value);
      CUOPTIM_CHECK(writer_append(w, i, value, t->bytes, 0, &position));
    } else {
      CUOPTIM_CHECK(writer_append(w, i, tensor_buffer(w->plan, t), t->bytes, 1, &position));
    }
  }
  return writer_flush(w, &position);
}

/* The directory holding `path`, fsynced so that the rename survives a crash. */
static int sync_directory(const char *path) {
  if (io_injected_failure()) return 0;
  const char *slash = strrchr(path, '/');
  char *dir = NULL;
  if (!slash) {
    dir = strdup(".");
  } else {
    size_t length = slash == path ? 1 : (size_t)(slash - path);
    dir = malloc(length + 1);
    if (dir) {
      memcpy(dir, path, length);
      dir[length] = '\0';
    }
  }
  if (!dir) {
    errno = ENOMEM;
    return 0;
  }
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  free(dir);
  if (fd < 0) return 0;
  int ok = fsync(fd) == 0;
  int error = errno;
  close(fd);
  errno = error;
  return ok;
}

/* Writes the temporary file, then renames it over `path`. The temporary file is removed on failure. */
static cuoptimStatus_t write_file(Writer *w, const char *config) {
  size_t length = 0, final_length = 0;
  char *header = header_text(w->plan, config, &length);
  if (!header) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", w->caller);
  if (length > MAX_HEADER_BYTES) {
    free(header);
    return cuoptim_error(CUOPTIM_STATUS_NOT_SUPPORTED,
                         "%s: \"%.300s\": the header would take %zu bytes: safetensors reads at most %llu", w->caller,
                         w->path, length, MAX_HEADER_BYTES);
  }
  if (io_injected_failure()) {
    free(header);
    return io_fail(w->caller, w->path, "creating the temporary file", w->temp);
  }
  w->fd = open(w->temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0666);
  if (w->fd < 0) {
    free(header);
    return io_fail(w->caller, w->path, "creating the temporary file", w->temp);
  }
  /* The header first with CRCs still unknown: fixed-width, so the final one has the same length. */
  cuoptimStatus_t status = write_header(w, header, length);
  if (status == CUOPTIM_STATUS_SUCCESS) status = write_data(w, length);
  free(header);
  header = NULL;
  if (status == CUOPTIM_STATUS_SUCCESS) {
    header = header_text(w->plan, config, &final_length);
    if (!header) status = cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", w->caller);
    else if (final_length != length)
      status = cuoptim_error(CUOPTIM_STATUS_INTERNAL_ERROR, "%s: the header changed length (%zu, then %zu bytes)",
                             w->caller, length, final_length);
    else
      status = write_header(w, header, length);
  }
  free(header);
  if (status == CUOPTIM_STATUS_SUCCESS && (io_injected_failure() || fsync(w->fd) != 0))
    status = io_fail(w->caller, w->path, "fsync of the temporary file", w->temp);
  int close_fails = io_injected_failure();
  if (close(w->fd) != 0) close_fails = 1;
  w->fd = -1;
  if (status == CUOPTIM_STATUS_SUCCESS && close_fails)
    status = io_fail(w->caller, w->path, "closing the temporary file", w->temp);
  if (status == CUOPTIM_STATUS_SUCCESS && (io_injected_failure() || rename(w->temp, w->path) != 0))
    status = io_fail(w->caller, w->path, "renaming the temporary file", w->temp);
  if (status != CUOPTIM_STATUS_SUCCESS) {
    unlink(w->temp);
    return status;
  }
  if (!sync_directory(w->path))
    return io_fail(w->caller, w->path,
                   "saved, but fsync of its directory failed (the new checkpoint is in place but may not survive a "
                   "crash)",
                   NULL);
  return CUOPTIM_STATUS_SUCCESS;
}

/* The scalar state of `opt`, through the staging buffer of `io`'s transfer (ordered after the
 * last step, as every copy). */
static cuoptimStatus_t read_scalar_state(cuoptimOptimizer_t io, cuoptimTransfer *t, const struct cuoptimOptimizer *opt,
                                         cuoptimScalarState *state) {
  CUOPTIM_CHECK(io->ops->transfer_copy(io, t, t->staging, opt->state, sizeof *state, CUOPTIM_COPY_TO_HOST));
  CUOPTIM_CHECK(io->ops->transfer_wait(io, t));
  memcpy(state, t->staging, sizeof *state);
  return CUOPTIM_STATUS_SUCCESS;
}

/* Every part's scalars as the optimizers hold them now. */
static cuoptimStatus_t read_scalars(Plan *plan, cuoptimTransfer *t) {
  for (int p = 0; p < plan->num_parts; p++) {
    Part *part = &plan->parts[p];
    const struct cuoptimOptimizer *opt = part->opt;
    if (opt->multi) {
      CUOPTIM_CHECK(cuoptim_multi_count((cuoptimOptimizer_t)opt, "cuoptimSave", &part->scalars.outer_iterations));
      part->scalars.outer_learning_rate = opt->multi->learning_rate;
      continue;
    }
    CUOPTIM_CHECK(read_scalar_state(plan->io, t, opt, &part->scalars.state));
    part->scalars.outer_iterations = opt->outer_iterations;
    part->scalars.outer_learning_rate = opt->outer_learning_rate;
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* Builds every part's state (Keras's MultiOptimizer.build builds every sub-optimizer). */
static cuoptimStatus_t build_parts(const Plan *plan, const char *caller) {
  for (int p = 0; p < plan->num_parts; p++)
    if (!plan->parts[p].opt->multi) CUOPTIM_CHECK(cuoptim_build(plan->parts[p].opt, caller, NULL));
  if (plan->parts[0].opt->multi) plan->parts[0].opt->multi->built = 1;
  return CUOPTIM_STATUS_SUCCESS;
}

/* The copies run on `io`'s transfer, which waits for `io`'s own work only: the other
 * sub-optimizers' work is waited for here. */
static cuoptimStatus_t wait_for_other_parts(const Plan *plan) {
  for (int p = 0; p < plan->num_parts; p++) {
    cuoptimOptimizer_t opt = plan->parts[p].opt;
    if (!opt->multi && opt != plan->io) CUOPTIM_CHECK(opt->ops->synchronize(opt));
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* The Keras JSON of the optimizer, or of the MultiOptimizer (malloc'd). */
static cuoptimStatus_t owner_cuoptim_config_json_text(const struct cuoptimOptimizer *opt, const char *caller, char **text) {
  if (opt->multi) return cuoptim_multi_json_text((cuoptimOptimizer_t)opt, caller, text);
  return cuoptim_config_json_text(&opt->config, caller, text);
}

static char *temporary_path(const char *path) {
  size_t length = strlen(path) + 32;
  char *temp = malloc(length);
  if (temp) snprintf(temp, length, "%s.tmp.%ld", path, (long)getpid());
  return temp;
}

/* What cuoptimSave and cuoptimLoad both refuse before they touch a file. */
static cuoptimStatus_t check_arguments(const cuoptimOptimizer_t opt, const char *path, const char *caller) {
  if (!opt) return cuoptim_error(CUOPTIM_STATUS_NULL_POINTER, "%s: optimizer is NULL", caller);
  CUOPTIM_REQUIRE_NOT_NULL(caller, path);
  if (path[0] == '\0') return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: path is empty", caller);
  return CUOPTIM_STATUS_SUCCESS;
}

/* Data-parallel with local accumulators between applied steps: each rank holds only its part. */
static cuoptimStatus_t check_accumulators(const cuoptimOptimizer_t opt, const char *caller) {
  const struct cuoptimMulti *m = opt->multi;
  for (int k = 0; k < (m ? m->num_optimizers : 1); k++) {
    const cuoptimOptimizer_t sub = m ? m->optimizers[k] : opt;
    if (!cuoptim_comm_accumulators_partial(sub)) continue;
    char which[48] = "";
    if (m) snprintf(which, sizeof which, " of sub-optimizer %d", k);
    return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE,
                         "%s: between applied steps each rank's gradient accumulators%s hold only its own part of the "
                         "sum (options.accumulate_locally): save after a step that applies (iterations a multiple of "
                         "gradient_accumulation_steps)",
                         caller, which);
  }
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimSave(cuoptimOptimizer_t opt, const char *path) {
  static const char *caller = "cuoptimSave";
  CUOPTIM_CHECK(check_arguments(opt, path, caller));
  CUOPTIM_CHECK(check_accumulators(opt, caller));
  Plan plan;
  CUOPTIM_CHECK(plan_build(opt, caller, path, &plan));
  cuoptimOptimizer_t io = plan.io;
  char *config = NULL, *temp = temporary_path(path);
  cuoptimStatus_t status = temp ? CUOPTIM_STATUS_SUCCESS
                                : cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  if (status == CUOPTIM_STATUS_SUCCESS) status = build_parts(&plan, caller);
  if (status == CUOPTIM_STATUS_SUCCESS) status = owner_cuoptim_config_json_text(opt, caller, &config);
  if (status == CUOPTIM_STATUS_SUCCESS) status = wait_for_other_parts(&plan);
  cuoptimTransfer transfer;
  memset(&transfer, 0, sizeof transfer);
  int began = 0;
  if (status == CUOPTIM_STATUS_SUCCESS) {
    began = 1;
    status = io->ops->transfer_begin(io, staging_bytes(), 0, &transfer);
  }
  if (status == CUOPTIM_STATUS_SUCCESS) status = read_scalars(&plan, &transfer);
  if (status == CUOPTIM_STATUS_SUCCESS) {
    Writer *w = calloc(1, sizeof *w);
    if (!w) {
      status = cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
    } else {
      w->opt = io;
      w->transfer = &transfer;
      w->plan = &plan;
      w->caller = caller;
      w->path = path;
      w->temp = temp;
      w->fd = -1;
      w->capacity = staging_bytes();
      status = write_file(w, config);
      free(w);
    }
  }
  if (began) io->ops->transfer_end(io, &transfer);
  free(config);
  free(temp);
  plan_free(&plan);
  return status;
}

/* ---- Load: the header ------------------------------------------------------------------------------- */

/* Everything Load learns before it touches the optimizer. */
typedef struct {
  cuoptimOptimizer_t opt;
  const char *caller, *path;
  FILE *file;
  long long file_bytes;
  size_t header_bytes;
  char *header;
  cJSON *root;
  Plan plan;
} Loader;

static cuoptimStatus_t refuse(const Loader *l, cuoptimStatus_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static cuoptimStatus_t refuse(const Loader *l, cuoptimStatus_t status, const char *fmt, ...) {
  char reason[768];
  va_list args;
  va_start(args, fmt);
  vsnprintf(reason, sizeof reason, fmt, args);
  va_end(args);
  return cuoptim_error(status, "%s: \"%.200s\": %s", l->caller, l->path, reason);
}

/* Reads exactly n bytes (one file operation for the test hook). */
static int read_all(FILE *file, void *bytes, size_t n) {
  if (io_injected_failure()) return 0;
  errno = 0;
  return fread(bytes, 1, n, file) == n;
}

static cuoptimStatus_t read_failed(const Loader *l, const char *what) {
  if (errno != 0) return refuse(l, CUOPTIM_STATUS_IO_ERROR, "reading %s: %s", what, strerror(errno));
  return refuse(l, CUOPTIM_STATUS_IO_ERROR, "reading %s: the file ended early (it changed while being read)", what);
}

/* Opens a regular file (a FIFO would block, a directory cannot be read). */
static cuoptimStatus_t open_file(Loader *l) {
  if (io_injected_failure()) return refuse(l, CUOPTIM_STATUS_IO_ERROR, "cannot open: %s", strerror(errno));
  int fd = open(l->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return refuse(l, CUOPTIM_STATUS_IO_ERROR, "cannot open: %s", strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int error = errno;
    close(fd);
    return refuse(l, CUOPTIM_STATUS_IO_ERROR, "cannot stat: %s", strerror(error));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "not a regular file");
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  l->file = fdopen(fd, "rb");
  if (!l->file) {
    int error = errno;
    close(fd);
    return refuse(l, CUOPTIM_STATUS_IO_ERROR, "cannot open: %s", strerror(error));
  }
  l->file_bytes = (long long)st.st_size;
  return CUOPTIM_STATUS_SUCCESS;
}

/* The 8-byte length and the JSON header, parsed. */
static cuoptimStatus_t read_header(Loader *l) {
  if (l->file_bytes < 8)
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE,
                  "%lld bytes: too short for a safetensors file (an 8-byte header length, then the header)",
                  l->file_bytes);
  unsigned char prefix[8];
  if (!read_all(l->file, prefix, sizeof prefix)) return read_failed(l, "the header length");
  uint64_t length;
  memcpy(&length, prefix, sizeof length);
  if (length < 2 || length > MAX_HEADER_BYTES)
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE,
                  "header length %llu: a safetensors header takes 2 to %llu bytes (not a safetensors file?)",
                  (unsigned long long)length, MAX_HEADER_BYTES);
  if ((long long)length > l->file_bytes - 8)
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE,
                  "truncated: the header length says %llu bytes of header, the file has %lld bytes after the length",
                  (unsigned long long)length, l->file_bytes - 8);
  l->header_bytes = (size_t)length;
  l->header = malloc(l->header_bytes + 1);
  if (!l->header) return refuse(l, CUOPTIM_STATUS_ALLOC_FAILED, "out of host memory for a %zu-byte header", l->header_bytes);
  if (!read_all(l->file, l->header, l->header_bytes)) return read_failed(l, "the header");
  l->header[l->header_bytes] = '\0';
  size_t text = strlen(l->header);
  if (text != l->header_bytes)
    return refuse(l, CUOPTIM_STATUS_PARSE_ERROR, "the header holds a NUL byte at byte %zu", text);
  ptrdiff_t bad = cuoptim_invalid_utf8_offset(l->header);
  if (bad >= 0)
    return refuse(l, CUOPTIM_STATUS_PARSE_ERROR, "the header is not valid UTF-8 at byte %td", bad);
  if (l->header[0] != '{')
    return refuse(l, CUOPTIM_STATUS_PARSE_ERROR, "the header does not start with '{' (not a safetensors file?)");
  const char *end = NULL;
  l->root = cJSON_ParseWithLengthOpts(l->header, l->header_bytes + 1, &end, 1);
  if (!l->root)
    return refuse(l, CUOPTIM_STATUS_PARSE_ERROR, "the header is not valid JSON (near byte %td)",
                  end ? end - l->header : (ptrdiff_t)-1);
  if (!cJSON_IsObject(l->root)) return refuse(l, CUOPTIM_STATUS_PARSE_ERROR, "the header is not a JSON object");
  return CUOPTIM_STATUS_SUCCESS;
}

/* A JSON number that is an integer in [0, 2^53]. */
static int json_index(const cJSON *item, double *value) {
  if (!cJSON_IsNumber(item)) return 0;
  double x = item->valuedouble;
  if (!(x >= 0 && x <= MAX_JSON_INTEGER) || floor(x) != x) return 0;
  *value = x;
  return 1;
}

/* The compact JSON text of an item, cut to fit (for messages). */
static void item_text(const cJSON *item, char *text, size_t capacity) {
  if (!item) {
    snprintf(text, capacity, "absent");
    return;
  }
  char *printed = cJSON_PrintUnformatted(item);
  snprintf(text, capacity, "%s", printed ? printed : "?");
  if (printed && strlen(printed) >= capacity && capacity > 4) memcpy(text + capacity - 4, "...", 4);
  free(printed);
}

static const cJSON *metadata_string(const Loader *l, const cJSON *meta, const char *key, cuoptimStatus_t *status) {
  const cJSON *item = cJSON_GetObjectItemCaseSensitive(meta, key);
  if (!item) {
    *status = refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "__metadata__ has no \"%s\" (not a cuoptim checkpoint?)", key);
    return NULL;
  }
  return item;
}

/* The first place where two JSON values differ, as a path (".config.beta_1", "[2]"), with the two
 * values; 0 when they are equal. */
static int json_difference(const cJSON *a, const cJSON *b, char *path, size_t capacity, const cJSON **in_a,
                           const cJSON **in_b) {
  *in_a = a;
  *in_b = b;
  if ((a->type & 0xff) != (b->type & 0xff)) return 1;
  size_t used = strlen(path);
  if (cJSON_IsObject(a)) {
    for (const cJSON *x = a->child; x; x = x->next) {
      snprintf(path + used, capacity - used, ".%s", x->string);
      const cJSON *y = cJSON_GetObjectItemCaseSensitive(b, x->string);
      if (!y) {
        *in_a = x;
        *in_b = NULL;
        return 1;
      }
      if (json_difference(x, y, path, capacity, in_a, in_b)) return 1;
    }
    for (const cJSON *y = b->child; y; y = y->next) {
      if (cJSON_GetObjectItemCaseSensitive(a, y->string)) continue;
      snprintf(path + used, capacity - used, ".%s", y->string);
      *in_a = NULL;
      *in_b = y;
      return 1;
    }
    path[used] = '\0';
    return 0;
  }
  if (cJSON_IsArray(a)) {
    if (cJSON_GetArraySize(a) != cJSON_GetArraySize(b)) return 1;
    int i = 0;
    for (const cJSON *x = a->child, *y = b->child; x && y; x = x->next, y = y->next, i++) {
      snprintf(path + used, capacity - used, "[%d]", i);
      if (json_difference(x, y, path, capacity, in_a, in_b)) return 1;
    }
    path[used] = '\0';
    return 0;
  }
  if (cJSON_IsNumber(a)) return a->valuedouble != b->valuedouble;
  if (cJSON_IsString(a)) return strcmp(a->valuestring, b->valuestring) != 0;
  return 0; /* true, false, null: equal types are equal values */
}

/* Names the first field where the file's Keras config (text) differs from the optimizer's. */
static cuoptimStatus_t refuse_config(const Loader *l, const char *who, const char *file_text, const char *own_text) {
  cJSON *a = cJSON_Parse(file_text), *b = cJSON_Parse(own_text);
  char path[256] = "", in_file[120], in_optimizer[120];
  const cJSON *x = NULL, *y = NULL;
  cuoptimStatus_t status;
  if (a && b && json_difference(a, b, path, sizeof path, &x, &y)) {
    item_text(x, in_file, sizeof in_file);
    item_text(y, in_optimizer, sizeof in_optimizer);
    status = refuse(l, CUOPTIM_STATUS_INVALID_VALUE,
                    "%sthe optimizer's Keras config differs from the file's at %s: %s in the file, %s in the optimizer",
                    who, path[0] ? path : "the top", in_file, in_optimizer);
  } else {
    status = refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "%sthe optimizer's Keras config differs from the file's", who);
  }
  cJSON_Delete(a);
  cJSON_Delete(b);
  return status;
}

static const char *optimizer_title(const cuoptimConfig_t *c, char *text, size_t capacity) {
  const char *name = cuoptimOptimizerName(c->kind);
  if (c->dynamic_loss_scale)
    snprintf(text, capacity, "LossScaleOptimizer(%s)", name ? name : "?");
  else
    snprintf(text, capacity, "%s", name ? name : "?");
  return text;
}

/* The file's Keras config (metadata `key`) must be `opt`'s own, but for a constant learning rate's
 * value, which is state (the `learning_rate` tensor, as cuoptimSetLearningRate changes it). `who`
 * names a sub-optimizer in messages ("" for a plain optimizer). */
static cuoptimStatus_t check_config(const Loader *l, const struct cuoptimOptimizer *opt, const char *who,
                                    const char *key, const char *text) {
  cuoptimConfig_t file_config;
  cuoptimStatus_t status = cuoptimConfigFromKerasJSON(&file_config, text);
  if (status != CUOPTIM_STATUS_SUCCESS) {
    char why[768];
    snprintf(why, sizeof why, "%s", cuoptimGetLastErrorMessage());
    return refuse(l, status, "__metadata__ %s: %s", key, why);
  }
  const cuoptimConfig_t *own = &opt->config;
  if (file_config.kind != own->kind || file_config.dynamic_loss_scale != own->dynamic_loss_scale) {
    char a[64], b[64];
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "%sthe file holds the state of %s, this optimizer is %s", who,
                  optimizer_title(&file_config, a, sizeof a), optimizer_title(own, b, sizeof b));
  }
  if (file_config.learning_rate.kind == CUOPTIM_SCHEDULE_CONSTANT &&
      own->learning_rate.kind == CUOPTIM_SCHEDULE_CONSTANT)
    file_config.learning_rate.initial_learning_rate = own->learning_rate.initial_learning_rate;
  char *file_text = NULL, *own_text = NULL;
  status = cuoptim_config_json_text(&file_config, l->caller, &file_text);
  if (status == CUOPTIM_STATUS_SUCCESS) status = cuoptim_config_json_text(own, l->caller, &own_text);
  if (status == CUOPTIM_STATUS_SUCCESS && strcmp(file_text, own_text) != 0)
    status = refuse_config(l, who, file_text, own_text);
  free(file_text);
  free(own_text);
  return status;
}

static cuoptimStatus_t refuse_variable(const Loader *l, const char *key, int i, const char *why) {
  return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "__metadata__ %s[%d]: %s", key, i, why);
}

/* The file's variable table must list the optimizer's variables: names, dtypes, counts, weight
 * decay, in registration order. */
static cuoptimStatus_t check_variables(const Loader *l, const struct cuoptimOptimizer *opt, const char *key,
                                       const char *text) {
  cJSON *table = cJSON_Parse(text);
  cuoptimStatus_t status = CUOPTIM_STATUS_SUCCESS;
  if (!cJSON_IsArray(table)) {
    cJSON_Delete(table);
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "__metadata__ %s is not a JSON array of variables", key);
  }
  int i = 0;
  char why[600];
  for (const cJSON *row = table->child; row && status == CUOPTIM_STATUS_SUCCESS; row = row->next, i++) {
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(row, "name");
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(row, "dtype");
    const cJSON *count = cJSON_GetObjectItemCaseSensitive(row, "count");
    const cJSON *decay = cJSON_GetObjectItemCaseSensitive(row, "weight_decay");
    double elements = 0;
    if (!cJSON_IsString(name) || !cJSON_IsString(dtype) || !json_index(count, &elements) || !cJSON_IsBool(decay)) {
      status = refuse_variable(l, key, i, "not {\"name\": string, \"dtype\": string, \"count\": integer, \"weight_decay\": bool}");
      break;
    }
    if (i >= opt->num_variables) {
      snprintf(why, sizeof why, "\"%.200s\": the optimizer has only %d variables, the file %d", name->valuestring,
               opt->num_variables, cJSON_GetArraySize(table));
      status = refuse_variable(l, key, i, why);
      break;
    }
    const cuoptimVariableRec *v = &opt->variables[i];
    if (strcmp(name->valuestring, v->name) != 0)
      snprintf(why, sizeof why, "named \"%.200s\" in the file, \"%s\" in the optimizer", name->valuestring, v->name);
    else if (strcmp(dtype->valuestring, cuoptim_dtype_name(v->dtype)) != 0)
      snprintf(why, sizeof why, "\"%s\" is %.40s in the file, %s in the optimizer", v->name, dtype->valuestring,
               cuoptim_dtype_name(v->dtype));
    else if (elements != (double)v->count)
      snprintf(why, sizeof why, "\"%s\" has %.0f elements in the file, %zu in the optimizer", v->name, elements, v->count);
    else if (cJSON_IsTrue(decay) != (v->use_weight_decay != 0))
      snprintf(why, sizeof why, "weight decay applies to \"%s\" in the %s, not in the %s (exclusion patterns differ)",
               v->name, v->use_weight_decay ? "optimizer" : "file", v->use_weight_decay ? "file" : "optimizer");
    else
      continue;
    status = refuse_variable(l, key, i, why);
  }
  if (status == CUOPTIM_STATUS_SUCCESS && i < opt->num_variables)
    status = refuse(l, CUOPTIM_STATUS_INVALID_VALUE,
                    "__metadata__ %s: the file has %d variables, the optimizer %d (\"%s\" is not in the file)", key,
                    i, opt->num_variables, opt->variables[i].name);
  cJSON_Delete(table);
  return status;
}

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* The CRC-32 of every tensor, from the metadata's crc32 table. */
static cuoptimStatus_t read_crcs(Loader *l, const char *text) {
  cJSON *table = cJSON_Parse(text);
  if (!cJSON_IsObject(table)) {
    cJSON_Delete(table);
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "__metadata__ crc32 is not a JSON object");
  }
  cuoptimStatus_t status = CUOPTIM_STATUS_SUCCESS;
  for (const cJSON *item = table->child; item && status == CUOPTIM_STATUS_SUCCESS; item = item->next) {
    Tensor *t = find_tensor(&l->plan, item->string);
    const char *hex = cJSON_IsString(item) ? item->valuestring : "";
    uint32_t crc = 0;
    int digits = 0;
    while (digits < 8 && hex_digit(hex[digits]) >= 0) crc = crc << 4 | (uint32_t)hex_digit(hex[digits++]);
    if (!t)
      status = refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "__metadata__ crc32 names \"%.200s\", not a tensor of this state",
                      item->string);
    else if (t->has_crc)
      status = refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "__metadata__ crc32 names \"%s\" twice", t->name);
    else if (digits != 8 || hex[8] != '\0')
      status = refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "__metadata__ crc32 of \"%s\" is not 8 lower-case hex digits",
                      t->name);
    else {
      t->crc = crc;
      t->has_crc = 1;
    }
  }
  cJSON_Delete(table);
  for (int i = 0; status == CUOPTIM_STATUS_SUCCESS && i < l->plan.count; i++)
    if (!l->plan.tensors[i].has_crc)
      status = refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "__metadata__ crc32 has no entry for tensor \"%s\"",
                      l->plan.tensors[i].name);
  return status;
}

/* A sharded state's file holds one rank's shares: it loads into the same rank of a world of the
 * same size, sharded, and only there. A MultiOptimizer's sub-optimizers all attach alike. */
static cuoptimStatus_t check_shard(const Loader *l, const cJSON *meta) {
  const cJSON *rank = cJSON_GetObjectItemCaseSensitive(meta, "shard_rank");
  const cJSON *world = cJSON_GetObjectItemCaseSensitive(meta, "shard_world");
  const struct cuoptimOptimizer *io = l->plan.io;
  int sharded = cuoptim_comm_sharded(io);
  if (!rank && !world) {
    if (!sharded) return CUOPTIM_STATUS_SUCCESS;
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE,
                  "the checkpoint holds whole (unsharded) state; this optimizer's state is sharded (rank %d of %d): "
                  "load it into an optimizer without options.shard_state",
                  io->comm->rank, io->comm->world);
  }
  if (!rank || !world)
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "__metadata__ has one of shard_rank and shard_world, not both");
  if (!sharded)
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE,
                  "the checkpoint holds rank %.20s of %.20s's share of sharded state; this optimizer's state is not "
                  "sharded",
                  rank->valuestring, world->valuestring);
  char mine[16], ours[16];
  snprintf(mine, sizeof mine, "%d", io->comm->rank);
  snprintf(ours, sizeof ours, "%d", io->comm->world);
  if (strcmp(rank->valuestring, mine) != 0 || strcmp(world->valuestring, ours) != 0)
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE,
                  "the checkpoint holds rank %.20s of %.20s's share of sharded state; this is rank %s of %s: each rank "
                  "loads the file it saved, in a world of the same size",
                  rank->valuestring, world->valuestring, mine, ours);
  return CUOPTIM_STATUS_SUCCESS;
}

/* A plain optimizer's file loads into a plain optimizer, a MultiOptimizer's into a MultiOptimizer. */
static cuoptimStatus_t check_owner(const Loader *l, const cJSON *layout) {
  const struct cuoptimOptimizer *opt = l->opt;
  if (!opt->multi && layout) {
    char title[64];
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE,
                  "the file holds the state of a MultiOptimizer (__metadata__ multi_optimizer), this optimizer is a "
                  "plain %s: load it with a MultiOptimizer handle (cuoptimCreateMulti)",
                  optimizer_title(&opt->config, title, sizeof title));
  }
  if (opt->multi && !layout)
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE,
                  "the file holds the state of a plain optimizer (no __metadata__ multi_optimizer), this optimizer is "
                  "a MultiOptimizer of %d sub-optimizers (a sub-optimizer's own checkpoint loads into that "
                  "sub-optimizer's handle, cuoptimGetSubOptimizer)",
                  opt->multi->num_optimizers);
  return CUOPTIM_STATUS_SUCCESS;
}

/* A MultiOptimizer's file: the same sub-optimizers, map and variables (names, routing, shapes). */
static cuoptimStatus_t check_multi_layout(const Loader *l, const char *text) {
  cJSON *file = cJSON_Parse(text), *own = multi_layout(l->opt);
  cuoptimStatus_t status = CUOPTIM_STATUS_SUCCESS;
  const cJSON *count = cJSON_GetObjectItemCaseSensitive(file, "sub_optimizers");
  char path[256] = "", in_file[120], in_optimizer[120];
  const cJSON *x = NULL, *y = NULL;
  if (!own) {
    status = refuse(l, CUOPTIM_STATUS_ALLOC_FAILED, "out of host memory");
  } else if (!cJSON_IsObject(file) || !cJSON_IsNumber(count)) {
    status = refuse(l, CUOPTIM_STATUS_INVALID_VALUE,
                    "__metadata__ multi_optimizer is not a JSON object with \"sub_optimizers\"");
  } else if (count->valuedouble != (double)l->opt->multi->num_optimizers) {
    status = refuse(l, CUOPTIM_STATUS_INVALID_VALUE,
                    "the file holds a MultiOptimizer of %.0f sub-optimizers, this one has %d", count->valuedouble,
                    l->opt->multi->num_optimizers);
  } else if (json_difference(file, own, path, sizeof path, &x, &y)) {
    item_text(x, in_file, sizeof in_file);
    item_text(y, in_optimizer, sizeof in_optimizer);
    status = refuse(l, CUOPTIM_STATUS_INVALID_VALUE,
                    "the MultiOptimizer's layout (map and variables: names, sub-optimizers, shapes) differs from the "
                    "file's at __metadata__ multi_optimizer%s: %s in the file, %s in the optimizer",
                    path, in_file, in_optimizer);
  }
  cJSON_Delete(file);
  cJSON_Delete(own);
  return status;
}

/* Each part's config and variables against the file's. */
static cuoptimStatus_t check_owner_metadata(Loader *l, const cJSON *meta, const cJSON *layout,
                                            const cJSON *config) {
  cuoptimStatus_t status = CUOPTIM_STATUS_SUCCESS;
  if (!layout) {
    const cJSON *variables = metadata_string(l, meta, "variables", &status);
    if (!variables) return status;
    CUOPTIM_CHECK(check_config(l, l->opt, "", "keras_config", config->valuestring));
    return check_variables(l, l->opt, "variables", variables->valuestring);
  }
  CUOPTIM_CHECK(check_multi_layout(l, layout->valuestring));
  for (int p = 1; p < l->plan.num_parts; p++) {
    const Part *part = &l->plan.parts[p];
    char config_key[PART_PREFIX_BYTES + 16], variables_key[PART_PREFIX_BYTES + 16], who[48];
    snprintf(config_key, sizeof config_key, "%skeras_config", part->prefix);
    snprintf(variables_key, sizeof variables_key, "%svariables", part->prefix);
    snprintf(who, sizeof who, "sub-optimizer %d: ", p - 1);
    const cJSON *sub_config = metadata_string(l, meta, config_key, &status);
    const cJSON *variables = sub_config ? metadata_string(l, meta, variables_key, &status) : NULL;
    if (!variables) return status;
    CUOPTIM_CHECK(check_config(l, part->opt, who, config_key, sub_config->valuestring));
    CUOPTIM_CHECK(check_variables(l, part->opt, variables_key, variables->valuestring));
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t check_metadata(Loader *l, const cJSON *meta) {
  if (!cJSON_IsObject(meta))
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "the header has no \"__metadata__\" object: not a cuoptim checkpoint");
  for (const cJSON *item = meta->child; item; item = item->next)
    if (!cJSON_IsString(item))
      return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "__metadata__ \"%.200s\" is not a string", item->string);
  cuoptimStatus_t status = CUOPTIM_STATUS_SUCCESS;
  const cJSON *format = metadata_string(l, meta, "format", &status);
  if (!format) return status;
  if (strcmp(format->valuestring, FORMAT_NAME) != 0)
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "__metadata__ format is \"%.100s\", not \"" FORMAT_NAME "\"",
                  format->valuestring);
  const cJSON *version = metadata_string(l, meta, "format_version", &status);
  if (!version) return status;
  if (strcmp(version->valuestring, FORMAT_VERSION) != 0)
    return refuse(l, CUOPTIM_STATUS_NOT_SUPPORTED,
                  "__metadata__ format_version is \"%.100s\": this cuoptim reads format_version " FORMAT_VERSION,
                  version->valuestring);
  const cJSON *layout = cJSON_GetObjectItemCaseSensitive(meta, "multi_optimizer");
  CUOPTIM_CHECK(check_owner(l, layout));
  const cJSON *config = metadata_string(l, meta, "keras_config", &status);
  const cJSON *crcs = config ? metadata_string(l, meta, "crc32", &status) : NULL;
  if (!crcs || !metadata_string(l, meta, "cuoptim_version", &status)) return status;
  CUOPTIM_CHECK(check_owner_metadata(l, meta, layout, config));
  CUOPTIM_CHECK(check_shard(l, meta));
  return read_crcs(l, crcs->valuestring);
}

/* One tensor's header entry: the dtype, shape and size the optimizer expects. */
static cuoptimStatus_t check_tensor_entry(const Loader *l, Tensor *t, const cJSON *item) {
  const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
  const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
  const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
  double begin = 0, end = 0;
  if (!cJSON_IsObject(item) || !cJSON_IsString(dtype) || !cJSON_IsArray(shape) || !cJSON_IsArray(offsets) ||
      cJSON_GetArraySize(offsets) != 2 || !json_index(offsets->child, &begin) || !json_index(offsets->child->next, &end))
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE,
                  "tensor \"%s\": not {\"dtype\": string, \"shape\": [integers], \"data_offsets\": [begin, end]} "
                  "with integer offsets",
                  t->name);
  if (strcmp(dtype->valuestring, dtype_code(t)) != 0)
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "tensor \"%s\" has dtype %.20s: the optimizer's is %s", t->name,
                  dtype->valuestring, dtype_code(t));
  char expected[40], found[64];
  shape_text(t, expected, sizeof expected);
  int same = cJSON_GetArraySize(shape) == (t->scalar ? 0 : 1);
  double elements = 0;
  if (same && !t->scalar) same = json_index(shape->child, &elements) && elements == (double)t->count;
  if (!same) {
    item_text(shape, found, sizeof found);
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "tensor \"%s\" has shape %s: the optimizer's is %s", t->name, found,
                  expected);
  }
  if (end < begin || end - begin != (double)t->bytes)
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE,
                  "tensor \"%s\": data_offsets [%.0f, %.0f] hold %.0f bytes: a %s tensor of shape %s takes %zu", t->name,
                  begin, end, end - begin, dtype_code(t), expected, t->bytes);
  t->offset = (size_t)begin;
  t->seen = 1;
  return CUOPTIM_STATUS_SUCCESS;
}

/* The tensors must lie end to end from the start of the data to the end of the file, as
 * safetensors requires: no gap, no overlap, nothing after. */
static cuoptimStatus_t check_layout(Loader *l) {
  Plan *plan = &l->plan;
  qsort(plan->by_offset, (size_t)plan->count, sizeof *plan->by_offset, compare_offsets);
  size_t next = 0;
  for (int i = 0; i < plan->count; i++) {
    const Tensor *t = plan->by_offset[i];
    if (t->offset < next)
      return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "tensors \"%s\" and \"%s\" overlap (data_offsets %zu and %zu)",
                    plan->by_offset[i - 1]->name, t->name, plan->by_offset[i - 1]->offset, t->offset);
    if (t->offset > next)
      return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "data bytes %zu to %zu belong to no tensor (before \"%s\")", next,
                    t->offset, t->name);
    next = t->offset + t->bytes;
  }
  long long data = l->file_bytes - 8 - (long long)l->header_bytes;
  if ((long long)next > data)
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "truncated: the tensors take %zu bytes of data, the file holds %lld",
                  next, data);
  if ((long long)next < data)
    return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "%lld bytes after the last tensor's data (the tensors take %zu)",
                  data - (long long)next, next);
  plan->data_bytes = next;
  return CUOPTIM_STATUS_SUCCESS;
}

/* Every header entry against the plan: no tensor unknown, twice or missing. */
static cuoptimStatus_t check_tensors(Loader *l) {
  const cJSON *meta = NULL;
  for (const cJSON *item = l->root->child; item; item = item->next) {
    if (strcmp(item->string, "__metadata__") != 0) continue;
    if (meta) return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "the header has \"__metadata__\" twice");
    meta = item;
  }
  CUOPTIM_CHECK(check_metadata(l, meta));
  for (const cJSON *item = l->root->child; item; item = item->next) {
    if (item == meta) continue;
    Tensor *t = find_tensor(&l->plan, item->string);
    if (!t)
      return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "tensor \"%.200s\" is not part of this optimizer's state",
                    item->string);
    if (t->seen) return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "tensor \"%s\" appears twice in the header", t->name);
    CUOPTIM_CHECK(check_tensor_entry(l, t, item));
  }
  for (int i = 0; i < l->plan.count; i++)
    if (!l->plan.tensors[i].seen)
      return refuse(l, CUOPTIM_STATUS_INVALID_VALUE, "tensor \"%s\" is missing", l->plan.tensors[i].name);
  return check_layout(l);
}

/* ---- Load: the data, then the state --------------------------------------------------------------- */

/* Reads the data in file order into the scratch copy, through the staging buffer, computing each
 * tensor's CRC and keeping the scalars' bytes. */
static cuoptimStatus_t read_data(Loader *l, cuoptimTransfer *t, size_t capacity) {
  cuoptimOptimizer_t opt = l->plan.io;
  Plan *plan = &l->plan;
  const unsigned char *staging = t->staging;
  int k = 0;
  for (size_t at = 0; at < plan->data_bytes;) {
    size_t n = plan->data_bytes - at < capacity ? plan->data_bytes - at : capacity;
    if (!read_all(l->file, t->staging, n)) return read_failed(l, "the tensors' data");
    CUOPTIM_CHECK(opt->ops->transfer_copy(opt, t, (char *)t->scratch + at, t->staging, n, CUOPTIM_COPY_TO_BACKEND));
    for (; k < plan->count && plan->by_offset[k]->offset < at + n; k++) {
      Tensor *x = plan->by_offset[k];
      size_t lo = x->offset > at ? x->offset : at, end = x->offset + x->bytes;
      size_t hi = end < at + n ? end : at + n;
      x->crc_read = crc32_update(x->crc_read, staging + (lo - at), hi - lo);
      if (x->scalar) memcpy(x->value + (lo - x->offset), staging + (lo - at), hi - lo);
      if (end > at + n) break;
    }
    CUOPTIM_CHECK(opt->ops->transfer_wait(opt, t)); /* before the staging buffer is read into again */
    at += n;
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t check_data(const Loader *l) {
  for (int i = 0; i < l->plan.count; i++) {
    const Tensor *t = &l->plan.tensors[i];
    if (t->crc_read != t->crc)
      return refuse(l, CUOPTIM_STATUS_INVALID_VALUE,
                    "tensor \"%s\": its data has CRC-32 %08x, the header says %08x: the file is corrupted", t->name,
                    t->crc_read, t->crc);
  }
  for (int i = 0; i < l->plan.count; i++)
    if (l->plan.tensors[i].scalar) CUOPTIM_CHECK(check_scalar(&l->plan.tensors[i], l->caller, l->path));
  return CUOPTIM_STATUS_SUCCESS;
}

/* Replaces the state with the verified copy: arrays from the scratch copy, then the scalars. */
static cuoptimStatus_t install_state(Loader *l, cuoptimTransfer *t) {
  Plan *plan = &l->plan;
  cuoptimOptimizer_t io = plan->io;
  CUOPTIM_CHECK(build_parts(plan, l->caller));
  CUOPTIM_CHECK(read_scalars(plan, t));
  for (int i = 0; i < plan->count; i++) {
    const Tensor *x = &plan->tensors[i];
    if (x->scalar)
      apply_scalar(&plan->parts[x->part].scalars, x);
    else
      CUOPTIM_CHECK(io->ops->transfer_copy(io, t, tensor_buffer(plan, x), (const char *)t->scratch + x->offset,
                                           x->bytes, CUOPTIM_COPY_WITHIN_BACKEND));
  }
  for (int p = 0; p < plan->num_parts; p++) {
    const Part *part = &plan->parts[p];
    if (part->opt->multi) continue;
    /* A MultiOptimizer's count stays what it was when its sub-optimizer is loaded alone (a
     * MultiOptimizer's file sets it below). */
    int64_t old_raw = 0;
    if (part->opt->parent) CUOPTIM_CHECK(cuoptim_raw_iterations(part->opt, "cuoptimLoad", &old_raw));
    memcpy(t->staging, &part->scalars.state, sizeof part->scalars.state);
    CUOPTIM_CHECK(io->ops->transfer_copy(io, t, part->opt->state, t->staging, sizeof part->scalars.state,
                                         CUOPTIM_COPY_TO_BACKEND));
    CUOPTIM_CHECK(io->ops->transfer_wait(io, t)); /* before the staging buffer is written again */
    if (part->opt->parent) cuoptim_multi_sub_counter_moved(part->opt, old_raw, part->scalars.state.iterations);
  }
  for (int p = 0; p < plan->num_parts; p++) {
    const Scalars *s = &plan->parts[p].scalars;
    cuoptimOptimizer_t opt = plan->parts[p].opt;
    if (opt->multi) {
      CUOPTIM_CHECK(cuoptim_multi_set_count(opt, s->outer_iterations, "cuoptimLoad"));
      opt->multi->learning_rate = s->outer_learning_rate;
      continue;
    }
    opt->outer_iterations = s->outer_iterations;
    opt->outer_learning_rate = s->outer_learning_rate;
    cuoptim_note_iterations(opt, s->state.iterations);
    /* Every rank loaded the same accumulators. */
    if (cuoptim_comm_accumulates_locally(opt)) opt->accumulators = CUOPTIM_ACCUMULATORS_REPLICATED;
    /* As cuoptimSetLearningRate: the config reports the loaded value, kept as given when it is the
     * same float32. */
    double *configured = &opt->config.learning_rate.initial_learning_rate;
    if (opt->config.learning_rate.kind == CUOPTIM_SCHEDULE_CONSTANT && (float)*configured != s->state.learning_rate)
      *configured = (double)s->state.learning_rate;
  }
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimLoad(cuoptimOptimizer_t opt, const char *path) {
  static const char *caller = "cuoptimLoad";
  CUOPTIM_CHECK(check_arguments(opt, path, caller));
  Loader l;
  memset(&l, 0, sizeof l);
  l.opt = opt;
  l.caller = caller;
  l.path = path;
  cuoptimStatus_t status = plan_build(opt, caller, path, &l.plan);
  if (status != CUOPTIM_STATUS_SUCCESS) return status;
  status = open_file(&l);
  if (status == CUOPTIM_STATUS_SUCCESS) status = read_header(&l);
  if (status == CUOPTIM_STATUS_SUCCESS) status = check_tensors(&l);
  cuoptimTransfer transfer;
  memset(&transfer, 0, sizeof transfer);
  int began = 0;
  size_t capacity = staging_bytes();
  cuoptimOptimizer_t io = l.plan.io;
  if (status == CUOPTIM_STATUS_SUCCESS) status = wait_for_other_parts(&l.plan);
  if (status == CUOPTIM_STATUS_SUCCESS) {
    began = 1;
    status = io->ops->transfer_begin(io, capacity, l.plan.data_bytes, &transfer);
  }
  if (status == CUOPTIM_STATUS_SUCCESS) status = read_data(&l, &transfer, capacity);
  if (status == CUOPTIM_STATUS_SUCCESS) status = check_data(&l);
  if (status == CUOPTIM_STATUS_SUCCESS) status = install_state(&l, &transfer);
  if (began) io->ops->transfer_end(io, &transfer);
  if (l.file) fclose(l.file);
  cJSON_Delete(l.root);
  free(l.header);
  plan_free(&l.plan);
  return status;
}
