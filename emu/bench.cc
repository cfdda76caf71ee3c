/* cuoptim-bench (bench/bench.cu) built for the emulated device: a smoke test of the benchmark's
 * own code (mixes, byte model, graph capture, its checks, its JSON). Its timings mean nothing. */
#include "device.h"

#include "bench.cu"
