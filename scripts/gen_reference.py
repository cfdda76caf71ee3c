#!/usr/bin/env python3
"""Generate cuoptim reference cases (tests/data/cases/*.json) from real Keras 3.

Every case is one JSON file in the "cuoptim-case-1" format (see /work/shared/DESIGN.md,
"Case files and cuoptim-replay"): a serialized Keras optimizer, variables with initial values,
per-step gradients, and what Keras produced after the last step (model variables, every optimizer
variable in `optimizer.variables` order, EMA-finalized values).

Usage:
    scripts/gen_reference.py                       # regenerate tests/data/cases/ (fixed seed 1)
    scripts/gen_reference.py --out DIR --seed N --randomize
                                                   # a different set: same kinds of cases,
                                                   # randomized hyperparameters and data
    scripts/gen_reference.py --verify DIR          # replay every case in DIR with a fresh optimizer
                                                   # from keras deserialize(); bitwise comparison
    scripts/gen_reference.py --verify DIR --jit    # also replay through jax.jit(stateless_apply)
                                                   # (what model.fit does) and report differences
    scripts/gen_reference.py --list                # list case names

Environment: Keras 3.15.1 with the JAX 0.10.2 (CPU) backend, float32 variables. If the running
interpreter lacks these exact versions, the script uses the virtual environment .venv-keras at the
repository root, creating it (python3 -m venv + pip install of the pinned versions) if it is missing
or lacks keras, and re-executes itself with the venv's python.

How steps are applied: `optimizer.apply(grads, variables)` (eager), with `None` for a variable that
gets no gradient in that step. Exception: keras.optimizers.LossScaleOptimizer.apply() does not work
eagerly on the JAX backend (its ops.cond branches assign variables: jax.lax.cond leaks tracers), so
LSO cases run LSO's stateful apply logic step by step (check finite; inner.apply(g / dynamic_scale)
eagerly; then grow or halve the scale) -- see lso_apply_eager(). --verify also replays LSO cases
through Keras's own LossScaleOptimizer.stateless_apply (the JAX trainer's path), which must agree
on iterations, step_counter and dynamic_scale exactly; its numbers differ in the last bits because
its lax.cond compiles the inner update with XLA (fused, FMA-contracted arithmetic).

All numbers in the cases are eager, op-by-op float32 results (no fused multiply-add); jitted Keras
(model.fit) differs from them in the last bits (--verify DIR --jit shows by how much).

Multi-rank cases (ranks_*.json): "rank_steps"[s][r] holds rank r's gradients of step s and "steps"
their mean, which is what Keras applied ("expected" is Keras on the mean gradients). The mean is
formed as cuoptim forms it: the float32 sum of the ranks' gradients, multiplied by float32(1/R).
Each rank gradient lies on a binary grid coarse enough (2^-20 of the tensor's largest magnitude)
that every partial sum of up to four of them is exact in float32, so the sum is the same in any
order MPI adds the ranks in: `mpirun -np R cuoptim-replay` applies exactly the gradients Keras
did, and the multi-rank replay is bit for bit the single-process replay of "steps".
"""

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import zlib

PINS = {"keras": "3.15.1", "jax": "0.10.2", "jaxlib": "0.10.2", "numpy": "2.4.6"}
PIP_REQUIREMENTS = ["keras==3.15.1", "jax[cpu]==0.10.2", "numpy==2.4.6"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(REPO, ".venv-keras")
DEFAULT_OUT = os.path.join(REPO, "tests", "data", "cases")
FORMAT = "cuoptim-case-1"


# ----------------------------------------------------------------------------------------------
# Environment bootstrap
# ----------------------------------------------------------------------------------------------

def _have_pinned_versions():
    from importlib import metadata

    try:
        return all(metadata.version(pkg) == ver for pkg, ver in PINS.items())
    except metadata.PackageNotFoundError:
        return False


def _venv_python():
    return os.path.join(VENV, "bin", "python")


def _venv_ok(py):
    if not os.path.exists(py):
        return False
    check = ("import sys\nfrom importlib import metadata\n"
             "pins = %r\n"
             "sys.exit(0 if all(metadata.version(k) == v for k, v in pins.items()) else 1)\n"
             % (PINS,))
    return subprocess.call([py, "-c", check], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL) == 0


def ensure_environment():
    if _have_pinned_versions():
        return
    if os.environ.get("CUOPTIM_GEN_REEXEC"):
        sys.exit("gen_reference.py: %s still lacks %s after setting up %s"
                 % (sys.executable, PIP_REQUIREMENTS, VENV))
    py = _venv_python()
    if not _venv_ok(py):
        if not os.path.exists(py):
            print("gen_reference.py: creating virtual environment %s" % VENV, file=sys.stderr)
            subprocess.check_call([sys.executable, "-m", "venv", VENV])
        print("gen_reference.py: installing %s into %s" % (" ".join(PIP_REQUIREMENTS), VENV),
              file=sys.stderr)
        subprocess.check_call([py, "-m", "pip", "install", "--quiet"] + PIP_REQUIREMENTS)
        if not _venv_ok(py):
            sys.exit("gen_reference.py: %s does not have the pinned versions %s" % (VENV, PINS))
    os.environ["CUOPTIM_GEN_REEXEC"] = "1"
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


if __name__ == "__main__":
    ensure_environment()

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import jax  # noqa: E402
import keras  # noqa: E402

O = keras.optimizers
S = keras.optimizers.schedules

SOURCE = "keras %s, jax %s backend" % (keras.__version__, jax.__version__)


# ----------------------------------------------------------------------------------------------
# Number formatting: float32 values that round-trip exactly, non-finite values as strings
# ----------------------------------------------------------------------------------------------

def _bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def fmt_array(a):
    """Compact JSON array text for a flat array (float32 or int)."""
    a = np.asarray(a).ravel()
    if a.dtype.kind in "iu":
        return "[" + ",".join(str(int(x)) for x in a) + "]"
    a = a.astype(np.float32)
    out = []
    for x in a:
        if np.isnan(x):
            out.append('"nan"')
        elif np.isinf(x):
            out.append('"inf"' if x > 0 else '"-inf"')
        else:
            s = str(x)  # shortest digits that round-trip through float32
            e = np.format_float_scientific(x, unique=True, trim="-", exp_digits=1)
            if len(e) < len(s):
                s = e   # "1.234e-5" rather than "1.234e-05"; "1e+8"; "0.0001234" -> "1.234e-4"
            # must also round-trip through strtod followed by a cast to float
            if np.float32(float(s)).view(np.uint32) != x.view(np.uint32):
                s = repr(float(x))  # exact double value of the float32
            out.append(s)
    return "[" + ",".join(out) + "]"


def parse_array(values, dtype=np.float32):
    return np.array([float(v) if isinstance(v, str) else v for v in values], dtype=dtype)


def sig(x, n=3):
    """Round a Python float to n significant digits."""
    if x == 0:
        return 0.0
    return float("%.*g" % (n, x))


def round_sig_array(a, n=5):
    flat = [float("%.*g" % (n, x)) for x in np.asarray(a, dtype=np.float64).ravel()]
    return np.array(flat, dtype=np.float32).reshape(np.shape(a))


# ----------------------------------------------------------------------------------------------
# Case context: data generation and (randomizable) hyperparameters
# ----------------------------------------------------------------------------------------------

VAR_POOL = [
    ("dense_kernel", (31, 33)),   # 1023 elements
    ("dense_bias", (33,)),
    ("embedding", (7, 5)),
    ("conv_kernel", (3, 3, 2, 4)),
    ("norm_gamma", (3,)),
    ("norm_bias", (1,)),
]


class Ctx:
    def __init__(self, name, seed, randomize):
        self.name = name
        self.randomize = randomize
        key = [int(seed), zlib.crc32(name.encode()), int(bool(randomize))]
        self.rng = np.random.default_rng(key)            # data
        self.hrng = np.random.default_rng(key + [7])     # hyperparameters
        self.notes = []
        self.vars = None
        self.grads = None
        self.lso_scaled = False
        self.nonfinite = {}
        self.rank_grads = None      # [step][rank][variable] (multi-rank cases), see ranks()
        self.nonfinite_rank = {}    # step -> the rank whose gradient gets the non-finite value

    # --- hyperparameters -------------------------------------------------------------------
    def h(self, default, lo=None, hi=None, log=False, n=3):
        """default in fixed mode; a random value in [lo, hi] with --randomize."""
        if not self.randomize or lo is None:
            return default
        if log:
            v = 10 ** self.hrng.uniform(math.log10(lo), math.log10(hi))
        else:
            v = self.hrng.uniform(lo, hi)
        return sig(float(v), n)

    def hint(self, default, lo, hi):
        if not self.randomize:
            return default
        return int(self.hrng.integers(lo, hi + 1))

    def hchoice(self, default, choices):
        if not self.randomize:
            return default
        return choices[int(self.hrng.integers(0, len(choices)))]

    # --- data --------------------------------------------------------------------------------
    def data(self, steps=10, steps_range=(10, 14), need_bias=False, null_frac=0.0,
             null_first_steps=0, grad_exp=(-3.0, 1.0), grad_mult=None, nonfinite=None,
             lso_scaled=False, names=None):
        """Variables (3-5, including a >1000-element one, a [7,5] one, a tiny one) with random
        initial values, and per-step gradients of varied scale per variable and per step.

        null_frac: fraction of (step, variable) gradients that are None (at least one per case
        when > 0, never all in one step). null_first_steps: variable with index 1 gets no
        gradient in the first k steps. grad_mult: gradients multiplied by this (loss scaling).
        nonfinite: {step: "inf"|"nan"|"-inf"} injected (LossScaleOptimizer cases).
        lso_scaled: gradients are multiplied by the LSO's current dynamic scale at run time.
        names: [(name, shape), ...] to use instead of variables drawn from VAR_POOL (cases whose
        exclusion patterns need particular names)."""
        rng = self.rng
        n_steps = steps if not self.randomize else int(rng.integers(steps_range[0],
                                                                    steps_range[1] + 1))
        if names is not None:
            shapes = dict(names)
            names = [n for n, _ in names]
        else:
            names = ["dense_kernel", "embedding"]
            names.append(["norm_gamma", "norm_bias"][int(rng.integers(0, 2))])
            extras = [n for n, _ in VAR_POOL if n not in names]
            n_extra = int(rng.integers(0, 3))
            for n in rng.permutation(extras)[:n_extra]:
                names.append(str(n))
            if need_bias and not any(n.endswith("bias") for n in names):
                if len(names) == 5:
                    names.pop()   # an optional extra; keep 3-5 variables
                names.append("dense_bias")
            names = [n for n, _ in VAR_POOL if n in names]
            shapes = dict(VAR_POOL)
        self.vars = []
        for n in names:
            shape = shapes[n]
            if n == "norm_gamma":
                init = 1.0 + 0.1 * rng.standard_normal(shape)
            elif n.endswith("bias"):
                init = 0.1 * rng.standard_normal(shape)
            else:
                init = rng.standard_normal(shape) * 10 ** rng.uniform(-1.3, 0.3)
            self.vars.append((n, shape, round_sig_array(init)))

        grads = []
        for s in range(n_steps):
            row = []
            for (n, shape, _) in self.vars:
                for _attempt in range(10):
                    scale = 10 ** rng.uniform(*grad_exp)
                    g = rng.standard_normal(shape) * scale
                    g[rng.random(shape) < 0.02] = 0.0
                    g = round_sig_array(g, 4)
                    if np.any(g != 0):
                        break
                row.append(g)
            grads.append(row)

        nv = len(self.vars)
        if null_frac > 0:
            n_null = 0
            for s in range(n_steps):
                for i in range(nv):
                    if rng.random() < null_frac:
                        grads[s][i] = None
                        n_null += 1
                if all(g is None for g in grads[s]):
                    i = int(rng.integers(0, nv))
                    grads[s][i] = round_sig_array(rng.standard_normal(self.vars[i][1]))
                    n_null -= 1
            if n_null == 0:
                grads[1][nv - 1] = None
        if null_first_steps:
            for s in range(null_first_steps):
                grads[s][1] = None
        if grad_mult is not None:
            grads = [[None if g is None else (g * np.float32(grad_mult)).astype(np.float32)
                      for g in row] for row in grads]
        self.nonfinite = {}
        for s, kind in (nonfinite or {}).items():
            if s >= n_steps:
                continue
            live = [i for i, g in enumerate(grads[s]) if g is not None]
            i = live[int(rng.integers(0, len(live)))]
            j = int(rng.integers(0, int(np.prod(self.vars[i][1]))))
            self.nonfinite[s] = (kind, i, j)
        self.lso_scaled = lso_scaled
        self.grads = grads
        return n_steps

    @property
    def n_steps(self):
        return len(self.grads)

    def _norms(self):
        return [[float(np.linalg.norm(g.astype(np.float64))) for g in row if g is not None]
                for row in self.grads]

    def clipnorm(self, q=0.5):
        """A clipnorm threshold with some per-variable norms above it and some below."""
        q = self.h(q, 0.3, 0.7)
        flat = [x for row in self._norms() for x in row]
        t = sig(float(np.quantile(flat, q)))
        above = sum(x > t for x in flat)
        self.notes.append("clipnorm=%g: %d of %d per-variable gradient norms are above it"
                          % (t, above, len(flat)))
        return t

    def global_clipnorm(self, q=0.5):
        q = self.h(q, 0.3, 0.7)
        flat = [math.sqrt(sum(x * x for x in row)) for row in self._norms()]
        t = sig(float(np.quantile(flat, q)))
        above = sum(x > t for x in flat)
        self.notes.append("global_clipnorm=%g: the global norm is above it in %d of %d steps"
                          % (t, above, len(flat)))
        return t

    def clipvalue(self, q=0.6):
        q = self.h(q, 0.4, 0.8)
        flat = np.concatenate([np.abs(g).ravel() for row in self.grads for g in row
                               if g is not None])
        t = sig(float(np.quantile(flat, q)))
        self.notes.append("clipvalue=%g: %.0f%% of gradient elements are clipped"
                          % (t, 100.0 * np.mean(flat > t)))
        return t

    # --- data-parallel ranks -------------------------------------------------------------------
    def ranks(self, n_ranks, spread=1.0):
        """Turns the gradients of data() into those of n_ranks data-parallel ranks: rank r's
        gradient of a tensor g is g + spread * rms(g) * z_r (z_r standard normal), put on the
        tensor's exact-sum grid (exact_sum_grid); an exact zero of g stays an exact zero of the
        mean (ranks 0 and 1 hold a and -a there, the others 0). None gradients are None on every
        rank. Afterwards self.grads holds the means (rank_mean), so thresholds (clipnorm, ...) are
        drawn from what Keras applies; non-finite values (data(nonfinite=...)) go to one rank."""
        assert 1 <= n_ranks <= 4, "the exact-sum grid holds up to four ranks"
        rng = self.rng
        self.rank_grads = []
        for row in self.grads:
            per_rank = [[] for _ in range(n_ranks)]
            for g in row:
                if g is None:
                    for r in range(n_ranks):
                        per_rank[r].append(None)
                    continue
                g64 = np.asarray(g, dtype=np.float64)
                rms = math.sqrt(float(np.mean(g64 * g64))) or 1.0
                z = rng.standard_normal((n_ranks,) + g64.shape)
                x = g64[None] + spread * rms * z
                zero = g64 == 0
                if n_ranks >= 2:
                    x[1][zero] = -x[0][zero]
                    x[2:, zero] = 0.0
                else:
                    x[0][zero] = 0.0
                q = exact_sum_grid(x)
                for r in range(n_ranks):
                    per_rank[r].append(q[r])
            self.rank_grads.append(per_rank)
        self.grads = [rank_mean(per_rank) for per_rank in self.rank_grads]
        self.nonfinite_rank = {s: int(rng.integers(0, n_ranks)) for s in self.nonfinite}
        self.notes.append("%d ranks: rank r's gradients are rank_steps[s][r], steps are their "
                          "float32 mean (sum, then times float32(1/%d))" % (n_ranks, n_ranks))
        return n_ranks


def exact_sum_grid(x):
    """x (ranks, ...) float64 -> float32 values on a grid of 2^(ceil(log2(max |x|)) - 20): every
    value is an integer multiple k of the grid with |k| <= 2^20, so any partial sum of up to four
    of them is below 2^22 grid units and exact in float32 (24-bit significand): the sum does not
    depend on the order of the additions."""
    amax = float(np.max(np.abs(x)))
    if amax == 0.0:
        return np.zeros(x.shape, dtype=np.float32)
    grid = 2.0 ** (math.ceil(math.log2(amax)) - 20)
    q = (np.round(x / grid) * grid).astype(np.float32)
    assert np.array_equal(q.astype(np.float64), np.round(x / grid) * grid)
    return q


def rank_mean(per_rank):
    """The gradients one step applies in a data-parallel run, per variable: the float32 sum of the
    ranks' gradients in rank order (exact here, see exact_sum_grid) times float32(1/R), as
    cuoptim's REDUCE_MEAN computes it. None where the ranks have no gradient."""
    n = len(per_rank)
    inv = np.float32(1.0 / n)
    out = []
    for i in range(len(per_rank[0])):
        if per_rank[0][i] is None:
            assert all(rr[i] is None for rr in per_rank)
            out.append(None)
            continue
        total = np.asarray(per_rank[0][i], dtype=np.float32)
        for rr in per_rank[1:]:
            total = (total + rr[i]).astype(np.float32)
        out.append((total * inv).astype(np.float32))
    return out


# ----------------------------------------------------------------------------------------------
# The cases
# ----------------------------------------------------------------------------------------------

CASES = []


def case(name):
    def deco(fn):
        CASES.append((name, fn))
        return fn
    return deco


def lr(c, default, lo=None, hi=None):
    return c.h(default, lo if lo is not None else default / 3,
               hi if hi is not None else default * 3, log=True)


# 1. Keras defaults ------------------------------------------------------------------------------
_DEFAULTS = [("sgd", "SGD"), ("rmsprop", "RMSprop"), ("adagrad", "Adagrad"),
             ("adadelta", "Adadelta"), ("adam", "Adam"), ("adamw", "AdamW"),
             ("adamax", "Adamax"), ("nadam", "Nadam"), ("lion", "Lion"), ("lamb", "Lamb"),
             ("ftrl", "Ftrl"), ("schedule_free_adamw", "ScheduleFreeAdamW"),
             ("adafactor", "Adafactor")]


def _make_defaults(cls_name):
    def fn(c):
        c.data()
        return getattr(O, cls_name)(), "%s with pure Keras defaults." % cls_name
    return fn


for _short, _cls in _DEFAULTS:
    case("%s_defaults" % _short)(_make_defaults(_cls))


@case("sgd_defaults_lr")
def _(c):
    c.data()
    return O.SGD(learning_rate=lr(c, 0.1)), "SGD, defaults except a larger learning rate."


@case("adagrad_defaults_lr")
def _(c):
    c.data()
    return O.Adagrad(learning_rate=lr(c, 0.1)), "Adagrad, defaults except a larger learning rate."


@case("adadelta_defaults_lr")
def _(c):
    c.data()
    return (O.Adadelta(learning_rate=lr(c, 1.0, 0.3, 3.0)),
            "Adadelta, defaults except learning_rate (the default 0.001 barely moves anything).")


@case("ftrl_defaults_lr")
def _(c):
    c.data()
    return O.Ftrl(learning_rate=lr(c, 0.1)), "Ftrl, defaults except a larger learning rate."


@case("lion_defaults_lr")
def _(c):
    c.data()
    return O.Lion(learning_rate=lr(c, 0.01)), "Lion, defaults except a larger learning rate."


# 2. Non-default hyperparameters -----------------------------------------------------------------
@case("sgd_momentum")
def _(c):
    c.data()
    return (O.SGD(learning_rate=lr(c, 0.05), momentum=c.h(0.9, 0.5, 0.99)),
            "SGD with momentum.")


@case("sgd_nesterov")
def _(c):
    c.data()
    return (O.SGD(learning_rate=lr(c, 0.05), momentum=c.h(0.8, 0.5, 0.99), nesterov=True),
            "SGD with Nesterov momentum.")


@case("rmsprop_momentum")
def _(c):
    c.data()
    return (O.RMSprop(learning_rate=lr(c, 0.01), rho=c.h(0.8, 0.5, 0.99),
                      momentum=c.h(0.5, 0.1, 0.95), epsilon=c.h(1e-6, 1e-8, 1e-4, log=True)),
            "RMSprop with momentum, non-default rho and epsilon.")


@case("rmsprop_centered")
def _(c):
    c.data()
    return (O.RMSprop(learning_rate=lr(c, 0.01), rho=c.h(0.9, 0.5, 0.99), centered=True),
            "RMSprop centered (no momentum).")


@case("rmsprop_centered_momentum")
def _(c):
    c.data()
    return (O.RMSprop(learning_rate=lr(c, 0.005), rho=c.h(0.95, 0.5, 0.99),
                      momentum=c.h(0.9, 0.1, 0.95), epsilon=c.h(1e-5, 1e-8, 1e-4, log=True),
                      centered=True),
            "RMSprop centered with momentum.")


@case("adagrad_nondefault")
def _(c):
    c.data()
    return (O.Adagrad(learning_rate=lr(c, 0.05), initial_accumulator_value=c.h(0.5, 0.01, 1.0),
                      epsilon=c.h(1e-4, 1e-8, 1e-3, log=True)),
            "Adagrad with non-default initial_accumulator_value and epsilon.")


@case("adadelta_nondefault")
def _(c):
    c.data()
    return (O.Adadelta(learning_rate=lr(c, 0.5), rho=c.h(0.8, 0.5, 0.99),
                       epsilon=c.h(1e-5, 1e-8, 1e-3, log=True)),
            "Adadelta with non-default rho and epsilon.")


@case("adam_amsgrad")
def _(c):
    c.data()
    return (O.Adam(learning_rate=lr(c, 0.01), amsgrad=True),
            "Adam with amsgrad (gradients vary in scale so velocity_hat keeps the maximum).")


@case("adam_betas")
def _(c):
    c.data()
    return (O.Adam(learning_rate=lr(c, 0.02), beta_1=c.h(0.8, 0.5, 0.95),
                   beta_2=c.h(0.95, 0.9, 0.9999), epsilon=c.h(1e-4, 1e-8, 1e-3, log=True)),
            "Adam with non-default beta_1, beta_2, epsilon.")


@case("adam_amsgrad_betas")
def _(c):
    c.data()
    return (O.Adam(learning_rate=lr(c, 0.01), beta_1=c.h(0.7, 0.5, 0.95),
                   beta_2=c.h(0.9, 0.8, 0.999), epsilon=c.h(1e-6, 1e-8, 1e-3, log=True),
                   amsgrad=True),
            "Adam with amsgrad and non-default betas/epsilon.")


@case("adamw_wd")
def _(c):
    c.data()
    return (O.AdamW(learning_rate=lr(c, 0.01), weight_decay=c.h(0.1, 0.01, 0.3),
                    beta_1=c.h(0.85, 0.5, 0.95), beta_2=c.h(0.99, 0.9, 0.9999)),
            "AdamW with a large weight_decay and non-default betas (no exclusions).")


@case("adamw_amsgrad")
def _(c):
    c.data()
    return (O.AdamW(learning_rate=lr(c, 0.01), weight_decay=c.h(0.02, 0.001, 0.1),
                    amsgrad=True),
            "AdamW with amsgrad.")


@case("adamax_nondefault")
def _(c):
    c.data()
    return (O.Adamax(learning_rate=lr(c, 0.02), beta_1=c.h(0.7, 0.5, 0.95),
                     beta_2=c.h(0.99, 0.9, 0.9999), epsilon=c.h(1e-5, 1e-8, 1e-3, log=True)),
            "Adamax with non-default beta_1, beta_2, epsilon.")


@case("nadam_betas")
def _(c):
    c.data()
    return (O.Nadam(learning_rate=lr(c, 0.01), beta_1=c.h(0.8, 0.5, 0.95),
                    beta_2=c.h(0.98, 0.9, 0.9999), epsilon=c.h(1e-6, 1e-8, 1e-3, log=True)),
            "Nadam with non-default beta_1, beta_2, epsilon (u_product schedule).")


@case("lion_betas")
def _(c):
    c.data()
    return (O.Lion(learning_rate=lr(c, 0.003), beta_1=c.h(0.8, 0.5, 0.95),
                   beta_2=c.h(0.95, 0.9, 0.999)),
            "Lion with non-default beta_1, beta_2 (gradients contain exact zeros: sign(0)=0).")


@case("lamb_nondefault")
def _(c):
    c.data()
    return (O.Lamb(learning_rate=lr(c, 0.02), beta_1=c.h(0.8, 0.5, 0.95),
                   beta_2=c.h(0.99, 0.9, 0.9999), epsilon=c.h(1e-5, 1e-8, 1e-3, log=True)),
            "Lamb with non-default beta_1, beta_2, epsilon (trust ratio per variable).")


@case("ftrl_l1_l2")
def _(c):
    c.data()
    return (O.Ftrl(learning_rate=lr(c, 0.1), l1_regularization_strength=c.h(0.01, 0.001, 0.1),
                   l2_regularization_strength=c.h(0.02, 0.001, 0.1)),
            "Ftrl with l1 and l2 regularization.")


@case("ftrl_shrinkage")
def _(c):
    c.data()
    return (O.Ftrl(learning_rate=lr(c, 0.1), l2_regularization_strength=c.h(0.01, 0.001, 0.1),
                   l2_shrinkage_regularization_strength=c.h(0.05, 0.005, 0.2)),
            "Ftrl with l2 and l2_shrinkage regularization.")


@case("ftrl_beta_power")
def _(c):
    c.data()
    return (O.Ftrl(learning_rate=lr(c, 0.1), learning_rate_power=c.h(-0.3, -0.9, -0.1),
                   initial_accumulator_value=c.h(0.5, 0.01, 1.0), beta=c.h(0.5, 0.1, 2.0)),
            "Ftrl with non-default learning_rate_power, initial_accumulator_value, beta.")


@case("ftrl_all")
def _(c):
    c.data()
    return (O.Ftrl(learning_rate=lr(c, 0.05), learning_rate_power=c.h(-0.7, -0.9, -0.1),
                   initial_accumulator_value=c.h(0.2, 0.01, 1.0),
                   l1_regularization_strength=c.h(0.005, 0.001, 0.05),
                   l2_regularization_strength=c.h(0.01, 0.001, 0.1),
                   l2_shrinkage_regularization_strength=c.h(0.02, 0.001, 0.1),
                   beta=c.h(0.3, 0.1, 2.0)),
            "Ftrl with every option non-default.")


@case("ftrl_power_zero")
def _(c):
    c.data()
    return (O.Ftrl(learning_rate=lr(c, 0.05), learning_rate_power=0.0,
                   l2_regularization_strength=c.h(0.01, 0.001, 0.1)),
            "Ftrl with learning_rate_power=0 (constant per-coordinate rate).")


# 3. Clipping -------------------------------------------------------------------------------------
@case("sgd_clipnorm")
def _(c):
    c.data()
    return (O.SGD(learning_rate=lr(c, 0.05), momentum=c.h(0.9, 0.5, 0.99), clipnorm=c.clipnorm()),
            "SGD momentum with clipnorm (per-variable norm clipping).")


@case("adam_clipnorm")
def _(c):
    c.data()
    return O.Adam(learning_rate=lr(c, 0.01), clipnorm=c.clipnorm()), "Adam with clipnorm."


@case("sgd_clipvalue")
def _(c):
    c.data()
    return O.SGD(learning_rate=lr(c, 0.05), clipvalue=c.clipvalue()), "SGD with clipvalue."


@case("adam_clipvalue")
def _(c):
    c.data()
    return O.Adam(learning_rate=lr(c, 0.01), clipvalue=c.clipvalue()), "Adam with clipvalue."


@case("sgd_global_clipnorm")
def _(c):
    c.data()
    return (O.SGD(learning_rate=lr(c, 0.05), momentum=c.h(0.5, 0.1, 0.99),
                  global_clipnorm=c.global_clipnorm()),
            "SGD momentum with global_clipnorm.")


@case("adam_global_clipnorm")
def _(c):
    c.data()
    return (O.Adam(learning_rate=lr(c, 0.01), global_clipnorm=c.global_clipnorm()),
            "Adam with global_clipnorm.")


@case("rmsprop_clipnorm")
def _(c):
    c.data()
    return (O.RMSprop(learning_rate=lr(c, 0.01), clipnorm=c.clipnorm(0.4)),
            "RMSprop with clipnorm.")


@case("lamb_global_clipnorm")
def _(c):
    c.data()
    return (O.Lamb(learning_rate=lr(c, 0.01), global_clipnorm=c.global_clipnorm(0.6)),
            "Lamb with global_clipnorm.")


# 4. Learning-rate schedules --------------------------------------------------------------------
@case("sgd_schedule_exponential")
def _(c):
    c.data()
    s = S.ExponentialDecay(lr(c, 0.1), decay_steps=c.hint(3, 1, 5),
                           decay_rate=c.h(0.5, 0.2, 0.95))
    return O.SGD(learning_rate=s), "SGD with ExponentialDecay (continuous)."


@case("sgd_schedule_exponential_staircase")
def _(c):
    c.data()
    s = S.ExponentialDecay(lr(c, 0.1), decay_steps=c.hint(4, 2, 5),
                           decay_rate=c.h(0.3, 0.2, 0.95), staircase=True)
    return (O.SGD(learning_rate=s, momentum=c.h(0.5, 0.1, 0.9)),
            "SGD momentum with ExponentialDecay staircase.")


@case("adam_schedule_piecewise")
def _(c):
    n = c.data()
    if c.randomize:
        k = int(c.hrng.integers(1, 5))
        bounds = sorted(int(b) for b in c.hrng.choice(np.arange(0, n - 1), size=k, replace=False))
        values = [sig(float(10 ** c.hrng.uniform(-3, -1))) for _ in range(k + 1)]
    else:
        bounds, values = [2, 5, 8], [0.05, 0.02, 0.01, 0.005]
    s = S.PiecewiseConstantDecay(bounds, values)
    return (O.Adam(learning_rate=s),
            "Adam with PiecewiseConstantDecay (boundaries inclusive on the upper side).")


@case("sgd_schedule_piecewise")
def _(c):
    n = c.data()
    if c.randomize:
        k = int(c.hrng.integers(1, 5))
        bounds = sorted(int(b) for b in c.hrng.choice(np.arange(0, n - 1), size=k, replace=False))
        values = [sig(float(10 ** c.hrng.uniform(-3, -1))) for _ in range(k + 1)]
    else:
        bounds, values = [0, 3, 9], [0.1, 0.05, 0.2, 0.01]
    s = S.PiecewiseConstantDecay(bounds, values)
    return (O.SGD(learning_rate=s, momentum=c.h(0.9, 0.1, 0.95)),
            "SGD momentum with PiecewiseConstantDecay (a boundary at step 0).")


@case("sgd_schedule_polynomial")
def _(c):
    c.data()
    s = S.PolynomialDecay(lr(c, 0.1), decay_steps=c.hint(8, 3, 9),
                          end_learning_rate=c.h(0.001, 0.0001, 0.01, log=True),
                          power=c.h(2.0, 0.3, 3.0))
    return (O.SGD(learning_rate=s),
            "SGD with PolynomialDecay power != 1, no cycle (clamps at decay_steps).")


@case("sgd_schedule_polynomial_cycle")
def _(c):
    c.data()
    s = S.PolynomialDecay(lr(c, 0.1), decay_steps=c.hint(4, 2, 5),
                          end_learning_rate=c.h(0.005, 0.0001, 0.01, log=True),
                          power=c.h(0.5, 0.3, 3.0), cycle=True)
    return (O.SGD(learning_rate=s, momentum=c.h(0.5, 0.1, 0.9)),
            "SGD momentum with PolynomialDecay cycle=True, power != 1.")


@case("adam_schedule_polynomial")
def _(c):
    c.data()
    s = S.PolynomialDecay(lr(c, 0.02), decay_steps=c.hint(6, 3, 9))
    return O.Adam(learning_rate=s), "Adam with PolynomialDecay defaults (power 1, no cycle)."


@case("adam_schedule_inverse_time")
def _(c):
    c.data()
    s = S.InverseTimeDecay(lr(c, 0.02), decay_steps=c.hint(2, 1, 5),
                           decay_rate=c.h(0.5, 0.1, 2.0))
    return O.Adam(learning_rate=s), "Adam with InverseTimeDecay (continuous)."


@case("sgd_schedule_inverse_time_staircase")
def _(c):
    c.data()
    s = S.InverseTimeDecay(lr(c, 0.1), decay_steps=c.hint(3, 2, 5),
                           decay_rate=c.h(0.7, 0.1, 2.0), staircase=True)
    return O.SGD(learning_rate=s), "SGD with InverseTimeDecay staircase."


@case("sgd_schedule_cosine")
def _(c):
    c.data()
    s = S.CosineDecay(lr(c, 0.1), decay_steps=c.hint(10, 4, 11))
    return (O.SGD(learning_rate=s, momentum=c.h(0.5, 0.1, 0.9)),
            "SGD momentum with plain CosineDecay (alpha 0; lr reaches 0 at decay_steps).")


@case("adam_schedule_cosine_alpha")
def _(c):
    c.data()
    s = S.CosineDecay(lr(c, 0.02), decay_steps=c.hint(7, 4, 9), alpha=c.h(0.1, 0.01, 0.5))
    return O.Adam(learning_rate=s), "Adam with CosineDecay alpha != 0, no warm-up."


@case("adam_schedule_cosine_warmup")
def _(c):
    c.data()
    s = S.CosineDecay(c.h(0.0, 0.0, 0.005), decay_steps=c.hint(6, 3, 8),
                      alpha=c.h(0.05, 0.0, 0.3), warmup_target=lr(c, 0.05),
                      warmup_steps=c.hint(3, 1, 5))
    return (O.Adam(learning_rate=s),
            "Adam with CosineDecay with linear warm-up (warmup_target, warmup_steps) and alpha.")


@case("sgd_schedule_cosine_warmup")
def _(c):
    c.data()
    s = S.CosineDecay(c.h(0.01, 0.0, 0.05), decay_steps=c.hint(5, 3, 8),
                      warmup_target=lr(c, 0.1), warmup_steps=c.hint(4, 1, 5))
    return (O.SGD(learning_rate=s),
            "SGD with CosineDecay warm-up from a non-zero initial_learning_rate, alpha 0.")


@case("sgd_schedule_cosine_restarts")
def _(c):
    c.data()
    s = S.CosineDecayRestarts(lr(c, 0.1), first_decay_steps=c.hint(2, 1, 4),
                              t_mul=c.h(2.0, 1.5, 3.0), m_mul=c.h(0.7, 0.3, 0.95),
                              alpha=c.h(0.1, 0.01, 0.3))
    return (O.SGD(learning_rate=s),
            "SGD with CosineDecayRestarts t_mul != 1, m_mul != 1, alpha != 0.")


@case("sgd_schedule_cosine_restarts_tmul1")
def _(c):
    c.data()
    s = S.CosineDecayRestarts(lr(c, 0.1), first_decay_steps=c.hint(3, 1, 4), t_mul=1.0,
                              m_mul=c.h(0.8, 0.3, 0.95), alpha=c.h(0.05, 0.01, 0.3))
    return (O.SGD(learning_rate=s, momentum=c.h(0.5, 0.1, 0.9)),
            "SGD momentum with CosineDecayRestarts t_mul=1 (fixed periods), m_mul != 1, alpha != 0.")


@case("adam_schedule_cosine_restarts")
def _(c):
    c.data()
    s = S.CosineDecayRestarts(lr(c, 0.02), first_decay_steps=c.hint(3, 1, 4))
    return (O.Adam(learning_rate=s),
            "Adam with CosineDecayRestarts defaults (t_mul 2, m_mul 1, alpha 0).")


# 5. Weight decay with exclusions -------------------------------------------------------------
@case("adam_wd_exclude")
def _(c):
    c.data(need_bias=True)
    return (O.Adam(learning_rate=lr(c, 0.01), weight_decay=c.h(0.05, 0.005, 0.2)),
            "Adam with weight_decay; variables matching 'bias$' are excluded.", ["bias$"])


@case("sgd_wd_exclude")
def _(c):
    c.data(need_bias=True)
    return (O.SGD(learning_rate=lr(c, 0.05), momentum=c.h(0.9, 0.1, 0.95),
                  weight_decay=c.h(0.01, 0.001, 0.2)),
            "SGD momentum with weight_decay; 'bias$' and 'gamma' are excluded.",
            ["bias$", "gamma"])


@case("lion_wd_exclude")
def _(c):
    c.data(need_bias=True)
    return (O.Lion(learning_rate=lr(c, 0.001), weight_decay=c.h(0.1, 0.01, 0.5)),
            "Lion with weight_decay; 'bias$' excluded.", ["bias$"])


@case("lamb_wd_exclude")
def _(c):
    c.data(need_bias=True)
    return (O.Lamb(learning_rate=lr(c, 0.01), weight_decay=c.h(0.01, 0.001, 0.1)),
            "Lamb with weight_decay (Lamb sees the decayed variable); 'bias$' and '^embedding' "
            "excluded.", ["bias$", "^embedding"])


@case("adamw_wd_exclude")
def _(c):
    c.data(need_bias=True)
    return (O.AdamW(learning_rate=lr(c, 0.01), weight_decay=c.h(0.05, 0.005, 0.2)),
            "AdamW with weight_decay; 'bias$' excluded.", ["bias$"])


# Exclusion patterns in Python `re` syntax (Keras joins them with "|" and re.search-es each
# variable name): constructs that POSIX regcomp reads otherwise, on names where that matters.
# (A global flag such as (?i) stays alone in its list: Keras joins a set, in no fixed order, and
# Python refuses a global flag after the first alternative.)
@case("adam_wd_exclude_python_digit")
def _(c):
    c.data(names=[("dense_kernel_1", (31, 33)), ("dense_kernel", (5, 4)), ("embed", (7, 5)),
                  ("conv_bias_2", (4,)), ("norm_gamma", (3,))])
    return (O.Adam(learning_rate=lr(c, 0.01), weight_decay=c.h(0.05, 0.005, 0.2)),
            "Adam with weight_decay; r'\\d$' excludes the names ending in a digit (POSIX reads \\d "
            "as 'd' and would exclude 'embed' instead).", [r"\d$"])


@case("adamw_wd_exclude_python_ignorecase")
def _(c):
    c.data(names=[("dense_kernel", (31, 33)), ("Dense_Bias", (33,)), ("OUT_BIAS_1", (5,)),
                  ("embedding", (7, 5)), ("norm_bias", (3,))])
    return (O.AdamW(learning_rate=lr(c, 0.01), weight_decay=c.h(0.05, 0.005, 0.2)),
            "AdamW with weight_decay; r'(?i)BIAS' excludes every name holding 'bias' in any case.",
            [r"(?i)BIAS"])


@case("sgd_wd_exclude_python_lazy_anchor")
def _(c):
    c.data(names=[("dense_1_bias", (33,)), ("dense_bias_1", (6,)), ("dense_kernel", (31, 33)),
                  ("norm_gamma_2", (3,)), ("conv_kernel_7", (3, 3, 2, 4))])
    return (O.SGD(learning_rate=lr(c, 0.05), momentum=c.h(0.9, 0.1, 0.95),
                  weight_decay=c.h(0.01, 0.001, 0.2)),
            "SGD momentum with weight_decay; r'^dense.*?bias\\Z' (lazy repeat, \\Z the very end) and "
            "r'(?:kernel|gamma)_\\d+' (non-capturing group) are excluded.",
            [r"^dense.*?bias\Z", r"(?:kernel|gamma)_\d+"])


@case("lion_wd_exclude_python_boundary")
def _(c):
    c.data(names=[("bias", (4,)), ("out.bias", (5,)), ("dense_bias", (33,)),
                  ("norm_gamma12", (3,)), ("norm_gamma123", (3,)), ("dense_kernel", (31, 33))])
    return (O.Lion(learning_rate=lr(c, 0.001), weight_decay=c.h(0.1, 0.01, 0.5)),
            "Lion with weight_decay; r'\\bbias\\b' (word boundaries: '_' is a word character) and "
            "r'gamma\\d{,2}$' (Python's {,n}) are excluded.", [r"\bbias\b", r"gamma\d{,2}$"])


@case("rmsprop_wd")
def _(c):
    c.data()
    return (O.RMSprop(learning_rate=lr(c, 0.01), weight_decay=c.h(0.05, 0.005, 0.2)),
            "RMSprop with (decoupled) weight_decay, no exclusions.")


# 6. EMA ----------------------------------------------------------------------------------------
@case("adam_ema")
def _(c):
    c.data()
    return (O.Adam(learning_rate=lr(c, 0.01), use_ema=True),
            "Adam with use_ema (ema_momentum default 0.99, no overwrite).")


@case("sgd_ema_overwrite")
def _(c):
    c.data()
    return (O.SGD(learning_rate=lr(c, 0.05), momentum=c.h(0.9, 0.1, 0.95), use_ema=True,
                  ema_momentum=c.h(0.9, 0.5, 0.99), ema_overwrite_frequency=c.hint(3, 2, 5)),
            "SGD momentum with use_ema and ema_overwrite_frequency.")


@case("adam_ema_null_grads")
def _(c):
    c.data(null_frac=0.2, null_first_steps=3)
    return (O.Adam(learning_rate=lr(c, 0.01), use_ema=True, ema_momentum=c.h(0.8, 0.5, 0.99),
                   ema_overwrite_frequency=c.hint(4, 2, 6)),
            "Adam with EMA + overwrite and some None gradients (the variable keeps its value, "
            "its slots are untouched, EMA still averages it).")


@case("nadam_ema")
def _(c):
    c.data()
    return (O.Nadam(learning_rate=lr(c, 0.01), use_ema=True, ema_momentum=c.h(0.95, 0.5, 0.99)),
            "Nadam with use_ema (Nadam's u_product comes after the EMA averages).")


# Null gradients ---------------------------------------------------------------------------------
@case("adam_null_grads")
def _(c):
    c.data(null_frac=0.25)
    return (O.Adam(learning_rate=lr(c, 0.01)),
            "Adam with some None gradients (no update, no slot change for those variables).")


@case("sgd_momentum_null_grads")
def _(c):
    c.data(null_frac=0.25, null_first_steps=2)
    return (O.SGD(learning_rate=lr(c, 0.05), momentum=c.h(0.9, 0.1, 0.95)),
            "SGD momentum with some None gradients.")


@case("nadam_null_grads")
def _(c):
    c.data(null_frac=0.25)
    return (O.Nadam(learning_rate=lr(c, 0.01)),
            "Nadam with some None gradients (u_product still advances once per step).")


# 7. Gradient accumulation ----------------------------------------------------------------------
@case("adam_accum2")
def _(c):
    c.data(steps=11)
    return (O.Adam(learning_rate=lr(c, 0.01), gradient_accumulation_steps=2),
            "Adam with gradient_accumulation_steps=2 (last micro-step left pending in the "
            "accumulators).")


@case("adam_accum3")
def _(c):
    c.data(steps=13)
    return (O.Adam(learning_rate=lr(c, 0.01), gradient_accumulation_steps=3),
            "Adam with gradient_accumulation_steps=3.")


@case("sgd_momentum_accum3")
def _(c):
    c.data(steps=13)
    return (O.SGD(learning_rate=lr(c, 0.05), momentum=c.h(0.9, 0.1, 0.95),
                  gradient_accumulation_steps=3),
            "SGD momentum with gradient_accumulation_steps=3.")


@case("sgd_momentum_accum2")
def _(c):
    c.data(steps=12)
    return (O.SGD(learning_rate=lr(c, 0.05), momentum=c.h(0.8, 0.1, 0.95),
                  gradient_accumulation_steps=2),
            "SGD momentum with gradient_accumulation_steps=2.")


@case("adam_accum3_schedule")
def _(c):
    c.data(steps=13)
    s = S.ExponentialDecay(lr(c, 0.02), decay_steps=c.hint(2, 1, 4),
                           decay_rate=c.h(0.7, 0.2, 0.95))
    return (O.Adam(learning_rate=s, gradient_accumulation_steps=3),
            "Adam with accumulation 3 and ExponentialDecay (the schedule sees the raw micro-step "
            "counter, bias correction the update count).")


@case("sgd_accum2_ema")
def _(c):
    c.data(steps=11)
    return (O.SGD(learning_rate=lr(c, 0.05), momentum=c.h(0.9, 0.1, 0.95),
                  gradient_accumulation_steps=2, use_ema=True, ema_momentum=c.h(0.9, 0.5, 0.99)),
            "SGD momentum with accumulation 2 and EMA (EMA runs on every micro-step).")


@case("adam_accum2_ema_overwrite")
def _(c):
    c.data(steps=12)
    return (O.Adam(learning_rate=lr(c, 0.01), gradient_accumulation_steps=2, use_ema=True,
                   ema_momentum=c.h(0.8, 0.5, 0.99), ema_overwrite_frequency=c.hint(2, 2, 4)),
            "Adam with accumulation 2, EMA and ema_overwrite_frequency (overwrite test uses the "
            "floor-divided iterations).")


@case("sgd_accum2_null_grads")
def _(c):
    c.data(steps=12, null_frac=0.2)
    return (O.SGD(learning_rate=lr(c, 0.05), momentum=c.h(0.9, 0.1, 0.95),
                  gradient_accumulation_steps=2),
            "SGD momentum with accumulation 2 and some None gradients (a None gradient leaves "
            "that variable's accumulator untouched for that micro-step).")


@case("nadam_accum2")
def _(c):
    c.data(steps=11)
    return (O.Nadam(learning_rate=lr(c, 0.01), gradient_accumulation_steps=2),
            "Nadam with accumulation 2 (u_product advances only on update steps).")


# 8. loss_scale_factor ---------------------------------------------------------------------------
@case("adam_loss_scale_factor")
def _(c):
    f = c.hchoice(128.0, [8.0, 64.0, 1024.0, 32768.0])
    c.data(grad_mult=f)
    return (O.Adam(learning_rate=lr(c, 0.01), loss_scale_factor=f),
            "Adam with loss_scale_factor (gradients are given pre-scaled; apply divides).")


@case("sgd_loss_scale_factor")
def _(c):
    f = c.h(1000.0, 10.0, 5000.0)
    c.data(grad_mult=f)
    return (O.SGD(learning_rate=lr(c, 0.05), momentum=c.h(0.5, 0.1, 0.95), loss_scale_factor=f),
            "SGD momentum with a non-power-of-two loss_scale_factor.")


@case("sgd_loss_scale_factor_clipnorm")
def _(c):
    f = c.hchoice(256.0, [8.0, 64.0, 1024.0])
    c.data(grad_mult=f)
    # clipnorm acts on the unscaled gradients
    flat = [float(np.linalg.norm(g.astype(np.float64))) / f for row in c.grads for g in row]
    t = sig(float(np.median(flat)))
    c.notes.append("clipnorm=%g applies to the unscaled gradients: %d of %d norms above it"
                   % (t, sum(x > t for x in flat), len(flat)))
    return (O.SGD(learning_rate=lr(c, 0.05), loss_scale_factor=f, clipnorm=t),
            "SGD with loss_scale_factor and clipnorm (unscaling happens before clipping).")


# 9. LossScaleOptimizer ---------------------------------------------------------------------------
@case("lso_adam_nonfinite")
def _(c):
    c.data(steps=14, steps_range=(12, 16), lso_scaled=True,
           nonfinite={2: "inf", 6: "nan", 7: "-inf", 12: "nan"})
    inner = O.Adam(learning_rate=lr(c, 0.01))
    return (O.LossScaleOptimizer(inner, initial_scale=c.hchoice(1024.0, [256.0, 4096.0, 2.0**15]),
                                 dynamic_growth_steps=c.hint(3, 2, 4)),
            "LossScaleOptimizer(Adam): gradients are true gradients times the current dynamic "
            "scale; some steps contain inf/nan (skipped, scale halves), runs of finite steps grow "
            "the scale.")


@case("lso_sgd_nonfinite")
def _(c):
    c.data(steps=14, steps_range=(12, 16), lso_scaled=True,
           nonfinite={0: "nan", 4: "inf", 5: "inf", 10: "-inf"})
    inner = O.SGD(learning_rate=lr(c, 0.05), momentum=c.h(0.9, 0.1, 0.95))
    return (O.LossScaleOptimizer(inner, initial_scale=c.hchoice(2.0**15, [2.0**10, 2.0**20]),
                                 dynamic_growth_steps=c.hint(3, 2, 4)),
            "LossScaleOptimizer(SGD momentum) with non-finite steps (the very first step is "
            "skipped).")


@case("lso_adam_large")
def _(c):
    c.data(steps=12, lso_scaled=True, grad_exp=(1.0, 4.0))
    inner = O.Adam(learning_rate=lr(c, 0.01))
    return (O.LossScaleOptimizer(inner, initial_scale=c.hchoice(2.0**24, [2.0**20, 2.0**28]),
                                 dynamic_growth_steps=c.hint(2, 2, 4)),
            "LossScaleOptimizer(Adam) with large float32 gradients (true gradients up to ~1e4 "
            "times a scale up to 2**28), all finite: the scale keeps growing.")


@case("lso_sgd_defaults")
def _(c):
    c.data(steps=12, lso_scaled=True, nonfinite={3: "inf"})
    return (O.LossScaleOptimizer(O.SGD()),
            "LossScaleOptimizer(SGD()) with LSO defaults (initial_scale 2**15, "
            "dynamic_growth_steps 2000) and one non-finite step.")


@case("lso_adamw_combo")
def _(c):
    c.data(steps=14, steps_range=(12, 16), lso_scaled=True, need_bias=True,
           nonfinite={3: "inf", 9: "nan"})
    flat = [float(np.linalg.norm(g.astype(np.float64))) for row in c.grads for g in row]
    t = sig(float(np.median(flat)))
    c.notes.append("inner clipnorm=%g (on the unscaled gradients)" % t)
    inner = O.AdamW(learning_rate=lr(c, 0.01), weight_decay=c.h(0.05, 0.005, 0.2), clipnorm=t,
                    use_ema=True, ema_momentum=c.h(0.9, 0.5, 0.99),
                    gradient_accumulation_steps=2)
    return (O.LossScaleOptimizer(inner, initial_scale=c.hchoice(512.0, [64.0, 4096.0]),
                                 dynamic_growth_steps=c.hint(2, 2, 4)),
            "LossScaleOptimizer around AdamW with clipnorm, weight decay (exclusions set on the "
            "inner optimizer), EMA and accumulation 2; skipped steps do not advance the inner "
            "iteration counter.", ["bias$"])


# 10. Combinations ------------------------------------------------------------------------------
@case("adamw_combo")
def _(c):
    c.data(steps=14, need_bias=True, null_frac=0.1)
    s = S.CosineDecay(0.0, decay_steps=c.hint(5, 3, 8), alpha=c.h(0.1, 0.0, 0.3),
                      warmup_target=lr(c, 0.02), warmup_steps=c.hint(2, 1, 4))
    return (O.AdamW(learning_rate=s, weight_decay=c.h(0.05, 0.005, 0.2), clipnorm=c.clipnorm(),
                    use_ema=True, ema_momentum=c.h(0.9, 0.5, 0.99),
                    ema_overwrite_frequency=c.hint(3, 2, 5), gradient_accumulation_steps=2),
            "AdamW with CosineDecay warm-up schedule, clipnorm, weight decay with exclusions, EMA "
            "with overwrite, accumulation 2 and some None gradients.", ["bias$"])


@case("schedule_free_adamw_warmup")
def _(c):
    c.data(steps=12)
    return (O.ScheduleFreeAdamW(learning_rate=lr(c, 0.02), beta_1=c.h(0.8, 0.5, 0.95),
                                beta_2=c.h(0.99, 0.9, 0.999), epsilon=c.h(1e-6, 1e-8, 1e-4, log=True),
                                warmup_steps=c.hint(5, 2, 8)),
            "ScheduleFreeAdamW with warmup_steps and non-default betas and epsilon.")


@case("schedule_free_adamw_wd_clip_ema")
def _(c):
    c.data(steps=12, need_bias=True, null_frac=0.1)
    return (O.ScheduleFreeAdamW(learning_rate=lr(c, 0.01), weight_decay=c.h(0.05, 0.005, 0.2),
                                clipnorm=c.clipnorm(), use_ema=True, ema_momentum=c.h(0.9, 0.5, 0.99)),
            "ScheduleFreeAdamW with weight decay ('bias$' excluded), clipnorm, EMA and some None "
            "gradients.", ["bias$"])


@case("schedule_free_adamw_schedule_accum")
def _(c):
    c.data(steps=13)
    s = S.ExponentialDecay(lr(c, 0.02), decay_steps=c.hint(3, 2, 5), decay_rate=c.h(0.8, 0.5, 0.95))
    return (O.ScheduleFreeAdamW(learning_rate=s, global_clipnorm=c.h(1.0, 0.3, 3.0), warmup_steps=3,
                                gradient_accumulation_steps=2),
            "ScheduleFreeAdamW with an ExponentialDecay schedule, warmup, global_clipnorm and "
            "accumulation 2.")


@case("lso_schedule_free_adamw_nonfinite")
def _(c):
    c.data(steps=12, steps_range=(12, 16), lso_scaled=True, nonfinite={3: "inf", 7: "nan"})
    inner = O.ScheduleFreeAdamW(learning_rate=lr(c, 0.01), warmup_steps=4)
    return (O.LossScaleOptimizer(inner, initial_scale=c.hchoice(1024.0, [256.0, 4096.0]),
                                 dynamic_growth_steps=c.hint(3, 2, 4)),
            "LossScaleOptimizer(ScheduleFreeAdamW): skipped steps do not advance the step the "
            "warmup and the averaging weight count.")


# Adafactor factors the last two dimensions: ranks 1 to 3, a matrix taller than wide (over 1,000
# elements), one wider than tall.
ADAFACTOR_VARS = [("tall_kernel", (48, 25)), ("wide_kernel", (5, 9)), ("cube_kernel", (3, 4, 6)),
                  ("dense_bias", (9,))]


@case("adafactor_hyperparameters")
def _(c):
    c.data(steps=12, names=ADAFACTOR_VARS, grad_exp=(-4.0, 1.5))
    return (O.Adafactor(learning_rate=lr(c, 0.05), beta_2_decay=c.h(-0.6, -0.9, -0.3),
                        epsilon_1=c.h(1e-20, 1e-30, 1e-10, log=True), epsilon_2=c.h(0.01, 1e-4, 0.1, log=True),
                        clip_threshold=c.h(0.5, 0.2, 2.0)),
            "Adafactor with non-default beta_2_decay, epsilons and clip_threshold; ranks 1 to 3, "
            "tall and wide matrices, gradients over five decades.")


@case("adafactor_absolute_step")
def _(c):
    c.data(steps=11, names=ADAFACTOR_VARS)
    return (O.Adafactor(learning_rate=lr(c, 0.02), relative_step=False),
            "Adafactor with relative_step=False (rho_t still takes min(lr, 1/sqrt(t))).")


@case("adafactor_wd_clip_ema_accum")
def _(c):
    c.data(steps=14, names=ADAFACTOR_VARS, null_frac=0.1)
    return (O.Adafactor(learning_rate=lr(c, 0.03), weight_decay=c.h(0.05, 0.005, 0.2), clipnorm=c.clipnorm(),
                        use_ema=True, ema_momentum=c.h(0.9, 0.5, 0.99), gradient_accumulation_steps=2),
            "Adafactor with weight decay ('bias$' excluded), clipnorm, EMA, accumulation 2 and some "
            "None gradients.", ["bias$"])


@case("adafactor_schedule_global_clip")
def _(c):
    c.data(steps=12)
    s = S.ExponentialDecay(lr(c, 0.05), decay_steps=c.hint(3, 2, 5), decay_rate=c.h(0.8, 0.5, 0.95))
    return (O.Adafactor(learning_rate=s, global_clipnorm=c.h(1.0, 0.3, 3.0)),
            "Adafactor with an ExponentialDecay schedule and global_clipnorm (Keras's variables, "
            "ranks 1, 2 and 4).")


@case("lso_adafactor_nonfinite")
def _(c):
    c.data(steps=12, steps_range=(12, 16), names=ADAFACTOR_VARS, lso_scaled=True, nonfinite={3: "inf", 7: "nan"})
    inner = O.Adafactor(learning_rate=lr(c, 0.02))
    return (O.LossScaleOptimizer(inner, initial_scale=c.hchoice(1024.0, [256.0, 4096.0]),
                                 dynamic_growth_steps=c.hint(3, 2, 4)),
            "LossScaleOptimizer(Adafactor): skipped steps do not advance Adafactor's step count.")


@case("lamb_combo")
def _(c):
    c.data(steps=13, need_bias=True)
    s = S.PolynomialDecay(lr(c, 0.02), decay_steps=c.hint(3, 2, 5), power=c.h(1.5, 0.5, 3.0),
                          cycle=True)
    return (O.Lamb(learning_rate=s, weight_decay=c.h(0.01, 0.001, 0.1),
                   global_clipnorm=c.global_clipnorm(), use_ema=True,
                   gradient_accumulation_steps=3),
            "Lamb with PolynomialDecay cycle, global_clipnorm, weight decay with exclusions, EMA, "
            "accumulation 3.", ["bias$"])


@case("sgd_combo")
def _(c):
    f = c.hchoice(64.0, [4.0, 512.0])
    c.data(steps=12, need_bias=True, grad_mult=f)
    flat = np.concatenate([np.abs(g).ravel() / f for row in c.grads for g in row])
    t = sig(float(np.quantile(flat, 0.7)))
    c.notes.append("clipvalue=%g on the unscaled, averaged gradients" % t)
    s = S.ExponentialDecay(lr(c, 0.1), decay_steps=c.hint(3, 2, 5),
                           decay_rate=c.h(0.6, 0.2, 0.95), staircase=True)
    return (O.SGD(learning_rate=s, momentum=c.h(0.9, 0.1, 0.95), nesterov=True,
                  weight_decay=c.h(0.02, 0.001, 0.1), clipvalue=t, use_ema=True,
                  ema_momentum=c.h(0.8, 0.5, 0.99), ema_overwrite_frequency=c.hint(4, 2, 5),
                  gradient_accumulation_steps=2, loss_scale_factor=f),
            "SGD Nesterov with ExponentialDecay staircase, clipvalue, weight decay with "
            "exclusions, EMA with overwrite, accumulation 2 and loss_scale_factor.",
            ["bias$", "gamma"])


@case("nadam_combo")
def _(c):
    c.data(steps=12)
    s = S.CosineDecayRestarts(lr(c, 0.02), first_decay_steps=c.hint(2, 1, 3),
                              t_mul=c.h(1.5, 1.1, 3.0), m_mul=c.h(0.8, 0.3, 0.95),
                              alpha=c.h(0.05, 0.0, 0.3))
    return (O.Nadam(learning_rate=s, clipnorm=c.clipnorm(), use_ema=True,
                    ema_momentum=c.h(0.9, 0.5, 0.99), gradient_accumulation_steps=2),
            "Nadam with CosineDecayRestarts, clipnorm, EMA, accumulation 2.")


@case("rmsprop_combo")
def _(c):
    c.data(steps=12, need_bias=True, null_frac=0.1)
    s = S.InverseTimeDecay(lr(c, 0.01), decay_steps=c.hint(2, 1, 4),
                           decay_rate=c.h(0.5, 0.1, 2.0))
    return (O.RMSprop(learning_rate=s, momentum=c.h(0.9, 0.1, 0.95), centered=True,
                      weight_decay=c.h(0.02, 0.001, 0.1), global_clipnorm=c.global_clipnorm(),
                      use_ema=True, ema_momentum=c.h(0.9, 0.5, 0.99),
                      ema_overwrite_frequency=c.hint(5, 2, 6)),
            "RMSprop centered+momentum with InverseTimeDecay, global_clipnorm, weight decay with "
            "exclusions, EMA with overwrite, some None gradients.", ["bias$"])


@case("adam_combo_amsgrad_accum")
def _(c):
    c.data(steps=13, need_bias=True)
    s = S.PiecewiseConstantDecay([1, 4, 7], [0.02, 0.01, 0.03, 0.005]) if not c.randomize else \
        S.PiecewiseConstantDecay([1, c.hint(4, 2, 5), 7],
                                 [sig(float(10 ** c.hrng.uniform(-3, -1.5))) for _ in range(4)])
    return (O.Adam(learning_rate=s, amsgrad=True, weight_decay=c.h(0.01, 0.001, 0.1),
                   clipvalue=c.clipvalue(), gradient_accumulation_steps=3, use_ema=True,
                   ema_momentum=c.h(0.7, 0.5, 0.99), ema_overwrite_frequency=c.hint(2, 2, 4)),
            "Adam amsgrad with PiecewiseConstantDecay, clipvalue, weight decay with exclusions, "
            "accumulation 3, EMA with overwrite.", ["bias$"])


# 11. Data-parallel ranks: rank_steps, with steps = their mean ------------------------------------
# Small variables and few steps: cuoptim-replay runs each of these under mpirun in CI.
# Muon: 2-D variables take the Newton-Schulz path, the others (rank 1 and 3, names containing
# "embedding", names an exclude_layers pattern finds) the AdamW path. A wide matrix of over 1,000
# elements, a tall one, a square one.
MUON_VARS = [("dense_kernel", (31, 33)), ("dense_bias", (33,)), ("proj_kernel", (12, 5)),
             ("token_embedding", (7, 5)), ("conv_kernel", (3, 2, 4)), ("output_dense_kernel", (6, 6))]
MUON_SMALL_VARS = [("dense_kernel", (6, 9)), ("proj_kernel", (8, 3)), ("dense_bias", (9,))]


@case("muon_defaults")
def _(c):
    c.data(steps=12, names=MUON_VARS)
    return (O.Muon(exclude_layers=["output_dense"]),
            "Muon with its defaults and exclude_layers=['output_dense']: a 31x33 (wide) and a 12x5 "
            "(tall) matrix on the Muon path; the bias (rank 1), the conv kernel (rank 3), the "
            "embedding and the excluded output_dense kernel on the AdamW path.")


@case("muon_hyperparameters")
def _(c):
    c.data(steps=11, names=MUON_VARS, grad_exp=(-4.0, 2.0))
    return (O.Muon(learning_rate=lr(c, 0.01), adam_beta_1=c.h(0.8, 0.5, 0.95),
                   adam_beta_2=c.h(0.99, 0.9, 0.9999), adam_weight_decay=c.h(0.01, 0.001, 0.1),
                   epsilon=c.h(1e-6, 1e-8, 1e-4, log=True), weight_decay=c.h(0.02, 0.001, 0.1),
                   muon_a=c.h(3.0, 2.5, 3.5), muon_b=c.h(-4.0, -4.8, -3.0), muon_c=c.h(1.8, 1.5, 2.1),
                   adam_lr_ratio=c.h(0.5, 0.1, 2.0), momentum=c.h(0.9, 0.5, 0.99), ns_steps=3,
                   nesterov=False, rms_rate=None, exclude_embeddings=False),
            "Muon with every hyperparameter changed: nesterov False, rms_rate None, ns_steps 3, "
            "exclude_embeddings False (the embedding takes the Muon path), gradients over six "
            "decades of scale.")


@case("muon_clip_ema_accum")
def _(c):
    c.data(steps=14, names=MUON_SMALL_VARS, null_frac=0.1)
    return (O.Muon(learning_rate=lr(c, 0.02), clipnorm=c.clipnorm(), use_ema=True,
                   ema_momentum=c.h(0.9, 0.5, 0.99), gradient_accumulation_steps=2,
                   rms_rate=c.h(0.3, 0.1, 0.5)),
            "Muon with clipnorm, EMA, gradient accumulation 2, some None gradients and weight "
            "decay with 'bias$' excluded.", ["bias$"])


@case("muon_schedule_global_clip")
def _(c):
    c.data(steps=12, names=MUON_SMALL_VARS)
    s = S.CosineDecay(lr(c, 0.05), decay_steps=c.hint(10, 5, 15), alpha=c.h(0.1, 0.0, 0.3))
    return (O.Muon(learning_rate=s, global_clipnorm=c.global_clipnorm(), ns_steps=c.hint(4, 2, 6)),
            "Muon with a CosineDecay schedule (weight decay reads it too), global_clipnorm and "
            "ns_steps 4.")


@case("lso_muon_nonfinite")
def _(c):
    c.data(steps=12, steps_range=(12, 16), names=MUON_SMALL_VARS, lso_scaled=True,
           nonfinite={3: "inf", 8: "nan"})
    inner = O.Muon(learning_rate=lr(c, 0.01))
    return (O.LossScaleOptimizer(inner, initial_scale=c.hchoice(1024.0, [256.0, 4096.0]),
                                 dynamic_growth_steps=c.hint(3, 2, 4)),
            "LossScaleOptimizer(Muon): skipped steps change neither the momentum nor the AdamW "
            "path's moments.")


RANK_VARS = [("dense_kernel", (4, 3)), ("dense_bias", (3,)), ("embedding", (5, 2)),
             ("norm_gamma", (2,))]


@case("ranks_sgd_momentum_clipnorm_r2")
def _(c):
    c.data(steps=8, names=RANK_VARS)
    c.ranks(2)
    return (O.SGD(learning_rate=lr(c, 0.05), momentum=c.h(0.9, 0.5, 0.99), clipnorm=c.clipnorm()),
            "2 ranks: SGD with momentum and clipnorm on the mean gradients.")


@case("ranks_rmsprop_centered_r3")
def _(c):
    c.data(steps=8, names=RANK_VARS)
    c.ranks(3)
    return (O.RMSprop(learning_rate=lr(c, 0.01), momentum=c.h(0.5, 0.1, 0.95), centered=True),
            "3 ranks: RMSprop centered with momentum.")


@case("ranks_adagrad_clipvalue_r4")
def _(c):
    c.data(steps=8, names=RANK_VARS)
    c.ranks(4)
    return (O.Adagrad(learning_rate=lr(c, 0.1), clipvalue=c.clipvalue()),
            "4 ranks: Adagrad with clipvalue.")


@case("ranks_adadelta_r2")
def _(c):
    c.data(steps=8, names=RANK_VARS)
    c.ranks(2)
    return (O.Adadelta(learning_rate=lr(c, 1.0, 0.3, 3.0)), "2 ranks: Adadelta.")


@case("ranks_adam_global_clipnorm_r3")
def _(c):
    c.data(steps=8, names=RANK_VARS)
    c.ranks(3)
    return (O.Adam(learning_rate=lr(c, 0.01), global_clipnorm=c.global_clipnorm()),
            "3 ranks: Adam with global_clipnorm (the norm of the mean gradients).")


@case("ranks_adamw_accum2_r4")
def _(c):
    c.data(steps=8, names=RANK_VARS)
    c.ranks(4)
    return (O.AdamW(learning_rate=lr(c, 0.01), weight_decay=c.h(0.05, 0.005, 0.2),
                    gradient_accumulation_steps=2),
            "4 ranks: AdamW with weight decay (exclusions) and gradient accumulation 2 (every "
            "micro-step's gradients are averaged over the ranks).", ["bias$"])


@case("ranks_adamax_loss_scale_factor_r2")
def _(c):
    f = c.hchoice(128.0, [8.0, 1024.0])
    c.data(steps=8, names=RANK_VARS, grad_mult=f)
    c.ranks(2)
    return (O.Adamax(learning_rate=lr(c, 0.02), loss_scale_factor=f),
            "2 ranks: Adamax with loss_scale_factor (the ranks' gradients are pre-scaled).")


@case("ranks_nadam_null_grads_r3")
def _(c):
    c.data(steps=8, names=RANK_VARS, null_frac=0.2)
    c.ranks(3)
    return (O.Nadam(learning_rate=lr(c, 0.01)),
            "3 ranks: Nadam with None gradients (the same variables on every rank).")


@case("ranks_lion_clipnorm_r4")
def _(c):
    c.data(steps=8, names=RANK_VARS)
    c.ranks(4)
    return (O.Lion(learning_rate=lr(c, 0.003), clipnorm=c.clipnorm()),
            "4 ranks: Lion with clipnorm (exact zeros of the mean: sign(0) = 0).")


@case("ranks_lamb_accum3_r2")
def _(c):
    c.data(steps=9, names=RANK_VARS)
    c.ranks(2)
    return (O.Lamb(learning_rate=lr(c, 0.02), gradient_accumulation_steps=3),
            "2 ranks: Lamb with gradient accumulation 3.")


@case("ranks_schedule_free_adamw_accum2_r3")
def _(c):
    c.data(steps=10, names=RANK_VARS)
    c.ranks(3)
    return (O.ScheduleFreeAdamW(learning_rate=lr(c, 0.01), warmup_steps=2, weight_decay=0.01,
                                gradient_accumulation_steps=2),
            "3 ranks: ScheduleFreeAdamW with warmup, weight decay and gradient accumulation 2.")


@case("ranks_muon_accum2_r2")
def _(c):
    c.data(steps=10, names=RANK_VARS)
    c.ranks(2)
    return (O.Muon(learning_rate=lr(c, 0.02), gradient_accumulation_steps=2, clipnorm=c.clipnorm()),
            "2 ranks: Muon (a tall 4x3 kernel on the Muon path; bias, embedding and gamma on the "
            "AdamW path) with clipnorm and gradient accumulation 2.")


@case("ranks_adafactor_clip_r2")
def _(c):
    c.data(steps=9, names=RANK_VARS)
    c.ranks(2)
    return (O.Adafactor(learning_rate=lr(c, 0.05), clipnorm=c.clipnorm(), weight_decay=0.01),
            "2 ranks: Adafactor (rank-1 and rank-2 variables) with clipnorm and weight decay.")


@case("ranks_ftrl_l1_l2_r3")
def _(c):
    c.data(steps=8, names=RANK_VARS)
    c.ranks(3)
    return (O.Ftrl(learning_rate=lr(c, 0.1), l1_regularization_strength=c.h(0.01, 0.001, 0.1),
                   l2_regularization_strength=c.h(0.02, 0.001, 0.1)),
            "3 ranks: Ftrl with l1 and l2 regularization.")


@case("ranks_lso_adam_nonfinite_r4")
def _(c):
    c.data(steps=9, names=RANK_VARS, lso_scaled=True, nonfinite={2: "inf", 5: "nan"})
    c.ranks(4)
    inner = O.Adam(learning_rate=lr(c, 0.01))
    return (O.LossScaleOptimizer(inner, initial_scale=c.hchoice(1024.0, [256.0, 4096.0]),
                                 dynamic_growth_steps=c.hint(2, 2, 4)),
            "4 ranks: LossScaleOptimizer(Adam); in some steps one rank's gradient holds inf or nan, "
            "so the mean does and every rank skips the step together.")


@case("ranks_lso_sgd_nonfinite_r2")
def _(c):
    c.data(steps=8, names=RANK_VARS, lso_scaled=True, nonfinite={3: "-inf"})
    c.ranks(2)
    inner = O.SGD(learning_rate=lr(c, 0.05), momentum=c.h(0.9, 0.1, 0.95))
    return (O.LossScaleOptimizer(inner, initial_scale=c.hchoice(2.0**15, [2.0**10, 2.0**20]),
                                 dynamic_growth_steps=c.hint(2, 2, 4)),
            "2 ranks: LossScaleOptimizer(SGD momentum); one rank's gradient holds -inf in one step.")


@case("ranks_sgd_combo_r3")
def _(c):
    f = c.h(1000.0, 10.0, 5000.0)
    c.data(steps=8, names=RANK_VARS, grad_mult=f)
    c.ranks(3)
    flat = [math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in row if g is not None))
            / f for row in c.grads]
    t = sig(float(np.median(flat)))
    c.notes.append("global_clipnorm=%g on the unscaled mean gradients" % t)
    return (O.SGD(learning_rate=lr(c, 0.05), momentum=c.h(0.5, 0.1, 0.95), loss_scale_factor=f,
                  global_clipnorm=t, gradient_accumulation_steps=2),
            "3 ranks: SGD momentum with a non-power-of-two loss_scale_factor, global_clipnorm and "
            "gradient accumulation 2.")


@case("ranks_adam_ema_null_grads_r4")
def _(c):
    c.data(steps=8, names=RANK_VARS, null_frac=0.15)
    c.ranks(4)
    return (O.Adam(learning_rate=lr(c, 0.01), use_ema=True, ema_momentum=c.h(0.9, 0.5, 0.99),
                   clipvalue=c.clipvalue()),
            "4 ranks: Adam with EMA, clipvalue and None gradients.")


# MultiOptimizer (keras.optimizers.MultiOptimizer with an OptimizerMap) ------------------------
# Variables are routed by name: an exact key first, else re.fullmatch over the keys, else the
# default. Keras raises when a sub-optimizer's variables all get None in one step, so None
# gradients here go to a sub-optimizer that keeps another gradient in that step.

def _multi(default, mapping, **kw):
    return O.MultiOptimizer(O.OptimizerMap(default_optimizer=default, optimizer_map=mapping), **kw)


def _null_keeping_one(c, var_names, steps):
    """None for the variables var_names at the given steps (their sub-optimizer keeps others)."""
    names = [n for n, _, _ in c.vars]
    for s in steps:
        for n in var_names:
            c.grads[s][names.index(n)] = None


@case("multi_adam_dense_sgd_default")
def _(c):
    c.data(steps=12, names=[("dense_kernel", (31, 33)), ("dense_bias", (33,)), ("embedding", (7, 5)),
                            ("norm_gamma", (3,))])
    _null_keeping_one(c, ["dense_bias"], [2, 5])
    return (_multi(O.SGD(learning_rate=lr(c, 0.05), momentum=c.h(0.9, 0.5, 0.95)),
                   {"dense.*": O.Adam(learning_rate=lr(c, 0.01))}),
            "MultiOptimizer: Adam for 'dense.*' (re.fullmatch), SGD with momentum the default; "
            "dense_bias has no gradient at steps 2 and 5.")


@case("multi_three_ema_accum")
def _(c):
    c.data(steps=12, names=[("dense_kernel", (31, 33)), ("dense_bias", (33,)), ("embedding", (7, 5)),
                            ("conv_kernel", (3, 3, 2, 4)), ("norm_gamma", (3,)), ("norm_bias", (1,))])
    _null_keeping_one(c, ["norm_bias"], [3])
    return (_multi(O.RMSprop(learning_rate=lr(c, 0.01), rho=c.h(0.9, 0.8, 0.95), centered=True),
                   {"dense_kernel": O.Adam(learning_rate=lr(c, 0.01), use_ema=True,
                                           ema_momentum=c.h(0.9, 0.5, 0.99)),
                    "embedding|conv_.*": O.SGD(learning_rate=lr(c, 0.05), momentum=0.9, nesterov=True,
                                               gradient_accumulation_steps=3),
                    "norm_.*": O.Lion(learning_rate=lr(c, 0.001), clipnorm=c.h(1.0, 0.5, 2.0))}),
            "MultiOptimizer, four sub-optimizers: Adam with EMA for the exact key 'dense_kernel', SGD "
            "nesterov with gradient_accumulation_steps=3 for 'embedding|conv_.*', Lion with clipnorm for "
            "'norm_.*', centered RMSprop the default (dense_bias); norm_bias has no gradient at step 3.")


@case("multi_adafactor_kernels")
def _(c):
    c.data(steps=10, names=[("dense_kernel", (31, 33)), ("dense_bias", (33,)), ("cube_kernel", (3, 4, 6))])
    return (_multi(O.Adam(learning_rate=lr(c, 0.01)),
                   {".*kernel": O.Adafactor(learning_rate=lr(c, 0.02))}),
            "MultiOptimizer: Adafactor for the matrices and the rank-3 kernel ('.*kernel'), Adam the "
            "default (the bias).")


@case("multi_loss_scale_factor")
def _(c):
    c.data(steps=11, names=[("dense_kernel", (31, 33)), ("embedding", (7, 5)), ("norm_gamma", (3,))],
           grad_mult=8.0)
    return (_multi(O.Adagrad(learning_rate=lr(c, 0.05), loss_scale_factor=2.0),
                   {"^dense_.*": O.AdamW(learning_rate=lr(c, 0.01), weight_decay=c.h(0.01, 0.001, 0.1),
                                         loss_scale_factor=3.0),
                    "emb.*": O.Nadam(learning_rate=lr(c, 0.01))},
                   loss_scale_factor=8.0),
            "MultiOptimizer with loss_scale_factor=8 at the top, replacing the sub-optimizers' own "
            "(3, 2 and None); gradients are given pre-scaled by 8: AdamW with weight decay for '^dense_.*', "
            "Nadam for 'emb.*', Adagrad the default.")


@case("multi_schedule_unused_sub")
def _(c):
    c.data(steps=10, names=[("dense_kernel", (31, 33)), ("norm_gamma", (3,)), ("norm_bias", (1,))])
    _null_keeping_one(c, ["norm_bias"], [0, 4])
    sched = S.ExponentialDecay(lr(c, 0.01), decay_steps=3, decay_rate=0.7)
    return (_multi(O.Adamax(learning_rate=lr(c, 0.01)),
                   {"norm_.*": O.Adam(learning_rate=sched, amsgrad=True),
                    "conv_.*": O.Adadelta(learning_rate=1.0)}),
            "MultiOptimizer: Adam amsgrad with an ExponentialDecay schedule for 'norm_.*', Adadelta for "
            "'conv_.*' that no variable matches (never built: only its iteration and learning_rate), "
            "Adamax the default; norm_bias has no gradient at steps 0 and 4.")


# ----------------------------------------------------------------------------------------------
# Running a case through Keras
# ----------------------------------------------------------------------------------------------

def is_lso(opt):
    return isinstance(opt, O.LossScaleOptimizer)


def inner_of(opt):
    return opt.inner_optimizer if is_lso(opt) else opt


def uses_ema(opt):
    if isinstance(opt, O.MultiOptimizer):
        return any(o.use_ema for o in opt.optimizers)
    return inner_of(opt).use_ema


def make_variables(var_specs):
    return [keras.Variable(np.asarray(init, dtype=np.float32).reshape(shape), name=name,
                           dtype="float32")
            for (name, shape, init) in var_specs]


def lso_apply_eager(opt, grads, variables):
    """LossScaleOptimizer.apply() as Keras runs it on its stateful path
    (LossScaleOptimizer._common_apply / _stateful_handle_finite_grads), op by op: Keras's own
    apply() cannot run eagerly on JAX because its ops.cond branches assign variables. The inner
    optimizer's apply() runs eagerly, exactly as in every other case."""
    if not opt.built:
        opt.build(variables)
    finite = all(bool(np.all(np.isfinite(g))) for g in grads if g is not None)
    if finite:
        scale = opt.dynamic_scale.value
        unscaled = [None if g is None else keras.ops.divide(g, scale) for g in grads]
        opt.inner_optimizer.apply(unscaled, variables)
        if int(opt.step_counter.numpy()) == opt.dynamic_growth_steps - 1:
            opt.step_counter.assign(0)
            opt.dynamic_scale.assign(keras.ops.multiply(opt.dynamic_scale, 2.0))
        else:
            opt.step_counter.assign_add(1)
    else:
        opt._stateful_handle_non_finite_grads()


def lso_apply_stateless(opt, grads, variables):
    """LossScaleOptimizer.stateless_apply (the JAX trainer's path, not jitted here; its
    lax.cond still compiles both branches with XLA)."""
    if not opt.built:
        opt.build(variables)
    new_tv, new_ov = opt.stateless_apply([v.value for v in opt.variables],
                                         [None if g is None else np.asarray(g) for g in grads],
                                         [v.value for v in variables])
    for v, x in zip(variables, new_tv):
        v.assign(x)
    for v, x in zip(opt.variables, new_ov):
        v.assign(x)


def apply_step(opt, grads, variables, lso_stateless=False):
    """One step. grads: list of np.float32 arrays or None, aligned with variables."""
    if is_lso(opt):
        if lso_stateless:
            lso_apply_stateless(opt, grads, variables)
        else:
            lso_apply_eager(opt, grads, variables)
    else:
        opt.apply(grads, variables)


def collect_expected(opt, variables):
    exp = {
        "iterations": int(opt.iterations),
        "variables": [np.asarray(v.numpy()).ravel() for v in variables],
        "optimizer_variables": [(v.name, list(v.shape), np.asarray(v.numpy()).ravel())
                                for v in opt.variables],
    }
    if uses_ema(opt):
        opt.finalize_variable_values(variables)
        exp["finalized_variables"] = [np.asarray(v.numpy()).ravel() for v in variables]
    return exp


def run_case(name, fn, seed, randomize):
    keras.backend.clear_session()   # deterministic optimizer names ("adam", not "adam_17")
    c = Ctx(name, seed, randomize)
    res = fn(c)
    opt, desc = res[0], res[1]
    exclude = res[2] if len(res) > 2 else None
    serialized = json.loads(json.dumps(O.serialize(opt)))
    variables = make_variables(c.vars)
    if exclude:
        inner_of(opt).exclude_from_weight_decay(var_names=exclude)

    steps = []
    rank_steps = [] if c.rank_grads is not None else None
    scales = []
    for s, row in enumerate(c.grads):
        # Multi-rank: each rank's gradients get the scale and the non-finite value; the step
        # applies their mean.
        grads = list(row) if c.rank_grads is None else [list(rr) for rr in c.rank_grads[s]]
        scale = None
        if c.lso_scaled:
            if not opt.built:
                opt.build(variables)
            scale = np.float32(opt.dynamic_scale.numpy())
            scales.append(float(scale))

        def scaled(gs):
            return gs if scale is None else [None if g is None else (g * scale).astype(np.float32)
                                             for g in gs]

        def inject(gs):
            kind, i, j = c.nonfinite[s]
            g = gs[i].copy()
            g.reshape(-1)[j] = np.float32(float(kind))
            gs[i] = g

        if rank_steps is None:
            grads = scaled(grads)
            if s in c.nonfinite:
                inject(grads)
        else:
            grads = [scaled(gs) for gs in grads]
            if s in c.nonfinite:
                inject(grads[c.nonfinite_rank[s]])
            rank_steps.append(grads)
            grads = rank_mean(grads)
        steps.append(grads)
        apply_step(opt, grads, variables)

    exp = collect_expected(opt, variables)
    for v in exp["variables"] + [x[2] for x in exp["optimizer_variables"]] + \
            exp.get("finalized_variables", []):
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise RuntimeError("case %s: non-finite value in the expected results" % name)

    notes = list(c.notes)
    n_null = sum(g is None for row in steps for g in row)
    if n_null:
        notes.append("%d of %d step gradients are null" % (n_null, len(steps) * len(c.vars)))
    if c.nonfinite:
        notes.append("non-finite gradient at steps %s" % ", ".join(
            "%d (%s%s)" % (s, c.nonfinite[s][0], "" if rank_steps is None else
                           ", on rank %d only" % c.nonfinite_rank[s])
            for s in sorted(c.nonfinite)))
    if scales:
        notes.append("dynamic_scale before each step: %s; after the last: %.9g" % (
            ", ".join("%.9g" % x for x in scales), float(opt.dynamic_scale.numpy())))
    notes.append("%d steps, expected iterations %d" % (len(steps), exp["iterations"]))
    description = desc + " " + "; ".join(notes) + "."

    return {
        "name": name,
        "description": description,
        "optimizer": serialized,
        "exclude": exclude,
        "variables": c.vars,
        "steps": steps,
        "rank_steps": rank_steps,
        "expected": exp,
    }


def write_case(path, r):
    L = []
    L.append("{")
    L.append('"format": %s,' % json.dumps(FORMAT))
    L.append('"source": %s,' % json.dumps(SOURCE))
    L.append('"description": %s,' % json.dumps(r["description"]))
    L.append('"optimizer": %s,' % json.dumps(r["optimizer"], indent=1))
    if r["exclude"]:
        L.append('"exclude_from_weight_decay": %s,' % json.dumps(r["exclude"]))
    L.append('"variables": [')
    vs = ['{"name": %s, "shape": %s, "value": %s}' % (json.dumps(n), json.dumps(list(shape)),
                                                      fmt_array(init))
          for (n, shape, init) in r["variables"]]
    L.append(",\n".join(vs))
    L.append("],")
    L.append('"steps": [')
    rows = ["[" + ",".join("null" if g is None else fmt_array(g) for g in row) + "]"
            for row in r["steps"]]
    L.append(",\n".join(rows))
    L.append("],")
    if r.get("rank_steps") is not None:
        L.append('"rank_steps": [')
        rows = ["[" + ",".join("[" + ",".join("null" if g is None else fmt_array(g) for g in rr) + "]"
                               for rr in step) + "]"
                for step in r["rank_steps"]]
        L.append(",\n".join(rows))
        L.append("],")
    e = r["expected"]
    L.append('"expected": {')
    L.append('"iterations": %d,' % e["iterations"])
    L.append('"variables": [')
    L.append(",\n".join(fmt_array(v) for v in e["variables"]))
    L.append("],")
    L.append('"optimizer_variables": [')
    L.append(",\n".join('{"name": %s, "shape": %s, "value": %s}'
                        % (json.dumps(n), json.dumps(s), fmt_array(v))
                        for (n, s, v) in e["optimizer_variables"]))
    if "finalized_variables" in e:
        L.append("],")
        L.append('"finalized_variables": [')
        L.append(",\n".join(fmt_array(v) for v in e["finalized_variables"]))
    L.append("]")
    L.append("}")
    L.append("}")
    text = "\n".join(L) + "\n"
    json.loads(text)  # sanity
    with open(path, "w") as f:
        f.write(text)
    return len(text)


# ----------------------------------------------------------------------------------------------
# Slot-order summary
# ----------------------------------------------------------------------------------------------

def slot_pattern(var_names, opt_var_names):
    """Compress optimizer variable names into a pattern like
    'iteration, learning_rate, {v}_momentum..., ({v}_m, {v}_v)...'."""
    out = []
    i = 0
    n = len(var_names)

    def split(name):
        for k, vn in enumerate(var_names):
            if name.startswith(vn + "_"):
                return k, name[len(vn) + 1:]
        return None, name

    while i < len(opt_var_names):
        k, suffix = split(opt_var_names[i])
        if k != 0:
            out.append(opt_var_names[i])
            i += 1
            continue
        # per-variable block for var 0
        block = []
        j = i
        while j < len(opt_var_names):
            kk, ss = split(opt_var_names[j])
            if kk != 0:
                break
            block.append(ss)
            j += 1
        # interleaved if var1..n-1 repeat the same block
        expect = [var_names[kk] + "_" + ss for kk in range(n) for ss in block]
        if opt_var_names[i:i + len(expect)] == expect:
            out.append("per var: " + ", ".join(block) if len(block) > 1 else "per var: " + block[0])
            i += len(expect)
            continue
        out.append(opt_var_names[i])
        i += 1
    return " | ".join(out)


# ----------------------------------------------------------------------------------------------
# Verification: replay JSON cases with an optimizer rebuilt from the serialized config
# ----------------------------------------------------------------------------------------------

def deserialize_optimizer(config):
    # keras.optimizers.deserialize mutates its argument and does not know Lamb (it silently
    # returns the string "Lamb"); pass a deep copy and Lamb as a custom object.
    return O.deserialize(copy.deepcopy(config), custom_objects={"Lamb": O.Lamb})


def load_case(path):
    with open(path) as f:
        case_ = json.load(f)
    var_specs = [(v["name"], tuple(v["shape"]), parse_array(v["value"]))
                 for v in case_["variables"]]
    steps = [[None if g is None else parse_array(g).reshape(var_specs[i][1])
              for i, g in enumerate(row)] for row in case_["steps"]]
    return case_, var_specs, steps


def same_bits(a, b):
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "iu" or b.dtype.kind in "iu":
        return np.array_equal(a.astype(np.int64), b.astype(np.int64))
    return np.array_equal(_bits(a), _bits(b))


def compare(case_, iterations, variables, opt_vars, finalized):
    exp = case_["expected"]
    errs = []
    if iterations != exp["iterations"]:
        errs.append("iterations %d != %d" % (iterations, exp["iterations"]))
    for i, (got, want) in enumerate(zip(variables, exp["variables"])):
        if not same_bits(got, parse_array(want)):
            errs.append("variable %d differs (max abs %g)" % (
                i, np.max(np.abs(got.ravel() - parse_array(want)))))
    if len(opt_vars) != len(exp["optimizer_variables"]):
        errs.append("optimizer variable count %d != %d" % (len(opt_vars),
                                                         len(exp["optimizer_variables"])))
    for (name, shape, val), want in zip(opt_vars, exp["optimizer_variables"]):
        if name != want["name"] or list(shape) != want["shape"]:
            errs.append("optimizer variable %s%s != %s%s" % (name, shape, want["name"],
                                                             want["shape"]))
        wv = parse_array(want["value"], np.float64 if np.asarray(val).dtype.kind in "iu"
                         else np.float32)
        if not same_bits(val, wv):
            errs.append("optimizer variable %s differs" % name)
    if "finalized_variables" in exp:
        if finalized is None:
            errs.append("finalized_variables missing")
        else:
            for i, (got, want) in enumerate(zip(finalized, exp["finalized_variables"])):
                if not same_bits(got, parse_array(want)):
                    errs.append("finalized variable %d differs" % i)
    return errs


def check_rank_mean(case_, var_specs, steps):
    """A multi-rank case's steps must be rank_mean of its rank_steps, bit for bit."""
    errs = []
    if len(case_["rank_steps"]) != len(steps):
        return ["%d rank_steps but %d steps" % (len(case_["rank_steps"]), len(steps))]
    for s, (per_rank, row) in enumerate(zip(case_["rank_steps"], steps)):
        ranks = [[None if g is None else parse_array(g) for g in rr] for rr in per_rank]
        for i, (want, got) in enumerate(zip(row, rank_mean(ranks))):
            if (want is None) != (got is None) or (got is not None and not same_bits(got, want)):
                errs.append("steps[%d][%d] is not the float32 mean of rank_steps[%d]" % (s, i, s))
    return errs


def replay_eager(case_, var_specs, steps, lso_stateless=False):
    keras.backend.clear_session()
    opt = deserialize_optimizer(case_["optimizer"])
    variables = make_variables(var_specs)
    if case_.get("exclude_from_weight_decay"):
        inner_of(opt).exclude_from_weight_decay(var_names=case_["exclude_from_weight_decay"])
    for row in steps:
        apply_step(opt, row, variables, lso_stateless)
    exp = collect_expected(opt, variables)
    return (exp["iterations"], exp["variables"], exp["optimizer_variables"],
            exp.get("finalized_variables"))


def replay_jit(case_, var_specs, steps):
    """model.fit's path on JAX: jax.jit(optimizer.stateless_apply). None gradients are not
    possible in a jitted train step in the same way, so they are passed as None too (the
    filtering happens at trace time)."""
    keras.backend.clear_session()
    opt = deserialize_optimizer(case_["optimizer"])
    variables = make_variables(var_specs)
    if case_.get("exclude_from_weight_decay"):
        inner_of(opt).exclude_from_weight_decay(var_names=case_["exclude_from_weight_decay"])
    opt.build(variables)
    tv = [v.value for v in variables]
    ov = [v.value for v in opt.variables]
    cache = {}
    for row in steps:
        key = tuple(g is None for g in row)
        if key not in cache:
            mask = key

            def f(ov_, gs, tv_, mask=mask):
                full = []
                it = iter(gs)
                for m in mask:
                    full.append(None if m else next(it))
                return opt.stateless_apply(ov_, full, tv_)
            cache[key] = jax.jit(f)
        gs = [np.asarray(g) for g in row if g is not None]
        tv, ov = cache[key](ov, gs, tv)
    for v, x in zip(variables, tv):
        v.assign(x)
    for v, x in zip(opt.variables, ov):
        v.assign(x)
    exp = collect_expected(opt, variables)
    return (exp["iterations"], exp["variables"], exp["optimizer_variables"],
            exp.get("finalized_variables"))


def diff_stats(got, want, rtol=1e-5, atol=1e-6):
    """(max abs diff, max of |diff| / (atol + rtol*|want|)); the second is <= 1 where
    cuoptim-replay --check's default tolerances would pass."""
    got = np.asarray(got, dtype=np.float64).ravel()
    want = np.asarray(want, dtype=np.float64).ravel()
    d = np.abs(got - want)
    d = np.where(np.isnan(got) & np.isnan(want), 0.0, d)
    return float(d.max()), float((d / (atol + rtol * np.abs(want))).max())


def verify(directory, jit=False):
    files = sorted(f for f in os.listdir(directory) if f.endswith(".json"))
    bad = 0
    for fname in files:
        case_, var_specs, steps = load_case(os.path.join(directory, fname))
        assert case_["format"] == FORMAT
        errs = compare(case_, *replay_eager(case_, var_specs, steps))
        if "rank_steps" in case_:
            errs += check_rank_mean(case_, var_specs, steps)
        status = "OK (bitwise)" if not errs else "MISMATCH: " + "; ".join(errs[:4])
        if errs:
            bad += 1
        line = "%-42s %s" % (fname, status)
        others = []
        if case_["optimizer"]["class_name"] == "LossScaleOptimizer":
            others.append(("stateless_apply", replay_eager(case_, var_specs, steps, True)))
        if jit:
            others.append(("jit(stateless_apply)", replay_jit(case_, var_specs, steps)))
        for label, (it, vs, ovs, fin) in others:
            oerrs = compare(case_, it, vs, ovs, fin)
            stats = [diff_stats(v, parse_array(w))
                     for v, w in zip(vs, case_["expected"]["variables"])]
            scalars_same = it == case_["expected"]["iterations"] and all(
                same_bits(o[2], parse_array(w["value"], np.float64))
                for o, w in zip(ovs, case_["expected"]["optimizer_variables"])
                if o[0] in ("iteration", "step_counter", "dynamic_scale"))
            line += " | %s: %s" % (label, "bitwise" if not oerrs else
                                   "max abs diff %.3g, %.3g x default replay tolerance%s"
                                   % (max(a for a, _ in stats), max(t for _, t in stats),
                                      "" if scalars_same else ", SCALARS DIFFER"))
        print(line, flush=True)
    print("%d of %d cases replayed bitwise-exactly" % (len(files) - bad, len(files)))
    return bad == 0


# ----------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory (default %(default)s)")
    ap.add_argument("--seed", type=int, default=1, help="base seed (default 1)")
    ap.add_argument("--randomize", action="store_true",
                    help="randomize hyperparameters too (a set of unseen cases)")
    ap.add_argument("--only", nargs="*", help="generate only these case names")
    ap.add_argument("--list", action="store_true", help="list case names and exit")
    ap.add_argument("--verify", metavar="DIR", help="replay the cases in DIR and compare")
    ap.add_argument("--jit", action="store_true",
                    help="with --verify: also replay through jax.jit(stateless_apply)")
    ap.add_argument("--slots", action="store_true", help="print the slot-order table")
    args = ap.parse_args()

    print("gen_reference.py: %s (keras %s, jax %s, numpy %s, python %s)"
          % (SOURCE, keras.__version__, jax.__version__, np.__version__,
             sys.version.split()[0]), flush=True)

    if args.list:
        for name, _ in CASES:
            print(name)
        return 0
    if args.verify:
        return 0 if verify(args.verify, args.jit) else 1

    os.makedirs(args.out, exist_ok=True)
    names = [n for n, _ in CASES]
    assert len(names) == len(set(names))
    selected = [(n, f) for n, f in CASES if not args.only or n in args.only]
    total = 0
    slot_rows = []
    for name, fn in selected:
        r = run_case(name, fn, args.seed, args.randomize)
        size = write_case(os.path.join(args.out, name + ".json"), r)
        total += size
        vnames = [v[0] for v in r["variables"]]
        pattern = slot_pattern(vnames, [x[0] for x in r["expected"]["optimizer_variables"]])
        slot_rows.append((name, pattern))
        print("  %-42s %7.1f KB  iterations=%d" % (name + ".json", size / 1024.0,
                                                 r["expected"]["iterations"]), flush=True)
    print("wrote %d cases to %s, %.2f MB in total" % (len(selected), args.out, total / 2**20))
    if args.slots:
        print()
        for name, pattern in slot_rows:
            print("%-40s %s" % (name, pattern))
    return 0


if __name__ == "__main__":
    sys.exit(main())
