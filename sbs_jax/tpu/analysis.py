"""What a compiled program needs on each chip: XLA's memory and cost analyses, the bytes of a sharded tree per
chip (from shapes and shardings alone), and the collectives in the optimized HLO text.

Everything is read from the compiled executable or from abstract shapes; nothing runs on a device.
"""
from __future__ import annotations

import math
import re
from typing import Any

import jax
import numpy as np

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2,
                "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
                "c64": 8, "c128": 16}
# `%name = <result shape> <opcode>(` in HLO text; async collectives appear as <opcode>-start / -done.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s+(?P<op>[a-z][\w\-]*)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_CALLS_REDUCE_SCATTER = re.compile(r"calls=%?all-reduce-scatter")
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")


def per_chip_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs (or arrays) carrying `NamedSharding`s: each
    leaf's shard shape times its item size, summed (replicated leaves count in full on every chip)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = tuple(leaf.shape)
        sharding = getattr(leaf, "sharding", None)
        shard = sharding.shard_shape(shape) if sharding is not None else shape
        total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
    return int(total)


def memory(compiled) -> dict[str, int]:
    """XLA's per-device allocation of a compiled program: arguments, outputs (less what aliases donated
    arguments), temporaries, generated code, and their total."""
    m = compiled.memory_analysis()
    if m is None:
        raise RuntimeError("the compiled program has no memory analysis on this backend")
    out = {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
           "aliased": int(m.alias_size_in_bytes), "temporaries": int(m.temp_size_in_bytes),
           "generated_code": int(m.generated_code_size_in_bytes)}
    out["total"] = (out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
                    + out["generated_code"])
    return out


def cost(compiled) -> dict[str, float]:
    """FLOPs and bytes accessed per device from XLA's cost analysis (its time estimate is not kept: it is not
    a step time and can come out negative for programs with loops)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return {"flops": float(analysis.get("flops", 0.0)), "bytes_accessed": float(analysis.get("bytes accessed", 0.0))}


def _shape_bytes(shape_text: str) -> list[float]:
    sizes = []
    for dtype, dims in _ARRAY.findall(shape_text):
        if dtype in _DTYPE_BYTES:
            sizes.append(_DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d))
    return sizes


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """{op: {"count", "bytes"}} of every collective instruction in the optimized HLO text, synchronous or
    async (`-start`). The TPU compiler emits a reduce-scatter as a fusion calling an `all-reduce-scatter`
    computation (an all-reduce and a slice inside): that fusion counts as one reduce-scatter, the all-reduce
    inside it does not count. bytes: the result buffers per device (an all-gather's gathered output, a
    reduce-scatter's shard; for async ops whose result tuple holds operand and output, the largest). Static
    counts: an op inside a loop body (scanned layers, accumulation) counts once."""
    out = {op: {"count": 0, "bytes": 0} for op in COLLECTIVES}
    inside_reduce_scatter = False
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            inside_reduce_scatter = header.group(1).startswith("all-reduce-scatter")
            continue
        match = _INSTRUCTION.match(line)
        if not match or inside_reduce_scatter:
            continue
        op = match.group("op")
        sizes = _shape_bytes(match.group("shape"))
        if op == "fusion" and _CALLS_REDUCE_SCATTER.search(line):
            out["reduce-scatter"]["count"] += 1
            out["reduce-scatter"]["bytes"] += int(sum(sizes))
            continue
        start = op.endswith("-start")
        base = op[:-len("-start")] if start else op
        if base not in out:
            continue
        nbytes = sum(sizes) if base == "all-reduce" or not start else max(sizes, default=0)
        out[base]["count"] += 1
        out[base]["bytes"] += int(nbytes)
    return out


_SOURCE_SECTIONS = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")


def _drop_metadata(line: str) -> str:
    """The line without its `metadata={...}` attribute (braces matched; quoted text skipped)."""
    start = line.find(", metadata={")
    if start < 0:
        return line
    depth, quoted, i = 0, False, start + len(", metadata=")
    while i < len(line):
        c = line[i]
        if c == '"' and line[i - 1] != "\\":
            quoted = not quoted
        elif not quoted and c == "{":
            depth += 1
        elif not quoted and c == "}":
            depth -= 1
            if depth == 0:
                return line[:start] + _drop_metadata(line[i + 1:])
        i += 1
    return line[:start]


def program_fingerprint(hlo_text: str) -> str:
    """sha256 of the optimized HLO without source locations (file, function and stack-frame tables and
    `metadata={...}`): equal for the same program traced from different call sites (`sbs train`'s step and
    `sbs compile`'s)."""
    import hashlib

    kept = [_drop_metadata(line) for line in hlo_text.splitlines()
            if line not in _SOURCE_SECTIONS and not re.match(r"^\d+ ", line)]
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()


def roofline_seconds(flops: float, bytes_accessed: float, peak_flops: float, bytes_per_s: float) -> float:
    """A lower bound on the step time: max(FLOPs / peak FLOP/s, bytes / HBM bandwidth). Not an estimate."""
    return max(flops / peak_flops, bytes_accessed / bytes_per_s)


HBM_OOM = re.compile(r"RESOURCE_EXHAUSTED.*?(?:Ran out of memory in memory space hbm|HbmOom|out of memory)",
                     re.IGNORECASE | re.DOTALL)


def is_hbm_oom(error: BaseException) -> bool:
    """Whether a compile error is the TPU compiler refusing a program that does not fit in HBM."""
    return bool(HBM_OOM.search(str(error)))
