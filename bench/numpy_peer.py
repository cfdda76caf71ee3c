#!/usr/bin/env python3
"""numpy_peer.py: the numpy peer of cuoptim-host-bench, and the comparison of the two runs.

Peer run: float32 Adam (Keras's defaults: lr 0.001, beta_1 0.9, beta_2 0.999, epsilon 1e-7), the
same float32 operations in the same order as cuoptim's rule (cuda/rules.h, SEMANTICS.md §2.5),
in place with numpy's out= and in-place operators (no temporary array per step beyond two
scratch buffers), on the tensor mixes of cuoptim-host-bench (identical sizes; `many` is a list of
10,000 arrays, updated one after the other, as a numpy optimizer over a model's parameters would).
Each step is timed with time.perf_counter after warm-up; median, min, max; bytes from PERF.md's
byte model (28 B per parameter).

    python3 bench/numpy_peer.py [--mix all] [--steps 20] [--warmup 3] [--quick] [--json numpy.json]

Comparison: cuoptim's Adam against numpy on each mix, with 1 thread and with all, the targets of the
host backend, both tables, the CPU (lscpu) and the commands; printed and written to
bench/results/host-<date>-<cpu>.md.

    python3 bench/numpy_peer.py --compare host.json numpy.json [--results-dir DIR] [--command TEXT]

bench/README.md ("The host backend") explains every column.
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ADAM_BYTES = 28
# Targets of the host backend (the performance issue, items 5 and 6).
TARGET_PCT_COPY = 70.0     # fp32 Adam on 2^24 elements, % of the copy bandwidth, all threads
TARGET_NUMPY_SPEEDUP = 2.0  # numpy time / cuoptim time, same sizes
TARGET_MANY_OVER_BIG = 1.5  # per-parameter time of 10,000 x 4096 / of the 2^24 tensor


def mixes(quick):
    """name -> (tensors, elements per tensor): cuoptim-host-bench's lists."""
    if quick:
        return {"big": (1, 1 << 16), "many": (50, 4096), "cached": (1, 1 << 12)}
    return {"big": (1, 1 << 24), "many": (10000, 4096), "cached": (1, 1 << 18)}


def run_peer(args):
    import numpy as np

    f32 = np.float32
    lr, beta_1, beta_2, epsilon = 0.001, 0.9, 0.999, 1e-7
    one_minus_beta_1 = f32(1.0 - beta_1)  # formed in double, then rounded, as Keras forms them
    one_minus_beta_2 = f32(1.0 - beta_2)
    eps = f32(epsilon)
    rng = np.random.default_rng(7)
    rows = []
    for name, (tensors, elements) in mixes(args.quick).items():
        if args.mix != "all" and name not in args.mix.split(","):
            continue
        params, grads, ms, vs = [], [], [], []
        for _ in range(tensors):
            sign = rng.integers(0, 2, elements) * 2 - 1
            params.append((rng.uniform(0.01, 0.1, elements) * sign).astype(f32))
            sign = rng.integers(0, 2, elements) * 2 - 1
            grads.append((rng.uniform(1e-3, 1e-2, elements) * sign).astype(f32))
            ms.append(np.zeros(elements, f32))
            vs.append(np.zeros(elements, f32))
        scratch_t = np.empty(elements, f32)
        scratch_u = np.empty(elements, f32)
        times = []
        for step in range(args.warmup + args.steps):
            start = time.perf_counter()
            t = f32(step + 1)
            # Keras: lr * sqrt(1 - beta_2^t) / (1 - beta_1^t), in float32.
            alpha = f32(lr) * np.sqrt(f32(1) - np.power(f32(beta_2), t)) / (f32(1) - np.power(f32(beta_1), t))
            alpha = f32(alpha)
            for p, g, m, v in zip(params, grads, ms, vs):
                np.subtract(g, m, out=scratch_t)      # m += (g - m) * (1 - beta_1)
                scratch_t *= one_minus_beta_1
                m += scratch_t
                np.multiply(g, g, out=scratch_t)      # v += (g * g - v) * (1 - beta_2)
                scratch_t -= v
                scratch_t *= one_minus_beta_2
                v += scratch_t
                np.sqrt(v, out=scratch_t)             # p -= (m * alpha) / (sqrt(v) + epsilon)
                scratch_t += eps
                np.multiply(m, alpha, out=scratch_u)
                scratch_u /= scratch_t
                p -= scratch_u
            elapsed = time.perf_counter() - start
            if step >= args.warmup:
                times.append(elapsed)
        params_total = tensors * elements
        median = statistics.median(times)
        row = {"optimizer": "adam", "mix": name, "params": params_total, "bytes_per_param": ADAM_BYTES,
               "ms": median * 1e3, "min_ms": min(times) * 1e3, "max_ms": max(times) * 1e3,
               "gbs": params_total * ADAM_BYTES / median / 1e9, "ns_per_param": median / params_total * 1e9}
        rows.append(row)
        print("numpy adam %-7s %11d params: %9.3f ms (min %.3f, max %.3f)  %6.2f GB/s  %.3f ns/param" %
              (name, params_total, row["ms"], row["min_ms"], row["max_ms"], row["gbs"], row["ns_per_param"]),
              flush=True)
        del params, grads, ms, vs
    out = {"numpy": np.__version__, "python": platform.python_version(), "quick": args.quick, "steps": args.steps,
           "warmup": args.warmup, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


def lscpu():
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def lscpu_field(text, field):
    m = re.search(r"^%s:\s*(.+)$" % re.escape(field), text, re.M)
    return m.group(1).strip() if m else "unknown"


def compare(args):
    with open(args.compare[0]) as f:
        host = json.load(f)
    with open(args.compare[1]) as f:
        peer = json.load(f)
    cpu_text = lscpu()
    model = lscpu_field(cpu_text, "Model name")
    if model == "unknown":
        model = host.get("cpu", "unknown")
    peer_rows = {r["mix"]: r for r in peer["rows"]}
    copy_best = host["copy_best_gbs"]
    lines = []
    emit = lines.append
    quick = host.get("quick") or peer.get("quick")
    emit("# Host backend: %s, %d CPUs%s" % (model, host["cpus"], " (quick sizes: not a measurement)" if quick else ""))
    emit("")
    emit("Date (UTC): %s. cuoptim %s; numpy %s, Python %s. Steps: %d timed after %d warm-up (cuoptim), %d after %d "
         "(numpy)." % (datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
                       host["cuoptim_version"], peer["numpy"], peer["python"], host["steps"], host["warmup"],
                       peer["steps"], peer["warmup"]))
    emit("")
    emit("## Copy reference (memcpy, %d MiB -> %d MiB, bytes read + written)" % (host["copy_bytes"] >> 20,
                                                                                  host["copy_bytes"] >> 20))
    emit("")
    emit("| threads | median GB/s | min | max |")
    emit("|---|---|---|---|")
    for c in host["copy"]:
        emit("| %d | %.1f | %.1f | %.1f |" % (c["threads"], c["gbs"], c["min"], c["max"]))
    emit("")
    emit("Reference for %%copy: the best median above, %.1f GB/s." % copy_best)
    emit("")

    def size(mix):
        tensors, elements = host["mixes"][mix]
        n = "2^%d" % (elements.bit_length() - 1) if elements & (elements - 1) == 0 and elements > 4096 else \
            "%d" % elements
        return "%s (%s)" % (mix, n if tensors == 1 else "%d x %s" % (tensors, n))

    def find(optimizer, mix, default_threads=None, threads=None):
        for r in host["rows"]:
            if r["optimizer"] == optimizer and r["mix"] == mix and \
                    (default_threads is None or r["default_threads"] == default_threads) and \
                    (threads is None or r["threads"] == threads):
                return r
        return None

    emit("## Targets")
    emit("")
    emit("| target | measured | verdict |")
    emit("|---|---|---|")
    verdicts = []
    big_all = find("adam", "big", default_threads=True)
    if big_all:
        ok = big_all["pct_copy"] >= TARGET_PCT_COPY
        verdicts.append(ok)
        emit("| fp32 Adam, %s, all threads >= %.0f%% of copy | %.1f GB/s = %.1f%% (%.2f ms, min %.2f, "
             "max %.2f) | %s |" % (size("big"), TARGET_PCT_COPY, big_all["gbs"], big_all["pct_copy"], big_all["ms"],
                                   big_all["min_ms"], big_all["max_ms"], "met" if ok else "NOT MET"))
    for mix in ("big", "many", "cached"):
        r, p = find("adam", mix, default_threads=True), peer_rows.get(mix)
        if r and p:
            speedup = p["ms"] / r["ms"]
            ok = speedup >= TARGET_NUMPY_SPEEDUP
            if mix != "cached":
                verdicts.append(ok)
            emit("| fp32 Adam, %s, all threads >= %.0fx numpy | numpy %.2f ms / cuoptim %.2f ms = %.2fx | %s |" %
                 (size(mix), TARGET_NUMPY_SPEEDUP, p["ms"], r["ms"], speedup, "met" if ok else "NOT MET"))
    many = find("adam", "many", default_threads=True)
    if many and many["many_over_big"] > 0:
        ok = many["many_over_big"] <= TARGET_MANY_OVER_BIG
        verdicts.append(ok)
        emit("| %s per-parameter time <= %.1fx %s's, all threads | %.3f / %.3f ns = %.2fx | "
             "%s |" % (size("many"), TARGET_MANY_OVER_BIG, size("big"), many["ns_per_param"], big_all["ns_per_param"] if big_all else 0,
                       many["many_over_big"], "met" if ok else "NOT MET"))
    emit("")
    emit("## numpy against cuoptim, fp32 Adam (speed-up = numpy time / cuoptim time)")
    emit("")
    emit("| mix | params | numpy ms | cuoptim 1 thread ms | speed-up | cuoptim all threads ms | speed-up |")
    emit("|---|---|---|---|---|---|---|")
    for mix, p in peer_rows.items():
        one, every = find("adam", mix, threads=1, default_threads=False), find("adam", mix, default_threads=True)
        cells = ["| %s | %d | %.3f" % (size(mix), p["params"], p["ms"])]
        for r in (one, every):
            cells.append(" %.3f | %.2fx" % (r["ms"], p["ms"] / r["ms"]) if r else " - | -")
        emit(" |".join(cells) + " |")
    emit("")
    emit("## cuoptim-host-bench, every row")
    emit("")
    emit("| threads | optimizer | mix | B/p | median ms | min | max | GB/s | %copy | ns/param | many/big |")
    emit("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in host["rows"]:
        emit("| %s | %s | %s | %d | %.3f | %.3f | %.3f | %.2f | %.1f | %.3f | %s |" % (
            "%d%s" % (r["threads"], " (all)" if r["default_threads"] else ""), r["optimizer"], r["mix"],
            r["bytes_per_param"], r["ms"], r["min_ms"], r["max_ms"], r["gbs"], r["pct_copy"], r["ns_per_param"],
            "%.2f" % r["many_over_big"] if r["many_over_big"] > 0 else ""))
    emit("")
    if args.command:
        emit("## Command")
        emit("")
        emit("    " + args.command)
        emit("")
    if args.notes:
        emit("## Notes")
        emit("")
        with open(args.notes) as f:
            emit(f.read().rstrip())
        emit("")
    emit("## CPU (lscpu)")
    emit("")
    for line in cpu_text.splitlines():
        if line.split(":")[0].strip() in ("Architecture", "Model name", "CPU family", "Model", "CPU(s)",
                                          "Thread(s) per core", "Core(s) per socket", "Socket(s)",
                                          "Hypervisor vendor", "L1d cache", "L2 cache", "L3 cache", "NUMA node(s)",
                                          "CPU max MHz", "BogoMIPS"):
            emit("    " + line.strip())
    text = "\n".join(lines) + "\n"
    print(text)
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-") or "cpu"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    name = "host-%s-%s%s.md" % (date, slug, "-quick" if quick else "")
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, name)
    with open(path, "w") as f:
        f.write(text)
    print("written: %s" % path)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mix", default="all", help="big, many, cached or all (comma-separated)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 3 steps: a smoke test")
    parser.add_argument("--json", help="write the peer's figures here")
    parser.add_argument("--compare", nargs=2, metavar=("HOST_JSON", "NUMPY_JSON"))
    parser.add_argument("--results-dir", default=os.path.join(HERE, "results"))
    parser.add_argument("--command", help="the command that produced both files, quoted in the results")
    parser.add_argument("--notes", help="a text file whose content goes under Notes in the results")
    args = parser.parse_args()
    if args.compare:
        return compare(args)
    if args.quick:
        args.steps, args.warmup = 3, 1
    return run_peer(args)


if __name__ == "__main__":
    sys.exit(main())
