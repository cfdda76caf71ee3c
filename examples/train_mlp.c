/*
 * train_mlp — trains a multi-layer perceptron on interleaved spirals with cuoptim, the way a
 * program of its users would: it owns the model's parameters and gradients, and hands them to
 * cuoptimApplyGradients after every mini-batch (shuffle, partition, forward, backward, step).
 *
 * The model runs on the host (plain C, mlp_host.c, with cuoptim's host backend) or on a GPU
 * (cuBLAS and small kernels, mlp_cuda.cu, with cuoptim's CUDA backend on the same stream);
 * --device auto takes the GPU when there is one. Every option of cuoptim's config is reachable:
 * the optimizer (Keras's defaults, or a Keras JSON file), the learning rate or a schedule, clipping,
 * weight decay, EMA, gradient accumulation, loss scaling (static or dynamic) with float16/bfloat16
 * parameters on the GPU. Checkpoints (--checkpoint, --checkpoint-every, --resume) hold the
 * parameters, the position and the optimizer's state (checkpoint.h).
 *
 * Started by mpirun it trains data-parallel (data_parallel.h): every rank makes the same data,
 * model and shuffles, computes the gradients of its own shard of every batch, and cuoptim sums them
 * across the ranks (the aggregated-gradients path: MPI on the host backend, NCCL on the GPU) before
 * each rank applies the same step. --shard-state shards the optimizer's state (ZeRO-1);
 * --gradient-arena has the backward pass write into cuoptim's gradient buffers and mark each
 * layer ready as soon as it is done, so that its reduction overlaps the rest of the backward pass.
 * Rank 0 prints and writes the log and the checkpoints.
 *
 * Output: a line per epoch (training loss and accuracy over the epoch, test loss and accuracy at
 * its end, steps per second, time left), a progress bar on a terminal, and a last line of
 * key=value pairs (`final: ...`) that scripts read. `train_mlp --help` lists the options.
 */
#include <ctype.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <nvtx3/nvToolsExt.h>

#include <cuoptim.h>

#include "checkpoint.h"
#include "data_parallel.h"
#include "mlp.h"

#define MAX_EXCLUSIONS 16
#define MAX_SETTINGS 32

typedef struct {
  const char *optimizer, *keras_json, *schedule, *loss_scale, *hidden, *device, *log_csv;
  const char *checkpoint, *resume;
  const char *exclusions[MAX_EXCLUSIONS];
  int num_exclusions;
  const char *settings[MAX_SETTINGS]; /* --set KEY=VALUE */
  int num_settings;
  double learning_rate, clipnorm, clipvalue, global_clipnorm, weight_decay, ema_momentum;
  int quiet;
  int shard_state, gradient_arena;
  double bucket_mb;
  long long ema_overwrite_frequency, accumulation_steps, checkpoint_every, max_steps;
  cuoptimDtype_t dtype;
  int epochs, batch_size, points, classes, gpu;
  double noise, test_fraction;
  unsigned long long seed;
} options_t;

static void usage(FILE *out) {
  fputs(
      "usage: train_mlp [options]\n"
      "Trains a multi-layer perceptron on interleaved spirals with cuoptim.\n"
      "\n"
      "optimizer (Keras's defaults unless told):\n"
      "  --optimizer NAME        SGD, RMSprop, Adagrad, Adadelta, Adam, AdamW, Adamax, Nadam, Lion, Lamb,\n"
      "                          Ftrl, ScheduleFreeAdamW (any case; default Adam)\n"
      "  --keras-json FILE       the optimizer as json.dumps(keras.optimizers.serialize(opt)) wrote it;\n"
      "                          the options below change it further\n"
      "  --lr X                  learning rate (a schedule's initial one)\n"
      "  --schedule SPEC         KIND[:key=value,...] with KIND exponential, piecewise, polynomial,\n"
      "                          inverse_time, cosine, cosine_restarts and the keys of Keras's\n"
      "                          constructor (decay_steps, decay_rate, staircase, end_learning_rate,\n"
      "                          power, cycle, alpha, warmup_target, warmup_steps, t_mul, m_mul,\n"
      "                          boundaries=a/b/..., values=x/y/...); decay_steps defaults to the\n"
      "                          run's number of batches. Example: cosine:alpha=0.1,warmup_steps=100\n"
      "  --set KEY=VALUE         (repeatable) a hyperparameter by its Keras name: beta_1, beta_2,\n"
      "                          epsilon, rho, momentum, nesterov, centered, amsgrad,\n"
      "                          initial_accumulator_value, learning_rate_power, beta,\n"
      "                          l1_regularization_strength, l2_regularization_strength,\n"
      "                          l2_shrinkage_regularization_strength, initial_scale,\n"
      "                          dynamic_growth_steps (0/1 for the flags)\n"
      "  --clipnorm X, --clipvalue X, --global-clipnorm X\n"
      "  --weight-decay X        decoupled weight decay\n"
      "  --exclude-from-weight-decay REGEX   (repeatable) variables dense/kernel, dense/bias,\n"
      "                          dense_1/kernel, ... whose name the Python regex finds get none\n"
      "  --ema MOMENTUM          keep an exponential moving average (evaluated at the end)\n"
      "  --ema-overwrite-frequency N\n"
      "  --accumulate N          gradient accumulation over N batches\n"
      "  --loss-scale dynamic|F  dynamic loss scaling (LossScaleOptimizer) or a fixed loss_scale_factor\n"
      "  --dtype float32|float16|bfloat16   parameters and gradients (16-bit ones on the GPU; cuoptim\n"
      "                          keeps float32 master weights)\n"
      "\n"
      "training:\n"
      "  --epochs N (30)  --batch-size N (32)  --seed N (1)\n"
      "  --hidden N,N,... (64,64)  hidden layer sizes\n"
      "  --points N (5000)  --classes K (5)  --noise X (0.03)  --test-fraction X (0.2)\n"
      "  --device auto|host|cuda (auto: the GPU when there is one)   --gpu N (device ordinal, 0)\n"
      "  --checkpoint PATH       write PATH and PATH.optimizer (with --shard-state one\n"
      "                          PATH.optimizer.rankR per rank) at the end, and every\n"
      "  --checkpoint-every N    N batches\n"
      "  --resume PATH           continue the run that wrote PATH (same data, model, batch size and\n"
      "                          optimizer); --epochs is the total, counted from the first run\n"
      "  --max-steps N           stop after N batches in all (an interrupted run)\n"
      "  --log-csv FILE          a row per epoch: epoch,step,loss,accuracy,test_loss,test_accuracy,\n"
      "                          learning_rate,seconds (epoch 0: before training)\n"
      "  --quiet                 only the final line\n"
      "\n"
      "data-parallel (started by mpirun: each rank trains on its shard of every batch):\n"
      "  --shard-state           each rank keeps its share of the optimizer's state only (ZeRO-1);\n"
      "                          not with --checkpoint or --resume\n"
      "  --gradient-arena        backward writes into cuoptim's gradient buffers and marks each\n"
      "                          layer ready at once, so its reduction overlaps the rest of backward\n"
      "                          (also without mpirun: cuoptim-owned gradient memory)\n"
      "  --bucket-mb X           gradients reduced in buckets of about X MiB (default 25)\n"
      "  under mpirun --gpu N is the first GPU: the rank of local rank r takes GPU N + r\n",
      out);
}

/* ---- parsing -------------------------------------------------------------------------------- */

static int parse_double(const char *option, const char *text, double *value) {
  char *end;
  *value = strtod(text, &end);
  if (end == text || *end) return mlp_fail("%s %s: not a number", option, text);
  return 0;
}

static int parse_int64(const char *option, const char *text, long long min, long long max, long long *value) {
  char *end;
  *value = strtoll(text, &end, 10);
  if (end == text || *end || *value < min || *value > max)
    return mlp_fail("%s %s: must be an integer in [%lld, %lld]", option, text, min, max);
  return 0;
}

static int parse_int(const char *option, const char *text, int min, int max, int *value) {
  long long v;
  if (parse_int64(option, text, min, max, &v)) return -1;
  *value = (int)v;
  return 0;
}

static int parse_kind(const char *name, cuoptimOptimizerKind_t *kind) {
  for (int k = 0; k < CUOPTIM_OPTIMIZER_COUNT; k++)
    if (cuoptimOptimizerName((cuoptimOptimizerKind_t)k) &&
        strcasecmp(name, cuoptimOptimizerName((cuoptimOptimizerKind_t)k)) == 0) {
      *kind = (cuoptimOptimizerKind_t)k;
      return 0;
    }
  return mlp_fail("--optimizer %s: not one of cuoptim's optimizers (see --help)", name);
}

static int parse_dtype(const char *name, cuoptimDtype_t *dtype) {
  static const char *names[] = {"float32", "float16", "bfloat16"};
  for (int d = 0; d < 3; d++)
    if (strcmp(name, names[d]) == 0) {
      *dtype = (cuoptimDtype_t)d;
      return 0;
    }
  return mlp_fail("--dtype %s: float32, float16 or bfloat16", name);
}

static const char *dtype_name(cuoptimDtype_t dtype) {
  return dtype == CUOPTIM_FLOAT16 ? "float16" : dtype == CUOPTIM_BFLOAT16 ? "bfloat16" : "float32";
}

static int parse_hidden(const char *text, const options_t *o, mlp_shape_t *shape) {
  memset(shape, 0, sizeof *shape);
  shape->sizes[0] = 2;
  const char *p = text;
  while (*p) {
    if (shape->num_layers + 1 >= MLP_MAX_LAYERS)
      return mlp_fail("--hidden %s: at most %d hidden layers", text, MLP_MAX_LAYERS - 1);
    char *end;
    long size = strtol(p, &end, 10);
    if (end == p || size < 1 || size > 4096 || (*end && *end != ','))
      return mlp_fail("--hidden %s: sizes in [1, 4096] separated by commas", text);
    shape->sizes[++shape->num_layers] = (int)size;
    p = *end ? end + 1 : end;
  }
  shape->sizes[++shape->num_layers] = o->classes;
  return 0;
}

/* A list a/b/c of numbers into values[0..*count). */
static int parse_list(const char *key, const char *text, double *values, int capacity, int *count) {
  *count = 0;
  const char *p = text;
  for (;;) {
    if (*count == capacity) return mlp_fail("--schedule: %s=%s: at most %d numbers", key, text, capacity);
    char *end;
    values[(*count)++] = strtod(p, &end);
    if (end == p || (*end && *end != '/')) return mlp_fail("--schedule: %s=%s: numbers separated by '/'", key, text);
    if (!*end) return 0;
    p = end + 1;
  }
}

typedef struct {
  const char *name;
  cuoptimScheduleKind_t kind;
} schedule_name_t;

static const schedule_name_t schedule_names[] = {
    {"constant", CUOPTIM_SCHEDULE_CONSTANT},       {"exponential", CUOPTIM_SCHEDULE_EXPONENTIAL},
    {"piecewise", CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT}, {"polynomial", CUOPTIM_SCHEDULE_POLYNOMIAL},
    {"inverse_time", CUOPTIM_SCHEDULE_INVERSE_TIME}, {"cosine", CUOPTIM_SCHEDULE_COSINE},
    {"cosine_restarts", CUOPTIM_SCHEDULE_COSINE_RESTARTS},
};

/* One key=value of a schedule spec into *s. */
static int set_schedule_key(cuoptimSchedule_t *s, const char *key, const char *value, int *decay_steps_given) {
  struct {
    const char *key;
    double *field;
  } doubles[] = {
      {"initial_learning_rate", &s->initial_learning_rate}, {"decay_steps", &s->decay_steps},
      {"first_decay_steps", &s->decay_steps},               {"decay_rate", &s->decay_rate},
      {"end_learning_rate", &s->end_learning_rate},         {"power", &s->power},
      {"alpha", &s->alpha},                                 {"warmup_target", &s->warmup_target},
      {"warmup_steps", &s->warmup_steps},                   {"t_mul", &s->t_mul},
      {"m_mul", &s->m_mul},
  };
  struct {
    const char *key;
    int *field;
  } flags[] = {{"staircase", &s->staircase}, {"cycle", &s->cycle}};
  char option[64]; /* "--schedule KEY" for messages */
  snprintf(option, sizeof option, "--schedule %s", key);
  for (size_t i = 0; i < sizeof doubles / sizeof doubles[0]; i++)
    if (strcmp(key, doubles[i].key) == 0) {
      if (strstr(key, "decay_steps")) *decay_steps_given = 1;
      return parse_double(option, value, doubles[i].field);
    }
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
    if (strcmp(key, flags[i].key) == 0) return parse_int(option, value, 0, 1, flags[i].field);
  if (strcmp(key, "boundaries") == 0)
    return parse_list(key, value, s->boundaries, CUOPTIM_MAX_BOUNDARIES, &s->num_boundaries);
  if (strcmp(key, "values") == 0) {
    int n;
    if (parse_list(key, value, s->values, CUOPTIM_MAX_BOUNDARIES + 1, &n)) return -1;
    if (n != s->num_boundaries + 1)
      return mlp_fail("--schedule: values=%s: one more value than boundaries (give boundaries first)", value);
    return 0;
  }
  return mlp_fail("--schedule: unknown key '%s' (see --help)", key);
}

/* KIND[:key=value,...] into *s; the initial learning rate is `initial` unless the spec sets it,
 * and decay_steps `total_batches` unless the spec sets it. */
static int parse_schedule(const char *spec, double initial, double total_batches, cuoptimSchedule_t *s) {
  char buffer[2048];
  if (snprintf(buffer, sizeof buffer, "%s", spec) >= (int)sizeof buffer) return mlp_fail("--schedule: too long");
  char *keys = strchr(buffer, ':');
  if (keys) *keys++ = '\0';
  size_t k = 0;
  while (k < sizeof schedule_names / sizeof schedule_names[0] && strcmp(schedule_names[k].name, buffer) != 0) k++;
  if (k == sizeof schedule_names / sizeof schedule_names[0])
    return mlp_fail("--schedule %s: unknown kind '%s' (see --help)", spec, buffer);
  cuoptimScheduleInit(s, schedule_names[k].kind);
  s->initial_learning_rate = initial;
  int decay_steps_given = 0;
  for (char *item = keys ? strtok(keys, ",") : NULL; item; item = strtok(NULL, ",")) {
    char *value = strchr(item, '=');
    if (!value) return mlp_fail("--schedule %s: '%s' is not key=value", spec, item);
    *value++ = '\0';
    if (set_schedule_key(s, item, value, &decay_steps_given)) return -1;
  }
  if (!decay_steps_given) s->decay_steps = total_batches;
  return 0;
}

enum {
  OPT_OPTIMIZER = 256, OPT_KERAS_JSON, OPT_LR, OPT_SCHEDULE, OPT_SET, OPT_CLIPNORM,
  OPT_CLIPVALUE, OPT_GLOBAL_CLIPNORM, OPT_WEIGHT_DECAY, OPT_EXCLUDE, OPT_EMA, OPT_EMA_OVERWRITE, OPT_ACCUMULATE,
  OPT_LOSS_SCALE, OPT_DTYPE, OPT_EPOCHS, OPT_BATCH_SIZE, OPT_SEED, OPT_HIDDEN, OPT_POINTS, OPT_CLASSES, OPT_NOISE,
  OPT_TEST_FRACTION, OPT_DEVICE, OPT_GPU, OPT_CHECKPOINT, OPT_CHECKPOINT_EVERY, OPT_RESUME, OPT_MAX_STEPS,
  OPT_LOG_CSV, OPT_QUIET, OPT_SHARD_STATE, OPT_GRADIENT_ARENA, OPT_BUCKET_MB, OPT_HELP
};

static const struct option long_options[] = {
    {"optimizer", required_argument, NULL, OPT_OPTIMIZER},
    {"keras-json", required_argument, NULL, OPT_KERAS_JSON},
    {"lr", required_argument, NULL, OPT_LR},
    {"schedule", required_argument, NULL, OPT_SCHEDULE},
    {"set", required_argument, NULL, OPT_SET},
    {"clipnorm", required_argument, NULL, OPT_CLIPNORM},
    {"clipvalue", required_argument, NULL, OPT_CLIPVALUE},
    {"global-clipnorm", required_argument, NULL, OPT_GLOBAL_CLIPNORM},
    {"weight-decay", required_argument, NULL, OPT_WEIGHT_DECAY},
    {"exclude-from-weight-decay", required_argument, NULL, OPT_EXCLUDE},
    {"ema", required_argument, NULL, OPT_EMA},
    {"ema-overwrite-frequency", required_argument, NULL, OPT_EMA_OVERWRITE},
    {"accumulate", required_argument, NULL, OPT_ACCUMULATE},
    {"loss-scale", required_argument, NULL, OPT_LOSS_SCALE},
    {"dtype", required_argument, NULL, OPT_DTYPE},
    {"epochs", required_argument, NULL, OPT_EPOCHS},
    {"batch-size", required_argument, NULL, OPT_BATCH_SIZE},
    {"seed", required_argument, NULL, OPT_SEED},
    {"hidden", required_argument, NULL, OPT_HIDDEN},
    {"points", required_argument, NULL, OPT_POINTS},
    {"classes", required_argument, NULL, OPT_CLASSES},
    {"noise", required_argument, NULL, OPT_NOISE},
    {"test-fraction", required_argument, NULL, OPT_TEST_FRACTION},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"gpu", required_argument, NULL, OPT_GPU},
    {"checkpoint", required_argument, NULL, OPT_CHECKPOINT},
    {"checkpoint-every", required_argument, NULL, OPT_CHECKPOINT_EVERY},
    {"resume", required_argument, NULL, OPT_RESUME},
    {"max-steps", required_argument, NULL, OPT_MAX_STEPS},
    {"log-csv", required_argument, NULL, OPT_LOG_CSV},
    {"quiet", no_argument, NULL, OPT_QUIET},
    {"shard-state", no_argument, NULL, OPT_SHARD_STATE},
    {"gradient-arena", no_argument, NULL, OPT_GRADIENT_ARENA},
    {"bucket-mb", required_argument, NULL, OPT_BUCKET_MB},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

static void default_options(options_t *o) {
  memset(o, 0, sizeof *o);
  o->optimizer = "Adam";
  o->hidden = "64,64";
  o->device = "auto";
  o->learning_rate = o->clipnorm = o->clipvalue = o->global_clipnorm = CUOPTIM_NONE;
  o->weight_decay = o->ema_momentum = CUOPTIM_NONE;
  o->ema_overwrite_frequency = o->accumulation_steps = -1;
  o->bucket_mb = CUOPTIM_NONE;
  o->dtype = CUOPTIM_FLOAT32;
  o->epochs = 30;
  o->batch_size = 32;
  o->points = 5000;
  o->classes = 5;
  o->noise = 0.03;
  o->test_fraction = 0.2;
  o->seed = 1;
}

/* Returns 0, 1 for --help, or -1 on a bad option. */
static int parse_options(int argc, char **argv, options_t *o) {
  default_options(o);
  int c;
  long long v;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
    const char *name = optind > 1 ? argv[optind - 1] : "";
    int status = 0;
    switch (c) {
      case OPT_OPTIMIZER: o->optimizer = optarg; break;
      case OPT_KERAS_JSON: o->keras_json = optarg; break;
      case OPT_LR: status = parse_double("--lr", optarg, &o->learning_rate); break;
      case OPT_SCHEDULE: o->schedule = optarg; break;
      case OPT_SET:
        if (o->num_settings == MAX_SETTINGS)
          status = mlp_fail("--set: at most %d settings", MAX_SETTINGS);
        else
          o->settings[o->num_settings++] = optarg;
        break;
      case OPT_CLIPNORM: status = parse_double("--clipnorm", optarg, &o->clipnorm); break;
      case OPT_CLIPVALUE: status = parse_double("--clipvalue", optarg, &o->clipvalue); break;
      case OPT_GLOBAL_CLIPNORM: status = parse_double("--global-clipnorm", optarg, &o->global_clipnorm); break;
      case OPT_WEIGHT_DECAY: status = parse_double("--weight-decay", optarg, &o->weight_decay); break;
      case OPT_EXCLUDE:
        if (o->num_exclusions == MAX_EXCLUSIONS)
          status = mlp_fail("--exclude-from-weight-decay: at most %d patterns", MAX_EXCLUSIONS);
        else
          o->exclusions[o->num_exclusions++] = optarg;
        break;
      case OPT_EMA: status = parse_double("--ema", optarg, &o->ema_momentum); break;
      case OPT_EMA_OVERWRITE:
        status = parse_int64("--ema-overwrite-frequency", optarg, 0, INT64_MAX, &o->ema_overwrite_frequency);
        break;
      case OPT_ACCUMULATE: status = parse_int64("--accumulate", optarg, 0, INT64_MAX, &o->accumulation_steps); break;
      case OPT_LOSS_SCALE: o->loss_scale = optarg; break;
      case OPT_DTYPE: status = parse_dtype(optarg, &o->dtype); break;
      case OPT_EPOCHS: status = parse_int("--epochs", optarg, 0, 1000000, &o->epochs); break;
      case OPT_BATCH_SIZE: status = parse_int("--batch-size", optarg, 1, 1 << 20, &o->batch_size); break;
      case OPT_SEED:
        status = parse_int64("--seed", optarg, 0, INT64_MAX, &v);
        o->seed = (unsigned long long)v;
        break;
      case OPT_HIDDEN: o->hidden = optarg; break;
      case OPT_POINTS: status = parse_int("--points", optarg, 1, 10000000, &o->points); break;
      case OPT_CLASSES: status = parse_int("--classes", optarg, 2, MLP_MAX_CLASSES, &o->classes); break;
      case OPT_NOISE: status = parse_double("--noise", optarg, &o->noise); break;
      case OPT_TEST_FRACTION: status = parse_double("--test-fraction", optarg, &o->test_fraction); break;
      case OPT_DEVICE:
        o->device = optarg;
        if (strcmp(optarg, "auto") && strcmp(optarg, "host") && strcmp(optarg, "cuda"))
          status = mlp_fail("--device %s: auto, host or cuda", optarg);
        break;
      case OPT_GPU: status = parse_int("--gpu", optarg, 0, 1023, &o->gpu); break;
      case OPT_CHECKPOINT: o->checkpoint = optarg; break;
      case OPT_CHECKPOINT_EVERY:
        status = parse_int64("--checkpoint-every", optarg, 1, INT64_MAX, &o->checkpoint_every);
        break;
      case OPT_RESUME: o->resume = optarg; break;
      case OPT_MAX_STEPS: status = parse_int64("--max-steps", optarg, 0, INT64_MAX, &o->max_steps); break;
      case OPT_LOG_CSV: o->log_csv = optarg; break;
      case OPT_QUIET: o->quiet = 1; break;
      case OPT_SHARD_STATE: o->shard_state = 1; break;
      case OPT_GRADIENT_ARENA: o->gradient_arena = 1; break;
      case OPT_BUCKET_MB:
        status = parse_double("--bucket-mb", optarg, &o->bucket_mb);
        if (!status && !(o->bucket_mb * 1048576.0 >= 1.0 && o->bucket_mb <= 1e6))
          status = mlp_fail("--bucket-mb %s: must lie in [1 byte, 1e6 MiB]", optarg);
        break;
      case OPT_HELP: return 1;
      default: status = mlp_fail("%s: unknown option or missing value (see --help)", name);
    }
    if (status) return -1;
  }
  if (optind < argc) return mlp_fail("%s: unexpected argument (see --help)", argv[optind]);
  if (o->checkpoint_every && !o->checkpoint) return mlp_fail("--checkpoint-every needs --checkpoint PATH");
  return 0;
}

/* The options that only a data-parallel run has. */
static int check_data_parallel_options(const options_t *o, const dp_world_t *world) {
  if (world->active) return 0;
  if (o->shard_state) return mlp_fail("--shard-state: only in a data-parallel run (start train_mlp with mpirun)");
  if (!CUOPTIM_IS_NONE(o->bucket_mb))
    return mlp_fail("--bucket-mb: only in a data-parallel run (start train_mlp with mpirun)");
  return 0;
}

/* ---- the optimizer's config ----------------------------------------------------------------- */

static int read_file(const char *path, char **text) {
  FILE *file = fopen(path, "rb");
  if (!file) return mlp_fail("--keras-json %s: cannot read", path);
  size_t capacity = 4096, length = 0, got;
  char *buffer = malloc(capacity + 1);
  while (buffer && (got = fread(buffer + length, 1, capacity - length, file)) > 0) {
    length += got;
    if (length == capacity) {
      char *bigger = capacity < (1u << 24) ? realloc(buffer, 2 * capacity + 1) : NULL;
      if (!bigger) {
        free(buffer);
        buffer = NULL;
      } else {
        buffer = bigger;
        capacity *= 2;
      }
    }
  }
  fclose(file);
  if (!buffer) return mlp_fail("--keras-json %s: too large or out of memory", path);
  buffer[length] = '\0';
  *text = buffer;
  return 0;
}

/* --set KEY=VALUE: one hyperparameter of the config, by the name Keras gives it. */
static int apply_setting(cuoptimConfig_t *cfg, const char *setting) {
  struct {
    const char *key;
    double *field;
  } doubles[] = {
      {"beta_1", &cfg->beta_1},
      {"beta_2", &cfg->beta_2},
      {"epsilon", &cfg->epsilon},
      {"rho", &cfg->rho},
      {"momentum", &cfg->momentum},
      {"initial_accumulator_value", &cfg->initial_accumulator_value},
      {"learning_rate_power", &cfg->learning_rate_power},
      {"l1_regularization_strength", &cfg->l1_regularization_strength},
      {"l2_regularization_strength", &cfg->l2_regularization_strength},
      {"l2_shrinkage_regularization_strength", &cfg->l2_shrinkage_regularization_strength},
      {"beta", &cfg->beta},
      {"initial_scale", &cfg->initial_scale},
  };
  struct {
    const char *key;
    int *field;
  } flags[] = {{"nesterov", &cfg->nesterov}, {"centered", &cfg->centered}, {"amsgrad", &cfg->amsgrad}};
  const char *value = strchr(setting, '=');
  size_t length = value ? (size_t)(value - setting) : 0;
  if (!value) return mlp_fail("--set %s: KEY=VALUE", setting);
  value++;
  /* Parsed here so that a message quotes the whole KEY=VALUE. */
  char *end;
  double number = strtod(value, &end);
  if (end == value || *end) return mlp_fail("--set %s: the value is not a number", setting);
  for (size_t i = 0; i < sizeof doubles / sizeof doubles[0]; i++)
    if (strlen(doubles[i].key) == length && strncmp(setting, doubles[i].key, length) == 0) {
      *doubles[i].field = number;
      return 0;
    }
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
    if (strlen(flags[i].key) == length && strncmp(setting, flags[i].key, length) == 0) {
      if (number != 0.0 && number != 1.0) return mlp_fail("--set %s: 0 or 1", setting);
      *flags[i].field = (int)number;
      return 0;
    }
  if (length == strlen("dynamic_growth_steps") && strncmp(setting, "dynamic_growth_steps", length) == 0) {
    if (!(number >= 1.0 && number <= 9e18) || number != floor(number))
      return mlp_fail("--set %s: an integer >= 1", setting);
    cfg->dynamic_growth_steps = (int64_t)number;
    return 0;
  }
  return mlp_fail("--set %s: unknown key (see --help)", setting);
}

/* Keras's defaults for the optimizer (or the Keras JSON file), then every option given. */
static int make_config(const options_t *o, double total_batches, cuoptimConfig_t *cfg) {
  if (o->keras_json) {
    char *json = NULL;
    if (read_file(o->keras_json, &json)) return -1;
    cuoptimStatus_t status = cuoptimConfigFromKerasJSON(cfg, json);
    free(json);
    if (status != CUOPTIM_STATUS_SUCCESS) return mlp_fail("--keras-json %s: %s", o->keras_json, cuoptimGetLastErrorMessage());
  } else {
    cuoptimOptimizerKind_t kind = CUOPTIM_ADAM;
    if (parse_kind(o->optimizer, &kind)) return -1;
    cuoptimConfigInit(cfg, kind);
  }
  cuoptimSchedule_t *lr = &cfg->learning_rate;
  if (!CUOPTIM_IS_NONE(o->learning_rate)) {
    if (lr->kind == CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT && !o->schedule)
      return mlp_fail("--lr: the optimizer's schedule is piecewise constant: give its values with --schedule");
    lr->initial_learning_rate = o->learning_rate;
  }
  if (o->schedule && parse_schedule(o->schedule, lr->initial_learning_rate, total_batches, lr)) return -1;
  for (int i = 0; i < o->num_settings; i++)
    if (apply_setting(cfg, o->settings[i])) return -1;
  if (!CUOPTIM_IS_NONE(o->clipnorm)) cfg->clipnorm = o->clipnorm;
  if (!CUOPTIM_IS_NONE(o->clipvalue)) cfg->clipvalue = o->clipvalue;
  if (!CUOPTIM_IS_NONE(o->global_clipnorm)) cfg->global_clipnorm = o->global_clipnorm;
  if (!CUOPTIM_IS_NONE(o->weight_decay)) cfg->weight_decay = o->weight_decay;
  if (!CUOPTIM_IS_NONE(o->ema_momentum)) {
    cfg->use_ema = 1;
    cfg->ema_momentum = o->ema_momentum;
  }
  if (o->ema_overwrite_frequency >= 0) cfg->ema_overwrite_frequency = o->ema_overwrite_frequency;
  if (o->accumulation_steps >= 0) cfg->gradient_accumulation_steps = o->accumulation_steps;
  if (o->loss_scale && strcmp(o->loss_scale, "dynamic") == 0) {
    cfg->dynamic_loss_scale = 1;
  } else if (o->loss_scale) {
    if (parse_double("--loss-scale", o->loss_scale, &cfg->loss_scale_factor)) return -1;
  }
  if (cuoptimConfigValidate(cfg) != CUOPTIM_STATUS_SUCCESS) return mlp_fail("%s", cuoptimGetLastErrorMessage());
  return 0;
}

/* The learning rate as configured (a schedule's first value). */
static double configured_learning_rate(const cuoptimConfig_t *cfg) {
  const cuoptimSchedule_t *s = &cfg->learning_rate;
  return s->kind == CUOPTIM_SCHEDULE_PIECEWISE_CONSTANT ? s->values[0] : s->initial_learning_rate;
}

/* ---- the trainer ------------------------------------------------------------------------------ */

typedef struct {
  options_t options;
  dp_world_t world;
  int leader;   /* rank 0: prints, logs and writes the checkpoints */
  int silent;   /* a failure that another rank reports */
  int device;   /* the CUDA device of the GPU model */
  const mlp_backend_t *backend;
  mlp_dataset_t data;
  mlp_shape_t shape;
  mlp_model_t *model;
  cuoptimConfig_t config;
  cuoptimOptimizer_t optimizer;
  cuoptimGradient_t grads[2 * MLP_MAX_LAYERS];
  int num_grads;
  int batches_per_epoch;
  float *params; /* host copy for checkpoints and the checksum */
  size_t num_params;
  checkpoint_identity_t identity;
  checkpoint_position_t position;
  FILE *csv;
  double start_wall, train_seconds;
  long long steps_run; /* batches run by this process */
  int progress_bar;
  double last_bar;
} trainer_t;

static double now_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Under mpirun the ranks of a host take a GPU each, from --gpu on. */
static int choose_backend(trainer_t *t) {
  const char *device = t->options.device;
  int gpus = 0;
#ifdef TRAIN_MLP_HAVE_CUDA
  gpus = mlp_cuda_device_count();
  if (strcmp(device, "cuda") == 0 || (strcmp(device, "auto") == 0 && gpus > 0)) {
    t->device = t->options.gpu + t->world.local_rank;
    if (t->device >= gpus)
      return mlp_fail("--device cuda: no CUDA device %d (%d found)%s", t->device, gpus,
                      t->world.local_rank ? ": one GPU per rank of a host" : "");
    t->backend = &mlp_cuda_backend;
    return 0;
  }
#else
  if (strcmp(device, "cuda") == 0)
    return mlp_fail("--device cuda: this build of train_mlp has no GPU model (it was built without cuBLAS)");
#endif
  (void)gpus;
  t->backend = &mlp_host_backend;
  return 0;
}

/* Keras's variable paths: dense/kernel, dense/bias, dense_1/kernel, ... */
static int register_variables(trainer_t *t) {
  for (int l = 0; l < t->shape.num_layers; l++)
    for (int which = 0; which < 2; which++) {
      char name[64];
      char layer[32] = "dense";
      if (l) snprintf(layer, sizeof layer, "dense_%d", l);
      snprintf(name, sizeof name, "%s/%s", layer, which ? "bias" : "kernel");
      /* Keras's shapes: a Dense kernel is [inputs, outputs], its bias [outputs]; the optimizers
       * that treat a variable by its shape (Adafactor, Muon) see the kernels as matrices. */
      int64_t dims[2] = {t->shape.sizes[l], t->shape.sizes[l + 1]};
      int rank = which ? 1 : 2;
      if (which) dims[0] = (int64_t)mlp_bias_count(&t->shape, l);
      cuoptimVariable_t v;
      if (cuoptimAddVariableWithShape(t->optimizer, name, t->backend->param(t->model, l, which), t->options.dtype,
                                      rank, dims, &v) != CUOPTIM_STATUS_SUCCESS)
        return mlp_fail("%s", cuoptimGetLastErrorMessage());
      cuoptimGradient_t g = {v, t->backend->grad(t->model, l, which), t->options.dtype};
      t->grads[t->num_grads++] = g;
    }
  for (int i = 0; i < t->options.num_exclusions; i++)
    if (cuoptimExcludeFromWeightDecay(t->optimizer, t->options.exclusions[i]) != CUOPTIM_STATUS_SUCCESS)
      return mlp_fail("%s", cuoptimGetLastErrorMessage());
  return 0;
}

static void fill_identity(trainer_t *t) {
  checkpoint_identity_t *id = &t->identity;
  memset(id, 0, sizeof *id);
  id->seed = t->options.seed;
  id->points = t->options.points;
  id->classes = t->options.classes;
  id->batch_size = t->options.batch_size;
  id->dtype = (int32_t)t->options.dtype;
  id->noise = t->options.noise;
  id->test_fraction = t->options.test_fraction;
  id->shape = t->shape;
  cuoptimConfigToKerasJSON(&t->config, id->optimizer_json, sizeof id->optimizer_json, NULL);
}

/* Collective: when a rank failed, every rank fails; the lowest failing rank reports its message
 * and the others stay silent, so that a failure every rank meets is printed once. */
static int agree(trainer_t *t, int status) {
  int lowest = dp_lowest_failing_rank(&t->world, status != 0);
  if (lowest < 0) return 0;
  if (lowest != t->world.rank) t->silent = 1;
  return -1;
}

/* What each rank makes alone: data, config, model, initial (or resumed) parameters, optimizer.
 * Every rank makes the same from the same options and seed. */
static int setup_local(trainer_t *t) {
  const options_t *o = &t->options;
  if (parse_hidden(o->hidden, o, &t->shape)) return -1;
  if (mlp_make_spirals(&t->data, o->points, o->classes, o->noise, o->test_fraction, o->seed)) return -1;
  t->batches_per_epoch = (t->data.train.n + o->batch_size - 1) / o->batch_size;
  if (make_config(o, (double)t->batches_per_epoch * o->epochs, &t->config)) return -1;
  if (choose_backend(t)) return -1;
  int eval_batch = o->batch_size > 512 ? o->batch_size : 512;
  if (t->backend->create(&t->model, &t->shape, o->dtype, eval_batch, &t->data, t->device)) return -1;
  t->num_params = mlp_param_count(&t->shape);
  t->params = malloc(t->num_params * sizeof *t->params);
  if (!t->params) return mlp_fail("out of memory for %zu parameters", t->num_params);
  fill_identity(t);
  memset(&t->position, 0, sizeof t->position);
  if (o->resume) {
    if (checkpoint_load_program(o->resume, &t->identity, &t->position, t->params, t->num_params)) return -1;
  } else {
    mlp_init_params(&t->shape, t->params, o->seed);
  }
  /* Parameters first: cuoptim's float32 masters of 16-bit parameters start from them. */
  if (t->backend->set_params(t->model, t->params)) return -1;
  if (cuoptimCreate(&t->optimizer, &t->config, t->backend->backend, t->device) != CUOPTIM_STATUS_SUCCESS)
    return mlp_fail("%s", cuoptimGetLastErrorMessage());
  return 0;
}

/* Collective: the optimizer becomes one rank of the data-parallel group. Gradients are summed,
 * not averaged: each rank's gradient already is its shard's part of the batch's mean (train_step). */
static int attach_communicator(trainer_t *t) {
  if (!t->world.active) return 0;
  cuoptimCommOptions_t options;
  cuoptimCommOptionsInit(&options);
  options.reduce = CUOPTIM_REDUCE_SUM;
  options.shard_state = t->options.shard_state;
  if (!CUOPTIM_IS_NONE(t->options.bucket_mb)) options.bucket_bytes = (size_t)(t->options.bucket_mb * 1048576.0);
  if (t->backend->backend == CUOPTIM_BACKEND_CUDA && dp_open_nccl(&t->world, t->device)) return -1;
  return dp_attach(&t->world, t->optimizer, t->backend->backend, &options);
}

/* With the gradient arena the model's backward writes into cuoptim's gradient buffers, and the
 * step gets those buffers. Getting them builds the optimizer state. */
static int use_gradient_arena(trainer_t *t) {
  for (int k = 0; k < t->num_grads; k++) {
    void *grad = NULL;
    if (cuoptimGetGradientBuffer(t->optimizer, t->grads[k].variable, &grad) != CUOPTIM_STATUS_SUCCESS)
      return mlp_fail("%s", cuoptimGetLastErrorMessage());
    t->backend->set_grad(t->model, k / 2, k % 2, grad); /* registered as kernel 0, bias 0, kernel 1, ... */
    t->grads[k].grad = grad;
  }
  return 0;
}

/* Sharded optimizer state: this rank's file of it (checkpoint.h); -1: one file, rank 0's. */
static int shard_rank(const trainer_t *t) { return t->options.shard_state ? t->world.rank : -1; }

static int setup_variables(trainer_t *t) {
  const options_t *o = &t->options;
  if (o->gradient_arena && cuoptimEnableGradientArena(t->optimizer) != CUOPTIM_STATUS_SUCCESS)
    return mlp_fail("%s", cuoptimGetLastErrorMessage());
  if (register_variables(t)) return -1;
  if (o->gradient_arena && use_gradient_arena(t)) return -1;
  if (o->resume && checkpoint_load_optimizer(o->resume, t->optimizer, shard_rank(t))) return -1;
  return 0;
}

/* Each stage ends with every rank agreeing that it went well, so that no rank waits in a
 * collective for one that has failed. */
static int setup(trainer_t *t) {
  if (agree(t, setup_local(t))) return -1;
  if (agree(t, attach_communicator(t))) return -1;
  return agree(t, setup_variables(t));
}

static void teardown(trainer_t *t) {
  if (t->csv) fclose(t->csv);
  cuoptimDestroy(t->optimizer);
  if (t->model) t->backend->destroy(t->model);
  free(t->params);
  mlp_free_dataset(&t->data);
}

/* Rank 0 writes the program's part and the optimizer's state; with sharded state every other rank
 * writes its shares of the state. Every rank calls it; returns the rank's own status. */
static int save_checkpoint(trainer_t *t) {
  if (!t->leader)
    return t->options.shard_state ? checkpoint_save_optimizer(t->options.checkpoint, t->optimizer, shard_rank(t)) : 0;
  if (t->backend->get_params(t->model, t->params)) return -1;
  return checkpoint_save(t->options.checkpoint, &t->identity, &t->position, t->params, t->num_params, t->optimizer,
                         shard_rank(t));
}

/* The loss scale the caller multiplies its loss by (Keras's scale_loss): the dynamic scale, the
 * fixed loss_scale_factor, or 1. */
static int loss_scale(trainer_t *t, float *scale) {
  *scale = 1.0f;
  if (t->config.dynamic_loss_scale) {
    if (cuoptimGetLossScale(t->optimizer, scale) != CUOPTIM_STATUS_SUCCESS)
      return mlp_fail("%s", cuoptimGetLastErrorMessage());
  } else if (!CUOPTIM_IS_NONE(t->config.loss_scale_factor)) {
    *scale = (float)t->config.loss_scale_factor;
  }
  return 0;
}

static void range_push(const char *name) { nvtxRangePushA(name); }
static void range_pop(void) { nvtxRangePop(); }

/* The gradient arena's hook: layer l's kernel and bias gradients are written; marking them may
 * start the reduction of their bucket while backward goes on with the layers before. */
static int mark_layer_ready(void *user, int layer) {
  trainer_t *t = user;
  for (int which = 1; which >= 0; which--)
    if (cuoptimMarkGradientReady(t->optimizer, t->grads[2 * layer + which].variable, t->backend->stream(t->model)) !=
        CUOPTIM_STATUS_SUCCESS)
      return mlp_fail("%s", cuoptimGetLastErrorMessage());
  return 0;
}

/* One mini-batch: forward, backward, the optimizer step. In a data-parallel run this rank takes
 * its shard of the batch (dp_shard: parts that differ by one example at most, or nothing of a
 * batch shorter than the world). The loss is the mean over the whole batch, so every rank scales
 * its shard's summed gradient by loss_scale / count, count being the whole batch's size, and the
 * optimizer sums the ranks' gradients (CUOPTIM_REDUCE_SUM): the sum is the batch's mean gradient
 * however the batch is cut. CUOPTIM_REDUCE_MEAN of each shard's own mean would weigh the examples
 * of a smaller shard more, so it would need every batch, the epoch's last one too, to divide by
 * the world. On one rank this is the plain run's loss_scale / count, bit for bit. */
static int train_step(trainer_t *t, int first, int count) {
  float scale;
  if (loss_scale(t, &scale)) return -1;
  int offset, length;
  dp_shard(&t->world, count, &offset, &length);
  mlp_grad_hook_t hook = {mark_layer_ready, t};
  range_push("forward+backward");
  int status = t->backend->train_batch(t->model, first + offset, length, scale / (float)count,
                                       t->options.gradient_arena ? &hook : NULL);
  range_pop();
  if (status) return -1;
  if (cuoptimApplyGradients(t->optimizer, t->num_grads, t->grads, t->backend->stream(t->model)) !=
      CUOPTIM_STATUS_SUCCESS)
    return mlp_fail("%s", cuoptimGetLastErrorMessage());
  return 0;
}

static void format_duration(double seconds, char *out, size_t size) {
  long s = seconds > 0 && seconds < 1e8 ? (long)(seconds + 0.5) : 0;
  if (s >= 3600)
    snprintf(out, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else
    snprintf(out, size, "%ld:%02ld", s / 60, s % 60);
}

/* Seconds left, from this run's pace so far. */
static double eta_seconds(const trainer_t *t) {
  long long total = (long long)t->batches_per_epoch * t->options.epochs;
  if (t->options.max_steps && t->options.max_steps < total) total = t->options.max_steps;
  long long left = total - t->position.global_step;
  return t->steps_run ? (now_seconds() - t->start_wall) / (double)t->steps_run * (double)left : 0.0;
}

static void draw_progress_bar(trainer_t *t, int epoch) {
  double now = now_seconds();
  if (!t->progress_bar || now - t->last_bar < 0.1) return;
  t->last_bar = now;
  enum { width = 30 };
  int done = t->position.batch * width / t->batches_per_epoch;
  char bar[width + 1], eta[32];
  for (int i = 0; i < width; i++) bar[i] = i < done ? '#' : '.';
  bar[width] = '\0';
  format_duration(eta_seconds(t), eta, sizeof eta);
  fprintf(stderr, "\r  epoch %d/%d [%s] %d/%d  ETA %s ", epoch + 1, t->options.epochs, bar, t->position.batch,
          t->batches_per_epoch, eta);
  fflush(stderr);
}

static void clear_progress_bar(trainer_t *t) {
  if (t->progress_bar) fprintf(stderr, "\r\033[K");
}

static int evaluate(trainer_t *t, mlp_split_kind_t split, mlp_metrics_t *m) {
  range_push("evaluate");
  int status = t->backend->evaluate(t->model, split, m);
  range_pop();
  return status;
}

static double mean_loss(const mlp_metrics_t *m) { return m->count ? m->loss_sum / (double)m->count : NAN; }
static double accuracy(const mlp_metrics_t *m) { return m->count ? (double)m->correct / (double)m->count : NAN; }

static void log_row(trainer_t *t, int epoch, const mlp_metrics_t *train, const mlp_metrics_t *test) {
  if (!t->csv) return;
  float lr = NAN;
  cuoptimGetLearningRate(t->optimizer, &lr);
  fprintf(t->csv, "%d,%lld,%.6g,%.6g,%.6g,%.6g,%.6g,%.4f\n", epoch, (long long)t->position.global_step,
          mean_loss(train), accuracy(train), mean_loss(test), accuracy(test), (double)lr, t->train_seconds);
  fflush(t->csv);
}

static int open_log(trainer_t *t) {
  if (!t->options.log_csv || !t->leader) return 0;
  int fresh = t->position.global_step == 0;
  t->csv = fopen(t->options.log_csv, fresh ? "w" : "a");
  if (!t->csv) return mlp_fail("--log-csv %s: cannot write", t->options.log_csv);
  if (!fresh) return 0;
  fprintf(t->csv, "epoch,step,loss,accuracy,test_loss,test_accuracy,learning_rate,seconds\n");
  mlp_metrics_t train, test;
  if (evaluate(t, MLP_TRAIN, &train) || evaluate(t, MLP_TEST, &test)) return -1;
  log_row(t, 0, &train, &test);
  return 0;
}

/* Adds the model's running sums to the position's (reading them waits for the GPU). Collective: in
 * a data-parallel run the sums of every rank's shards, the same on every rank. */
static int collect_running(trainer_t *t) {
  mlp_metrics_t m;
  if (t->backend->take_metrics(t->model, &m)) return -1;
  if (dp_sum_metrics(&t->world, &m)) return -1;
  t->position.running.loss_sum += m.loss_sum;
  t->position.running.correct += m.correct;
  t->position.running.count += m.count;
  return 0;
}

/* The parameters are the same on every rank: rank 0 alone evaluates them for its line. */
static int end_epoch(trainer_t *t, int epoch) {
  if (collect_running(t)) return -1;
  mlp_metrics_t train = t->position.running, test;
  memset(&test, 0, sizeof test);
  if (t->leader && evaluate(t, MLP_TEST, &test)) return -1;
  clear_progress_bar(t);
  if (!t->options.quiet && t->leader) {
    char eta[32];
    format_duration(eta_seconds(t), eta, sizeof eta);
    double rate = t->train_seconds > 0 ? (double)t->steps_run / t->train_seconds : 0.0;
    printf("epoch %3d/%d  loss %.4f  accuracy %5.1f%%  test_loss %.4f  test_accuracy %5.1f%%  %6.0f steps/s  ETA %s\n",
           epoch + 1, t->options.epochs, mean_loss(&train), 100.0 * accuracy(&train), mean_loss(&test),
           100.0 * accuracy(&test), rate, eta);
    fflush(stdout);
  }
  log_row(t, epoch + 1, &train, &test);
  t->position.epoch = epoch + 1;
  t->position.batch = 0;
  memset(&t->position.running, 0, sizeof t->position.running);
  return 0;
}

static int stop_requested(const trainer_t *t) {
  return t->options.max_steps && t->position.global_step >= t->options.max_steps;
}

/* The epochs from the current position on; returns with the position where training stopped. */
static int train(trainer_t *t) {
  const options_t *o = &t->options;
  int32_t *order = malloc((size_t)t->data.train.n * sizeof *order);
  if (!order) return mlp_fail("out of memory for the shuffle");
  int status = 0;
  for (int epoch = t->position.epoch; epoch < o->epochs && !status && !stop_requested(t); epoch++) {
    mlp_rng_t rng = mlp_rng(o->seed, 1000 + (uint64_t)epoch);
    mlp_shuffle(order, t->data.train.n, &rng);
    status = t->backend->set_order(t->model, order);
    double started = now_seconds();
    while (!status && t->position.batch < t->batches_per_epoch && !stop_requested(t)) {
      int first = t->position.batch * o->batch_size;
      int count = t->data.train.n - first < o->batch_size ? t->data.train.n - first : o->batch_size;
      status = train_step(t, first, count);
      t->position.batch++;
      t->position.global_step++;
      t->steps_run++;
      if (!status && o->checkpoint_every && t->position.global_step % o->checkpoint_every == 0) {
        t->train_seconds += now_seconds() - started;
        status = collect_running(t);
        if (!status) status = agree(t, save_checkpoint(t));
        started = now_seconds();
      }
      if (!status) draw_progress_bar(t, epoch);
    }
    if (status) break;
    status = collect_running(t); /* waits for the epoch's last step */
    t->train_seconds += now_seconds() - started;
    if (!status && t->position.batch == t->batches_per_epoch) status = end_epoch(t, epoch);
  }
  clear_progress_bar(t);
  free(order);
  return status;
}

/* FNV-1a over the parameters' bytes: equal runs give equal checksums. */
static unsigned long long checksum(const float *values, size_t count) {
  const unsigned char *bytes = (const unsigned char *)values;
  unsigned long long h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < count * sizeof *values; i++) h = (h ^ bytes[i]) * 0x100000001b3ULL;
  return h;
}

/* The message of this rank's failure, on stderr. */
static void report_failure(trainer_t *t) {
  if (t->world.world > 1)
    fprintf(stderr, "train_mlp: rank %d of %d: %s\n", t->world.rank, t->world.world, mlp_last_error());
  else
    fprintf(stderr, "train_mlp: %s\n", mlp_last_error());
  t->silent = 1;
}

/* A failure in the middle of training, where the other ranks may be waiting in a collective for
 * this one: reported, then every rank is ended (on one rank: returns -1). */
static int fail_collectively(trainer_t *t) {
  report_failure(t);
  dp_abort(&t->world);
  return -1;
}

/* cuoptim's reduction gives every rank the same bytes, so every rank must end with the same
 * parameters: the ranks compare their checksums, and a difference fails the run (on every rank;
 * rank 0 reports it). */
static int check_ranks_agree(trainer_t *t, unsigned long long mine) {
  unsigned long long *all = malloc((size_t)t->world.world * sizeof *all);
  if (!all) return mlp_fail("out of memory for %d checksums", t->world.world);
  int status = dp_gather_u64(&t->world, mine, all);
  for (int r = 1; !status && r < t->world.world; r++)
    if (all[r] != all[0])
      status = mlp_fail("the ranks' parameters differ after training: rank %d's checksum is %016llx, rank 0's "
                        "%016llx",
                        r, all[r], all[0]);
  free(all);
  return status;
}

/* The EMA (when kept) replaces the parameters, as Keras's fit does at its end; then the final
 * parameters are evaluated on both splits (by rank 0: every rank holds the same). */
static int finish(trainer_t *t) {
  if (agree(t, t->options.checkpoint ? save_checkpoint(t) : 0)) return -1;
  if (cuoptimFinalizeVariableValues(t->optimizer, t->backend->stream(t->model)) != CUOPTIM_STATUS_SUCCESS) {
    mlp_fail("%s", cuoptimGetLastErrorMessage());
    return fail_collectively(t);
  }
  if (agree(t, t->backend->get_params(t->model, t->params))) return -1;
  unsigned long long sum = checksum(t->params, t->num_params);
  if (agree(t, check_ranks_agree(t, sum))) return -1;
  mlp_metrics_t train, test;
  if (agree(t, t->leader ? evaluate(t, MLP_TRAIN, &train) || evaluate(t, MLP_TEST, &test) : 0)) return -1;
  if (!t->leader) return 0;
  if (stop_requested(t) && !t->options.quiet) printf("stopped after %lld steps (--max-steps)\n", t->options.max_steps);
  printf("final: optimizer=%s device=%s ranks=%d dtype=%s learning_rate=%g epochs=%d steps=%lld loss=%.6f "
         "accuracy=%.4f test_loss=%.6f test_accuracy=%.4f ms_per_step=%.4f seconds=%.3f checksum=%016llx\n",
         cuoptimOptimizerName(t->config.kind), t->backend->name, t->world.world, dtype_name(t->options.dtype),
         configured_learning_rate(&t->config), t->position.epoch, (long long)t->position.global_step, mean_loss(&train),
         accuracy(&train), mean_loss(&test), accuracy(&test),
         t->steps_run ? 1000.0 * t->train_seconds / (double)t->steps_run : 0.0, t->train_seconds, sum);
  return 0;
}

static void print_header(const trainer_t *t) {
  if (t->options.quiet || !t->leader) return;
  printf("train_mlp: %s (lr %g) on %s, %s, layers", cuoptimOptimizerName(t->config.kind),
         configured_learning_rate(&t->config), t->backend->name, dtype_name(t->options.dtype));
  for (int l = 0; l <= t->shape.num_layers; l++) printf("%s%d", l ? "-" : " ", t->shape.sizes[l]);
  printf(" (%zu parameters), %d training and %d test points, %d batches of %d per epoch\n", t->num_params,
         t->data.train.n, t->data.test.n, t->batches_per_epoch, t->options.batch_size);
  if (t->world.active) {
    int fewest = t->options.batch_size / t->world.world, most = fewest + (t->options.batch_size % t->world.world != 0);
    printf("data-parallel on %d rank%s: each takes its shard of every batch (", t->world.world,
           t->world.world > 1 ? "s" : "");
    if (most != fewest) printf("%d or ", fewest);
    printf("%d examples of %d), gradients summed by cuoptim over %s", most, t->options.batch_size,
           t->backend->backend == CUOPTIM_BACKEND_CUDA ? "NCCL" : "MPI");
    if (!CUOPTIM_IS_NONE(t->options.bucket_mb)) printf(" in buckets of %g MiB", t->options.bucket_mb);
    printf("%s%s\n", t->options.shard_state ? ", optimizer state sharded" : "",
           t->options.gradient_arena ? ", gradients in cuoptim's arena, each layer's reduction started as soon as "
                                       "backward has it" : "");
  } else if (t->options.gradient_arena) {
    printf("gradients in cuoptim's gradient arena\n");
  }
  if (t->options.resume)
    printf("resumed from %s at epoch %d, batch %d (%lld steps done)\n", t->options.resume, t->position.epoch + 1,
           t->position.batch, (long long)t->position.global_step);
  fflush(stdout);
}

int main(int argc, char **argv) {
  static trainer_t t;
  if (dp_start(&t.world, &argc, &argv)) {
    fprintf(stderr, "train_mlp: %s\n", mlp_last_error());
    return 1;
  }
  t.leader = t.world.rank == 0;
  /* Every rank parses the same command line: rank 0 alone speaks. */
  int parsed = parse_options(argc, argv, &t.options);
  if (parsed == 0) parsed = check_data_parallel_options(&t.options, &t.world);
  if (parsed != 0) {
    if (parsed == 1 && t.leader) usage(stdout);
    if (parsed < 0 && t.leader) fprintf(stderr, "train_mlp: %s\n", mlp_last_error());
    dp_stop(&t.world);
    return parsed == 1 ? 0 : 2;
  }
  int status = setup(&t);
  if (!status) {
    t.progress_bar = t.leader && !t.options.quiet && isatty(STDERR_FILENO);
    print_header(&t);
    t.start_wall = now_seconds();
    status = agree(&t, open_log(&t));
  }
  if (!status && train(&t)) status = fail_collectively(&t);
  if (!status) status = finish(&t);
  if (status && !t.silent) report_failure(&t);
  teardown(&t);
  dp_stop(&t.world);
  return status ? 1 : 0;
}
