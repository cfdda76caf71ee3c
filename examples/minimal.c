/* The smallest complete program with cuoptim: fits y = 3x - 2 by least squares with Adam on the
 * host backend. The caller owns the parameters and computes the gradients; cuoptim applies them. */
#include <math.h>
#include <stdio.h>

#include <cuoptim.h>

#define CHECK(call)                                             \
  do {                                                          \
    if ((call) != CUOPTIM_STATUS_SUCCESS) {                     \
      fprintf(stderr, "%s\n", cuoptimGetLastErrorMessage());    \
      return 1;                                                 \
    }                                                           \
  } while (0)

int main(void) {
  float w = 0.0f, b = 0.0f;       /* the parameters: host memory for the host backend */
  float grad_w, grad_b;

  cuoptimConfig_t config;
  CHECK(cuoptimConfigInit(&config, CUOPTIM_ADAM)); /* Keras's defaults */
  config.learning_rate.initial_learning_rate = 0.05;
  config.global_clipnorm = 1.0;

  cuoptimOptimizer_t opt;
  CHECK(cuoptimCreate(&opt, &config, CUOPTIM_BACKEND_HOST, 0));
  cuoptimVariable_t var_w, var_b;
  CHECK(cuoptimAddVariable(opt, "dense/kernel", &w, CUOPTIM_FLOAT32, 1, &var_w));
  CHECK(cuoptimAddVariable(opt, "dense/bias", &b, CUOPTIM_FLOAT32, 1, &var_b));

  for (int step = 0; step < 1000; step++) {
    /* the gradient of the mean squared error over x = 0, 0.1, ..., 0.9 */
    grad_w = grad_b = 0.0f;
    for (int i = 0; i < 10; i++) {
      float x = 0.1f * (float)i, error = w * x + b - (3.0f * x - 2.0f);
      grad_w += 0.2f * error * x;
      grad_b += 0.2f * error;
    }
    cuoptimGradient_t grads[] = {{var_w, &grad_w, CUOPTIM_FLOAT32}, {var_b, &grad_b, CUOPTIM_FLOAT32}};
    CHECK(cuoptimApplyGradients(opt, 2, grads, NULL)); /* NULL: the stream, unused on the host */
  }

  int64_t steps;
  CHECK(cuoptimGetIterations(opt, &steps));
  printf("after %lld steps: w = %.4f, b = %.4f (the line is y = 3x - 2)\n", (long long)steps, w, b);
  CHECK(cuoptimDestroy(opt));
  return fabsf(w - 3.0f) < 0.01f && fabsf(b + 2.0f) < 0.01f ? 0 : 1;
}
