/*
 * paths — every cuoptim optimizer on classic 2-D problems that show why optimizers differ:
 *   quadratic   an ill-conditioned bowl (curvatures 0.1 and 5): plain SGD zig-zags across the
 *               steep direction and crawls along the flat one; momentum and Adam do not
 *   rosenbrock  a long curved valley (the minimum at (1, 1) lies at its far end)
 *   saddle      x^2 + y^4/4 - y^2/2 from next to its saddle point: the gradient there is almost 0,
 *               so gradient-proportional steps take long to leave it, normalised steps do not
 *   beale       Beale's function: flat plateaus beside steep cliffs
 * Each optimizer starts from the same point, with a learning rate chosen for the problem, and
 * takes the problem's number of steps (or --steps) through cuoptim's host backend, on one
 * variable holding (x, y). Everything else is Keras's default.
 *
 * Writes, in --out DIR (default "paths"):
 *   functions.csv        function,title,x_min,x_max,y_min,y_max,minimum_x,minimum_y,start_x,start_y
 *   NAME.csv             optimizer,learning_rate,step,x,y,loss  (steps + 1 rows per optimizer)
 *   NAME_surface.csv     x,y,loss on a grid over the plotted range, for contour lines
 * and prints each optimizer's final loss and distance to the minimum.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cuoptim.h>

enum { NUM_RUNS = 15, GRID = 121 };

typedef struct {
  const char *label;
  cuoptimOptimizerKind_t kind;
  double momentum; /* SGD only */
} run_t;

static const run_t runs[NUM_RUNS] = {
    {"SGD", CUOPTIM_SGD, 0.0},       {"SGD+momentum", CUOPTIM_SGD, 0.9}, {"RMSprop", CUOPTIM_RMSPROP, 0.0},
    {"Adagrad", CUOPTIM_ADAGRAD, 0.0}, {"Adadelta", CUOPTIM_ADADELTA, 0.0}, {"Adam", CUOPTIM_ADAM, 0.0},
    {"AdamW", CUOPTIM_ADAMW, 0.0},   {"Adamax", CUOPTIM_ADAMAX, 0.0},    {"Nadam", CUOPTIM_NADAM, 0.0},
    {"Lion", CUOPTIM_LION, 0.0},     {"Lamb", CUOPTIM_LAMB, 0.0},        {"Ftrl", CUOPTIM_FTRL, 0.0},
    {"ScheduleFreeAdamW", CUOPTIM_SCHEDULE_FREE_ADAMW, 0.0}, {"Adafactor", CUOPTIM_ADAFACTOR, 0.0},
    {"Muon", CUOPTIM_MUON, 0.0},
};

typedef struct {
  const char *name, *title;
  double (*loss)(double x, double y);
  void (*gradient)(double x, double y, double *gx, double *gy);
  double start_x, start_y, minimum_x, minimum_y;
  double x_min, x_max, y_min, y_max;
  int steps;              /* the default number of steps */
  double lr[NUM_RUNS];    /* in the order of runs[] */
} problem_t;

static double quadratic(double x, double y) { return 0.05 * x * x + 2.5 * y * y; }
static void quadratic_gradient(double x, double y, double *gx, double *gy) {
  *gx = 0.1 * x;
  *gy = 5.0 * y;
}

static double rosenbrock(double x, double y) { return (1 - x) * (1 - x) + 100 * (y - x * x) * (y - x * x); }
static void rosenbrock_gradient(double x, double y, double *gx, double *gy) {
  *gx = -2 * (1 - x) - 400 * x * (y - x * x);
  *gy = 200 * (y - x * x);
}

static double saddle(double x, double y) { return x * x + 0.25 * y * y * y * y - 0.5 * y * y; }
static void saddle_gradient(double x, double y, double *gx, double *gy) {
  *gx = 2 * x;
  *gy = y * y * y - y;
}

static double beale(double x, double y) {
  double a = 1.5 - x + x * y, b = 2.25 - x + x * y * y, c = 2.625 - x + x * y * y * y;
  return a * a + b * b + c * c;
}
static void beale_gradient(double x, double y, double *gx, double *gy) {
  double a = 1.5 - x + x * y, b = 2.25 - x + x * y * y, c = 2.625 - x + x * y * y * y;
  *gx = 2 * a * (y - 1) + 2 * b * (y * y - 1) + 2 * c * (y * y * y - 1);
  *gy = 2 * a * x + 2 * b * 2 * x * y + 2 * c * 3 * x * y * y;
}

/* Learning rates by hand for each problem, in the order of runs[]: about the largest that stays
 * stable for the gradient-proportional ones (SGD), and for the others one whose step is a small
 * fraction of the plotted range (Adam's step is about lr, Lion's exactly lr per coordinate, Lamb's
 * about lr times the norm of (x, y), Adagrad's and Ftrl's shrink as squared gradients add up,
 * Adadelta's starts near sqrt(epsilon) times lr, Adafactor's is about lr times the RMS of (x, y),
 * Muon's lr times 0.2 sqrt(2): it sees (x, y) as a 1 x 2 matrix, whose orthogonalized direction
 * has length about 1). */
static const problem_t problems[] = {
    {"quadratic", "Ill-conditioned quadratic 0.05 x^2 + 2.5 y^2", quadratic, quadratic_gradient, -4.5, 1.2, 0, 0, -5,
     5, -2, 2, 200,
     /* SGD  SGD+m  RMSprop Adagrad Adadelta Adam AdamW Adamax Nadam Lion  Lamb  Ftrl  SF-AdamW Adafactor Muon */
     {0.38, 0.02, 0.1, 1.0, 10.0, 0.1, 0.1, 0.1, 0.1, 0.02, 0.03, 1.0, 0.1, 0.03, 0.2}},
    {"rosenbrock", "Rosenbrock (1 - x)^2 + 100 (y - x^2)^2", rosenbrock, rosenbrock_gradient, -1.2, 1.0, 1, 1, -2,
     2, -1, 3, 1000,
     {1e-3, 1e-4, 0.01, 0.3, 5.0, 0.02, 0.02, 0.02, 0.02, 0.005, 0.01, 0.3, 0.02, 0.01, 0.02}},
    {"saddle", "Saddle x^2 + y^4/4 - y^2/2 (minima at y = +-1)", saddle, saddle_gradient, 2.0, 1e-6, 0, 1, -2.5, 2.5,
     -1.5, 1.5, 150,
     {0.1, 0.01, 0.05, 0.5, 10.0, 0.05, 0.05, 0.05, 0.05, 0.01, 0.02, 0.5, 0.05, 0.02, 0.1}},
    {"beale", "Beale's function", beale, beale_gradient, 1.0, 1.6, 3, 0.5, -0.5, 4.5, -1.5, 2.0, 300,
     {1e-3, 2e-4, 0.05, 0.5, 10.0, 0.05, 0.05, 0.05, 0.05, 0.01, 0.01, 0.5, 0.05, 0.02, 0.1}},
};
#define NUM_PROBLEMS ((int)(sizeof problems / sizeof problems[0]))

#define CHECK(call)                                                     \
  do {                                                                  \
    if ((call) != CUOPTIM_STATUS_SUCCESS) {                             \
      fprintf(stderr, "paths: %s\n", cuoptimGetLastErrorMessage());     \
      status = -1;                                                      \
      goto cleanup;                                                     \
    }                                                                   \
  } while (0)

/* One optimizer's path on one problem: steps + 1 rows of the CSV, the start included. */
static int run_path(const problem_t *p, int r, int steps, FILE *csv, double *final_xy) {
  int status = 0;
  cuoptimOptimizer_t opt = NULL;
  cuoptimConfig_t config;
  float xy[2] = {(float)p->start_x, (float)p->start_y}, grad[2];
  double lr = p->lr[r];
  CHECK(cuoptimConfigInit(&config, runs[r].kind));
  config.learning_rate.initial_learning_rate = lr;
  if (runs[r].kind == CUOPTIM_SGD) config.momentum = runs[r].momentum;
  CHECK(cuoptimCreate(&opt, &config, CUOPTIM_BACKEND_HOST, 0));
  cuoptimVariable_t var;
  /* Muon orthogonalizes matrices only: (x, y) is a 1 x 2 one for it. */
  const int64_t row[2] = {1, 2};
  if (runs[r].kind == CUOPTIM_MUON)
    CHECK(cuoptimAddVariableWithShape(opt, "xy", xy, CUOPTIM_FLOAT32, 2, row, &var));
  else
    CHECK(cuoptimAddVariable(opt, "xy", xy, CUOPTIM_FLOAT32, 2, &var));
  for (int step = 0;; step++) {
    fprintf(csv, "%s,%g,%d,%.9g,%.9g,%.9g\n", runs[r].label, lr, step, xy[0], xy[1], p->loss(xy[0], xy[1]));
    if (step == steps) break;
    double gx, gy;
    p->gradient(xy[0], xy[1], &gx, &gy);
    grad[0] = (float)gx;
    grad[1] = (float)gy;
    cuoptimGradient_t g = {var, grad, CUOPTIM_FLOAT32};
    CHECK(cuoptimApplyGradients(opt, 1, &g, NULL));
  }
  final_xy[0] = xy[0];
  final_xy[1] = xy[1];
cleanup:
  cuoptimDestroy(opt);
  return status;
}

static FILE *open_csv(const char *dir, const char *name, const char *suffix, const char *header) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s%s.csv", dir, name, suffix);
  FILE *f = fopen(path, "w");
  if (!f)
    fprintf(stderr, "paths: cannot write %s: %s\n", path, strerror(errno));
  else
    fprintf(f, "%s\n", header);
  return f;
}

static int write_surface(const problem_t *p, const char *dir) {
  FILE *f = open_csv(dir, p->name, "_surface", "x,y,loss");
  if (!f) return -1;
  for (int j = 0; j < GRID; j++)
    for (int i = 0; i < GRID; i++) {
      double x = p->x_min + (p->x_max - p->x_min) * i / (GRID - 1);
      double y = p->y_min + (p->y_max - p->y_min) * j / (GRID - 1);
      fprintf(f, "%.6g,%.6g,%.9g\n", x, y, p->loss(x, y));
    }
  return fclose(f) == 0 ? 0 : -1;
}

static int run_problem(const problem_t *p, const char *dir, int steps, int quiet) {
  if (!steps) steps = p->steps;
  FILE *csv = open_csv(dir, p->name, "", "optimizer,learning_rate,step,x,y,loss");
  if (!csv) return -1;
  if (!quiet) printf("%s, from (%g, %g), %d steps:\n", p->title, p->start_x, p->start_y, steps);
  int status = 0;
  for (int r = 0; r < NUM_RUNS && !status; r++) {
    double end[2];
    status = run_path(p, r, steps, csv, end);
    if (!status && !quiet)
      printf("  %-17s lr %-7g final loss %-12.5g distance to the minimum %.4g\n", runs[r].label, p->lr[r], p->loss(end[0], end[1]), hypot(end[0] - p->minimum_x, end[1] - p->minimum_y));
  }
  if (fclose(csv) != 0) status = -1;
  return status ? status : write_surface(p, dir);
}

static int write_functions(const char *dir) {
  FILE *f = open_csv(dir, "functions", "",
                     "function,title,x_min,x_max,y_min,y_max,minimum_x,minimum_y,start_x,start_y");
  if (!f) return -1;
  for (int i = 0; i < NUM_PROBLEMS; i++) {
    const problem_t *p = &problems[i];
    fprintf(f, "%s,\"%s\",%g,%g,%g,%g,%g,%g,%g,%g\n", p->name, p->title, p->x_min, p->x_max, p->y_min, p->y_max,
            p->minimum_x, p->minimum_y, p->start_x, p->start_y);
  }
  return fclose(f) == 0 ? 0 : -1;
}

static void usage(FILE *out) {
  fputs("usage: paths [--out DIR] [--steps N] [--function NAME] [--quiet]\n"
        "Runs every cuoptim optimizer on quadratic, rosenbrock, saddle and beale; writes CSV to DIR (paths).\n"
        "--steps N: N steps on every problem (default: 200, 1000, 150 and 300).\n",
        out);
}

int main(int argc, char **argv) {
  const char *dir = "paths", *only = NULL;
  int steps = 0, quiet = 0; /* 0: each problem's own */
  for (int i = 1; i < argc; i++) {
    const char *value = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(argv[i], "--out") == 0 && value) {
      dir = value;
      i++;
    } else if (strcmp(argv[i], "--steps") == 0 && value) {
      char *end;
      long n = strtol(value, &end, 10);
      if (*end || end == value || n < 1 || n > 1000000) {
        fprintf(stderr, "paths: --steps %s: an integer in [1, 1000000]\n", value);
        return 2;
      }
      steps = (int)n;
      i++;
    } else if (strcmp(argv[i], "--function") == 0 && value) {
      only = value;
      i++;
    } else if (strcmp(argv[i], "--quiet") == 0) {
      quiet = 1;
    } else if (strcmp(argv[i], "--help") == 0) {
      usage(stdout);
      return 0;
    } else {
      fprintf(stderr, "paths: %s: unknown option or missing value\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
    fprintf(stderr, "paths: cannot create %s: %s\n", dir, strerror(errno));
    return 1;
  }
  int status = write_functions(dir), found = 0;
  for (int i = 0; i < NUM_PROBLEMS && !status; i++) {
    if (only && strcmp(only, problems[i].name) != 0) continue;
    found = 1;
    status = run_problem(&problems[i], dir, steps, quiet);
  }
  if (!status && !found) {
    fprintf(stderr, "paths: --function %s: quadratic, rosenbrock, saddle or beale\n", only);
    return 2;
  }
  if (!status && !quiet) printf("wrote %s/functions.csv and, per function, NAME.csv and NAME_surface.csv\n", dir);
  return status ? 1 : 0;
}
