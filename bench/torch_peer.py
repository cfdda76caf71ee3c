#!/usr/bin/env python3
"""torch_peer.py: the PyTorch peer of cuoptim-bench, and the comparison of the two runs.

Peer run (needs PyTorch and a GPU): on the tensor mixes cuoptim-bench uses (identical sizes),
times torch.optim.AdamW(fused=True), torch.optim.Adam(foreach=True) and torch.optim.Adam(fused=True)
steps the way cuoptim-bench times cuoptim: CUDA events around each step after warm-up, >= 20
timed steps, median / min / max; bytes from the byte model of PERF.md (28 B per parameter for
float32 Adam/AdamW) against a device-to-device copy measured in the same process.

    python3 bench/torch_peer.py [--mix all] [--steps 30] [--warmup 5] [--quick] [--json torch.json]

Comparison (no GPU, no PyTorch needed): ratios cuoptim/torch per mix, the targets, both tables and
the environment, printed and written to bench/results/<date>-<gpu>.md.

    python3 bench/torch_peer.py --compare cuoptim.json torch.json [--results-dir DIR] [--copy-to DIR]

bench/README.md explains every column.
"""
import argparse
import datetime
import gc
import json
import math
import os
import platform
import re
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MIXES = ("big", "transformer", "many")
ADAM_BYTES = 28  # float32 Adam/AdamW per parameter: p, g, m, v read; p, m, v written (PERF.md)

# name -> (torch.optim class, constructor arguments)
CONFIGS = {
    "adamw_fused": ("AdamW", {"fused": True}),
    "adam_foreach": ("Adam", {"foreach": True}),
    "adam_fused": ("Adam", {"fused": True}),
    "adamw_foreach": ("AdamW", {"foreach": True}),
}
DEFAULT_CONFIGS = "adamw_fused,adam_foreach,adam_fused"

# Targets (DESIGN.md, PERF.md).
TARGET_BIG_PCT = 90.0
TARGET_TRANSFORMER_SPEEDUP = 1.2
TARGET_MANY_FLOOR = 2.0
TARGET_GRAPH_HOST_US = 10.0


# ---- the tensor mixes: the same lists as build_mix() in bench/bench.cu ---------------------------

def mix_tensors(name, quick, layers):
    """[(name, element count)] and a description, exactly as cuoptim-bench builds them."""
    if name == "big":
        exponent = 20 if quick else 28
        return [("big.kernel", 1 << exponent)], "one tensor of 2^%d elements" % exponent
    if name == "transformer":
        vocab, d, context = (1000, 64, 64) if quick else (50257, 1600, 1024)
        blocks = 2 if quick else layers
        tensors = [("wte.embeddings", vocab * d), ("wpe.embeddings", context * d)]
        for layer in range(blocks):
            parts = [("ln_1.gamma", d), ("ln_1.beta", d), ("attn.c_attn.kernel", d * 3 * d),
                     ("attn.c_attn.bias", 3 * d), ("attn.c_proj.kernel", d * d), ("attn.c_proj.bias", d),
                     ("ln_2.gamma", d), ("ln_2.beta", d), ("mlp.c_fc.kernel", d * 4 * d), ("mlp.c_fc.bias", 4 * d),
                     ("mlp.c_proj.kernel", 4 * d * d), ("mlp.c_proj.bias", d)]
            tensors += [("h%d.%s" % (layer, part), count) for part, count in parts]
        tensors += [("ln_f.gamma", d), ("ln_f.beta", d)]
        description = ("transformer-like: embedding %dx%d, positions %dx%d, %d blocks x {qkv %dx%d, proj %dx%d, "
                       "fc %dx%d, fc2 %dx%d, 2 layer norms, 4 biases}, final layer norm"
                       % (vocab, d, context, d, blocks, d, 3 * d, d, d, d, 4 * d, 4 * d, d))
        return tensors, description
    if name == "many":
        n = 100 if quick else 10000
        return [("t%05d.kernel" % i, 4096) for i in range(n)], "%d tensors of 4096 elements" % n
    raise ValueError("unknown mix %r" % name)


# ---- statistics ------------------------------------------------------------------------------------

def stats_of(values):
    if not values:
        return {"median": None, "min": None, "max": None, "mean": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "mean": sum(values) / len(values), "n": len(values)}


def timing(ms_stats, nbytes, copy_gbps):
    median = ms_stats["median"]
    gbps = nbytes / (median * 1e-3) / 1e9 if median else None
    floor_ms = nbytes / (copy_gbps * 1e9) * 1e3 if copy_gbps else None
    return {"ms": ms_stats, "gbps": gbps,
            "pct_copy": 100.0 * gbps / copy_gbps if gbps and copy_gbps else None,
            "floor_ms": floor_ms,
            "time_over_floor": median / floor_ms if median and floor_ms else None}


def driver_release():
    try:
        with open("/proc/driver/nvidia/version") as f:
            for token in f.readline().split():
                if token[:1].isdigit() and "." in token:
                    return token
    except OSError:
        pass
    return "n/a"


# ---- the peer run ------------------------------------------------------------------------------------

def measure_copy(torch, nbytes, reps):
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_(0.5, 2.0)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        starts[i].record()
        dst.copy_(src)
        ends[i].record()
    torch.cuda.synchronize()
    ms = stats_of([s.elapsed_time(e) for s, e in zip(starts, ends)])
    del src, dst
    torch.cuda.empty_cache()
    return {"buffer_bytes": nbytes, "bytes_counted": 2 * nbytes, "ms": ms,
            "gbps": 2 * nbytes / (ms["median"] * 1e-3) / 1e9}


def time_steps(torch, opt, steps, warmup):
    """GPU time of each step (events around it, no synchronization between steps) and the host
    time of each opt.step() call."""
    for _ in range(warmup):
        opt.step()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
    host_us = []
    for i in range(steps):
        starts[i].record()
        t0 = time.perf_counter()
        opt.step()
        host_us.append((time.perf_counter() - t0) * 1e6)
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)], host_us


def run_mix(torch, name, args, configs, copy_gbps):
    tensors, description = mix_tensors(name, args.quick, args.transformer_layers)
    total = sum(count for _, count in tensors)
    report = {"name": name, "description": description, "tensors": len(tensors), "elements": total,
              "layers": (2 if args.quick else args.transformer_layers) if name == "transformer" else 0,
              "skipped": False, "message": "", "results": []}
    print("\nmix %s: %s\n  %d tensors, %d elements, float32" % (name, description, len(tensors), total))
    # params + grads + m + v + one foreach temporary (sqrt(v)) of float32, and some slack.
    need = int(total * 4 * 5 * 1.1) + (512 << 20)
    free, _ = torch.cuda.mem_get_info()
    if need > free:
        report["skipped"] = True
        report["message"] = "needs %.2f GiB, %.2f GiB free" % (need / 2**30, free / 2**30)
        print("  skipped: " + report["message"])
        return report
    gen = torch.Generator(device="cuda")
    gen.manual_seed(2)
    params = [torch.nn.Parameter(torch.empty(count, dtype=torch.float32, device="cuda")) for _, count in tensors]
    with torch.no_grad():
        for p in params:
            # |g| in about [0, 1e-2], as cuoptim-bench's [1e-3, 1e-2); values are never all zero.
            p.grad = torch.empty_like(p).uniform_(-1e-2, 1e-2, generator=gen)
    print("  %-14s %9s %9s %9s %8s %7s %6s | %9s" % ("config", "ms", "min", "max", "GB/s", "%copy", "xfloor",
                                                   "host us"))
    for config in configs:
        class_name, kwargs = CONFIGS[config]
        with torch.no_grad():
            gen.manual_seed(1)
            for p in params:
                p.uniform_(-0.1, 0.1, generator=gen)
        opt = getattr(torch.optim, class_name)(params, lr=1e-3, **kwargs)
        ms, host_us = time_steps(torch, opt, args.steps, args.warmup)
        finite = bool(torch.isfinite(params[0]).all().item() and torch.isfinite(params[-1]).all().item())
        nbytes = ADAM_BYTES * total
        result = {"config": config, "optimizer": class_name, "kwargs": kwargs, "bytes_per_param": ADAM_BYTES,
                  "bytes_per_step": nbytes, "eager": timing(stats_of(ms), nbytes, copy_gbps),
                  "host_us": stats_of(host_us), "finite": finite}
        report["results"].append(result)
        e = result["eager"]
        print("  %-14s %9.3f %9.3f %9.3f %8.1f %6.1f%% %6.2f | %9.1f%s"
              % (config, e["ms"]["median"], e["ms"]["min"], e["ms"]["max"], e["gbps"], e["pct_copy"],
                 e["time_over_floor"], result["host_us"]["median"], "" if finite else "  NOT FINITE"))
        sys.stdout.flush()
        del opt
        gc.collect()
        torch.cuda.empty_cache()
    del params
    gc.collect()
    torch.cuda.empty_cache()
    return report


def peer(args):
    out = {"tool": "torch_peer", "format": 1, "command": " ".join(sys.argv), "environment": {},
           "options": {"steps": args.steps, "warmup": args.warmup, "quick": args.quick,
                       "transformer_layers": args.transformer_layers, "dtype": "float32", "configs": args.configs},
           "copy": None, "mixes": [], "error": None}

    def write():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
                f.write("\n")

    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure means no peer
        out["error"] = "PyTorch is not importable: %s" % e
        print("torch_peer: " + out["error"], file=sys.stderr)
        write()
        return 1
    if not torch.cuda.is_available() or args.device >= torch.cuda.device_count():
        out["error"] = "no usable CUDA GPU for PyTorch (device %d)" % args.device
        print("torch_peer: " + out["error"], file=sys.stderr)
        write()
        return 2
    torch.cuda.set_device(args.device)
    nccl = "n/a"
    try:
        v = torch.cuda.nccl.version()
        nccl = ".".join(str(x) for x in v) if isinstance(v, tuple) else str(v)
    except Exception:  # noqa: BLE001 - builds without NCCL
        pass
    props = torch.cuda.get_device_properties(args.device)
    out["environment"] = {
        "gpu": torch.cuda.get_device_name(args.device), "device": args.device,
        "compute_capability": "%d.%d" % (props.major, props.minor), "sm_count": props.multi_processor_count,
        "memory_bytes": props.total_memory, "driver_release": driver_release(),
        "torch_version": torch.__version__, "torch_cuda_version": torch.version.cuda or "n/a",
        "torch_nccl_version": nccl, "python_version": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    env = out["environment"]
    print("torch_peer: torch %s (CUDA %s, NCCL %s) on %s, driver %s, %s"
          % (env["torch_version"], env["torch_cuda_version"], nccl, env["gpu"], env["driver_release"], env["date"]))
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS:
            print("torch_peer: unknown config %r (known: %s)" % (c, ", ".join(CONFIGS)), file=sys.stderr)
            return 2
    mixes = MIXES if args.mix == "all" else [m.strip() for m in args.mix.split(",")]
    for m in mixes:
        if m not in MIXES:
            print("torch_peer: unknown mix %r" % m, file=sys.stderr)
            return 2
    copy_bytes = (64 << 20) if args.quick else (1 << 30)
    reps = max(20, args.steps)
    out["copy"] = measure_copy(torch, copy_bytes, reps)
    print("  %d warm-up + %d timed steps%s; device-to-device copy of %d MiB: %.3f ms = %.1f GB/s (read + write)"
          % (args.warmup, args.steps, ", QUICK sizes (smoke test)" if args.quick else "", copy_bytes >> 20,
             out["copy"]["ms"]["median"], out["copy"]["gbps"]))
    status = 0
    try:
        for m in mixes:
            report = run_mix(torch, m, args, configs, out["copy"]["gbps"])
            out["mixes"].append(report)
            if any(not r["finite"] for r in report["results"]):
                status = 1
    except Exception as e:  # noqa: BLE001 - keep what was measured
        out["error"] = "%s: %s" % (type(e).__name__, e)
        print("torch_peer: " + out["error"], file=sys.stderr)
        status = 1
    write()
    if args.json:
        print("wrote %s" % args.json)
    return status


# ---- the comparison -----------------------------------------------------------------------------------

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print("torch_peer --compare: cannot read %s: %s" % (path, e), file=sys.stderr)
        return None


def fmt(x, spec="%.3f", none="n/a"):
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else spec % x


def mix_of(doc, name):
    for m in (doc or {}).get("mixes", []):
        if m.get("name") == name:
            return m
    return None


def result_of(mix, key, value):
    for r in (mix or {}).get("results", []):
        if r.get(key) == value and not r.get("skipped") and r.get("complete", True):
            return r
    return None


def median_ms(r, which="eager"):
    t = (r or {}).get(which)
    return t["ms"]["median"] if t and t.get("ms") else None


def status_text(ok, quick):
    if ok is None:
        return "n/a"
    return ("pass" if ok else "FAIL") + (" (quick sizes: not a measurement)" if quick else "")


def targets(cu, tj):
    """[(target, measured, status)]."""
    quick = bool(cu.get("options", {}).get("quick"))
    float32 = cu.get("options", {}).get("dtype") == "float32"
    rows = []
    big = mix_of(cu, "big")
    for opt in ("adam", "adamw"):
        r = result_of(big, "optimizer", opt)
        pct = r["eager"]["pct_copy"] if r else None
        rows.append(("float32 %s on the 2^28 tensor >= %d%% of copy bandwidth" % (opt, TARGET_BIG_PCT),
                     fmt(pct, "%.1f%%") + ("" if float32 else " (dtype %s)" % cu["options"]["dtype"]),
                     status_text(None if pct is None or not float32 else pct >= TARGET_BIG_PCT, quick)))
    cu_t = result_of(mix_of(cu, "transformer"), "optimizer", "adamw")
    torch_t = result_of(mix_of(tj, "transformer"), "config", "adamw_fused")
    a, b = median_ms(cu_t), median_ms(torch_t)
    speedup = b / a if a and b else None
    rows.append(("transformer-like mix >= %.1fx faster than torch fused AdamW" % TARGET_TRANSFORMER_SPEEDUP,
                 "%s (cuoptim AdamW %s ms, torch %s ms)" % (fmt(speedup, "%.2fx"), fmt(a), fmt(b)),
                 status_text(None if speedup is None else speedup >= TARGET_TRANSFORMER_SPEEDUP, quick)))
    many = mix_of(cu, "many")
    for opt in ("adam", "adamw"):
        r = result_of(many, "optimizer", opt)
        for which in ("eager", "graph"):
            t = (r or {}).get(which)
            x = t.get("time_over_floor") if t else None
            rows.append(("%s x 4096 %s within %.0fx of the byte floor (%s)"
                         % ("100" if quick else "10,000", opt, TARGET_MANY_FLOOR, which),
                         "%s (%s ms, floor %s ms)" % (fmt(x, "%.2fx"), fmt(median_ms(r, which)),
                                                      fmt(t.get("floor_ms") if t else None)),
                         status_text(None if x is None else x <= TARGET_MANY_FLOOR, quick)))
    worst, where = None, ""
    for m in cu.get("mixes", []):
        for r in m.get("results", []):
            x = r.get("graph_host_us_per_launch")
            if x is not None and (worst is None or x > worst):
                worst, where = x, "%s/%s" % (m["name"], r["optimizer"])
    rows.append(("graph replay host time per step < %.0f us" % TARGET_GRAPH_HOST_US,
                 "worst %s us (%s)" % (fmt(worst, "%.2f"), where) if worst is not None else "n/a (no graph)",
                 status_text(None if worst is None else worst < TARGET_GRAPH_HOST_US, quick)))
    return rows


def ratio_rows(cu, tj):
    rows = []
    for name in MIXES:
        cm, tm = mix_of(cu, name), mix_of(tj, name)
        if not cm and not tm:
            continue
        cw, ca = result_of(cm, "optimizer", "adamw"), result_of(cm, "optimizer", "adam")
        tw, tf, tfa = (result_of(tm, "config", "adamw_fused"), result_of(tm, "config", "adam_foreach"),
                       result_of(tm, "config", "adam_fused"))
        row = {"mix": name}
        for key, c, t in (("adamw", cw, tw), ("adam", ca, tf)):
            a, b = median_ms(c), median_ms(t)
            row[key] = (a, b, a / b if a and b else None, b / a if a and b else None)
        row["adam_fused"] = median_ms(tfa)
        row["adamw_graph"] = median_ms(cw, "graph")
        row["adam_graph"] = median_ms(ca, "graph")
        row["sizes_match"] = (cm is None or tm is None or
                              (cm.get("elements") == tm.get("elements") and cm.get("tensors") == tm.get("tensors")))
        rows.append(row)
    return rows


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def cuoptim_tables(cu):
    parts = []
    for m in cu.get("mixes", []):
        parts.append("### cuoptim, mix `%s`: %s\n\n%d tensors, %d elements%s\n"
                     % (m["name"], m["description"], m["tensors"], m["elements"],
                        (". Skipped: " + m["message"]) if m.get("skipped") else ""))
        rows = []
        for r in m.get("results", []):
            if r.get("skipped"):
                rows.append([r["optimizer"], fmt(r["bytes_per_param"], "%.0f"), "skipped: " + r["message"]] + [""] * 11)
                continue
            e, g = r["eager"], r.get("graph")
            checks = "ok" if r["iterations"] == r["iterations_expected"] and r["finite"] else "FAILED"
            if not r.get("complete", True):
                checks = "INCOMPLETE (the run stopped here)"
            if r.get("message"):
                checks += ": " + r["message"]
            rows.append([r["optimizer"], fmt(r["bytes_per_param"], "%.0f"),
                         "%s (%s-%s)" % (fmt(e["ms"]["median"]), fmt(e["ms"]["min"]), fmt(e["ms"]["max"])),
                         fmt(e["gbps"], "%.0f"), fmt(e["pct_copy"], "%.1f%%"), fmt(e["time_over_floor"], "%.2f"),
                         "%s (%s-%s)" % (fmt(g["ms"]["median"]), fmt(g["ms"]["min"]), fmt(g["ms"]["max"]))
                         if g else "capture failed",
                         fmt(g["gbps"], "%.0f") if g else "", fmt(g["pct_copy"], "%.1f%%") if g else "",
                         fmt(g["time_over_floor"], "%.2f") if g else "",
                         fmt(r["eager_host_us"]["median"], "%.1f"), fmt(r.get("graph_host_us_per_launch"), "%.2f"),
                         r.get("capture_mode") or "-", checks])
        parts.append(table(["optimizer", "B/param", "eager ms (min-max)", "GB/s", "% copy", "x floor",
                            "graph ms (min-max)", "GB/s", "% copy", "x floor", "host us / call",
                            "host us / launch", "capture", "checks"], rows))
        notes = [r for r in m.get("results", []) if r.get("capture_notes")]
        for r in notes:
            parts.append("\n- %s graph capture: %s" % (r["optimizer"], r["capture_notes"]))
    return "\n\n".join(parts)


def torch_tables(tj):
    parts = []
    for m in (tj or {}).get("mixes", []):
        parts.append("### PyTorch, mix `%s`\n\n%d tensors, %d elements%s\n"
                     % (m["name"], m["tensors"], m["elements"],
                        (". Skipped: " + m["message"]) if m.get("skipped") else ""))
        rows = []
        for r in m.get("results", []):
            e = r["eager"]
            rows.append(["torch.optim.%s(%s)" % (r["optimizer"], ", ".join("%s=%s" % kv for kv in r["kwargs"].items())),
                         "%s (%s-%s)" % (fmt(e["ms"]["median"]), fmt(e["ms"]["min"]), fmt(e["ms"]["max"])),
                         fmt(e["gbps"], "%.0f"), fmt(e["pct_copy"], "%.1f%%"), fmt(e["time_over_floor"], "%.2f"),
                         fmt(r["host_us"]["median"], "%.1f"), "ok" if r["finite"] else "NOT FINITE"])
        parts.append(table(["optimizer", "ms (min-max)", "GB/s", "% copy", "x floor", "host us / step", "finite"], rows))
    return "\n\n".join(parts) if parts else "(no PyTorch results)"


def compare(args):
    cu_path, torch_path = args.compare
    cu = load(cu_path)
    if cu is None:
        return 1
    tj = load(torch_path)
    if tj is not None and tj.get("error"):
        print("torch_peer --compare: the torch run reported: %s" % tj["error"], file=sys.stderr)
    env = cu.get("environment", {})
    tenv = (tj or {}).get("environment", {})
    quick = bool(cu.get("options", {}).get("quick"))
    dtype = cu.get("options", {}).get("dtype", "float32")

    ratios = ratio_rows(cu, tj)
    rows = []
    for r in ratios:
        wa, wb, wr, ws = r["adamw"]
        aa, ab, ar, as_ = r["adam"]
        rows.append([r["mix"], fmt(wa), fmt(wb), fmt(wr, "%.2f"), fmt(ws, "%.2fx"), fmt(aa), fmt(ab), fmt(ar, "%.2f"),
                     fmt(as_, "%.2fx"), fmt(r["adam_fused"]), fmt(r["adamw_graph"]), fmt(r["adam_graph"]),
                     "yes" if r["sizes_match"] else "NO"])
    ratio_table = table(["mix", "cuoptim AdamW ms", "torch AdamW(fused) ms", "time cuoptim/torch", "speed-up",
                         "cuoptim Adam ms", "torch Adam(foreach) ms", "time cuoptim/torch", "speed-up",
                         "torch Adam(fused) ms", "cuoptim AdamW graph ms", "cuoptim Adam graph ms", "same sizes"], rows)
    target_table = table(["target", "measured", "status"], targets(cu, tj))

    copy = (cu.get("copy") or {}).get("gbps")
    copy_end = (cu.get("copy_end") or {}).get("gbps")
    tcopy = ((tj or {}).get("copy") or {}).get("gbps")
    env_rows = [
        ["GPU", "%s (sm_%s, %s SMs, %.0f GiB)" % (env.get("gpu", "n/a"), env.get("compute_capability", "?").replace(".", ""),
                                                   env.get("sm_count", "?"), (env.get("memory_bytes") or 0) / 2**30)],
        ["driver", "%s (CUDA %s)" % (env.get("driver_release", "n/a"), env.get("driver_cuda_version", "n/a"))],
        ["CUDA runtime (cuoptim-bench)", env.get("cuda_runtime_version", "n/a")],
        ["NCCL (nccl.h at build time)", env.get("nccl_version", "n/a")],
        ["cuoptim", env.get("cuoptim_version", "n/a")],
        ["PyTorch", "%s (CUDA %s, NCCL %s)" % (tenv.get("torch_version", "n/a"), tenv.get("torch_cuda_version", "n/a"),
                                              tenv.get("torch_nccl_version", "n/a"))],
        ["copy bandwidth", "cuoptim-bench: %s GB/s at the start, %s GB/s at the end; torch_peer: %s GB/s"
         % (fmt(copy, "%.1f"), fmt(copy_end, "%.1f"), fmt(tcopy, "%.1f"))],
        ["dates (UTC)", "cuoptim-bench %s, torch_peer %s" % (env.get("date", "n/a"), tenv.get("date", "n/a"))],
        ["parameters", "%s%s" % (dtype, ", QUICK sizes (smoke test, not a measurement)" if quick else "")],
        ["commands", "`%s`; `%s`" % (cu.get("command", "?"), (tj or {}).get("command", "n/a"))],
    ]
    problems = []
    if cu.get("error"):
        problems.append("cuoptim-bench stopped: " + cu["error"])
    if cu.get("failures"):
        problems.append("cuoptim-bench: %d check(s) failed (graph capture, iteration count or finiteness)"
                        % cu["failures"])
    if tj is None:
        problems.append("no PyTorch results (%s)" % torch_path)
    elif tj.get("error"):
        problems.append("torch_peer: " + tj["error"])
    if any(not r["sizes_match"] for r in ratios):
        problems.append("the two runs used different sizes for some mix (column 'same sizes')")

    gpu = env.get("gpu") or tenv.get("gpu") or "unknown-gpu"
    date = (env.get("date") or tenv.get("date") or datetime.date.today().isoformat())[:10]
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    suffix = ("-bf16" if dtype != "float32" else "") + ("-quick" if quick else "")
    name = "%s-%s%s.md" % (date, slug, suffix)

    md = ["# cuoptim benchmark: %s, %s" % (gpu, date), "",
          "Produced by `scripts/bench.sh` (cuoptim-bench, `bench/torch_peer.py`, `bench/torch_peer.py --compare`). "
          "How to read it: bench/README.md. Times are GPU times per optimizer step (CUDA events, median of the timed "
          "steps after warm-up); bytes follow the byte model of PERF.md; the floor is bytes / the device-to-device "
          "copy bandwidth measured in the same run.", ""]
    if problems:
        md += ["**Problems:**", ""] + ["- " + p for p in problems] + [""]
    md += ["## Environment", "", table(["", ""], env_rows), "",
           "## Targets", "", target_table, "",
           "## cuoptim vs PyTorch (eager step, same GPU, identical sizes)", "",
           "time cuoptim/torch < 1 and speed-up > 1 mean cuoptim is faster. Graph columns: cuoptim replaying a "
           "captured step (PyTorch is not captured).", "", ratio_table, "",
           "## cuoptim-bench: every optimizer", "", cuoptim_tables(cu), "",
           "## PyTorch peer", "", torch_tables(tj), "",
           "## Notes", "", "- Predictions before a change, outcomes after it: add them here.", ""]
    text = "\n".join(md)

    print("cuoptim vs PyTorch (eager medians; time cuoptim/torch < 1 = cuoptim faster)")
    print("  %-12s %10s %10s %8s %8s | %10s %10s %8s %8s" % ("mix", "AdamW ms", "fused ms", "ratio", "speedup",
                                                          "Adam ms", "foreach ms", "ratio", "speedup"))
    for r in ratios:
        wa, wb, wr, ws = r["adamw"]
        aa, ab, ar, as_ = r["adam"]
        print("  %-12s %10s %10s %8s %8s | %10s %10s %8s %8s%s"
              % (r["mix"], fmt(wa), fmt(wb), fmt(wr, "%.2f"), fmt(ws, "%.2fx"), fmt(aa), fmt(ab), fmt(ar, "%.2f"),
                 fmt(as_, "%.2fx"), "" if r["sizes_match"] else "  SIZES DIFFER"))
    print("\ntargets")
    for target, measured, status in targets(cu, tj):
        print("  %-62s %-45s %s" % (target, measured, status))
    for p in problems:
        print("problem: " + p)

    results_dir = args.results_dir or os.path.join(HERE, "results")
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, name)
    with open(path, "w") as f:
        f.write(text)
    print("\nwrote %s" % path)
    if args.copy_to:
        os.makedirs(args.copy_to, exist_ok=True)
        if os.path.abspath(args.copy_to) != os.path.abspath(results_dir):
            shutil.copy(path, os.path.join(args.copy_to, name))
            print("copied to %s" % os.path.join(args.copy_to, name))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mix", default="all", help="big, transformer, many (comma-separated) or all")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS,
                        help="comma-separated, of: %s (default %s)" % (", ".join(CONFIGS), DEFAULT_CONFIGS))
    parser.add_argument("--steps", type=int, default=None, help="timed steps (30; 20 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (5; 2 with --quick)")
    parser.add_argument("--transformer-layers", type=int, default=30, help="blocks of the transformer-like mix")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--compare", nargs=2, metavar=("CUOPTIM_JSON", "TORCH_JSON"),
                        help="compare two runs instead of measuring")
    parser.add_argument("--results-dir", help="where --compare writes <date>-<gpu>.md (bench/results)")
    parser.add_argument("--copy-to", help="--compare also copies the .md file here")
    args = parser.parse_args()
    if args.compare:
        return compare(args)
    if args.steps is None:
        args.steps = 20 if args.quick else 30
    if args.warmup is None:
        args.warmup = 2 if args.quick else 5
    if args.steps < 1 or args.warmup < 0 or args.transformer_layers < 1:
        parser.error("--steps >= 1, --warmup >= 0, --transformer-layers >= 1")
    return peer(args)


if __name__ == "__main__":
    sys.exit(main())
