/*
 * The MLP of mlp.h on the GPU: cuBLAS for the matrix products (cublasSgemm for float32,
 * cublasGemmEx with float32 accumulation for float16 and bfloat16), small kernels for the rest.
 * Parameters, gradients and activations are all of the model's dtype; the softmax cross-entropy
 * and the metrics are computed in float32 (the metric sums in double).
 *
 * cuBLAS is column-major and the model's matrices are row-major, so each row-major product
 * C = A B is asked of cuBLAS as C^T = B^T A^T, which reads the same memory:
 *   forward   Z[b, out] = X[b, in] W[in, out]      gemm(N, N, out, b, in,  W, X)
 *   kernel    dW[in, out] = X^T dZ                 gemm(N, T, out, in, b,  dZ, X)
 *   input     dX[b, in] = dZ W^T                   gemm(T, N, in, b, out,  W, dZ)
 * Everything is enqueued on the model's stream, which the optimizer step shares, so one step
 * never waits for the host; only metrics and parameter copies synchronize.
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdlib.h>

#include "mlp.h"

/* A block of this many threads covers a row of elementwise work; the cross-entropy runs as one
 * such block so that its sums are taken in a fixed order. */
static constexpr int kThreads = 256;

#define CUDA_TRY(call)                                                                              \
  do {                                                                                              \
    cudaError_t err_ = (call);                                                                      \
    if (err_ != cudaSuccess) return mlp_fail("%s: %s (%s:%d)", #call, cudaGetErrorString(err_), __FILE__, __LINE__); \
  } while (0)

#define BLAS_TRY(call)                                                                              \
  do {                                                                                              \
    cublasStatus_t err_ = (call);                                                                   \
    if (err_ != CUBLAS_STATUS_SUCCESS)                                                              \
      return mlp_fail("%s: %s (%s:%d)", #call, cublasGetStatusString(err_), __FILE__, __LINE__);    \
  } while (0)

#define LAUNCH_TRY() CUDA_TRY(cudaGetLastError())

template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

static unsigned blocks_for(size_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

/* input[b, :] = x[order[first + b], :] (order NULL: first + b), converted to T. */
template <typename T>
__global__ void gather_kernel(const float *x, const int32_t *y, const int32_t *order, int first, int count, int dim,
                              T *input, int32_t *labels) {
  size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= (size_t)count * dim) return;
  int b = (int)(k / dim), j = (int)(k % dim);
  int i = order ? order[first + b] : first + b;
  input[k] = from_float<T>(x[(size_t)i * dim + j]);
  if (j == 0) labels[b] = y[i];
}

/* z[b, o] += bias[o], then ReLU for hidden layers. */
template <typename T> __global__ void bias_relu_kernel(T *z, const T *bias, int count, int n_out, int apply_relu) {
  size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= (size_t)count * n_out) return;
  float v = to_float(z[k]) + to_float(bias[k % n_out]);
  z[k] = from_float<T>(apply_relu && !(v > 0.0f) ? 0.0f : v);
}

/* The loss and its gradient, as mlp_host.c's softmax_cross_entropy: one block, each thread a
 * strided share of the examples, partial sums combined by a fixed tree so the result does not
 * depend on scheduling; thread 0 adds them to *metrics. */
template <typename T>
__global__ void softmax_xent_kernel(const T *logits, const int32_t *labels, int count, int classes, float grad_scale,
                                    T *delta, mlp_metrics_t *metrics) {
  __shared__ double loss_part[kThreads];
  __shared__ long long correct_part[kThreads];
  double loss = 0.0;
  long long correct = 0;
  for (int b = threadIdx.x; b < count; b += blockDim.x) {
    const T *z = logits + (size_t)b * classes;
    int best = 0;
    float top = to_float(z[0]);
    for (int c = 1; c < classes; c++)
      if (to_float(z[c]) > top) {
        top = to_float(z[c]);
        best = c;
      }
    float sum = 0.0f;
    for (int c = 0; c < classes; c++) sum += expf(to_float(z[c]) - top);
    int label = labels[b];
    loss += (double)(logf(sum) + top - to_float(z[label]));
    correct += best == label;
    if (!delta) continue;
    for (int c = 0; c < classes; c++)
      delta[(size_t)b * classes + c] =
          from_float<T>((expf(to_float(z[c]) - top) / sum - (c == label ? 1.0f : 0.0f)) * grad_scale);
  }
  loss_part[threadIdx.x] = loss;
  correct_part[threadIdx.x] = correct;
  __syncthreads();
  for (int width = blockDim.x / 2; width > 0; width /= 2) {
    if ((int)threadIdx.x < width) {
      loss_part[threadIdx.x] += loss_part[threadIdx.x + width];
      correct_part[threadIdx.x] += correct_part[threadIdx.x + width];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    metrics->loss_sum += loss_part[0];
    metrics->correct += correct_part[0];
    metrics->count += count;
  }
}

/* grad_b[o] = sum over the batch of delta[b, o], in batch order. */
template <typename T> __global__ void bias_grad_kernel(const T *delta, int count, int n_out, T *grad_b) {
  int o = blockIdx.x * blockDim.x + threadIdx.x;
  if (o >= n_out) return;
  float s = 0.0f;
  for (int b = 0; b < count; b++) s += to_float(delta[(size_t)b * n_out + o]);
  grad_b[o] = from_float<T>(s);
}

/* The ReLU's backward: the gradient passes where the layer's output is positive. */
template <typename T> __global__ void relu_grad_kernel(T *delta_in, const T *act, size_t n) {
  size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (k < n && !(to_float(act[k]) > 0.0f)) delta_in[k] = from_float<T>(0.0f);
}

template <typename T> __global__ void from_float_kernel(const float *in, T *out, size_t n) {
  size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (k < n) out[k] = from_float<T>(in[k]);
}

template <typename T> __global__ void to_float_kernel(const T *in, float *out, size_t n) {
  size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (k < n) out[k] = to_float(in[k]);
}

struct mlp_model {
  mlp_shape_t shape;
  cuoptimDtype_t dtype;
  size_t elem; /* bytes per element of dtype */
  int max_batch, device;
  cudaStream_t stream;
  cublasHandle_t blas;
  void *params, *grads; /* every parameter and gradient, mlp_param_count order */
  void *kernel[MLP_MAX_LAYERS], *bias[MLP_MAX_LAYERS], *kernel_grad[MLP_MAX_LAYERS], *bias_grad[MLP_MAX_LAYERS];
  void *input;
  int32_t *labels;
  void *act[MLP_MAX_LAYERS], *delta[MLP_MAX_LAYERS];
  float *x[2];       /* training and test points, float32, device */
  int32_t *y[2];
  int n[2], dim;
  int32_t *order;
  float *staging;    /* float32 copy of the parameters for set/get */
  mlp_metrics_t *metrics; /* device: the two slots below */
};

static size_t dtype_size(cuoptimDtype_t dtype) { return dtype == CUOPTIM_FLOAT32 ? 4 : 2; }

static char *at(void *base, size_t elements, size_t elem) { return (char *)base + elements * elem; }

static void cuda_destroy(mlp_model_t *m) {
  if (!m) return;
  if (m->stream) cudaStreamSynchronize(m->stream);
  void *buffers[] = {m->params, m->grads, m->input, m->labels, m->x[0], m->x[1], m->y[0], m->y[1],
                     m->order, m->staging, m->metrics};
  for (void *b : buffers) cudaFree(b);
  for (int l = 0; l < m->shape.num_layers; l++) {
    cudaFree(m->act[l]);
    cudaFree(m->delta[l]);
  }
  if (m->blas) cublasDestroy(m->blas);
  if (m->stream) cudaStreamDestroy(m->stream);
  free(m);
}

static int upload_split(mlp_model_t *m, int which, const mlp_split_t *split) {
  m->n[which] = split->n;
  CUDA_TRY(cudaMalloc(&m->x[which], (size_t)split->n * split->dim * sizeof(float)));
  CUDA_TRY(cudaMalloc(&m->y[which], (size_t)split->n * sizeof(int32_t)));
  CUDA_TRY(cudaMemcpyAsync(m->x[which], split->x, (size_t)split->n * split->dim * sizeof(float),
                           cudaMemcpyHostToDevice, m->stream));
  CUDA_TRY(cudaMemcpyAsync(m->y[which], split->y, (size_t)split->n * sizeof(int32_t), cudaMemcpyHostToDevice,
                           m->stream));
  return 0;
}

/* Every copy and memset goes on the model's stream: it does not wait for the legacy default
 * stream, so work there would not be ordered before the model's kernels. */
static int build(mlp_model_t *m, const mlp_dataset_t *data) {
  CUDA_TRY(cudaSetDevice(m->device));
  CUDA_TRY(cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking));
  BLAS_TRY(cublasCreate(&m->blas));
  BLAS_TRY(cublasSetStream(m->blas, m->stream));
  const mlp_shape_t *s = &m->shape;
  size_t total = mlp_param_count(s);
  CUDA_TRY(cudaMalloc(&m->params, total * m->elem));
  CUDA_TRY(cudaMalloc(&m->grads, total * m->elem));
  CUDA_TRY(cudaMemsetAsync(m->grads, 0, total * m->elem, m->stream));
  CUDA_TRY(cudaMalloc(&m->staging, total * sizeof(float)));
  CUDA_TRY(cudaMalloc(&m->input, (size_t)m->max_batch * s->sizes[0] * m->elem));
  CUDA_TRY(cudaMalloc(&m->labels, (size_t)m->max_batch * sizeof(int32_t)));
  size_t offset = 0;
  for (int l = 0; l < s->num_layers; l++) {
    m->kernel[l] = at(m->params, offset, m->elem);
    m->kernel_grad[l] = at(m->grads, offset, m->elem);
    offset += mlp_kernel_count(s, l);
    m->bias[l] = at(m->params, offset, m->elem);
    m->bias_grad[l] = at(m->grads, offset, m->elem);
    offset += mlp_bias_count(s, l);
    CUDA_TRY(cudaMalloc(&m->act[l], (size_t)m->max_batch * s->sizes[l + 1] * m->elem));
    CUDA_TRY(cudaMalloc(&m->delta[l], (size_t)m->max_batch * s->sizes[l + 1] * m->elem));
  }
  m->dim = data->train.dim;
  if (upload_split(m, MLP_TRAIN, &data->train) || upload_split(m, MLP_TEST, &data->test)) return -1;
  CUDA_TRY(cudaMalloc(&m->order, (size_t)data->train.n * sizeof(int32_t)));
  CUDA_TRY(cudaMalloc(&m->metrics, 2 * sizeof(mlp_metrics_t)));
  CUDA_TRY(cudaMemsetAsync(m->metrics, 0, 2 * sizeof(mlp_metrics_t), m->stream));
  CUDA_TRY(cudaStreamSynchronize(m->stream));
  return 0;
}

static int cuda_create(mlp_model_t **model, const mlp_shape_t *shape, cuoptimDtype_t dtype, int max_batch,
                       const mlp_dataset_t *data, int device) {
  *model = NULL;
  mlp_model_t *m = (mlp_model_t *)calloc(1, sizeof *m);
  if (!m) return mlp_fail("out of memory for the model");
  m->shape = *shape;
  m->dtype = dtype;
  m->elem = dtype_size(dtype);
  m->max_batch = max_batch;
  m->device = device;
  if (build(m, data)) {
    cuda_destroy(m);
    return -1;
  }
  *model = m;
  return 0;
}

static void *cuda_param(mlp_model_t *m, int layer, int which) { return which ? m->bias[layer] : m->kernel[layer]; }

static const void *cuda_grad(mlp_model_t *m, int layer, int which) {
  return which ? m->bias_grad[layer] : m->kernel_grad[layer];
}

static void cuda_set_grad(mlp_model_t *m, int layer, int which, void *grad) {
  if (which)
    m->bias_grad[layer] = grad;
  else
    m->kernel_grad[layer] = grad;
}

static int cuda_set_params(mlp_model_t *m, const float *values) {
  size_t n = mlp_param_count(&m->shape);
  CUDA_TRY(cudaMemcpyAsync(m->staging, values, n * sizeof(float), cudaMemcpyHostToDevice, m->stream));
  switch (m->dtype) {
    case CUOPTIM_FLOAT16:
      from_float_kernel<<<blocks_for(n), kThreads, 0, m->stream>>>(m->staging, (__half *)m->params, n);
      break;
    case CUOPTIM_BFLOAT16:
      from_float_kernel<<<blocks_for(n), kThreads, 0, m->stream>>>(m->staging, (__nv_bfloat16 *)m->params, n);
      break;
    default:
      from_float_kernel<<<blocks_for(n), kThreads, 0, m->stream>>>(m->staging, (float *)m->params, n);
  }
  LAUNCH_TRY();
  CUDA_TRY(cudaStreamSynchronize(m->stream));
  return 0;
}

static int cuda_get_params(mlp_model_t *m, float *values) {
  size_t n = mlp_param_count(&m->shape);
  switch (m->dtype) {
    case CUOPTIM_FLOAT16:
      to_float_kernel<<<blocks_for(n), kThreads, 0, m->stream>>>((const __half *)m->params, m->staging, n);
      break;
    case CUOPTIM_BFLOAT16:
      to_float_kernel<<<blocks_for(n), kThreads, 0, m->stream>>>((const __nv_bfloat16 *)m->params, m->staging, n);
      break;
    default:
      to_float_kernel<<<blocks_for(n), kThreads, 0, m->stream>>>((const float *)m->params, m->staging, n);
  }
  LAUNCH_TRY();
  CUDA_TRY(cudaMemcpyAsync(values, m->staging, n * sizeof(float), cudaMemcpyDeviceToHost, m->stream));
  CUDA_TRY(cudaStreamSynchronize(m->stream));
  return 0;
}

static int cuda_set_order(mlp_model_t *m, const int32_t *order) {
  /* In stream order, after the previous epoch's batches; synchronous, so that the caller may
   * reuse `order` at once. */
  CUDA_TRY(cudaMemcpyAsync(m->order, order, (size_t)m->n[MLP_TRAIN] * sizeof(int32_t), cudaMemcpyHostToDevice,
                           m->stream));
  CUDA_TRY(cudaStreamSynchronize(m->stream));
  return 0;
}

/* C = op(A) op(B) (column-major, as cuBLAS reads it), accumulated in float32. */
static int gemm(mlp_model_t *m, cublasOperation_t ta, cublasOperation_t tb, int rows, int cols, int inner,
                const void *a, int lda, const void *b, int ldb, void *c, int ldc) {
  const float one = 1.0f, zero = 0.0f;
  if (m->dtype == CUOPTIM_FLOAT32) {
    BLAS_TRY(cublasSgemm(m->blas, ta, tb, rows, cols, inner, &one, (const float *)a, lda, (const float *)b, ldb, &zero,
                         (float *)c, ldc));
    return 0;
  }
  cudaDataType_t t = m->dtype == CUOPTIM_FLOAT16 ? CUDA_R_16F : CUDA_R_16BF;
  BLAS_TRY(cublasGemmEx(m->blas, ta, tb, rows, cols, inner, &one, a, t, lda, b, t, ldb, &zero, c, t, ldc,
                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return 0;
}

template <typename T> static int forward(mlp_model_t *m, int count) {
  const mlp_shape_t *s = &m->shape;
  const void *in = m->input;
  for (int l = 0; l < s->num_layers; l++) {
    int n_in = s->sizes[l], n_out = s->sizes[l + 1];
    if (gemm(m, CUBLAS_OP_N, CUBLAS_OP_N, n_out, count, n_in, m->kernel[l], n_out, in, n_in, m->act[l], n_out)) return -1;
    size_t n = (size_t)count * n_out;
    bias_relu_kernel<<<blocks_for(n), kThreads, 0, m->stream>>>((T *)m->act[l], (const T *)m->bias[l], count, n_out,
                                                                l + 1 < s->num_layers);
    LAUNCH_TRY();
    in = m->act[l];
  }
  return 0;
}

/* Layer l's parameter gradients first, then the hook (their reduction may start), then the
 * gradient that flows on to layer l - 1. */
template <typename T> static int backward(mlp_model_t *m, int count, const mlp_grad_hook_t *hook) {
  const mlp_shape_t *s = &m->shape;
  for (int l = s->num_layers - 1; l >= 0; l--) {
    int n_in = s->sizes[l], n_out = s->sizes[l + 1];
    const void *in = l ? m->act[l - 1] : m->input;
    if (gemm(m, CUBLAS_OP_N, CUBLAS_OP_T, n_out, n_in, count, m->delta[l], n_out, in, n_in, m->kernel_grad[l], n_out))
      return -1;
    bias_grad_kernel<<<blocks_for((size_t)n_out), kThreads, 0, m->stream>>>((const T *)m->delta[l], count, n_out,
                                                                           (T *)m->bias_grad[l]);
    LAUNCH_TRY();
    if (hook && hook->layer_ready(hook->user, l)) return -1;
    if (!l) continue;
    if (gemm(m, CUBLAS_OP_T, CUBLAS_OP_N, n_in, count, n_out, m->kernel[l], n_out, m->delta[l], n_out, m->delta[l - 1],
             n_in))
      return -1;
    size_t n = (size_t)count * n_in;
    relu_grad_kernel<<<blocks_for(n), kThreads, 0, m->stream>>>((T *)m->delta[l - 1], (const T *)m->act[l - 1], n);
    LAUNCH_TRY();
  }
  return 0;
}

/* One batch of `split` through the network, its loss added to *metrics; with gradients (scaled
 * by grad_scale) when `training`. */
template <typename T>
static int run_batch(mlp_model_t *m, mlp_split_kind_t split, const int32_t *order, int first, int count, int training,
                     float grad_scale, const mlp_grad_hook_t *hook, mlp_metrics_t *metrics) {
  const mlp_shape_t *s = &m->shape;
  int last = s->num_layers - 1, classes = s->sizes[last + 1];
  size_t n = (size_t)count * m->dim;
  gather_kernel<<<blocks_for(n), kThreads, 0, m->stream>>>(m->x[split], m->y[split], order, first, count, m->dim,
                                                           (T *)m->input, m->labels);
  LAUNCH_TRY();
  if (forward<T>(m, count)) return -1;
  softmax_xent_kernel<<<1, kThreads, 0, m->stream>>>((const T *)m->act[last], m->labels, count, classes, grad_scale,
                                                     training ? (T *)m->delta[last] : (T *)NULL, metrics);
  LAUNCH_TRY();
  return training ? backward<T>(m, count, hook) : 0;
}

static int dispatch_batch(mlp_model_t *m, mlp_split_kind_t split, const int32_t *order, int first, int count,
                          int training, float grad_scale, const mlp_grad_hook_t *hook, mlp_metrics_t *metrics) {
  switch (m->dtype) {
    case CUOPTIM_FLOAT16: return run_batch<__half>(m, split, order, first, count, training, grad_scale, hook, metrics);
    case CUOPTIM_BFLOAT16:
      return run_batch<__nv_bfloat16>(m, split, order, first, count, training, grad_scale, hook, metrics);
    default: return run_batch<float>(m, split, order, first, count, training, grad_scale, hook, metrics);
  }
}

/* An empty shard of a batch (a data-parallel rank whose share of a short batch is nothing): zero
 * gradients, and no kernel launched over zero elements. */
static int zero_grads(mlp_model_t *m, const mlp_grad_hook_t *hook) {
  const mlp_shape_t *s = &m->shape;
  for (int l = s->num_layers - 1; l >= 0; l--) {
    CUDA_TRY(cudaMemsetAsync(m->kernel_grad[l], 0, mlp_kernel_count(s, l) * m->elem, m->stream));
    CUDA_TRY(cudaMemsetAsync(m->bias_grad[l], 0, mlp_bias_count(s, l) * m->elem, m->stream));
    if (hook && hook->layer_ready(hook->user, l)) return -1;
  }
  return 0;
}

/* Device metric slots: the running training sums, and the sums of one evaluation. */
enum { kRunningSlot = 0, kEvaluationSlot = 1 };

static int cuda_train_batch(mlp_model_t *m, int first, int count, float grad_scale, const mlp_grad_hook_t *hook) {
  if (count == 0) return zero_grads(m, hook);
  return dispatch_batch(m, MLP_TRAIN, m->order, first, count, 1, grad_scale, hook, &m->metrics[kRunningSlot]);
}

static int read_metrics(mlp_model_t *m, int slot, mlp_metrics_t *metrics) {
  CUDA_TRY(cudaMemcpyAsync(metrics, &m->metrics[slot], sizeof *metrics, cudaMemcpyDeviceToHost, m->stream));
  CUDA_TRY(cudaMemsetAsync(&m->metrics[slot], 0, sizeof *metrics, m->stream));
  CUDA_TRY(cudaStreamSynchronize(m->stream));
  return 0;
}

static int cuda_take_metrics(mlp_model_t *m, mlp_metrics_t *metrics) { return read_metrics(m, kRunningSlot, metrics); }

static int cuda_evaluate(mlp_model_t *m, mlp_split_kind_t which, mlp_metrics_t *metrics) {
  for (int first = 0; first < m->n[which]; first += m->max_batch) {
    int count = m->n[which] - first < m->max_batch ? m->n[which] - first : m->max_batch;
    if (dispatch_batch(m, which, NULL, first, count, 0, 0.0f, NULL, &m->metrics[kEvaluationSlot])) return -1;
  }
  return read_metrics(m, kEvaluationSlot, metrics);
}

static cuoptimStream_t cuda_stream(mlp_model_t *m) { return (cuoptimStream_t)m->stream; }

extern "C" int mlp_cuda_device_count(void) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError(); /* no driver or no device: not an error for the caller, who falls back */
    return 0;
  }
  return count;
}

/* In the order of mlp_backend_t's fields. */
extern "C" const mlp_backend_t mlp_cuda_backend = {
    "cuda",           CUOPTIM_BACKEND_CUDA, cuda_create,     cuda_destroy,      cuda_param,
    cuda_grad,        cuda_set_grad,        cuda_set_params, cuda_get_params,   cuda_set_order,
    cuda_train_batch, cuda_take_metrics,    cuda_evaluate,   cuda_stream,
};
