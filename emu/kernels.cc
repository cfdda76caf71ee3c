/* The kernels of cuda/kernels.cu, compiled by the host compiler for the emulated device. */
#include "device.h"

#include "kernels.cu"
