/* float16 / bfloat16 <-> float32, round to nearest even (as CUDA's __float2half_rn and
 * __float2bfloat16_rn do), for the host backend and the table checks. */
#include <string.h>

#include "internal.h"

size_t cuoptim_dtype_size(cuoptimDtype_t dtype) {
  switch (dtype) {
    case CUOPTIM_FLOAT32: return 4;
    case CUOPTIM_FLOAT16:
    case CUOPTIM_BFLOAT16: return 2;
  }
  return 0;
}

const char *cuoptim_dtype_name(cuoptimDtype_t dtype) {
  switch (dtype) {
    case CUOPTIM_FLOAT32: return "float32";
    case CUOPTIM_FLOAT16: return "float16";
    case CUOPTIM_BFLOAT16: return "bfloat16";
  }
  return "unknown";
}

static uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static float bits_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

float cuoptim_bfloat16_to_float(uint16_t h) { return bits_float((uint32_t)h << 16); }

uint16_t cuoptim_float_to_bfloat16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

float cuoptim_half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    /* zero or subnormal: mantissa * 2^-24 */
    float value = (float)mantissa * (1.0f / 16777216.0f);
    return sign ? -value : value;
  }
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

uint16_t cuoptim_float_to_half(float f) {
  uint32_t u = float_bits(f);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);          /* NaN */
  if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);         /* rounds to inf */
  if (abs < 0x38800000u) {                                          /* subnormal or zero */
    /* value / 2^-24, rounded to nearest even, by adding a magic number in float arithmetic */
    float value = bits_float(abs) * 16777216.0f; /* exact: scaling by a power of two */
    uint32_t q = (uint32_t)value;
    float rest = value - (float)q;
    if (rest > 0.5f || (rest == 0.5f && (q & 1u))) q++;
    return (uint16_t)(sign | q);
  }
  uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return (uint16_t)(sign | ((rounded - 0x38000000u) >> 13));
}
