/*
 * test_fast_math.c — the fixed update kernels' square root and division sequences (cuda/rules.h:
 * cuoptim_sqrt_refine, cuoptim_div_refine and the ranges of cuoptim_sqrt_in_range and
 * cuoptim_div_in_range) give sqrtf and '/' bit for bit wherever their range check passes, from
 * the approximations they start from.
 *
 * On the GPU the approximations come from rsqrt.approx.ftz.f32 and rcp.approx.ftz.f32 (subnormal
 * inputs and results flushed to zero), and the sequences are the instructions the compiler itself
 * emits for sqrtf and '/' on their fast paths (the same from sm_80 to sm_120).
 * - Square root: the kernels' check is the compiler's own (x in [2^-101, FLT_MAX]), so on the GPU
 *   the result is the compiler's sqrtf by construction; the sequence is not exact from every
 *   approximation PTX allows (2^-22.9 relative: a few significands in 2^24 round the other way
 *   from an approximation 1 ulp off), it relies on the hardware's, as sqrtf does. Here it runs
 *   from the correctly rounded approximation (the emulated device's) on every float in [1, 4)
 *   (a sqrt is the same up to a factor 4^k: all significands, both exponent parities) and on every
 *   float of the lowest and highest binade pairs of the range; values just outside the range and
 *   the special values are refused by the check.
 * - Division: the same holds of the sequence (from a reciprocal an ulp off, 1 / (2 - ulp) rounds
 *   the other way), but the kernels' check is their own (cuda/rules.h): it must pass only where
 *   nothing is subnormal, overflows or is special. Here the sequence runs from the correctly
 *   rounded reciprocal, flushed as .ftz does, on pseudo-random significand pairs at exponents
 *   across the whole range (quotients near 2^-100 and near FLT_MAX, reciprocals near and past the
 *   subnormal border), significands at the binade edges, and zeros, subnormals, infinities and
 *   NaNs: wherever the check passes the result is a / b.
 */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "rules.h"
#include "testutil.h"

static int same_bits(float a, float b) { return test_float_bits(a) == test_float_bits(b); }

/* ---- square root ------------------------------------------------------------------------------ */

/* The sequence from the correctly rounded approximation gives sqrtf(x); returns 1 on a failure
 * (logged). */
static int check_sqrt(float x) {
  const float y = cuoptim_rsqrt_approx(x); /* off the GPU: correctly rounded */
  const float got = cuoptim_sqrt_refine(x, y);
  if (same_bits(got, sqrtf(x))) return 0;
  cr_log_error("sqrt(%a) from %a: %a, sqrtf %a", (double)x, (double)y, (double)got, (double)sqrtf(x));
  return 1;
}

static int check_sqrt_range(uint32_t from, uint32_t to) {
  int bad = 0;
  for (uint32_t u = from; u < to; u++) {
    cr_assert(cuoptim_sqrt_in_range(test_bits_float(u)), "%a refused", (double)test_bits_float(u));
    bad += check_sqrt(test_bits_float(u));
  }
  return bad;
}

Test(fast_math, sqrt_sequence_is_sqrtf_on_every_significand) {
  cr_assert_eq(check_sqrt_range(test_float_bits(1.0f), test_float_bits(4.0f)), 0);
}

Test(fast_math, sqrt_sequence_is_sqrtf_at_the_ends_of_its_range) {
  cr_assert_eq(check_sqrt_range(test_float_bits(0x1p-101f), test_float_bits(0x1p-99f)), 0);
  cr_assert_eq(check_sqrt_range(test_float_bits(0x1p126f), test_float_bits(FLT_MAX) + 1), 0);
}

Test(fast_math, sqrt_check_refuses_what_the_sequence_cannot_take) {
  const float refused[] = {0.0f, -0.0f, -1.0f, 0x1p-130f, FLT_MIN, test_bits_float(test_float_bits(0x1p-101f) - 1), INFINITY, -INFINITY,
                           NAN};
  for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
    cr_assert(!cuoptim_sqrt_in_range(refused[i]), "%a accepted", (double)refused[i]);
}

/* ---- division --------------------------------------------------------------------------------- */

/* The sequence from b's reciprocal (off the GPU: correctly rounded, flushed as .ftz does): where
 * the check passes, a / b. Returns 1 on a failure
 * (logged); *checked counts the results the check passed. */
static int check_div(float a, float b, long *checked) {
  const float q = cuoptim_div_refine(a, b, cuoptim_rcp_approx(b));
  if (!cuoptim_div_in_range(a, q)) return 0;
  (*checked)++;
  if (same_bits(q, a / b)) return 0;
  cr_log_error("%a / %a: %a, '/' %a", (double)a, (double)b, (double)q, (double)(a / b));
  return 1;
}

static uint64_t next_random(uint64_t *state) {
  *state = *state * 6364136223846793005ull + 1442695040888963407ull;
  return *state >> 11;
}

/* A float of significand bits `significand` (23 bits) and unbiased exponent e, with a sign. */
static float make_float(int negative, int e, uint32_t significand) {
  return test_bits_float((negative ? 0x80000000u : 0u) | (uint32_t)(e + 127) << 23 | (significand & 0x7fffffu));
}

Test(fast_math, div_sequence_is_division_wherever_its_check_passes) {
  /* Exponent pairs: ordinary, the quotient near 2^-100 and near FLT_MAX, a dividend near 2^-90,
   * reciprocals near the subnormal border (b near 2^126), a large dividend over a small divisor. */
  const int pairs[][2] = {{0, 0},     {3, -7},    {-20, 40},   {-90, 10},  {-90, -2},   {-60, 40},   {-10, 90},
                          {127, 0},   {127, 1},   {100, -27},  {126, 126}, {127, 125},  {30, 125},   {0, 126},
                          {-1, -126}, {-100, -1}, {-89, 11},   {64, -63},  {127, -1},   {50, 127}};
  uint64_t state = 20261203;
  long checked = 0;
  int bad = 0;
  for (size_t p = 0; p < sizeof pairs / sizeof pairs[0]; p++)
    for (int i = 0; i < 200000; i++) {
      uint64_t r = next_random(&state);
      float a = make_float((int)(r & 1), pairs[p][0], (uint32_t)(r >> 1)),
            b = make_float((int)(r >> 24 & 1), pairs[p][1], (uint32_t)(r >> 25));
      bad += check_div(a, b, &checked);
    }
  /* Significands at the binade edges (1, 1 + ulp, 2 - ulp) against every significand step. */
  const uint32_t edges[] = {0, 1, 2, 0x7ffffe, 0x7fffff, 0x400000, 0x3fffff};
  for (size_t e = 0; e < sizeof edges / sizeof edges[0]; e++)
    for (uint32_t m = 0; m < 0x800000; m += 97) {
      bad += check_div(make_float(0, 0, edges[e]), make_float(0, 0, m), &checked);
      bad += check_div(make_float(0, 0, m), make_float(0, 0, edges[e]), &checked);
    }
  cr_assert_eq(bad, 0, "%d of %ld checked quotients differ from '/'", bad, checked);
  cr_assert_gt(checked, 2000000L, "the check passed too few quotients (%ld) for this to prove anything", checked);
}

Test(fast_math, div_check_refuses_zeros_subnormals_infinities_and_nans) {
  const float specials[] = {0.0f, -0.0f, 0x1p-140f, -0x1p-149f, FLT_MIN, INFINITY, -INFINITY, NAN, 1.0f, -3.0f,
                            0x1p-91f, 0x1p100f, FLT_MAX};
  const size_t n = sizeof specials / sizeof specials[0];
  long checked = 0;
  int bad = 0;
  for (size_t i = 0; i < n; i++)
    for (size_t j = 0; j < n; j++) bad += check_div(specials[i], specials[j], &checked);
  cr_assert_eq(bad, 0);
  /* A zero, subnormal or infinite divisor and a zero or NaN dividend never pass. */
  for (size_t i = 0; i < n; i++) {
    const float divisors[] = {0.0f, -0.0f, 0x1p-140f, INFINITY, NAN};
    for (size_t j = 0; j < sizeof divisors / sizeof divisors[0]; j++) {
      const float b = divisors[j];
      cr_assert(!cuoptim_div_in_range(specials[i], cuoptim_div_refine(specials[i], b, cuoptim_rcp_approx(b))),
                "%a / %a accepted", (double)specials[i], (double)b);
    }
    cr_assert(!cuoptim_div_in_range(0.0f, cuoptim_div_refine(0.0f, specials[i], 1.0f)));
    cr_assert(!cuoptim_div_in_range(NAN, cuoptim_div_refine(NAN, specials[i], 1.0f)));
  }
}

/* The operations the rules call: without a cuoptimFastMath they are sqrtf and '/'; with one, the
 * sequences from the approximations here, and in_range cleared by an operand out of range. */
Test(fast_math, ops_are_the_ieee_ones_or_say_they_are_not) {
  cuoptimFastMath f = {1};
  cr_assert(same_bits(cuoptim_sqrt_op(NULL, 2.0f), sqrtf(2.0f)));
  cr_assert(same_bits(cuoptim_div_op(NULL, 1.0f, 3.0f), 1.0f / 3.0f));
  cr_assert(same_bits(cuoptim_sqrt_op(&f, 2.0f), sqrtf(2.0f)));
  cr_assert(same_bits(cuoptim_div_op(&f, 1.0f, 3.0f), 1.0f / 3.0f));
  cr_assert_eq(f.in_range, 1);
  (void)cuoptim_sqrt_op(&f, 0.0f);
  cr_assert_eq(f.in_range, 0, "sqrt(0) left in_range set");
  f.in_range = 1;
  (void)cuoptim_div_op(&f, 0.0f, 3.0f);
  cr_assert_eq(f.in_range, 0, "0 / 3 left in_range set");
  f.in_range = 1;
  (void)cuoptim_div_op(&f, 1.0f, 0.0f);
  cr_assert_eq(f.in_range, 0, "1 / 0 left in_range set");
}
