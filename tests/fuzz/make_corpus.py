#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz/corpus/ from tests/data (run from anywhere):

  keras_json/  the "optimizer" object of every case in tests/data/cases, as json.dumps writes it
               (Keras's own text), plus a few hand-written variants of the accepted forms;
  case_load/   the malformed cases of tests/data/bad and small copies of a few real cases (only
               their small variables, fewer steps and rank steps, the matching expected values);
  api/         programs for fuzz_api (the byte layout is described at the top of fuzz_api.c).

Files are named by the SHA-1 of their content, as libFuzzer names the inputs it adds, so the
script can be re-run without duplicating anything."""
import glob
import hashlib
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")
CORPUS = os.path.join(HERE, "corpus")


def save(target, content):
    if isinstance(content, str):
        content = content.encode()
    directory = os.path.join(CORPUS, target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, hashlib.sha1(content).hexdigest()), "wb") as f:
        f.write(content)


def load_cases():
    return {os.path.basename(p): json.load(open(p)) for p in sorted(glob.glob(os.path.join(DATA, "cases", "*.json")))}


def keras_json(cases):
    for case in cases.values():
        save("keras_json", json.dumps(case["optimizer"]))
    adam = cases["adam_defaults.json"]["optimizer"]
    variants = [
        dict(adam, config=dict(adam["config"], name=None, decay=0.0)),  # None name, legacy decay
        {"class_name": "adam", "config": {"learning_rate": 0.01}},  # legacy form, no module
        dict(adam, config=dict(adam["config"], epsilon=float("inf"))),  # Python writes Infinity
        dict(adam, config=dict(adam["config"], name="caf\u00e9 \U0001f600 \"q\" \\ \t")),
    ]
    for v in variants:
        save("keras_json", json.dumps(v))


SMALL = 40  # elements: variables this small are kept


def shrink(case, steps):
    keep = [i for i, v in enumerate(case["variables"]) if len(v["value"]) <= SMALL or not v["shape"]]
    names = [case["variables"][i]["name"] for i in keep]
    dropped = [v["name"] for i, v in enumerate(case["variables"]) if i not in keep]
    out = {k: case[k] for k in ("format", "source", "optimizer") if k in case}
    out["description"] = "small copy of a reference case for fuzzing (values not consistent)"
    if "exclude_from_weight_decay" in case:
        out["exclude_from_weight_decay"] = case["exclude_from_weight_decay"]
    out["variables"] = [case["variables"][i] for i in keep]
    out["steps"] = [[s[i] for i in keep] for s in case["steps"][:steps]]
    if "rank_steps" in case:
        out["rank_steps"] = [[[g[i] for i in keep] for g in s] for s in case["rank_steps"][:steps]]
    exp = case["expected"]
    small = {"iterations": exp["iterations"], "variables": [exp["variables"][i] for i in keep]}
    if "optimizer_variables" in exp:
        small["optimizer_variables"] = [
            e for e in exp["optimizer_variables"] if not any(e["name"].startswith(d + "_") for d in dropped)
        ]
    if "finalized_variables" in exp:
        small["finalized_variables"] = [exp["finalized_variables"][i] for i in keep]
    out["expected"] = small
    assert names
    return json.dumps(out, separators=(",", ":"))


def case_load(cases):
    for p in sorted(glob.glob(os.path.join(DATA, "bad", "*.json"))):
        save("case_load", open(p, "rb").read())
    for name in ["adam_ema.json", "lso_sgd_nonfinite.json", "sgd_wd_exclude.json", "sgd_schedule_piecewise.json",
                 "nadam_accum2.json", "ftrl_all.json", "rmsprop_centered_momentum.json", "adamw_combo.json",
                 "ranks_nadam_null_grads_r3.json", "ranks_lso_adam_nonfinite_r4.json"]:
        save("case_load", shrink(cases[name], 3))


# fuzz_api programs -------------------------------------------------------------------------------
(ADD, EXCLUDE, APPLY, MINIMIZE, GET_WEIGHTS, SET_WEIGHTS, WEIGHT_INFO, WEIGHT_COUNT, LEARNING_RATE, QUERIES,
 FINALIZE, NULL_ARGUMENT) = range(12)
COUNT_INDEX = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 7: 6, 8: 7, 16: 8}


def add(name_index, dtype, count, values=1):
    width = 1 if dtype == 0 else 2
    return [ADD, name_index, dtype, COUNT_INDEX[count]] + [values] * (count * width)


def apply_all(num_vars, counts, dtypes, value=1):
    out = [APPLY, num_vars]
    for v in range(num_vars):
        out += [v, dtypes[v], 1] + [value] * (counts[v] * (1 if dtypes[v] == 0 else 2))
    return out


def program(tame, kind, changes, ops):
    """changes: one list of bytes per config change (a TAME_CHANGES index, or a FIELDS index and
    its value bytes)."""
    return bytes([tame, kind, len(changes)] + sum(changes, []) + ops)


def api():
    counts, dtypes = [4, 3, 2], [0, 1, 2]
    body = (add(0, 0, 4) + add(1, 1, 3, 2) + add(2, 2, 2, 3) + [EXCLUDE, 0] + apply_all(3, counts, dtypes) +
            apply_all(3, counts, dtypes, 4) + [QUERIES, 0, 0, WEIGHT_COUNT, WEIGHT_INFO, 1, GET_WEIGHTS, 2, 0,
                                                SET_WEIGHTS, 1, 0, LEARNING_RATE, 2, FINALIZE] +
            apply_all(3, counts, dtypes, 5))
    for kind in range(11):
        save("api", program(1, kind, [], body))
    # Tame changes: EMA, accumulation, clipnorm, dynamic loss scale, weight decay, schedules.
    save("api", program(1, 4, [[0], [2], [11], [14]], body))
    save("api", program(1, 0, [[9], [8], [3], [6]], body))
    save("api", program(1, 5, [[15], [10], [1], [0]], body))
    save("api", program(1, 9, [[17], [12]], body))
    # Failing calls before and after the state is built.
    failing = ([ADD, 0, 0, 0] + add(0, 0, 2) + [ADD, 0, 0, COUNT_INDEX[2], 1, 1] + [ADD, 0, 3, 1] +
               [APPLY, 2, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1] + [APPLY, 255] + [EXCLUDE, 4] + [WEIGHT_INFO, 241] +
               [LEARNING_RATE, 20] + [NULL_ARGUMENT, 0, NULL_ARGUMENT, 16] + apply_all(1, [2], [0]) +
               [ADD, 1, 0, 1, 1, GET_WEIGHTS, 0, 230, 5, MINIMIZE, 0, 3, MINIMIZE, 1, 0, MINIMIZE, 2, 0, 1, 0, 0, 1, 1, 1])
    save("api", program(1, 4, [], failing))
    # Wild: odd values in fields (field index, then its value bytes).
    save("api", program(0, 4, [[30, 20], [31, 9]], body))  # beta_1 NaN, beta_2 3.0
    save("api", program(0, 0, [[27, 10], [25, 1], [26, 4]], body))  # ema_overwrite_frequency INT64_MAX, EMA
    save("api", program(0, 10, [[38, 11], [0, 3, 0xff, 0x41, 0x80]], failing))  # negative accumulator, odd name


def main():
    cases = load_cases()
    keras_json(cases)
    case_load(cases)
    api()


if __name__ == "__main__":
    main()
