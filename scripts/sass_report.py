#!/usr/bin/env python3
"""Static reading of the SASS of cuda/kernels.cu (scripts/sass-report.sh runs it).

Input: nvdisasm -c output of one cubin, cuobjdump -res-usage output, ptxas -v output.
For each kernel named on the command line (a regular expression over mangled names), or every
update kernel: registers, spills, and each vector loop's instructions per iteration.

A loop is the code between a backward branch and its target (innermost loops only). A vector
loop is one that loads
128-bit or 64-bit words (LDG.E.128 / LDG.E.64); its elements per iteration (per thread) are 4 for
the generic kernel and, for a fixed instance, 4 times its vector loads over the buffers the rule
loads per 4 elements (gradient, working copy, slots), so a loop that handles two vectors of each
buffer counts 8. Its instructions per iteration are counted along the path one iteration executes
when no division or square root needs its slow path: at a conditional branch whose one side calls
a slow-path subroutine (CALL.REL to __cuda_*slowpath), the other side is taken; any other
conditional branch inside the loop is counted as a branch (a flag, or a data-dependent one such
as a NaN test) and its taken side is followed, so such a loop has no single executed count: its
figure is marked '~', and 'static' gives every instruction of the loop outside the slow-path
calls' blocks. BSSY/BSYNC (convergence barriers around the slow paths) are executed and counted.
A conditional branch out of the loop to code that calls a slow path (a fixed kernel sending a
vector back to sqrtf and '/', cuda/rules.h) is counted and not taken; any other one out of the
loop counts as a branch.
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


def leads_to_slow_path(instrs, labels, start):
    """Whether the code from start on, following unconditional branches, calls a division or
    square-root slow path before the function ends (EXIT or RET): the IEEE operations a fixed
    kernel falls back to."""
    seen, i = set(), start
    while 0 <= i < len(instrs) and i not in seen:
        seen.add(i)
        text = instrs[i][1]
        op = opcode(text)
        if op.startswith("CALL") and "slowpath" in text:
            return True
        if op in ("EXIT", "RET") and not is_conditional(text):
            return False
        if op == "BRA" and not is_conditional(text):
            m = TARGET.search(text)
            if not m or m.group(1) not in labels:
                return False
            i = labels[m.group(1)]
            continue
        i += 1
    return False


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
    # Innermost loops only: one that holds another loop is a loop over chunks, not over elements.
    loops = [(h, t) for h, t in loops if not any(h <= h2 and t2 < t for h2, t2 in loops if (h2, t2) != (h, t))]
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
                if not head <= target <= tail:
                    # A branch out of the loop: to code that computes the elements again with
                    # the IEEE operations (a slow path: the loop's path stays in the loop) or a
                    # data-dependent exit (counted as a branch).
                    if not leads_to_slow_path(instrs, labels, target):
                        flags += 1
                    i += 1
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
        cold, block = 0, []
        for j in range(head, tail + 1):
            if (j in starts or (j > head and opcode(instrs[j - 1][1]) == "BRA")) and block:
                cold += len(block) if any("slowpath" in t for t in block) else 0
                block = []
            block.append(instrs[j][1])
        cold += len(block) if any("slowpath" in t for t in block) else 0
        vector_loads = sum(1 for _, t in body if re.match(r"LDG\.E\.(128|64)\b", opcode(t)))
        result.append({"static": tail - head + 1 - cold, "path": count, "flag_branches": flags,
                       "vector_loads": vector_loads})
    return result


def per_function(path, function_re, value_re):
    """{function: the sum of value_re's groups} from a listing where a line matching function_re
    names the function the following lines are about."""
    out, name = {}, None
    with open(path) as f:
        for line in f:
            m = re.search(function_re, line)
            if m:
                name = m.group(1)
            m = re.search(value_re, line)
            if m and name:
                out[name] = sum(int(g) for g in m.groups())
    return out


def resources(path):
    return per_function(path, r"^\s*Function (\S+):", r"REG:(\d+)")


def spills(path):
    return per_function(path, r"Function properties for (\S+)", r"(\d+) bytes spill stores, (\d+) bytes spill loads")


KINDS = {0: "SGD", 1: "RMSprop", 2: "Adagrad", 3: "Adadelta", 4: "Adam/AdamW", 6: "Adamax", 7: "Nadam", 8: "Lion",
         9: "Lamb", 10: "Ftrl"}
# Buffers a fixed instance loads per 4 elements: gradient, working copy, the rule's slots.
FIXED_LOADS = {0: 2, 1: 3, 2: 3, 3: 4, 4: 4, 6: 4, 7: 4, 8: 3}


def spec_of(name):
    m = re.match(r"_Z\d+(\w+?)ILi(\d+)EE", name)
    return (m.group(1), int(m.group(2))) if m else (None, None)


def pretty(name):
    kernel, spec = spec_of(name)
    if kernel:
        kind = KINDS.get(spec & 0xFF, str(spec & 0xFF))
        if kernel == "update_kernel":
            return f"update generic {kind}"
        f = spec >> 8
        parts = [p for bit, p in ((2, "global_clip"), (4, "master"), (8, "momentum")) if f & bit]
        return f"{kernel.replace('_kernel', '').replace('_', ' ')} {kind}" + (" +" + "+".join(parts) if parts else "")
    m = re.match(r"_Z\d+(\w+?)(17cuoptim|P|i|v)", name)
    return m.group(1) if m else name


def elements(name, loop):
    kernel, spec = spec_of(name)
    if kernel != "update_fixed_kernel":
        return 4
    loads = FIXED_LOADS.get(spec & 0xFF, 4) + (1 if spec & 0xFF == 0 and (spec >> 8) & 8 else 0)
    return max(4, 4 * loop["vector_loads"] // loads)


def describe(name, loops):
    """Loops grouped by elements per iteration: the fewest and most instructions per iteration
    (a fixed instance has one loop per body: dtype x weight decay on/off, the most being a
    decaying one), per element, and the branches."""
    groups = {}
    for loop in loops:
        groups.setdefault(elements(name, loop), []).append(loop)
    parts = []
    for e in sorted(groups, reverse=True):
        ls = groups[e]
        low, high = min(l["path"] for l in ls), max(l["path"] for l in ls)
        branches = max(l["flag_branches"] for l in ls)
        mark = "~" if branches else ""
        counts = f"{low}" if low == high else f"{low}-{high}"
        per = f"{low / e:.2f}" if low == high else f"{low / e:.2f}-{high / e:.2f}"
        text = f"{len(ls)}x {e} el/it: {mark}{counts} instr = {mark}{per}/el"
        if branches:
            text += f", {branches} br, static {max(l['static'] for l in ls)}"
        parts.append(text)
    return "; ".join(parts) or "-"


def main():
    dis, res, ptxas = sys.argv[1:4]
    pattern = re.compile(sys.argv[4] if len(sys.argv) > 4 else r"update|lamb_pass|inspect_grad")
    funcs, regs, sp = parse_functions(dis), resources(res), spills(ptxas)
    print(f"{'kernel':40} {'regs':>4} {'spill':>5}  vector loops: count x elements per iteration (per thread): "
          "instructions per iteration = per element; br: other branches, static: the loop's instructions")
    for name in sorted(funcs, key=pretty):
        if pattern.search(name):
            print(f"{pretty(name):40} {regs.get(name, -1):4d} {sp.get(name, -1):5d}  {describe(name, analyse(funcs[name]))}")


if __name__ == "__main__":
    main()
