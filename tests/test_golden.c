/*
 * test_golden.c — Keras 3's own numeric tests, ported to cuoptim.
 *
 * Every assertion of keras/src/optimizers/<optimizer>_test.py, optimizer_test.py and
 * loss_scale_optimizer_test.py that maps onto the cuoptim API, with Keras's numbers and
 * tolerances (SEMANTICS.md §8). Each test takes the backend as a parameter: the host variant
 * runs on CUOPTIM_BACKEND_HOST, the CUDA variant (suite golden_cuda) runs the same protocol on
 * device memory when a GPU is present and is skipped otherwise.
 *
 * Two kinds of expected values:
 *   - the numbers written in Keras's test files (4 digits), compared with Keras's tolerances;
 *   - "_float32" tests: the full float32 results of real Keras 3.15.1 (jax backend) for the same
 *     protocol, printed by the Keras call named beside each table, compared with a tight tolerance
 *     (cuoptim promises Keras's float32 numerics).
 * Tests are named after Keras's (keras test_single_step -> <optimizer>_single_step_matches_keras).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuoptim.h"
#include "testutil.h"

/* ---- helpers ------------------------------------------------------------------------------------ */

/* Keras's test tolerances. */
#define KERAS_SINGLE_STEP_TOL 1e-4 /* assertAllClose(..., rtol=1e-4, atol=1e-4) */
#define KERAS_GOLDEN_TOL 5e-4      /* assertAllClose(..., rtol=5e-4, atol=5e-4) */
#define KERAS_DEFAULT_TOL 1e-6     /* assertAllClose defaults: rtol=1e-6, atol=1e-6 */
/* Against real Keras float32 results. */
#define F32_RTOL 1e-6
#define F32_ATOL 1e-7

/* Applies grads[k] (host memory, NULL = no gradient) to variable k for k < r->num_vars. */
static void rig_apply(test_rig_t *r, const float *const *grads) { OK(test_rig_try_apply_all(r, grads)); }

/* One-variable optimizers. */
static void rig_apply1(test_rig_t *r, const float *grad) {
  const float *grads[1] = {grad};
  cr_assert_eq(r->num_vars, 1);
  rig_apply(r, grads);
}

/* The state entry `name` as floats. */
static void rig_weight(test_rig_t *r, const char *name, float *out, size_t count) {
  int index = test_weight_index(r->opt, name);
  cr_assert_geq(index, 0, "the optimizer has no state entry named \"%s\"", name);
  double values[64];
  cr_assert_leq(count, 64);
  OK(cuoptimGetWeights(r->opt, index, values, count));
  for (size_t i = 0; i < count; i++) out[i] = (float)values[i];
}

static double rig_weight_scalar(test_rig_t *r, const char *name) {
  int index = test_weight_index(r->opt, name);
  cr_assert_geq(index, 0, "the optimizer has no state entry named \"%s\"", name);
  double value = NAN;
  OK(cuoptimGetWeights(r->opt, index, &value, 1));
  return value;
}

static void expect_close(const float *got, const float *want, size_t n, double rtol, double atol, const char *what) {
  long i = test_first_mismatch(got, want, n, rtol, atol);
  long k = i < 0 ? 0 : i;
  cr_assert(i < 0, "%s: element %ld is %.9g, expected %.9g (rtol %g, atol %g)", what, k, (double)got[k],
            (double)want[k], rtol, atol);
}

/* Defines the host and the CUDA variant of a test whose body is fn(backend). */
#define BOTH_BACKENDS(test_name, fn)                    \
  Test(golden, test_name) { fn(CUOPTIM_BACKEND_HOST); } \
  Test(golden_cuda, test_name) { fn(CUOPTIM_BACKEND_CUDA); }

/* ---- the shared protocols ------------------------------------------------------------------------ */

/* test_single_step: w = [1, 2, 3, 4], g = [1, 6, 7, 2], one apply_gradients. */
static void run_single_step(cuoptimBackend_t backend, const cuoptimConfig_t *config, const float want[4], double rtol,
                            double atol) {
  test_require_backend(backend);
  static const float w0[4] = {1.0f, 2.0f, 3.0f, 4.0f};
  static const float g[4] = {1.0f, 6.0f, 7.0f, 2.0f};
  test_rig_t r;
  test_rig_init(&r, config, backend);
  test_rig_add(&r, "variable", w0, 4);
  rig_apply1(&r, g);
  float got[4];
  test_rig_get(&r, 0, got);
  char what[128];
  snprintf(what, sizeof what, "%s single step (%s)", cuoptimOptimizerName(config->kind), test_backend_name(backend));
  expect_close(got, want, 4, rtol, atol, what);
  cr_assert_eq(test_iterations(r.opt), 1);
  test_rig_destroy(&r);
}

/* test_correctness_with_golden: x = ones(10); apply full(10, 0.01); then for i in 0..4: compare
 * row i, apply arange(0.1, 1.1, 0.1). */
static void run_golden_rows(cuoptimBackend_t backend, const cuoptimConfig_t *config, const float want[5][10],
                            double rtol, double atol);

/* test_weight_decay: lr = 1.0, weight_decay = 0.004, zero gradients on scalars equal to 2;
 * var1 gets one step from each of three optimizers (-> 2 * 0.996^3 = 1.9760959), var2 is excluded
 * by name ("exclude"), var3 by identity (here: a regex matching exactly its name). */
static void run_weight_decay(cuoptimBackend_t backend, cuoptimOptimizerKind_t kind);

/* test_clip_norm / test_clip_value: Keras checks _clip_gradients([100, 100]) directly; here the
 * optimizer with clipnorm=1 (or clipvalue=1) steps w = [1, 2] with g = [100, 100] and the result
 * is compared with real Keras's apply_gradients on the same input. */
static void run_clip(cuoptimBackend_t backend, cuoptimOptimizerKind_t kind, int clip_value, const float want[2]);

static const float ONES10[10] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
static const float FIRST_GRADS[10] = {0.01f, 0.01f, 0.01f, 0.01f, 0.01f, 0.01f, 0.01f, 0.01f, 0.01f, 0.01f};

/* ---- real Keras 3.15.1 float32 values (KERAS_BACKEND=jax) -------------------------------------------
 * <NAME>_SINGLE_F32: keras.optimizers.<Name>(learning_rate=0.5).apply_gradients on the single-step
 * input; <NAME>_GOLDEN_F32: the golden-test optimizer of <name>_test.py on the golden protocol (rows
 * read before applies 2..6); <NAME>_CLIPNORM_F32 / _CLIPVALUE_F32: <Name>(clipnorm=1) /
 * <Name>(clipvalue=1) applying g = [100, 100] to w = [1, 2]. */
/* ops.arange(0.1, 1.1, 0.1) in float32 */
static const float ARANGE_GRADS[10] = {0.100000001f, 0.200000003f, 0.300000012f, 0.400000006f, 0.5f,
                                       0.600000024f, 0.700000048f, 0.800000012f, 0.900000036f, 1.0f};
static const float SGD_SINGLE_F32[4] = {0.5f, -1.0f, -0.5f, 3.0f};
static const float SGD_GOLDEN_F32[5][10] = {{0.999899983f, 0.999899983f, 0.999899983f, 0.999899983f, 0.999899983f,
                                             0.999899983f, 0.999899983f, 0.999899983f, 0.999899983f, 0.999899983f},
                                            {0.998899996f, 0.997900009f, 0.996899962f, 0.995899975f, 0.994899988f,
                                             0.993900001f, 0.992899954f, 0.991899967f, 0.99089998f, 0.989899993f},
                                            {0.997900009f, 0.995900035f, 0.993899941f, 0.991899967f, 0.989899993f,
                                             0.987900019f, 0.985899925f, 0.983899951f, 0.981899977f, 0.979900002f},
                                            {0.996900022f, 0.993900061f, 0.99089992f, 0.987899959f, 0.984899998f,
                                             0.981900036f, 0.978899896f, 0.975899935f, 0.972899973f, 0.969900012f},
                                            {0.995900035f, 0.991900086f, 0.987899899f, 0.983899951f, 0.979900002f,
                                             0.975900054f, 0.971899867f, 0.967899919f, 0.96389997f, 0.959900022f}};
static const float SGD_CLIPNORM_F32[2] = {0.992928922f, 1.99292898f};
static const float SGD_CLIPVALUE_F32[2] = {0.99000001f, 1.99000001f};
static const float RMSPROP_SINGLE_F32[4] = {-0.581138134f, 0.418861151f, 1.41886127f, 2.41886139f};
static const float RMSPROP_GOLDEN_F32[5][10] = {{0.996685028f, 0.996685028f, 0.996685028f, 0.996685028f, 0.996685028f,
                                                 0.996685028f, 0.996685028f, 0.996685028f, 0.996685028f, 0.996685028f},
                                                {0.993333578f, 0.993338764f, 0.993342221f, 0.993344307f, 0.993345618f,
                                                 0.993346572f, 0.993347228f, 0.993347764f, 0.993348181f, 0.993348539f},
                                                {0.990765035f, 0.990778446f, 0.990785301f, 0.990789235f, 0.990791678f,
                                                 0.990793407f, 0.990794659f, 0.990795612f, 0.990796387f, 0.990796983f},
                                                {0.988496363f, 0.988518238f, 0.988528371f, 0.988533974f, 0.98853749f,
                                                 0.988539934f, 0.988541663f, 0.988543034f, 0.988544106f, 0.988544941f},
                                                {0.986372769f, 0.986403167f, 0.986416399f, 0.986423671f, 0.986428142f,
                                                 0.986431241f, 0.986433506f, 0.986435235f, 0.986436546f, 0.986437619f}};
static const float RMSPROP_CLIPNORM_F32[2] = {0.996837735f, 1.99683774f};
static const float RMSPROP_CLIPVALUE_F32[2] = {0.996837735f, 1.99683774f};
static const float ADAGRAD_SINGLE_F32[4] = {0.5232687f, 1.50069296f, 2.5005095f, 3.50613523f};
static const float ADAGRAD_GOLDEN_F32[5][10] = {{0.996349156f, 0.996349156f, 0.996349156f, 0.996349156f, 0.996349156f,
                                                 0.996349156f, 0.996349156f, 0.996349156f, 0.996349156f, 0.996349156f},
                                                {0.96043396f, 0.927759886f, 0.900284708f, 0.878408551f, 0.861521542f,
                                                 0.848650694f, 0.838846922f, 0.831330597f, 0.825508475f, 0.820944369f},
                                                {0.925084174f, 0.862879932f, 0.813691258f, 0.776816726f, 0.749725223f,
                                                 0.729838848f, 0.715108097f, 0.704045475f, 0.695608079f, 0.689071178f},
                                                {0.890273988f, 0.801165998f, 0.734226346f, 0.686240435f, 0.652139902f,
                                                 0.627691805f, 0.609880626f, 0.596662939f, 0.586669147f, 0.578976512f},
                                                {0.855979383f, 0.742195666f, 0.660377085f, 0.603731155f, 0.564437509f,
                                                 0.53672266f, 0.516756058f, 0.502054632f, 0.491001606f, 0.482529074f}};
static const float ADAGRAD_CLIPNORM_F32[2] = {0.999087155f, 1.9990871f};
static const float ADAGRAD_CLIPVALUE_F32[2] = {0.999046564f, 1.99904656f};
static const float ADADELTA_SINGLE_F32[4] = {0.99929291f, 1.99929285f, 2.99929285f, 3.99929285f};
static const float ADADELTA_GOLDEN_F32[5][10] = {{0.997817814f, 0.997817814f, 0.997817814f, 0.997817814f, 0.997817814f,
                                                  0.997817814f, 0.997817814f, 0.997817814f, 0.997817814f, 0.997817814f},
                                                 {0.994706631f, 0.994696736f, 0.994694889f, 0.994694233f, 0.994693935f,
                                                  0.994693756f, 0.994693696f, 0.994693637f, 0.994693577f, 0.994693518f},
                                                 {0.991507828f, 0.99148798f, 0.991484284f, 0.991482973f, 0.991482377f,
                                                  0.991482019f, 0.9914819f, 0.991481781f, 0.991481662f, 0.991481543f},
                                                 {0.988245785f, 0.988216043f, 0.988210499f, 0.988208532f, 0.988207638f,
                                                  0.988207161f, 0.988206923f, 0.988206744f, 0.988206565f, 0.988206446f},
                                                 {0.984932363f, 0.984892786f, 0.984885395f, 0.984882772f, 0.98488158f,
                                                  0.984880984f, 0.984880626f, 0.984880388f, 0.984880149f, 0.98488003f}};
static const float ADADELTA_CLIPNORM_F32[2] = {0.999998569f, 1.99999857f};
static const float ADADELTA_CLIPVALUE_F32[2] = {0.999998569f, 1.99999857f};
static const float ADAM_SINGLE_F32[4] = {0.500004947f, 1.50000358f, 2.50000358f, 3.50000405f};
static const float ADAM_GOLDEN_F32[5][10] = {{0.999000311f, 0.999000311f, 0.999000311f, 0.999000311f, 0.999000311f,
                                              0.999000311f, 0.999000311f, 0.999000311f, 0.999000311f, 0.999000311f},
                                             {0.998193264f, 0.998223662f, 0.998234272f, 0.998239696f, 0.998242915f,
                                              0.99824512f, 0.99824667f, 0.998247862f, 0.998248816f, 0.998249531f},
                                             {0.997300446f, 0.997347474f, 0.997363865f, 0.99737221f, 0.997377217f,
                                              0.997380614f, 0.997383058f, 0.997384846f, 0.997386336f, 0.997387409f},
                                             {0.996367872f, 0.996425927f, 0.996446192f, 0.996456504f, 0.996462703f,
                                              0.996466875f, 0.996469915f, 0.99647212f, 0.996473968f, 0.996475279f},
                                             {0.995412529f, 0.99547863f, 0.995501697f, 0.995513439f, 0.995520532f,
                                              0.995525241f, 0.995528698f, 0.995531261f, 0.995533347f, 0.995534837f}};
static const float ADAM_CLIPNORM_F32[2] = {0.999000013f, 1.99899995f};
static const float ADAM_CLIPVALUE_F32[2] = {0.999000013f, 1.99899995f};
static const float ADAMW_SINGLE_F32[4] = {0.498004973f, 1.49600363f, 2.49400353f, 3.49200416f};
static const float ADAMW_GOLDEN_F32[5][10] = {
    {0.499841899f, 0.499841899f, 0.499841899f, 0.499841899f, 0.499841899f, 0.499841899f, 0.499841899f, 0.499841899f,
     0.499841899f, 0.499841899f},
    {0.248640522f, 0.247469679f, 0.246302515f, 0.245139018f, 0.243979186f, 0.242822975f, 0.241670385f, 0.240521386f,
     0.239375979f, 0.238234133f},
    {0.122323826f, 0.1198323f, 0.11735107f, 0.114880092f, 0.112419292f, 0.109968603f, 0.107527971f, 0.105097324f,
     0.1026766f, 0.100265749f},
    {0.0586118773f, 0.054896567f, 0.0511998162f, 0.0475214906f, 0.0438614488f, 0.0402195454f, 0.0365956575f,
     0.0329896323f, 0.0294013415f, 0.0258306637f},
    {0.0262927935f, 0.021497136f, 0.01672915f, 0.0119885998f, 0.00727524515f, 0.00258883834f, -0.00207084231f,
     -0.00670403615f, -0.0113109732f, -0.0158918742f}};
static const float ADAMW_CLIPNORM_F32[2] = {0.998996019f, 1.99899197f};
static const float ADAMW_CLIPVALUE_F32[2] = {0.998996019f, 1.99899197f};
static const float ADAMAX_SINGLE_F32[4] = {0.500000179f, 1.50000012f, 2.5f, 3.5f};
static const float ADAMAX_GOLDEN_F32[5][10] = {{0.800019979f, 0.800019979f, 0.800019979f, 0.800019979f, 0.800019979f,
                                                0.800019979f, 0.800019979f, 0.800019979f, 0.800019979f, 0.800019979f},
                                               {0.68272382f, 0.687317848f, 0.688849151f, 0.689614832f, 0.690074205f,
                                                0.690380514f, 0.690599263f, 0.690763354f, 0.690890968f, 0.690993071f},
                                               {0.533279181f, 0.540681005f, 0.543148279f, 0.544381917f, 0.545122087f,
                                                0.545615554f, 0.545968056f, 0.546232402f, 0.546437979f, 0.546602488f},
                                               {0.367970288f, 0.377298474f, 0.380407929f, 0.381962597f, 0.38289541f,
                                                0.383517295f, 0.383961558f, 0.384294689f, 0.38455376f, 0.384761065f},
                                               {0.193307802f, 0.204042643f, 0.207620993f, 0.209410116f, 0.210483596f,
                                                0.211199254f, 0.211710528f, 0.21209386f, 0.212392002f, 0.21263057f}};
static const float ADAMAX_CLIPNORM_F32[2] = {0.999000013f, 1.99899995f};
static const float ADAMAX_CLIPVALUE_F32[2] = {0.999000013f, 1.99899995f};
static const float NADAM_SINGLE_F32[4] = {0.468606174f, 1.468606f, 2.468606f, 3.468606f};
static const float NADAM_GOLDEN_F32[5][10] = {
    {0.428091288f, 0.428091288f, 0.428091288f, 0.428091288f, 0.428091288f, 0.428091288f, 0.428091288f, 0.428091288f,
     0.428091288f, 0.428091288f},
    {-0.173801899f, -0.173053801f, -0.172580898f, -0.172302306f, -0.172121882f, -0.171995878f, -0.171903074f,
     -0.171832144f, -0.171776116f, -0.171730578f},
    {-0.711524308f, -0.71032995f, -0.709628046f, -0.709219873f, -0.708956838f, -0.708773851f, -0.708639264f,
     -0.708536506f, -0.708455384f, -0.70838958f},
    {-1.23353851f, -1.23215449f, -1.23134828f, -1.23088014f, -1.23057866f, -1.23036909f, -1.23021483f, -1.23009729f,
     -1.23000431f, -1.22992897f},
    {-1.74920082f, -1.74775696f, -1.746907f, -1.74641252f, -1.74609375f, -1.74587202f, -1.74570894f, -1.74558449f,
     -1.74548614f, -1.74540639f}};
static const float NADAM_CLIPNORM_F32[2] = {0.99893719f, 1.99893725f};
static const float NADAM_CLIPVALUE_F32[2] = {0.99893719f, 1.99893725f};
static const float LION_SINGLE_F32[4] = {0.5f, 1.5f, 2.5f, 3.5f};
static const float LION_GOLDEN_F32[5][10] = {{0.999000013f, 0.999000013f, 0.999000013f, 0.999000013f, 0.999000013f,
                                              0.999000013f, 0.999000013f, 0.999000013f, 0.999000013f, 0.999000013f},
                                             {0.998000026f, 0.998000026f, 0.998000026f, 0.998000026f, 0.998000026f,
                                              0.998000026f, 0.998000026f, 0.998000026f, 0.998000026f, 0.998000026f},
                                             {0.997000039f, 0.997000039f, 0.997000039f, 0.997000039f, 0.997000039f,
                                              0.997000039f, 0.997000039f, 0.997000039f, 0.997000039f, 0.997000039f},
                                             {0.996000051f, 0.996000051f, 0.996000051f, 0.996000051f, 0.996000051f,
                                              0.996000051f, 0.996000051f, 0.996000051f, 0.996000051f, 0.996000051f},
                                             {0.995000064f, 0.995000064f, 0.995000064f, 0.995000064f, 0.995000064f,
                                              0.995000064f, 0.995000064f, 0.995000064f, 0.995000064f, 0.995000064f}};
static const float LION_CLIPNORM_F32[2] = {0.999000013f, 1.99899995f};
static const float LION_CLIPVALUE_F32[2] = {0.999000013f, 1.99899995f};
static const float LAMB_SINGLE_F32[4] = {-0.369306445f, 0.630693436f, 1.63069355f, 2.63069344f};
static const float LAMB_GOLDEN_F32[5][10] = {{0.999000013f, 0.999000013f, 0.999000013f, 0.999000013f, 0.999000013f,
                                              0.999000013f, 0.999000013f, 0.999000013f, 0.999000013f, 0.999000013f},
                                             {0.997943759f, 0.997983575f, 0.997997463f, 0.998004496f, 0.998008788f,
                                              0.998011649f, 0.998013675f, 0.998015225f, 0.998016417f, 0.998017371f},
                                             {0.996918261f, 0.99697715f, 0.996997714f, 0.997008085f, 0.997014463f,
                                              0.997018695f, 0.997021675f, 0.997024f, 0.997025728f, 0.997027159f},
                                             {0.995903909f, 0.995974839f, 0.995999575f, 0.996012092f, 0.996019781f,
                                              0.996024847f, 0.996028483f, 0.996031225f, 0.99603337f, 0.996035039f},
                                             {0.994895637f, 0.99497503f, 0.995002747f, 0.995016813f, 0.995025396f,
                                              0.995031059f, 0.995035172f, 0.995038211f, 0.995040655f, 0.995042503f}};
static const float LAMB_CLIPNORM_F32[2] = {0.998418868f, 1.99841881f};
static const float LAMB_CLIPVALUE_F32[2] = {0.998418868f, 1.99841881f};
static const float FTRL_SINGLE_F32[4] = {0.221757308f, 1.39542973f, 2.36512136f, 2.88144016f};
static const float FTRL_GOLDEN_F32[5][10] = {
    {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f},
    {-0.00343695539f, -0.00769876922f, -0.0118083796f, -0.0157260709f, -0.0194391944f, -0.0229534023f, -0.0262838993f,
     -0.0294493586f, -0.0324685238f, -0.035358578f},
    {-0.00776014989f, -0.0161775406f, -0.0241768099f, -0.0316951312f, -0.0387415737f, -0.0453587323f, -0.0515987054f,
     -0.0575117506f, -0.0631421879f, -0.0685275346f},
    {-0.0120648369f, -0.0245501418f, -0.0362730511f, -0.0471770875f, -0.0573227182f, -0.0668073148f, -0.0757281184f,
     -0.084169969f, -0.0922032669f, -0.0998852998f},
    {-0.016351426f, -0.0328248218f, -0.0481338128f, -0.0622597821f, -0.0753367394f, -0.0875264406f, -0.0989742354f,
     -0.109799773f, -0.120098747f, -0.129947275f}};
static const float FTRL_CLIPNORM_F32[2] = {0.590838909f, 1.18259072f};
static const float FTRL_CLIPVALUE_F32[2] = {0.697535217f, 1.39602387f};
/* keras.optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=False) */
static const float SGD_MOMENTUM_F32[3][4] = {{0.899999976f, 1.39999998f, 2.29999995f, 3.79999995f},
                                             {0.75999999f, 0.959999919f, 1.47000003f, 3.61999989f},
                                             {0.533999979f, -0.0360001326f, 0.0230000019f, 3.2579999f}};
/* keras.optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=True) */
static const float SGD_NESTEROV_F32[3][4] = {{0.810000002f, 0.859999895f, 1.67000008f, 3.61999989f},
                                             {0.634000003f, 0.563999891f, 0.723000109f, 3.45799994f},
                                             {0.330599993f, -0.932400227f, -1.27929997f, 2.93219995f}};
/* RMSprop(learning_rate=0.1, momentum=0.5), golden protocol */
static const float RMSPROP_MOMENTUM_GOLDEN_F32[5][10] = {
    {0.685341597f, 0.685341597f, 0.685341597f, 0.685341597f, 0.685341597f, 0.685341597f, 0.685341597f, 0.685341597f,
     0.685341597f, 0.685341597f},
    {0.213213682f, 0.212143719f, 0.211944371f, 0.211874515f, 0.211842149f, 0.211824566f, 0.211813986f, 0.211807102f,
     0.211802363f, 0.211799026f},
    {-0.251772583f, -0.253747284f, -0.254114985f, -0.254243821f, -0.254303515f, -0.25433594f, -0.25435546f,
     -0.254368156f, -0.254376888f, -0.254383028f},
    {-0.676099062f, -0.678722024f, -0.679210246f, -0.679381311f, -0.679460585f, -0.67950362f, -0.679529548f,
     -0.679546356f, -0.679557979f, -0.679566145f},
    {-1.05862069f, -1.06169152f, -1.06226289f, -1.06246305f, -1.06255591f, -1.06260633f, -1.06263661f, -1.06265628f,
     -1.06266987f, -1.06267941f}};
/* RMSprop(learning_rate=0.1, momentum=0.5, centered=True), golden protocol */
static const float RMSPROP_CENTERED_MOMENTUM_GOLDEN_F32[5][10] = {
    {0.668503165f, 0.668503165f, 0.668503165f, 0.668503165f, 0.668503165f, 0.668503165f, 0.668503165f, 0.668503165f,
     0.668503165f, 0.668503165f},
    {0.167608559f, 0.168131053f, 0.16847688f, 0.168681562f, 0.16881454f, 0.168907344f, 0.168975651f, 0.169028044f,
     0.169069469f, 0.169102967f},
    {-0.33969152f, -0.338087142f, -0.33722651f, -0.336735904f, -0.336422324f, -0.336205423f, -0.336046636f,
     -0.335925341f, -0.335829675f, -0.335752547f},
    {-0.820208251f, -0.817214608f, -0.815772116f, -0.814968646f, -0.814460337f, -0.814110816f, -0.813855886f,
     -0.813661635f, -0.813508809f, -0.813385665f},
    {-1.27282763f, -1.2682879f, -1.26624024f, -1.26511765f, -1.26441264f, -1.26392984f, -1.26357865f, -1.26331162f,
     -1.26310182f, -1.26293278f}};
/* Adam(), golden protocol */
static const float ADAM_PLAIN_GOLDEN_F32[5][10] = {
    {0.999000311f, 0.999000311f, 0.999000311f, 0.999000311f, 0.999000311f, 0.999000311f, 0.999000311f, 0.999000311f,
     0.999000311f, 0.999000311f},
    {0.998193264f, 0.998223662f, 0.998234272f, 0.998239696f, 0.998242915f, 0.99824512f, 0.99824667f, 0.998247862f,
     0.998248816f, 0.998249531f},
    {0.997300446f, 0.997347474f, 0.997363865f, 0.99737221f, 0.997377217f, 0.997380614f, 0.997383058f, 0.997384846f,
     0.997386336f, 0.997387409f},
    {0.996367872f, 0.996425927f, 0.996446192f, 0.996456504f, 0.996462703f, 0.996466875f, 0.996469915f, 0.99647212f,
     0.996473968f, 0.996475279f},
    {0.995412529f, 0.99547863f, 0.995501697f, 0.995513439f, 0.995520532f, 0.995525241f, 0.995528698f, 0.995531261f,
     0.995533347f, 0.995534837f}};

static void run_golden_rows(cuoptimBackend_t backend, const cuoptimConfig_t *config, const float want[5][10],
                            double rtol, double atol) {
  test_require_backend(backend);
  test_rig_t r;
  test_rig_init(&r, config, backend);
  test_rig_add(&r, "x", ONES10, 10);
  rig_apply1(&r, FIRST_GRADS);
  for (int i = 0; i < 5; i++) {
    float got[10];
    test_rig_get(&r, 0, got);
    char what[128];
    snprintf(what, sizeof what, "%s golden row %d (%s)", cuoptimOptimizerName(config->kind), i, test_backend_name(backend));
    expect_close(got, want[i], 10, rtol, atol, what);
    rig_apply1(&r, ARANGE_GRADS);
  }
  cr_assert_eq(test_iterations(r.opt), 6);
  test_rig_destroy(&r);
}

static cuoptimConfig_t weight_decay_config(cuoptimOptimizerKind_t kind) {
  cuoptimConfig_t c = test_config_lr(kind, 1.0);
  c.weight_decay = 0.004;
  return c;
}

static void run_weight_decay(cuoptimBackend_t backend, cuoptimOptimizerKind_t kind) {
  test_require_backend(backend);
  static const float two = 2.0f, zero = 0.0f;
  float *var1 = test_mem_from(backend, &two, 1);
  float *var2 = test_mem_from(backend, &two, 1);
  float *var3 = test_mem_from(backend, &two, 1);
  cuoptimConfig_t c = weight_decay_config(kind);
  const float *grads[2] = {&zero, &zero};

  /* optimizer_1.apply_gradients(zip([grads], [var1])) */
  test_rig_t r1;
  test_rig_init(&r1, &c, backend);
  test_rig_add_external(&r1, "variable", var1, 1);
  rig_apply(&r1, grads);

  /* optimizer_2.exclude_from_weight_decay(var_names=["exclude"]) before the variables exist. */
  test_rig_t r2;
  test_rig_init(&r2, &c, backend);
  OK(cuoptimExcludeFromWeightDecay(r2.opt, "exclude"));
  test_rig_add_external(&r2, "variable", var1, 1);
  test_rig_add_external(&r2, "exclude", var2, 1);
  rig_apply(&r2, grads);

  /* optimizer_3.exclude_from_weight_decay(var_list=[var3]): by its exact name, after adding it. */
  test_rig_t r3;
  test_rig_init(&r3, &c, backend);
  test_rig_add_external(&r3, "variable", var1, 1);
  test_rig_add_external(&r3, "variable_3", var3, 1);
  OK(cuoptimExcludeFromWeightDecay(r3.opt, "^variable_3$"));
  rig_apply(&r3, grads);

  float v1, v2, v3;
  test_rig_get(&r3, 0, &v1);
  test_rig_get(&r2, 1, &v2);
  test_rig_get(&r3, 1, &v3);
  /* assertAlmostEqual(..., decimal=6): |x - want| < 1.5e-6 */
  cr_assert(fabs(v1 - 1.9760959) < 1.5e-6, "%s (%s): var1 = %.9g, Keras: 1.9760959", cuoptimOptimizerName(kind),
            test_backend_name(backend), (double)v1);
  cr_assert(fabs(v2 - 2.0) < 1.5e-6, "%s (%s): var2 (excluded by name) = %.9g, Keras: 2.0", cuoptimOptimizerName(kind),
            test_backend_name(backend), (double)v2);
  cr_assert(fabs(v3 - 2.0) < 1.5e-6, "%s (%s): var3 (excluded) = %.9g, Keras: 2.0", cuoptimOptimizerName(kind),
            test_backend_name(backend), (double)v3);
  test_rig_destroy(&r1);
  test_rig_destroy(&r2);
  test_rig_destroy(&r3);
  test_mem_free(backend, var1);
  test_mem_free(backend, var2);
  test_mem_free(backend, var3);
}

static void run_clip(cuoptimBackend_t backend, cuoptimOptimizerKind_t kind, int clip_value, const float want[2]) {
  test_require_backend(backend);
  static const float w0[2] = {1.0f, 2.0f};
  static const float g[2] = {100.0f, 100.0f};
  cuoptimConfig_t c = test_config(kind);
  if (clip_value)
    c.clipvalue = 1.0;
  else
    c.clipnorm = 1.0;
  test_rig_t r;
  test_rig_init(&r, &c, backend);
  test_rig_add(&r, "variable", w0, 2);
  rig_apply1(&r, g);
  float got[2];
  test_rig_get(&r, 0, got);
  char what[128];
  snprintf(what, sizeof what, "%s(%s=1) (%s)", cuoptimOptimizerName(kind), clip_value ? "clipvalue" : "clipnorm",
           test_backend_name(backend));
  expect_close(got, want, 2, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, what);
  test_rig_destroy(&r);
}

/* =================================================================================================
 * Per optimizer: keras/src/optimizers/<name>_test.py
 * ================================================================================================= */

/* ---- SGD (sgd_test.py) ---------------------------------------------------------------------------- */

static const float SGD_SINGLE[4] = {0.5f, -1.0f, -0.5f, 3.0f};
static const float SGD_GOLDEN[5][10] = {
    {0.9999f, 0.9999f, 0.9999f, 0.9999f, 0.9999f, 0.9999f, 0.9999f, 0.9999f, 0.9999f, 0.9999f},
    {0.9989f, 0.9979f, 0.9969f, 0.9959f, 0.9949f, 0.9939f, 0.9929f, 0.9919f, 0.9909f, 0.9899f},
    {0.9979f, 0.9959f, 0.9939f, 0.9919f, 0.9899f, 0.9879f, 0.9859f, 0.9839f, 0.9819f, 0.9799f},
    {0.9969f, 0.9939f, 0.9909f, 0.9879f, 0.9849f, 0.9819f, 0.9789f, 0.9759f, 0.9729f, 0.9699f},
    {0.9959f, 0.9919f, 0.9879f, 0.9839f, 0.9799f, 0.9759f, 0.9719f, 0.9679f, 0.9639f, 0.9599f}};

static cuoptimConfig_t sgd_golden_config(void) {
  cuoptimConfig_t c = test_config(CUOPTIM_SGD); /* SGD(nesterov=True) */
  c.nesterov = 1;
  return c;
}

static void sgd_single_step(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 0.5);
  run_single_step(b, &c, SGD_SINGLE, KERAS_SINGLE_STEP_TOL, KERAS_SINGLE_STEP_TOL);
}
/* test_single_step also checks optimizer.variables: [iteration = 1, learning_rate = 0.5]. */
static void sgd_single_step_variables(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 0.5);
  test_rig_t r;
  test_rig_init(&r, &c, b);
  static const float w0[4] = {1.0f, 2.0f, 3.0f, 4.0f};
  static const float g[4] = {1.0f, 6.0f, 7.0f, 2.0f};
  test_rig_add(&r, "variable", w0, 4);
  int count = -1;
  OK(cuoptimGetWeightCount(r.opt, &count));
  cr_assert_eq(count, 2, "len(optimizer.variables) is 2 in Keras, cuoptim lists %d", count);
  rig_apply1(&r, g);
  OK(cuoptimGetWeightCount(r.opt, &count));
  cr_assert_eq(count, 2);
  cuoptimWeightInfo_t info;
  OK(cuoptimGetWeightInfo(r.opt, 0, &info));
  cr_assert_str_eq(info.name, "iteration");
  OK(cuoptimGetWeightInfo(r.opt, 1, &info));
  cr_assert_str_eq(info.name, "learning_rate");
  double v = -1;
  OK(cuoptimGetWeights(r.opt, 0, &v, 1));
  cr_assert_eq(v, 1.0);
  OK(cuoptimGetWeights(r.opt, 1, &v, 1));
  cr_assert_eq(v, 0.5);
  test_rig_destroy(&r);
}
static void sgd_single_step_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 0.5);
  run_single_step(b, &c, SGD_SINGLE_F32, F32_RTOL, F32_ATOL);
}
static void sgd_golden_rows(cuoptimBackend_t b) {
  cuoptimConfig_t c = sgd_golden_config();
  run_golden_rows(b, &c, SGD_GOLDEN, KERAS_GOLDEN_TOL, KERAS_GOLDEN_TOL);
}
static void sgd_golden_rows_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = sgd_golden_config();
  run_golden_rows(b, &c, SGD_GOLDEN_F32, F32_RTOL, F32_ATOL);
}
static void sgd_weight_decay(cuoptimBackend_t b) { run_weight_decay(b, CUOPTIM_SGD); }
static void sgd_clip_norm(cuoptimBackend_t b) { run_clip(b, CUOPTIM_SGD, 0, SGD_CLIPNORM_F32); }
static void sgd_clip_value(cuoptimBackend_t b) { run_clip(b, CUOPTIM_SGD, 1, SGD_CLIPVALUE_F32); }

BOTH_BACKENDS(sgd_single_step_matches_keras, sgd_single_step)
BOTH_BACKENDS(sgd_single_step_variables_match_keras, sgd_single_step_variables)
BOTH_BACKENDS(sgd_single_step_matches_keras_float32, sgd_single_step_f32)
BOTH_BACKENDS(sgd_golden_rows_match_keras, sgd_golden_rows)
BOTH_BACKENDS(sgd_golden_rows_match_keras_float32, sgd_golden_rows_f32)
BOTH_BACKENDS(sgd_weight_decay_matches_keras, sgd_weight_decay)
BOTH_BACKENDS(sgd_clip_norm_matches_keras, sgd_clip_norm)
BOTH_BACKENDS(sgd_clip_value_matches_keras, sgd_clip_value)

/* Momentum and Nesterov momentum (beyond Keras's golden test, which uses momentum 0): values of
 * keras.optimizers.SGD(learning_rate=0.1, momentum=0.9[, nesterov=True]) applied 3 times to
 * w = [1, 2, 3, 4] with g = [1, 6, 7, 2], then [0.5, -1, 2, 0], then [1, 6, 7, 2]. */
static const float SGD_MOMENTUM_GRADS[3][4] = {{1, 6, 7, 2}, {0.5f, -1, 2, 0}, {1, 6, 7, 2}};
static void run_sgd_momentum(cuoptimBackend_t b, int nesterov, const float want[3][4]) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 0.1);
  c.momentum = 0.9;
  c.nesterov = nesterov;
  test_rig_t r;
  test_rig_init(&r, &c, b);
  static const float w0[4] = {1.0f, 2.0f, 3.0f, 4.0f};
  test_rig_add(&r, "variable", w0, 4);
  for (int s = 0; s < 3; s++) {
    rig_apply1(&r, SGD_MOMENTUM_GRADS[s]);
    float got[4];
    test_rig_get(&r, 0, got);
    char what[96];
    snprintf(what, sizeof what, "SGD momentum%s step %d (%s)", nesterov ? " nesterov" : "", s + 1, test_backend_name(b));
    expect_close(got, want[s], 4, F32_RTOL, F32_ATOL, what);
  }
  test_rig_destroy(&r);
}
static void sgd_momentum(cuoptimBackend_t b) { run_sgd_momentum(b, 0, SGD_MOMENTUM_F32); }
static void sgd_nesterov(cuoptimBackend_t b) { run_sgd_momentum(b, 1, SGD_NESTEROV_F32); }
BOTH_BACKENDS(sgd_momentum_matches_keras_float32, sgd_momentum)
BOTH_BACKENDS(sgd_nesterov_momentum_matches_keras_float32, sgd_nesterov)

/* ---- RMSprop (rmsprop_test.py) -------------------------------------------------------------------- */

static const float RMSPROP_SINGLE[4] = {-0.5811f, 0.4189f, 1.4189f, 2.4189f};
static const float RMSPROP_GOLDEN[5][10] = {
    {0.9967f, 0.9967f, 0.9967f, 0.9967f, 0.9967f, 0.9967f, 0.9967f, 0.9967f, 0.9967f, 0.9967f},
    {0.9933f, 0.9933f, 0.9933f, 0.9933f, 0.9933f, 0.9933f, 0.9933f, 0.9933f, 0.9933f, 0.9933f},
    {0.9908f, 0.9908f, 0.9908f, 0.9908f, 0.9908f, 0.9908f, 0.9908f, 0.9908f, 0.9908f, 0.9908f},
    {0.9885f, 0.9885f, 0.9885f, 0.9885f, 0.9885f, 0.9885f, 0.9885f, 0.9885f, 0.9885f, 0.9885f},
    {0.9864f, 0.9864f, 0.9864f, 0.9864f, 0.9864f, 0.9864f, 0.9864f, 0.9864f, 0.9864f, 0.9864f}};

static cuoptimConfig_t rmsprop_golden_config(void) {
  cuoptimConfig_t c = test_config(CUOPTIM_RMSPROP); /* RMSprop(centered=True) */
  c.centered = 1;
  return c;
}
static void rmsprop_single_step(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_RMSPROP, 0.5);
  run_single_step(b, &c, RMSPROP_SINGLE, KERAS_SINGLE_STEP_TOL, KERAS_SINGLE_STEP_TOL);
}
static void rmsprop_single_step_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_RMSPROP, 0.5);
  run_single_step(b, &c, RMSPROP_SINGLE_F32, F32_RTOL, F32_ATOL);
}
static void rmsprop_golden_rows(cuoptimBackend_t b) {
  cuoptimConfig_t c = rmsprop_golden_config();
  run_golden_rows(b, &c, RMSPROP_GOLDEN, KERAS_GOLDEN_TOL, KERAS_GOLDEN_TOL);
}
static void rmsprop_golden_rows_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = rmsprop_golden_config();
  run_golden_rows(b, &c, RMSPROP_GOLDEN_F32, F32_RTOL, F32_ATOL);
}
static void rmsprop_weight_decay(cuoptimBackend_t b) { run_weight_decay(b, CUOPTIM_RMSPROP); }
static void rmsprop_clip_norm(cuoptimBackend_t b) { run_clip(b, CUOPTIM_RMSPROP, 0, RMSPROP_CLIPNORM_F32); }
static void rmsprop_clip_value(cuoptimBackend_t b) { run_clip(b, CUOPTIM_RMSPROP, 1, RMSPROP_CLIPVALUE_F32); }

BOTH_BACKENDS(rmsprop_single_step_matches_keras, rmsprop_single_step)
BOTH_BACKENDS(rmsprop_single_step_matches_keras_float32, rmsprop_single_step_f32)
BOTH_BACKENDS(rmsprop_golden_rows_match_keras, rmsprop_golden_rows)
BOTH_BACKENDS(rmsprop_golden_rows_match_keras_float32, rmsprop_golden_rows_f32)
BOTH_BACKENDS(rmsprop_weight_decay_matches_keras, rmsprop_weight_decay)
BOTH_BACKENDS(rmsprop_clip_norm_matches_keras, rmsprop_clip_norm)
BOTH_BACKENDS(rmsprop_clip_value_matches_keras, rmsprop_clip_value)

/* RMSprop with momentum (the momentum slot; not in Keras's tests): real Keras values of
 * RMSprop(learning_rate=0.1, momentum=0.5[, centered=True]) on the golden protocol. */
static void rmsprop_momentum_rows(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_RMSPROP, 0.1);
  c.momentum = 0.5;
  run_golden_rows(b, &c, RMSPROP_MOMENTUM_GOLDEN_F32, F32_RTOL, F32_ATOL);
}
static void rmsprop_centered_momentum_rows(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_RMSPROP, 0.1);
  c.momentum = 0.5;
  c.centered = 1;
  run_golden_rows(b, &c, RMSPROP_CENTERED_MOMENTUM_GOLDEN_F32, F32_RTOL, F32_ATOL);
}
BOTH_BACKENDS(rmsprop_momentum_golden_rows_match_keras_float32, rmsprop_momentum_rows)
BOTH_BACKENDS(rmsprop_centered_momentum_golden_rows_match_keras_float32, rmsprop_centered_momentum_rows)

/* ---- Adagrad (adagrad_test.py) -------------------------------------------------------------------- */

static const float ADAGRAD_SINGLE[4] = {0.5233f, 1.5007f, 2.5005f, 3.5061f};
static const float ADAGRAD_GOLDEN[5][10] = {
    {0.9963f, 0.9963f, 0.9963f, 0.9963f, 0.9963f, 0.9963f, 0.9963f, 0.9963f, 0.9963f, 0.9963f},
    {0.9604f, 0.9278f, 0.9003f, 0.8784f, 0.8615f, 0.8487f, 0.8388f, 0.8313f, 0.8255f, 0.8209f},
    {0.9251f, 0.8629f, 0.8137f, 0.7768f, 0.7497f, 0.7298f, 0.7151f, 0.704f, 0.6956f, 0.6891f},
    {0.8903f, 0.8012f, 0.7342f, 0.6862f, 0.6521f, 0.6277f, 0.6099f, 0.5967f, 0.5867f, 0.579f},
    {0.856f, 0.7422f, 0.6604f, 0.6037f, 0.5644f, 0.5367f, 0.5168f, 0.5021f, 0.491f, 0.4825f}};

static cuoptimConfig_t adagrad_golden_config(void) {
  /* Adagrad(learning_rate=0.2, initial_accumulator_value=0.3, epsilon=1e-6) */
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAGRAD, 0.2);
  c.initial_accumulator_value = 0.3;
  c.epsilon = 1e-6;
  return c;
}
static void adagrad_single_step(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAGRAD, 0.5);
  run_single_step(b, &c, ADAGRAD_SINGLE, KERAS_SINGLE_STEP_TOL, KERAS_SINGLE_STEP_TOL);
}
static void adagrad_single_step_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAGRAD, 0.5);
  run_single_step(b, &c, ADAGRAD_SINGLE_F32, F32_RTOL, F32_ATOL);
}
static void adagrad_golden_rows(cuoptimBackend_t b) {
  cuoptimConfig_t c = adagrad_golden_config();
  run_golden_rows(b, &c, ADAGRAD_GOLDEN, KERAS_GOLDEN_TOL, KERAS_GOLDEN_TOL);
}
static void adagrad_golden_rows_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = adagrad_golden_config();
  run_golden_rows(b, &c, ADAGRAD_GOLDEN_F32, F32_RTOL, F32_ATOL);
}
static void adagrad_weight_decay(cuoptimBackend_t b) { run_weight_decay(b, CUOPTIM_ADAGRAD); }
static void adagrad_clip_norm(cuoptimBackend_t b) { run_clip(b, CUOPTIM_ADAGRAD, 0, ADAGRAD_CLIPNORM_F32); }
static void adagrad_clip_value(cuoptimBackend_t b) { run_clip(b, CUOPTIM_ADAGRAD, 1, ADAGRAD_CLIPVALUE_F32); }

BOTH_BACKENDS(adagrad_single_step_matches_keras, adagrad_single_step)
BOTH_BACKENDS(adagrad_single_step_matches_keras_float32, adagrad_single_step_f32)
BOTH_BACKENDS(adagrad_golden_rows_match_keras, adagrad_golden_rows)
BOTH_BACKENDS(adagrad_golden_rows_match_keras_float32, adagrad_golden_rows_f32)
BOTH_BACKENDS(adagrad_weight_decay_matches_keras, adagrad_weight_decay)
BOTH_BACKENDS(adagrad_clip_norm_matches_keras, adagrad_clip_norm)
BOTH_BACKENDS(adagrad_clip_value_matches_keras, adagrad_clip_value)

/* ---- Adadelta (adadelta_test.py) ------------------------------------------------------------------ */

static const float ADADELTA_SINGLE[4] = {0.9993f, 1.9993f, 2.9993f, 3.9993f};
static const float ADADELTA_GOLDEN[5][10] = {
    {0.9978f, 0.9978f, 0.9978f, 0.9978f, 0.9978f, 0.9978f, 0.9978f, 0.9978f, 0.9978f, 0.9978f},
    {0.9947f, 0.9947f, 0.9947f, 0.9947f, 0.9947f, 0.9947f, 0.9947f, 0.9947f, 0.9947f, 0.9947f},
    {0.9915f, 0.9915f, 0.9915f, 0.9915f, 0.9915f, 0.9915f, 0.9915f, 0.9915f, 0.9915f, 0.9915f},
    {0.9882f, 0.9882f, 0.9882f, 0.9882f, 0.9882f, 0.9882f, 0.9882f, 0.9882f, 0.9882f, 0.9882f},
    {0.9849f, 0.9849f, 0.9849f, 0.9849f, 0.9849f, 0.9849f, 0.9849f, 0.9849f, 0.9849f, 0.9849f}};

static cuoptimConfig_t adadelta_golden_config(void) {
  /* Adadelta(learning_rate=1.0, rho=0.8, epsilon=1e-6) */
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADADELTA, 1.0);
  c.rho = 0.8;
  c.epsilon = 1e-6;
  return c;
}
static void adadelta_single_step(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADADELTA, 0.5);
  run_single_step(b, &c, ADADELTA_SINGLE, KERAS_SINGLE_STEP_TOL, KERAS_SINGLE_STEP_TOL);
}
static void adadelta_single_step_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADADELTA, 0.5);
  run_single_step(b, &c, ADADELTA_SINGLE_F32, F32_RTOL, F32_ATOL);
}
static void adadelta_golden_rows(cuoptimBackend_t b) {
  cuoptimConfig_t c = adadelta_golden_config();
  run_golden_rows(b, &c, ADADELTA_GOLDEN, KERAS_GOLDEN_TOL, KERAS_GOLDEN_TOL);
}
static void adadelta_golden_rows_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = adadelta_golden_config();
  run_golden_rows(b, &c, ADADELTA_GOLDEN_F32, F32_RTOL, F32_ATOL);
}
static void adadelta_weight_decay(cuoptimBackend_t b) { run_weight_decay(b, CUOPTIM_ADADELTA); }
static void adadelta_clip_norm(cuoptimBackend_t b) { run_clip(b, CUOPTIM_ADADELTA, 0, ADADELTA_CLIPNORM_F32); }
static void adadelta_clip_value(cuoptimBackend_t b) { run_clip(b, CUOPTIM_ADADELTA, 1, ADADELTA_CLIPVALUE_F32); }

BOTH_BACKENDS(adadelta_single_step_matches_keras, adadelta_single_step)
BOTH_BACKENDS(adadelta_single_step_matches_keras_float32, adadelta_single_step_f32)
BOTH_BACKENDS(adadelta_golden_rows_match_keras, adadelta_golden_rows)
BOTH_BACKENDS(adadelta_golden_rows_match_keras_float32, adadelta_golden_rows_f32)
BOTH_BACKENDS(adadelta_weight_decay_matches_keras, adadelta_weight_decay)
BOTH_BACKENDS(adadelta_clip_norm_matches_keras, adadelta_clip_norm)
BOTH_BACKENDS(adadelta_clip_value_matches_keras, adadelta_clip_value)

/* ---- Adam (adam_test.py) -------------------------------------------------------------------------- */

static const float ADAM_SINGLE[4] = {0.5f, 1.5f, 2.5f, 3.5f};
static const float ADAM_GOLDEN[5][10] = {
    {0.999f, 0.999f, 0.999f, 0.999f, 0.999f, 0.999f, 0.999f, 0.999f, 0.999f, 0.999f},
    {0.9982f, 0.9982f, 0.9982f, 0.9982f, 0.9982f, 0.9982f, 0.9982f, 0.9982f, 0.9982f, 0.9982f},
    {0.9974f, 0.9974f, 0.9974f, 0.9974f, 0.9974f, 0.9974f, 0.9974f, 0.9974f, 0.9974f, 0.9974f},
    {0.9965f, 0.9965f, 0.9965f, 0.9965f, 0.9965f, 0.9965f, 0.9965f, 0.9965f, 0.9965f, 0.9965f},
    {0.9955f, 0.9955f, 0.9955f, 0.9955f, 0.9955f, 0.9955f, 0.9955f, 0.9955f, 0.9955f, 0.9955f}};

static cuoptimConfig_t adam_golden_config(void) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM); /* Adam(amsgrad=True) */
  c.amsgrad = 1;
  return c;
}
static void adam_single_step(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAM, 0.5);
  run_single_step(b, &c, ADAM_SINGLE, KERAS_SINGLE_STEP_TOL, KERAS_SINGLE_STEP_TOL);
}
static void adam_single_step_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAM, 0.5);
  run_single_step(b, &c, ADAM_SINGLE_F32, F32_RTOL, F32_ATOL);
}
static void adam_golden_rows(cuoptimBackend_t b) {
  cuoptimConfig_t c = adam_golden_config();
  run_golden_rows(b, &c, ADAM_GOLDEN, KERAS_GOLDEN_TOL, KERAS_GOLDEN_TOL);
}
static void adam_golden_rows_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = adam_golden_config();
  run_golden_rows(b, &c, ADAM_GOLDEN_F32, F32_RTOL, F32_ATOL);
}
/* Adam without amsgrad on the golden protocol (real Keras: Adam()). */
static void adam_plain_golden_rows_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  run_golden_rows(b, &c, ADAM_PLAIN_GOLDEN_F32, F32_RTOL, F32_ATOL);
}
static void adam_weight_decay(cuoptimBackend_t b) { run_weight_decay(b, CUOPTIM_ADAM); }
static void adam_clip_norm(cuoptimBackend_t b) { run_clip(b, CUOPTIM_ADAM, 0, ADAM_CLIPNORM_F32); }
static void adam_clip_value(cuoptimBackend_t b) { run_clip(b, CUOPTIM_ADAM, 1, ADAM_CLIPVALUE_F32); }

/* test_ema: Adam(learning_rate=1.0, use_ema=True, ema_momentum=0.9), var = [1, 2], g = [0.1, 0.2].
 * Real Keras values: v1 after the first step (the average equals it), v2 after the second, the
 * average 0.9 * v1 + 0.1 * v2, finalize_variable_values copies it into the variable. */
static const float ADAM_EMA_V1[2] = {3.82661819e-05f, 1.00002253f};
static const float ADAM_EMA_V2[2] = {-0.999929249f, 4.37498093e-05f};
static const float ADAM_EMA_A2[2] = {-0.0999585092f, 0.900024593f};
static const float ADAM_EMA_G[2] = {0.1f, 0.2f};

static void adam_ema(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAM, 1.0);
  c.use_ema = 1;
  c.ema_momentum = 0.9;
  test_rig_t r;
  test_rig_init(&r, &c, b);
  static const float w0[2] = {1.0f, 2.0f};
  test_rig_add(&r, "var", w0, 2);
  float v[2], a[2];
  rig_apply1(&r, ADAM_EMA_G);
  test_rig_get(&r, 0, v);
  rig_weight(&r, "var_average", a, 2);
  expect_close(v, ADAM_EMA_V1, 2, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, "Adam EMA: variable after step 1");
  expect_close(a, v, 2, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, "Adam EMA: average after step 1 == variable");
  float v1[2] = {v[0], v[1]};
  rig_apply1(&r, ADAM_EMA_G);
  test_rig_get(&r, 0, v);
  expect_close(v, ADAM_EMA_V2, 2, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, "Adam EMA: variable after step 2");
  float expected[2] = {0.9f * v1[0] + 0.1f * v[0], 0.9f * v1[1] + 0.1f * v[1]};
  rig_weight(&r, "var_average", a, 2);
  expect_close(a, expected, 2, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, "Adam EMA: average == 0.9 v1 + 0.1 v2");
  expect_close(a, ADAM_EMA_A2, 2, F32_RTOL, F32_ATOL, "Adam EMA: average (real Keras float32)");
  OK(cuoptimFinalizeVariableValues(r.opt, NULL));
  test_rig_get(&r, 0, v);
  expect_close(v, expected, 2, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, "Adam EMA: finalize_variable_values");
  test_rig_destroy(&r);
}

/* The model.fit part of test_ema: Dense(10, kernel_initializer="ones", use_bias=False) on
 * x = ones((1, 5)), y = zeros((1, 10)), loss "mse", Adam(use_ema=True, ema_momentum=0.9), one batch:
 * fit() finalizes, so the kernel equals its average. Ported with cuoptimMinimize: the callback is
 * the forward/backward pass, dL/dk_ij = 2 * (sum_i x_i k_ij - y_j) / 10 * x_i. */
typedef struct {
  test_rig_t *rig;
  int rows, cols; /* kernel shape */
  const float *x; /* one sample, `rows` inputs */
  const float *y; /* `cols` targets */
  cuoptimGradient_t grads[1];
  int calls;
} dense_fit_t;

static cuoptimStatus_t dense_mse_gradient(void *user, cuoptimOptimizer_t opt, cuoptimStream_t stream, int *n,
                                          const cuoptimGradient_t **grads) {
  dense_fit_t *fit = user;
  test_rig_t *r = fit->rig;
  cr_assert_eq(opt, r->opt, "cuoptimMinimize passes the optimizer to the callback");
  float kernel[64], grad[64];
  cr_assert_leq((size_t)fit->rows * fit->cols, 64);
  test_rig_get(r, 0, kernel);
  for (int j = 0; j < fit->cols; j++) {
    float pred = 0.0f;
    for (int i = 0; i < fit->rows; i++) pred += fit->x[i] * kernel[i * fit->cols + j];
    float d = 2.0f * (pred - fit->y[j]) / (float)fit->cols;
    for (int i = 0; i < fit->rows; i++) grad[i * fit->cols + j] = d * fit->x[i];
  }
  test_mem_upload(r->backend, r->grad[0], grad, (size_t)fit->rows * fit->cols * sizeof(float));
  fit->grads[0].variable = 0;
  fit->grads[0].grad = r->grad[0];
  fit->grads[0].dtype = CUOPTIM_FLOAT32;
  *n = 1;
  *grads = fit->grads;
  fit->calls++;
  return CUOPTIM_STATUS_SUCCESS;
}

static void adam_ema_fit(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  c.use_ema = 1;
  c.ema_momentum = 0.9;
  test_rig_t r;
  test_rig_init(&r, &c, b);
  float kernel[50], x[5], y[10];
  for (int i = 0; i < 50; i++) kernel[i] = 1.0f;
  for (int i = 0; i < 5; i++) x[i] = 1.0f;
  for (int i = 0; i < 10; i++) y[i] = 0.0f;
  test_rig_add(&r, "kernel", kernel, 50);
  dense_fit_t fit = {.rig = &r, .rows = 5, .cols = 10, .x = x, .y = y};
  OK(cuoptimMinimize(r.opt, dense_mse_gradient, &fit, NULL));
  cr_assert_eq(fit.calls, 1);
  OK(cuoptimFinalizeVariableValues(r.opt, NULL));
  float w[50], a[50];
  test_rig_get(&r, 0, w);
  rig_weight(&r, "kernel_average", a, 50);
  expect_close(w, a, 50, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, "Adam EMA fit: model weights == EMA weights");
  /* One Adam step of lr 0.001 on gradient 1: every weight is 1 - 0.001 (within epsilon-hat). */
  for (int i = 0; i < 50; i++) cr_assert(fabsf(w[i] - 0.999f) < 1e-5f, "kernel[%d] = %.9g", i, (double)w[i]);
  test_rig_destroy(&r);
}

/* test_ema_overwrite_frequency: Adam(learning_rate=1.0, use_ema=True, ema_momentum=0.9,
 * ema_overwrite_frequency=2) against Adam(learning_rate=1.0) without EMA. Real Keras values of the
 * EMA optimizer's variable and average after steps 1..4 are checked too. */
static const float ADAM_EMA_OW_VAR[4][2] = {{3.82661819e-05f, 1.00002253f},
                                            {-0.0999585092f, 0.900024593f},
                                            {-1.0999366f, -0.0999626517f},
                                            {-0.389951825f, 0.610028684f}};
static const float ADAM_EMA_OW_AVG[4][2] = {{3.82661819e-05f, 1.00002253f},
                                            {-0.0999585092f, 0.900024593f},
                                            {-0.199956343f, 0.800025821f},
                                            {-0.389951825f, 0.610028684f}};

static void adam_ema_overwrite_frequency(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAM, 1.0);
  c.use_ema = 1;
  c.ema_momentum = 0.9;
  c.ema_overwrite_frequency = 2;
  cuoptimConfig_t c_no_ema = test_config_lr(CUOPTIM_ADAM, 1.0);
  static const float w0[2] = {1.0f, 2.0f};
  test_rig_t r, q;
  test_rig_init(&r, &c, b);
  test_rig_add(&r, "var", w0, 2);
  test_rig_init(&q, &c_no_ema, b);
  test_rig_add(&q, "var", w0, 2);
  float v[2], a[2], v1[2], v2[2];
  /* First step: not overwritten yet. */
  rig_apply1(&r, ADAM_EMA_G);
  rig_apply1(&q, ADAM_EMA_G);
  test_rig_get(&q, 0, v1);
  test_rig_get(&r, 0, v);
  expect_close(v, v1, 2, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, "EMA overwrite: step 1 variable == no-EMA variable");
  /* Second step: (1 + 1) % 2 == 0, overwritten by the average. */
  rig_apply1(&r, ADAM_EMA_G);
  rig_apply1(&q, ADAM_EMA_G);
  test_rig_get(&q, 0, v2);
  float expected[2] = {0.9f * v1[0] + 0.1f * v2[0], 0.9f * v1[1] + 0.1f * v2[1]};
  test_rig_get(&r, 0, v);
  rig_weight(&r, "var_average", a, 2);
  expect_close(v, expected, 2, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, "EMA overwrite: step 2 variable == average");
  expect_close(a, expected, 2, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, "EMA overwrite: step 2 average");
  test_rig_destroy(&r);
  test_rig_destroy(&q);

  /* Steps 1..4 against real Keras. */
  test_rig_init(&r, &c, b);
  test_rig_add(&r, "var", w0, 2);
  for (int s = 0; s < 4; s++) {
    rig_apply1(&r, ADAM_EMA_G);
    test_rig_get(&r, 0, v);
    rig_weight(&r, "var_average", a, 2);
    char what[96];
    snprintf(what, sizeof what, "EMA overwrite: variable after step %d", s + 1);
    expect_close(v, ADAM_EMA_OW_VAR[s], 2, F32_RTOL, F32_ATOL, what);
    snprintf(what, sizeof what, "EMA overwrite: average after step %d", s + 1);
    expect_close(a, ADAM_EMA_OW_AVG[s], 2, F32_RTOL, F32_ATOL, what);
  }
  test_rig_destroy(&r);
}

BOTH_BACKENDS(adam_single_step_matches_keras, adam_single_step)
BOTH_BACKENDS(adam_single_step_matches_keras_float32, adam_single_step_f32)
BOTH_BACKENDS(adam_golden_rows_match_keras, adam_golden_rows)
BOTH_BACKENDS(adam_golden_rows_match_keras_float32, adam_golden_rows_f32)
BOTH_BACKENDS(adam_without_amsgrad_golden_rows_match_keras_float32, adam_plain_golden_rows_f32)
BOTH_BACKENDS(adam_weight_decay_matches_keras, adam_weight_decay)
BOTH_BACKENDS(adam_clip_norm_matches_keras, adam_clip_norm)
BOTH_BACKENDS(adam_clip_value_matches_keras, adam_clip_value)
BOTH_BACKENDS(adam_ema_matches_keras, adam_ema)
BOTH_BACKENDS(adam_ema_with_fit_matches_keras, adam_ema_fit)
BOTH_BACKENDS(adam_ema_overwrite_frequency_matches_keras, adam_ema_overwrite_frequency)

/* ---- AdamW (adamw_test.py) ------------------------------------------------------------------------ */

static const float ADAMW_SINGLE[4] = {0.4980f, 1.4960f, 2.494f, 3.492f};
static const float ADAMW_GOLDEN[5][10] = {
    {0.4998f, 0.4998f, 0.4998f, 0.4998f, 0.4998f, 0.4998f, 0.4998f, 0.4998f, 0.4998f, 0.4998f},
    {0.2486f, 0.2475f, 0.2463f, 0.2451f, 0.244f, 0.2428f, 0.2417f, 0.2405f, 0.2394f, 0.2382f},
    {0.1223f, 0.1198f, 0.1174f, 0.1149f, 0.1124f, 0.11f, 0.1075f, 0.1051f, 0.1027f, 0.1003f},
    {0.0586f, 0.0549f, 0.0512f, 0.0475f, 0.0439f, 0.0402f, 0.0366f, 0.033f, 0.0294f, 0.0258f},
    {0.0263f, 0.0215f, 0.0167f, 0.012f, 0.0073f, 0.0026f, -0.0021f, -0.0067f, -0.0113f, -0.0159f}};

static cuoptimConfig_t adamw_golden_config(void) {
  /* AdamW(learning_rate=1.0, weight_decay=0.5, epsilon=2) */
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAMW, 1.0);
  c.weight_decay = 0.5;
  c.epsilon = 2.0;
  return c;
}
static void adamw_single_step(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAMW, 0.5);
  run_single_step(b, &c, ADAMW_SINGLE, KERAS_SINGLE_STEP_TOL, KERAS_SINGLE_STEP_TOL);
}
static void adamw_single_step_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAMW, 0.5);
  run_single_step(b, &c, ADAMW_SINGLE_F32, F32_RTOL, F32_ATOL);
}
static void adamw_golden_rows(cuoptimBackend_t b) {
  cuoptimConfig_t c = adamw_golden_config();
  run_golden_rows(b, &c, ADAMW_GOLDEN, KERAS_GOLDEN_TOL, KERAS_GOLDEN_TOL);
}
static void adamw_golden_rows_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = adamw_golden_config();
  run_golden_rows(b, &c, ADAMW_GOLDEN_F32, F32_RTOL, F32_ATOL);
}
static void adamw_weight_decay(cuoptimBackend_t b) { run_weight_decay(b, CUOPTIM_ADAMW); }
static void adamw_clip_norm(cuoptimBackend_t b) { run_clip(b, CUOPTIM_ADAMW, 0, ADAMW_CLIPNORM_F32); }
static void adamw_clip_value(cuoptimBackend_t b) { run_clip(b, CUOPTIM_ADAMW, 1, ADAMW_CLIPVALUE_F32); }

BOTH_BACKENDS(adamw_single_step_matches_keras, adamw_single_step)
BOTH_BACKENDS(adamw_single_step_matches_keras_float32, adamw_single_step_f32)
BOTH_BACKENDS(adamw_golden_rows_match_keras, adamw_golden_rows)
BOTH_BACKENDS(adamw_golden_rows_match_keras_float32, adamw_golden_rows_f32)
BOTH_BACKENDS(adamw_weight_decay_matches_keras, adamw_weight_decay)
BOTH_BACKENDS(adamw_clip_norm_matches_keras, adamw_clip_norm)
BOTH_BACKENDS(adamw_clip_value_matches_keras, adamw_clip_value)

/* ---- Adamax (adamax_test.py) ---------------------------------------------------------------------- */

static const float ADAMAX_SINGLE[4] = {0.5f, 1.5f, 2.5f, 3.5f};
static const float ADAMAX_GOLDEN[5][10] = {
    {0.8f, 0.8f, 0.8f, 0.8f, 0.8f, 0.8f, 0.8f, 0.8f, 0.8f, 0.8f},
    {0.6827f, 0.6873f, 0.6888f, 0.6896f, 0.6901f, 0.6904f, 0.6906f, 0.6908f, 0.6909f, 0.691f},
    {0.5333f, 0.5407f, 0.5431f, 0.5444f, 0.5451f, 0.5456f, 0.546f, 0.5462f, 0.5464f, 0.5466f},
    {0.368f, 0.3773f, 0.3804f, 0.382f, 0.3829f, 0.3835f, 0.384f, 0.3843f, 0.3846f, 0.3848f},
    {0.1933f, 0.204f, 0.2076f, 0.2094f, 0.2105f, 0.2112f, 0.2117f, 0.2121f, 0.2124f, 0.2126f}};

static cuoptimConfig_t adamax_golden_config(void) {
  /* Adamax(learning_rate=0.2, beta_1=0.85, beta_2=0.95, epsilon=1e-6) */
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAMAX, 0.2);
  c.beta_1 = 0.85;
  c.beta_2 = 0.95;
  c.epsilon = 1e-6;
  return c;
}
static void adamax_single_step(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAMAX, 0.5);
  run_single_step(b, &c, ADAMAX_SINGLE, KERAS_SINGLE_STEP_TOL, KERAS_SINGLE_STEP_TOL);
}
static void adamax_single_step_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAMAX, 0.5);
  run_single_step(b, &c, ADAMAX_SINGLE_F32, F32_RTOL, F32_ATOL);
}
static void adamax_golden_rows(cuoptimBackend_t b) {
  cuoptimConfig_t c = adamax_golden_config();
  run_golden_rows(b, &c, ADAMAX_GOLDEN, KERAS_GOLDEN_TOL, KERAS_GOLDEN_TOL);
}
static void adamax_golden_rows_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = adamax_golden_config();
  run_golden_rows(b, &c, ADAMAX_GOLDEN_F32, F32_RTOL, F32_ATOL);
}
static void adamax_weight_decay(cuoptimBackend_t b) { run_weight_decay(b, CUOPTIM_ADAMAX); }
static void adamax_clip_norm(cuoptimBackend_t b) { run_clip(b, CUOPTIM_ADAMAX, 0, ADAMAX_CLIPNORM_F32); }
static void adamax_clip_value(cuoptimBackend_t b) { run_clip(b, CUOPTIM_ADAMAX, 1, ADAMAX_CLIPVALUE_F32); }

BOTH_BACKENDS(adamax_single_step_matches_keras, adamax_single_step)
BOTH_BACKENDS(adamax_single_step_matches_keras_float32, adamax_single_step_f32)
BOTH_BACKENDS(adamax_golden_rows_match_keras, adamax_golden_rows)
BOTH_BACKENDS(adamax_golden_rows_match_keras_float32, adamax_golden_rows_f32)
BOTH_BACKENDS(adamax_weight_decay_matches_keras, adamax_weight_decay)
BOTH_BACKENDS(adamax_clip_norm_matches_keras, adamax_clip_norm)
BOTH_BACKENDS(adamax_clip_value_matches_keras, adamax_clip_value)

/* ---- Nadam (nadam_test.py) ------------------------------------------------------------------------ */

static const float NADAM_SINGLE[4] = {0.4686f, 1.4686f, 2.4686f, 3.4686f};
static const float NADAM_GOLDEN[5][10] = {
    {0.4281f, 0.4281f, 0.4281f, 0.4281f, 0.4281f, 0.4281f, 0.4281f, 0.4281f, 0.4281f, 0.4281f},
    {-0.1738f, -0.1731f, -0.1726f, -0.1723f, -0.1721f, -0.172f, -0.1719f, -0.1718f, -0.1718f, -0.1717f},
    {-0.7115f, -0.7103f, -0.7096f, -0.7092f, -0.709f, -0.7088f, -0.7086f, -0.7085f, -0.7085f, -0.7084f},
    {-1.2335f, -1.2322f, -1.2313f, -1.2309f, -1.2306f, -1.2304f, -1.2302f, -1.2301f, -1.23f, -1.2299f},
    {-1.7492f, -1.7478f, -1.7469f, -1.7464f, -1.7461f, -1.7459f, -1.7457f, -1.7456f, -1.7455f, -1.7454f}};

static cuoptimConfig_t nadam_golden_config(void) {
  /* Nadam(learning_rate=0.5, beta_1=0.5, beta_2=0.67, epsilon=1e-5) */
  cuoptimConfig_t c = test_config_lr(CUOPTIM_NADAM, 0.5);
  c.beta_1 = 0.5;
  c.beta_2 = 0.67;
  c.epsilon = 1e-5;
  return c;
}
static void nadam_single_step(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_NADAM, 0.5);
  run_single_step(b, &c, NADAM_SINGLE, KERAS_SINGLE_STEP_TOL, KERAS_SINGLE_STEP_TOL);
}
static void nadam_single_step_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_NADAM, 0.5);
  run_single_step(b, &c, NADAM_SINGLE_F32, F32_RTOL, F32_ATOL);
}
static void nadam_golden_rows(cuoptimBackend_t b) {
  cuoptimConfig_t c = nadam_golden_config();
  run_golden_rows(b, &c, NADAM_GOLDEN, KERAS_GOLDEN_TOL, KERAS_GOLDEN_TOL);
}
static void nadam_golden_rows_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = nadam_golden_config();
  run_golden_rows(b, &c, NADAM_GOLDEN_F32, F32_RTOL, F32_ATOL);
}
static void nadam_weight_decay(cuoptimBackend_t b) { run_weight_decay(b, CUOPTIM_NADAM); }
static void nadam_clip_norm(cuoptimBackend_t b) { run_clip(b, CUOPTIM_NADAM, 0, NADAM_CLIPNORM_F32); }
static void nadam_clip_value(cuoptimBackend_t b) { run_clip(b, CUOPTIM_NADAM, 1, NADAM_CLIPVALUE_F32); }

BOTH_BACKENDS(nadam_single_step_matches_keras, nadam_single_step)
BOTH_BACKENDS(nadam_single_step_matches_keras_float32, nadam_single_step_f32)
BOTH_BACKENDS(nadam_golden_rows_match_keras, nadam_golden_rows)
BOTH_BACKENDS(nadam_golden_rows_match_keras_float32, nadam_golden_rows_f32)
BOTH_BACKENDS(nadam_weight_decay_matches_keras, nadam_weight_decay)
BOTH_BACKENDS(nadam_clip_norm_matches_keras, nadam_clip_norm)
BOTH_BACKENDS(nadam_clip_value_matches_keras, nadam_clip_value)

/* ---- Lion (lion_test.py) -------------------------------------------------------------------------- */

static const float LION_SINGLE[4] = {0.5f, 1.5f, 2.5f, 3.5f};
static const float LION_GOLDEN[5][10] = {
    {0.999f, 0.999f, 0.999f, 0.999f, 0.999f, 0.999f, 0.999f, 0.999f, 0.999f, 0.999f},
    {0.998f, 0.998f, 0.998f, 0.998f, 0.998f, 0.998f, 0.998f, 0.998f, 0.998f, 0.998f},
    {0.997f, 0.997f, 0.997f, 0.997f, 0.997f, 0.997f, 0.997f, 0.997f, 0.997f, 0.997f},
    {0.996f, 0.996f, 0.996f, 0.996f, 0.996f, 0.996f, 0.996f, 0.996f, 0.996f, 0.996f},
    {0.995f, 0.995f, 0.995f, 0.995f, 0.995f, 0.995f, 0.995f, 0.995f, 0.995f, 0.995f}};

static void lion_single_step(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_LION, 0.5);
  run_single_step(b, &c, LION_SINGLE, KERAS_SINGLE_STEP_TOL, KERAS_SINGLE_STEP_TOL);
}
static void lion_single_step_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_LION, 0.5);
  run_single_step(b, &c, LION_SINGLE_F32, F32_RTOL, F32_ATOL);
}
static void lion_golden_rows(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config(CUOPTIM_LION); /* Lion() */
  run_golden_rows(b, &c, LION_GOLDEN, KERAS_GOLDEN_TOL, KERAS_GOLDEN_TOL);
}
static void lion_golden_rows_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config(CUOPTIM_LION);
  run_golden_rows(b, &c, LION_GOLDEN_F32, F32_RTOL, F32_ATOL);
}
static void lion_weight_decay(cuoptimBackend_t b) { run_weight_decay(b, CUOPTIM_LION); }
static void lion_clip_norm(cuoptimBackend_t b) { run_clip(b, CUOPTIM_LION, 0, LION_CLIPNORM_F32); }
static void lion_clip_value(cuoptimBackend_t b) { run_clip(b, CUOPTIM_LION, 1, LION_CLIPVALUE_F32); }

BOTH_BACKENDS(lion_single_step_matches_keras, lion_single_step)
BOTH_BACKENDS(lion_single_step_matches_keras_float32, lion_single_step_f32)
BOTH_BACKENDS(lion_golden_rows_match_keras, lion_golden_rows)
BOTH_BACKENDS(lion_golden_rows_match_keras_float32, lion_golden_rows_f32)
BOTH_BACKENDS(lion_weight_decay_matches_keras, lion_weight_decay)
BOTH_BACKENDS(lion_clip_norm_matches_keras, lion_clip_norm)
BOTH_BACKENDS(lion_clip_value_matches_keras, lion_clip_value)

/* ---- Lamb (lamb_test.py) -------------------------------------------------------------------------- */

static const float LAMB_SINGLE[4] = {-0.3693f, 0.6306f, 1.6306f, 2.6306f};
static const float LAMB_GOLDEN[5][10] = {
    {0.999f, 0.999f, 0.999f, 0.999f, 0.999f, 0.999f, 0.999f, 0.999f, 0.999f, 0.999f},
    {0.9982f, 0.9982f, 0.9982f, 0.9982f, 0.9982f, 0.9982f, 0.9982f, 0.9982f, 0.9982f, 0.9982f},
    {0.9974f, 0.9974f, 0.9974f, 0.9974f, 0.9974f, 0.9974f, 0.9974f, 0.9974f, 0.9974f, 0.9974f},
    {0.9965f, 0.9965f, 0.9965f, 0.9965f, 0.9965f, 0.9965f, 0.9965f, 0.9965f, 0.9965f, 0.9965f},
    {0.9955f, 0.9955f, 0.9955f, 0.9955f, 0.9955f, 0.9955f, 0.9955f, 0.9955f, 0.9955f, 0.9955f}};

static void lamb_single_step(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_LAMB, 0.5);
  run_single_step(b, &c, LAMB_SINGLE, KERAS_SINGLE_STEP_TOL, KERAS_SINGLE_STEP_TOL);
}
static void lamb_single_step_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_LAMB, 0.5);
  run_single_step(b, &c, LAMB_SINGLE_F32, F32_RTOL, F32_ATOL);
}
static void lamb_golden_rows(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config(CUOPTIM_LAMB); /* Lamb() */
  run_golden_rows(b, &c, LAMB_GOLDEN, KERAS_GOLDEN_TOL, KERAS_GOLDEN_TOL);
}
static void lamb_golden_rows_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config(CUOPTIM_LAMB);
  run_golden_rows(b, &c, LAMB_GOLDEN_F32, F32_RTOL, F32_ATOL);
}
static void lamb_weight_decay(cuoptimBackend_t b) { run_weight_decay(b, CUOPTIM_LAMB); }
static void lamb_clip_norm(cuoptimBackend_t b) { run_clip(b, CUOPTIM_LAMB, 0, LAMB_CLIPNORM_F32); }
static void lamb_clip_value(cuoptimBackend_t b) { run_clip(b, CUOPTIM_LAMB, 1, LAMB_CLIPVALUE_F32); }

BOTH_BACKENDS(lamb_single_step_matches_keras, lamb_single_step)
BOTH_BACKENDS(lamb_single_step_matches_keras_float32, lamb_single_step_f32)
BOTH_BACKENDS(lamb_golden_rows_match_keras, lamb_golden_rows)
BOTH_BACKENDS(lamb_golden_rows_match_keras_float32, lamb_golden_rows_f32)
BOTH_BACKENDS(lamb_weight_decay_matches_keras, lamb_weight_decay)
BOTH_BACKENDS(lamb_clip_norm_matches_keras, lamb_clip_norm)
BOTH_BACKENDS(lamb_clip_value_matches_keras, lamb_clip_value)

/* ---- Ftrl (ftrl_test.py) -------------------------------------------------------------------------- */

static const float FTRL_SINGLE[4] = {0.2218f, 1.3954f, 2.3651f, 2.8814f};
static const float FTRL_GOLDEN[5][10] = {
    {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f},
    {-0.0034f, -0.0077f, -0.0118f, -0.0157f, -0.0194f, -0.023f, -0.0263f, -0.0294f, -0.0325f, -0.0354f},
    {-0.0078f, -0.0162f, -0.0242f, -0.0317f, -0.0387f, -0.0454f, -0.0516f, -0.0575f, -0.0631f, -0.0685f},
    {-0.0121f, -0.0246f, -0.0363f, -0.0472f, -0.0573f, -0.0668f, -0.0757f, -0.0842f, -0.0922f, -0.0999f},
    {-0.0164f, -0.0328f, -0.0481f, -0.0623f, -0.0753f, -0.0875f, -0.099f, -0.1098f, -0.1201f, -0.1299f}};

static cuoptimConfig_t ftrl_golden_config(void) {
  /* Ftrl(learning_rate=0.05, learning_rate_power=-0.2, initial_accumulator_value=0.4,
   *      l1_regularization_strength=0.05, l2_regularization_strength=0.15,
   *      l2_shrinkage_regularization_strength=0.01, beta=0.3) */
  cuoptimConfig_t c = test_config_lr(CUOPTIM_FTRL, 0.05);
  c.learning_rate_power = -0.2;
  c.initial_accumulator_value = 0.4;
  c.l1_regularization_strength = 0.05;
  c.l2_regularization_strength = 0.15;
  c.l2_shrinkage_regularization_strength = 0.01;
  c.beta = 0.3;
  return c;
}
static void ftrl_single_step(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_FTRL, 0.5);
  run_single_step(b, &c, FTRL_SINGLE, KERAS_SINGLE_STEP_TOL, KERAS_SINGLE_STEP_TOL);
}
static void ftrl_single_step_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_FTRL, 0.5);
  run_single_step(b, &c, FTRL_SINGLE_F32, F32_RTOL, F32_ATOL);
}
static void ftrl_golden_rows(cuoptimBackend_t b) {
  cuoptimConfig_t c = ftrl_golden_config();
  run_golden_rows(b, &c, FTRL_GOLDEN, KERAS_GOLDEN_TOL, KERAS_GOLDEN_TOL);
}
static void ftrl_golden_rows_f32(cuoptimBackend_t b) {
  cuoptimConfig_t c = ftrl_golden_config();
  run_golden_rows(b, &c, FTRL_GOLDEN_F32, F32_RTOL, F32_ATOL);
}
static void ftrl_clip_norm(cuoptimBackend_t b) { run_clip(b, CUOPTIM_FTRL, 0, FTRL_CLIPNORM_F32); }
static void ftrl_clip_value(cuoptimBackend_t b) { run_clip(b, CUOPTIM_FTRL, 1, FTRL_CLIPVALUE_F32); }

BOTH_BACKENDS(ftrl_single_step_matches_keras, ftrl_single_step)
BOTH_BACKENDS(ftrl_single_step_matches_keras_float32, ftrl_single_step_f32)
BOTH_BACKENDS(ftrl_golden_rows_match_keras, ftrl_golden_rows)
BOTH_BACKENDS(ftrl_golden_rows_match_keras_float32, ftrl_golden_rows_f32)
BOTH_BACKENDS(ftrl_clip_norm_matches_keras, ftrl_clip_norm)
BOTH_BACKENDS(ftrl_clip_value_matches_keras, ftrl_clip_value)

/* ---- ScheduleFreeAdamW (schedule_free_adamw_test.py) ----------------------------------------------
 * Keras's test asserts directions only (the step moves the variable, warmup shrinks it, ten steps
 * of a positive gradient lower it, an excluded variable keeps its value); here each protocol is
 * also compared with real Keras 3.15.1's float32 values. */

static const float SFADAMW_SINGLE_F32[4] = {0.5f, 1.5f, 2.5f, 3.5f};
static const float SFADAMW_GOLDEN_F32[5][10] = {
    {0.997500002f, 0.997500002f, 0.997500002f, 0.997500002f, 0.997500002f, 0.997500002f, 0.997500002f, 0.997500002f,
     0.997500002f, 0.997500002f},
    {0.995565653f, 0.995558441f, 0.99555707f, 0.995556533f, 0.995556355f, 0.995556176f, 0.995556176f, 0.995556056f,
     0.995556056f, 0.995556056f},
    {0.993816674f, 0.993805289f, 0.993803084f, 0.99380219f, 0.993801951f, 0.993801713f, 0.993801594f, 0.993801475f,
     0.993801415f, 0.993801415f},
    {0.992158532f, 0.992144048f, 0.992141306f, 0.992140293f, 0.992139876f, 0.992139578f, 0.992139518f, 0.992139399f,
     0.99213928f, 0.99213922f},
    {0.990555048f, 0.990538239f, 0.990535021f, 0.990533948f, 0.990533412f, 0.990533113f, 0.990532994f, 0.990532935f,
     0.990532756f, 0.990532696f}};
static const float SFADAMW_CLIPNORM_F32[2] = {0.997500002f, 1.99749994f};
static const float SFADAMW_CLIPVALUE_F32[2] = {0.997500002f, 1.99749994f};

static void sfadamw_single_step(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SCHEDULE_FREE_ADAMW, 0.5);
  run_single_step(b, &c, SFADAMW_SINGLE_F32, F32_RTOL, F32_ATOL);
}
static void sfadamw_golden_rows(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config(CUOPTIM_SCHEDULE_FREE_ADAMW);
  run_golden_rows(b, &c, SFADAMW_GOLDEN_F32, F32_RTOL, F32_ATOL);
}
static void sfadamw_clip_norm(cuoptimBackend_t b) { run_clip(b, CUOPTIM_SCHEDULE_FREE_ADAMW, 0, SFADAMW_CLIPNORM_F32); }
static void sfadamw_clip_value(cuoptimBackend_t b) { run_clip(b, CUOPTIM_SCHEDULE_FREE_ADAMW, 1, SFADAMW_CLIPVALUE_F32); }

/* test_warmup: one step of g = 1 at learning_rate 0.5, warmup_steps 0 and 10; the warmed-up step
 * is a tenth. */
static void sfadamw_warmup(cuoptimBackend_t b) {
  test_require_backend(b);
  static const float w0[3] = {1.0f, 2.0f, 3.0f}, g[3] = {1.0f, 1.0f, 1.0f};
  static const float want[2][3] = {{0.5f, 1.5f, 2.5f}, {0.949999988f, 1.95000005f, 2.95000005f}};
  float diff[2][3];
  for (int k = 0; k < 2; k++) {
    cuoptimConfig_t c = test_config_lr(CUOPTIM_SCHEDULE_FREE_ADAMW, 0.5);
    c.warmup_steps = k ? 10 : 0;
    test_rig_t r;
    test_rig_init(&r, &c, b);
    test_rig_add(&r, "variable", w0, 3);
    rig_apply1(&r, g);
    float got[3];
    test_rig_get(&r, 0, got);
    expect_close(got, want[k], 3, F32_RTOL, F32_ATOL, k ? "ScheduleFreeAdamW warmup_steps=10" : "warmup_steps=0");
    for (int i = 0; i < 3; i++) diff[k][i] = fabsf(got[i] - w0[i]);
    test_rig_destroy(&r);
  }
  for (int i = 0; i < 3; i++) cr_expect_lt(diff[1][i], diff[0][i], "element %d: the warmed-up step is not smaller", i);
}

/* test_multiple_steps: ten steps of g = 0.1 at learning_rate 0.01 lower every element; the
 * variable, the momentum (z) and the velocity as Keras has them. */
static void sfadamw_multiple_steps(cuoptimBackend_t b) {
  test_require_backend(b);
  static const float w0[3] = {1.0f, 2.0f, 3.0f}, g[3] = {0.1f, 0.1f, 0.1f};
  static const float want_w[3] = {0.940500081f, 1.9405005f, 2.94050074f};
  static const float want_z[3] = {0.900000036f, 1.9000001f, 2.9000001f};
  static const float want_v[3] = {9.95499286e-05f, 9.95499286e-05f, 9.95499286e-05f};
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SCHEDULE_FREE_ADAMW, 0.01);
  test_rig_t r;
  test_rig_init(&r, &c, b);
  test_rig_add(&r, "variable", w0, 3);
  for (int s = 0; s < 10; s++) rig_apply1(&r, g);
  float got[3], z[3], v[3];
  test_rig_get(&r, 0, got);
  rig_weight(&r, "variable_momentum", z, 3);
  rig_weight(&r, "variable_velocity", v, 3);
  expect_close(got, want_w, 3, F32_RTOL, F32_ATOL, "ScheduleFreeAdamW after 10 steps");
  expect_close(z, want_z, 3, F32_RTOL, F32_ATOL, "its momentum (z)");
  expect_close(v, want_v, 3, F32_RTOL, 1e-12, "its velocity");
  for (int i = 0; i < 3; i++) cr_expect_lt(got[i], w0[i]);
  test_rig_destroy(&r);
}

/* test_weight_decay: zero gradients, lr 1, weight_decay 0.004; "exclude" keeps 2.0. */
static void sfadamw_weight_decay_exclusion(cuoptimBackend_t b) {
  test_require_backend(b);
  static const float two = 2.0f, zero = 0.0f;
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SCHEDULE_FREE_ADAMW, 1.0);
  c.weight_decay = 0.004;
  test_rig_t r;
  test_rig_init(&r, &c, b);
  OK(cuoptimExcludeFromWeightDecay(r.opt, "exclude"));
  test_rig_add(&r, "variable", &two, 1);
  test_rig_add(&r, "exclude", &two, 1);
  const float *grads[2] = {&zero, &zero};
  rig_apply(&r, grads);
  float got = 0.0f;
  test_rig_get(&r, 1, &got);
  cr_expect(fabsf(got - 2.0f) <= 1e-6f, "the excluded variable moved to %.9g", got);
  test_rig_destroy(&r);
}

/* cuoptimScheduleFreeAveragedWeights: x, Keras's formula from y and z (the same float32 operations,
 * so the same bits), is the average of z after each step (x_t = mean(z_1 .. z_t): the averaging
 * weight is 1 / t), and reading it changes neither the variable nor the next step. */
static void sfadamw_averaged_weights(cuoptimBackend_t b) {
  test_require_backend(b);
  enum { N = 5, STEPS = 7 };
  static const float w0[N] = {1.0f, -2.0f, 0.5f, 3.0f, -0.25f};
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SCHEDULE_FREE_ADAMW, 0.05);
  test_rig_t r;
  test_rig_init(&r, &c, b);
  test_rig_add(&r, "variable", w0, N);
  double z_sum[N] = {0};
  float y[N], z[N];
  for (int s = 0; s < STEPS; s++) {
    float g[N];
    for (int i = 0; i < N; i++) g[i] = 0.1f * (float)(i + 1) * (float)(s % 3 - 1) + 0.05f;
    rig_apply1(&r, g);
    rig_weight(&r, "variable_momentum", z, N);
    for (int i = 0; i < N; i++) z_sum[i] += z[i];
  }
  test_rig_get(&r, 0, y);
  float *out = test_mem_alloc(b, N * sizeof(float));
  OK(cuoptimScheduleFreeAveragedWeights(r.opt, 0, out, NULL));
  OK(cuoptimSynchronize(r.opt));
  float x[N], y_after[N];
  test_mem_download(b, x, out, sizeof x);
  test_rig_get(&r, 0, y_after);
  const float beta_1 = (float)c.beta_1;
  for (int i = 0; i < N; i++) {
    float formula = (y[i] - (1.0f - beta_1) * z[i]) / beta_1;
    cr_expect_eq(x[i], formula, "element %d: x = %.9g, Keras's formula %.9g", i, x[i], formula);
    double mean = z_sum[i] / STEPS;
    cr_expect(fabs(x[i] - mean) <= 1e-6 + 1e-5 * fabs(mean), "element %d: x = %.9g, the mean of z %.9g", i, x[i], mean);
    cr_expect_eq(y_after[i], y[i], "element %d: the variable changed", i);
  }
  test_mem_free(b, out);
  test_rig_destroy(&r);
}

BOTH_BACKENDS(schedule_free_adamw_averaged_weights_are_the_mean_of_z, sfadamw_averaged_weights)
BOTH_BACKENDS(schedule_free_adamw_single_step_matches_keras_float32, sfadamw_single_step)
BOTH_BACKENDS(schedule_free_adamw_golden_rows_match_keras_float32, sfadamw_golden_rows)
BOTH_BACKENDS(schedule_free_adamw_clip_norm_matches_keras, sfadamw_clip_norm)
BOTH_BACKENDS(schedule_free_adamw_clip_value_matches_keras, sfadamw_clip_value)
BOTH_BACKENDS(schedule_free_adamw_warmup_matches_keras, sfadamw_warmup)
BOTH_BACKENDS(schedule_free_adamw_multiple_steps_match_keras, sfadamw_multiple_steps)
BOTH_BACKENDS(schedule_free_adamw_weight_decay_excludes_by_name, sfadamw_weight_decay_exclusion)

/* ---- Adafactor (adafactor_test.py) -------------------------------------------------------------
 * Keras's tests with its 4-digit values (rtol = atol = 1e-4, the golden rows 5e-4) and real Keras
 * 3.15.1's float32 values, on both backends. */

static const float ADAFACTOR_SINGLE_KERAS[4] = {-0.3693f, 0.6307f, 1.6307f, 2.6307f};
static const float ADAFACTOR_SINGLE_F32[4] = {-0.369306445f, 0.630693555f, 1.63069355f, 2.63069344f};
static const float ADAFACTOR_SINGLE_2D_KERAS[4] = {0.7007f, -0.0081f, 1.2492f, 3.4407f};
static const float ADAFACTOR_SINGLE_2D_F32[4] = {0.700654507f, -0.00807094574f, 1.24921131f, 3.44073105f};
static const float ADAFACTOR_GOLDEN_KERAS[5][10] = {
    {0.55f, 0.55f, 0.55f, 0.55f, 0.55f, 0.55f, 0.55f, 0.55f, 0.55f, 0.55f},
    {0.3031f, 0.3026f, 0.3025f, 0.3024f, 0.3024f, 0.3024f, 0.3024f, 0.3024f, 0.3024f, 0.3024f},
    {0.1671f, 0.1665f, 0.1663f, 0.1663f, 0.1663f, 0.1663f, 0.1663f, 0.1663f, 0.1663f, 0.1663f},
    {0.0923f, 0.0916f, 0.0915f, 0.0914f, 0.0914f, 0.0914f, 0.0914f, 0.0914f, 0.0914f, 0.0914f},
    {0.0554f, 0.0548f, 0.0546f, 0.0546f, 0.0546f, 0.0546f, 0.0546f, 0.0545f, 0.0545f, 0.0545f}};
static const float ADAFACTOR_GOLDEN_F32[5][10] = {
    {0.550000012f, 0.550000012f, 0.550000012f, 0.550000012f, 0.550000012f, 0.550000012f, 0.550000012f, 0.550000012f,
     0.550000012f, 0.550000012f},
    {0.303092897f, 0.302567184f, 0.302469492f, 0.302435279f, 0.302419394f, 0.302410781f, 0.302405596f, 0.302402258f,
     0.302399933f, 0.302398264f},
    {0.167098269f, 0.166456833f, 0.166337654f, 0.166295946f, 0.166276574f, 0.166266069f, 0.166259751f, 0.166255683f,
     0.166252851f, 0.166250795f},
    {0.092268452f, 0.0915923715f, 0.0914667696f, 0.0914228261f, 0.091402404f, 0.0913913324f, 0.0913846791f,
     0.0913803875f, 0.0913773999f, 0.0913752466f},
    {0.0554497167f, 0.0547630414f, 0.0546354726f, 0.0545908436f, 0.0545700975f, 0.0545588583f, 0.0545521006f,
     0.054547742f, 0.0545447059f, 0.0545425192f}};
static const float ADAFACTOR_CLIP_F32[2] = {0.998418868f, 1.99841881f}; /* clipnorm=1 and clipvalue=1 alike */

/* The golden-test optimizer of adafactor_test.py. */
static cuoptimConfig_t adafactor_golden_config(void) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAFACTOR, 0.5);
  c.beta_2_decay = -0.65;
  c.epsilon_1 = 1e-15;
  c.epsilon_2 = 1e-4;
  c.clip_threshold = 0.9;
  c.relative_step = 0;
  return c;
}

static void adafactor_single_step_1d(cuoptimBackend_t b) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAFACTOR, 0.5);
  run_single_step(b, &c, ADAFACTOR_SINGLE_KERAS, 1e-4, 1e-4);
  run_single_step(b, &c, ADAFACTOR_SINGLE_F32, F32_RTOL, F32_ATOL);
}

/* test_single_step_2d: the factored path, w = [[1, 2], [3, 4]], g = [[1, 6], [7, 2]]; also the
 * row and column accumulators and the velocity as Keras has them. */
static void adafactor_single_step_2d(cuoptimBackend_t b) {
  test_require_backend(b);
  static const float w0[4] = {1, 2, 3, 4}, g[4] = {1, 6, 7, 2};
  static const float want_r[2] = {18.5f, 26.5f}, want_c[2] = {25.0f, 20.0f};
  static const float want_v[4] = {20.5555553f, 16.4444447f, 29.4444447f, 23.5555553f};
  static const int64_t dims[2] = {2, 2};
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAFACTOR, 0.5);
  cuoptimOptimizer_t opt = NULL;
  OK(cuoptimCreate(&opt, &c, b, 0));
  float *param = test_mem_from(b, w0, 4), *grad_buffer = test_mem_from(b, g, 4);
  cuoptimVariable_t v;
  OK(cuoptimAddVariableWithShape(opt, "variable", param, CUOPTIM_FLOAT32, 2, dims, &v));
  cuoptimGradient_t grad = {.variable = v, .grad = grad_buffer, .dtype = CUOPTIM_FLOAT32};
  OK(cuoptimApplyGradients(opt, 1, &grad, NULL));
  OK(cuoptimSynchronize(opt));
  float w[4];
  test_mem_download(b, w, param, sizeof w);
  expect_close(w, ADAFACTOR_SINGLE_2D_KERAS, 4, 1e-4, 1e-4, "Adafactor 2-D step (Keras's 4 digits)");
  expect_close(w, ADAFACTOR_SINGLE_2D_F32, 4, F32_RTOL, F32_ATOL, "Adafactor 2-D step");
  /* iteration, learning_rate, r, c, velocity */
  int count = 0;
  OK(cuoptimGetWeightCount(opt, &count));
  cr_assert_eq(count, 5);
  const float *want[3] = {want_r, want_c, want_v};
  static const char *const what[3] = {"r", "c", "velocity"};
  for (int k = 0; k < 3; k++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(opt, 2 + k, &info));
    cr_assert_str_eq(info.name, k == 2 ? "variable_velocity" : "variable");
    double values[4];
    float got[4];
    OK(cuoptimGetWeights(opt, 2 + k, values, info.count));
    for (size_t i = 0; i < info.count; i++) got[i] = (float)values[i];
    expect_close(got, want[k], info.count, F32_RTOL, F32_ATOL, what[k]);
  }
  OK(cuoptimDestroy(opt));
  test_mem_free(b, param);
  test_mem_free(b, grad_buffer);
}

static void adafactor_golden_rows(cuoptimBackend_t b) {
  cuoptimConfig_t c = adafactor_golden_config();
  run_golden_rows(b, &c, ADAFACTOR_GOLDEN_KERAS, 5e-4, 5e-4);
  run_golden_rows(b, &c, ADAFACTOR_GOLDEN_F32, F32_RTOL, F32_ATOL);
}
static void adafactor_weight_decay(cuoptimBackend_t b) { run_weight_decay(b, CUOPTIM_ADAFACTOR); }
static void adafactor_clip_norm(cuoptimBackend_t b) { run_clip(b, CUOPTIM_ADAFACTOR, 0, ADAFACTOR_CLIP_F32); }
static void adafactor_clip_value(cuoptimBackend_t b) { run_clip(b, CUOPTIM_ADAFACTOR, 1, ADAFACTOR_CLIP_F32); }

BOTH_BACKENDS(adafactor_single_step_1d_matches_keras, adafactor_single_step_1d)
BOTH_BACKENDS(adafactor_single_step_2d_matches_keras, adafactor_single_step_2d)
BOTH_BACKENDS(adafactor_golden_rows_match_keras, adafactor_golden_rows)
BOTH_BACKENDS(adafactor_weight_decay_matches_keras, adafactor_weight_decay)
BOTH_BACKENDS(adafactor_clip_norm_matches_keras, adafactor_clip_norm)
BOTH_BACKENDS(adafactor_clip_value_matches_keras, adafactor_clip_value)

/* =================================================================================================
 * Beyond Keras's tests: six steps of mixed-sign gradients on 8 elements, every optimizer with its
 * Keras defaults and learning_rate=0.1, against real Keras 3.15.1 float32 values (the golden rows
 * only use positive gradients, under which e.g. Lion's two betas cannot be told apart).
 * ================================================================================================= */

static const float MIXED_W0[8] = {1.0f, -2.0f, 0.5f, 3.0f, -0.25f, 0.0f, 1.5f, -1.0f};
static const float MIXED_GRADS[6][8] = {
    {0.5f, -1.0f, 2.0f, -0.100000001f, 0.0f, 0.300000012f, -0.699999988f, 1.20000005f},
    {-0.600000024f, 0.899999976f, -2.5f, 0.0500000007f, 0.200000003f, -0.300000012f, 0.600000024f, -1.10000002f},
    {0.100000001f, -0.200000003f, 0.300000012f, -0.400000006f, 0.5f, -0.600000024f, 0.699999988f, -0.800000012f},
    {-0.0500000007f, 0.800000012f, -0.100000001f, 0.899999976f, -1.5f, 0.0f, -0.200000003f, 0.400000006f},
    {1.0f, -1.0f, 1.0f, -1.0f, 1.0f, -1.0f, 1.0f, -1.0f},
    {-0.300000012f, 0.25f, 0.0199999996f, -2.0f, 0.699999988f, 0.109999999f, -0.899999976f, 0.0f}};
/* keras.optimizers.SGD(learning_rate=0.1): w after each of the 6 steps */
static const float SGD_MIXED_F32[6][8] = {
    {0.949999988f, -1.89999998f, 0.300000012f, 3.00999999f, -0.25f, -0.0300000012f, 1.57000005f, -1.12f},
    {1.00999999f, -1.99000001f, 0.550000012f, 3.00499988f, -0.270000011f, 0.0f, 1.50999999f, -1.00999999f},
    {1.0f, -1.97000003f, 0.519999981f, 3.04499984f, -0.320000023f, 0.0600000024f, 1.43999994f, -0.930000007f},
    {1.005f, -2.04999995f, 0.529999971f, 2.95499992f, -0.170000017f, 0.0600000024f, 1.45999992f, -0.970000029f},
    {0.904999971f, -1.94999993f, 0.429999977f, 3.05499983f, -0.270000011f, 0.159999996f, 1.3599999f, -0.870000005f},
    {0.934999943f, -1.9749999f, 0.427999973f, 3.25499988f, -0.340000004f, 0.148999989f, 1.44999993f, -0.870000005f}};
/* keras.optimizers.RMSprop(learning_rate=0.1): w after each of the 6 steps */
static const float RMSPROP_MIXED_F32[6][8] = {
    {0.683772862f, -1.68377233f, 0.183772266f, 3.31621194f, -0.25f, -0.316226006f, 1.81622744f, -1.31622767f},
    {0.931842089f, -1.90141511f, 0.435668617f, 3.16877627f, -0.56622386f, -0.0868109465f, 1.60422802f, -1.09649122f},
    {0.888668835f, -1.85108376f, 0.403966486f, 3.47524595f, -0.861879528f, 0.17786321f, 1.40306711f, -0.947816968f},
    {0.911364436f, -2.02729774f, 0.415098578f, 3.18527269f, -0.562322617f, 0.17786321f, 1.46256852f, -1.023875f},
    {0.64754951f, -1.8401444f, 0.305085838f, 3.41670799f, -0.737554729f, 0.443585813f, 1.23989666f, -0.854584575f},
    {0.728215218f, -1.88887453f, 0.302766621f, 3.68207383f, -0.857234836f, 0.412920445f, 1.41555381f, -0.854584575f}};
/* keras.optimizers.Adagrad(learning_rate=0.1): w after each of the 6 steps */
static const float ADAGRAD_MIXED_F32[6][8] = {
    {0.915484607f, -1.90465379f, 0.401227027f, 3.03015113f, -0.25f, -0.068824701f, 1.59113228f, -1.09669876f},
    {0.986691475f, -1.96977544f, 0.478935778f, 3.01524401f, -0.303452224f, -0.0121300407f, 1.52957356f, -1.0303663f},
    {0.974906385f, -1.95545316f, 0.469651014f, 3.09187007f, -0.383516312f, 0.0628699511f, 1.47124028f, -0.986916244f},
    {0.980788708f, -2.00516272f, 0.472744465f, 3.00536752f, -0.291197687f, 0.0628699511f, 1.4876802f, -1.00814605f},
    {0.904594779f, -1.95238471f, 0.443191767f, 3.0746634f, -0.343611926f, 0.140956834f, 1.42418015f, -0.961265326f},
    {0.926878214f, -1.96546578f, 0.442600727f, 3.15575743f, -0.378056675f, 0.132398784f, 1.47379875f, -0.961265326f}};
/* keras.optimizers.Adadelta(learning_rate=0.1): w after each of the 6 steps */
static const float ADADELTA_MIXED_F32[6][8] = {
    {0.999858558f, -1.99985862f, 0.499858588f, 3.00014138f, -0.25f, -0.00014141979f, 1.50014138f, -1.00014138f},
    {1.00001383f, -1.99999428f, 0.500016332f, 3.00005007f, -0.250141412f, 1.80159986e-06f, 1.5000093f, -1.00000441f},
    {0.999980748f, -1.99995768f, 0.499991894f, 3.00026035f, -0.250327736f, 0.000203480537f, 1.49986196f, -0.999894977f},
    {0.999997497f, -2.0000844f, 0.500000119f, 2.99998641f, -0.250071377f, 0.000203480537f, 1.49991131f, -0.999954224f},
    {0.999798715f, -1.9999342f, 0.499921352f, 3.00027633f, -0.250272006f, 0.000456297188f, 1.49972498f, -0.999821901f},
    {0.999874353f, -1.99997735f, 0.499919683f, 3.00068092f, -0.25042221f, 0.000419932505f, 1.49989891f, -0.999821901f}};
/* keras.optimizers.Adam(learning_rate=0.1): w after each of the 6 steps */
static const float ADAM_MIXED_F32[6][8] = {
    {0.900001287f, -1.90000105f, 0.400000811f, 3.09999609f, -0.25f, -0.0999982804f, 1.59999883f, -1.09999907f},
    {0.914295554f, -1.90000105f, 0.416273862f, 3.12662888f, -0.32441175f, -0.0947352126f, 1.60242093f, -1.09908462f},
    {0.917137027f, -1.89060068f, 0.422834188f, 3.19369292f, -0.405081332f, -0.0402159542f, 1.56526303f, -1.07025778f},
    {0.923146963f, -1.91345489f, 0.430013835f, 3.16393065f, -0.372700244f, 0.00444263592f, 1.54517424f, -1.05972803f},
    {0.88343823f, -1.9005357f, 0.419591606f, 3.18497968f, -0.378524214f, 0.0707520247f, 1.4968642f, -1.02600443f},
    {0.862110198f, -1.89643538f, 0.410298526f, 3.23812151f, -0.401448548f, 0.123064473f, 1.48724806f, -0.996938884f}};
/* keras.optimizers.AdamW(learning_rate=0.1): w after each of the 6 steps */
static const float ADAMW_MIXED_F32[6][8] = {
    {0.899601281f, -1.89920092f, 0.399800837f, 3.09879613f, -0.249899998f, -0.0999982804f, 1.59939885f, -1.099599f},
    {0.913535714f, -1.8984412f, 0.415913969f, 3.12418938f, -0.324211806f, -0.0946952105f, 1.60118115f, -1.09824467f},
    {0.916011751f, -1.88828146f, 0.422307938f, 3.19000363f, -0.404751718f, -0.0401380733f, 1.56338274f, -1.06897855f},
    {0.921655297f, -1.91038036f, 0.429318666f, 3.15896535f, -0.372208744f, 0.00453657284f, 1.54266858f, -1.05802119f},
    {0.881577909f, -1.89669704f, 0.418724716f, 3.17875075f, -0.377883822f, 0.0708441436f, 1.49374151f, -1.0238744f},
    {0.859897256f, -1.89183807f, 0.409264147f, 3.2306211f, -0.400656998f, 0.123128265f, 1.4835279f, -0.99439925f}};
/* keras.optimizers.Adamax(learning_rate=0.1): w after each of the 6 steps */
static const float ADAMAX_MIXED_F32[6][8] = {
    {0.900000036f, -1.89999998f, 0.400000006f, 3.0999999f, -0.25f, -0.0999999493f, 1.5999999f, -1.10000002f},
    {0.91315794f, -1.89999998f, 0.414736837f, 3.12107348f, -0.302631527f, -0.0947367921f, 1.60225785f, -1.09912193f},
    {0.915312588f, -1.89260507f, 0.419612557f, 3.16129494f, -0.352816015f, -0.0561759248f, 1.56678081f, -1.07391787f},
    {0.919270277f, -1.9106878f, 0.424239427f, 3.14489484f, -0.335601717f, -0.028800495f, 1.54991102f, -1.06574667f},
    {0.896642029f, -1.89989448f, 0.417942822f, 3.15815854f, -0.338873923f, 0.00802081823f, 1.51657534f, -1.03913355f},
    {0.885234296f, -1.89673698f, 0.412813663f, 3.18471694f, -0.351429909f, 0.0346627384f, 1.50955498f, -1.01817918f}};
/* keras.optimizers.Nadam(learning_rate=0.1): w after each of the 6 steps */
static const float NADAM_MIXED_F32[6][8] = {
    {0.893721223f, -1.89372122f, 0.393721223f, 3.10627866f, -0.25f, -0.106278747f, 1.60627878f, -1.10627878f},
    {0.967608869f, -1.95672727f, 0.46901226f, 3.06701922f, -0.352166772f, -0.0391156748f, 1.54524434f, -1.04253793f},
    {0.955663145f, -1.94100296f, 0.460903883f, 3.17076302f, -0.454571128f, 0.0485036448f, 1.48081779f, -0.995284796f},
    {0.963298619f, -1.99729872f, 0.465450019f, 3.07213163f, -0.35204643f, 0.056956809f, 1.49446821f, -1.01537013f},
    {0.869636774f, -1.93664598f, 0.431056857f, 3.15344214f, -0.410635233f, 0.158908457f, 1.41357732f, -0.95656091f},
    {0.88980335f, -1.95051062f, 0.427916765f, 3.25964713f, -0.456015885f, 0.162865728f, 1.46780658f, -0.94883424f}};
/* keras.optimizers.Lion(learning_rate=0.1): w after each of the 6 steps */
static const float LION_MIXED_F32[6][8] = {
    {0.899999976f, -1.89999998f, 0.400000006f, 3.0999999f, -0.25f, -0.100000001f, 1.60000002f, -1.10000002f},
    {1.0f, -2.0f, 0.5f, 3.0f, -0.349999994f, 0.0f, 1.5f, -1.0f},
    {0.899999976f, -1.89999998f, 0.400000006f, 3.0999999f, -0.449999988f, 0.100000001f, 1.39999998f, -0.899999976f},
    {1.0f, -2.0f, 0.5f, 3.0f, -0.349999994f, 0.200000003f, 1.5f, -1.0f},
    {0.899999976f, -1.89999998f, 0.400000006f, 3.0999999f, -0.449999988f, 0.300000012f, 1.39999998f, -0.899999976f},
    {1.0f, -2.0f, 0.300000012f, 3.19999981f, -0.550000012f, 0.400000006f, 1.5f, -0.799999952f}};
/* keras.optimizers.Lamb(learning_rate=0.1): w after each of the 6 steps */
static const float LAMB_MIXED_F32[6][8] = {
    {0.841603994f, -1.84160399f, 0.341603994f, 3.15839577f, -0.25f, -0.158395961f, 1.65839601f, -1.15839601f},
    {0.916176975f, -1.84160399f, 0.426499963f, 3.29734135f, -0.638209283f, -0.13093853f, 1.67103183f, -1.15362525f},
    {0.926079869f, -1.80884266f, 0.449363381f, 3.53106785f, -0.919352412f, 0.0590673089f, 1.54153252f, -1.05316067f},
    {0.964946985f, -1.95664334f, 0.495795071f, 3.33859205f, -0.709940076f, 0.347880393f, 1.41161573f, -0.985063255f},
    {0.790239573f, -1.89980245f, 0.449940145f, 3.43120193f, -0.735563934f, 0.639623523f, 1.19906497f, -0.836688638f},
    {0.682637215f, -1.87911558f, 0.403055608f, 3.69930816f, -0.851219535f, 0.903545618f, 1.15055084f, -0.690049946f}};
/* keras.optimizers.Ftrl(learning_rate=0.1): w after each of the 6 steps */
static const float FTRL_MIXED_F32[6][8] = {
    {0.380962104f, -1.30163097f, 0.323140144f, 0.169763371f, 0.0f, -0.0688247234f, 0.973591983f, -0.841875196f},
    {0.452169001f, -1.36675274f, 0.400848866f, 0.154856265f, -0.0534522459f, -0.0121300491f, 0.912033319f,
     -0.775542676f},
    {0.440383941f, -1.35243046f, 0.391564101f, 0.231482357f, -0.133516312f, 0.0628699511f, 0.853699982f, -0.732092679f},
    {0.446266264f, -1.40214002f, 0.394657522f, 0.144979894f, -0.0411976986f, 0.0628699511f, 0.870139837f,
     -0.753322423f},
    {0.370072365f, -1.34936213f, 0.365104854f, 0.214275777f, -0.0936119333f, 0.140956834f, 0.806639791f, -0.7064417f},
    {0.39235577f, -1.36244321f, 0.364513814f, 0.295369834f, -0.12805669f, 0.132398784f, 0.856258452f, -0.7064417f}};

static void run_mixed(cuoptimBackend_t b, cuoptimOptimizerKind_t kind, const float want[6][8]) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(kind, 0.1);
  test_rig_t r;
  test_rig_init(&r, &c, b);
  test_rig_add(&r, "variable", MIXED_W0, 8);
  for (int s = 0; s < 6; s++) {
    rig_apply1(&r, MIXED_GRADS[s]);
    float got[8];
    test_rig_get(&r, 0, got);
    char what[96];
    snprintf(what, sizeof what, "%s mixed-sign step %d (%s)", cuoptimOptimizerName(kind), s + 1, test_backend_name(b));
    expect_close(got, want[s], 8, F32_RTOL, F32_ATOL, what);
  }
  test_rig_destroy(&r);
}
static void mixed_sgd(cuoptimBackend_t b) { run_mixed(b, CUOPTIM_SGD, SGD_MIXED_F32); }
static void mixed_rmsprop(cuoptimBackend_t b) { run_mixed(b, CUOPTIM_RMSPROP, RMSPROP_MIXED_F32); }
static void mixed_adagrad(cuoptimBackend_t b) { run_mixed(b, CUOPTIM_ADAGRAD, ADAGRAD_MIXED_F32); }
static void mixed_adadelta(cuoptimBackend_t b) { run_mixed(b, CUOPTIM_ADADELTA, ADADELTA_MIXED_F32); }
static void mixed_adam(cuoptimBackend_t b) { run_mixed(b, CUOPTIM_ADAM, ADAM_MIXED_F32); }
static void mixed_adamw(cuoptimBackend_t b) { run_mixed(b, CUOPTIM_ADAMW, ADAMW_MIXED_F32); }
static void mixed_adamax(cuoptimBackend_t b) { run_mixed(b, CUOPTIM_ADAMAX, ADAMAX_MIXED_F32); }
static void mixed_nadam(cuoptimBackend_t b) { run_mixed(b, CUOPTIM_NADAM, NADAM_MIXED_F32); }
static void mixed_lion(cuoptimBackend_t b) { run_mixed(b, CUOPTIM_LION, LION_MIXED_F32); }
static void mixed_lamb(cuoptimBackend_t b) { run_mixed(b, CUOPTIM_LAMB, LAMB_MIXED_F32); }
static void mixed_ftrl(cuoptimBackend_t b) { run_mixed(b, CUOPTIM_FTRL, FTRL_MIXED_F32); }
BOTH_BACKENDS(sgd_mixed_sign_steps_match_keras_float32, mixed_sgd)
BOTH_BACKENDS(rmsprop_mixed_sign_steps_match_keras_float32, mixed_rmsprop)
BOTH_BACKENDS(adagrad_mixed_sign_steps_match_keras_float32, mixed_adagrad)
BOTH_BACKENDS(adadelta_mixed_sign_steps_match_keras_float32, mixed_adadelta)
BOTH_BACKENDS(adam_mixed_sign_steps_match_keras_float32, mixed_adam)
BOTH_BACKENDS(adamw_mixed_sign_steps_match_keras_float32, mixed_adamw)
BOTH_BACKENDS(adamax_mixed_sign_steps_match_keras_float32, mixed_adamax)
BOTH_BACKENDS(nadam_mixed_sign_steps_match_keras_float32, mixed_nadam)
BOTH_BACKENDS(lion_mixed_sign_steps_match_keras_float32, mixed_lion)
BOTH_BACKENDS(lamb_mixed_sign_steps_match_keras_float32, mixed_lamb)
BOTH_BACKENDS(ftrl_mixed_sign_steps_match_keras_float32, mixed_ftrl)

/* =================================================================================================
 * keras/src/optimizers/optimizer_test.py (base-class behaviour)
 * ================================================================================================= */

static const float V22[4] = {1.0f, 2.0f, 3.0f, 4.0f}; /* [[1, 2], [3, 4]] */
static const float ONES4[4] = {1.0f, 1.0f, 1.0f, 1.0f};

/* test_iterations_counter: Adam(learning_rate=1.0): iterations 0, 1, 2. */
static void optimizer_iterations_counter(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_ADAM, 1.0);
  test_rig_t r;
  test_rig_init(&r, &c, b);
  test_rig_add(&r, "v", V22, 4);
  cr_assert_eq(test_iterations(r.opt), 0);
  rig_apply1(&r, ONES4);
  cr_assert_eq(test_iterations(r.opt), 1);
  rig_apply1(&r, ONES4);
  cr_assert_eq(test_iterations(r.opt), 2);
  test_rig_destroy(&r);
}

/* test_empty_gradients: no valid gradient -> ValueError ("No gradients provided for any
 * variable."); a None gradient is filtered and the other variable is updated. */
static void optimizer_empty_gradients(cuoptimBackend_t b) {
  test_require_backend(b);
  static const float v0[4] = {3.0f, 4.0f, 5.0f, 6.0f};
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 1.0);
  test_rig_t r;
  test_rig_init(&r, &c, b);
  test_rig_add(&r, "v", v0, 4);
  const float *none[1] = {NULL};
  cuoptimStatus_t status = test_rig_try_apply_all(&r, none);
  cr_assert_eq(status, CUOPTIM_STATUS_INVALID_VALUE, "all-None gradients: got %s", cuoptimGetStatusString(status));
  cr_assert_neq(cuoptimGetLastErrorMessage()[0], '\0');
  cr_assert_eq(test_iterations(r.opt), 0);
  test_rig_destroy(&r);

  test_rig_init(&r, &c, b);
  test_rig_add(&r, "v", v0, 4);
  test_rig_add(&r, "v2", v0, 4);
  const float *grads[2] = {NULL, ONES4};
  rig_apply(&r, grads);
  float got[4];
  static const float v2_want[4] = {2.0f, 3.0f, 4.0f, 5.0f};
  test_rig_get(&r, 0, got);
  expect_close(got, v0, 4, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, "variable without gradient");
  test_rig_get(&r, 1, got);
  expect_close(got, v2_want, 4, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, "variable with gradient");
  cr_assert_eq(test_iterations(r.opt), 1);
  test_rig_destroy(&r);
}

/* test_clip_args: each clip option alone is kept; two together -> ValueError. */
static void optimizer_clip_args(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 1.0), got;
  cuoptimOptimizer_t opt = NULL;
  c.clipnorm = 0.1;
  OK(cuoptimCreate(&opt, &c, b, 0));
  OK(cuoptimGetConfig(opt, &got));
  cr_assert_eq(got.clipnorm, 0.1);
  OK(cuoptimDestroy(opt));
  c = test_config_lr(CUOPTIM_SGD, 1.0);
  c.clipvalue = 0.1;
  OK(cuoptimCreate(&opt, &c, b, 0));
  OK(cuoptimGetConfig(opt, &got));
  cr_assert_eq(got.clipvalue, 0.1);
  OK(cuoptimDestroy(opt));
  c = test_config_lr(CUOPTIM_SGD, 1.0);
  c.global_clipnorm = 0.1;
  OK(cuoptimCreate(&opt, &c, b, 0));
  OK(cuoptimGetConfig(opt, &got));
  cr_assert_eq(got.global_clipnorm, 0.1);
  OK(cuoptimDestroy(opt));

  c = test_config_lr(CUOPTIM_SGD, 1.0);
  c.clipnorm = 0.1;
  c.clipvalue = 0.1;
  cr_assert_eq(cuoptimCreate(&opt, &c, b, 0), CUOPTIM_STATUS_INVALID_VALUE);
  cr_assert_neq(cuoptimGetLastErrorMessage()[0], '\0');
  c = test_config_lr(CUOPTIM_SGD, 1.0);
  c.clipnorm = 0.1;
  c.global_clipnorm = 0.1;
  cr_assert_eq(cuoptimCreate(&opt, &c, b, 0), CUOPTIM_STATUS_INVALID_VALUE);
  cr_assert_neq(cuoptimGetLastErrorMessage()[0], '\0');
}

/* test_clip_norm / test_clip_value / test_global_clip_norm on SGD: Keras checks the clipped
 * gradient; with learning_rate=1.0 and w = 0 the variable after one step is minus that gradient. */
static void run_sgd_clip(cuoptimBackend_t b, int which, const float g[2], const float clipped[2]) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 1.0);
  if (which == 0) c.clipnorm = 1.0;
  if (which == 1) c.clipvalue = 1.0;
  if (which == 2) c.global_clipnorm = 1.0;
  static const float zeros[2] = {0.0f, 0.0f};
  test_rig_t r;
  test_rig_init(&r, &c, b);
  test_rig_add(&r, "v", zeros, 2);
  rig_apply1(&r, g);
  float got[2];
  test_rig_get(&r, 0, got);
  float want[2] = {-clipped[0], -clipped[1]};
  expect_close(got, want, 2, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, "SGD clipped gradient");
  test_rig_destroy(&r);
}
static void optimizer_clip_norm(cuoptimBackend_t b) {
  static const float g[2] = {100.0f, 100.0f};
  const float clipped[2] = {(float)(sqrt(2.0) / 2), (float)(sqrt(2.0) / 2)}; /* [2**0.5 / 2, 2**0.5 / 2] */
  run_sgd_clip(b, 0, g, clipped);
}
static void optimizer_clip_value(cuoptimBackend_t b) {
  static const float g[2] = {100.0f, 100.0f};
  static const float clipped[2] = {1.0f, 1.0f};
  run_sgd_clip(b, 1, g, clipped);
}
static void optimizer_global_clip_norm(cuoptimBackend_t b) {
  static const float g[2] = {50.0f, 100.0f};
  double norm = sqrt(50.0 * 50.0 + 100.0 * 100.0); /* np.linalg.norm(grad) */
  const float clipped[2] = {(float)(50.0 / norm), (float)(100.0 / norm)};
  run_sgd_clip(b, 2, g, clipped);
}

/* test_ema: SGD(learning_rate=1.0, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3). */
static void optimizer_ema(cuoptimBackend_t b) {
  test_require_backend(b);
  static const float v0[4] = {3.0f, 4.0f, 5.0f, 6.0f};
  static const float want_v[3][4] = {{2, 3, 4, 5}, {1, 2, 3, 4}, {1.71f, 2.71f, 3.71f, 4.71f}};
  static const float want_a[3][4] = {{2, 3, 4, 5}, {1.9f, 2.9f, 3.9f, 4.9f}, {1.71f, 2.71f, 3.71f, 4.71f}};
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 1.0);
  c.use_ema = 1;
  c.ema_momentum = 0.9;
  c.ema_overwrite_frequency = 3;
  test_rig_t r;
  test_rig_init(&r, &c, b);
  test_rig_add(&r, "v", v0, 4);
  for (int s = 0; s < 3; s++) {
    rig_apply1(&r, ONES4);
    float v[4], a[4];
    test_rig_get(&r, 0, v);
    rig_weight(&r, "v_average", a, 4);
    char what[64];
    snprintf(what, sizeof what, "SGD EMA: variable after step %d", s + 1);
    expect_close(v, want_v[s], 4, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, what);
    snprintf(what, sizeof what, "SGD EMA: average after step %d", s + 1);
    expect_close(a, want_a[s], 4, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, what);
  }
  test_rig_destroy(&r);
}

/* test_ema_with_model_fit: Dense(2, kernel_initializer="ones", use_bias=False), x = [[1]],
 * y = [[0]], loss "mse", SGD(learning_rate=0.1, use_ema=True, ema_momentum=0.9), 2 epochs of one
 * batch: average and (finalized) kernel are [[0.891, 0.891]] (atol=1e-5). */
static void optimizer_ema_with_model_fit(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 0.1);
  c.use_ema = 1;
  c.ema_momentum = 0.9;
  test_rig_t r;
  test_rig_init(&r, &c, b);
  static const float kernel[2] = {1.0f, 1.0f}, x[1] = {1.0f}, y[2] = {0.0f, 0.0f};
  test_rig_add(&r, "kernel", kernel, 2);
  dense_fit_t fit = {.rig = &r, .rows = 1, .cols = 2, .x = x, .y = y};
  for (int epoch = 0; epoch < 2; epoch++) OK(cuoptimMinimize(r.opt, dense_mse_gradient, &fit, NULL));
  OK(cuoptimFinalizeVariableValues(r.opt, NULL));
  static const float want[2] = {0.891f, 0.891f};
  float got[2];
  rig_weight(&r, "kernel_average", got, 2);
  expect_close(got, want, 2, KERAS_DEFAULT_TOL, 1e-5, "EMA average after fit");
  test_rig_get(&r, 0, got);
  expect_close(got, want, 2, KERAS_DEFAULT_TOL, 1e-5, "kernel after fit (finalized)");
  test_rig_destroy(&r);
}

/* test_static_loss_scaling: SGD(learning_rate=1.0, loss_scale_factor=1024.0) with gradients
 * [[1, 2], [3, 4]] * 1024 on v = [[1, 2], [3, 4]] -> zeros. */
static void optimizer_static_loss_scaling(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 1.0);
  c.loss_scale_factor = 1024.0;
  test_rig_t r;
  test_rig_init(&r, &c, b);
  test_rig_add(&r, "v", V22, 4);
  float g[4];
  for (int i = 0; i < 4; i++) g[i] = V22[i] * 1024.0f;
  rig_apply1(&r, g);
  float got[4];
  static const float zeros[4] = {0, 0, 0, 0};
  test_rig_get(&r, 0, got);
  expect_close(got, zeros, 4, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, "static loss scaling");
  cuoptimConfig_t back;
  OK(cuoptimGetConfig(r.opt, &back));
  cr_assert_eq(back.loss_scale_factor, 1024.0); /* scale_loss(1.0) == 1024.0 */
  test_rig_destroy(&r);
}

/* test_set_weights: Adam() steps once on x = [[1, 2], [3, 4]] with the same gradient; a second
 * Adam() built on x receives set_weights(optimizer_1.variables): every variable equal. */
static void optimizer_set_weights(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = test_config(CUOPTIM_ADAM);
  test_rig_t r1, r2;
  test_rig_init(&r1, &c, b);
  test_rig_add(&r1, "x", V22, 4);
  rig_apply1(&r1, V22);
  test_rig_init(&r2, &c, b);
  test_rig_add(&r2, "x", V22, 4);
  int n1 = 0, n2 = 0;
  OK(cuoptimGetWeightCount(r1.opt, &n1));
  OK(cuoptimGetWeightCount(r2.opt, &n2));
  cr_assert_eq(n1, n2);
  double values[8], other[8];
  for (int i = 0; i < n1; i++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(r1.opt, i, &info));
    cr_assert_leq(info.count, 8);
    OK(cuoptimGetWeights(r1.opt, i, values, info.count));
    OK(cuoptimSetWeights(r2.opt, i, values, info.count));
  }
  for (int i = 0; i < n1; i++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(r1.opt, i, &info));
    OK(cuoptimGetWeights(r1.opt, i, values, info.count));
    OK(cuoptimGetWeights(r2.opt, i, other, info.count));
    for (size_t k = 0; k < info.count; k++)
      cr_assert_eq(values[k], other[k], "entry %d (%s)[%zu]: %.9g vs %.9g", i, info.name, k, values[k], other[k]);
  }
  cr_assert_eq(test_iterations(r2.opt), 1);
  test_rig_destroy(&r1);
  test_rig_destroy(&r2);
}

/* test_gradient_accumulation: SGD(learning_rate=1.0, gradient_accumulation_steps=3), gradients of
 * ones on v = [[1, 2], [3, 4]]; v, the accumulator, _iterations and iterations after each apply. */
static void optimizer_gradient_accumulation(cuoptimBackend_t b) {
  test_require_backend(b);
  static const float want_v[4][4] = {{1, 2, 3, 4}, {1, 2, 3, 4}, {0, 1, 2, 3}, {0, 1, 2, 3}};
  static const float want_acc[4] = {1.0f, 2.0f, 0.0f, 1.0f};
  static const int64_t want_raw[4] = {1, 2, 3, 4}, want_iterations[4] = {0, 0, 1, 1};
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 1.0);
  c.gradient_accumulation_steps = 3;
  test_rig_t r;
  test_rig_init(&r, &c, b);
  test_rig_add(&r, "v", V22, 4);
  cuoptimConfig_t back;
  OK(cuoptimGetConfig(r.opt, &back));
  cr_assert_eq(back.gradient_accumulation_steps, 3);
  for (int s = 0; s < 4; s++) {
    rig_apply1(&r, ONES4);
    float v[4], acc[4], acc_want[4] = {want_acc[s], want_acc[s], want_acc[s], want_acc[s]};
    char what[64];
    test_rig_get(&r, 0, v);
    snprintf(what, sizeof what, "accumulation: v after apply %d", s + 1);
    expect_close(v, want_v[s], 4, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, what);
    rig_weight(&r, "v_gradient_accumulator", acc, 4);
    snprintf(what, sizeof what, "accumulation: accumulator after apply %d", s + 1);
    expect_close(acc, acc_want, 4, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, what);
    cr_assert_eq(rig_weight_scalar(&r, "iteration"), (double)want_raw[s], "_iterations after apply %d", s + 1);
    cr_assert_eq(test_iterations(r.opt), want_iterations[s], "iterations after apply %d", s + 1);
  }
  test_rig_destroy(&r);
}

/* test_gradient_accumulation_with_weigth_decay (parameterized over optimizers): weight_decay=0.05;
 * optimizer1 steps with the mean of 3 random gradients, optimizer3 (gradient_accumulation_steps=3)
 * with the 3 gradients one by one; 8 epochs; variables [[0.9], [0.5]] end equal (assertAllClose).
 * Keras draws np.random.random; this uses a fixed pseudo-random sequence in [0, 1). */
static float next_random(uint32_t *state) {
  *state = *state * 1664525u + 1013904223u;
  return (float)(*state >> 8) / 16777216.0f;
}

static void run_accumulation_with_weight_decay(cuoptimBackend_t b, cuoptimOptimizerKind_t kind) {
  test_require_backend(b);
  cuoptimConfig_t c1 = test_config(kind);
  c1.weight_decay = 0.05;
  cuoptimConfig_t c3 = c1;
  c3.gradient_accumulation_steps = 3;
  static const float v0[2] = {0.9f, 0.5f};
  test_rig_t r1, r3;
  test_rig_init(&r1, &c1, b);
  test_rig_add(&r1, "variable", v0, 2);
  test_rig_init(&r3, &c3, b);
  test_rig_add(&r3, "variable", v0, 2);
  uint32_t seed = 12345u + (uint32_t)kind;
  for (int epoch = 0; epoch < 8; epoch++) {
    float g3[3][2], mean[2];
    for (int k = 0; k < 3; k++)
      for (int i = 0; i < 2; i++) g3[k][i] = next_random(&seed);
    for (int i = 0; i < 2; i++) {
      volatile float sum = g3[0][i] + g3[1][i];
      sum = sum + g3[2][i];
      mean[i] = sum / 3.0f; /* grads3.mean(axis=0) in float32 */
    }
    rig_apply1(&r1, mean);
    for (int k = 0; k < 3; k++) rig_apply1(&r3, g3[k]);
  }
  float v1[2], v3[2];
  test_rig_get(&r1, 0, v1);
  test_rig_get(&r3, 0, v3);
  char what[96];
  snprintf(what, sizeof what, "%s: accumulated (3 micro-steps) vs mean gradient (%s)", cuoptimOptimizerName(kind),
           test_backend_name(b));
  expect_close(v3, v1, 2, KERAS_DEFAULT_TOL, KERAS_DEFAULT_TOL, what);
  cr_assert_eq(test_iterations(r1.opt), 8);
  cr_assert_eq(test_iterations(r3.opt), 8);
  test_rig_destroy(&r1);
  test_rig_destroy(&r3);
}
static void accumulation_wd_adam(cuoptimBackend_t b) { run_accumulation_with_weight_decay(b, CUOPTIM_ADAM); }
static void accumulation_wd_sgd(cuoptimBackend_t b) { run_accumulation_with_weight_decay(b, CUOPTIM_SGD); }
static void accumulation_wd_adamw(cuoptimBackend_t b) { run_accumulation_with_weight_decay(b, CUOPTIM_ADAMW); }
static void accumulation_wd_adagrad(cuoptimBackend_t b) { run_accumulation_with_weight_decay(b, CUOPTIM_ADAGRAD); }
static void accumulation_wd_rmsprop(cuoptimBackend_t b) { run_accumulation_with_weight_decay(b, CUOPTIM_RMSPROP); }
static void accumulation_wd_adadelta(cuoptimBackend_t b) { run_accumulation_with_weight_decay(b, CUOPTIM_ADADELTA); }
static void accumulation_wd_adamax(cuoptimBackend_t b) { run_accumulation_with_weight_decay(b, CUOPTIM_ADAMAX); }
static void accumulation_wd_lion(cuoptimBackend_t b) { run_accumulation_with_weight_decay(b, CUOPTIM_LION); }
static void accumulation_wd_nadam(cuoptimBackend_t b) { run_accumulation_with_weight_decay(b, CUOPTIM_NADAM); }
static void accumulation_wd_ftrl(cuoptimBackend_t b) { run_accumulation_with_weight_decay(b, CUOPTIM_FTRL); }
/* Lamb is not in Keras's parameter list (it is not in optimizers.get()); it obeys the same rule. */
static void accumulation_wd_lamb(cuoptimBackend_t b) { run_accumulation_with_weight_decay(b, CUOPTIM_LAMB); }

BOTH_BACKENDS(optimizer_iterations_counter_matches_keras, optimizer_iterations_counter)
BOTH_BACKENDS(optimizer_empty_gradients_match_keras, optimizer_empty_gradients)
BOTH_BACKENDS(optimizer_clip_args_match_keras, optimizer_clip_args)
BOTH_BACKENDS(optimizer_clip_norm_matches_keras, optimizer_clip_norm)
BOTH_BACKENDS(optimizer_clip_value_matches_keras, optimizer_clip_value)
BOTH_BACKENDS(optimizer_global_clip_norm_matches_keras, optimizer_global_clip_norm)
BOTH_BACKENDS(optimizer_ema_matches_keras, optimizer_ema)
BOTH_BACKENDS(optimizer_ema_with_model_fit_matches_keras, optimizer_ema_with_model_fit)
BOTH_BACKENDS(optimizer_static_loss_scaling_matches_keras, optimizer_static_loss_scaling)
BOTH_BACKENDS(optimizer_set_weights_matches_keras, optimizer_set_weights)
BOTH_BACKENDS(optimizer_gradient_accumulation_matches_keras, optimizer_gradient_accumulation)
BOTH_BACKENDS(optimizer_gradient_accumulation_with_weight_decay_adam, accumulation_wd_adam)
BOTH_BACKENDS(optimizer_gradient_accumulation_with_weight_decay_sgd, accumulation_wd_sgd)
BOTH_BACKENDS(optimizer_gradient_accumulation_with_weight_decay_adamw, accumulation_wd_adamw)
BOTH_BACKENDS(optimizer_gradient_accumulation_with_weight_decay_adagrad, accumulation_wd_adagrad)
BOTH_BACKENDS(optimizer_gradient_accumulation_with_weight_decay_rmsprop, accumulation_wd_rmsprop)
BOTH_BACKENDS(optimizer_gradient_accumulation_with_weight_decay_adadelta, accumulation_wd_adadelta)
BOTH_BACKENDS(optimizer_gradient_accumulation_with_weight_decay_adamax, accumulation_wd_adamax)
BOTH_BACKENDS(optimizer_gradient_accumulation_with_weight_decay_lion, accumulation_wd_lion)
BOTH_BACKENDS(optimizer_gradient_accumulation_with_weight_decay_nadam, accumulation_wd_nadam)
BOTH_BACKENDS(optimizer_gradient_accumulation_with_weight_decay_ftrl, accumulation_wd_ftrl)
BOTH_BACKENDS(optimizer_gradient_accumulation_with_weight_decay_lamb, accumulation_wd_lamb)

/* Not ported (no equivalent in the cuoptim API): test_constraints_are_applied (variable
 * constraints), test_callable_learning_rate (a Python callable), test_overwrite_with_gradient*
 * (float8 overwrite_with_gradient variables), test_setting_lr_to_callable_untracks_lr_var
 * (replacing the learning rate by a schedule after creation), test_get_method /
 * test_pickleable_optimizers / test_optimizer_auto_naming (Python object model; the config side is
 * covered by the JSON tests), test_tf_checkpointing / test_mixed_with_tf_variables (TF only). */

/* =================================================================================================
 * keras/src/optimizers/loss_scale_optimizer_test.py: LossScaleOptimizer(SGD(learning_rate=0.5))
 * ================================================================================================= */

static const float LSO_W0[4] = {1.0f, 2.0f, 3.0f, 4.0f};
static const float LSO_G[4] = {1.0f, 6.0f, 7.0f, 2.0f};

static cuoptimConfig_t lso_config(double initial_scale, int64_t dynamic_growth_steps) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_SGD, 0.5);
  c.dynamic_loss_scale = 1;
  c.initial_scale = initial_scale;
  c.dynamic_growth_steps = dynamic_growth_steps;
  return c;
}

static float rig_loss_scale(test_rig_t *r) {
  float scale = NAN;
  OK(cuoptimGetLossScale(r->opt, &scale));
  return scale;
}

/* test_finite_step (and test_apply_with_no_vars, the same step through apply(grads)): gradients
 * [1, 6, 7, 2] * initial_scale -> [0.5, -1.0, -0.5, 3.0]. */
static void lso_finite_step(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = lso_config(32768.0, 2000); /* Keras's defaults: 2**15, 2000 */
  cuoptimConfig_t defaults = test_config(CUOPTIM_SGD);
  cr_assert_eq(defaults.initial_scale, 32768.0);
  cr_assert_eq(defaults.dynamic_growth_steps, 2000);
  test_rig_t r;
  test_rig_init(&r, &c, b);
  test_rig_add(&r, "variable", LSO_W0, 4);
  float g[4];
  for (int i = 0; i < 4; i++) g[i] = LSO_G[i] * 32768.0f;
  rig_apply1(&r, g);
  float got[4];
  static const float want[4] = {0.5f, -1.0f, -0.5f, 3.0f};
  test_rig_get(&r, 0, got);
  expect_close(got, want, 4, KERAS_SINGLE_STEP_TOL, KERAS_SINGLE_STEP_TOL, "LossScaleOptimizer finite step");
  test_rig_destroy(&r);
}

/* test_infinite_step: gradients [inf, inf, inf, inf] -> the variable is unchanged. */
static void lso_infinite_step(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = lso_config(32768.0, 2000);
  test_rig_t r;
  test_rig_init(&r, &c, b);
  test_rig_add(&r, "variable", LSO_W0, 4);
  const float g[4] = {INFINITY, INFINITY, INFINITY, INFINITY};
  rig_apply1(&r, g);
  float got[4];
  test_rig_get(&r, 0, got);
  expect_close(got, LSO_W0, 4, KERAS_SINGLE_STEP_TOL, KERAS_SINGLE_STEP_TOL, "LossScaleOptimizer infinite step");
  cr_assert_eq(test_iterations(r.opt), 0, "a skipped step does not count");
  test_rig_destroy(&r);
}

/* test_downscaling: initial_scale=400, four infinite steps -> scale_loss(1.0) == 25. */
static void lso_downscaling(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = lso_config(400.0, 2000);
  test_rig_t r;
  test_rig_init(&r, &c, b);
  test_rig_add(&r, "variable", LSO_W0, 4);
  const float g[4] = {INFINITY, INFINITY, INFINITY, INFINITY};
  for (int i = 0; i < 4; i++) rig_apply1(&r, g);
  cr_assert_float_eq(rig_loss_scale(&r), 25.0f, 1e-6f, "scale after 4 infinite steps");
  test_rig_destroy(&r);
}

/* test_upscaling: initial_scale=2.0, dynamic_growth_steps=2, 8 finite steps -> 32. */
static void lso_upscaling(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = lso_config(2.0, 2);
  test_rig_t r;
  test_rig_init(&r, &c, b);
  test_rig_add(&r, "variable", LSO_W0, 4);
  for (int i = 0; i < 8; i++) rig_apply1(&r, LSO_G);
  cr_assert_float_eq(rig_loss_scale(&r), 32.0f, 1e-6f, "scale after 8 finite steps");
  test_rig_destroy(&r);
}

/* test_iterations_update: iterations == i + 1 after each finite step. */
static void lso_iterations_update(cuoptimBackend_t b) {
  test_require_backend(b);
  cuoptimConfig_t c = lso_config(32768.0, 2000);
  test_rig_t r;
  test_rig_init(&r, &c, b);
  test_rig_add(&r, "variable", LSO_W0, 4);
  cr_assert_eq(test_iterations(r.opt), 0);
  for (int i = 0; i < 3; i++) {
    rig_apply1(&r, LSO_G);
    cr_assert_eq(test_iterations(r.opt), i + 1);
  }
  test_rig_destroy(&r);
}

BOTH_BACKENDS(loss_scale_optimizer_finite_step_matches_keras, lso_finite_step)
BOTH_BACKENDS(loss_scale_optimizer_infinite_step_matches_keras, lso_infinite_step)
BOTH_BACKENDS(loss_scale_optimizer_downscaling_matches_keras, lso_downscaling)
BOTH_BACKENDS(loss_scale_optimizer_upscaling_matches_keras, lso_upscaling)
BOTH_BACKENDS(loss_scale_optimizer_iterations_update_matches_keras, lso_iterations_update)

/* Not ported: test_finite_step_with_inner_loss_scale (Keras's LossScaleOptimizer silently sets the
 * inner optimizer's loss_scale_factor to None; cuoptim's contract rejects the combination, which
 * test_api.c checks), test_finite_step_with_overwrite (overwrite_with_gradient), and the
 * constructor-argument and serialization tests (Python API; the JSON side is tested elsewhere). */

/* ---- Muon (muon_test.py) ---------------------------------------------------------------------
 * Keras's tests call update_step, zeropower_via_newtonschulz5, _apply_weight_decay and lr_adjust
 * directly, with loose tolerances; here each goes through a whole step (whose other parts are
 * made neutral) and is compared with real Keras 3.15.1's float32 values of that step. The
 * Newton-Schulz products sum in another order than XLA's (and, on a GPU, cuBLAS's in its own):
 * MUON_RTOL and MUON_ATOL allow for it. Each test runs on both backends (golden, golden_cuda). */

#define MUON_RTOL 1e-5
#define MUON_ATOL 1e-6

typedef struct {
  const char *name;
  int rank;
  int64_t dims[2];
  float value[8];
  float grad[8];
} muon_var_t;

static size_t muon_count(const muon_var_t *v) {
  size_t n = 1;
  for (int d = 0; d < v->rank; d++) n *= (size_t)v->dims[d];
  return n;
}

/* One step of Muon on `backend` over `n` variables (in that backend's memory); their values after
 * it in v[].value. muon_done destroys the optimizer and frees the buffers. */
typedef struct {
  cuoptimOptimizer_t opt;
  cuoptimBackend_t backend;
  int n;
  float *param[4], *grad[4];
} muon_run_t;

static muon_run_t muon_step(cuoptimBackend_t backend, const cuoptimConfig_t *c, muon_var_t *v, int n) {
  test_require_backend(backend);
  muon_run_t run = {NULL, backend, n, {NULL}, {NULL}};
  OK(cuoptimCreate(&run.opt, c, backend, 0));
  cuoptimGradient_t grads[4];
  for (int i = 0; i < n; i++) {
    cuoptimVariable_t id;
    run.param[i] = test_mem_from(backend, v[i].value, muon_count(&v[i]));
    run.grad[i] = test_mem_from(backend, v[i].grad, muon_count(&v[i]));
    OK(cuoptimAddVariableWithShape(run.opt, v[i].name, run.param[i], CUOPTIM_FLOAT32, v[i].rank, v[i].dims, &id));
    grads[i] = (cuoptimGradient_t){.variable = id, .grad = run.grad[i], .dtype = CUOPTIM_FLOAT32};
  }
  OK(cuoptimApplyGradients(run.opt, n, grads, NULL));
  OK(cuoptimSynchronize(run.opt));
  for (int i = 0; i < n; i++) test_mem_download(backend, v[i].value, run.param[i], muon_count(&v[i]) * sizeof(float));
  return run;
}

static void muon_done(muon_run_t *run) {
  OK(cuoptimDestroy(run->opt));
  for (int i = 0; i < run->n; i++) {
    test_mem_free(run->backend, run->param[i]);
    test_mem_free(run->backend, run->grad[i]);
  }
}

static void muon_expect(const muon_var_t *v, const float *want, const char *what) {
  expect_close(v->value, want, muon_count(v), MUON_RTOL, MUON_ATOL, what);
}

/* test_Newton_Schulz: from w = 0 with lr 1, no momentum lookahead (nesterov False), no
 * rms_rate scaling and no decay, the step is minus the orthogonalized gradient. */
static void run_muon_newton_schulz(cuoptimBackend_t backend) {
  static const float want[4] = {0.4419020414352417f, -0.6455919742584229f, -0.7281589508056641f,
                                -0.29695582389831543f};
  cuoptimConfig_t c = test_config_lr(CUOPTIM_MUON, 1.0);
  c.nesterov = 0;
  c.rms_rate = CUOPTIM_NONE;
  c.weight_decay = CUOPTIM_NONE;
  muon_var_t v = {"w", 2, {2, 2}, {0, 0, 0, 0}, {0.2499f, 0.9105f, 0.2655f, 0.8824f}};
  muon_run_t run = muon_step(backend, &c, &v, 1);
  muon_done(&run);
  muon_expect(&v, want, "minus Newton-Schulz of the gradient");
}
BOTH_BACKENDS(muon_newton_schulz_matches_keras, run_muon_newton_schulz)

/* test_muon_single_step: lr 0.5, weight_decay 0. */
static void run_muon_single_step(cuoptimBackend_t backend) {
  static const float want[4] = {0.988774836063385f, 1.8870526552200317f, 2.8734278678894043f, 3.9703502655029297f};
  cuoptimConfig_t c = test_config_lr(CUOPTIM_MUON, 0.5);
  c.weight_decay = 0.0;
  muon_var_t v = {"w", 2, {2, 2}, {1, 2, 3, 4}, {1, 6, 7, 2}};
  muon_run_t run = muon_step(backend, &c, &v, 1);
  muon_done(&run);
  muon_expect(&v, want, "Muon single step");
}
BOTH_BACKENDS(muon_single_step_matches_keras, run_muon_single_step)

/* test_adamw_single_step: a rank-1 variable takes the AdamW path (adam_weight_decay 0.004 here,
 * as Keras's apply has it; update_step alone gives 0.5, 1.5, 2.5, 3.5). */
static void run_muon_adamw_single_step(cuoptimBackend_t backend) {
  static const float want[4] = {0.4980049729347229f, 1.4960036277770996f, 2.4940035343170166f, 3.492004156112671f};
  cuoptimConfig_t c = test_config_lr(CUOPTIM_MUON, 0.5);
  muon_var_t v = {"test_vars", 1, {4, 0}, {1, 2, 3, 4}, {1, 6, 7, 2}};
  muon_run_t run = muon_step(backend, &c, &v, 1);
  muon_done(&run);
  muon_expect(&v, want, "Muon's AdamW path, one step");
  c.adam_weight_decay = CUOPTIM_NONE;
  muon_var_t u = {"test_vars", 1, {4, 0}, {1, 2, 3, 4}, {1, 6, 7, 2}};
  static const float no_decay[4] = {0.5f, 1.5f, 2.5f, 3.5f};
  muon_run_t run_u = muon_step(backend, &c, &u, 1);
  muon_done(&run_u);
  expect_close(u.value, no_decay, 4, 1e-4, 1e-4, "without decay (Keras's update_step)");
}
BOTH_BACKENDS(muon_adamw_single_step_matches_keras, run_muon_adamw_single_step)

/* Whether `name` has a velocity slot: the AdamW path's mark. */
static int muon_has_velocity(cuoptimOptimizer_t opt, const char *name) {
  char slot[CUOPTIM_MAX_WEIGHT_NAME];
  snprintf(slot, sizeof slot, "%s_velocity", name);
  for (char *c = slot; *c != '\0'; c++)
    if (*c == '/') *c = '_'; /* Keras's slot name of a variable path */
  return test_weight_index(opt, slot) >= 0;
}

/* test_should_use_adamw: exclude_layers ["var"] finds "variable"; an embedding's weights and
 * non-2-D variables take the AdamW path; a Dense kernel takes Muon's. The state is Keras's:
 * a momentum for every variable, a velocity for the AdamW path's only, interleaved. */
static void run_muon_should_use_adamw(cuoptimBackend_t backend) {
  cuoptimConfig_t c = test_config(CUOPTIM_MUON);
  c.num_exclude_layers = 1;
  snprintf(c.exclude_layers[0], sizeof c.exclude_layers[0], "var");
  muon_var_t v[4] = {{"variable", 2, {2, 2}, {1, 2, 3, 4}, {1, 1, 1, 1}},
                     {"embedding/embeddings", 2, {2, 2}, {1, 2, 3, 4}, {1, 1, 1, 1}},
                     {"dense/kernel", 2, {2, 2}, {1, 2, 3, 4}, {1, 1, 1, 1}},
                     {"dense/bias", 1, {2, 0}, {1, 2}, {1, 1}}};
  muon_run_t run = muon_step(backend, &c, v, 4);
  cuoptimOptimizer_t opt = run.opt;
  cr_expect(muon_has_velocity(opt, "variable"), "exclude_layers [\"var\"] sends \"variable\" to AdamW");
  cr_expect(muon_has_velocity(opt, "embedding/embeddings"), "an embedding takes the AdamW path");
  cr_expect(!muon_has_velocity(opt, "dense/kernel"), "a Dense kernel takes the Muon path");
  cr_expect(muon_has_velocity(opt, "dense/bias"), "a rank-1 variable takes the AdamW path");
  static const char *const order[] = {"iteration", "learning_rate", "variable_momentum", "variable_velocity",
                                      "embedding_embeddings_momentum", "embedding_embeddings_velocity",
                                      "dense_kernel_momentum", "dense_bias_momentum", "dense_bias_velocity"};
  int count = 0;
  OK(cuoptimGetWeightCount(opt, &count));
  cr_assert_eq(count, 9, "%d state entries", count);
  for (int i = 0; i < count; i++) {
    cuoptimWeightInfo_t info;
    OK(cuoptimGetWeightInfo(opt, i, &info));
    cr_expect_str_eq(info.name, order[i], "entry %d", i);
  }
  muon_done(&run);
  c.num_exclude_layers = 0;
  muon_var_t plain = {"variable", 2, {2, 2}, {1, 2, 3, 4}, {1, 1, 1, 1}};
  run = muon_step(backend, &c, &plain, 1);
  cr_expect(!muon_has_velocity(run.opt, "variable"), "without exclude_layers \"variable\" takes the Muon path");
  muon_done(&run);
}
BOTH_BACKENDS(muon_should_use_adamw_matches_keras, run_muon_should_use_adamw)

/* test_clip_norm and test_clip_value: the clipped gradient [100, 100] -> sqrt(2)/2 (clipnorm 1) or
 * 1 (clipvalue 1), seen in the AdamW path's first momentum, (1 - 0.9) times it. */
static void run_muon_clip(cuoptimBackend_t backend) {
  for (int value = 0; value < 2; value++) {
    cuoptimConfig_t c = test_config(CUOPTIM_MUON);
    if (value)
      c.clipvalue = 1.0;
    else
      c.clipnorm = 1.0;
    muon_var_t v = {"w", 1, {2, 0}, {1, 2}, {100, 100}};
    muon_run_t run = muon_step(backend, &c, &v, 1);
    float m[2];
    rig_weight(&(test_rig_t){.opt = run.opt, .backend = backend}, "w_momentum", m, 2);
    float clipped = value ? 1.0f : 0.707106769f, want = (float)(1.0 - 0.9) * clipped;
    const float wants[2] = {want, want};
    expect_close(m, wants, 2, 1e-6, 1e-7, value ? "clipvalue" : "clipnorm");
    muon_done(&run);
  }
}
BOTH_BACKENDS(muon_clip_matches_keras, run_muon_clip)

/* test_muon_weight_decay and test_adamw_weight_decay: zero gradients at lr 1 leave only the decay,
 * weight_decay on the Muon path, adam_weight_decay on the AdamW path (a scalar here). */
static void run_muon_weight_decay_per_path(cuoptimBackend_t backend) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_MUON, 1.0);
  c.weight_decay = 0.01;
  c.adam_weight_decay = 0.02;
  muon_var_t v[2] = {{"matrix", 2, {2, 2}, {1, 2, 3, 4}, {0, 0, 0, 0}}, {"scalar", 0, {0, 0}, {2}, {0}}};
  muon_run_t run = muon_step(backend, &c, v, 2);
  muon_done(&run);
  float want_m[4], want_s = 2.0f - 2.0f * 0.02f * 1.0f;
  for (int i = 0; i < 4; i++) want_m[i] = (float)(i + 1) - (float)(i + 1) * 0.01f * 1.0f;
  muon_expect(&v[0], want_m, "weight_decay on the Muon path");
  muon_expect(&v[1], &want_s, "adam_weight_decay on the AdamW path");
}
BOTH_BACKENDS(muon_weight_decay_per_path_matches_keras, run_muon_weight_decay_per_path)

/* test_lr_adjust_none and test_lr_adjust_2d: on a 4 x 2 matrix rms_rate 0.2 scales the step by
 * sqrt(4) * 0.2; rms_rate None leaves it. */
static void run_muon_lr_adjust(cuoptimBackend_t backend) {
  static const float want[2][8] = {
      {1.0455352067947388f, 0.952151358127594f, 1.012046456336975f, 0.960229754447937f, 0.9785576462745667f,
       0.9683080911636353f, 0.9450688362121582f, 0.976386547088623f},
      {1.0182141065597534f, 0.9808605313301086f, 1.0048185586929321f, 0.9840918779373169f, 0.9914230704307556f,
       0.9873232245445251f, 0.9780275225639343f, 0.9905546307563782f}};
  for (int k = 0; k < 2; k++) {
    cuoptimConfig_t c = test_config_lr(CUOPTIM_MUON, 0.1);
    c.weight_decay = CUOPTIM_NONE;
    c.rms_rate = k ? 0.2 : CUOPTIM_NONE;
    muon_var_t v = {"w", 2, {4, 2}, {1, 1, 1, 1, 1, 1, 1, 1}, {0}};
    for (int i = 0; i < 8; i++) v.grad[i] = (float)i * 0.1f + 0.05f;
    muon_run_t run = muon_step(backend, &c, &v, 1);
  muon_done(&run);
    muon_expect(&v, want[k], k ? "rms_rate 0.2" : "rms_rate None");
  }
}
BOTH_BACKENDS(muon_lr_adjust_matches_keras, run_muon_lr_adjust)

/* test_config: Muon(learning_rate=0.5, epsilon=1e-5) survives the Keras JSON round trip. */
Test(golden, muon_config_round_trips) {
  cuoptimConfig_t c = test_config_lr(CUOPTIM_MUON, 0.5), back;
  c.epsilon = 1e-5;
  c.num_exclude_layers = 2;
  snprintf(c.exclude_layers[0], sizeof c.exclude_layers[0], "last");
  snprintf(c.exclude_layers[1], sizeof c.exclude_layers[1], "^head/");
  char text[8192];
  OK(cuoptimConfigToKerasJSON(&c, text, sizeof text, NULL));
  cr_expect(strstr(text, "\"class_name\": \"Muon\"") != NULL, "%s", text);
  cr_expect(strstr(text, "\"exclude_layers\": [\"last\", \"^head/\"]") != NULL, "%s", text);
  OK(cuoptimConfigFromKerasJSON(&back, text));
  cr_expect_eq(memcmp(&c, &back, sizeof c), 0, "config -> JSON -> config changed it: %s", text);
}
