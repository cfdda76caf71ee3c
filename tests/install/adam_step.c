/* A program outside cuoptim, built against an installed copy of it (run.sh): one Adam step on the
 * host backend, checked against the step worked out by hand. Exits 0 and prints "ok" when right.
 * Built with EXPECT_CUDA_BACKEND when the library has the CUDA backend; without it, the CUDA
 * backend must be refused with NOT_SUPPORTED. */
#include <cuoptim.h>
#include <math.h>
#include <stdio.h>

#define N 3

static int failed(const char *what, cuoptimStatus_t status) {
  fprintf(stderr, "adam_step: %s: %s: %s\n", what, cuoptimGetStatusString(status), cuoptimGetLastErrorMessage());
  return 1;
}

#define CHECK(call)                                                                 \
  do {                                                                              \
    cuoptimStatus_t check_status = (call);                                          \
    if (check_status != CUOPTIM_STATUS_SUCCESS) return failed(#call, check_status); \
  } while (0)

/* The first step of Keras's Adam: m = (1 - b1) g, v = (1 - b2) g^2,
 * w -= lr sqrt(1 - b2) / (1 - b1) * m / (sqrt(v) + epsilon). */
static double first_adam_step(double w, double g, double lr, double b1, double b2, double epsilon) {
  double m = (1 - b1) * g, v = (1 - b2) * g * g;
  double alpha = lr * sqrt(1 - b2) / (1 - b1);
  return w - alpha * m / (sqrt(v) + epsilon);
}

static int check_cuda_backend(const cuoptimConfig_t *config) {
  cuoptimOptimizer_t opt = NULL;
  cuoptimStatus_t status = cuoptimCreate(&opt, config, CUOPTIM_BACKEND_CUDA, 0);
#ifdef EXPECT_CUDA_BACKEND
  /* Without a GPU: NO_DEVICE or CUDA_ERROR; with one, an optimizer. */
  if (status == CUOPTIM_STATUS_SUCCESS) cuoptimDestroy(opt);
  if (status == CUOPTIM_STATUS_NOT_SUPPORTED) return failed("the CUDA backend of a build with CUDA", status);
#else
  if (status != CUOPTIM_STATUS_NOT_SUPPORTED) return failed("the CUDA backend of a host-only build", status);
#endif
  return 0;
}

int main(void) {
  if (cuoptimGetVersion() != CUOPTIM_VERSION) {
    fprintf(stderr, "adam_step: library version %d, header %d\n", cuoptimGetVersion(), CUOPTIM_VERSION);
    return 1;
  }
  const double lr = 0.01, b1 = 0.9, b2 = 0.999, epsilon = 1e-7;
  cuoptimConfig_t config;
  CHECK(cuoptimConfigInit(&config, CUOPTIM_ADAM));
  config.learning_rate.initial_learning_rate = lr;
  config.beta_1 = b1;
  config.beta_2 = b2;
  config.epsilon = epsilon;
  if (check_cuda_backend(&config) != 0) return 1;

  cuoptimOptimizer_t opt = NULL;
  CHECK(cuoptimCreate(&opt, &config, CUOPTIM_BACKEND_HOST, 0));
  float w[N] = {1.0f, -2.0f, 0.25f};
  const float w0[N] = {1.0f, -2.0f, 0.25f};
  const float g[N] = {0.5f, -0.125f, 3.0f};
  cuoptimVariable_t var;
  CHECK(cuoptimAddVariable(opt, "dense/kernel", w, CUOPTIM_FLOAT32, N, &var));
  cuoptimGradient_t grad = {var, g, CUOPTIM_FLOAT32};
  CHECK(cuoptimApplyGradients(opt, 1, &grad, NULL));
  CHECK(cuoptimSynchronize(opt));
  int64_t iterations = 0;
  CHECK(cuoptimGetIterations(opt, &iterations));
  CHECK(cuoptimDestroy(opt));

  int bad = iterations != 1;
  if (bad) fprintf(stderr, "adam_step: iterations = %lld, expected 1\n", (long long)iterations);
  for (int i = 0; i < N; i++) {
    double expected = first_adam_step(w0[i], g[i], lr, b1, b2, epsilon);
    /* float32 arithmetic: a few ulps of the result; the step itself is about lr. */
    if (fabs(w[i] - expected) > 1e-6 * fmax(1.0, fabs(expected))) {
      fprintf(stderr, "adam_step: w[%d] = %.9g after the step, expected %.9g\n", i, w[i], expected);
      bad = 1;
    }
  }
  if (!bad) printf("ok: w = {%.7g, %.7g, %.7g}\n", w[0], w[1], w[2]);
  return bad;
}
