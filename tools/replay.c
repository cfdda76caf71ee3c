/*
 * cuoptim-replay — applies the steps of a case file (DESIGN.md "Case files and cuoptim-replay")
 * and prints the result, or, with --check, compares it with what Keras produced.
 *
 * Exit status: 0 done (within tolerance with --check), 1 beyond tolerance, 2 bad usage or input
 * (or a backend that cannot run here), 3 the library failed on a valid case.
 */
#ifdef CUOPTIM_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "case.h"
#include "cuoptim.h"

enum { EXIT_PASS = 0, EXIT_BEYOND = 1, EXIT_INPUT = 2, EXIT_LIBRARY = 3 };

static const char *program = "cuoptim-replay";

static void usage(FILE *out) {
  fprintf(out,
          "usage: %s [--check] [--rtol X] [--atol Y] [--backend host|cuda] [--state] [--quiet] CASE.json\n"
          "\n"
          "Applies the optimizer steps of a case file (format \"" CUOPTIM_CASE_FORMAT "\") with cuoptim.\n"
          "Without --check, prints {\"iterations\": N, \"variables\": [{\"name\": .., \"value\": [..]}, ..]}.\n"
          "\n"
          "  --check           compare with the case's \"expected\": one line per group with the largest\n"
          "                    absolute and relative error and where, then PASS or FAIL\n"
          "  --rtol X          relative tolerance of --check (default 1e-5)\n"
          "  --atol Y          absolute tolerance of --check (default 1e-6);\n"
          "                    a value passes when |got - want| <= atol + rtol * |want|\n"
          "  --backend B       host (default) or cuda (device 0)\n"
          "  --ranks R         multi-rank replay of rank_steps (needs mpirun: not supported yet)\n"
          "  --state           without --check, also print the optimizer state (\"optimizer_variables\",\n"
          "                    Keras's order) and, with use_ema, \"finalized_variables\"\n"
          "  --quiet           print nothing but the PASS/FAIL line of --check\n"
          "  --help            this text\n"
          "\n"
          "Exit status: 0 done (within tolerance), 1 beyond tolerance, 2 bad usage or input, or a\n"
          "backend that cannot run here, 3 the library failed on a valid case.\n",
          program);
}

/* `fmt` has one %s, for `arg` quoted (an argument may hold any byte; the message is one line). */
static int bad_usage(const char *fmt, const char *arg) {
  char q[CUOPTIM_CASE_QUOTED_SIZE];
  cuoptim_case_quote(arg, q, sizeof q);
  fprintf(stderr, "%s: ", program);
  fprintf(stderr, fmt, q);
  fprintf(stderr, " (see --help)\n");
  return EXIT_INPUT;
}

/* One line on stderr: "cuoptim-replay: " and the message, made printable (it may hold the case's
 * path or text). */
static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void report(const char *fmt, ...) {
  char message[2048], shown[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  cuoptim_case_printable(message, shown, sizeof shown);
  fprintf(stderr, "%s: %s\n", program, shown);
}

/* A tolerance: a finite non-negative number, the whole argument. */
static int parse_tolerance(const char *text, double *out) {
  char *end = NULL;
  errno = 0;
  double x = strtod(text, &end);
  if (end == text || *end != '\0' || errno != 0 || !isfinite(x) || x < 0) return -1;
  *out = x;
  return 0;
}

static void print_float(double x) {
  if (isnan(x))
    fputs("\"nan\"", stdout);
  else if (isinf(x))
    fputs(x > 0 ? "\"inf\"" : "\"-inf\"", stdout);
  else
    printf("%.9g", x);
}

static void print_string(const char *s) {
  putchar('"');
  for (; *s != '\0'; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      printf("\\%c", ch);
    else if (ch < 0x20)
      printf("\\u%04x", ch);
    else
      putchar(ch);
  }
  putchar('"');
}

static void print_entry(const char *name, const float *fvalues, const double *dvalues, size_t count) {
  printf("{\"name\": ");
  print_string(name);
  printf(", \"value\": [");
  for (size_t i = 0; i < count; i++) {
    if (i) fputs(", ", stdout);
    print_float(fvalues != NULL ? fvalues[i] : dvalues[i]);
  }
  printf("]}");
}

static void print_result(const cuoptimCase *c, const cuoptimCaseResult *r, int state) {
  printf("{\"iterations\": %lld, \"variables\": [", (long long)r->iterations);
  for (int v = 0; v < c->num_variables; v++) {
    if (v) fputs(", ", stdout);
    print_entry(c->variables[v].name, r->variables[v], NULL, c->variables[v].count);
  }
  printf("]");
  if (state) {
    printf(", \"optimizer_variables\": [");
    for (int i = 0; i < r->num_state; i++) {
      if (i) fputs(", ", stdout);
      print_entry(r->state[i].name, NULL, r->state[i].value, r->state[i].count);
    }
    printf("]");
    if (c->config.use_ema) {
      printf(", \"finalized_variables\": [");
      for (int v = 0; v < c->num_variables; v++) {
        if (v) fputs(", ", stdout);
        print_entry(c->variables[v].name, r->finalized[v], NULL, c->variables[v].count);
      }
      printf("]");
    }
  }
  printf("}\n");
}

/* Whether cudaGetDeviceCount finds a device (never in a host-only build); the reason in `why` when
 * not. */
#ifdef CUOPTIM_HAVE_CUDA
static int have_gpu(char *why, size_t size) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    snprintf(why, size, "%s", cudaGetErrorString(err));
    (void)cudaGetLastError();
    return 0;
  }
  if (count == 0) {
    snprintf(why, size, "no CUDA device");
    return 0;
  }
  return 1;
}
#else
static int have_gpu(char *why, size_t size) {
  snprintf(why, size, "this build has no CUDA backend (CUOPTIM_WITH_CUDA=OFF)");
  return 0;
}
#endif

int main(int argc, char **argv) {
  int check = 0, quiet = 0, ranks = 0, state = 0;
  double rtol = 1e-5, atol = 1e-6;
  cuoptimBackend_t backend = CUOPTIM_BACKEND_HOST;
  const char *path = NULL;

  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    /* --opt=value and --opt value are both accepted. */
    const char *value = NULL;
    char name[32];
    const char *eq = strchr(arg, '=');
    if (strncmp(arg, "--", 2) == 0 && eq != NULL && (size_t)(eq - arg) < sizeof name) {
      memcpy(name, arg, (size_t)(eq - arg));
      name[eq - arg] = '\0';
      value = eq + 1;
    } else {
      snprintf(name, sizeof name, "%s", strlen(arg) < sizeof name ? arg : "--?");
    }
    int takes_value = strcmp(name, "--rtol") == 0 || strcmp(name, "--atol") == 0 || strcmp(name, "--backend") == 0 ||
                      strcmp(name, "--ranks") == 0;
    if (takes_value && value == NULL) {
      if (i + 1 >= argc) return bad_usage("%s needs a value", name);
      value = argv[++i];
    }
    if (!takes_value && value != NULL) return bad_usage("%s takes no value", name);

    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
      usage(stdout);
      return EXIT_PASS;
    } else if (strcmp(arg, "--check") == 0) {
      check = 1;
    } else if (strcmp(arg, "--quiet") == 0) {
      quiet = 1;
    } else if (strcmp(arg, "--state") == 0) {
      state = 1;
    } else if (strcmp(name, "--rtol") == 0) {
      if (parse_tolerance(value, &rtol) != 0) return bad_usage("--rtol: %s is not a finite number >= 0", value);
    } else if (strcmp(name, "--atol") == 0) {
      if (parse_tolerance(value, &atol) != 0) return bad_usage("--atol: %s is not a finite number >= 0", value);
    } else if (strcmp(name, "--backend") == 0) {
      if (strcmp(value, "host") == 0)
        backend = CUOPTIM_BACKEND_HOST;
      else if (strcmp(value, "cuda") == 0)
        backend = CUOPTIM_BACKEND_CUDA;
      else
        return bad_usage("--backend: %s is not host or cuda", value);
    } else if (strcmp(name, "--ranks") == 0) {
      char *end = NULL;
      long r = strtol(value, &end, 10);
      if (end == value || *end != '\0' || r < 1 || r > 1 << 20) return bad_usage("--ranks: %s is not a positive integer", value);
      ranks = (int)r;
    } else if (arg[0] == '-' && arg[1] != '\0') {
      return bad_usage("unknown option %s", arg);
    } else if (path != NULL) {
      return bad_usage("more than one case file (%s)", arg);
    } else {
      path = arg;
    }
  }
  if (path == NULL) {
    report("no case file given (see --help)");
    return EXIT_INPUT;
  }

  char why[256];
  if (backend == CUOPTIM_BACKEND_CUDA && !have_gpu(why, sizeof why)) {
    report("--backend cuda: no usable GPU (%s)", why);
    return EXIT_INPUT;
  }

  char error[2048];
  cuoptimCase c;
  if (cuoptim_case_load(path, &c, error, sizeof error) != 0) {
    report("%s", error);
    return EXIT_INPUT;
  }
  if (ranks > 0) {
    if (c.has_rank_steps)
      report("%s: rank_steps needs mpirun (not supported yet)", path);
    else
      report("%s: --ranks %d: the case has no rank_steps (and rank_steps needs mpirun, not supported yet)", path, ranks);
    cuoptim_case_free(&c);
    return EXIT_INPUT;
  }
  if (check && !c.has_expected) {
    report("%s: --check: the case has no \"expected\" to compare with", path);
    cuoptim_case_free(&c);
    return EXIT_INPUT;
  }

  cuoptimCaseResult r;
  int rc = cuoptim_case_run(&c, backend, &r, error, sizeof error);
  if (rc != 0) {
    report("%s: %s", path, error);
    cuoptim_case_free(&c);
    /* What the case asks for cannot be done here (as Keras would refuse it, or this build or
     * machine lacks it) vs the library failing on a valid request. */
    return (rc == CUOPTIM_STATUS_INVALID_VALUE || rc == CUOPTIM_STATUS_NOT_SUPPORTED || rc == CUOPTIM_STATUS_NO_DEVICE)
               ? EXIT_INPUT
               : EXIT_LIBRARY;
  }

  int status = EXIT_PASS;
  if (check) {
    cuoptimCaseComparison cmp;
    cuoptim_case_compare(&c, &r, rtol, atol, &cmp);
    for (int g = 0; g < CUOPTIM_CASE_GROUP_COUNT && !quiet; g++) {
      if (!cmp.groups[g].compared) continue;
      char line[2048];
      cuoptim_case_format_group(&cmp.groups[g], line, sizeof line);
      printf("%s\n", line);
    }
    printf("%s\n", cmp.pass ? "PASS" : "FAIL");
    status = cmp.pass ? EXIT_PASS : EXIT_BEYOND;
  } else if (!quiet) {
    print_result(&c, &r, state);
  }
  if (fflush(stdout) != 0) {
    report("writing the output failed: %s", strerror(errno));
    status = EXIT_INPUT;
  }
  cuoptim_case_result_free(&r);
  cuoptim_case_free(&c);
  return status;
}
