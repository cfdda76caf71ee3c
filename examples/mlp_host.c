/* The MLP of mlp.h in plain C on host memory, float32. The loops follow the row-major layout so
 * that the innermost one runs over contiguous memory (a row of W, of the output, of the gradient)
 * and vectorizes; they compute what mlp_cuda.cu asks of cuBLAS: Z = X W, then + b. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mlp.h"

struct mlp_model {
  mlp_shape_t shape;
  int max_batch;
  const mlp_dataset_t *data;
  float *params, *grads; /* every parameter and gradient, in mlp_param_count order */
  float *kernel[MLP_MAX_LAYERS], *bias[MLP_MAX_LAYERS];
  float *kernel_grad[MLP_MAX_LAYERS], *bias_grad[MLP_MAX_LAYERS];
  float *input;                /* [max_batch, sizes[0]] */
  int32_t *labels;             /* [max_batch] */
  float *act[MLP_MAX_LAYERS];   /* layer outputs after ReLU; the last one holds the logits */
  float *delta[MLP_MAX_LAYERS]; /* gradient of the loss with respect to each layer's output */
  int32_t *order;
  mlp_metrics_t running;
};

static void host_destroy(mlp_model_t *m) {
  if (!m) return;
  free(m->params);
  free(m->grads);
  free(m->input);
  free(m->labels);
  free(m->order);
  for (int l = 0; l < m->shape.num_layers; l++) {
    free(m->act[l]);
    free(m->delta[l]);
  }
  free(m);
}

static int host_create(mlp_model_t **model, const mlp_shape_t *shape, cuoptimDtype_t dtype, int max_batch,
                       const mlp_dataset_t *data, int device) {
  (void)device;
  *model = NULL;
  if (dtype != CUOPTIM_FLOAT32)
    return mlp_fail("--dtype %s: the host model computes in float32 only (float16 and bfloat16 need --device cuda)",
                    dtype == CUOPTIM_FLOAT16 ? "float16" : "bfloat16");
  mlp_model_t *m = calloc(1, sizeof *m);
  if (!m) return mlp_fail("out of memory for the model");
  m->shape = *shape;
  m->max_batch = max_batch;
  m->data = data;
  size_t total = mlp_param_count(shape);
  m->params = calloc(total, sizeof(float));
  m->grads = calloc(total, sizeof(float));
  m->input = malloc((size_t)max_batch * (size_t)shape->sizes[0] * sizeof(float));
  m->labels = malloc((size_t)max_batch * sizeof(int32_t));
  m->order = malloc((size_t)data->train.n * sizeof(int32_t));
  int ok = m->params && m->grads && m->input && m->labels && m->order;
  float *p = m->params, *g = m->grads;
  for (int l = 0; l < shape->num_layers; l++) {
    m->kernel[l] = p;
    m->kernel_grad[l] = g;
    p += mlp_kernel_count(shape, l);
    g += mlp_kernel_count(shape, l);
    m->bias[l] = p;
    m->bias_grad[l] = g;
    p += mlp_bias_count(shape, l);
    g += mlp_bias_count(shape, l);
    m->act[l] = malloc((size_t)max_batch * (size_t)shape->sizes[l + 1] * sizeof(float));
    m->delta[l] = malloc((size_t)max_batch * (size_t)shape->sizes[l + 1] * sizeof(float));
    ok = ok && m->act[l] && m->delta[l];
  }
  if (!ok) {
    host_destroy(m);
    return mlp_fail("out of memory for the model (batch %d)", max_batch);
  }
  for (int i = 0; i < data->train.n; i++) m->order[i] = i;
  *model = m;
  return 0;
}

static void *host_param(mlp_model_t *m, int layer, int which) { return which ? m->bias[layer] : m->kernel[layer]; }

static const void *host_grad(mlp_model_t *m, int layer, int which) {
  return which ? m->bias_grad[layer] : m->kernel_grad[layer];
}

static void host_set_grad(mlp_model_t *m, int layer, int which, void *grad) {
  if (which)
    m->bias_grad[layer] = grad;
  else
    m->kernel_grad[layer] = grad;
}

static int host_set_params(mlp_model_t *m, const float *values) {
  memcpy(m->params, values, mlp_param_count(&m->shape) * sizeof(float));
  return 0;
}

static int host_get_params(mlp_model_t *m, float *values) {
  memcpy(values, m->params, mlp_param_count(&m->shape) * sizeof(float));
  return 0;
}

static int host_set_order(mlp_model_t *m, const int32_t *order) {
  memcpy(m->order, order, (size_t)m->data->train.n * sizeof(int32_t));
  return 0;
}

/* out[b, :] = in[b, :] W + bias, for W of shape [n_in, n_out]. */
static void dense_forward(const float *restrict in, int batch, int n_in, const float *restrict w,
                          const float *restrict bias, int n_out, float *restrict out) {
  for (int b = 0; b < batch; b++) {
    float *restrict row = out + (size_t)b * n_out;
    for (int o = 0; o < n_out; o++) row[o] = 0.0f;
    for (int i = 0; i < n_in; i++) {
      float x = in[(size_t)b * n_in + i];
      const float *restrict w_row = w + (size_t)i * n_out;
      for (int o = 0; o < n_out; o++) row[o] += x * w_row[o];
    }
    for (int o = 0; o < n_out; o++) row[o] += bias[o];
  }
}

static void relu(float *restrict x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

/* Per example: loss = logsumexp(z) - z[label]; its gradient times grad_scale is
 * (softmax(z) - onehot(label)) * grad_scale, written to delta (when not NULL). A prediction is
 * the first largest logit. */
static void softmax_cross_entropy(const float *restrict logits, const int32_t *restrict labels, int count,
                                  int classes, float grad_scale, float *restrict delta, mlp_metrics_t *metrics) {
  for (int b = 0; b < count; b++) {
    const float *z = logits + (size_t)b * classes;
    int best = 0;
    for (int c = 1; c < classes; c++)
      if (z[c] > z[best]) best = c;
    float top = z[best], sum = 0.0f;
    for (int c = 0; c < classes; c++) sum += expf(z[c] - top);
    int label = labels[b];
    metrics->loss_sum += (double)(logf(sum) + top - z[label]);
    metrics->correct += best == label;
    metrics->count++;
    if (!delta) continue;
    float *d = delta + (size_t)b * classes;
    for (int c = 0; c < classes; c++) d[c] = (expf(z[c] - top) / sum - (c == label ? 1.0f : 0.0f)) * grad_scale;
  }
}

static void forward(mlp_model_t *m, int count) {
  const float *in = m->input;
  for (int l = 0; l < m->shape.num_layers; l++) {
    dense_forward(in, count, m->shape.sizes[l], m->kernel[l], m->bias[l], m->shape.sizes[l + 1], m->act[l]);
    if (l + 1 < m->shape.num_layers) relu(m->act[l], (size_t)count * (size_t)m->shape.sizes[l + 1]);
    in = m->act[l];
  }
}

/* grad_w = in^T delta, grad_b = the column sums of delta. */
static void dense_param_grads(const float *restrict in, const float *restrict delta, int batch, int n_in, int n_out,
                              float *restrict grad_w, float *restrict grad_b) {
  memset(grad_w, 0, (size_t)n_in * (size_t)n_out * sizeof(float));
  memset(grad_b, 0, (size_t)n_out * sizeof(float));
  for (int b = 0; b < batch; b++) {
    const float *restrict d = delta + (size_t)b * n_out;
    for (int i = 0; i < n_in; i++) {
      float x = in[(size_t)b * n_in + i];
      float *restrict g_row = grad_w + (size_t)i * n_out;
      for (int o = 0; o < n_out; o++) g_row[o] += x * d[o];
    }
    for (int o = 0; o < n_out; o++) grad_b[o] += d[o];
  }
}

/* delta_in = (delta W^T) where the ReLU let its input through (act > 0), else 0. */
static void dense_input_grad(const float *restrict delta, const float *restrict w, const float *restrict act,
                             int batch, int n_in, int n_out, float *restrict delta_in) {
  for (int b = 0; b < batch; b++) {
    const float *restrict d = delta + (size_t)b * n_out;
    for (int i = 0; i < n_in; i++) {
      const float *restrict w_row = w + (size_t)i * n_out;
      float s = 0.0f;
      for (int o = 0; o < n_out; o++) s += w_row[o] * d[o];
      size_t k = (size_t)b * n_in + i;
      delta_in[k] = act[k] > 0.0f ? s : 0.0f;
    }
  }
}

/* Layer l's parameter gradients first, then the hook (their reduction may start), then the
 * gradient that flows on to layer l - 1. */
static int backward(mlp_model_t *m, int count, const mlp_grad_hook_t *hook) {
  for (int l = m->shape.num_layers - 1; l >= 0; l--) {
    const float *in = l ? m->act[l - 1] : m->input;
    int n_in = m->shape.sizes[l], n_out = m->shape.sizes[l + 1];
    dense_param_grads(in, m->delta[l], count, n_in, n_out, m->kernel_grad[l], m->bias_grad[l]);
    if (hook && hook->layer_ready(hook->user, l)) return -1;
    if (l) dense_input_grad(m->delta[l], m->kernel[l], m->act[l - 1], count, n_in, n_out, m->delta[l - 1]);
  }
  return 0;
}

static void gather(mlp_model_t *m, const mlp_split_t *split, const int32_t *order, int first, int count) {
  int dim = split->dim;
  for (int b = 0; b < count; b++) {
    int i = order ? order[first + b] : first + b;
    memcpy(m->input + (size_t)b * dim, split->x + (size_t)i * dim, (size_t)dim * sizeof(float));
    m->labels[b] = split->y[i];
  }
}

static int host_train_batch(mlp_model_t *m, int first, int count, float grad_scale, const mlp_grad_hook_t *hook) {
  int last = m->shape.num_layers - 1;
  gather(m, &m->data->train, m->order, first, count);
  forward(m, count);
  softmax_cross_entropy(m->act[last], m->labels, count, m->shape.sizes[last + 1], grad_scale, m->delta[last],
                        &m->running);
  return backward(m, count, hook);
}

static int host_take_metrics(mlp_model_t *m, mlp_metrics_t *metrics) {
  *metrics = m->running;
  memset(&m->running, 0, sizeof m->running);
  return 0;
}

static int host_evaluate(mlp_model_t *m, mlp_split_kind_t which, mlp_metrics_t *metrics) {
  const mlp_split_t *split = which == MLP_TEST ? &m->data->test : &m->data->train;
  int last = m->shape.num_layers - 1;
  memset(metrics, 0, sizeof *metrics);
  for (int first = 0; first < split->n; first += m->max_batch) {
    int count = split->n - first < m->max_batch ? split->n - first : m->max_batch;
    gather(m, split, NULL, first, count);
    forward(m, count);
    softmax_cross_entropy(m->act[last], m->labels, count, m->shape.sizes[last + 1], 0.0f, NULL, metrics);
  }
  return 0;
}

static cuoptimStream_t host_stream(mlp_model_t *m) {
  (void)m;
  return NULL;
}

const mlp_backend_t mlp_host_backend = {
    .name = "host",
    .backend = CUOPTIM_BACKEND_HOST,
    .create = host_create,
    .destroy = host_destroy,
    .param = host_param,
    .grad = host_grad,
    .set_grad = host_set_grad,
    .set_params = host_set_params,
    .get_params = host_get_params,
    .set_order = host_set_order,
    .train_batch = host_train_batch,
    .take_metrics = host_take_metrics,
    .evaluate = host_evaluate,
    .stream = host_stream,
};
