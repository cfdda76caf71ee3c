#!/usr/bin/env python3
"""Static reading of the SASS of cuda/kernels.cu (scripts/sass-report.sh runs it).

Input: nvdisasm -c output of one cubin, cuobjdump -res-usage output, ptxas -v output.
For each kernel named on the command line (a regular expression over mangled names), or every
update kernel: registers, spills, and each vector loop's instructions per iteration.

A loop is the code between a backward branch and its target. A vector loop is one that loads
128-bit or 64-bit words (LDG.E.128 / LDG.E.64): 4 elements per thread per iteration (the kernels
mark them #pragma unroll 1). Its instructions per iteration are counted along the path one
iteration executes when no division or square root needs its slow path: at a conditional branch
whose one side calls a slow-path subroutine (CALL.REL to __cuda_*slowpath), the other side is
taken; any other conditional branch inside the loop is a flag branch (counted and reported; its
taken side is followed, so a loop with flag branches has no single executed count and its figure
is marked '~'). BSSY/BSYNC (convergence barriers around the slow paths) are executed and counted.
Static analysis of the compiler's output; no GPU ran it.
"""
import re
import sys

INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
LABEL = re.compile(r"^(\.L_x_\d+|[A-Za-z_$][\w$.]*):\s*$")
FUNC = re.compile(r"^\.text\.(\S+):\s*$")
TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def parse_functions(path):
    funcs, cur = {}, None
    with open(path) as f:
        for line in f:
            m = FUNC.match(line)
            if m:
                cur = m.group(1)
                funcs[cur] = {"instrs": [], "labels": {}}
                continue
            if cur is None:
                continue
            m = LABEL.match(line.strip())
            if m:
                funcs[cur]["labels"][m.group(1)] = len(funcs[cur]["instrs"])
                continue
            m = INSTR.match(line)
            if m:
                funcs[cur]["instrs"].append((int(m.group(1), 16), m.group(2)))
    return funcs


def opcode(text):
    t = text.strip()
    if t.startswith("@"):
        t = t.split(None, 1)[1]
    return t.split()[0]


def is_conditional(text):
    return text.strip().startswith("@") and not re.match(r"@!?PT\s", text.strip())


def analyse(func):
    instrs, labels = func["instrs"], func["labels"]
    loops = []
    for i, (_, text) in enumerate(instrs):
        if opcode(text) != "BRA":
            continue
        m = TARGET.search(text)
        if not m or m.group(1) not in labels:
            continue
        head = labels[m.group(1)]
        if head <= i:
            loops.append((head, i))
    result, starts = [], set(labels.values())
    for head, tail in loops:
        body = instrs[head:tail + 1]
        if not any(re.match(r"LDG\.E\.(128|64)\b", opcode(t)) for _, t in body):
            continue
        count, flags, i, steps = 0, 0, head, 0
        while head <= i <= tail and steps < 100000:
            steps += 1
            _, text = instrs[i]
            op = opcode(text)
            count += 1
            if i == tail:
                break
            if op == "BRA":
                m = TARGET.search(text)
                target = labels.get(m.group(1)) if m else None
                if target is None:
                    break
                if not is_conditional(text):
                    i = target
                    continue
                # Which side calls a slow path? Look at the fall-through block.
                j, slow_fall = i + 1, False
                while j <= tail and j not in starts:
                    if opcode(instrs[j][1]).startswith("CALL") and "slowpath" in instrs[j][1]:
                        slow_fall = True
                    j += 1
                k, slow_taken = target, False
                while k <= tail and (k == target or k not in starts):
                    if opcode(instrs[k][1]).startswith("CALL") and "slowpath" in instrs[k][1]:
                        slow_taken = True
                    k += 1
                if slow_fall and not slow_taken:
                    i = target
                elif slow_taken and not slow_fall:
                    i += 1
                else:
                    flags += 1
                    i = target
                continue
            i += 1
        result.append({"static": tail - head + 1, "path": count, "flag_branches": flags})
    return result


def resources(path):
    regs, name = {}, None
    with open(path) as f:
        for line in f:
            m = re.match(r"\s*Function (\S+):", line)
            if m:
                name = m.group(1)
            m = re.search(r"REG:(\d+)", line)
            if m and name:
                regs[name] = int(m.group(1))
    return regs


def spills(path):
    out, name = {}, None
    with open(path) as f:
        for line in f:
            m = re.search(r"Function properties for (\S+)", line)
            if m:
                name = m.group(1)
            m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m and name:
                out[name] = int(m.group(1)) + int(m.group(2))
    return out


KINDS = {0: "SGD", 1: "RMSprop", 2: "Adagrad", 3: "Adadelta", 4: "Adam/AdamW", 6: "Adamax", 7: "Nadam", 8: "Lion",
         9: "Lamb", 10: "Ftrl"}


def pretty(name):
    m = re.match(r"_Z\d+(\w+?)ILi(\d+)EE", name)
    if m:
        kernel, spec = m.group(1), int(m.group(2))
        kind = KINDS.get(spec & 0xFF, str(spec & 0xFF))
        if kernel == "update_kernel":
            return f"update generic {kind}"
        f = spec >> 8
        parts = [p for bit, p in ((2, "global_clip"), (4, "master"), (8, "momentum")) if f & bit]
        return f"{kernel.replace('_kernel', '').replace('_', ' ')} {kind}" + (" +" + "+".join(parts) if parts else "")
    m = re.match(r"_Z\d+(\w+?)(17cuoptim|P|i|v)", name)
    return m.group(1) if m else name


def main():
    dis, res, ptxas = sys.argv[1:4]
    pattern = re.compile(sys.argv[4] if len(sys.argv) > 4 else r"update|lamb|inspect|prologue")
    funcs, regs, sp = parse_functions(dis), resources(res), spills(ptxas)
    print(f"{'kernel':44} {'regs':>4} {'spill B':>7}  vector loops: instructions per iteration (4 elements) "
          "and per element, flag branches")
    for name in sorted(funcs, key=pretty):
        if not pattern.search(name):
            continue
        loops = analyse(funcs[name])
        text = "; ".join(
            f"{'~' if l['flag_branches'] else ''}{l['path']} ({l['path'] / 4:.2f}/elt), {l['flag_branches']} flag br"
            for l in loops) or "-"
        print(f"{pretty(name):44} {regs.get(name, -1):4d} {sp.get(name, -1):7d}  {text}")


if __name__ == "__main__":
    main()
