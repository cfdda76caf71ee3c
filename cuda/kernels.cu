/*
 * kernels.cu — the fused step on the GPU: per step two launches (prologue, update), three with an
 * inspect pass, Lamb's two passes in place of the update, Adafactor's three stages (four launches
 * a step, five with an inspect pass).
 *
 * Work is a list of chunks (variable, chunk index) built at registration; one thread block
 * handles one chunk of CUOPTIM_CHUNK elements. Each element is updated by the same functions
 * the host backend calls (rules.h); per-step scalars come from device memory (prologue.h), so a
 * step needs no host read and can be captured in a CUDA graph.
 *
 *   inspect   sums of squares of the gradient entering clipping, per chunk; non-finite flag;
 *             the block of each variable's last chunk adds the variable's (a counter per
 *             variable), in chunk order
 *   prologue  one block: learning rate, bias corrections (only those the rule reads), global
 *             sum, clip scales, skip decision; then the state's advance (iterations, loss scale,
 *             Nadam's u_product), which nothing later in the step reads
 *   update    unscale, accumulate, clip, weight decay, rule, EMA, master -> half copy: an
 *             instance compiled for the step's features where one fits (cuda/launch.h), else the
 *             generic kernel (Lamb: pass 1 moments + norms, per-variable trust ratio in the
 *             last block, pass 2 apply)
 *   Adafactor in place of the update, three launches, each for every variable (SEMANTICS.md
 *             §2.12), its reductions in the host backend's fixed order (cuda/rules.h):
 *     moments   a thread per row of each factored variable (r from the row's mean of
 *               g^2 + epsilon_1, summed in index order; rows of AF_TILE elements or more read
 *               a tile at a time through shared memory, coalesced), a thread per column (c), or
 *               the full velocity of a variable of rank < 2 element-wise (a block per
 *               cuoptimAdafactorItem); the block that writes a variable's last rows forms each
 *               batch's mean(r), once
 *     RMS       a block per chunk, one segment of cuoptim_sumsq's order, of the mean squares of
 *               the decayed variable and of the update g / sqrt(v), the factored velocity
 *               (r / mean(r)) c formed and stored on the way; the block that completes a
 *               variable adds its chunks' sums in order and writes alpha_t and the clip
 *               denominator into its cuoptimTensorScalars
 *     apply     a block per chunk: prepare (the accumulator written back), weight decay,
 *               w - alpha_t (u / clip), EMA, master -> half copy
 *             The moments stage's row and column sums and each batch's mean(r) run in sequence
 *             (the host's order of addition), a thread each.
 *
 * Deterministic: partial sums go to fixed slots and are added in a fixed order; no float atomics
 * (the per-variable counters are integers and decide only who adds, not in which order).
 * Loads are 16-byte vectors where every buffer of the variable is 16-byte aligned (4 elements at
 * a time), scalar otherwise and for the tail.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "launch.h"
#include "launch_syntax.h"

/* Threads of the prologue's single block: enough to sum many variables' chunks in parallel. */
#define PROLOGUE_THREADS 1024

/* ---- element access ----------------------------------------------------------------------- */

/* Every buffer cuoptim touches is global memory (cudaMalloc'd or managed; AddVariable checks).
 * Saying so lets the compiler emit global loads and stores (LDG/STG) instead of generic ones. */
#ifdef CUOPTIM_EMULATED_DEVICE
#define ASSUME_GLOBAL(p) ((void)(p))
#else
#define ASSUME_GLOBAL(p) __builtin_assume(__isGlobal(p))
#endif

__device__ __forceinline__ float load_scalar(const void *base, int dtype, uint64_t i) {
  ASSUME_GLOBAL(base);
  switch (dtype) {
    case CUOPTIM_FLOAT16: return __half2float(((const __half *)base)[i]);
    case CUOPTIM_BFLOAT16: return __bfloat162float(((const __nv_bfloat16 *)base)[i]);
    default: return ((const float *)base)[i];
  }
}

__device__ __forceinline__ void store_scalar(void *base, int dtype, uint64_t i, float value) {
  ASSUME_GLOBAL(base);
  switch (dtype) {
    case CUOPTIM_FLOAT16: ((__half *)base)[i] = __float2half_rn(value); break;
    case CUOPTIM_BFLOAT16: ((__nv_bfloat16 *)base)[i] = __float2bfloat16_rn(value); break;
    default: ((float *)base)[i] = value; break;
  }
}

/* Four consecutive elements starting at i (a multiple of 4, buffer 16-byte aligned for float32,
 * 8-byte aligned for half types). */
__device__ __forceinline__ void load4(const void *base, int dtype, uint64_t i, float out[4]) {
  ASSUME_GLOBAL(base);
  if (dtype == CUOPTIM_FLOAT32) {
    float4 v = *(const float4 *)((const float *)base + i);
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  } else {
    uint2 raw = *(const uint2 *)((const uint16_t *)base + i);
    /* Halves taken by shifts, not through a uint16_t pointer into raw (that would break
     * strict aliasing: the compiler may then read raw before it is loaded). Little-endian. */
    const uint16_t h[4] = {(uint16_t)(raw.x & 0xffffu), (uint16_t)(raw.x >> 16), (uint16_t)(raw.y & 0xffffu),
                           (uint16_t)(raw.y >> 16)};
    for (int k = 0; k < 4; k++) {
      if (dtype == CUOPTIM_FLOAT16) {
        __half_raw hr;
        hr.x = h[k];
        out[k] = __half2float(__half(hr));
      } else {
        __nv_bfloat16_raw br;
        br.x = h[k];
        out[k] = __bfloat162float(__nv_bfloat16(br));
      }
    }
  }
}

__device__ __forceinline__ void store4(void *base, int dtype, uint64_t i, const float in[4]) {
  ASSUME_GLOBAL(base);
  if (dtype == CUOPTIM_FLOAT32) {
    *(float4 *)((float *)base + i) = make_float4(in[0], in[1], in[2], in[3]);
  } else {
    uint16_t h[4];
    for (int k = 0; k < 4; k++) {
      if (dtype == CUOPTIM_FLOAT16) {
        __half_raw hr = __half_raw(__float2half_rn(in[k]));
        h[k] = hr.x;
      } else {
        __nv_bfloat16_raw br = __nv_bfloat16_raw(__float2bfloat16_rn(in[k]));
        h[k] = br.x;
      }
    }
    uint2 raw;
    raw.x = (uint32_t)h[0] | ((uint32_t)h[1] << 16);
    raw.y = (uint32_t)h[2] | ((uint32_t)h[3] << 16);
    *(uint2 *)((uint16_t *)base + i) = raw;
  }
}

__device__ __forceinline__ void load4f(const float *base, uint64_t i, float out[4]) {
  ASSUME_GLOBAL(base);
  float4 v = *(const float4 *)(base + i);
  out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
}

__device__ __forceinline__ void store4f(float *base, uint64_t i, const float in[4]) {
  ASSUME_GLOBAL(base);
  *(float4 *)(base + i) = make_float4(in[0], in[1], in[2], in[3]);
}

__device__ __forceinline__ bool aligned_for(const void *p, int dtype) {
  uintptr_t a = (uintptr_t)p;
  return p == NULL || (a % (dtype == CUOPTIM_FLOAT32 ? 16 : 8)) == 0;
}

/* Whether every buffer of the variable allows 4-wide vector access (slots are 256-byte aligned). */
__device__ __forceinline__ bool vectorizable(const cuoptimDeviceVariable &v, const cuoptimDeviceGradient &g) {
  return aligned_for(v.param, v.param_dtype) && (g.grad == NULL || aligned_for(g.grad, g.dtype));
}

/* The float32 working copy: the caller's float32 parameters or the master of a half variable. */
__device__ __forceinline__ float *working(const cuoptimDeviceVariable &v) {
  return v.master ? v.master : (float *)v.param;
}

/* The step scalars into shared memory: one struct copy by thread 0 (88 bytes, one round trip;
 * copying them as ints across threads would read floats through an int lvalue). */
__device__ __forceinline__ void load_scalars(cuoptimStepScalars *dst, const cuoptimStepScalars *src) {
  if (threadIdx.x == 0) *dst = *src;
  __syncthreads();
}

/* Deterministic block sum of doubles: fixed tree over fixed thread slots. */
__device__ double block_sum(double x, double *shared) {
  shared[threadIdx.x] = x;
  __syncthreads();
  for (int width = blockDim.x / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) shared[threadIdx.x] += shared[threadIdx.x + width];
    __syncthreads();
  }
  double total = shared[0];
  __syncthreads();
  return total;
}

/* The sums of squares in rules.h's order (cuoptim_sumsq: Muon's norm, Adafactor's RMS) take a
 * chunk a block: a chunk is one segment, a thread one of its lanes, block_sum the lanes' tree. */
static_assert(CUOPTIM_SUMSQ_SEGMENT == CUOPTIM_CHUNK && CUOPTIM_SUMSQ_LANES == CUOPTIM_BLOCK,
              "a chunk is one segment of the sums' order, a thread one of its lanes");

struct ChunkRange {
  uint64_t begin, end;
};

__device__ __forceinline__ ChunkRange chunk_range(const cuoptimDeviceVariable &v, int chunk) {
  ChunkRange r;
  r.begin = (uint64_t)chunk * CUOPTIM_CHUNK;
  r.end = r.begin + CUOPTIM_CHUNK < v.count ? r.begin + CUOPTIM_CHUNK : v.count;
  return r;
}

/* ---- per-variable sums: the last chunk of a variable adds its chunks' partials --------------- */

/* Fixed-order warp sum (the same tree every run). */
__device__ __forceinline__ double warp_sum(double x) {
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_down_sync(0xffffffffu, x, offset);
  return x;
}

/* A partial another block wrote in this launch: read at L2, past this SM's L1. */
__device__ __forceinline__ cuoptimChunkPartial load_partial(const cuoptimChunkPartial *p) {
#ifdef CUOPTIM_EMULATED_DEVICE
  return *p;
#else
  cuoptimChunkPartial out;
  out.a = __ldcg(&p->a);
  out.b = __ldcg(&p->b);
  out.nonfinite = __ldcg(&p->nonfinite);
  out.reserved = 0;
  return out;
#endif
}

/* The chunks of variable k in the chunk list: [*first, *end). */
__device__ __forceinline__ void variable_chunks(const cuoptimDeviceStep &step, int32_t k, int64_t *first,
                                                int64_t *end) {
  *first = step.variables[k].first_chunk;
  *end = k + 1 < step.num_variables ? step.variables[k + 1].first_chunk : step.num_chunks;
}

/* Whether this block is the last of `blocks` blocks to count at *counter in this launch (every
 * thread of the block gets the answer). The block's writes come first: thread 0's, or those of
 * threads that fenced them (__threadfence) before the call. The last block resets the counter for
 * the next launch and then sees every other block's writes (read them past L1: __ldcg). Which
 * block is last varies from run to run, so what it computes must not depend on it. */
__device__ __forceinline__ bool last_to_count(uint32_t *counter, unsigned blocks) {
  __shared__ int last;
  __syncthreads(); /* every thread's writes before thread 0 counts */
  if (threadIdx.x == 0) {
    __threadfence(); /* the block's writes before its count */
    last = atomicAdd(counter, 1u) + 1 == blocks;
    if (last) {
      *counter = 0;
      __threadfence(); /* the other blocks' writes after their counts */
    }
  }
  __syncthreads();
  return last;
}

/* Variable k's sums of its chunks' partials, by one warp: lanes over the chunks in order, then a
 * fixed tree — the same additions in the same order whichever block runs it, so the result is
 * that of a separate reduction launch, bit for bit. lamb = 0: the gradient's sums and non-finite
 * flags (then the clip denominator); lamb = 1: Lamb's two sums and its trust ratio. */
__device__ void reduce_variable(const cuoptimDeviceStep &step, int32_t k, int lamb) {
  const int lane = threadIdx.x % 32;
  int64_t first, last;
  variable_chunks(step, k, &first, &last);
  double a = 0.0, b = 0.0;
  int nonfinite = 0;
  for (int64_t j = first + lane; j < last; j += 32) {
    const cuoptimChunkPartial partial = load_partial(&step.partials[j]);
    a += partial.a;
    b += partial.b;
    nonfinite |= partial.nonfinite;
  }
  a = warp_sum(a);
  b = warp_sum(b);
  nonfinite = __any_sync(0xffffffffu, nonfinite);
  if (lane != 0) return;
  cuoptimTensorScalars *t = &step.tensors[k];
  if (lamb) {
    t->lamb_w_sumsq = a;
    t->lamb_u_sumsq = b;
    t->lamb_ratio = cuoptim_lamb_ratio(a, b);
  } else {
    t->grad_sumsq = a;
    t->nonfinite = nonfinite;
    cuoptim_prologue_tensor(step.prologue, t);
  }
}

/* After a block's thread 0 wrote its chunk's partial: the block that completes a variable's last
 * chunk (a counter per variable, reset by that block for the next launch) forms the variable's
 * sums. Deterministic: which block that is varies, the additions do not. With fold = 0 (some
 * variable has no chunk here: a separate launch writes every variable) nothing happens. */
__device__ __forceinline__ void reduce_when_last(const cuoptimDeviceStep &step, int32_t k, int lamb, int fold) {
  if (!fold) return;
  int64_t first, end;
  variable_chunks(step, k, &first, &end);
  if (last_to_count(&step.chunks_done[k], (unsigned)(end - first)) && threadIdx.x < 32) reduce_variable(step, k, lamb);
}

/* ---- inspect ------------------------------------------------------------------------------ */

__device__ __forceinline__ void inspect_element(const cuoptimRuleParams &p, float loss_scale, float raw, float acc,
                                                double &sumsq, int &nonfinite) {
  nonfinite |= !isfinite(raw);
  float x = cuoptim_inspect_gradient(&p, loss_scale, raw, acc);
  sumsq += (double)x * (double)x;
}

__global__ void __launch_bounds__(CUOPTIM_BLOCK) inspect_gradients_kernel(cuoptimDeviceStep step, cuoptimRuleParams p,
                                                                          int fold) {
  __shared__ double shared[CUOPTIM_BLOCK];
  const cuoptimChunk c = step.chunks[blockIdx.x];
  const cuoptimDeviceVariable v = step.variables[c.variable];
  const cuoptimDeviceGradient g = step.grads[c.variable];
  const float loss_scale = step.state->loss_scale;
  ChunkRange r = chunk_range(v, c.chunk);
  double sumsq = 0.0;
  int nonfinite = 0;
  if (g.grad) {
    uint64_t vector_end = r.begin;
    if (aligned_for(g.grad, g.dtype)) {
      vector_end = r.begin + (r.end - r.begin) / 4 * 4;
      for (uint64_t i = r.begin + 4 * threadIdx.x; i < vector_end; i += 4 * blockDim.x) {
        float gv[4], av[4] = {0, 0, 0, 0};
        load4(g.grad, g.dtype, i, gv);
        if (v.accumulator) load4f(v.accumulator, i, av);
#pragma unroll
        for (int k = 0; k < 4; k++) inspect_element(p, loss_scale, gv[k], av[k], sumsq, nonfinite);
      }
    }
    for (uint64_t i = vector_end + threadIdx.x; i < r.end; i += blockDim.x)
      inspect_element(p, loss_scale, load_scalar(g.grad, g.dtype, i), v.accumulator ? v.accumulator[i] : 0.0f, sumsq,
                      nonfinite);
  }
  double total = block_sum(sumsq, shared);
  int any = __syncthreads_or(nonfinite);
  if (threadIdx.x == 0) {
    step.partials[blockIdx.x].a = total;
    step.partials[blockIdx.x].nonfinite = any;
  }
  reduce_when_last(step, c.variable, 0, fold);
}

/* ---- prologue ----------------------------------------------------------------------------- */

/* Per variable, the sums of its chunks' partials in a launch of their own (reduce_variable: one
 * warp per variable): where some variable has no chunk on this rank (sharded state), so that no
 * chunk's block would write its sums. */
#define REDUCE_WARPS_PER_BLOCK (CUOPTIM_BLOCK / 32)

__global__ void __launch_bounds__(CUOPTIM_BLOCK) reduce_variables_kernel(cuoptimDeviceStep step, int lamb) {
  const int k = blockIdx.x * REDUCE_WARPS_PER_BLOCK + threadIdx.x / 32;
  if (k >= step.num_variables) return; /* whole warps leave together */
  reduce_variable(step, k, lamb);
}

/* One block: the per-step scalars; after an inspect pass also the global sum of squares (each
 * thread a fixed stride of variables, then a fixed tree) and the non-finite decision. Then it
 * advances the persistent state (Keras's iterations, the loss scale, Nadam's u_product): every
 * later kernel of the step reads the step scalars, none the state, so the finish needs no launch
 * of its own. */
__device__ void prologue_scalars(const cuoptimDeviceStep &step, int inspected, double total, int nonfinite) {
  const cuoptimPrologueParams *q = step.prologue;
  cuoptimStepScalars scalars = {}; /* fields the configured rule reads none of stay 0 */
  cuoptim_prologue_begin(q, step.state, &scalars);
  if (inspected) cuoptim_prologue_totals(q, total, nonfinite, &scalars);
  *step.scalars = scalars;
  cuoptim_finish_step(q, &scalars, step.state);
}

__global__ void __launch_bounds__(PROLOGUE_THREADS) prologue_kernel(cuoptimDeviceStep step, int inspected) {
  __shared__ double shared[PROLOGUE_THREADS];
  double total = 0.0;
  int nonfinite = 0;
  if (inspected) {
    double mine = 0.0;
    for (int k = threadIdx.x; k < step.num_variables; k += blockDim.x) {
      mine += step.tensors[k].grad_sumsq;
      nonfinite |= step.tensors[k].nonfinite;
    }
    total = block_sum(mine, shared);
    nonfinite = __syncthreads_or(nonfinite);
  }
  if (threadIdx.x == 0) prologue_scalars(step, inspected, total, nonfinite);
}

/* Without an inspect pass the prologue is the step's first kernel: it also carries the gradient
 * table's changed entries (the scatter launch's argument), so a step that uploads them costs no
 * launch more. Nothing here reads the table. */
__global__ void __launch_bounds__(CUOPTIM_BLOCK) prologue_upload_kernel(cuoptimDeviceStep step,
                                                                       const cuoptimGradientBatch batch) {
  cuoptimDeviceGradient *table = (cuoptimDeviceGradient *)step.grads; /* the backend's own table */
  for (int i = threadIdx.x; i < batch.count; i += blockDim.x) table[batch.first + i] = batch.entries[i];
  if (threadIdx.x == 0) prologue_scalars(step, 0, 0.0, 0);
}

/* ---- update ------------------------------------------------------------------------------- */

/* The threads that go through one chunk: the block, or one warp of a block of packed small
 * variables (cuoptimWorkItem). */
struct Lanes {
  uint32_t first; /* this thread's index among them */
  uint32_t count;
};

/* This block's (this warp's, when packed) chunk of the update; false: nothing for this warp. */
__device__ __forceinline__ bool update_unit(const cuoptimDeviceStep &step, cuoptimChunk &c, Lanes &lanes) {
  const cuoptimWorkItem it = step.items[blockIdx.x];
  if (it.variables == 1) {
    c.variable = it.variable;
    c.chunk = it.chunk;
    lanes.first = threadIdx.x;
    lanes.count = CUOPTIM_BLOCK;
    return true;
  }
  const int32_t warp = (int32_t)(threadIdx.x / 32);
  c.variable = it.variable + (warp < it.variables ? warp : 0); /* a warp with none: a valid index */
  c.chunk = 0;
  lanes.first = threadIdx.x % 32;
  lanes.count = 32;
  return warp < it.variables;
}

/* One element of a variable with or without a gradient: the update (when it has one), then EMA. */
template <int KIND>
__device__ __forceinline__ void update_one(const cuoptimRuleParams &p, const cuoptimStepScalars &s,
                                           const cuoptimTensorScalars &t, int has_grad, int use_wd, float g, float &w,
                                           float &s0, float &s1, float &s2, float &acc, float &avg, int use_ema) {
  cuoptimRuleParams pk = p;
  pk.kind = KIND; /* lets the compiler drop the other rules */
  if (has_grad) cuoptim_update_element(&pk, &s, &t, use_wd, g, &w, &s0, &s1, &s2, &acc, NULL);
  if (use_ema) cuoptim_ema_element(&s, &w, &avg);
}

/* A gradient-accumulation micro-step touches only the accumulator (12 B per element, PERF.md)
 * and, with EMA, the variable and its average. */
__device__ void accumulate_chunk(const cuoptimRuleParams &p, const cuoptimStepScalars &s,
                                 const cuoptimDeviceVariable &v, const cuoptimDeviceGradient &g, ChunkRange r,
                                 Lanes lanes) {
  float *w = working(v);
  const cuoptimTensorScalars unused = {};
  for (uint64_t i = r.begin + lanes.first; i < r.end; i += lanes.count) {
    if (g.grad) {
      float ignored;
      cuoptim_prepare_gradient(&p, &s, &unused, load_scalar(g.grad, g.dtype, i), &v.accumulator[i], &ignored);
    }
    if (p.use_ema) {
      float wi = w[i];
      cuoptim_ema_element(&s, &wi, &v.average[i]);
      w[i] = wi;
      if (v.master) store_scalar(v.param, v.param_dtype, i, wi);
    }
  }
}

/* What a block of a chunk-a-block update starts with: its chunk's descriptors (loaded while
 * thread 0 fetches the scalars into *s) and range. False when the block is done: a skipped step, a
 * variable without gradient or EMA, or an accumulation micro-step (accumulated here). */
__device__ __forceinline__ bool begin_update_chunk(const cuoptimDeviceStep &step, const cuoptimRuleParams &p,
                                                   cuoptimStepScalars *s, cuoptimChunk &c, cuoptimDeviceVariable &v,
                                                   cuoptimDeviceGradient &g, ChunkRange &r) {
  c = step.chunks[blockIdx.x];
  v = step.variables[c.variable];
  g = step.grads[c.variable];
  load_scalars(s, step.scalars);
  if (s->skip) return false;
  if (g.grad == NULL && !p.use_ema) return false;
  r = chunk_range(v, c.chunk);
  if (p.accumulation_steps && !s->apply_update) {
    const Lanes lanes = {threadIdx.x, CUOPTIM_BLOCK};
    accumulate_chunk(p, *s, v, g, r, lanes);
    return false;
  }
  return true;
}

/* A block a chunk (the packed items are the fixed instances': here they cost registers, 60 -> 85
 * for Adam). */
template <int KIND>
__global__ void __launch_bounds__(CUOPTIM_BLOCK) update_kernel(cuoptimDeviceStep step, cuoptimRuleParams p) {
  __shared__ cuoptimStepScalars s;
  cuoptimChunk c;
  cuoptimDeviceVariable v;
  cuoptimDeviceGradient g;
  ChunkRange r;
  if (!begin_update_chunk(step, p, &s, c, v, g, r)) return;
  const Lanes lanes = {threadIdx.x, CUOPTIM_BLOCK};
  const int has_grad = g.grad != NULL;
  const cuoptimTensorScalars t = step.tensors[c.variable];
  float *w = working(v);
  float *s0p = v.slots[0], *s1p = v.slots[1], *s2p = v.slots[2], *accp = v.accumulator, *avgp = v.average;
  /* A variable without a gradient changes only when the EMA overwrites it. */
  const bool writes_variable = has_grad || s.ema_overwrite;

  uint64_t vector_end = r.begin;
  if (vectorizable(v, g)) {
    vector_end = r.begin + (r.end - r.begin) / 4 * 4;
    for (uint64_t i = r.begin + 4 * lanes.first; i < vector_end; i += 4 * lanes.count) {
      float gv[4] = {0, 0, 0, 0}, wv[4], a0[4] = {0, 0, 0, 0}, a1[4] = {0, 0, 0, 0}, a2[4] = {0, 0, 0, 0};
      float ac[4] = {0, 0, 0, 0}, av[4] = {0, 0, 0, 0};
      if (has_grad) load4(g.grad, g.dtype, i, gv);
      load4f(w, i, wv);
      if (has_grad) {
        if (s0p) load4f(s0p, i, a0);
        if (s1p) load4f(s1p, i, a1);
        if (s2p) load4f(s2p, i, a2);
        if (accp) load4f(accp, i, ac);
      }
      if (avgp) load4f(avgp, i, av);
#pragma unroll
      for (int k = 0; k < 4; k++)
        update_one<KIND>(p, s, t, has_grad, v.use_weight_decay, gv[k], wv[k], a0[k], a1[k], a2[k], ac[k], av[k],
                         p.use_ema);
      if (writes_variable) {
        store4f(w, i, wv);
        if (v.master) store4(v.param, v.param_dtype, i, wv);
      }
      if (has_grad) {
        if (s0p) store4f(s0p, i, a0);
        if (s1p) store4f(s1p, i, a1);
        if (s2p) store4f(s2p, i, a2);
        if (accp) store4f(accp, i, ac);
      }
      if (avgp) store4f(avgp, i, av);
    }
  }
  for (uint64_t i = vector_end + lanes.first; i < r.end; i += lanes.count) {
    float gi = has_grad ? load_scalar(g.grad, g.dtype, i) : 0.0f;
    float wi = w[i];
    float a0 = s0p && has_grad ? s0p[i] : 0.0f, a1 = s1p && has_grad ? s1p[i] : 0.0f;
    float a2 = s2p && has_grad ? s2p[i] : 0.0f, ac = accp && has_grad ? accp[i] : 0.0f;
    float av = avgp ? avgp[i] : 0.0f;
    update_one<KIND>(p, s, t, has_grad, v.use_weight_decay, gi, wi, a0, a1, a2, ac, av, p.use_ema);
    if (writes_variable) {
      w[i] = wi;
      if (v.master) store_scalar(v.param, v.param_dtype, i, wi);
    }
    if (has_grad) {
      if (s0p) s0p[i] = a0;
      if (s1p) s1p[i] = a1;
      if (s2p) s2p[i] = a2;
      if (accp) accp[i] = ac;
    }
    if (avgp) avgp[i] = av;
  }
}

/* ---- update, specialized: the step configuration's flags as compile-time constants ---------- */

/* An instance is named by SPEC = KIND | features << 8 (one template argument, so that a launch
 * macro's argument list holds it). Its flags are those of cuoptim_update_features: the rules get
 * a copy of the parameters whose flag fields are constants, so the inline rules fold to the
 * configured path, and the loop carries no flag, no NULL test and no dtype switch. */
template <int SPEC>
struct FixedSpec {
  static constexpr int kind = SPEC & 0xff;
  static constexpr unsigned features = (unsigned)SPEC >> 8;
  static constexpr bool global_clip = (features & CUOPTIM_UPDATE_GLOBAL_CLIP) != 0;
  static constexpr bool master = (features & CUOPTIM_UPDATE_MASTER) != 0;
  static constexpr bool momentum = (features & CUOPTIM_UPDATE_MOMENTUM) != 0;
  /* Slots the rule reads and writes (the optional ones are off in a fixed instance). */
  static constexpr int slots = kind == CUOPTIM_SGD       ? (momentum ? 1 : 0)
                               : kind == CUOPTIM_RMSPROP ? 1
                               : kind == CUOPTIM_ADAGRAD || kind == CUOPTIM_LION ? 1
                                                                                 : 2;
};

template <int SPEC>
__device__ __forceinline__ cuoptimRuleParams fixed_params(const cuoptimRuleParams &p) {
  typedef FixedSpec<SPEC> F;
  cuoptimRuleParams q = p;
  q.kind = F::kind;
  q.clip = F::global_clip ? CUOPTIM_CLIP_GLOBAL_NORM : CUOPTIM_CLIP_NONE;
  q.has_loss_scale_factor = 0;
  q.dynamic_loss_scale = 0;
  q.use_ema = 0;
  q.mean_over_ranks = 0;
  q.accumulation_steps = 0;
  q.nesterov = 0;
  q.centered = 0;
  q.amsgrad = 0;
  q.has_momentum = F::momentum;
  return q;
}

/* A pointer the optimizer cannot see through: the chunk's base pointers stay as computed, so each
 * access is base + 32-bit offset (one IMAD.WIDE) instead of the whole 64-bit index rebuilt from
 * the chunk start and the offset, shared between the buffers (ptxas's choice without this). */
template <typename T>
__device__ __forceinline__ T *opaque(T *p) {
#ifndef CUOPTIM_EMULATED_DEVICE
  asm("" : "+l"(p));
#endif
  return p;
}

/* The same for a loop's offset: each access stays base + offset (one IMAD.WIDE per buffer)
 * rather than becoming a 64-bit pointer stepped by two adds per buffer. */
__device__ __forceinline__ uint32_t opaque_offset(uint32_t i) {
#ifndef CUOPTIM_EMULATED_DEVICE
  asm("" : "+r"(i));
#endif
  return i;
}

/* Four elements of a dtype known at compile time, at a 32-bit offset from a chunk's start. */
template <int DT>
__device__ __forceinline__ void load4t(const void *base, uint32_t i, float out[4]) {
  load4(base, DT, i, out);
}

template <int DT>
__device__ __forceinline__ void store4t(void *base, uint32_t i, const float in[4]) {
  store4(base, DT, i, in);
}

/* The buffers of one chunk, at its first element (DT: the parameters' and the gradient's dtype). */
template <int SPEC, int DT>
struct FixedChunk {
  const void *grad;
  float *w;   /* the float32 working copy: the parameters, or the master */
  void *half; /* the master's half copy (DT != float32) */
  float *s0, *s1;
};

/* Four consecutive elements of every buffer the rule touches. */
struct FixedVectors {
  float g[4], w[4], a0[4], a1[4];
};

/* The same buffers at element i of the chunk. */
template <int SPEC, int DT>
__device__ __forceinline__ FixedChunk<SPEC, DT> fixed_at(const FixedChunk<SPEC, DT> &c, uint32_t i) {
  typedef FixedSpec<SPEC> F;
  FixedChunk<SPEC, DT> e;
  e.grad = (const char *)c.grad + (size_t)i * (DT == CUOPTIM_FLOAT32 ? 4 : 2);
  e.w = c.w + i;
  e.half = (char *)c.half + (size_t)i * 2;
  e.s0 = F::slots > 0 ? c.s0 + i : NULL;
  e.s1 = F::slots > 1 ? c.s1 + i : NULL;
  return e;
}

template <int SPEC, int DT>
__device__ __forceinline__ void fixed_load(const FixedChunk<SPEC, DT> &c, uint32_t i, FixedVectors &x) {
  typedef FixedSpec<SPEC> F;
  load4t<DT>(c.grad, i, x.g);
  load4f(c.w, i, x.w);
  if (F::slots > 0) load4f(c.s0, i, x.a0);
  if (F::slots > 1) load4f(c.s1, i, x.a1);
}

/* The rule on 4 elements; f: the fast square roots and divisions (cuda/rules.h), or NULL for
 * sqrtf and '/'. Returns false when f saw an operand outside the fast sequences' range. */
template <int SPEC, bool DECAY>
__device__ __forceinline__ bool fixed_apply(const cuoptimRuleParams &q, const cuoptimStepScalars &s,
                                            FixedVectors &x, cuoptimFastMath *f) {
  const cuoptimTensorScalars t = {}; /* read by no fixed rule (clipnorm and Lamb are generic) */
#pragma unroll
  for (int k = 0; k < 4; k++) {
    float s2 = 0.0f, acc = 0.0f; /* no amsgrad, no accumulation */
    cuoptim_update_element(&q, &s, &t, DECAY, x.g[k], &x.w[k], &x.a0[k], &x.a1[k], &s2, &acc, f);
  }
  return f == NULL || f->in_range;
}

template <int SPEC, int DT>
__device__ __forceinline__ void fixed_store(const FixedChunk<SPEC, DT> &c, uint32_t i, const FixedVectors &x) {
  typedef FixedSpec<SPEC> F;
  store4f(c.w, i, x.w);
  if (DT != CUOPTIM_FLOAT32) store4t<DT>(c.half, i, x.w);
  if (F::slots > 0) store4f(c.s0, i, x.a0);
  if (F::slots > 1) store4f(c.s1, i, x.a1);
}

/* Four elements at offset i of a chunk: loaded, the rule with sqrtf and '/', stored. */
template <int SPEC, int DT, bool DECAY>
__device__ __forceinline__ void fixed_vector_ieee(const cuoptimRuleParams &q, const cuoptimStepScalars &s,
                                                  const FixedChunk<SPEC, DT> &c, uint32_t i) {
  FixedVectors x;
  fixed_load(c, i, x);
  fixed_apply<SPEC, DECAY>(q, s, x, NULL);
  fixed_store(c, i, x);
}

/* Four elements at offset i of a chunk: loaded, the rule with the fast square roots and
 * divisions (cuda/rules.h), stored, unless an operand was outside the fast sequences' range (a
 * zero or tiny moment, a NaN): then nothing is stored and false returned, and the caller computes
 * the four with sqrtf and '/' (fixed_vector_ieee) outside its loop, so that the slow subroutines'
 * registers stay out of the loop. Either way the results are the IEEE ones. */
template <int SPEC, int DT, bool DECAY>
__device__ __forceinline__ bool fixed_vector_fast(const cuoptimRuleParams &q, const cuoptimStepScalars &s,
                                                  const FixedChunk<SPEC, DT> &c, uint32_t i) {
  FixedVectors x;
  cuoptimFastMath f = {1};
  fixed_load(c, i, x);
  if (!fixed_apply<SPEC, DECAY>(q, s, x, &f)) return false;
  fixed_store(c, i, x);
  return true;
}

/* One chunk of one variable with a gradient (DECAY: the variable's weight decay), by `lanes`.
 * Offsets inside the chunk are 32-bit. A whole, vectorizable chunk takes two vectors of 4
 * elements an iteration, one after the other (the loop's cost shared by 8 elements). The loops
 * run the fast square roots and divisions; a vector they send back leaves the loop, is computed
 * with sqrtf and '/', and the loop goes on after it: the slow subroutines' calls, which pin
 * registers, stay outside the loop (bench/results/sass-report.md). The last chunk of a variable,
 * a packed small variable and unaligned buffers: a vector loop and a scalar tail (sqrtf, '/'). */
template <int SPEC, int DT, bool DECAY>
__device__ __forceinline__ void fixed_chunk(const cuoptimRuleParams &q, const cuoptimStepScalars &s,
                                            const cuoptimDeviceVariable &v, const cuoptimDeviceGradient &g,
                                            uint64_t begin, uint32_t n, Lanes lanes) {
  typedef FixedSpec<SPEC> F;
  const size_t bytes = DT == CUOPTIM_FLOAT32 ? 4 : 2; /* of a parameter and a gradient element */
  FixedChunk<SPEC, DT> c;
  c.grad = opaque((const char *)g.grad + begin * bytes);
  c.w = opaque((DT == CUOPTIM_FLOAT32 ? (float *)v.param : v.master) + begin);
  c.half = opaque((char *)v.param + begin * bytes);
  c.s0 = F::slots > 0 ? opaque(v.slots[0] + begin) : NULL;
  c.s1 = F::slots > 1 ? opaque(v.slots[1] + begin) : NULL;
  const uint32_t stride = 4 * CUOPTIM_BLOCK;
  uint32_t vector_end = 0;
  if (vectorizable(v, g)) {
    vector_end = n / 4 * 4;
    if (n == CUOPTIM_CHUNK) { /* a whole chunk: the block's (packed variables are smaller) */
      /* CUOPTIM_CHUNK / stride steps per thread, an even number: two per iteration, at one
       * address per buffer and a constant offset (the loop's cost shared by 8 elements). */
      uint32_t i = 4 * threadIdx.x;
      for (;;) {
        uint32_t failed = 0; /* the offset of the vector sent back */
#pragma unroll 1
        for (; i < CUOPTIM_CHUNK; i += 2 * stride) {
          const FixedChunk<SPEC, DT> e = fixed_at(c, opaque_offset(i));
          if (!fixed_vector_fast<SPEC, DT, DECAY>(q, s, e, 0)) break;
          if (!fixed_vector_fast<SPEC, DT, DECAY>(q, s, e, stride)) {
            failed = stride;
            break;
          }
        }
        if (i >= CUOPTIM_CHUNK) return;
        const FixedChunk<SPEC, DT> e = fixed_at(c, opaque_offset(i));
        if (failed == 0) fixed_vector_ieee<SPEC, DT, DECAY>(q, s, e, 0);
        fixed_vector_ieee<SPEC, DT, DECAY>(q, s, e, stride);
        i += 2 * stride;
      }
    }
    for (uint32_t i = 4 * lanes.first; i < vector_end; i += 4 * lanes.count) {
#pragma unroll 1
      for (; i < vector_end; i += 4 * lanes.count)
        if (!fixed_vector_fast<SPEC, DT, DECAY>(q, s, c, i)) break;
      if (i < vector_end) fixed_vector_ieee<SPEC, DT, DECAY>(q, s, c, opaque_offset(i));
    }
  }
  for (uint32_t i = vector_end + lanes.first; i < n; i += lanes.count) {
    float wi = c.w[i], a0 = F::slots > 0 ? c.s0[i] : 0.0f, a1 = F::slots > 1 ? c.s1[i] : 0.0f, a2 = 0.0f, acc = 0.0f;
    const cuoptimTensorScalars t = {};
    cuoptim_update_element(&q, &s, &t, DECAY, load_scalar(c.grad, DT, i), &wi, &a0, &a1, &a2, &acc, NULL);
    c.w[i] = wi;
    if (DT != CUOPTIM_FLOAT32) store_scalar(c.half, DT, i, wi);
    if (F::slots > 0) c.s0[i] = a0;
    if (F::slots > 1) c.s1[i] = a1;
  }
}

template <int SPEC, int DT>
__device__ __forceinline__ void fixed_chunk_decay(const cuoptimRuleParams &q, const cuoptimStepScalars &s,
                                                  const cuoptimDeviceVariable &v, const cuoptimDeviceGradient &g,
                                                  uint64_t begin, uint32_t n, Lanes lanes) {
  if (v.use_weight_decay)
    fixed_chunk<SPEC, DT, true>(q, s, v, g, begin, n, lanes);
  else
    fixed_chunk<SPEC, DT, false>(q, s, v, g, begin, n, lanes);
}

/* The configurations of cuoptim_update_features with CUOPTIM_UPDATE_FIXED: no skip, no
 * micro-step, no EMA, so a variable without a gradient is left as it is. */
template <int SPEC>
__global__ void __launch_bounds__(CUOPTIM_BLOCK) update_fixed_kernel(cuoptimDeviceStep step, cuoptimRuleParams p) {
  typedef FixedSpec<SPEC> F;
  __shared__ cuoptimStepScalars shared_scalars;
  /* The chunk's descriptors are loaded while thread 0 fetches the scalars. */
  cuoptimChunk c;
  Lanes lanes;
  const bool mine = update_unit(step, c, lanes);
  const cuoptimDeviceVariable v = step.variables[c.variable];
  const cuoptimDeviceGradient g = step.grads[c.variable];
  load_scalars(&shared_scalars, step.scalars);
  if (!mine || g.grad == NULL) return;
  const cuoptimStepScalars s = shared_scalars;
  const cuoptimRuleParams q = fixed_params<SPEC>(p);
  const uint64_t begin = (uint64_t)c.chunk * CUOPTIM_CHUNK;
  const uint32_t n = (uint32_t)(begin + CUOPTIM_CHUNK < v.count ? CUOPTIM_CHUNK : v.count - begin);
  if (!F::master || v.param_dtype == CUOPTIM_FLOAT32)
    fixed_chunk_decay<SPEC, CUOPTIM_FLOAT32>(q, s, v, g, begin, n, lanes);
  else if (v.param_dtype == CUOPTIM_FLOAT16)
    fixed_chunk_decay<SPEC, CUOPTIM_FLOAT16>(q, s, v, g, begin, n, lanes);
  else
    fixed_chunk_decay<SPEC, CUOPTIM_BFLOAT16>(q, s, v, g, begin, n, lanes);
}

/* ---- Lamb: pass 1 (moments, norms), ratio, pass 2 (apply, EMA) ---------------------------- */

/* Pass 1 adds each thread's squares in the order of the scalar loop it replaced (thread t: elements
 * t, t + 256, t + 512, ... of the chunk), so that the norms keep their bits: each 1024-element
 * window is computed 4 elements a thread with vector loads, its decayed variables and update
 * directions are put in shared memory, and every thread then adds its old elements from there. */
__global__ void __launch_bounds__(CUOPTIM_BLOCK) lamb_pass1_kernel(cuoptimDeviceStep step, cuoptimRuleParams p, int fold) {
  __shared__ cuoptimStepScalars s;
  __shared__ double shared[CUOPTIM_BLOCK];
  __shared__ float window_w[4 * CUOPTIM_BLOCK], window_u[4 * CUOPTIM_BLOCK];
  /* The chunk's descriptors are loaded while thread 0 fetches the scalars. */
  const cuoptimChunk c = step.chunks[blockIdx.x];
  const cuoptimDeviceVariable v = step.variables[c.variable];
  const cuoptimDeviceGradient g = step.grads[c.variable];
  const cuoptimTensorScalars t = step.tensors[c.variable];
  load_scalars(&s, step.scalars);
  if (s.skip) return; /* every block: the per-variable counters stay as they are */
  ChunkRange r = chunk_range(v, c.chunk);
  const float *w = working(v);
  float *s0p = v.slots[0], *s1p = v.slots[1], *accp = v.accumulator;
  double w_sumsq = 0.0, u_sumsq = 0.0;
  if (g.grad) {
    uint64_t vector_end = r.begin;
    if (vectorizable(v, g)) {
      vector_end = r.begin + (r.end - r.begin) / 4 * 4;
      for (uint64_t base = r.begin; base < vector_end; base += 4 * CUOPTIM_BLOCK) {
        const uint64_t i = base + 4 * threadIdx.x;
        float wd[4] = {0, 0, 0, 0}, up[4] = {0, 0, 0, 0};
        if (i < vector_end) {
          float gv[4], wv[4], m[4], u[4], ac[4] = {0, 0, 0, 0};
          load4(g.grad, g.dtype, i, gv);
          load4f(w, i, wv);
          load4f(s0p, i, m);
          load4f(s1p, i, u);
          if (accp) load4f(accp, i, ac);
#pragma unroll
          for (int k = 0; k < 4; k++)
            if (!cuoptim_lamb_pass1_element(&p, &s, &t, v.use_weight_decay, gv[k], wv[k], &m[k], &u[k], &ac[k], &wd[k],
                                            &up[k]))
              wd[k] = up[k] = 0.0f; /* a micro-step: adds +0 to the norms, as adding nothing does */
          if (s.apply_update) {
            store4f(s0p, i, m);
            store4f(s1p, i, u);
          }
          if (accp) store4f(accp, i, ac);
        }
#pragma unroll
        for (int k = 0; k < 4; k++) {
          window_w[4 * threadIdx.x + k] = wd[k];
          window_u[4 * threadIdx.x + k] = up[k];
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < 4; j++) {
          const uint32_t e = threadIdx.x + j * CUOPTIM_BLOCK;
          if (base + e < vector_end) {
            w_sumsq += (double)window_w[e] * (double)window_w[e];
            u_sumsq += (double)window_u[e] * (double)window_u[e];
          }
        }
        __syncthreads();
      }
    }
    /* The tail in the scalar loop's thread order too: element x to thread (x - begin) % 256. */
    const uint32_t shift = (uint32_t)((vector_end - r.begin) % CUOPTIM_BLOCK);
    const uint64_t tail = vector_end + (threadIdx.x + CUOPTIM_BLOCK - shift) % CUOPTIM_BLOCK;
    for (uint64_t i = tail; i < r.end; i += CUOPTIM_BLOCK) {
      float acc = accp ? accp[i] : 0.0f, w_decayed, update;
      float raw = load_scalar(g.grad, g.dtype, i);
      if (cuoptim_lamb_pass1_element(&p, &s, &t, v.use_weight_decay, raw, w[i], &s0p[i], &s1p[i], &acc, &w_decayed,
                                     &update)) {
        w_sumsq += (double)w_decayed * (double)w_decayed;
        u_sumsq += (double)update * (double)update;
      }
      if (accp) accp[i] = acc;
    }
  }
  double a = block_sum(w_sumsq, shared);
  double b = block_sum(u_sumsq, shared);
  if (threadIdx.x == 0) {
    step.partials[blockIdx.x].a = a;
    step.partials[blockIdx.x].b = b;
    step.partials[blockIdx.x].nonfinite = 0;
  }
  reduce_when_last(step, c.variable, 1, fold);
}

/* One element of pass 2: the trust-ratio step (when the variable has a gradient), then EMA. */
__device__ __forceinline__ void lamb_pass2_one(const cuoptimRuleParams &p, const cuoptimStepScalars &s,
                                               const cuoptimTensorScalars &t, int use_wd, int update, float &w,
                                               float m, float u, float &avg) {
  if (update) w = cuoptim_lamb_pass2_element(&p, &s, &t, use_wd, w, m, u);
  if (p.use_ema) cuoptim_ema_element(&s, &w, &avg);
}

__global__ void __launch_bounds__(CUOPTIM_BLOCK) lamb_pass2_kernel(cuoptimDeviceStep step, cuoptimRuleParams p) {
  __shared__ cuoptimStepScalars s;
  const cuoptimChunk c = step.chunks[blockIdx.x];
  const cuoptimDeviceVariable v = step.variables[c.variable];
  const cuoptimDeviceGradient g = step.grads[c.variable];
  const cuoptimTensorScalars t = step.tensors[c.variable];
  load_scalars(&s, step.scalars);
  if (s.skip) return;
  const int update = g.grad != NULL && s.apply_update;
  if (!update && !p.use_ema) return;
  ChunkRange r = chunk_range(v, c.chunk);
  float *w = working(v);
  const float *s0p = v.slots[0], *s1p = v.slots[1];
  float *avgp = v.average;
  uint64_t vector_end = r.begin;
  if (aligned_for(v.param, v.param_dtype)) {
    vector_end = r.begin + (r.end - r.begin) / 4 * 4;
    for (uint64_t i = r.begin + 4 * threadIdx.x; i < vector_end; i += 4 * blockDim.x) {
      float wv[4], m[4] = {0, 0, 0, 0}, u[4] = {0, 0, 0, 0}, av[4] = {0, 0, 0, 0};
      load4f(w, i, wv);
      if (update) {
        load4f(s0p, i, m);
        load4f(s1p, i, u);
      }
      if (avgp) load4f(avgp, i, av);
#pragma unroll
      for (int k = 0; k < 4; k++) lamb_pass2_one(p, s, t, v.use_weight_decay, update, wv[k], m[k], u[k], av[k]);
      store4f(w, i, wv);
      if (v.master) store4(v.param, v.param_dtype, i, wv);
      if (avgp) store4f(avgp, i, av);
    }
  }
  for (uint64_t i = vector_end + threadIdx.x; i < r.end; i += blockDim.x) {
    float wi = w[i], av = avgp ? avgp[i] : 0.0f;
    lamb_pass2_one(p, s, t, v.use_weight_decay, update, wi, update ? s0p[i] : 0.0f, update ? s1p[i] : 0.0f, av);
    w[i] = wi;
    if (v.master) store_scalar(v.param, v.param_dtype, i, wi);
    if (avgp) avgp[i] = av;
  }
}

/* ---- Adafactor: moments, RMS, apply --------------------------------------------------------
 * Its rule needs whole-variable reductions between element steps (SEMANTICS.md §2.12), taken in
 * the host backend's fixed order (cuda/rules.h), so that the GPU's results are the host's bit for
 * bit. The prepared gradient is formed again from the raw one wherever a stage needs it (the
 * accumulator is written back only by the apply stage), and the variable is read decayed (only
 * the apply stage writes it), so no stage needs a gradient-sized scratch buffer. */

/* g^2 + epsilon_1 of element i of an update step. */
__device__ __forceinline__ float adafactor_regulated_at(const cuoptimRuleParams &p, const cuoptimStepScalars &s,
                                                        const cuoptimTensorScalars &t, const cuoptimDeviceVariable &v,
                                                        const cuoptimDeviceGradient &g, uint64_t i) {
  const float acc = v.accumulator ? v.accumulator[i] : 0.0f;
  return cuoptim_adafactor_regulated(&p, cuoptim_adafactor_gradient(&p, &s, &t, load_scalar(g.grad, g.dtype, i), acc));
}

/* A float another block wrote in this launch: read at L2, past this SM's L1. */
__device__ __forceinline__ float load_fresh(const float *p) {
#ifdef CUOPTIM_EMULATED_DEVICE
  return *p;
#else
  return __ldcg(p);
#endif
}

/* Each batch's mean(r) of a factored variable, once the moments stage has written all its r: a
 * thread per batch, r summed in index order (cuoptim_strided_mean's order), into v.row_means for
 * the RMS stage. */
__device__ void adafactor_row_means(const cuoptimDeviceVariable &v, uint64_t batches, uint64_t rows) {
  for (uint64_t b = threadIdx.x; b < batches; b += blockDim.x) {
    double sum = 0.0;
    for (uint64_t i = 0; i < rows; i++) sum += (double)load_fresh(&v.factored[0][b * rows + i]);
    v.row_means[b] = cuoptim_mean_of_sum(sum, rows);
  }
}

/* Columns per tile of the moments stage's row sums: a warp's width, so that a warp reads one
 * row's 32 consecutive elements at a time. */
#define AF_TILE 32

/* The sum of g^2 + epsilon_1 along row first + threadIdx.x (of `lines` rows of `cols` elements),
 * through shared memory: a tile of CUOPTIM_BLOCK rows x AF_TILE columns at a time, each warp
 * reading AF_TILE consecutive elements of a row (coalesced), then each thread adding its row's
 * part of the tile in column order: the additions of a thread walking its row alone, in the same
 * order. */
__device__ double adafactor_row_sum_tiled(const cuoptimRuleParams &p, const cuoptimStepScalars &s,
                                          const cuoptimTensorScalars &t, const cuoptimDeviceVariable &v,
                                          const cuoptimDeviceGradient &g, uint64_t first, uint64_t lines,
                                          uint64_t cols) {
  __shared__ float tile[CUOPTIM_BLOCK][AF_TILE + 1]; /* + 1: each thread's row in banks of its own */
  const uint32_t column = threadIdx.x % AF_TILE;
  double sum = 0.0;
  for (uint64_t j0 = 0; j0 < cols; j0 += AF_TILE) {
    for (uint32_t k = threadIdx.x / AF_TILE; k < CUOPTIM_BLOCK; k += CUOPTIM_BLOCK / AF_TILE)
      if (first + k < lines && j0 + column < cols)
        tile[k][column] = adafactor_regulated_at(p, s, t, v, g, (first + k) * cols + j0 + column);
    __syncthreads();
    const uint64_t width = cols - j0 < AF_TILE ? cols - j0 : AF_TILE;
    if (first + threadIdx.x < lines)
      for (uint32_t j = 0; j < width; j++) sum += (double)tile[threadIdx.x][j];
    __syncthreads();
  }
  return sum;
}

/* Moments: a thread per row of a factored variable (r = beta_2 r + (1 - beta_2) mean(g^2 + eps_1)
 * along the row, summed in index order; rows of a tile's width or more read through
 * adafactor_row_sum_tiled, narrower ones by each thread alone), a thread per column (c, the same
 * down the column: neighbouring threads read neighbouring elements), or the full velocity
 * element-wise. The block that writes a variable's last rows (a counter per variable) then forms
 * each batch's mean(r). */
__global__ void __launch_bounds__(CUOPTIM_BLOCK) adafactor_moments_kernel(cuoptimDeviceStep step, cuoptimRuleParams p) {
  __shared__ cuoptimStepScalars s;
  const cuoptimAdafactorItem it = step.af_items[blockIdx.x];
  const cuoptimDeviceVariable v = step.variables[it.variable];
  const cuoptimDeviceGradient g = step.grads[it.variable];
  const cuoptimTensorScalars t = step.tensors[it.variable];
  load_scalars(&s, step.scalars);
  if (s.skip || !s.apply_update || g.grad == NULL) return;
  if (it.axis == CUOPTIM_AF_FULL) {
    const uint64_t end = it.first + CUOPTIM_CHUNK < v.count ? it.first + CUOPTIM_CHUNK : v.count;
    for (uint64_t i = it.first + threadIdx.x; i < end; i += blockDim.x)
      v.slots[0][i] = cuoptim_adafactor_moment(&s, v.slots[0][i], adafactor_regulated_at(p, s, t, v, g, i));
    return;
  }
  const uint64_t rows = (uint64_t)v.rows, cols = (uint64_t)v.cols, batches = v.count / (rows * cols);
  const uint64_t line = (uint64_t)it.first + threadIdx.x;
  double sum = 0.0;
  if (it.axis == CUOPTIM_AF_ROWS) {
    const uint64_t lines = batches * rows;
    if (cols >= AF_TILE)
      sum = adafactor_row_sum_tiled(p, s, t, v, g, it.first, lines, cols);
    else if (line < lines)
      for (uint64_t j = 0; j < cols; j++) sum += (double)adafactor_regulated_at(p, s, t, v, g, line * cols + j);
    if (line < lines) {
      v.factored[0][line] = cuoptim_adafactor_moment(&s, v.factored[0][line], cuoptim_mean_of_sum(sum, cols));
      __threadfence(); /* this row's r before the block's count */
    }
    /* The variable's row blocks: CUOPTIM_BLOCK lines each (cuoptimAdafactorItem). */
    const unsigned row_blocks = (unsigned)((lines + CUOPTIM_BLOCK - 1) / CUOPTIM_BLOCK);
    if (last_to_count(&step.chunks_done[it.variable], row_blocks)) adafactor_row_means(v, batches, rows);
  } else {
    if (line >= batches * cols) return;
    const uint64_t base = line / cols * rows * cols + line % cols;
    for (uint64_t i = 0; i < rows; i++) sum += (double)adafactor_regulated_at(p, s, t, v, g, base + i * cols);
    v.factored[1][line] = cuoptim_adafactor_moment(&s, v.factored[1][line], cuoptim_mean_of_sum(sum, rows));
  }
}

/* One lane of a chunk's two sums of squares: elements begin + lane, begin + lane + LANES, ... in
 * ascending order (cuoptim_sumsq_lane's), of the decayed variable (for RMS(w)) and of the update
 * g / sqrt(v) (for RMS(u)). A factored variable's velocity (r / mean(r)) c is formed here and
 * stored. */
__device__ __forceinline__ void adafactor_lane_sums(const cuoptimRuleParams &p, const cuoptimStepScalars &s,
                                                    const cuoptimTensorScalars &t, const cuoptimDeviceVariable &v,
                                                    const cuoptimDeviceGradient &g, ChunkRange r, double &w_sumsq,
                                                    double &u_sumsq) {
  const float *w = working(v);
  float *velocity = v.slots[0];
  const uint64_t rows = (uint64_t)v.rows, cols = (uint64_t)v.cols;
  for (uint64_t i = r.begin + threadIdx.x; i < r.end; i += CUOPTIM_SUMSQ_LANES) {
    const float decayed = cuoptim_adafactor_decayed(&p, &s, v.use_weight_decay, w[i]);
    w_sumsq += (double)decayed * (double)decayed;
    const float acc = v.accumulator ? v.accumulator[i] : 0.0f;
    const float gi = cuoptim_adafactor_gradient(&p, &s, &t, load_scalar(g.grad, g.dtype, i), acc);
    float vi;
    if (v.factored[0]) {
      const uint64_t matrix = rows * cols, b = i / matrix, within = i - b * matrix, row = within / cols;
      const uint64_t col = within - row * cols;
      vi = cuoptim_adafactor_velocity(v.factored[0][b * rows + row], v.row_means[b], v.factored[1][b * cols + col]);
      velocity[i] = vi;
    } else {
      vi = velocity[i];
    }
    const float u = cuoptim_adafactor_direction(gi, vi);
    u_sumsq += (double)u * (double)u;
  }
}

/* RMS: a block per chunk, the chunk one segment of cuoptim_sumsq's order (a thread a lane,
 * block_sum the lanes' tree), its two sums into the chunk's partial; the block that completes a
 * variable (a counter per variable) adds its chunks' partials in chunk order, as cuoptim_sumsq
 * adds segments, and writes the variable's alpha_t and clip denominator. */
__global__ void __launch_bounds__(CUOPTIM_BLOCK) adafactor_rms_kernel(cuoptimDeviceStep step, cuoptimRuleParams p) {
  __shared__ cuoptimStepScalars s;
  __shared__ double shared[CUOPTIM_BLOCK];
  const cuoptimChunk c = step.chunks[blockIdx.x];
  const cuoptimDeviceVariable v = step.variables[c.variable];
  const cuoptimDeviceGradient g = step.grads[c.variable];
  load_scalars(&s, step.scalars);
  if (s.skip || !s.apply_update || g.grad == NULL) return; /* the whole block, and every block of the variable */
  const cuoptimTensorScalars t = step.tensors[c.variable];
  double w_sumsq = 0.0, u_sumsq = 0.0;
  adafactor_lane_sums(p, s, t, v, g, chunk_range(v, c.chunk), w_sumsq, u_sumsq);
  const double w_total = block_sum(w_sumsq, shared);
  const double u_total = block_sum(u_sumsq, shared);
  if (threadIdx.x == 0) {
    step.partials[blockIdx.x].a = w_total;
    step.partials[blockIdx.x].b = u_total;
  }
  int64_t first, end;
  variable_chunks(step, c.variable, &first, &end);
  if (!last_to_count(&step.chunks_done[c.variable], (unsigned)(end - first)) || threadIdx.x != 0) return;
  double w_sum = 0.0, u_sum = 0.0;
  for (int64_t j = first; j < end; j++) {
    const cuoptimChunkPartial partial = load_partial(&step.partials[j]);
    w_sum += partial.a;
    u_sum += partial.b;
  }
  cuoptimTensorScalars *out = &step.tensors[c.variable];
  out->af_alpha = cuoptim_adafactor_alpha(&p, &s, cuoptim_mean_of_sum(w_sum, v.count));
  out->af_clip = cuoptim_adafactor_clip(&p, cuoptim_mean_of_sum(u_sum, v.count));
}

/* Apply: a chunk a block, every variable: the step (prepare, writing the accumulator back, weight
 * decay, w - alpha_t (u / clip)), then EMA; a micro-step only accumulates (and EMA). */
__global__ void __launch_bounds__(CUOPTIM_BLOCK) adafactor_apply_kernel(cuoptimDeviceStep step, cuoptimRuleParams p) {
  __shared__ cuoptimStepScalars s;
  cuoptimChunk c;
  cuoptimDeviceVariable v;
  cuoptimDeviceGradient g;
  ChunkRange r;
  if (!begin_update_chunk(step, p, &s, c, v, g, r)) return;
  const Lanes lanes = {threadIdx.x, CUOPTIM_BLOCK};
  const int has_grad = g.grad != NULL;
  const cuoptimTensorScalars t = step.tensors[c.variable];
  float *w = working(v);
  const bool writes_variable = has_grad || s.ema_overwrite;
  for (uint64_t i = r.begin + lanes.first; i < r.end; i += lanes.count) {
    float wi = w[i];
    if (has_grad) {
      float acc = v.accumulator ? v.accumulator[i] : 0.0f;
      cuoptim_adafactor_apply_element(&p, &s, &t, v.use_weight_decay, load_scalar(g.grad, g.dtype, i), v.slots[0][i],
                                      &wi, &acc);
      if (v.accumulator) v.accumulator[i] = acc;
    }
    if (p.use_ema) cuoptim_ema_element(&s, &wi, &v.average[i]);
    if (writes_variable) {
      w[i] = wi;
      if (v.master) store_scalar(v.param, v.param_dtype, i, wi);
    }
  }
}

/* ---- finalize, build, combine ------------------------------------------------------------- */

/* Sharded state: every rank's per-variable inspect sums ([rank][variable], gathered by the
 * communicator) added in rank order, so every rank forms the same totals, the same every run;
 * then each variable's clip denominator from its total, as the single-process reduction does. */
__global__ void __launch_bounds__(CUOPTIM_BLOCK) combine_shards_kernel(cuoptimTensorScalars *tensors,
                                                                       const cuoptimTensorScalars *gathered,
                                                                       const cuoptimPrologueParams *prologue,
                                                                       int32_t num_variables, int32_t world) {
  for (int32_t k = blockIdx.x * blockDim.x + threadIdx.x; k < num_variables; k += gridDim.x * blockDim.x) {
    double sumsq = 0.0;
    int32_t nonfinite = 0;
    for (int32_t r = 0; r < world; r++) {
      sumsq += gathered[(int64_t)r * num_variables + k].grad_sumsq;
      nonfinite |= gathered[(int64_t)r * num_variables + k].nonfinite;
    }
    tensors[k].grad_sumsq = sumsq;
    tensors[k].nonfinite = nonfinite != 0;
    cuoptim_prologue_tensor(prologue, &tensors[k]);
  }
}

/* Sharded state: Lamb's two norms per variable added over the ranks in rank order, then its
 * trust ratio, as the single-process reduction forms it. */
__global__ void __launch_bounds__(CUOPTIM_BLOCK) combine_lamb_kernel(cuoptimTensorScalars *tensors,
                                                                     const cuoptimTensorScalars *gathered,
                                                                     int32_t num_variables, int32_t world) {
  for (int32_t k = blockIdx.x * blockDim.x + threadIdx.x; k < num_variables; k += gridDim.x * blockDim.x) {
    double w = 0.0, u = 0.0;
    for (int32_t r = 0; r < world; r++) {
      w += gathered[(int64_t)r * num_variables + k].lamb_w_sumsq;
      u += gathered[(int64_t)r * num_variables + k].lamb_u_sumsq;
    }
    tensors[k].lamb_w_sumsq = w;
    tensors[k].lamb_u_sumsq = u;
    tensors[k].lamb_ratio = cuoptim_lamb_ratio(w, u);
  }
}

__global__ void __launch_bounds__(CUOPTIM_BLOCK) finalize_kernel(cuoptimDeviceStep step) {
  const cuoptimChunk c = step.chunks[blockIdx.x];
  const cuoptimDeviceVariable v = step.variables[c.variable];
  ChunkRange r = chunk_range(v, c.chunk);
  float *w = working(v);
  for (uint64_t i = r.begin + threadIdx.x; i < r.end; i += blockDim.x) {
    w[i] = v.average[i];
    if (v.master) store_scalar(v.param, v.param_dtype, i, v.average[i]);
  }
}

/* ScheduleFreeAdamW's averaged weights of variable k, in its parameters' dtype, into `out`. */
__global__ void __launch_bounds__(CUOPTIM_BLOCK) schedule_free_average_kernel(cuoptimDeviceStep step, int32_t k,
                                                                             cuoptimRuleParams p, void *out) {
  const cuoptimDeviceVariable v = step.variables[k];
  const float *w = working(v);
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < v.count; i += (uint64_t)gridDim.x * blockDim.x)
    store_scalar(out, v.param_dtype, i, cuoptim_schedule_free_average(&p, w[i], v.slots[0][i], NULL));
}

/* slot0_copies_variable: ScheduleFreeAdamW's momentum starts as the variable (its float32 value). */
__global__ void __launch_bounds__(CUOPTIM_BLOCK) build_kernel(cuoptimDeviceStep step, float slot0_initial,
                                                              int slot0_copies_variable) {
  const cuoptimChunk c = step.chunks[blockIdx.x];
  const cuoptimDeviceVariable v = step.variables[c.variable];
  ChunkRange r = chunk_range(v, c.chunk);
  for (uint64_t i = r.begin + threadIdx.x; i < r.end; i += blockDim.x) {
    float working = load_scalar(v.param, v.param_dtype, i);
    if (v.master) v.master[i] = working;
    if (v.slots[0]) v.slots[0][i] = slot0_copies_variable ? working : slot0_initial;
    if (v.slots[1]) v.slots[1][i] = 0.0f;
    if (v.slots[2]) v.slots[2][i] = 0.0f;
    if (v.average) v.average[i] = 0.0f;
    if (v.accumulator) v.accumulator[i] = 0.0f;
    if (v.factored[0] && i < v.count / (uint64_t)v.cols) v.factored[0][i] = 0.0f;
    if (v.factored[1] && i < v.count / (uint64_t)v.rows) v.factored[1][i] = 0.0f;
  }
}

__global__ void scatter_gradients_kernel(cuoptimDeviceGradient *table, const cuoptimGradientBatch batch) {
  for (int i = threadIdx.x; i < batch.count; i += blockDim.x) table[batch.first + i] = batch.entries[i];
}

/* ---- a check of the fixed kernels' square root and division on this device ---------------- */

__device__ __forceinline__ float float_of_bits(uint32_t u) {
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}

__device__ __forceinline__ uint32_t bits_of_float(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return u;
}

/* A 32-bit mix of k (the SplitMix64 finalizer): divisors of every sign, exponent and significand. */
__device__ __forceinline__ uint32_t check_divisor_bits(uint64_t k) {
  k = (k ^ (k >> 30)) * 0xbf58476d1ce4e5b9ull;
  k = (k ^ (k >> 27)) * 0x94d049bb133111ebull;
  return (uint32_t)((k ^ (k >> 31)) >> 16);
}

/* For each 32-bit pattern x = first, first + 1, ...: where the fast square root's check passes, is
 * its result sqrtf(x)? Where the fast division's check passes for x / b (b a mix of x's index, and
 * the same significand at x's own exponent), is it x / b? Mismatches counted in mismatches[0]
 * (square roots) and [1] (divisions). */
__global__ void __launch_bounds__(CUOPTIM_BLOCK) check_fast_math_kernel(uint64_t first, uint64_t count,
                                                                        unsigned *mismatches) {
  const uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
  unsigned sqrt_bad = 0, div_bad = 0;
  for (uint64_t k = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; k < count; k += stride) {
    const uint32_t xb = (uint32_t)(first + k);
    const float x = float_of_bits(xb);
    if (cuoptim_sqrt_in_range(x) && bits_of_float(cuoptim_sqrt_refine(x, cuoptim_rsqrt_approx(x))) != bits_of_float(sqrtf(x)))
      sqrt_bad++;
    const uint32_t mix = check_divisor_bits(first + k);
    const float divisors[2] = {float_of_bits(mix), float_of_bits((mix & 0x807fffffu) | (xb & 0x7f800000u))};
    for (int j = 0; j < 2; j++) {
      const float b = divisors[j], q = cuoptim_div_refine(x, b, cuoptim_rcp_approx(b));
      if (cuoptim_div_in_range(x, q) && bits_of_float(q) != bits_of_float(x / b)) div_bad++;
    }
  }
  if (sqrt_bad) atomicAdd(&mismatches[0], sqrt_bad);
  if (div_bad) atomicAdd(&mismatches[1], div_bad);
}

extern "C" int cuoptim_launch_check_fast_math(uint64_t first, uint64_t count, unsigned *mismatches, void *stream) {
  if (count == 0) return (int)cudaSuccess;
  const uint64_t blocks = (count + CUOPTIM_BLOCK - 1) / CUOPTIM_BLOCK;
  CUOPTIM_LAUNCH(check_fast_math_kernel, dim3((unsigned)(blocks < 4096 ? blocks : 4096)), CUOPTIM_BLOCK,
                 (cudaStream_t)stream, first, count, mismatches);
  return (int)cudaGetLastError();
}

/* ---- launchers ---------------------------------------------------------------------------- */

static dim3 chunk_grid(const cuoptimDeviceStep *step) { return dim3((unsigned)step->num_chunks); }
static dim3 update_grid(const cuoptimDeviceStep *step) { return dim3((unsigned)step->num_items); }

/* An optimizer without variables has no chunk: nothing to launch (a grid of 0 is an error). */
#define RETURN_IF_NO_CHUNKS(step) \
  do {                            \
    if ((step)->num_chunks == 0) return (int)cudaSuccess; \
  } while (0)

static dim3 variable_grid(const cuoptimDeviceStep *step) {
  return dim3((unsigned)((step->num_variables + REDUCE_WARPS_PER_BLOCK - 1) / REDUCE_WARPS_PER_BLOCK));
}

/* The chunks' sums, then each variable's (so that sharded state can combine them across ranks
 * before the prologue). A variable with no chunk here sums to 0. */
extern "C" int cuoptim_launch_inspect(const cuoptimDeviceStep *step, const cuoptimRuleParams *p, void *stream) {
  const int fold = step->every_variable_has_chunks;
  if (step->num_chunks > 0)
    CUOPTIM_LAUNCH(inspect_gradients_kernel, chunk_grid(step), CUOPTIM_BLOCK, (cudaStream_t)stream, *step, *p, fold);
  if (!fold && step->num_variables > 0)
    CUOPTIM_LAUNCH(reduce_variables_kernel, variable_grid(step), CUOPTIM_BLOCK, (cudaStream_t)stream, *step, 0);
  return (int)cudaGetLastError();
}

extern "C" int cuoptim_launch_prologue(const cuoptimDeviceStep *step, int inspected, const cuoptimGradientBatch *batch,
                                       void *stream) {
  if (batch && !inspected)
    CUOPTIM_LAUNCH(prologue_upload_kernel, 1, CUOPTIM_BLOCK, (cudaStream_t)stream, *step, *batch);
  else if (batch)
    return (int)cudaErrorInvalidValue; /* the inspect pass read the table before */
  else
    CUOPTIM_LAUNCH(prologue_kernel, 1, inspected ? PROLOGUE_THREADS : 32, (cudaStream_t)stream, *step, inspected);
  return (int)cudaGetLastError();
}

template <int KIND>
static void launch_update_kind(const cuoptimDeviceStep *step, const cuoptimRuleParams *p, cudaStream_t stream) {
  CUOPTIM_LAUNCH(update_kernel<KIND>, chunk_grid(step), CUOPTIM_BLOCK, stream, *step, *p);
}

/* Lamb's pass 1 (moments; each variable's two norms over this rank's elements; a variable with no
 * chunk here sums to 0) and pass 2, apart so that sharded state can combine the norms between. */
extern "C" int cuoptim_launch_lamb_pass1(const cuoptimDeviceStep *step, const cuoptimRuleParams *p, void *stream) {
  const int fold = step->every_variable_has_chunks;
  if (step->num_chunks > 0)
    CUOPTIM_LAUNCH(lamb_pass1_kernel, chunk_grid(step), CUOPTIM_BLOCK, (cudaStream_t)stream, *step, *p, fold);
  if (!fold && step->num_variables > 0)
    CUOPTIM_LAUNCH(reduce_variables_kernel, variable_grid(step), CUOPTIM_BLOCK, (cudaStream_t)stream, *step, 1);
  return (int)cudaGetLastError();
}

extern "C" int cuoptim_launch_lamb_pass2(const cuoptimDeviceStep *step, const cuoptimRuleParams *p, void *stream) {
  RETURN_IF_NO_CHUNKS(step);
  CUOPTIM_LAUNCH(lamb_pass2_kernel, chunk_grid(step), CUOPTIM_BLOCK, (cudaStream_t)stream, *step, *p);
  return (int)cudaGetLastError();
}

template <int KIND>
static void launch_fixed_kind(const cuoptimDeviceStep *step, const cuoptimRuleParams *p, cudaStream_t stream) {
  const unsigned f = step->features & (CUOPTIM_UPDATE_GLOBAL_CLIP | CUOPTIM_UPDATE_MASTER | CUOPTIM_UPDATE_MOMENTUM);
#define FIXED_CASE(features)                                                                                  \
  case (features):                                                                                            \
    CUOPTIM_LAUNCH(update_fixed_kernel<KIND | (int)(features) << 8>, update_grid(step), CUOPTIM_BLOCK, stream, \
                   *step, *p);                                                                                \
    break;
  switch (f) {
    FIXED_CASE(0)
    FIXED_CASE(CUOPTIM_UPDATE_GLOBAL_CLIP)
    FIXED_CASE(CUOPTIM_UPDATE_MASTER)
    default: launch_update_kind<KIND>(step, p, stream); break;
  }
}

/* SGD's instances with momentum too. */
static void launch_fixed_sgd(const cuoptimDeviceStep *step, const cuoptimRuleParams *p, cudaStream_t stream) {
  const int KIND = CUOPTIM_SGD;
  const unsigned f = step->features & (CUOPTIM_UPDATE_GLOBAL_CLIP | CUOPTIM_UPDATE_MASTER | CUOPTIM_UPDATE_MOMENTUM);
  switch (f) {
    FIXED_CASE(0)
    FIXED_CASE(CUOPTIM_UPDATE_GLOBAL_CLIP)
    FIXED_CASE(CUOPTIM_UPDATE_MASTER)
    FIXED_CASE(CUOPTIM_UPDATE_MOMENTUM)
    FIXED_CASE(CUOPTIM_UPDATE_MOMENTUM | CUOPTIM_UPDATE_GLOBAL_CLIP)
    FIXED_CASE(CUOPTIM_UPDATE_MOMENTUM | CUOPTIM_UPDATE_MASTER)
    default: launch_update_kind<CUOPTIM_SGD>(step, p, stream); break;
  }
#undef FIXED_CASE
}

/* Adafactor's three stages, each one launch for every variable: moments (a block per item of
 * step->af_items, each batch's mean(r) at its end), RMS and apply (a block per chunk). */
static void launch_adafactor(const cuoptimDeviceStep *step, const cuoptimRuleParams *p, cudaStream_t stream) {
  if (step->num_af_items > 0)
    CUOPTIM_LAUNCH(adafactor_moments_kernel, dim3((unsigned)step->num_af_items), CUOPTIM_BLOCK, stream, *step, *p);
  CUOPTIM_LAUNCH(adafactor_rms_kernel, chunk_grid(step), CUOPTIM_BLOCK, stream, *step, *p);
  CUOPTIM_LAUNCH(adafactor_apply_kernel, chunk_grid(step), CUOPTIM_BLOCK, stream, *step, *p);
}

/* A step whose features name a fixed instance (cuoptim_update_features). */
static bool launch_fixed(const cuoptimDeviceStep *step, const cuoptimRuleParams *p, cudaStream_t st) {
  if (!(step->features & CUOPTIM_UPDATE_FIXED)) return false;
  switch (p->kind) {
    case CUOPTIM_SGD: launch_fixed_sgd(step, p, st); return true;
    case CUOPTIM_RMSPROP: launch_fixed_kind<CUOPTIM_RMSPROP>(step, p, st); return true;
    case CUOPTIM_ADAGRAD: launch_fixed_kind<CUOPTIM_ADAGRAD>(step, p, st); return true;
    case CUOPTIM_ADADELTA: launch_fixed_kind<CUOPTIM_ADADELTA>(step, p, st); return true;
    case CUOPTIM_ADAM:
    case CUOPTIM_ADAMW: launch_fixed_kind<CUOPTIM_ADAM>(step, p, st); return true;
    case CUOPTIM_ADAMAX: launch_fixed_kind<CUOPTIM_ADAMAX>(step, p, st); return true;
    case CUOPTIM_NADAM: launch_fixed_kind<CUOPTIM_NADAM>(step, p, st); return true;
    case CUOPTIM_LION: launch_fixed_kind<CUOPTIM_LION>(step, p, st); return true;
    default: return false; /* Lamb (two passes), Ftrl (its power's branches are the rule's) */
  }
}

extern "C" int cuoptim_launch_update(const cuoptimDeviceStep *step, const cuoptimRuleParams *p, void *stream) {
  RETURN_IF_NO_CHUNKS(step);
  cudaStream_t st = (cudaStream_t)stream;
  if (launch_fixed(step, p, st)) return (int)cudaGetLastError();
  switch (p->kind) {
    case CUOPTIM_SGD: launch_update_kind<CUOPTIM_SGD>(step, p, st); break;
    case CUOPTIM_RMSPROP: launch_update_kind<CUOPTIM_RMSPROP>(step, p, st); break;
    case CUOPTIM_ADAGRAD: launch_update_kind<CUOPTIM_ADAGRAD>(step, p, st); break;
    case CUOPTIM_ADADELTA: launch_update_kind<CUOPTIM_ADADELTA>(step, p, st); break;
    case CUOPTIM_ADAM:
    case CUOPTIM_ADAMW: launch_update_kind<CUOPTIM_ADAM>(step, p, st); break;
    case CUOPTIM_ADAMAX: launch_update_kind<CUOPTIM_ADAMAX>(step, p, st); break;
    case CUOPTIM_NADAM: launch_update_kind<CUOPTIM_NADAM>(step, p, st); break;
    case CUOPTIM_LION: launch_update_kind<CUOPTIM_LION>(step, p, st); break;
    case CUOPTIM_FTRL: launch_update_kind<CUOPTIM_FTRL>(step, p, st); break;
    case CUOPTIM_SCHEDULE_FREE_ADAMW: launch_update_kind<CUOPTIM_SCHEDULE_FREE_ADAMW>(step, p, st); break;
    case CUOPTIM_LAMB:
      cuoptim_launch_lamb_pass1(step, p, stream);
      cuoptim_launch_lamb_pass2(step, p, stream);
      break;
    case CUOPTIM_ADAFACTOR: launch_adafactor(step, p, st); break;
    default: return (int)cudaErrorInvalidValue;
  }
  return (int)cudaGetLastError();
}

extern "C" int cuoptim_launch_combine_lamb(const cuoptimDeviceStep *step, const cuoptimTensorScalars *gathered,
                                           int world, void *stream) {
  if (step->num_variables <= 0) return (int)cudaSuccess;
  int blocks = (step->num_variables + CUOPTIM_BLOCK - 1) / CUOPTIM_BLOCK;
  CUOPTIM_LAUNCH(combine_lamb_kernel, blocks < 1024 ? blocks : 1024, CUOPTIM_BLOCK, (cudaStream_t)stream,
                 step->tensors, gathered, (int32_t)step->num_variables, (int32_t)world);
  return (int)cudaGetLastError();
}

extern "C" int cuoptim_launch_combine_shards(const cuoptimDeviceStep *step, const cuoptimTensorScalars *gathered,
                                             int world, void *stream) {
  if (step->num_variables <= 0) return (int)cudaSuccess;
  int blocks = (step->num_variables + CUOPTIM_BLOCK - 1) / CUOPTIM_BLOCK;
  CUOPTIM_LAUNCH(combine_shards_kernel, blocks < 1024 ? blocks : 1024, CUOPTIM_BLOCK, (cudaStream_t)stream,
                 step->tensors, gathered, step->prologue, (int32_t)step->num_variables, (int32_t)world);
  return (int)cudaGetLastError();
}

extern "C" int cuoptim_launch_finalize(const cuoptimDeviceStep *step, void *stream) {
  RETURN_IF_NO_CHUNKS(step);
  CUOPTIM_LAUNCH(finalize_kernel, chunk_grid(step), CUOPTIM_BLOCK, (cudaStream_t)stream, *step);
  return (int)cudaGetLastError();
}

/* Enough blocks for every element of the variable, at most AVERAGE_BLOCKS (a grid-stride loop). */
#define AVERAGE_BLOCKS 1024

extern "C" int cuoptim_launch_schedule_free_average(const cuoptimDeviceStep *step, const cuoptimRuleParams *p, int k,
                                                    uint64_t count, void *out, void *stream) {
  if (count == 0) return (int)cudaSuccess;
  uint64_t blocks = (count + CUOPTIM_BLOCK - 1) / CUOPTIM_BLOCK;
  if (blocks > AVERAGE_BLOCKS) blocks = AVERAGE_BLOCKS;
  CUOPTIM_LAUNCH(schedule_free_average_kernel, dim3((unsigned)blocks), CUOPTIM_BLOCK, (cudaStream_t)stream, *step,
                 (int32_t)k, *p, out);
  return (int)cudaGetLastError();
}

extern "C" int cuoptim_launch_build(const cuoptimDeviceStep *step, float slot0_initial, int slot0_copies_variable,
                                    void *stream) {
  RETURN_IF_NO_CHUNKS(step);
  CUOPTIM_LAUNCH(build_kernel, chunk_grid(step), CUOPTIM_BLOCK, (cudaStream_t)stream, *step, slot0_initial,
                 slot0_copies_variable);
  return (int)cudaGetLastError();
}

extern "C" int cuoptim_launch_scatter_gradients(cuoptimDeviceGradient *table, const cuoptimGradientBatch *batch,
                                                void *stream) {
  CUOPTIM_LAUNCH(scatter_gradients_kernel, 1, CUOPTIM_BLOCK, (cudaStream_t)stream, table, *batch);
  return (int)cudaGetLastError();
}

/* ---- Muon: the element-wise stages of its matrices (launch.h) ---------------------------------
 * One launch per stage for every Muon matrix, a block per chunk of CUOPTIM_CHUNK elements (of the
 * variable in its order, or of X: the same count). The matrix products between them are cuBLAS
 * calls (host/backend_cuda.c). X's sums of squares follow rules.h's order (cuoptim_sumsq):
 * a chunk is a segment, a thread a lane, block_sum the lanes' tree, the segments added in order by
 * each block of the normalization, so the norm is the host backend's, bit for bit. */

/* Element i of the variable's row-major order in X's row-major order (X is the transpose when the
 * variable is tall). */
__device__ __forceinline__ uint64_t muon_index(const cuoptimMuonMatrix &m, uint64_t i) {
  return cuoptim_muon_x_index(m.tall, (uint64_t)m.rows, (uint64_t)m.cols, i);
}

/* Elements [begin, end) of chunk `chunk` of a buffer of n elements (empty past its end). */
__device__ __forceinline__ ChunkRange muon_range(int32_t chunk, uint64_t n) {
  ChunkRange r;
  r.begin = (uint64_t)chunk * CUOPTIM_CHUNK;
  r.end = r.begin + CUOPTIM_CHUNK < n ? r.begin + CUOPTIM_CHUNK : n;
  if (r.begin > n) r.begin = r.end = n;
  return r;
}

/* Prepare, weight decay, momentum; the direction into X. Nothing on a skipped step or for a
 * matrix without a gradient; the accumulator alone on a micro-step (X then keeps what it held,
 * and the apply stage writes nothing from it). */
__global__ void __launch_bounds__(CUOPTIM_BLOCK) muon_momentum_kernel(cuoptimDeviceStep step, cuoptimMuonStep muon,
                                                                      cuoptimRuleParams p) {
  __shared__ cuoptimStepScalars s;
  const cuoptimChunk c = muon.chunks[blockIdx.x];
  const cuoptimMuonMatrix m = muon.matrices[c.variable];
  const cuoptimDeviceVariable v = step.variables[m.variable];
  const cuoptimDeviceGradient g = step.grads[m.variable];
  load_scalars(&s, step.scalars);
  if (s.skip || !g.grad) return;
  const cuoptimTensorScalars t = step.tensors[m.variable];
  ChunkRange r = chunk_range(v, c.chunk);
  float *w = working(v);
  for (uint64_t i = r.begin + threadIdx.x; i < r.end; i += blockDim.x) {
    float wi = w[i], direction = 0.0f, unused = 0.0f;
    float *acc = v.accumulator ? &v.accumulator[i] : &unused;
    if (!cuoptim_muon_pass1_element(&p, &s, &t, v.use_weight_decay, load_scalar(g.grad, g.dtype, i), &wi,
                                    &v.slots[0][i], acc, &direction))
      continue;
    w[i] = wi;
    m.x[muon_index(m, i)] = direction;
  }
}

/* The sum of squares of one segment of X, into its partial. */
__global__ void __launch_bounds__(CUOPTIM_SUMSQ_LANES) muon_norm_kernel(cuoptimMuonStep muon) {
  __shared__ double shared[CUOPTIM_SUMSQ_LANES];
  const cuoptimChunk c = muon.chunks[blockIdx.x];
  const cuoptimMuonMatrix m = muon.matrices[c.variable];
  ChunkRange r = muon_range(c.chunk, (uint64_t)(m.r * m.c));
  double lane = cuoptim_sumsq_lane(m.x + r.begin, (int64_t)(r.end - r.begin), threadIdx.x);
  double total = block_sum(lane, shared);
  if (threadIdx.x == 0) muon.partials[blockIdx.x] = total;
}

/* X / (||X||_F + 1e-7): every block adds its matrix's partials in chunk order (the same additions
 * in every block), then divides its chunk. */
__global__ void __launch_bounds__(CUOPTIM_BLOCK) muon_normalize_kernel(cuoptimMuonStep muon) {
  __shared__ float denominator;
  const cuoptimChunk c = muon.chunks[blockIdx.x];
  const cuoptimMuonMatrix m = muon.matrices[c.variable];
  const uint64_t n = (uint64_t)(m.r * m.c);
  if (threadIdx.x == 0) {
    const int64_t chunks = (int64_t)((n + CUOPTIM_CHUNK - 1) / CUOPTIM_CHUNK);
    double sumsq = 0.0;
    for (int64_t j = m.first_chunk; j < m.first_chunk + chunks; j++) sumsq += muon.partials[j];
    denominator = cuoptim_muon_norm_denominator(sumsq);
  }
  __syncthreads();
  ChunkRange r = muon_range(c.chunk, n);
  for (uint64_t i = r.begin + threadIdx.x; i < r.end; i += blockDim.x) m.x[i] = m.x[i] / denominator;
}

/* Newton-Schulz iteration `iteration`, between A = X X^T and the products B += cA A, out += B X:
 * cA = c A and B = b A (Keras's b * temp_a + (c * temp_a) @ temp_a) and out = a X, where the
 * iteration reads X and writes Y (even iterations) or the other way round. */
__global__ void __launch_bounds__(CUOPTIM_BLOCK) muon_scale_kernel(cuoptimMuonStep muon, float a, float b, float cc,
                                                                   int32_t iteration) {
  const cuoptimChunk c = muon.chunks[blockIdx.x];
  const cuoptimMuonMatrix m = muon.matrices[c.variable];
  const float *x = iteration % 2 ? m.y : m.x;
  float *out = iteration % 2 ? m.x : m.y;
  ChunkRange r = muon_range(c.chunk, (uint64_t)(m.r * m.c));
  for (uint64_t i = r.begin + threadIdx.x; i < r.end; i += blockDim.x) out[i] = a * x[i];
  ChunkRange q = muon_range(c.chunk, (uint64_t)(m.r * m.r));
  for (uint64_t i = q.begin + threadIdx.x; i < q.end; i += blockDim.x) {
    m.ca[i] = cc * m.a[i];
    m.b[i] = b * m.a[i];
  }
}

/* w -= lr_adjust(lr X) for a matrix with a gradient on an update step, then EMA (every matrix),
 * then the half copy of a changed variable. */
__global__ void __launch_bounds__(CUOPTIM_BLOCK) muon_apply_kernel(cuoptimDeviceStep step, cuoptimMuonStep muon,
                                                                   cuoptimRuleParams p) {
  __shared__ cuoptimStepScalars s;
  const cuoptimChunk c = muon.chunks[blockIdx.x];
  const cuoptimMuonMatrix m = muon.matrices[c.variable];
  const cuoptimDeviceVariable v = step.variables[m.variable];
  const cuoptimDeviceGradient g = step.grads[m.variable];
  load_scalars(&s, step.scalars);
  if (s.skip) return;
  const bool applied = g.grad != NULL && s.apply_update;
  if (!applied && !p.use_ema) return;
  const bool writes_variable = applied || (p.use_ema && s.ema_overwrite);
  const float *u = muon.ns_steps % 2 ? m.y : m.x;
  float *w = working(v);
  ChunkRange r = chunk_range(v, c.chunk);
  for (uint64_t i = r.begin + threadIdx.x; i < r.end; i += blockDim.x) {
    float wi = w[i];
    if (applied) wi = cuoptim_muon_apply(&p, &s, m.sqrt_dim, wi, u[muon_index(m, i)]);
    if (p.use_ema) cuoptim_ema_element(&s, &wi, &v.average[i]);
    if (writes_variable) {
      w[i] = wi;
      if (v.master) store_scalar(v.param, v.param_dtype, i, wi);
    }
  }
}

static dim3 muon_grid(const cuoptimMuonStep *muon) { return dim3((unsigned)muon->num_chunks); }

extern "C" int cuoptim_launch_muon_adamw(const cuoptimDeviceStep *step, const cuoptimChunk *chunks, int64_t num_chunks,
                                         const cuoptimRuleParams *p, void *stream) {
  if (num_chunks == 0) return (int)cudaSuccess;
  cuoptimDeviceStep adamw = *step;
  adamw.chunks = chunks;
  adamw.num_chunks = num_chunks;
  launch_update_kind<CUOPTIM_ADAM>(&adamw, p, (cudaStream_t)stream);
  return (int)cudaGetLastError();
}

extern "C" int cuoptim_launch_muon_prepare(const cuoptimDeviceStep *step, const cuoptimMuonStep *muon,
                                           const cuoptimRuleParams *p, void *stream) {
  if (muon->num_chunks == 0) return (int)cudaSuccess;
  cudaStream_t st = (cudaStream_t)stream;
  CUOPTIM_LAUNCH(muon_momentum_kernel, muon_grid(muon), CUOPTIM_BLOCK, st, *step, *muon, *p);
  CUOPTIM_LAUNCH(muon_norm_kernel, muon_grid(muon), CUOPTIM_SUMSQ_LANES, st, *muon);
  CUOPTIM_LAUNCH(muon_normalize_kernel, muon_grid(muon), CUOPTIM_BLOCK, st, *muon);
  return (int)cudaGetLastError();
}

extern "C" int cuoptim_launch_muon_scale(const cuoptimMuonStep *muon, const cuoptimRuleParams *p, int iteration,
                                         void *stream) {
  if (muon->num_chunks == 0) return (int)cudaSuccess;
  CUOPTIM_LAUNCH(muon_scale_kernel, muon_grid(muon), CUOPTIM_BLOCK, (cudaStream_t)stream, *muon, p->muon_a, p->muon_b,
                 p->muon_c, (int32_t)iteration);
  return (int)cudaGetLastError();
}

extern "C" int cuoptim_launch_muon_apply(const cuoptimDeviceStep *step, const cuoptimMuonStep *muon,
                                         const cuoptimRuleParams *p, void *stream) {
  if (muon->num_chunks == 0) return (int)cudaSuccess;
  CUOPTIM_LAUNCH(muon_apply_kernel, muon_grid(muon), CUOPTIM_BLOCK, (cudaStream_t)stream, *step, *muon, *p);
  return (int)cudaGetLastError();
}
