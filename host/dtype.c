/* Element types: sizes and names (the conversions are inline, in internal.h). */
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
