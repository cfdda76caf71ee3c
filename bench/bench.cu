/*
 * bench.cu — cuoptim-bench: what one optimizer step costs on the GPU.
 *
 * For each tensor mix and optimizer: the GPU time of an eager step (CUDA events around each
 * cuoptimApplyGradients, after warm-up; median, min, max), the effective bandwidth from the byte
 * model of ../shared/PERF.md (bytes per parameter / median time), the share of a device-to-device
 * copy's bandwidth measured in the same run, the byte floor (bytes / copy bandwidth), and the same
 * for a CUDA graph of one captured step, plus the host time of an eager call and of a graph
 * launch. bench/README.md explains the output; the method is PERF.md's ("Method").
 *
 * Only the public API (cuoptim.h) and the CUDA runtime are used; the one kernel here fills
 * buffers with non-zero pseudo-random values (a counter hash, no cuRAND).
 *
 * Exit status: 0 all measured; 1 a cuoptim or CUDA error (the message names it), a failed graph
 * capture or a failed check (iteration count, non-finite parameters); 2 no usable GPU or bad usage.
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuoptim.h"
#include "launch_syntax.h"

#define EXIT_FAILED 1
#define EXIT_NO_GPU 2
#define EXIT_USAGE 2

#define MAX_MIXES 3
#define MAX_RESULTS 16
#define TEXT 1024

/* Caller buffers are carved from one allocation, each tensor at a 256-byte boundary, as a caching
 * allocator hands them out (cuoptim's own slots are 256-byte aligned too). */
#define SLAB_ALIGN 256
/* The copy reference: >= 1 GiB so neither L2 (50-60 MB) nor launch overhead is measured. */
#define COPY_BYTES ((size_t)1 << 30)
#define COPY_BYTES_QUICK ((size_t)64 << 20)
/* Graph replays run before the timed ones (first launches upload the graph). */
#define GRAPH_WARM_REPLAYS 2
/* Host time of graph launches: bursts of this many launches, then a synchronize (not timed), so
 * the launch queue never fills and blocks the host. */
#define LAUNCH_BURST 16
/* Device memory left free beyond what a run needs (cuoptim's tables, CUDA's own use). */
#define MEMORY_MARGIN ((size_t)512 << 20)

/* ---- options -------------------------------------------------------------------------------- */

typedef struct {
  const char *name;
  cuoptimOptimizerKind_t kind;
  double momentum; /* SGD's momentum; < 0 keeps Keras's default */
  int amsgrad;
  int slots;       /* float32 state arrays per parameter with Keras's defaults (Adafactor and Muon:
                      the most a variable has; their byte model goes by each tensor's shape) */
  int lamb;        /* two passes: w, m and v are read again in pass 2 */
  int in_all;
} OptSpec;

/* Keras's defaults for each (cuoptimConfigInit); only what the name says is changed. */
static const OptSpec kOptimizers[] = {
    {"sgd", CUOPTIM_SGD, 0.0, 0, 0, 0, 1},
    {"sgd_momentum", CUOPTIM_SGD, 0.9, 0, 1, 0, 1},
    {"rmsprop", CUOPTIM_RMSPROP, -1.0, 0, 1, 0, 1},
    {"adagrad", CUOPTIM_ADAGRAD, -1.0, 0, 1, 0, 1},
    {"adadelta", CUOPTIM_ADADELTA, -1.0, 0, 2, 0, 1},
    {"adam", CUOPTIM_ADAM, -1.0, 0, 2, 0, 1},
    {"adamw", CUOPTIM_ADAMW, -1.0, 0, 2, 0, 1},
    {"adamax", CUOPTIM_ADAMAX, -1.0, 0, 2, 0, 1},
    {"nadam", CUOPTIM_NADAM, -1.0, 0, 2, 0, 1},
    {"lion", CUOPTIM_LION, -1.0, 0, 1, 0, 1},
    {"lamb", CUOPTIM_LAMB, -1.0, 0, 2, 1, 1},
    {"ftrl", CUOPTIM_FTRL, -1.0, 0, 2, 0, 1},
    {"adam_amsgrad", CUOPTIM_ADAM, -1.0, 1, 3, 0, 0},
    {"schedule_free_adamw", CUOPTIM_SCHEDULE_FREE_ADAMW, -1.0, 0, 2, 0, 1},
    {"adafactor", CUOPTIM_ADAFACTOR, -1.0, 0, 1, 0, 1},
    {"muon", CUOPTIM_MUON, -1.0, 0, 2, 0, 1},
};
#define NUM_OPTIMIZERS ((int)(sizeof kOptimizers / sizeof kOptimizers[0]))

static const char *const kMixNames[MAX_MIXES] = {"big", "transformer", "many"};

typedef struct {
  int optimizers[NUM_OPTIMIZERS]; /* selected, in table order */
  int num_optimizers;
  int mixes[MAX_MIXES];
  int num_mixes;
  int steps, warmup;
  int steps_set, warmup_set;
  int bf16;
  int quick;
  int device;
  int layers;             /* transformer mix */
  double global_clipnorm; /* NaN = off */
  const char *json;
  char command[TEXT];
} Options;

static Options g_opt;

/* ---- results -------------------------------------------------------------------------------- */

typedef struct {
  double median, min, max, mean;
  int n;
} Stats;

typedef struct {
  size_t bytes; /* of one copy; bandwidth counts 2x (read + write) */
  Stats ms;
  double gbps;  /* 2 * bytes / median */
} CopyResult;

typedef struct {
  const OptSpec *spec;
  const char *keras_class;
  int skipped;
  char message[TEXT];
  double bytes_per_param, bytes_per_step;
  double newton_schulz_flops;     /* per step (Muon), beside the bytes */
  double state_floats_model;      /* float32 state elements the byte model assumes */
  double state_floats_measured;   /* from cuoptim's state list; -1 when unknown */
  Stats eager_ms, eager_host_us;
  int graph_ok;
  char capture_mode[16];
  char capture_notes[TEXT];
  Stats graph_ms;
  double graph_host_us; /* mean wall-clock time of one cudaGraphLaunch call */
  int graph_host_launches;
  long long iterations_expected, iterations;
  int finite;
  int complete; /* 0 when the run stopped in the middle of this optimizer */
} Result;

typedef struct {
  const char *name;
  char description[512];
  int tensors;
  size_t elements;
  int layers;
  int skipped;
  char message[TEXT];
  int num_results;
  Result results[MAX_RESULTS];
} MixReport;

typedef struct {
  char gpu[256];
  int cc_major, cc_minor, sm_count, l2_bytes;
  size_t memory_bytes;
  int driver_version, runtime_version;
  char driver_release[64];
  char date[32];
  CopyResult copy_start, copy_end;
  int have_copy_start, have_copy_end;
  int num_mixes;
  MixReport mixes[MAX_MIXES];
  int failures;
  char error[TEXT];
} Report;

static Report g_report;

static void write_json(const char *path);

static void fatal(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void fatal(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_report.error, sizeof g_report.error, fmt, ap);
  va_end(ap);
  fflush(stdout);
  fprintf(stderr, "cuoptim-bench: %s\n", g_report.error);
  if (g_opt.json) write_json(g_opt.json);
  exit(code);
}

#define CUDA_OK(call)                                                                                   \
  do {                                                                                                  \
    cudaError_t err_ = (call);                                                                          \
    if (err_ != cudaSuccess)                                                                            \
      fatal(EXIT_FAILED, "%s failed at %s:%d: %s (%s)", #call, __FILE__, __LINE__, cudaGetErrorString(err_), \
            cudaGetErrorName(err_));                                                                    \
  } while (0)

#define CUOPTIM_OK(call)                                                                                \
  do {                                                                                                  \
    cuoptimStatus_t status_ = (call);                                                                   \
    if (status_ != CUOPTIM_STATUS_SUCCESS)                                                              \
      fatal(EXIT_FAILED, "%s failed: %s: %s", #call, cuoptimGetStatusString(status_),                  \
            cuoptimGetLastErrorMessage());                                                              \
  } while (0)

/* ---- small helpers ---------------------------------------------------------------------------- */

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : (x > y ? 1 : 0);
}

static Stats stats_of(const double *values, int n) {
  Stats s;
  memset(&s, 0, sizeof s);
  s.n = n;
  if (n <= 0) {
    s.median = s.min = s.max = s.mean = NAN;
    return s;
  }
  double *sorted = (double *)malloc((size_t)n * sizeof *sorted);
  if (!sorted) fatal(EXIT_FAILED, "out of host memory");
  memcpy(sorted, values, (size_t)n * sizeof *sorted);
  qsort(sorted, (size_t)n, sizeof *sorted, compare_doubles);
  s.median = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
  s.min = sorted[0];
  s.max = sorted[n - 1];
  double sum = 0.0;
  for (int i = 0; i < n; i++) sum += sorted[i];
  s.mean = sum / n;
  free(sorted);
  return s;
}

static size_t round_up(size_t x, size_t to) { return (x + to - 1) / to * to; }

static double gib(size_t bytes) { return (double)bytes / (double)((size_t)1 << 30); }

static double gbps_of(double bytes, double ms) { return ms > 0 ? bytes / (ms * 1e-3) / 1e9 : NAN; }

/* ---- tensor mixes ----------------------------------------------------------------------------- */

typedef struct {
  char name[64];
  size_t count;
  int rank;       /* 1 or 2 (Keras's shape: a bias or norm, a kernel or embedding table) */
  int64_t dims[2];
  size_t offset; /* elements from the start of the slab */
} Tensor;

typedef struct {
  int n, capacity;
  Tensor *t;
  size_t total;
  size_t slab_elems;
  int layers;
  char description[512];
} Mix;

/* Whether Muon puts a tensor on its Newton-Schulz path (include/cuoptim.h, CUOPTIM_MUON: rank 2,
 * and, with Keras's default exclude_embeddings, no "embedding" in the name). */
static int muon_matrix(const Tensor *t) { return t->rank == 2 && !strstr(t->name, "embedding"); }

/* The float32 state elements cuoptim holds for one tensor, from Keras's state layout: `slots`
 * arrays of the tensor's size; Adafactor's velocity plus, for rank >= 2, its row and column
 * accumulators; Muon's momentum on its matrix path, momentum and velocity on its AdamW path. */
static double state_floats(const OptSpec *o, const Tensor *t) {
  double n = (double)t->count;
  if (o->kind == CUOPTIM_ADAFACTOR)
    return t->rank >= 2 ? n + (double)(t->dims[0] + t->dims[1]) : n;
  if (o->kind == CUOPTIM_MUON) return muon_matrix(t) ? n : 2.0 * n;
  return n * o->slots;
}

/* Bytes moved by one step on one tensor, PERF.md's byte model: each input read once, each output
 * written once. The float32 working copy (the parameter, or the fp32 master of a bfloat16
 * parameter) is read and written; a bfloat16 parameter is only written (cuoptim updates the master
 * and writes the half copy in the same pass); each float32 slot is read and written; Lamb's second
 * pass reads w, m and v again; global clipping adds one read of the gradient (the inspect pass).
 * Adafactor on rank >= 2: the full velocity is only written (it is r / mean(r) x c), r and c are
 * read and written; Muon's matrices: momentum read and written, plus the Newton-Schulz products,
 * which are counted in floating-point operations (newton_schulz_flops), not bytes. */
static double tensor_bytes(const OptSpec *o, const Tensor *t, int bf16, int clip) {
  double n = (double)t->count;
  double grad = bf16 ? 2.0 : 4.0;
  double param = bf16 ? 4.0 + 4.0 + 2.0 : 4.0 + 4.0;
  double bytes = (grad + param) * n;
  if (o->kind == CUOPTIM_ADAFACTOR && t->rank >= 2)
    bytes += 4.0 * n + 8.0 * (double)(t->dims[0] + t->dims[1]);
  else
    bytes += 8.0 * state_floats(o, t);
  if (o->lamb) bytes += 12.0 * n;
  if (clip) bytes += grad * n;
  return bytes;
}

/* Floating-point operations of Muon's Newton-Schulz iterations on one tensor (0 off its matrix
 * path): per iteration, with X of r x c (r <= c), A = X X^T (2 r^2 c), B = b A + c A A (2 r^3),
 * X = a X + B X (2 r^2 c); Keras's default of 5 iterations. */
static double newton_schulz_flops(const OptSpec *o, const Tensor *t) {
  if (o->kind != CUOPTIM_MUON || !muon_matrix(t)) return 0.0;
  double r = (double)(t->dims[0] < t->dims[1] ? t->dims[0] : t->dims[1]);
  double c = (double)(t->dims[0] < t->dims[1] ? t->dims[1] : t->dims[0]);
  return 5.0 * (4.0 * r * r * c + 2.0 * r * r * r);
}

static void mix_add_shaped(Mix *m, const char *name, int rank, size_t rows, size_t cols) {
  size_t count = rank == 2 ? rows * cols : rows;
  if (m->n == m->capacity) {
    m->capacity = m->capacity ? 2 * m->capacity : 64;
    m->t = (Tensor *)realloc(m->t, (size_t)m->capacity * sizeof *m->t);
    if (!m->t) fatal(EXIT_FAILED, "out of host memory");
  }
  Tensor *t = &m->t[m->n++];
  snprintf(t->name, sizeof t->name, "%s", name);
  t->count = count;
  t->rank = rank;
  t->dims[0] = (int64_t)rows;
  t->dims[1] = rank == 2 ? (int64_t)cols : 1;
  m->total += count;
}

static void mix_add(Mix *m, const char *name, size_t count) { mix_add_shaped(m, name, 1, count, 1); }
static void mix_add_matrix(Mix *m, const char *name, size_t rows, size_t cols) {
  mix_add_shaped(m, name, 2, rows, cols);
}

/* big: one tensor of 2^28 elements. transformer: GPT-2-XL shapes (vocabulary 50257, width 1600,
 * context 1024) with `layers` blocks (30 by default: 364 tensors, 1,004,276,800 elements).
 * many: 10,000 tensors of 4096 elements. bench/torch_peer.py builds the same lists. */
static void build_mix(Mix *m, const char *name, int quick, int layers) {
  memset(m, 0, sizeof *m);
  char label[64];
  if (strcmp(name, "big") == 0) {
    size_t count = quick ? (size_t)1 << 20 : (size_t)1 << 28;
    mix_add(m, "big.kernel", count);
    snprintf(m->description, sizeof m->description, "one tensor of 2^%d elements", quick ? 20 : 28);
  } else if (strcmp(name, "transformer") == 0) {
    size_t vocab = quick ? 1000 : 50257, d = quick ? 64 : 1600, context = quick ? 64 : 1024;
    int blocks = quick ? 2 : layers;
    m->layers = blocks;
    mix_add_matrix(m, "wte.embeddings", vocab, d);
    mix_add_matrix(m, "wpe.embeddings", context, d);
    for (int l = 0; l < blocks; l++) {
      static const char *const parts[] = {"ln_1.gamma", "ln_1.beta", "attn.c_attn.kernel", "attn.c_attn.bias",
                                          "attn.c_proj.kernel", "attn.c_proj.bias", "ln_2.gamma", "ln_2.beta",
                                          "mlp.c_fc.kernel", "mlp.c_fc.bias", "mlp.c_proj.kernel", "mlp.c_proj.bias"};
      /* Keras's shapes: a Dense kernel is (inputs, outputs); biases and norms are vectors. */
      const size_t rows[] = {d, d, d, 3 * d, d, d, d, d, d, 4 * d, 4 * d, d};
      const size_t cols[] = {0, 0, 3 * d, 0, d, 0, 0, 0, 4 * d, 0, d, 0};
      for (int k = 0; k < 12; k++) {
        snprintf(label, sizeof label, "h%d.%s", l, parts[k]);
        if (cols[k])
          mix_add_matrix(m, label, rows[k], cols[k]);
        else
          mix_add(m, label, rows[k]);
      }
    }
    mix_add(m, "ln_f.gamma", d);
    mix_add(m, "ln_f.beta", d);
    snprintf(m->description, sizeof m->description,
             "transformer-like: embedding %zux%zu, positions %zux%zu, %d blocks x {qkv %zux%zu, proj %zux%zu, "
             "fc %zux%zu, fc2 %zux%zu, 2 layer norms, 4 biases}, final layer norm",
             vocab, d, context, d, blocks, d, 3 * d, d, d, d, 4 * d, 4 * d, d);
  } else {
    int n = quick ? 100 : 10000;
    for (int i = 0; i < n; i++) {
      snprintf(label, sizeof label, "t%05d.kernel", i);
      mix_add(m, label, 4096);
    }
    snprintf(m->description, sizeof m->description, "%d tensors of 4096 elements", n);
  }
}

static void layout_slab(Mix *m, size_t element_size) {
  size_t align = SLAB_ALIGN / element_size, offset = 0;
  for (int i = 0; i < m->n; i++) {
    m->t[i].offset = offset;
    offset = round_up(offset + m->t[i].count, align);
  }
  m->slab_elems = offset;
}

/* ---- device fill ---------------------------------------------------------------------------- */

__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/* Element i gets a random sign and a magnitude uniform in [low, high): never zero, finite. */
__device__ __forceinline__ float fill_value(size_t i, uint64_t seed, float low, float high) {
  uint64_t h = splitmix64(seed * 0x100000001b3ULL ^ splitmix64(i));
  float u = (float)(h >> 40) * (1.0f / 16777216.0f);
  float magnitude = low + (high - low) * u;
  return (h & 1) ? magnitude : -magnitude;
}

__global__ void fill_float32_kernel(float *out, size_t n, uint64_t seed, float low, float high) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = fill_value(i, seed, low, high);
}

__global__ void fill_bfloat16_kernel(__nv_bfloat16 *out, size_t n, uint64_t seed, float low, float high) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = __float2bfloat16_rn(fill_value(i, seed, low, high));
}

static void fill(void *buffer, size_t n, int bf16, uint64_t seed, float low, float high, cudaStream_t stream) {
  const int threads = 256;
  size_t wanted = (n + threads - 1) / threads;
  unsigned blocks = (unsigned)(wanted < 65536 ? (wanted ? wanted : 1) : 65536);
  if (bf16)
    CUOPTIM_LAUNCH(fill_bfloat16_kernel, blocks, threads, stream, (__nv_bfloat16 *)buffer, n, seed, low, high);
  else
    CUOPTIM_LAUNCH(fill_float32_kernel, blocks, threads, stream, (float *)buffer, n, seed, low, high);
  CUDA_OK(cudaGetLastError());
}

/* Parameters: |x| in [0.01, 0.1]. Gradients: |g| in [1e-3, 1e-2], a realistic scale. */
#define PARAM_SEED 1
#define GRAD_SEED 2

/* ---- the copy reference ----------------------------------------------------------------------- */

static CopyResult measure_copy(size_t bytes, int reps, cudaStream_t stream) {
  CopyResult c;
  memset(&c, 0, sizeof c);
  c.bytes = bytes;
  void *src = NULL, *dst = NULL;
  CUDA_OK(cudaMalloc(&src, bytes));
  CUDA_OK(cudaMalloc(&dst, bytes));
  fill(src, bytes / sizeof(float), 0, 7, 0.5f, 2.0f, stream);
  CUDA_OK(cudaMemsetAsync(dst, 0x3c, bytes, stream));
  cudaEvent_t *start = (cudaEvent_t *)calloc((size_t)reps, sizeof *start);
  cudaEvent_t *stop = (cudaEvent_t *)calloc((size_t)reps, sizeof *stop);
  double *ms = (double *)calloc((size_t)reps, sizeof *ms);
  if (!start || !stop || !ms) fatal(EXIT_FAILED, "out of host memory");
  for (int i = 0; i < reps; i++) {
    CUDA_OK(cudaEventCreate(&start[i]));
    CUDA_OK(cudaEventCreate(&stop[i]));
  }
  for (int i = 0; i < 3; i++) CUDA_OK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
  for (int i = 0; i < reps; i++) {
    CUDA_OK(cudaEventRecord(start[i], stream));
    CUDA_OK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
    CUDA_OK(cudaEventRecord(stop[i], stream));
  }
  CUDA_OK(cudaStreamSynchronize(stream));
  for (int i = 0; i < reps; i++) {
    float t = 0.0f;
    CUDA_OK(cudaEventElapsedTime(&t, start[i], stop[i]));
    ms[i] = t;
    CUDA_OK(cudaEventDestroy(start[i]));
    CUDA_OK(cudaEventDestroy(stop[i]));
  }
  c.ms = stats_of(ms, reps);
  c.gbps = gbps_of(2.0 * (double)bytes, c.ms.median);
  free(start);
  free(stop);
  free(ms);
  CUDA_OK(cudaFree(src));
  CUDA_OK(cudaFree(dst));
  return c;
}

/* ---- one optimizer on one mix ------------------------------------------------------------------ */

static void append_note(char *notes, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void append_note(char *notes, size_t size, const char *fmt, ...) {
  size_t used = strlen(notes);
  if (used + 3 >= size) return;
  if (used) {
    strcpy(notes + used, "; ");
    used += 2;
  }
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(notes + used, size - used, fmt, ap);
  va_end(ap);
}

/* Captures one step into a graph: first in global mode (what a training loop's capture uses), then
 * relaxed. Returns 1 with *exec set, 0 when every mode failed (the notes say why). */
static int capture_step(cuoptimOptimizer_t opt, int n, const cuoptimGradient_t *grads, cudaStream_t stream,
                        cudaGraphExec_t *exec, Result *r) {
  static const struct {
    cudaStreamCaptureMode mode;
    const char *name;
  } modes[] = {{cudaStreamCaptureModeGlobal, "global"}, {cudaStreamCaptureModeRelaxed, "relaxed"}};
  for (size_t k = 0; k < sizeof modes / sizeof modes[0]; k++) {
    cudaGraph_t graph = NULL;
    cudaError_t err = cudaStreamBeginCapture(stream, modes[k].mode);
    if (err != cudaSuccess) {
      append_note(r->capture_notes, sizeof r->capture_notes, "%s: cudaStreamBeginCapture: %s", modes[k].name,
                  cudaGetErrorString(err));
      (void)cudaGetLastError();
      continue;
    }
    cuoptimStatus_t status = cuoptimApplyGradients(opt, n, grads, (cuoptimStream_t)stream);
    char message[TEXT] = "";
    if (status != CUOPTIM_STATUS_SUCCESS) snprintf(message, sizeof message, "%s", cuoptimGetLastErrorMessage());
    err = cudaStreamEndCapture(stream, &graph);
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &capturing) == cudaSuccess && capturing != cudaStreamCaptureStatusNone)
      (void)cudaStreamEndCapture(stream, &graph);
    if (status != CUOPTIM_STATUS_SUCCESS || err != cudaSuccess || !graph) {
      if (status != CUOPTIM_STATUS_SUCCESS)
        append_note(r->capture_notes, sizeof r->capture_notes, "%s: cuoptimApplyGradients during capture: %s: %s",
                    modes[k].name, cuoptimGetStatusString(status), message);
      else
        append_note(r->capture_notes, sizeof r->capture_notes, "%s: cudaStreamEndCapture: %s", modes[k].name,
                    cudaGetErrorString(err));
      if (graph) cudaGraphDestroy(graph);
      (void)cudaGetLastError();
      continue;
    }
    err = cudaGraphInstantiateWithFlags(exec, graph, 0);
    cudaGraphDestroy(graph);
    if (err != cudaSuccess) {
      append_note(r->capture_notes, sizeof r->capture_notes, "%s: cudaGraphInstantiate: %s", modes[k].name,
                  cudaGetErrorString(err));
      (void)cudaGetLastError();
      continue;
    }
    snprintf(r->capture_mode, sizeof r->capture_mode, "%s", modes[k].name);
    return 1;
  }
  return 0;
}

/* Events around each timed step (start[i], stop[i]) and the host time of each call (host_us[i]). */
typedef struct {
  cudaEvent_t *start, *stop;
  double *ms, *host_us;
  int capacity;
} Timers;

static void timers_init(Timers *t, int capacity) {
  t->capacity = capacity;
  t->start = (cudaEvent_t *)calloc((size_t)capacity, sizeof *t->start);
  t->stop = (cudaEvent_t *)calloc((size_t)capacity, sizeof *t->stop);
  t->ms = (double *)calloc((size_t)capacity, sizeof *t->ms);
  t->host_us = (double *)calloc((size_t)capacity, sizeof *t->host_us);
  if (!t->start || !t->stop || !t->ms || !t->host_us) fatal(EXIT_FAILED, "out of host memory");
  for (int i = 0; i < capacity; i++) {
    CUDA_OK(cudaEventCreate(&t->start[i]));
    CUDA_OK(cudaEventCreate(&t->stop[i]));
  }
}

static void timers_collect(Timers *t, int count) {
  for (int i = 0; i < count; i++) {
    float ms = 0.0f;
    CUDA_OK(cudaEventElapsedTime(&ms, t->start[i], t->stop[i]));
    t->ms[i] = ms;
  }
}

static void timers_free(Timers *t) {
  for (int i = 0; i < t->capacity; i++) {
    CUDA_OK(cudaEventDestroy(t->start[i]));
    CUDA_OK(cudaEventDestroy(t->stop[i]));
  }
  free(t->start);
  free(t->stop);
  free(t->ms);
  free(t->host_us);
}

/* Checks that the first elements of tensor `t` are finite (a sample: enough to catch a NaN step). */
static int sample_finite(const void *slab, const Tensor *t, int bf16) {
  size_t k = t->count < 4096 ? t->count : 4096;
  size_t element = bf16 ? 2 : 4;
  unsigned char *host = (unsigned char *)malloc(k * element);
  if (!host) fatal(EXIT_FAILED, "out of host memory");
  CUDA_OK(cudaMemcpy(host, (const unsigned char *)slab + t->offset * element, k * element, cudaMemcpyDeviceToHost));
  int finite = 1;
  for (size_t i = 0; i < k && finite; i++) {
    float x;
    if (bf16) {
      uint16_t h;
      memcpy(&h, host + 2 * i, 2);
      uint32_t bits = (uint32_t)h << 16;
      memcpy(&x, &bits, 4);
    } else {
      memcpy(&x, host + 4 * i, 4);
    }
    finite = isfinite(x);
  }
  free(host);
  return finite;
}

/* Float32 state elements per parameter according to cuoptim's own state list (a check of the
 * byte model's slot count): every entry but the scalars, over the parameter count. */
/* The float32 state elements in cuoptim's state list (arrays of more than one element: counters,
 * the learning rate and Adafactor's scalar placeholders aside). */
static double measured_state_floats(cuoptimOptimizer_t opt) {
  int count = 0;
  CUOPTIM_OK(cuoptimGetWeightCount(opt, &count));
  size_t elements = 0;
  for (int i = 0; i < count; i++) {
    cuoptimWeightInfo_t info;
    CUOPTIM_OK(cuoptimGetWeightInfo(opt, i, &info));
    if (info.count > 1 && !info.is_integer) elements += info.count;
  }
  return (double)elements;
}

static void print_row(const Result *r, const CopyResult *copy) {
  if (r->skipped) {
    printf("  %-19s skipped: %s\n", r->spec->name, r->message);
    return;
  }
  double floor_ms = r->bytes_per_step / (copy->gbps * 1e9) * 1e3;
  double eager_gbps = gbps_of(r->bytes_per_step, r->eager_ms.median);
  printf("  %-19s %4.0f %8.3f | %9.3f %9.3f %9.3f %8.1f %6.1f%% %6.2f |", r->spec->name, r->bytes_per_param,
         r->bytes_per_step / 1e9, r->eager_ms.median, r->eager_ms.min, r->eager_ms.max, eager_gbps,
         100.0 * eager_gbps / copy->gbps, r->eager_ms.median / floor_ms);
  if (r->graph_ok) {
    double graph_gbps = gbps_of(r->bytes_per_step, r->graph_ms.median);
    printf(" %9.3f %8.1f %6.1f%% %6.2f |", r->graph_ms.median, graph_gbps, 100.0 * graph_gbps / copy->gbps,
           r->graph_ms.median / floor_ms);
  } else {
    printf(" %9s %8s %7s %6s |", "failed", "-", "-", "-");
  }
  printf(" %9.1f %7.2f", r->eager_host_us.median, r->graph_ok ? r->graph_host_us : NAN);
  if (r->iterations != r->iterations_expected || !r->finite) printf("  CHECK FAILED");
  printf("\n");
  if (r->newton_schulz_flops > 0)
    printf("  %-19s Newton-Schulz: %.3f GFLOP a step (5 iterations), %.2f TFLOP/s at the eager median\n", "",
           r->newton_schulz_flops / 1e9, r->newton_schulz_flops / (r->eager_ms.median * 1e-3) / 1e12);
  if (r->capture_notes[0]) printf("  %-19s graph capture: %s\n", "", r->capture_notes);
  if (r->message[0]) printf("  %-19s note: %s\n", "", r->message);
  fflush(stdout);
}

static void run_optimizer(const OptSpec *o, const Mix *m, void *params, void *grads_slab, cudaStream_t stream,
                          MixReport *mr) {
  const int bf16 = g_opt.bf16;
  const cuoptimDtype_t dtype = bf16 ? CUOPTIM_BFLOAT16 : CUOPTIM_FLOAT32;
  const size_t element = bf16 ? 2 : 4;
  Result *r = &mr->results[mr->num_results++];
  memset(r, 0, sizeof *r);
  r->spec = o;
  r->keras_class = cuoptimOptimizerName(o->kind);
  r->state_floats_measured = -1;
  r->finite = 1;
  /* cuoptim's arena: each slot (and the fp32 master of a bfloat16 parameter) per variable. */
  size_t arena = 0;
  for (int i = 0; i < m->n; i++) {
    const Tensor *t = &m->t[i];
    r->bytes_per_step += tensor_bytes(o, t, bf16, !isnan(g_opt.global_clipnorm));
    r->newton_schulz_flops += newton_schulz_flops(o, t);
    r->state_floats_model += state_floats(o, t);
    arena += round_up((size_t)state_floats(o, t) * 4, 256) + (bf16 ? round_up(t->count * 4, 256) : 0);
  }
  r->bytes_per_param = r->bytes_per_step / (double)m->total;
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_OK(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (arena + MEMORY_MARGIN > free_bytes) {
    r->skipped = 1;
    snprintf(r->message, sizeof r->message, "the optimizer state needs %.2f GiB, %.2f GiB free", gib(arena),
             gib(free_bytes));
    r->complete = 1;
    print_row(r, &g_report.copy_start);
    return;
  }

  /* Every optimizer starts from the same parameters; the gradients stay as filled. */
  fill(params, m->slab_elems, bf16, PARAM_SEED, 0.01f, 0.1f, stream);
  CUDA_OK(cudaStreamSynchronize(stream));

  cuoptimConfig_t config;
  CUOPTIM_OK(cuoptimConfigInit(&config, o->kind));
  if (o->momentum >= 0.0) config.momentum = o->momentum;
  config.amsgrad = o->amsgrad;
  if (!isnan(g_opt.global_clipnorm)) config.global_clipnorm = g_opt.global_clipnorm;
  cuoptimOptimizer_t opt = NULL;
  CUOPTIM_OK(cuoptimCreate(&opt, &config, CUOPTIM_BACKEND_CUDA, g_opt.device));

  cuoptimGradient_t *grads = (cuoptimGradient_t *)calloc((size_t)m->n, sizeof *grads);
  if (!grads) fatal(EXIT_FAILED, "out of host memory");
  for (int i = 0; i < m->n; i++) {
    cuoptimVariable_t v = 0;
    CUOPTIM_OK(cuoptimAddVariableWithShape(opt, m->t[i].name, (unsigned char *)params + m->t[i].offset * element,
                                           dtype, m->t[i].rank, m->t[i].dims, &v));
    grads[i].variable = v;
    grads[i].grad = (const unsigned char *)grads_slab + m->t[i].offset * element;
    grads[i].dtype = dtype;
  }
  /* Builds the state (allocation, initial values) before anything is timed. */
  r->state_floats_measured = measured_state_floats(opt);
  if (r->state_floats_measured != r->state_floats_model)
    snprintf(r->message, sizeof r->message,
             "cuoptim holds %.0f float32 state elements, the byte model assumes %.0f", r->state_floats_measured,
             r->state_floats_model);

  const int steps = g_opt.steps;
  for (int i = 0; i < g_opt.warmup; i++) CUOPTIM_OK(cuoptimApplyGradients(opt, m->n, grads, (cuoptimStream_t)stream));
  CUDA_OK(cudaStreamSynchronize(stream));

  /* Eager: events around each call, no synchronization between steps. When the host is slower
   * than the GPU (many small tensors) the GPU waits and the event time shows it: that is what an
   * eager training loop pays. */
  Timers timers;
  timers_init(&timers, steps);
  for (int i = 0; i < steps; i++) {
    CUDA_OK(cudaEventRecord(timers.start[i], stream));
    double t0 = now_us();
    CUOPTIM_OK(cuoptimApplyGradients(opt, m->n, grads, (cuoptimStream_t)stream));
    timers.host_us[i] = now_us() - t0;
    CUDA_OK(cudaEventRecord(timers.stop[i], stream));
  }
  CUDA_OK(cudaStreamSynchronize(stream));
  timers_collect(&timers, steps);
  r->eager_ms = stats_of(timers.ms, steps);
  r->eager_host_us = stats_of(timers.host_us, steps);
  long long applied = (long long)g_opt.warmup + steps;

  /* Graph: one captured step, replayed. */
  cudaGraphExec_t exec = NULL;
  r->graph_ok = capture_step(opt, m->n, grads, stream, &exec, r);
  if (r->graph_ok) {
    CUDA_OK(cudaGraphUpload(exec, stream));
    for (int i = 0; i < GRAPH_WARM_REPLAYS; i++) CUDA_OK(cudaGraphLaunch(exec, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    for (int i = 0; i < steps; i++) {
      CUDA_OK(cudaEventRecord(timers.start[i], stream));
      CUDA_OK(cudaGraphLaunch(exec, stream));
      CUDA_OK(cudaEventRecord(timers.stop[i], stream));
    }
    CUDA_OK(cudaStreamSynchronize(stream));
    timers_collect(&timers, steps);
    r->graph_ms = stats_of(timers.ms, steps);
    /* Host time per launch: about 0.2 s of GPU work, 16 to 256 launches, in bursts. */
    double wanted = 200.0 / (r->graph_ms.median > 0 ? r->graph_ms.median : 1.0);
    int launches = wanted < LAUNCH_BURST ? LAUNCH_BURST : (wanted > 256 ? 256 : (int)wanted);
    launches = (int)round_up((size_t)launches, LAUNCH_BURST);
    double host = 0.0;
    for (int b = 0; b < launches / LAUNCH_BURST; b++) {
      double t0 = now_us();
      for (int j = 0; j < LAUNCH_BURST; j++) CUDA_OK(cudaGraphLaunch(exec, stream));
      host += now_us() - t0;
      CUDA_OK(cudaStreamSynchronize(stream));
    }
    r->graph_host_us = host / launches;
    r->graph_host_launches = launches;
    applied += GRAPH_WARM_REPLAYS + steps + launches;
    CUDA_OK(cudaGraphExecDestroy(exec));
  } else {
    g_report.failures++;
  }
  timers_free(&timers);

  /* Checks: every step ran (the device-side counter), and the parameters are finite. */
  int64_t iterations = -1;
  CUOPTIM_OK(cuoptimGetIterations(opt, &iterations));
  r->iterations = (long long)iterations;
  r->iterations_expected = applied;
  r->finite = sample_finite(params, &m->t[0], bf16) && sample_finite(params, &m->t[m->n - 1], bf16);
  if (r->iterations != r->iterations_expected || !r->finite) {
    g_report.failures++;
    append_note(r->message, sizeof r->message, "check failed: iterations %lld (expected %lld), parameters %s",
                r->iterations, r->iterations_expected, r->finite ? "finite" : "NOT FINITE");
  }
  CUOPTIM_OK(cuoptimDestroy(opt));
  free(grads);
  r->complete = 1;
  print_row(r, &g_report.copy_start);
}

static void print_mix_header(const MixReport *mr) {
  const CopyResult *c = &g_report.copy_start;
  printf("\nmix %s: %s\n  %d tensors, %zu elements, %s params and grads; copy bandwidth %.1f GB/s\n", mr->name,
         mr->description, mr->tensors, mr->elements, g_opt.bf16 ? "bfloat16 (fp32 master and state)" : "float32",
         c->gbps);
  printf("  %-19s %4s %8s | %9s %9s %9s %8s %7s %6s | %9s %8s %7s %6s | %9s %7s\n", "optimizer", "B/p", "GB/step",
         "eager ms", "min", "max", "GB/s", "%copy", "xfloor", "graph ms", "GB/s", "%copy", "xfloor", "host us", "launch");
  fflush(stdout);
}

static void run_mix(const char *name, cudaStream_t stream) {
  MixReport *mr = &g_report.mixes[g_report.num_mixes++];
  memset(mr, 0, sizeof *mr);
  mr->name = name;
  Mix m;
  build_mix(&m, name, g_opt.quick, g_opt.layers);
  const size_t element = g_opt.bf16 ? 2 : 4;
  layout_slab(&m, element);
  snprintf(mr->description, sizeof mr->description, "%s", m.description);
  mr->tensors = m.n;
  mr->elements = m.total;
  mr->layers = m.layers;
  print_mix_header(mr);

  size_t slab_bytes = m.slab_elems * element;
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_OK(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (2 * slab_bytes + MEMORY_MARGIN > free_bytes) {
    mr->skipped = 1;
    snprintf(mr->message, sizeof mr->message, "parameters and gradients need %.2f GiB, %.2f GiB free",
             gib(2 * slab_bytes), gib(free_bytes));
    printf("  skipped: %s\n", mr->message);
    free(m.t);
    return;
  }
  void *params = NULL, *grads = NULL;
  CUDA_OK(cudaMalloc(&params, slab_bytes));
  CUDA_OK(cudaMalloc(&grads, slab_bytes));
  fill(grads, m.slab_elems, g_opt.bf16, GRAD_SEED, 1e-3f, 1e-2f, stream);
  CUDA_OK(cudaStreamSynchronize(stream));
  for (int k = 0; k < g_opt.num_optimizers; k++)
    run_optimizer(&kOptimizers[g_opt.optimizers[k]], &m, params, grads, stream, mr);
  CUDA_OK(cudaFree(params));
  CUDA_OK(cudaFree(grads));
  free(m.t);
}

/* ---- environment -------------------------------------------------------------------------------- */

#ifndef CUOPTIM_BENCH_NCCL_VERSION
#define CUOPTIM_BENCH_NCCL_VERSION "n/a"
#endif

/* The kernel driver's release ("580.95.05") from /proc; "n/a" elsewhere. */
static void read_driver_release(char *out, size_t size) {
  snprintf(out, size, "n/a");
  FILE *f = fopen("/proc/driver/nvidia/version", "r");
  if (!f) return;
  char line[512];
  if (fgets(line, sizeof line, f)) {
    for (char *token = strtok(line, " \t\n"); token; token = strtok(NULL, " \t\n")) {
      if (token[0] >= '0' && token[0] <= '9' && strchr(token, '.')) {
        snprintf(out, size, "%s", token);
        break;
      }
    }
  }
  fclose(f);
}

static void version_text(int v, char *out, size_t size) { snprintf(out, size, "%d.%d", v / 1000, (v % 1000) / 10); }

static void collect_environment(void) {
  cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, g_opt.device));
  snprintf(g_report.gpu, sizeof g_report.gpu, "%s", prop.name);
  g_report.cc_major = prop.major;
  g_report.cc_minor = prop.minor;
  g_report.sm_count = prop.multiProcessorCount;
  g_report.l2_bytes = prop.l2CacheSize;
  g_report.memory_bytes = prop.totalGlobalMem;
  CUDA_OK(cudaDriverGetVersion(&g_report.driver_version));
  CUDA_OK(cudaRuntimeGetVersion(&g_report.runtime_version));
  read_driver_release(g_report.driver_release, sizeof g_report.driver_release);
  time_t now = time(NULL);
  struct tm utc;
  gmtime_r(&now, &utc);
  strftime(g_report.date, sizeof g_report.date, "%Y-%m-%dT%H:%M:%SZ", &utc);
}

/* ---- JSON --------------------------------------------------------------------------------------- */

static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; s && *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      fprintf(f, "\\%c", c);
    else if (c == '\n')
      fputs("\\n", f);
    else if (c < 0x20)
      fprintf(f, "\\u%04x", c);
    else
      fputc(c, f);
  }
  fputc('"', f);
}

static void json_number(FILE *f, double x) {
  if (isfinite(x))
    fprintf(f, "%.12g", x);
  else
    fputs("null", f);
}

static void json_stats(FILE *f, const Stats *s) {
  fputs("{\"median\": ", f);
  json_number(f, s->median);
  fputs(", \"min\": ", f);
  json_number(f, s->min);
  fputs(", \"max\": ", f);
  json_number(f, s->max);
  fputs(", \"mean\": ", f);
  json_number(f, s->mean);
  fprintf(f, ", \"n\": %d}", s->n);
}

static void json_copy(FILE *f, const CopyResult *c) {
  fprintf(f, "{\"buffer_bytes\": %zu, \"bytes_counted\": %zu, \"ms\": ", c->bytes, 2 * c->bytes);
  json_stats(f, &c->ms);
  fputs(", \"gbps\": ", f);
  json_number(f, c->gbps);
  fputs("}", f);
}

/* Bandwidth figures of one timing against the copy reference. */
static void json_timing(FILE *f, const Stats *ms, double bytes, double copy_gbps) {
  double gbps = gbps_of(bytes, ms->median);
  double floor_ms = bytes / (copy_gbps * 1e9) * 1e3;
  fputs("{\"ms\": ", f);
  json_stats(f, ms);
  fputs(", \"gbps\": ", f);
  json_number(f, gbps);
  fputs(", \"pct_copy\": ", f);
  json_number(f, 100.0 * gbps / copy_gbps);
  fputs(", \"floor_ms\": ", f);
  json_number(f, floor_ms);
  fputs(", \"time_over_floor\": ", f);
  json_number(f, ms->median / floor_ms);
  fputs("}", f);
}

static void write_json(const char *path) {
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "cuoptim-bench: cannot write %s\n", path);
    return;
  }
  const Report *r = &g_report;
  char text[64];
  fputs("{\n  \"tool\": \"cuoptim-bench\",\n  \"format\": 1,\n  \"command\": ", f);
  json_string(f, g_opt.command);
  fputs(",\n  \"environment\": {\"gpu\": ", f);
  json_string(f, r->gpu);
  fprintf(f, ", \"device\": %d, \"compute_capability\": \"%d.%d\", \"sm_count\": %d, \"memory_bytes\": %zu, ",
          g_opt.device, r->cc_major, r->cc_minor, r->sm_count, r->memory_bytes);
  fprintf(f, "\"l2_cache_bytes\": %d, \"driver_release\": ", r->l2_bytes);
  json_string(f, r->driver_release);
  version_text(r->driver_version, text, sizeof text);
  fputs(", \"driver_cuda_version\": ", f);
  json_string(f, text);
  version_text(r->runtime_version, text, sizeof text);
  fputs(", \"cuda_runtime_version\": ", f);
  json_string(f, text);
  fputs(", \"nccl_version\": ", f);
  json_string(f, CUOPTIM_BENCH_NCCL_VERSION);
  int v = cuoptimGetVersion();
  snprintf(text, sizeof text, "%d.%d.%d", v / 10000, (v / 100) % 100, v % 100);
  fputs(", \"cuoptim_version\": ", f);
  json_string(f, text);
  fputs(", \"date\": ", f);
  json_string(f, r->date);
  fputs("},\n", f);
  fprintf(f, "  \"options\": {\"dtype\": \"%s\", \"steps\": %d, \"warmup\": %d, \"graph_warm_replays\": %d, ",
          g_opt.bf16 ? "bfloat16" : "float32", g_opt.steps, g_opt.warmup, GRAPH_WARM_REPLAYS);
  fprintf(f, "\"quick\": %s, \"transformer_layers\": %d, \"global_clipnorm\": ", g_opt.quick ? "true" : "false",
          g_opt.layers);
  json_number(f, g_opt.global_clipnorm);
  fputs("},\n  \"copy\": ", f);
  if (r->have_copy_start)
    json_copy(f, &r->copy_start);
  else
    fputs("null", f);
  fputs(",\n  \"copy_end\": ", f);
  if (r->have_copy_end)
    json_copy(f, &r->copy_end);
  else
    fputs("null", f);
  fputs(",\n  \"mixes\": [", f);
  double copy_gbps = r->have_copy_start ? r->copy_start.gbps : NAN;
  for (int i = 0; i < r->num_mixes; i++) {
    const MixReport *mr = &r->mixes[i];
    fprintf(f, "%s\n    {\"name\": \"%s\", \"description\": ", i ? "," : "", mr->name);
    json_string(f, mr->description);
    fprintf(f, ", \"tensors\": %d, \"elements\": %zu, \"layers\": %d, \"skipped\": %s, \"message\": ", mr->tensors,
            mr->elements, mr->layers, mr->skipped ? "true" : "false");
    json_string(f, mr->message);
    fputs(", \"results\": [", f);
    for (int k = 0; k < mr->num_results; k++) {
      const Result *x = &mr->results[k];
      fprintf(f, "%s\n      {\"optimizer\": \"%s\", \"keras_class\": ", k ? "," : "", x->spec->name);
      json_string(f, x->keras_class);
      fprintf(f, ", \"skipped\": %s, \"complete\": %s, \"message\": ", x->skipped ? "true" : "false",
              x->complete ? "true" : "false");
      json_string(f, x->message);
      fputs(", \"bytes_per_param\": ", f);
      json_number(f, x->bytes_per_param);
      fputs(", \"bytes_per_step\": ", f);
      json_number(f, x->bytes_per_step);
      if (x->skipped) {
        fputs("}", f);
        continue;
      }
      fprintf(f, ", \"state_floats_model\": %.0f, \"state_floats_measured\": %.0f, \"newton_schulz_flops\": %.0f,"
              "\n       \"eager\": ", x->state_floats_model, x->state_floats_measured, x->newton_schulz_flops);
      json_timing(f, &x->eager_ms, x->bytes_per_step, copy_gbps);
      fputs(",\n       \"eager_host_us\": ", f);
      json_stats(f, &x->eager_host_us);
      fprintf(f, ",\n       \"graph_ok\": %s, \"capture_mode\": ", x->graph_ok ? "true" : "false");
      json_string(f, x->capture_mode);
      fputs(", \"capture_notes\": ", f);
      json_string(f, x->capture_notes);
      fputs(",\n       \"graph\": ", f);
      if (x->graph_ok)
        json_timing(f, &x->graph_ms, x->bytes_per_step, copy_gbps);
      else
        fputs("null", f);
      fputs(", \"graph_host_us_per_launch\": ", f);
      json_number(f, x->graph_ok ? x->graph_host_us : NAN);
      fprintf(f, ", \"graph_host_launches\": %d,\n       \"iterations\": %lld, \"iterations_expected\": %lld, ",
              x->graph_host_launches, x->iterations, x->iterations_expected);
      fprintf(f, "\"finite\": %s, \"complete\": %s}", x->finite ? "true" : "false", x->complete ? "true" : "false");
    }
    fputs("]}", f);
  }
  fputs("\n  ],\n  \"failures\": ", f);
  fprintf(f, "%d,\n  \"error\": ", r->failures);
  if (r->error[0])
    json_string(f, r->error);
  else
    fputs("null", f);
  fputs("\n}\n", f);
  fclose(f);
}

/* ---- summary of the targets cuoptim alone can decide (torch_peer.py --compare does the rest) ---- */

static const Result *find_result(const char *mix, const char *optimizer) {
  for (int i = 0; i < g_report.num_mixes; i++) {
    if (strcmp(g_report.mixes[i].name, mix) != 0) continue;
    for (int k = 0; k < g_report.mixes[i].num_results; k++) {
      const Result *r = &g_report.mixes[i].results[k];
      if (strcmp(r->spec->name, optimizer) == 0 && !r->skipped) return r;
    }
  }
  return NULL;
}

static void print_targets(void) {
  const double copy = g_report.copy_start.gbps;
  printf("\ntargets (eager = events around each cuoptimApplyGradients; graph = replay of one captured step)%s\n",
         g_opt.quick ? ": QUICK sizes, not a measurement" : "");
  const char *const adams[] = {"adam", "adamw"};
  for (int k = 0; k < 2; k++) {
    const Result *r = find_result("big", adams[k]);
    if (!r || g_opt.bf16 || g_opt.quick) continue;
    double pct = 100.0 * gbps_of(r->bytes_per_step, r->eager_ms.median) / copy;
    printf("  %-6s on the 2^28 tensor >= 90%% of copy bandwidth: %.1f%%  %s\n", adams[k], pct,
           pct >= 90.0 ? "PASS" : "FAIL");
  }
  for (int k = 0; k < 2; k++) {
    const Result *r = find_result("many", adams[k]);
    if (!r) continue;
    double floor_ms = r->bytes_per_step / (copy * 1e9) * 1e3;
    printf("  %-6s %s x 4096 within 2x of the byte floor (%.3f ms): eager %.2fx %s, graph ", adams[k],
           g_opt.quick ? "100" : "10,000", floor_ms,
           r->eager_ms.median / floor_ms, r->eager_ms.median / floor_ms <= 2.0 ? "PASS" : "FAIL");
    if (r->graph_ok)
      printf("%.2fx %s\n", r->graph_ms.median / floor_ms, r->graph_ms.median / floor_ms <= 2.0 ? "PASS" : "FAIL");
    else
      printf("capture failed\n");
  }
  double worst = -1.0;
  char where[96] = "";
  for (int i = 0; i < g_report.num_mixes; i++)
    for (int k = 0; k < g_report.mixes[i].num_results; k++) {
      const Result *r = &g_report.mixes[i].results[k];
      if (r->skipped || !r->graph_ok || r->graph_host_us <= worst) continue;
      worst = r->graph_host_us;
      snprintf(where, sizeof where, "%s/%s", g_report.mixes[i].name, r->spec->name);
    }
  if (worst >= 0)
    printf("  graph replay host time per step < 10 us: worst %.2f us (%s)  %s\n", worst, where,
           worst < 10.0 ? "PASS" : "FAIL");
  printf("  transformer-like mix >= 1.2x faster than torch fused AdamW: see bench/torch_peer.py --compare\n");
}

/* ---- command line --------------------------------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
          "usage: cuoptim-bench [options]\n"
          "  --optimizer LIST   sgd, sgd_momentum, rmsprop, adagrad, adadelta, adam, adamw, adamax, nadam,\n"
          "                     lion, lamb, ftrl, adam_amsgrad (not in all), schedule_free_adamw, adafactor,\n"
          "                     muon, or all; comma-separated (all)\n"
          "  --mix LIST         big, transformer, many, or all; comma-separated (all)\n"
          "  --steps N          timed steps and timed graph replays (30; 20 with --quick)\n"
          "  --warmup N         eager warm-up steps (5; 2 with --quick)\n"
          "  --dtype T          float32, or bf16: bfloat16 params and grads, fp32 master and state\n"
          "  --transformer-layers N   blocks of the transformer-like mix (30: 1,004,276,800 elements)\n"
          "  --global-clipnorm X      set Keras's global_clipnorm (adds the inspect pass)\n"
          "  --json OUT.json    write every figure and the environment\n"
          "  --quick            tiny sizes: a smoke test that runs on any GPU\n"
          "  --device N         CUDA device ordinal (0)\n");
}

static void usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "cuoptim-bench: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n");
  usage(stderr);
  exit(EXIT_USAGE);
}

static int parse_int(const char *text, const char *option, int min) {
  char *end = NULL;
  long v = strtol(text, &end, 10);
  if (!end || *end || v < min || v > 1000000) usage_error("bad value for %s", option);
  return (int)v;
}

static void select_list(const char *list, int is_mix) {
  char buffer[512];
  snprintf(buffer, sizeof buffer, "%s", list);
  int chosen[NUM_OPTIMIZERS > MAX_MIXES ? NUM_OPTIMIZERS : MAX_MIXES];
  memset(chosen, 0, sizeof chosen);
  for (char *name = strtok(buffer, ","); name; name = strtok(NULL, ",")) {
    int found = 0;
    if (is_mix) {
      for (int i = 0; i < MAX_MIXES; i++)
        if (strcmp(name, "all") == 0 || strcmp(name, kMixNames[i]) == 0) chosen[i] = found = 1;
    } else {
      for (int i = 0; i < NUM_OPTIMIZERS; i++)
        if ((strcmp(name, "all") == 0 && kOptimizers[i].in_all) || strcmp(name, kOptimizers[i].name) == 0)
          chosen[i] = found = 1;
    }
    if (!found) usage_error(is_mix ? "unknown mix \"%s\"" : "unknown optimizer \"%s\"", name);
  }
  if (is_mix) {
    g_opt.num_mixes = 0;
    for (int i = 0; i < MAX_MIXES; i++)
      if (chosen[i]) g_opt.mixes[g_opt.num_mixes++] = i;
  } else {
    g_opt.num_optimizers = 0;
    for (int i = 0; i < NUM_OPTIMIZERS; i++)
      if (chosen[i]) g_opt.optimizers[g_opt.num_optimizers++] = i;
  }
}

static void parse_args(int argc, char **argv) {
  memset(&g_opt, 0, sizeof g_opt);
  g_opt.steps = 30;
  g_opt.warmup = 5;
  g_opt.layers = 30;
  g_opt.global_clipnorm = NAN;
  select_list("all", 0);
  select_list("all", 1);
  size_t used = 0;
  for (int i = 0; i < argc; i++) {
    int n = snprintf(g_opt.command + used, sizeof g_opt.command - used, "%s%s", i ? " " : "", argv[i]);
    if (n < 0 || (size_t)n >= sizeof g_opt.command - used) break;
    used += (size_t)n;
  }
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      exit(0);
    }
    if (strcmp(a, "--quick") == 0) {
      g_opt.quick = 1;
      continue;
    }
    if (i + 1 >= argc) usage_error("%s needs a value (or is unknown)", a);
    const char *value = argv[++i];
    if (strcmp(a, "--optimizer") == 0) {
      select_list(value, 0);
    } else if (strcmp(a, "--mix") == 0) {
      select_list(value, 1);
    } else if (strcmp(a, "--steps") == 0) {
      g_opt.steps = parse_int(value, a, 1);
      g_opt.steps_set = 1;
    } else if (strcmp(a, "--warmup") == 0) {
      g_opt.warmup = parse_int(value, a, 0);
      g_opt.warmup_set = 1;
    } else if (strcmp(a, "--dtype") == 0) {
      if (strcmp(value, "float32") == 0 || strcmp(value, "fp32") == 0)
        g_opt.bf16 = 0;
      else if (strcmp(value, "bf16") == 0 || strcmp(value, "bfloat16") == 0)
        g_opt.bf16 = 1;
      else
        usage_error("unknown dtype \"%s\" (float32 or bf16)", value);
    } else if (strcmp(a, "--json") == 0) {
      g_opt.json = value;
    } else if (strcmp(a, "--device") == 0) {
      g_opt.device = parse_int(value, a, 0);
    } else if (strcmp(a, "--transformer-layers") == 0) {
      g_opt.layers = parse_int(value, a, 1);
    } else if (strcmp(a, "--global-clipnorm") == 0) {
      char *end = NULL;
      g_opt.global_clipnorm = strtod(value, &end);
      if (!end || *end || !(g_opt.global_clipnorm > 0)) usage_error("bad value for %s", a);
    } else {
      usage_error("unknown option %s", a);
    }
  }
  if (g_opt.quick && !g_opt.steps_set) g_opt.steps = 20;
  if (g_opt.quick && !g_opt.warmup_set) g_opt.warmup = 2;
  if (g_opt.steps < 20) fprintf(stderr, "cuoptim-bench: note: %d timed steps; PERF.md asks for >= 20\n", g_opt.steps);
}

int main(int argc, char **argv) {
  parse_args(argc, argv);

  int devices = 0;
  cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0) {
    if (err == cudaSuccess)
      fprintf(stderr, "cuoptim-bench: no CUDA GPU found: nothing to measure\n");
    else
      fprintf(stderr, "cuoptim-bench: no usable CUDA GPU: %s (%s): nothing to measure\n", cudaGetErrorString(err),
              cudaGetErrorName(err));
    snprintf(g_report.error, sizeof g_report.error, "no usable CUDA GPU: %s",
             err == cudaSuccess ? "device count 0" : cudaGetErrorString(err));
    if (g_opt.json) write_json(g_opt.json);
    return EXIT_NO_GPU;
  }
  if (g_opt.device >= devices) {
    fprintf(stderr, "cuoptim-bench: --device %d: only %d CUDA device(s)\n", g_opt.device, devices);
    return EXIT_USAGE;
  }
  CUDA_OK(cudaSetDevice(g_opt.device));
  collect_environment();
  cudaStream_t stream = NULL;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  int v = cuoptimGetVersion();
  printf("cuoptim-bench: cuoptim %d.%d.%d on %s (sm_%d%d, %d SMs, %.1f GiB), driver %s (CUDA %d.%d), runtime "
         "%d.%d, NCCL %s, %s\n",
         v / 10000, (v / 100) % 100, v % 100, g_report.gpu, g_report.cc_major, g_report.cc_minor, g_report.sm_count,
         gib(g_report.memory_bytes), g_report.driver_release, g_report.driver_version / 1000,
         (g_report.driver_version % 1000) / 10, g_report.runtime_version / 1000,
         (g_report.runtime_version % 1000) / 10, CUOPTIM_BENCH_NCCL_VERSION, g_report.date);
  printf("  %s params, %d warm-up + %d timed eager steps, %d warm + %d timed graph replays%s%s\n",
         g_opt.bf16 ? "bfloat16" : "float32", g_opt.warmup, g_opt.steps, GRAPH_WARM_REPLAYS, g_opt.steps,
         g_opt.quick ? ", QUICK sizes (smoke test: not a measurement)" : "",
         isnan(g_opt.global_clipnorm) ? "" : ", global_clipnorm on");

  const int copy_reps = g_opt.steps > 20 ? g_opt.steps : 20;
  const size_t copy_bytes = g_opt.quick ? COPY_BYTES_QUICK : COPY_BYTES;
  g_report.copy_start = measure_copy(copy_bytes, copy_reps, stream);
  g_report.have_copy_start = 1;
  printf("  device-to-device copy of %.0f MiB: median %.3f ms (min %.3f, max %.3f) = %.1f GB/s (read + write)\n",
         (double)copy_bytes / (1 << 20), g_report.copy_start.ms.median, g_report.copy_start.ms.min,
         g_report.copy_start.ms.max, g_report.copy_start.gbps);
  printf("  columns: B/p bytes per parameter (PERF.md byte model); GB/step bytes per step; ms per step (median, "
         "min, max of the timed steps);\n  GB/s = bytes / median; %%copy = GB/s / copy GB/s; xfloor = median / "
         "(bytes / copy GB/s); host us = host time of one eager call (median); launch = host us per cudaGraphLaunch\n");

  for (int i = 0; i < g_opt.num_mixes; i++) run_mix(kMixNames[g_opt.mixes[i]], stream);

  g_report.copy_end = measure_copy(copy_bytes, copy_reps, stream);
  g_report.have_copy_end = 1;
  printf("\n  copy bandwidth at the end: %.1f GB/s (start %.1f GB/s)\n", g_report.copy_end.gbps,
         g_report.copy_start.gbps);
  print_targets();
  CUDA_OK(cudaStreamDestroy(stream));
  if (g_report.failures) printf("\ncuoptim-bench: %d check(s) failed (see CHECK FAILED / graph capture above)\n",
                                g_report.failures);
  if (g_opt.json) {
    write_json(g_opt.json);
    printf("wrote %s\n", g_opt.json);
  }
  return g_report.failures ? EXIT_FAILED : 0;
}
