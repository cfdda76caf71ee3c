/* CUOPTIM_BACKEND_HOST: every stage as C loops over host memory, calling the same per-element
 * functions (cuda/rules.h, cuda/prologue.h) as the CUDA kernels. The reference implementation,
 * written to run at the memory-bandwidth limit:
 *
 *   - Work is cut into blocks of BLOCK elements of a variable (of this rank's share), grouped into
 *     batches of at least BLOCK elements (many small variables share a batch); the threads of
 *     host/host_threads.c take batches one at a time. What a block computes never depends on the
 *     thread that runs it, nor on how many there are.
 *   - A block is processed CHUNK elements at a time, in phases over the chunk: load the gradient
 *     into float32, prepare it (cuoptim_prepare_gradient: unscale, accumulate, clip), then the rule
 *     (cuoptim_update_element with the preparation switched off: exactly weight decay and the
 *     rule), then the half-precision copy of the parameter. Each element goes through the same
 *     float32 operations in the same order as one call of cuoptim_update_element would: the
 *     results are those of the element functions, bit for bit.
 *   - Each phase's loop is generated for constant flags: a local copy of cuoptimRuleParams whose
 *     flags are compile-time constants lets the compiler drop the rules' branches, so the loops
 *     have no call and no branch on the configuration in them, and vectorize.
 *   - Sums of squares (the inspect pass's, Lamb's two norms) are taken in double per block, in a
 *     fixed order: element i of a block goes to lane i % LANES, the lanes are added as a tree
 *     ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)), and the blocks' sums are added in block
 *     order, starting from 0. So a variable's sum depends on its values alone (and, sharded, on
 *     its share), never on the number of threads.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Elements per block: each thread's unit of work, and the unit of the sums. A block's Adam
 * working set (g, w, m, v: 1 MiB) stays in a core's L2. */
#define BLOCK ((size_t)1 << 16)
/* Elements per phase: the chunk's float32 gradient (2 KiB) stays in L1 between phases. A
 * multiple of LANES, so that the lanes of the sums line up across chunks. */
#define CHUNK 512
#define LANES 8
/* A stage with fewer elements than this runs on the calling thread alone: waking the pool's
 * threads costs about as much as that work. */
#define PARALLEL_MIN_ELEMENTS ((size_t)1 << 17)

#define HOST_INLINE static inline __attribute__((always_inline))
/* On the functions that hold the generated loops: every call inside, down to rules.h's element
 * functions, inlined, whatever the compiler's size limits, so the flags fold and the loops have
 * no call left (which is what lets them vectorize). */
#define HOST_FLATTEN __attribute__((flatten))

/* Caller buffers may have any alignment: a type with alignment 1 makes every access an unaligned
 * load or store (free on x86-64 for vector loads), and may_alias lets it read any buffer. */
typedef float host_f32 __attribute__((aligned(1), may_alias));
typedef uint16_t host_u16 __attribute__((aligned(1), may_alias));

/* The blocks, laid out when the state is built (the variables and their shares are fixed then). */
typedef struct {
  int threads; /* CUOPTIM_HOST_THREADS, read by cuoptimCreate */
  size_t num_blocks, num_batches;
  int32_t *block_variable;     /* per block: the variable */
  uint32_t *block_number;      /* per block: its number within the variable (at most 2^24) */
  size_t *variable_block;      /* num_variables + 1: the blocks of variable k are [vb[k], vb[k + 1]) */
  size_t *batch_block;         /* num_batches + 1: batch b is the blocks [bb[b], bb[b + 1]) */
  double *block_sums;          /* 2 per block: the inspect pass's (one), Lamb's w and u */
  unsigned char *block_nonfinite; /* per block: the inspect pass saw inf or NaN */
  float *scratch;              /* Muon: X, Y (r x c) and A, B (r x r) of the largest matrix;
                                  Adafactor: g and g^2 + epsilon_1 of the largest variable */
} HostData;

static HostData *host_data(cuoptimOptimizer_t opt) { return (HostData *)opt->backend_data; }

static void free_blocks(HostData *h) {
  free(h->block_variable);
  free(h->block_number);
  free(h->variable_block);
  free(h->batch_block);
  free(h->block_sums);
  free(h->block_nonfinite);
  free(h->scratch);
  int threads = h->threads;
  memset(h, 0, sizeof *h);
  h->threads = threads;
}

static cuoptimStatus_t host_init(cuoptimOptimizer_t opt) {
  int threads = 1;
  CUOPTIM_CHECK(cuoptim_host_threads_from_environment("cuoptimCreate", &threads));
  HostData *h = calloc(1, sizeof *h);
  if (!h) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptimCreate: out of host memory");
  h->threads = threads;
  opt->backend_data = h;
  cuoptim_log(CUOPTIM_LOG_INFO, "host backend: %d thread%s", threads, threads == 1 ? "" : "s");
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_release(cuoptimOptimizer_t opt) {
  HostData *h = host_data(opt);
  if (h) {
    free_blocks(h);
    free(h);
    opt->backend_data = NULL;
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_check_pointer(cuoptimOptimizer_t opt, const void *ptr, cuoptimDtype_t dtype,
                                          const char *caller,
                                          const char *what) {
  return CUOPTIM_STATUS_SUCCESS; /* any host address is usable */
}

static cuoptimStatus_t host_alloc(cuoptimOptimizer_t opt, size_t bytes, void **ptr) {
  *ptr = aligned_alloc(256, bytes ? (bytes + 255) / 256 * 256 : 256);
  if (!*ptr) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptim: cannot allocate %zu bytes of host memory", bytes);
  memset(*ptr, 0, bytes);
  return CUOPTIM_STATUS_SUCCESS;
}

static void host_free(cuoptimOptimizer_t opt, void *ptr) { free(ptr); }

static cuoptimStatus_t host_copy(cuoptimOptimizer_t opt, void *dst, const void *src, size_t bytes) {
  memmove(dst, src, bytes);
  return CUOPTIM_STATUS_SUCCESS;
}

/* ---- elements in and out -------------------------------------------------------------------- */

/* Elements [begin, begin + n) of a caller's buffer, as float32. */
static void load_chunk(const void *buffer, cuoptimDtype_t dtype, size_t begin, size_t n, float *restrict out) {
  if (dtype == CUOPTIM_FLOAT32) {
    const host_f32 *x = (const host_f32 *)buffer + begin;
    for (size_t i = 0; i < n; i++) out[i] = x[i];
  } else if (dtype == CUOPTIM_FLOAT16) {
    const host_u16 *x = (const host_u16 *)buffer + begin;
    for (size_t i = 0; i < n; i++) out[i] = cuoptim_half_to_float(x[i]);
  } else {
    const host_u16 *x = (const host_u16 *)buffer + begin;
    for (size_t i = 0; i < n; i++) out[i] = cuoptim_bfloat16_to_float(x[i]);
  }
}

/* A half-precision parameter's elements [begin, begin + n) from its float32 master. */
static void store_half_chunk(void *buffer, cuoptimDtype_t dtype, size_t begin, size_t n, const float *restrict in) {
  host_u16 *x = (host_u16 *)buffer + begin;
  if (dtype == CUOPTIM_FLOAT16)
    for (size_t i = 0; i < n; i++) x[i] = cuoptim_float_to_half(in[i]);
  else
    for (size_t i = 0; i < n; i++) x[i] = cuoptim_float_to_bfloat16(in[i]);
}

/* The float32 values the rules update, from element `begin` on: the master of a half variable, or
 * the caller's float32 parameter. */
static host_f32 *working(const cuoptimVariableRec *v, size_t begin) {
  return v->master ? (host_f32 *)v->master + begin : (host_f32 *)v->local_param + begin;
}

/* After the rules wrote the working values of [begin, begin + n): the half parameter's copy. */
static void store_working_half(const cuoptimVariableRec *v, size_t begin, size_t n) {
  if (v->master) store_half_chunk(v->local_param, v->dtype, begin, n, v->master + begin);
}

/* ---- sums of squares in the fixed order (see the top) ----------------------------------------- */

/* The lanes' tree ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)). */
static inline double lane_total(const double *lane) {
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

/* Adds x[i]^2 to lane i % LANES; x starts at a multiple of LANES within its block. */
static inline void sum_squares(const host_f32 *restrict x, size_t n, double *restrict lane) {
  double l0 = lane[0], l1 = lane[1], l2 = lane[2], l3 = lane[3], l4 = lane[4], l5 = lane[5], l6 = lane[6],
         l7 = lane[7];
  size_t i = 0;
  for (; i + LANES <= n; i += LANES) {
    l0 += (double)x[i] * (double)x[i];
    l1 += (double)x[i + 1] * (double)x[i + 1];
    l2 += (double)x[i + 2] * (double)x[i + 2];
    l3 += (double)x[i + 3] * (double)x[i + 3];
    l4 += (double)x[i + 4] * (double)x[i + 4];
    l5 += (double)x[i + 5] * (double)x[i + 5];
    l6 += (double)x[i + 6] * (double)x[i + 6];
    l7 += (double)x[i + 7] * (double)x[i + 7];
  }
  lane[0] = l0, lane[1] = l1, lane[2] = l2, lane[3] = l3, lane[4] = l4, lane[5] = l5, lane[6] = l6, lane[7] = l7;
  for (; i < n; i++) lane[i % LANES] += (double)x[i] * (double)x[i];
}

/* ---- the phases, generated for constant flags ------------------------------------------------ */

/* The flags the preparation of a gradient tests (cuoptim_prepare_gradient). */
typedef struct {
  int mean, dynamic, factor, accumulate, clip;
} PrepareFlags;

static PrepareFlags prepare_flags(const cuoptimRuleParams *p) {
  PrepareFlags f = {p->mean_over_ranks != 0, p->dynamic_loss_scale != 0, p->has_loss_scale_factor != 0,
                    p->accumulation_steps != 0, p->clip};
  return f;
}

/* Params whose flags are the constants given. rules.h tests accumulation_steps for zero only (the
 * division uses accumulation_steps_f), so 1 stands for "on". */
HOST_INLINE void set_prepare_flags(cuoptimRuleParams *p, const int mean, const int dynamic, const int factor,
                                   const int accumulate, const int clip) {
  p->mean_over_ranks = mean;
  p->dynamic_loss_scale = dynamic;
  p->has_loss_scale_factor = factor;
  p->accumulation_steps = accumulate;
  p->clip = clip;
}

/* An update step: out[i] becomes the gradient the rule sees of in[i], the raw one (acc: the
 * accumulator, or NULL). in and out may be the same buffer. */
HOST_INLINE void prepare_loop(const cuoptimRuleParams *p_in, const cuoptimStepScalars *s_in,
                              const cuoptimTensorScalars *t_in, const host_f32 *in, float *out, float *restrict acc,
                              size_t n, const int mean, const int dynamic, const int factor, const int accumulate,
                              const int clip) {
  cuoptimRuleParams p = *p_in;
  cuoptimStepScalars s = *s_in;
  cuoptimTensorScalars t = *t_in;
  set_prepare_flags(&p, mean, dynamic, factor, accumulate, clip);
  s.apply_update = 1;
  for (size_t i = 0; i < n; i++) {
    float a = accumulate ? acc[i] : 0.0f, x = 0.0f;
    cuoptim_prepare_gradient(&p, &s, &t, in[i], &a, &x);
    out[i] = x;
    if (accumulate) acc[i] = a;
  }
}

/* An accumulation micro-step: only the accumulator changes. */
HOST_INLINE void accumulate_loop(const cuoptimRuleParams *p_in, const cuoptimStepScalars *s_in,
                                 const cuoptimTensorScalars *t_in, const host_f32 *restrict in, float *restrict acc,
                                 size_t n, const int mean, const int dynamic, const int factor) {
  cuoptimRuleParams p = *p_in;
  cuoptimStepScalars s = *s_in;
  cuoptimTensorScalars t = *t_in;
  set_prepare_flags(&p, mean, dynamic, factor, 1, CUOPTIM_CLIP_NONE);
  s.apply_update = 0;
  for (size_t i = 0; i < n; i++) {
    float a = acc[i], x = 0.0f;
    cuoptim_prepare_gradient(&p, &s, &t, in[i], &a, &x);
    acc[i] = a;
  }
}

/* The gradient the inspect pass measures (before clipping) of raw gradient in[i]; in and out may
 * be the same buffer. */
HOST_INLINE void inspect_loop(const cuoptimRuleParams *p_in, float loss_scale, const host_f32 *in, float *out,
                              const float *restrict acc, size_t n, const int mean, const int dynamic, const int factor,
                              const int accumulate) {
  cuoptimRuleParams p = *p_in;
  set_prepare_flags(&p, mean, dynamic, factor, accumulate, CUOPTIM_CLIP_NONE);
  for (size_t i = 0; i < n; i++) out[i] = cuoptim_inspect_gradient(&p, loss_scale, in[i], accumulate ? acc[i] : 0.0f);
}

/* The dispatch from runtime flags to the loops above: each level turns one flag into a constant. */
#define PREPARE_ARGS p, s, t, in, out, acc, n
#define PREPARE_PARAMS                                                                                      \
  const cuoptimRuleParams *p, const cuoptimStepScalars *s, const cuoptimTensorScalars *t, const host_f32 *in, \
      float *out, float *restrict acc, size_t n

HOST_INLINE void prepare_clip(PREPARE_PARAMS, const int m, const int d, const int f, const int a, int clip) {
  switch (clip) {
    case CUOPTIM_CLIP_NORM: prepare_loop(PREPARE_ARGS, m, d, f, a, CUOPTIM_CLIP_NORM); break;
    case CUOPTIM_CLIP_GLOBAL_NORM: prepare_loop(PREPARE_ARGS, m, d, f, a, CUOPTIM_CLIP_GLOBAL_NORM); break;
    case CUOPTIM_CLIP_VALUE: prepare_loop(PREPARE_ARGS, m, d, f, a, CUOPTIM_CLIP_VALUE); break;
    default: prepare_loop(PREPARE_ARGS, m, d, f, a, CUOPTIM_CLIP_NONE); break;
  }
}
HOST_INLINE void prepare_accumulate(PREPARE_PARAMS, const int m, const int d, const int f, PrepareFlags r) {
  if (r.accumulate)
    prepare_clip(PREPARE_ARGS, m, d, f, 1, r.clip);
  else
    prepare_clip(PREPARE_ARGS, m, d, f, 0, r.clip);
}
HOST_INLINE void prepare_factor(PREPARE_PARAMS, const int m, const int d, PrepareFlags r) {
  if (r.factor)
    prepare_accumulate(PREPARE_ARGS, m, d, 1, r);
  else
    prepare_accumulate(PREPARE_ARGS, m, d, 0, r);
}
HOST_INLINE void prepare_dynamic(PREPARE_PARAMS, const int m, PrepareFlags r) {
  if (r.dynamic)
    prepare_factor(PREPARE_ARGS, m, 1, r);
  else
    prepare_factor(PREPARE_ARGS, m, 0, r);
}
/* The gradient of an update step into out (micro = 0), or the accumulation of a micro-step.
 * Called only when some flag is set (needs_prepare). */
HOST_FLATTEN static void prepare_chunk(PREPARE_PARAMS, PrepareFlags r, int micro) {
  if (micro) {
    int key = r.mean | r.dynamic << 1 | r.factor << 2;
    switch (key) {
#define ACCUMULATE_CASE(k) \
  case k: accumulate_loop(p, s, t, in, acc, n, (k) & 1, (k) >> 1 & 1, (k) >> 2 & 1); break;
      ACCUMULATE_CASE(0) ACCUMULATE_CASE(1) ACCUMULATE_CASE(2) ACCUMULATE_CASE(3)
      ACCUMULATE_CASE(4) ACCUMULATE_CASE(5) ACCUMULATE_CASE(6) ACCUMULATE_CASE(7)
#undef ACCUMULATE_CASE
    }
    return;
  }
  if (r.mean)
    prepare_dynamic(PREPARE_ARGS, 1, r);
  else
    prepare_dynamic(PREPARE_ARGS, 0, r);
}

/* Called only when some flag is set (needs_inspect_transform). */
HOST_FLATTEN static void inspect_chunk(const cuoptimRuleParams *p, float loss_scale, const host_f32 *in, float *out,
                                       const float *restrict acc, size_t n, PrepareFlags r) {
  int key = r.mean | r.dynamic << 1 | r.factor << 2 | r.accumulate << 3;
  switch (key) {
#define INSPECT_CASE(k) \
  case k: inspect_loop(p, loss_scale, in, out, acc, n, (k) & 1, (k) >> 1 & 1, (k) >> 2 & 1, (k) >> 3 & 1); break;
    INSPECT_CASE(1) INSPECT_CASE(2) INSPECT_CASE(3) INSPECT_CASE(4) INSPECT_CASE(5)
    INSPECT_CASE(6) INSPECT_CASE(7) INSPECT_CASE(8) INSPECT_CASE(9) INSPECT_CASE(10) INSPECT_CASE(11)
    INSPECT_CASE(12) INSPECT_CASE(13) INSPECT_CASE(14) INSPECT_CASE(15)
#undef INSPECT_CASE
    default: break;
  }
}

/* The rules, one loop per optimizer and per value of the flags its rule tests. */
typedef enum {
  RULE_GENERIC = -1, /* none of the loops below fits: element by element, as written in rules.h */
  RULE_SGD,
  RULE_SGD_MOMENTUM,
  RULE_SGD_NESTEROV,
  RULE_RMSPROP,
  RULE_RMSPROP_MOMENTUM,
  RULE_RMSPROP_CENTERED,
  RULE_RMSPROP_CENTERED_MOMENTUM,
  RULE_ADAGRAD,
  RULE_ADADELTA,
  RULE_ADAM,
  RULE_ADAM_AMSGRAD,
  RULE_ADAMAX,
  RULE_NADAM,
  RULE_LION,
  RULE_FTRL,        /* any learning_rate_power: a double pow per element */
  RULE_FTRL_SQRT,   /* learning_rate_power -0.5 */
  RULE_FTRL_POWER0, /* learning_rate_power 0 */
  RULE_SCHEDULE_FREE_ADAMW,
} RuleVariant;

static RuleVariant rule_variant(const cuoptimRuleParams *p) {
  switch (p->kind) {
    case CUOPTIM_SGD:
      if (!p->has_momentum) return RULE_SGD;
      return p->nesterov ? RULE_SGD_NESTEROV : RULE_SGD_MOMENTUM;
    case CUOPTIM_RMSPROP:
      if (p->centered) return p->has_momentum ? RULE_RMSPROP_CENTERED_MOMENTUM : RULE_RMSPROP_CENTERED;
      return p->has_momentum ? RULE_RMSPROP_MOMENTUM : RULE_RMSPROP;
    case CUOPTIM_ADAGRAD: return RULE_ADAGRAD;
    case CUOPTIM_ADADELTA: return RULE_ADADELTA;
    case CUOPTIM_ADAM:
    case CUOPTIM_ADAMW: return p->amsgrad ? RULE_ADAM_AMSGRAD : RULE_ADAM;
    case CUOPTIM_ADAMAX: return RULE_ADAMAX;
    case CUOPTIM_NADAM: return RULE_NADAM;
    case CUOPTIM_LION: return RULE_LION;
    case CUOPTIM_FTRL:
      if (p->lr_power_neg == 0.5f) return RULE_FTRL_SQRT;
      return p->lr_power_neg == 0.0f ? RULE_FTRL_POWER0 : RULE_FTRL;
    case CUOPTIM_SCHEDULE_FREE_ADAMW: return RULE_SCHEDULE_FREE_ADAMW;
    case CUOPTIM_MUON: return RULE_ADAM; /* its AdamW path (no amsgrad); the matrices: update_muon */
    default: return RULE_GENERIC;
  }
}

/* Which of s0..s2 the rule of a variant reads and writes (bit j: s_j). */
static unsigned rule_slots(RuleVariant r) {
  switch (r) {
    case RULE_SGD: return 0;
    case RULE_SGD_MOMENTUM:
    case RULE_SGD_NESTEROV:
    case RULE_ADAGRAD:
    case RULE_LION: return 1;
    case RULE_RMSPROP: return 1;
    case RULE_RMSPROP_MOMENTUM: return 3;
    case RULE_RMSPROP_CENTERED: return 5;
    case RULE_RMSPROP_CENTERED_MOMENTUM: return 7;
    case RULE_ADAM_AMSGRAD: return 7;
    default: return 3; /* Adadelta, Adam, Adamax, Nadam, Ftrl, ScheduleFreeAdamW */
  }
}

/* Weight decay and the rule over a chunk whose gradient is prepared: cuoptim_update_element with
 * the preparation switched off (every flag cuoptim_prepare_gradient tests is 0, so it passes the
 * gradient through), the rule's own flags constants. */
HOST_INLINE void rule_loop(const cuoptimRuleParams *p_in, const cuoptimStepScalars *s_in,
                           const cuoptimTensorScalars *t_in, const host_f32 *restrict g, host_f32 *restrict w,
                           float *restrict s0, float *restrict s1, float *restrict s2, size_t n, const RuleVariant r,
                           const int decay) {
  cuoptimRuleParams p = *p_in;
  cuoptimStepScalars s = *s_in;
  cuoptimTensorScalars t = *t_in;
  set_prepare_flags(&p, 0, 0, 0, 0, CUOPTIM_CLIP_NONE);
  switch (r) {
    case RULE_SGD: p.kind = CUOPTIM_SGD, p.has_momentum = 0, p.nesterov = 0; break;
    case RULE_SGD_MOMENTUM: p.kind = CUOPTIM_SGD, p.has_momentum = 1, p.nesterov = 0; break;
    case RULE_SGD_NESTEROV: p.kind = CUOPTIM_SGD, p.has_momentum = 1, p.nesterov = 1; break;
    case RULE_RMSPROP: p.kind = CUOPTIM_RMSPROP, p.centered = 0, p.has_momentum = 0; break;
    case RULE_RMSPROP_MOMENTUM: p.kind = CUOPTIM_RMSPROP, p.centered = 0, p.has_momentum = 1; break;
    case RULE_RMSPROP_CENTERED: p.kind = CUOPTIM_RMSPROP, p.centered = 1, p.has_momentum = 0; break;
    case RULE_RMSPROP_CENTERED_MOMENTUM: p.kind = CUOPTIM_RMSPROP, p.centered = 1, p.has_momentum = 1; break;
    case RULE_ADAGRAD: p.kind = CUOPTIM_ADAGRAD; break;
    case RULE_ADADELTA: p.kind = CUOPTIM_ADADELTA; break;
    /* Adam and AdamW share cuoptim_rule_adam (AdamW's difference is the weight decay). */
    case RULE_ADAM: p.kind = CUOPTIM_ADAM, p.amsgrad = 0; break;
    case RULE_ADAM_AMSGRAD: p.kind = CUOPTIM_ADAM, p.amsgrad = 1; break;
    case RULE_ADAMAX: p.kind = CUOPTIM_ADAMAX; break;
    case RULE_NADAM: p.kind = CUOPTIM_NADAM; break;
    case RULE_LION: p.kind = CUOPTIM_LION; break;
    case RULE_FTRL: p.kind = CUOPTIM_FTRL; break;
    case RULE_FTRL_SQRT: p.kind = CUOPTIM_FTRL, p.lr_power_neg = 0.5f; break;
    case RULE_FTRL_POWER0: p.kind = CUOPTIM_FTRL, p.lr_power_neg = 0.0f; break;
    case RULE_SCHEDULE_FREE_ADAMW: p.kind = CUOPTIM_SCHEDULE_FREE_ADAMW; break;
    default: break;
  }
  const unsigned used = rule_slots(r);
  for (size_t i = 0; i < n; i++) {
    float x = w[i], m0 = 0.0f, m1 = 0.0f, m2 = 0.0f, acc = 0.0f;
    if (used & 1) m0 = s0[i];
    if (used & 2) m1 = s1[i];
    if (used & 4) m2 = s2[i];
    cuoptim_update_element(&p, &s, &t, decay, g[i], &x, &m0, &m1, &m2, &acc, NULL);
    w[i] = x;
    if (used & 1) s0[i] = m0;
    if (used & 2) s1[i] = m1;
    if (used & 4) s2[i] = m2;
  }
}

#define RULE_PARAMS                                                                                          \
  const cuoptimRuleParams *p, const cuoptimStepScalars *s, const cuoptimTensorScalars *t,                  \
      const host_f32 *restrict g, host_f32 *restrict w, float *restrict s0, float *restrict s1, float *restrict s2, \
      size_t n
#define RULE_ARGS p, s, t, g, w, s0, s1, s2, n

HOST_INLINE void rule_decay(RULE_PARAMS, const RuleVariant r, int decay) {
  if (decay)
    rule_loop(RULE_ARGS, r, 1);
  else
    rule_loop(RULE_ARGS, r, 0);
}

HOST_FLATTEN static void rule_chunk(RULE_PARAMS, RuleVariant r, int decay) {
  switch (r) {
#define RULE_CASE(v) \
  case v: rule_decay(RULE_ARGS, v, decay); break;
    RULE_CASE(RULE_SGD) RULE_CASE(RULE_SGD_MOMENTUM) RULE_CASE(RULE_SGD_NESTEROV) RULE_CASE(RULE_RMSPROP)
    RULE_CASE(RULE_RMSPROP_MOMENTUM) RULE_CASE(RULE_RMSPROP_CENTERED) RULE_CASE(RULE_RMSPROP_CENTERED_MOMENTUM)
    RULE_CASE(RULE_ADAGRAD) RULE_CASE(RULE_ADADELTA) RULE_CASE(RULE_ADAM) RULE_CASE(RULE_ADAM_AMSGRAD)
    RULE_CASE(RULE_ADAMAX) RULE_CASE(RULE_NADAM) RULE_CASE(RULE_LION) RULE_CASE(RULE_FTRL)
    RULE_CASE(RULE_FTRL_SQRT) RULE_CASE(RULE_FTRL_POWER0) RULE_CASE(RULE_SCHEDULE_FREE_ADAMW)
#undef RULE_CASE
    default: break;
  }
}

/* Lamb pass 1 over a prepared chunk: moments; wd[i] and u[i] get the decayed variable and the
 * update direction whose squares the trust ratio sums. */
HOST_INLINE void lamb1_loop(const cuoptimRuleParams *p_in, const cuoptimStepScalars *s_in,
                            const cuoptimTensorScalars *t_in, const host_f32 *restrict g, const host_f32 *restrict w,
                            float *restrict m, float *restrict v, float *restrict wd, float *restrict u, size_t n,
                            const int decay) {
  cuoptimRuleParams p = *p_in;
  cuoptimStepScalars s = *s_in;
  cuoptimTensorScalars t = *t_in;
  set_prepare_flags(&p, 0, 0, 0, 0, CUOPTIM_CLIP_NONE);
  for (size_t i = 0; i < n; i++) {
    float m0 = m[i], m1 = v[i], acc = 0.0f, decayed = 0.0f, update = 0.0f;
    cuoptim_lamb_pass1_element(&p, &s, &t, decay, g[i], w[i], &m0, &m1, &acc, &decayed, &update);
    m[i] = m0;
    v[i] = m1;
    wd[i] = decayed;
    u[i] = update;
  }
}

HOST_INLINE void lamb2_loop(const cuoptimRuleParams *p_in, const cuoptimStepScalars *s_in,
                            const cuoptimTensorScalars *t_in, host_f32 *restrict w, const float *restrict m,
                            const float *restrict v, size_t n, const int decay) {
  cuoptimRuleParams p = *p_in;
  cuoptimStepScalars s = *s_in;
  cuoptimTensorScalars t = *t_in;
  for (size_t i = 0; i < n; i++) w[i] = cuoptim_lamb_pass2_element(&p, &s, &t, decay, w[i], m[i], v[i]);
}

HOST_INLINE void ema_loop(const cuoptimStepScalars *s_in, host_f32 *restrict w, float *restrict average, size_t n,
                          const int overwrite) {
  cuoptimStepScalars s = *s_in;
  s.ema_overwrite = overwrite;
  for (size_t i = 0; i < n; i++) {
    float x = w[i], a = average[i];
    cuoptim_ema_element(&s, &x, &a);
    average[i] = a;
    if (overwrite) w[i] = x;
  }
}

/* ---- the stages, block by block --------------------------------------------------------------- */

typedef enum { STAGE_INSPECT, STAGE_UPDATE, STAGE_LAMB1, STAGE_LAMB2, STAGE_EMA, STAGE_FINALIZE } StageKind;

typedef struct {
  cuoptimOptimizer_t opt;
  const HostData *h;
  StageKind kind;
  cuoptimRuleParams p;     /* copies: the loops read them, never the optimizer's memory */
  cuoptimStepScalars s;
  float loss_scale;        /* the inspect pass's */
  PrepareFlags flags;
  RuleVariant rule;
  int micro;               /* an accumulation micro-step */
  int prepare;             /* the gradient goes through prepare_chunk (a flag is set, or micro) */
  int transform;           /* the inspect pass's gradient is not the raw one */
  atomic_size_t next_batch;
} Stage;

/* Element by element, as the element functions of rules.h are written: for a configuration none
 * of the generated loops covers (a slot the rule reads is missing). */
static float load_element(const void *buffer, cuoptimDtype_t dtype, size_t i) {
  float x;
  load_chunk(buffer, dtype, i, 1, &x);
  return x;
}

static void update_generic(const Stage *st, cuoptimVariableRec *v, const cuoptimStepGradient *g,
                           const cuoptimTensorScalars *t, size_t begin, size_t n) {
  float unused[3] = {0, 0, 0}, acc_unused = 0;
  for (size_t i = begin; i < begin + n; i++) {
    float *s0 = v->slots[0] ? &v->slots[0][i] : &unused[0];
    float *s1 = v->slots[1] ? &v->slots[1][i] : &unused[1];
    float *s2 = v->slots[2] ? &v->slots[2][i] : &unused[2];
    float *acc = v->accumulator ? &v->accumulator[i] : &acc_unused;
    float w = *working(v, i);
    if (cuoptim_update_element(&st->p, &st->s, t, v->use_weight_decay, load_element(g->grad, g->dtype, i), &w, s0,
                               s1, s2, acc, NULL)) {
      *working(v, i) = w;
      store_working_half(v, i, 1);
    }
  }
}

/* A chunk of the raw gradient: the caller's float32 elements where they are, or a half gradient
 * converted into buffer. */
static const host_f32 *raw_chunk(const cuoptimStepGradient *g, size_t begin, size_t n, float *buffer) {
  if (g->dtype == CUOPTIM_FLOAT32) return (const host_f32 *)g->grad + begin;
  load_chunk(g->grad, g->dtype, begin, n, buffer);
  return buffer;
}

static void inspect_block(const Stage *st, size_t block, const cuoptimVariableRec *v, const cuoptimStepGradient *g,
                          size_t begin, size_t n) {
  double lane[LANES] = {0};
  int nonfinite = 0;
  float x[CHUNK];
  for (size_t c = begin; c < begin + n; c += CHUNK) {
    size_t m = begin + n - c < CHUNK ? begin + n - c : CHUNK;
    const host_f32 *raw = raw_chunk(g, c, m, x);
    for (size_t i = 0; i < m; i++) nonfinite |= !isfinite(raw[i]);
    if (st->transform) {
      inspect_chunk(&st->p, st->loss_scale, raw, x, v->accumulator ? v->accumulator + c : NULL, m, st->flags);
      raw = x;
    }
    sum_squares(raw, m, lane);
  }
  st->h->block_sums[2 * block] = lane_total(lane);
  st->h->block_nonfinite[block] = (unsigned char)nonfinite;
}

static void update_block(const Stage *st, cuoptimVariableRec *v, const cuoptimStepGradient *g,
                         const cuoptimTensorScalars *t, size_t begin, size_t n) {
  unsigned used = st->rule == RULE_GENERIC ? 8 : rule_slots(st->rule);
  for (int j = 0; j < 3; j++)
    if ((used >> j & 1) && !v->slots[j]) used = 8;
  if (used == 8 || (st->flags.accumulate && !v->accumulator)) {
    update_generic(st, v, g, t, begin, n);
    return;
  }
  float x[CHUNK];
  for (size_t c = begin; c < begin + n; c += CHUNK) {
    size_t m = begin + n - c < CHUNK ? begin + n - c : CHUNK;
    const host_f32 *grad = raw_chunk(g, c, m, x);
    if (st->prepare) {
      prepare_chunk(&st->p, &st->s, t, grad, x, v->accumulator ? v->accumulator + c : NULL, m, st->flags, st->micro);
      if (st->micro) continue;
      grad = x;
    }
    rule_chunk(&st->p, &st->s, t, grad, working(v, c), v->slots[0] ? v->slots[0] + c : NULL,
               v->slots[1] ? v->slots[1] + c : NULL, v->slots[2] ? v->slots[2] + c : NULL, m, st->rule,
               v->use_weight_decay);
    store_working_half(v, c, m);
  }
}

static void lamb1_block(const Stage *st, size_t block, cuoptimVariableRec *v, const cuoptimStepGradient *g,
                        const cuoptimTensorScalars *t, size_t begin, size_t n) {
  double w_lane[LANES] = {0}, u_lane[LANES] = {0};
  float x[CHUNK], wd[CHUNK], u[CHUNK];
  for (size_t c = begin; c < begin + n; c += CHUNK) {
    size_t m = begin + n - c < CHUNK ? begin + n - c : CHUNK;
    const host_f32 *grad = raw_chunk(g, c, m, x);
    if (st->prepare) {
      prepare_chunk(&st->p, &st->s, t, grad, x, v->accumulator ? v->accumulator + c : NULL, m, st->flags, st->micro);
      if (st->micro) continue;
      grad = x;
    }
    if (v->use_weight_decay)
      lamb1_loop(&st->p, &st->s, t, grad, working(v, c), v->slots[0] + c, v->slots[1] + c, wd, u, m, 1);
    else
      lamb1_loop(&st->p, &st->s, t, grad, working(v, c), v->slots[0] + c, v->slots[1] + c, wd, u, m, 0);
    sum_squares(wd, m, w_lane);
    sum_squares(u, m, u_lane);
  }
  st->h->block_sums[2 * block] = lane_total(w_lane);
  st->h->block_sums[2 * block + 1] = lane_total(u_lane);
}

static void lamb2_block(const Stage *st, cuoptimVariableRec *v, const cuoptimTensorScalars *t, size_t begin,
                        size_t n) {
  for (size_t c = begin; c < begin + n; c += CHUNK) {
    size_t m = begin + n - c < CHUNK ? begin + n - c : CHUNK;
    if (v->use_weight_decay)
      lamb2_loop(&st->p, &st->s, t, working(v, c), v->slots[0] + c, v->slots[1] + c, m, 1);
    else
      lamb2_loop(&st->p, &st->s, t, working(v, c), v->slots[0] + c, v->slots[1] + c, m, 0);
    store_working_half(v, c, m);
  }
}

/* EMA of every variable; a half parameter is written from its master in any case (also without
 * overwrite), as the element-wise version always stored the working value back. */
static void ema_block(const Stage *st, cuoptimVariableRec *v, size_t begin, size_t n) {
  for (size_t c = begin; c < begin + n; c += CHUNK) {
    size_t m = begin + n - c < CHUNK ? begin + n - c : CHUNK;
    if (st->s.ema_overwrite)
      ema_loop(&st->s, working(v, c), v->average + c, m, 1);
    else
      ema_loop(&st->s, working(v, c), v->average + c, m, 0);
    store_working_half(v, c, m);
  }
}

static void finalize_block(cuoptimVariableRec *v, size_t begin, size_t n) {
  host_f32 *w = working(v, begin);
  const float *a = v->average + begin;
  for (size_t i = 0; i < n; i++) w[i] = a[i];
  store_working_half(v, begin, n);
}

static void run_block(Stage *st, size_t block) {
  cuoptimOptimizer_t opt = st->opt;
  const HostData *h = st->h;
  int k = h->block_variable[block];
  cuoptimVariableRec *v = &opt->variables[k];
  const cuoptimStepGradient *g = &opt->step_grads[k];
  const cuoptimTensorScalars *t = &opt->tensors[k];
  size_t begin = (size_t)h->block_number[block] * BLOCK;
  size_t n = v->local_count - begin < BLOCK ? v->local_count - begin : BLOCK;
  switch (st->kind) {
    case STAGE_INSPECT:
      if (g->grad) inspect_block(st, block, v, g, begin, n);
      break;
    case STAGE_UPDATE:
      if (g->grad && !v->muon_matrix) update_block(st, v, g, t, begin, n);
      break;
    case STAGE_LAMB1:
      if (g->grad) lamb1_block(st, block, v, g, t, begin, n);
      break;
    case STAGE_LAMB2:
      if (g->grad) lamb2_block(st, v, t, begin, n);
      break;
    case STAGE_EMA: ema_block(st, v, begin, n); break;
    case STAGE_FINALIZE: finalize_block(v, begin, n); break;
  }
}

static void stage_task(void *context, int worker, int workers) {
  Stage *st = context;
  for (;;) {
    size_t b = atomic_fetch_add_explicit(&st->next_batch, 1, memory_order_relaxed);
    if (b >= st->h->num_batches) break;
    for (size_t block = st->h->batch_block[b]; block < st->h->batch_block[b + 1]; block++) run_block(st, block);
  }
}

/* Runs a stage over every block: on the pool's threads when it is large enough. `with_grad`: only
 * variables with a gradient this step count towards the size. */
static void run_stage(cuoptimOptimizer_t opt, Stage *st, int with_grad) {
  const HostData *h = host_data(opt);
  st->opt = opt;
  st->h = h;
  st->p = opt->prologue.rule;
  st->s = *opt->scalars;
  st->loss_scale = opt->state->loss_scale;
  st->flags = prepare_flags(&st->p);
  st->rule = rule_variant(&st->p);
  st->micro = st->p.accumulation_steps && !st->s.apply_update;
  st->transform = st->flags.mean || st->flags.dynamic || st->flags.factor || st->flags.accumulate;
  st->prepare = st->micro || st->transform || st->flags.clip != CUOPTIM_CLIP_NONE;
  atomic_init(&st->next_batch, 0);
  size_t elements = 0;
  for (int k = 0; k < opt->num_variables && elements < PARALLEL_MIN_ELEMENTS; k++)
    if (!with_grad || opt->step_grads[k].grad) elements += opt->variables[k].local_count;
  cuoptim_host_run(elements < PARALLEL_MIN_ELEMENTS ? 1 : h->threads, stage_task, st);
}

/* ---- the backend's calls ---------------------------------------------------------------------- */

/* The blocks of every variable's share, and the batches: consecutive blocks until they hold at
 * least BLOCK elements. */
static cuoptimStatus_t layout_blocks(cuoptimOptimizer_t opt) {
  HostData *h = host_data(opt);
  free_blocks(h);
  size_t blocks = 0;
  for (int k = 0; k < opt->num_variables; k++) blocks += (opt->variables[k].local_count + BLOCK - 1) / BLOCK;
  h->num_blocks = blocks;
  size_t any = blocks ? blocks : 1;
  h->block_variable = malloc(any * sizeof *h->block_variable);
  h->block_number = malloc(any * sizeof *h->block_number);
  h->variable_block = malloc(((size_t)opt->num_variables + 1) * sizeof *h->variable_block);
  h->batch_block = malloc((any + 1) * sizeof *h->batch_block);
  h->block_sums = calloc(2 * any, sizeof *h->block_sums);
  h->block_nonfinite = calloc(any, 1);
  if (!h->block_variable || !h->block_number || !h->variable_block || !h->batch_block || !h->block_sums ||
      !h->block_nonfinite) {
    free_blocks(h);
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptim: cannot allocate the host backend's table of %zu blocks",
                         blocks);
  }
  size_t b = 0, batches = 0, in_batch = 0;
  for (int k = 0; k < opt->num_variables; k++) {
    h->variable_block[k] = b;
    size_t count = opt->variables[k].local_count;
    for (size_t start = 0; start < count; start += BLOCK, b++) {
      h->block_variable[b] = k;
      h->block_number[b] = (uint32_t)(start / BLOCK);
      if (in_batch == 0) h->batch_block[batches++] = b;
      in_batch += count - start < BLOCK ? count - start : BLOCK;
      if (in_batch >= BLOCK) in_batch = 0;
    }
  }
  h->variable_block[opt->num_variables] = b;
  h->num_batches = batches;
  h->batch_block[batches] = b;
  return CUOPTIM_STATUS_SUCCESS;
}

static int host_capturing(cuoptimOptimizer_t opt, cuoptimStream_t stream) { return 0; }

static cuoptimStatus_t host_check_build_stream(cuoptimOptimizer_t opt, cuoptimStream_t stream, const char *caller) {
  return CUOPTIM_STATUS_SUCCESS; /* streams mean nothing here */
}

/* The scratch floats one variable's update needs: Muon's Newton-Schulz buffers for a matrix,
 * Adafactor's two gradient-sized ones; 0 for the element-wise rules. */
static size_t scratch_floats(const cuoptimOptimizer_t opt, const cuoptimVariableRec *v) {
  if (v->muon_matrix) {
    cuoptimMuonShape m = cuoptim_muon_shape(v);
    return 2 * (size_t)(m.r * m.c) + 2 * (size_t)(m.r * m.r);
  }
  return opt->config.kind == CUOPTIM_ADAFACTOR ? 2 * v->local_count : 0;
}

/* One scratch area for the largest variable (the updates that need it run one after the other),
 * allocated once, so a step allocates nothing. */
static cuoptimStatus_t allocate_scratch(cuoptimOptimizer_t opt) {
  size_t most = 0;
  for (int k = 0; k < opt->num_variables; k++) {
    size_t floats = scratch_floats(opt, &opt->variables[k]);
    if (floats > most) most = floats;
  }
  if (most == 0) return CUOPTIM_STATUS_SUCCESS;
  HostData *h = host_data(opt);
  h->scratch = malloc(most * sizeof(float));
  if (!h->scratch)
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptim: cannot allocate %zu floats of update scratch", most);
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_build(cuoptimOptimizer_t opt, const cuoptimStream_t *stream) {
  CUOPTIM_CHECK(layout_blocks(opt));
  CUOPTIM_CHECK(allocate_scratch(opt));
  for (int k = 0; k < opt->num_variables; k++) {
    cuoptimVariableRec *v = &opt->variables[k];
    if (v->master) load_chunk(v->local_param, v->dtype, 0, v->local_count, v->master);
    for (int j = 0; j < 2; j++)
      if (v->factored[j]) memset(v->factored[j], 0, cuoptim_factored_count(v, j) * sizeof(float));
    for (int s = 0; s < opt->slots.count; s++) {
      if (!v->slots[s]) continue;
      if (cuoptim_slot_copies_variable(&opt->config, s)) { /* the variable's float32 value */
        if (v->master)
          memcpy(v->slots[s], v->master, v->local_count * sizeof(float));
        else
          load_chunk(v->local_param, CUOPTIM_FLOAT32, 0, v->local_count, v->slots[s]);
        continue;
      }
      float initial = cuoptim_slot_initial_value(&opt->config, s);
      for (size_t i = 0; i < v->local_count; i++) v->slots[s][i] = initial;
    }
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_begin_step(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_end_step(cuoptimOptimizer_t opt, cuoptimStream_t stream, cuoptimStatus_t status) {
  return status;
}

static cuoptimStatus_t host_stage_enqueued(cuoptimOptimizer_t opt, const char *stage, cuoptimStream_t stream) {
  return CUOPTIM_STATUS_SUCCESS; /* each stage is done when it returns */
}

static cuoptimStatus_t host_inspect(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  const HostData *h = host_data(opt);
  Stage st = {.kind = STAGE_INSPECT};
  run_stage(opt, &st, 1);
  for (int k = 0; k < opt->num_variables; k++) {
    cuoptimTensorScalars *t = &opt->tensors[k];
    double sumsq = 0.0;
    int nonfinite = 0;
    if (opt->step_grads[k].grad)
      for (size_t b = h->variable_block[k]; b < h->variable_block[k + 1]; b++) {
        sumsq += h->block_sums[2 * b];
        nonfinite |= h->block_nonfinite[b];
      }
    t->grad_sumsq = sumsq;
    t->nonfinite = nonfinite;
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_prologue(cuoptimOptimizer_t opt, int inspected, cuoptimStream_t stream) {
  cuoptim_prologue_begin(&opt->prologue, opt->state, opt->scalars);
  if (!inspected) return CUOPTIM_STATUS_SUCCESS;
  double total = 0.0;
  int nonfinite = 0;
  for (int k = 0; k < opt->num_variables; k++) {
    cuoptim_prologue_tensor(&opt->prologue, &opt->tensors[k]);
    total += opt->tensors[k].grad_sumsq;
    nonfinite |= opt->tensors[k].nonfinite;
  }
  cuoptim_prologue_totals(&opt->prologue, total, nonfinite, opt->scalars);
  return CUOPTIM_STATUS_SUCCESS;
}

/* Muon, pass 1 of one matrix: prepare, decay, momentum; the direction into x in X's layout.
 * Returns 0 on an accumulation micro-step. */
static int muon_pass1(const cuoptimOptimizer_t opt, cuoptimVariableRec *v, const cuoptimStepGradient *g,
                      const cuoptimTensorScalars *t, const cuoptimMuonShape *m, float *x) {
  const cuoptimRuleParams *p = &opt->prologue.rule;
  const cuoptimStepScalars *s = opt->scalars;
  float acc_unused = 0.0f;
  int applied = 1;
  for (size_t i = 0; i < v->local_count; i++) {
    float w = *working(v, i), direction = 0.0f;
    float *acc = v->accumulator ? &v->accumulator[i] : &acc_unused;
    applied = cuoptim_muon_pass1_element(p, s, t, v->use_weight_decay, load_element(g->grad, g->dtype, i), &w,
                                         &v->slots[0][i], acc, &direction);
    if (!applied) continue;
    *working(v, i) = w;
    x[cuoptim_muon_index(m, i)] = direction;
  }
  return applied;
}

/* Muon, one matrix: pass 1, the Frobenius norm (over X, in cuoptim_sumsq's order, the kernels'),
 * Newton-Schulz, and w -= lr_adjust(lr * X). */
static void update_muon_matrix(cuoptimOptimizer_t opt, int k, float *scratch) {
  cuoptimVariableRec *v = &opt->variables[k];
  const cuoptimTensorScalars *t = &opt->tensors[k];
  cuoptimMuonShape m = cuoptim_muon_shape(v);
  size_t n = (size_t)(m.r * m.c);
  float *x = scratch, *y = x + n, *a_mat = y + n, *b_mat = a_mat + (size_t)(m.r * m.r);
  if (!muon_pass1(opt, v, &opt->step_grads[k], t, &m, x)) return;
  float denominator = cuoptim_muon_norm_denominator(cuoptim_sumsq(x, n));
  for (size_t i = 0; i < n; i++) x[i] = x[i] / denominator;
  const float *u = cuoptim_host_newton_schulz(&opt->prologue.rule, x, y, a_mat, b_mat, m.r, m.c,
                                              host_data(opt)->threads);
  float sqrt_dim = cuoptim_sqrtf((float)m.c);
  for (size_t i = 0; i < v->local_count; i++)
    *working(v, i) =
        cuoptim_muon_apply(&opt->prologue.rule, opt->scalars, sqrt_dim, *working(v, i), u[cuoptim_muon_index(&m, i)]);
  store_working_half(v, 0, v->local_count);
}

static void update_muon(cuoptimOptimizer_t opt) {
  for (int k = 0; k < opt->num_variables; k++)
    if (opt->variables[k].muon_matrix && opt->step_grads[k].grad)
      update_muon_matrix(opt, k, host_data(opt)->scratch);
}

/* Lamb: pass 1 of every variable (moments, this rank's part of the two norms), then (sharded
 * state) the norms' parts combined over the ranks, the trust ratios, pass 2; an accumulation
 * micro-step ends after pass 1. */
static cuoptimStatus_t update_lamb(cuoptimOptimizer_t opt) {
  const HostData *h = host_data(opt);
  Stage pass1 = {.kind = STAGE_LAMB1};
  run_stage(opt, &pass1, 1);
  for (int k = 0; k < opt->num_variables; k++) {
    cuoptimTensorScalars *t = &opt->tensors[k];
    double w_sumsq = 0.0, u_sumsq = 0.0;
    if (opt->step_grads[k].grad)
      for (size_t b = h->variable_block[k]; b < h->variable_block[k + 1]; b++) {
        w_sumsq += h->block_sums[2 * b];
        u_sumsq += h->block_sums[2 * b + 1];
      }
    t->lamb_w_sumsq = w_sumsq;
    t->lamb_u_sumsq = u_sumsq;
  }
  if (!opt->scalars->apply_update) return CUOPTIM_STATUS_SUCCESS;
  CUOPTIM_CHECK(cuoptim_comm_combine_lamb(opt, NULL));
  for (int k = 0; k < opt->num_variables; k++)
    if (opt->step_grads[k].grad) {
      cuoptimTensorScalars *t = &opt->tensors[k];
      t->lamb_ratio = cuoptim_lamb_ratio(t->lamb_w_sumsq, t->lamb_u_sumsq);
    }
  Stage pass2 = {.kind = STAGE_LAMB2};
  run_stage(opt, &pass2, 1);
  return CUOPTIM_STATUS_SUCCESS;
}

/* ---- Adafactor: the rule needs whole-variable reductions between its element steps ----------- */

/* The float32 mean of the squares in the order of cuda/rules.h (cuoptim_sumsq), the CUDA
 * backend's. */
static float mean_square(const float *x, size_t n) { return cuoptim_mean_of_sum(cuoptim_sumsq(x, n), n); }

/* The velocity of a variable of rank >= 2 from the prepared gradient g: r and c from the row and
 * column means of g^2 + epsilon_1 (reg, scratch of the variable's size), then v = (r / mean(r)) c. */
static void adafactor_factored_velocity(const cuoptimRuleParams *p, const cuoptimStepScalars *s,
                                        cuoptimVariableRec *v, const float *g, float *reg) {
  size_t cols = (size_t)v->dims[v->rank - 1], rows = (size_t)v->dims[v->rank - 2];
  size_t batches = v->count / (rows * cols);
  float *r = v->factored[0], *c = v->factored[1], *vel = v->slots[0];
  for (size_t i = 0; i < v->count; i++) reg[i] = cuoptim_adafactor_regulated(p, g[i]);
  for (size_t b = 0; b < batches; b++) {
    const float *block = reg + b * rows * cols;
    float *rb = r + b * rows, *cb = c + b * cols;
    for (size_t i = 0; i < rows; i++)
      rb[i] = cuoptim_adafactor_moment(s, rb[i], cuoptim_strided_mean(block + i * cols, cols, 1));
    for (size_t j = 0; j < cols; j++)
      cb[j] = cuoptim_adafactor_moment(s, cb[j], cuoptim_strided_mean(block + j, rows, cols));
    float r_mean = cuoptim_strided_mean(rb, rows, 1);
    for (size_t i = 0; i < rows; i++)
      for (size_t j = 0; j < cols; j++)
        vel[(b * rows + i) * cols + j] = cuoptim_adafactor_velocity(rb[i], r_mean, cb[j]);
  }
}

/* One variable's Adafactor step; g (scratch) gets the prepared gradient, then the update u.
 * Returns 0 on an accumulation micro-step. */
static int adafactor_variable(cuoptimOptimizer_t opt, cuoptimVariableRec *v, const cuoptimStepGradient *grad,
                              const cuoptimTensorScalars *t, float *g, float *reg) {
  const cuoptimRuleParams *p = &opt->prologue.rule;
  const cuoptimStepScalars *s = opt->scalars;
  float unused = 0.0f;
  size_t n = v->local_count;
  int applied = 1; /* the same for every element: whether this is a micro-step */
  for (size_t i = 0; i < n; i++)
    applied = cuoptim_prepare_gradient(p, s, t, load_element(grad->grad, grad->dtype, i),
                                       v->accumulator ? &v->accumulator[i] : &unused, &g[i]);
  if (!applied) return 0;
  host_f32 *w = working(v, 0);
  if (v->use_weight_decay)
    for (size_t i = 0; i < n; i++) w[i] = cuoptim_adafactor_decayed(p, s, 1, w[i]);
  /* RMS(w) from a copy in the scratch: the caller's buffer need not be float-aligned, and reg is
   * free until the factored velocity's means. */
  memcpy(reg, (const void *)w, n * sizeof *reg);
  float alpha = cuoptim_adafactor_alpha(p, s, mean_square(reg, n));
  if (v->rank >= 2)
    adafactor_factored_velocity(p, s, v, g, reg);
  else
    for (size_t i = 0; i < n; i++)
      v->slots[0][i] = cuoptim_adafactor_moment(s, v->slots[0][i], cuoptim_adafactor_regulated(p, g[i]));
  for (size_t i = 0; i < n; i++) g[i] = cuoptim_adafactor_direction(g[i], v->slots[0][i]);
  float clip = cuoptim_adafactor_clip(p, mean_square(g, n));
  for (size_t i = 0; i < n; i++) w[i] = cuoptim_adafactor_apply(w[i], g[i], clip, alpha);
  store_working_half(v, 0, n);
  return 1;
}

/* Adafactor, variable by variable on the calling thread (state is never sharded), in the scratch
 * area of the build. */
static void update_adafactor(cuoptimOptimizer_t opt) {
  float *g = host_data(opt)->scratch;
  for (int k = 0; k < opt->num_variables; k++) {
    cuoptimVariableRec *v = &opt->variables[k];
    if (opt->step_grads[k].grad) adafactor_variable(opt, v, &opt->step_grads[k], &opt->tensors[k], g, g + v->local_count);
  }
}

static cuoptimStatus_t host_update(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  if (opt->scalars->skip) return CUOPTIM_STATUS_SUCCESS;
  if (opt->config.kind == CUOPTIM_LAMB) {
    CUOPTIM_CHECK(update_lamb(opt));
  } else if (opt->config.kind == CUOPTIM_ADAFACTOR) {
    update_adafactor(opt);
  } else {
    Stage st = {.kind = STAGE_UPDATE};
    run_stage(opt, &st, 1);
    if (opt->config.kind == CUOPTIM_MUON) update_muon(opt); /* the AdamW path's variables ran above */
  }
  /* EMA after every update, for every variable (SEMANTICS.md §1.3). */
  if (opt->config.use_ema) {
    Stage st = {.kind = STAGE_EMA};
    run_stage(opt, &st, 0);
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_finish(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  cuoptim_finish_step(&opt->prologue, opt->scalars, opt->state);
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_finalize(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  Stage st = {.kind = STAGE_FINALIZE};
  run_stage(opt, &st, 0);
  return CUOPTIM_STATUS_SUCCESS;
}

/* Half-precision variables: formed in float32 a piece at a time, then rounded into `out`. */
#define AVERAGE_PIECE 1024

static cuoptimStatus_t host_averaged_weights(cuoptimOptimizer_t opt, int k, void *out, cuoptimStream_t stream) {
  const cuoptimVariableRec *v = &opt->variables[k];
  const host_f32 *y = working(v, 0);
  const float *z = v->slots[0];
  float piece[AVERAGE_PIECE];
  for (size_t c = 0; c < v->local_count; c += AVERAGE_PIECE) {
    size_t n = v->local_count - c < AVERAGE_PIECE ? v->local_count - c : AVERAGE_PIECE;
    host_f32 *x = v->dtype == CUOPTIM_FLOAT32 ? (host_f32 *)out + c : piece;
    for (size_t i = 0; i < n; i++) x[i] = cuoptim_schedule_free_average(&opt->prologue.rule, y[c + i], z[c + i], NULL);
    if (v->dtype != CUOPTIM_FLOAT32) store_half_chunk(out, v->dtype, c, n, piece);
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_synchronize(cuoptimOptimizer_t opt) { return CUOPTIM_STATUS_SUCCESS; }

/* ---- checkpoint copies: plain memory, done when they return ----------------------------------- */

static cuoptimStatus_t host_transfer_begin(cuoptimOptimizer_t opt, size_t staging_bytes, size_t scratch_bytes,
                                           cuoptimTransfer *t) {
  memset(t, 0, sizeof *t);
  t->staging = malloc(staging_bytes);
  if (!t->staging)
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptim: cannot allocate a %zu-byte staging buffer",
                         staging_bytes);
  if (scratch_bytes == 0) return CUOPTIM_STATUS_SUCCESS;
  t->scratch = malloc(scratch_bytes);
  if (!t->scratch)
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptim: cannot allocate %zu bytes of host memory",
                         scratch_bytes);
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_transfer_copy(cuoptimOptimizer_t opt, cuoptimTransfer *t, void *dst, const void *src,
                                          size_t bytes, cuoptimCopyKind kind) {
  memmove(dst, src, bytes);
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t host_transfer_wait(cuoptimOptimizer_t opt, cuoptimTransfer *t) { return CUOPTIM_STATUS_SUCCESS; }

static void host_transfer_end(cuoptimOptimizer_t opt, cuoptimTransfer *t) {
  free(t->staging);
  free(t->scratch);
  memset(t, 0, sizeof *t);
}

static cuoptimStatus_t host_query(cuoptimOptimizer_t opt, int *complete, char *in_flight, size_t size) {
  *complete = 1;
  return CUOPTIM_STATUS_SUCCESS;
}

const cuoptimBackendOps cuoptim_host_backend = {
    .name = "host",
    .state_in_host_memory = 1,
    .capturing = host_capturing,
    .init = host_init,
    .release = host_release,
    .check_pointer = host_check_pointer,
    .alloc = host_alloc,
    .free = host_free,
    .upload = host_copy,
    .download = host_copy,
    .check_build_stream = host_check_build_stream,
    .build = host_build,
    .begin_step = host_begin_step,
    .stage_enqueued = host_stage_enqueued,
    .end_step = host_end_step,
    .inspect = host_inspect,
    .prologue = host_prologue,
    .update = host_update,
    .finish = host_finish,
    .finalize = host_finalize,
    .averaged_weights = host_averaged_weights,
    .synchronize = host_synchronize,
    .transfer_begin = host_transfer_begin,
    .transfer_copy = host_transfer_copy,
    .transfer_wait = host_transfer_wait,
    .transfer_end = host_transfer_end,
    .query = host_query,
};
