/*
 * cuoptim-host-bench — what a step of the host backend costs, against the memory-bandwidth limit
 * measured in the same process (bench/README.md, "The host backend"). Public API only.
 *
 *   cuoptim-host-bench [--threads LIST] [--optimizer LIST] [--mix LIST] [--steps N] [--warmup N]
 *                      [--quick] [--json OUT.json]
 *
 * For each thread count (CUOPTIM_HOST_THREADS, set before cuoptimCreate; "all" leaves it unset:
 * the library's default, every core the process may run on):
 *   - copy: memcpy of a buffer as large as fp32 Adam's working set on the big tensor (params,
 *     grads, m, v: 16 B per parameter; half read, half written), split over that many threads;
 *     bytes = read + written; median of the timed copies;
 *   - each optimizer on each tensor mix: warm-up steps, then timed steps one by one; median, min,
 *     max; GB/s from PERF.md's byte model; % of the best copy bandwidth of the run;
 *   - for the `many` mix, the time per parameter against the big tensor's (same optimizer and
 *     thread count): the target is <= 1.5.
 * The numpy peer (bench/numpy_peer.py) runs the same Adam math on the same sizes; its --compare
 * reads both JSON files and prints the ratios.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuoptim.h"

typedef struct {
  const char *name;
  cuoptimOptimizerKind_t kind;
  int bytes; /* PERF.md byte model, float32, per parameter */
  int variant; /* 0 plain, 1 sgd momentum, 2 amsgrad, 3 global_clipnorm, 4 bf16 params and grads,
                 5 square matrices (each tensor registered as side x side: Adafactor factors it) */
} Optimizer;

static const Optimizer optimizers[] = {
    {"sgd", CUOPTIM_SGD, 12, 0},           {"sgd_momentum", CUOPTIM_SGD, 20, 1},
    {"rmsprop", CUOPTIM_RMSPROP, 20, 0},   {"adagrad", CUOPTIM_ADAGRAD, 20, 0},
    {"adadelta", CUOPTIM_ADADELTA, 28, 0}, {"adam", CUOPTIM_ADAM, 28, 0},
    {"adamw", CUOPTIM_ADAMW, 28, 0},       {"adamax", CUOPTIM_ADAMAX, 28, 0},
    {"nadam", CUOPTIM_NADAM, 28, 0},       {"lion", CUOPTIM_LION, 20, 0},
    {"lamb", CUOPTIM_LAMB, 40, 0},         {"ftrl", CUOPTIM_FTRL, 28, 0},
    {"adam_amsgrad", CUOPTIM_ADAM, 36, 2}, {"adam_gclip", CUOPTIM_ADAM, 32, 3},
    {"adam_bf16", CUOPTIM_ADAM, 28, 4},
    {"schedule_free_adamw", CUOPTIM_SCHEDULE_FREE_ADAMW, 28, 0},
    /* w, g read; w and the full velocity written; r and c (2 side floats) not counted */
    {"adafactor", CUOPTIM_ADAFACTOR, 16, 5},
};
#define NUM_OPTIMIZERS ((int)(sizeof optimizers / sizeof optimizers[0]))

typedef struct {
  const char *name;
  int tensors;
  size_t elements; /* per tensor */
} Mix;

static Mix mixes[] = {
    {"big", 1, (size_t)1 << 24},
    {"many", 10000, 4096},
    {"cached", 1, (size_t)1 << 18}, /* 4 MiB of Adam state: in the caches, the compute alone */
};
#define NUM_MIXES ((int)(sizeof mixes / sizeof mixes[0]))

static void die(const char *what) {
  fprintf(stderr, "cuoptim-host-bench: %s: %s\n", what, cuoptimGetLastErrorMessage());
  exit(1);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int compare_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef struct {
  double median, min, max;
} Timing;

static Timing summarize(double *t, int n) {
  qsort(t, (size_t)n, sizeof *t, compare_double);
  Timing r = {n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]), t[0], t[n - 1]};
  return r;
}

static int available_cpus(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  return 1;
}

/* ---- the copy reference: memcpy split over `threads` threads -------------------------------- */

typedef struct {
  char *dst;
  const char *src;
  size_t bytes;
  int reps, index, threads;
  pthread_barrier_t *barrier;
  double *times;
} CopyJob;

static void *copy_worker(void *arg) {
  CopyJob *job = arg;
  size_t per = job->bytes / (size_t)job->threads / 64 * 64;
  size_t begin = per * (size_t)job->index;
  size_t length = job->index + 1 == job->threads ? job->bytes - begin : per;
  for (int r = 0; r < job->reps; r++) {
    pthread_barrier_wait(job->barrier);
    double start = now();
    memcpy(job->dst + begin, job->src + begin, length);
    pthread_barrier_wait(job->barrier);
    if (job->index == 0) job->times[r] = now() - start;
  }
  return NULL;
}

/* GB/s (bytes read + written) of `reps` copies of `bytes`, after 3 untimed ones. */
static Timing copy_bandwidth(size_t bytes, int threads, int reps) {
  char *src = aligned_alloc(4096, bytes), *dst = aligned_alloc(4096, bytes);
  if (!src || !dst) die("out of memory (copy buffers)");
  for (size_t i = 0; i < bytes; i++) src[i] = (char)(i * 131 + 7);
  memset(dst, 1, bytes);
  int total = reps + 3;
  double *times = calloc((size_t)total, sizeof *times);
  pthread_t *ids = calloc((size_t)threads, sizeof *ids);
  CopyJob *jobs = calloc((size_t)threads, sizeof *jobs);
  pthread_barrier_t barrier;
  pthread_barrier_init(&barrier, NULL, (unsigned)threads);
  for (int t = 0; t < threads; t++) {
    jobs[t] = (CopyJob){dst, src, bytes, total, t, threads, &barrier, times};
    if (t > 0 && pthread_create(&ids[t], NULL, copy_worker, &jobs[t]) != 0) die("pthread_create");
  }
  copy_worker(&jobs[0]);
  for (int t = 1; t < threads; t++) pthread_join(ids[t], NULL);
  pthread_barrier_destroy(&barrier);
  for (int r = 0; r < reps; r++) times[r] = 2.0 * (double)bytes / times[r + 3] / 1e9;
  Timing g = summarize(times, reps);
  free(times);
  free(ids);
  free(jobs);
  free(src);
  free(dst);
  return g;
}

/* ---- one optimizer on one mix ----------------------------------------------------------------- */

static uint32_t hash(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return (uint32_t)x;
}

/* |x| in [lo, hi], random sign, never zero (PERF.md: never time on zeros). */
static float random_value(uint64_t i, float lo, float hi) {
  uint32_t h = hash(i);
  float u = (float)(h >> 8) * (1.0f / 16777216.0f);
  float x = lo + (hi - lo) * u;
  return (h & 1) ? -x : x;
}

static uint16_t to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

static void fill(void *buffer, int bf16, size_t count, uint64_t seed, float lo, float hi) {
  for (size_t i = 0; i < count; i++) {
    float x = random_value(seed + i, lo, hi);
    if (bf16)
      ((uint16_t *)buffer)[i] = to_bf16(x);
    else
      ((float *)buffer)[i] = x;
  }
}

typedef struct {
  const char *optimizer, *mix;
  int threads; /* 0: the library's default */
  size_t params;
  int bytes;
  Timing ms;
  double gbs, pct_copy, per_param_ns;
  double many_over_big; /* `many` rows: per-parameter time / the big tensor's; else 0 */
} Row;

static Row run(const Optimizer *o, const Mix *mix, int threads, int steps, int warmup) {
  if (threads > 0) {
    char text[16];
    snprintf(text, sizeof text, "%d", threads);
    setenv("CUOPTIM_HOST_THREADS", text, 1);
  } else {
    unsetenv("CUOPTIM_HOST_THREADS");
  }
  cuoptimConfig_t config;
  if (cuoptimConfigInit(&config, o->kind)) die("cuoptimConfigInit");
  if (o->variant == 1) config.momentum = 0.9;
  if (o->variant == 2) config.amsgrad = 1;
  if (o->variant == 3) config.global_clipnorm = 1.0;
  int bf16 = o->variant == 4;
  cuoptimDtype_t dtype = bf16 ? CUOPTIM_BFLOAT16 : CUOPTIM_FLOAT32;
  size_t element = bf16 ? 2 : 4;
  /* Every tensor starts on a 256-byte boundary, as in bench.cu. */
  size_t stride = (mix->elements * element + 255) / 256 * 256;
  size_t total = stride * (size_t)mix->tensors;
  char *param = aligned_alloc(256, total), *grad = aligned_alloc(256, total);
  cuoptimGradient_t *grads = calloc((size_t)mix->tensors, sizeof *grads);
  if (!param || !grad || !grads) die("out of memory (tensors)");
  cuoptimOptimizer_t opt;
  if (cuoptimCreate(&opt, &config, CUOPTIM_BACKEND_HOST, 0)) die("cuoptimCreate");
  for (int k = 0; k < mix->tensors; k++) {
    char name[32];
    snprintf(name, sizeof name, "t%d", k);
    char *p = param + stride * (size_t)k, *g = grad + stride * (size_t)k;
    fill(p, bf16, mix->elements, (uint64_t)k << 32, 0.01f, 0.1f);
    fill(g, bf16, mix->elements, ((uint64_t)k << 32) ^ 0x9e3779b97f4a7c15ull, 1e-3f, 1e-2f);
    cuoptimVariable_t v;
    int64_t side = (int64_t)sqrt((double)mix->elements), square[2] = {side, side};
    if (o->variant == 5 && (size_t)(side * side) != mix->elements) die("a mix of tensors that are not square");
    if (o->variant == 5 ? cuoptimAddVariableWithShape(opt, name, p, dtype, 2, square, &v)
                        : cuoptimAddVariable(opt, name, p, dtype, mix->elements, &v))
      die("cuoptimAddVariable");
    grads[k] = (cuoptimGradient_t){v, g, dtype};
  }
  double *times = calloc((size_t)steps, sizeof *times);
  for (int s = 0; s < warmup + steps; s++) {
    double start = now();
    if (cuoptimApplyGradients(opt, mix->tensors, grads, NULL)) die("cuoptimApplyGradients");
    if (s >= warmup) times[s - warmup] = now() - start;
  }
  int64_t iterations = 0;
  if (cuoptimGetIterations(opt, &iterations)) die("cuoptimGetIterations");
  if (iterations != warmup + steps) {
    fprintf(stderr, "CHECK FAILED: %s %s: iterations %lld, expected %d\n", o->name, mix->name,
            (long long)iterations, warmup + steps);
    exit(1);
  }
  for (size_t i = 0; i < mix->elements; i += 997) {
    float x = bf16 ? 0.0f : ((float *)param)[i];
    if (x != x || x - x != 0.0f) {
      fprintf(stderr, "CHECK FAILED: %s %s: parameter %zu is not finite\n", o->name, mix->name, i);
      exit(1);
    }
  }
  cuoptimDestroy(opt);
  Row row = {.optimizer = o->name, .mix = mix->name, .threads = threads,
             .params = mix->elements * (size_t)mix->tensors, .bytes = o->bytes, .ms = summarize(times, steps)};
  row.gbs = (double)row.params * row.bytes / row.ms.median / 1e9;
  row.per_param_ns = row.ms.median / (double)row.params * 1e9;
  row.ms.median *= 1e3;
  row.ms.min *= 1e3;
  row.ms.max *= 1e3;
  free(times);
  free(grads);
  free(param);
  free(grad);
  return row;
}

/* ---- options ---------------------------------------------------------------------------------- */

static int in_list(const char *list, const char *name) {
  if (strcmp(list, "all") == 0) return 1;
  size_t n = strlen(name);
  for (const char *p = list; *p;) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len == n && strncmp(p, name, n) == 0) return 1;
    if (!end) break;
    p = end + 1;
  }
  return 0;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: cuoptim-host-bench [--threads LIST] [--optimizer LIST] [--mix LIST] [--steps N]\n"
          "                          [--warmup N] [--quick] [--json OUT.json]\n"
          "  --threads LIST    comma-separated counts and/or \"all\" (the library's default) [1,all]\n"
          "  --optimizer LIST  sgd sgd_momentum rmsprop adagrad adadelta adam adamw adamax nadam lion\n"
          "                    lamb ftrl adam_amsgrad adam_gclip adam_bf16 schedule_free_adamw adafactor,\n"
          "                    or all [all]\n"
          "  --mix LIST        big (2^24), many (10000 x 4096), cached (2^18), or all [all]\n"
          "  --steps N         timed steps (20), --warmup N untimed steps before them (3)\n"
          "  --quick           tiny sizes and 3 steps: a smoke test, not a measurement\n");
}

int main(int argc, char **argv) {
  const char *thread_list = "1,all", *optimizer_list = "all", *mix_list = "all", *json = NULL;
  int steps = 20, warmup = 3, quick = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *value = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--help") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(a, "--quick") == 0) {
      quick = 1;
    } else if (value && strcmp(a, "--threads") == 0) {
      thread_list = value, i++;
    } else if (value && strcmp(a, "--optimizer") == 0) {
      optimizer_list = value, i++;
    } else if (value && strcmp(a, "--mix") == 0) {
      mix_list = value, i++;
    } else if (value && strcmp(a, "--steps") == 0) {
      steps = atoi(value), i++;
    } else if (value && strcmp(a, "--warmup") == 0) {
      warmup = atoi(value), i++;
    } else if (value && strcmp(a, "--json") == 0) {
      json = value, i++;
    } else {
      usage(stderr);
      return 2;
    }
  }
  if (quick) {
    mixes[0].elements = (size_t)1 << 16;
    mixes[1].tensors = 50;
    mixes[2].elements = (size_t)1 << 12;
    steps = 3;
    warmup = 1;
  }
  if (steps < 1 || warmup < 0) {
    usage(stderr);
    return 2;
  }
  int cpus = available_cpus();
  int counts[16], num_counts = 0;
  for (const char *p = thread_list; *p && num_counts < 16;) {
    counts[num_counts++] = strncmp(p, "all", 3) == 0 ? 0 : atoi(p);
    if (counts[num_counts - 1] < 0) {
      usage(stderr);
      return 2;
    }
    const char *end = strchr(p, ',');
    if (!end) break;
    p = end + 1;
  }

  char cpu_model[256] = "unknown";
  FILE *info = fopen("/proc/cpuinfo", "r");
  if (info) {
    char line[512];
    while (fgets(line, sizeof line, info))
      if (strncmp(line, "model name", 10) == 0) {
        char *colon = strchr(line, ':');
        if (colon) {
          snprintf(cpu_model, sizeof cpu_model, "%s", colon + 2);
          cpu_model[strcspn(cpu_model, "\n")] = 0;
        }
        break;
      }
    fclose(info);
  }
  printf("cuoptim-host-bench: cuoptim %d, %s, %d CPUs available%s\n", cuoptimGetVersion(), cpu_model, cpus,
         quick ? "; quick sizes: not a measurement" : "");

  /* The copy reference: Adam's working set on the big tensor, 16 B per parameter. */
  size_t copy_bytes = mixes[0].elements * 8;
  double copy_best = 0.0;
  Timing copy[16];
  for (int c = 0; c < num_counts; c++) {
    int t = counts[c] ? counts[c] : cpus;
    copy[c] = copy_bandwidth(copy_bytes, t, quick ? 3 : 20);
    printf("copy: memcpy %zu MiB -> %zu MiB, %d thread%s: %.1f GB/s (min %.1f, max %.1f)\n", copy_bytes >> 20,
           copy_bytes >> 20, t, t == 1 ? "" : "s", copy[c].median, copy[c].min, copy[c].max);
    if (copy[c].median > copy_best) copy_best = copy[c].median;
  }

  Row rows[1024];
  int num_rows = 0;
  for (int c = 0; c < num_counts; c++) {
    printf("\nthreads %s%d%s\n", counts[c] ? "" : "all (", counts[c] ? counts[c] : cpus, counts[c] ? "" : ")");
    printf("%-19s %-7s %11s %4s | %9s %9s %9s | %7s %6s | %8s %9s\n", "optimizer", "mix", "params", "B/p",
           "median ms", "min", "max", "GB/s", "%copy", "ns/param", "many/big");
    for (int m = 0; m < NUM_MIXES; m++) {
      if (!in_list(mix_list, mixes[m].name)) continue;
      for (int o = 0; o < NUM_OPTIMIZERS; o++) {
        if (!in_list(optimizer_list, optimizers[o].name)) continue;
        Row r = run(&optimizers[o], &mixes[m], counts[c], steps, warmup);
        r.pct_copy = 100.0 * r.gbs / copy_best;
        for (int j = 0; j < num_rows; j++)
          if (strcmp(mixes[m].name, "many") == 0 && strcmp(rows[j].mix, "big") == 0 &&
              strcmp(rows[j].optimizer, r.optimizer) == 0 && rows[j].threads == r.threads)
            r.many_over_big = r.per_param_ns / rows[j].per_param_ns;
        printf("%-19s %-7s %11zu %4d | %9.3f %9.3f %9.3f | %7.2f %5.1f%% | %8.3f", r.optimizer, r.mix, r.params,
               r.bytes, r.ms.median, r.ms.min, r.ms.max, r.gbs, r.pct_copy, r.per_param_ns);
        if (r.many_over_big > 0)
          printf(" %9.2f\n", r.many_over_big);
        else
          printf(" %9s\n", "");
        fflush(stdout);
        if (num_rows < 1024) rows[num_rows++] = r;
      }
    }
  }

  if (json) {
    FILE *f = fopen(json, "w");
    if (!f) {
      perror(json);
      return 1;
    }
    fprintf(f, "{\n  \"cpu\": \"%s\",\n  \"cpus\": %d,\n  \"cuoptim_version\": %d,\n  \"quick\": %s,\n", cpu_model,
            cpus, cuoptimGetVersion(), quick ? "true" : "false");
    fprintf(f, "  \"steps\": %d,\n  \"warmup\": %d,\n  \"copy_bytes\": %zu,\n  \"copy_best_gbs\": %.4f,\n", steps,
            warmup, copy_bytes, copy_best);
    fprintf(f, "  \"mixes\": {");
    for (int m = 0; m < NUM_MIXES; m++)
      fprintf(f, "%s\"%s\": [%d, %zu]", m ? ", " : "", mixes[m].name, mixes[m].tensors, mixes[m].elements);
    fprintf(f, "},\n  \"copy\": [");
    for (int c = 0; c < num_counts; c++)
      fprintf(f, "%s{\"threads\": %d, \"gbs\": %.4f, \"min\": %.4f, \"max\": %.4f}", c ? ", " : "",
              counts[c] ? counts[c] : cpus, copy[c].median, copy[c].min, copy[c].max);
    fprintf(f, "],\n  \"rows\": [\n");
    for (int j = 0; j < num_rows; j++) {
      Row *r = &rows[j];
      fprintf(f,
              "    {\"optimizer\": \"%s\", \"mix\": \"%s\", \"threads\": %d, \"default_threads\": %s, "
              "\"params\": %zu, \"bytes_per_param\": %d, \"ms\": %.6f, \"min_ms\": %.6f, \"max_ms\": %.6f, "
              "\"gbs\": %.4f, \"pct_copy\": %.3f, \"ns_per_param\": %.6f, \"many_over_big\": %.4f}%s\n",
              r->optimizer, r->mix, r->threads ? r->threads : cpus, r->threads ? "false" : "true", r->params,
              r->bytes, r->ms.median, r->ms.min, r->ms.max, r->gbs, r->pct_copy, r->per_param_ns, r->many_over_big,
              j + 1 < num_rows ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    fclose(f);
  }
  return 0;
}
