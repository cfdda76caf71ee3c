#!/usr/bin/env python3
"""Opens a cuoptim checkpoint with the `safetensors` package and checks it against what the C test
(tests/test_checkpoint.c) expects, written as JSON: every tensor's name, dtype, shape and values
(float32 as their bit patterns, so the comparison is exact), the order of the data, the metadata
(format, versions, the Keras config, the variable table) and each tensor's CRC-32 (zlib.crc32).

Usage: check_safetensors.py CHECKPOINT EXPECTED.json [REWRITTEN]
Exit status 0 when everything matches. With REWRITTEN, also writes the same tensors and metadata
there with safetensors.numpy.save_file (which orders the tensors its own way), as a Python tool
that edits a checkpoint would.
"""
import json
import struct
import sys
import zlib

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

DTYPES = {"F32": np.float32, "I64": np.int64}


def fail(message):
    print("check_safetensors: " + message)
    sys.exit(1)


def check_tensors(tensors, expected):
    names = [t["name"] for t in expected]
    if set(tensors) != set(names):
        fail("tensors %s, expected %s" % (sorted(tensors), sorted(names)))
    for t in expected:
        array = tensors[t["name"]]
        if array.dtype != DTYPES[t["dtype"]]:
            fail("%s: dtype %s, expected %s" % (t["name"], array.dtype, t["dtype"]))
        if list(array.shape) != t["shape"]:
            fail("%s: shape %s, expected %s" % (t["name"], list(array.shape), t["shape"]))
        flat = array.reshape(-1)
        got = flat.view(np.uint32).tolist() if t["dtype"] == "F32" else flat.tolist()
        want = [int(x) for x in t["bits"]]
        if got != want:
            i = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
            fail("%s[%d]: %r, expected %r" % (t["name"], i, got[i], want[i]))


def check_layout(path, expected):
    """The header as safetensors lays it out, and the tensors in the order cuoptim documents: the
    counters first, then the float32 tensors, each in the state list's order."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    if (8 + length) % 8 != 0:
        fail("the data starts at byte %d, not a multiple of 8" % (8 + length))
    order = [k for _, k in sorted((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__")]
    want = [t["name"] for t in expected if t["dtype"] == "I64"] + [t["name"] for t in expected if t["dtype"] == "F32"]
    if order != want:
        fail("data order %s, expected %s" % (order, want))
    for k, v in header.items():
        if k != "__metadata__" and v["dtype"] == "I64" and v["data_offsets"][0] % 8 != 0:
            fail("%s: an 8-byte value at data offset %d" % (k, v["data_offsets"][0]))


def check_metadata(path, tensors, expected):
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
        if sorted(f.keys()) != sorted(tensors):
            fail("safe_open lists %s" % sorted(f.keys()))
        for name in tensors:
            if f.get_tensor(name).tobytes() != tensors[name].tobytes():
                fail("%s: safe_open and load_file disagree" % name)
    if meta.get("format") != "cuoptim-checkpoint" or meta.get("format_version") != "1":
        fail("format %r, version %r" % (meta.get("format"), meta.get("format_version")))
    if meta.get("cuoptim_version") != expected["cuoptim_version"]:
        fail("cuoptim_version %r, expected %r" % (meta.get("cuoptim_version"), expected["cuoptim_version"]))
    if json.loads(meta["keras_config"]) != json.loads(expected["keras_config"]):
        fail("keras_config %s, expected %s" % (meta["keras_config"], expected["keras_config"]))
    config = json.loads(meta["keras_config"])
    if config.get("module") != "keras.optimizers" or "class_name" not in config:
        fail("keras_config is not what keras.optimizers.serialize writes: %s" % meta["keras_config"])
    if json.loads(meta["variables"]) != expected["variables"]:
        fail("variables %s, expected %s" % (meta["variables"], expected["variables"]))
    crcs = json.loads(meta["crc32"])
    if set(crcs) != set(tensors):
        fail("crc32 names %s" % sorted(crcs))
    for name, array in tensors.items():
        crc = zlib.crc32(np.ascontiguousarray(array).tobytes())
        if int(crcs[name], 16) != crc:
            fail("%s: crc32 %s in the metadata, zlib.crc32 gives %08x" % (name, crcs[name], crc))


def main():
    if len(sys.argv) not in (3, 4):
        fail("usage: check_safetensors.py CHECKPOINT EXPECTED.json [REWRITTEN]")
    path = sys.argv[1]
    with open(sys.argv[2]) as f:
        expected = json.load(f)
    tensors = load_file(path)
    check_tensors(tensors, expected["tensors"])
    check_layout(path, expected["tensors"])
    check_metadata(path, tensors, expected)
    if len(sys.argv) == 4:
        with safe_open(path, framework="numpy") as f:
            save_file(tensors, sys.argv[3], metadata=f.metadata())
    print("check_safetensors: checked %d tensors, %d variables, the metadata and every CRC-32"
          % (len(tensors), len(expected["variables"])))


if __name__ == "__main__":
    main()
