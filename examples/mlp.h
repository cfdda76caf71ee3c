/*
 * mlp.h — the multi-layer perceptron that train_mlp trains, behind one interface with two
 * implementations that do the same math:
 *   mlp_host.c  plain C loops on host memory (the optimizer step then runs on cuoptim's host
 *               backend);
 *   mlp_cuda.cu cuBLAS matrix products and small CUDA kernels on device memory (the optimizer
 *               step then runs on cuoptim's CUDA backend, on the model's stream).
 *
 * The model: dense layers (y = x W + b, W of shape [in, out] as Keras stores a Dense kernel), ReLU
 * after every layer but the last, softmax cross-entropy on the last. Activations are row-major
 * [batch, features]. A training batch computes the gradients of its examples' summed loss times a
 * gradient scale (loss scale / batch size: the gradients of the batch's mean loss, multiplied by
 * the loss scale; in a data-parallel run each rank passes the batch's size for its shard of it, so
 * that the ranks' gradients sum to the batch's mean), in the parameters' element type.
 *
 * Every function returns 0 on success, or -1 after mlp_fail() recorded a message
 * (mlp_last_error()).
 */
#ifndef MLP_H
#define MLP_H

#include <stddef.h>
#include <stdint.h>

#include <cuoptim.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MLP_MAX_LAYERS 8
#define MLP_MAX_CLASSES 64

typedef struct {
  int num_layers;                /* dense layers, 1 .. MLP_MAX_LAYERS */
  int sizes[MLP_MAX_LAYERS + 1]; /* sizes[0] inputs, sizes[l + 1] outputs of layer l */
} mlp_shape_t;

/* Elements of layer l's kernel (sizes[l] * sizes[l + 1]) and bias (sizes[l + 1]). */
size_t mlp_kernel_count(const mlp_shape_t *shape, int layer);
size_t mlp_bias_count(const mlp_shape_t *shape, int layer);
/* Every parameter, in the order kernel 0, bias 0, kernel 1, bias 1, ... */
size_t mlp_param_count(const mlp_shape_t *shape);

/* Labelled points: x is [n, dim] row-major, y[i] in [0, classes). */
typedef struct {
  int n, dim, classes;
  float *x;
  int32_t *y;
} mlp_split_t;

typedef struct {
  mlp_split_t train, test;
} mlp_dataset_t;

/* Interleaved spirals: `classes` arms of `points` points in all, Gaussian noise of `noise` on each
 * coordinate, shuffled once and split so that the last `test_fraction` of them are held out.
 * Deterministic for a seed. */
int mlp_make_spirals(mlp_dataset_t *data, int points, int classes, double noise, double test_fraction,
                     uint64_t seed);
void mlp_free_dataset(mlp_dataset_t *data);

/* A small deterministic generator (splitmix64): the whole state is one number. */
typedef struct {
  uint64_t state;
} mlp_rng_t;
mlp_rng_t mlp_rng(uint64_t seed, uint64_t stream);
uint64_t mlp_rng_next(mlp_rng_t *rng);
double mlp_rng_uniform(mlp_rng_t *rng); /* [0, 1) */
double mlp_rng_normal(mlp_rng_t *rng);
/* A uniform random permutation of 0 .. n-1 (Fisher-Yates). */
void mlp_shuffle(int32_t *order, int n, mlp_rng_t *rng);

/* Keras's Dense defaults: Glorot-uniform kernels, zero biases; values in mlp_param_count order. */
void mlp_init_params(const mlp_shape_t *shape, float *params, uint64_t seed);

/* Running sums over examples. */
typedef struct {
  double loss_sum; /* sum of the examples' cross-entropy */
  int64_t correct; /* examples whose largest logit is the label */
  int64_t count;
} mlp_metrics_t;

typedef struct mlp_model mlp_model_t;

typedef enum { MLP_TRAIN = 0, MLP_TEST = 1 } mlp_split_kind_t;

/* Called by train_batch as soon as layer `layer`'s kernel and bias gradients are written (on the
 * GPU: enqueued on the model's stream), the last layer first, so that their reduction can start
 * while the backward pass goes on. Returns 0, or -1 after mlp_fail(), which ends the batch. */
typedef struct {
  int (*layer_ready)(void *user, int layer);
  void *user;
} mlp_grad_hook_t;

typedef struct {
  const char *name;          /* "host" or "cuda" */
  cuoptimBackend_t backend;  /* the cuoptim backend whose pointers param()/grad() return */
  /* A model for `shape` with parameters and gradients of `dtype` and batches of at most
   * max_batch examples, on `data` (which must outlive the model; the GPU model copies it to the
   * device). `device` is the CUDA device ordinal (ignored on the host). */
  int (*create)(mlp_model_t **model, const mlp_shape_t *shape, cuoptimDtype_t dtype, int max_batch,
                const mlp_dataset_t *data, int device);
  void (*destroy)(mlp_model_t *model);
  /* Layer `layer`'s kernel (which 0) or bias (which 1), and its gradient buffer: pointers of the
   * backend, of the model's dtype. */
  void *(*param)(mlp_model_t *model, int layer, int which);
  const void *(*grad)(mlp_model_t *model, int layer, int which);
  /* From now on the backward pass writes that gradient into `grad` (a pointer of the backend, of
   * the model's dtype, as many elements as the parameter; cuoptim's gradient arena), which
   * grad() then returns. */
  void (*set_grad)(mlp_model_t *model, int layer, int which, void *grad);
  /* Every parameter from or to host float32 values, in mlp_param_count order. */
  int (*set_params)(mlp_model_t *model, const float *values);
  int (*get_params)(mlp_model_t *model, float *values);
  /* The order in which training examples are taken (a permutation of the training split). */
  int (*set_order)(mlp_model_t *model, const int32_t *order);
  /* Forward and backward over training examples order[first .. first + count): writes every
   * gradient of the examples' summed loss times grad_scale, calls hook->layer_ready for each layer
   * (hook may be NULL), and adds the examples to the running training metrics. count may be 0:
   * every gradient is then zero. Enqueued on the model's stream on the GPU. */
  int (*train_batch)(mlp_model_t *model, int first, int count, float grad_scale, const mlp_grad_hook_t *hook);
  /* The running training metrics since the last call (then reset): waits for the GPU. */
  int (*take_metrics)(mlp_model_t *model, mlp_metrics_t *metrics);
  /* Loss and accuracy of the current parameters on a whole split (forward only). */
  int (*evaluate)(mlp_model_t *model, mlp_split_kind_t split, mlp_metrics_t *metrics);
  /* The stream the model and the optimizer step share (NULL on the host). */
  cuoptimStream_t (*stream)(mlp_model_t *model);
} mlp_backend_t;

extern const mlp_backend_t mlp_host_backend;
/* Defined only in builds with cuBLAS (TRAIN_MLP_HAVE_CUDA). */
extern const mlp_backend_t mlp_cuda_backend;
/* The number of usable CUDA devices (0 without a GPU, a driver or CUDA support in the build). */
int mlp_cuda_device_count(void);

/* Records a message for mlp_last_error() and returns -1. */
int mlp_fail(const char *format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
const char *mlp_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* MLP_H */
