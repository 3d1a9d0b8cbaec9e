"""Static inspection of NVIDIA machine code (SASS): loops, load widths, resources.

What a kernel will do on a GPU can be read, without a GPU, from the cubin a
compiler produced for it: how many instructions its main loop issues, how wide
its loads are, whether it synchronises or spills.  Those figures bound its speed
(see docs: lanes per byte, bytes in flight) and are stable enough to gate on in
CI.  This module is compiler-neutral: it takes a cubin (from Triton, nvcc, NVRTC,
...) and the CUDA binary tools, and knows nothing of how the kernel was written.

- `find_tool`: cuobjdump / nvdisasm / ptxas, from ``$TTQKERN_CUDA_BIN``, Triton's
  bundled toolkit, ``$CUDA_HOME/bin`` or ``PATH``.
- `disassemble` / `parse_sass`: cubin -> per-kernel instruction lists.
- `find_loops` / `loop_stats` / `main_loop`: loops are closed by backward branches;
  per loop the instruction count, memory operations by kind and width, and the
  barrier / shuffle / conversion / special-function / tensor-core counts.
- `resource_usage` (``cuobjdump -res-usage``) and `ptxas_usage` (``ptxas -v`` on
  PTX): registers, spills, stack, shared memory.
- `occupancy`, `lanes_per_byte`, `bytes_in_flight_per_sm`, `issue_ceiling_gbps`:
  the arithmetic that turns those counts into performance estimates.

Only the standard library is imported; the tools are run as subprocesses.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..diskcache import user_cache_dir, write_atomic

TOOLS = ("cuobjdump", "nvdisasm", "ptxas")


class ToolMissing(RuntimeError):
    """A CUDA binary tool (cuobjdump, nvdisasm, ptxas) was not found."""


def _triton_bin() -> Path | None:
    """Triton's bundled CUDA tools (``triton/backends/nvidia/bin``), located without importing triton."""
    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "backends" / "nvidia" / "bin"
        if d.is_dir():
            return d
    return None


def tool_dirs() -> list[Path]:
    """Directories searched for the tools, in order (``PATH`` comes after these)."""
    dirs = []
    if os.environ.get("TTQKERN_CUDA_BIN"):
        dirs.append(Path(os.environ["TTQKERN_CUDA_BIN"]))
    tb = _triton_bin()
    if tb is not None:
        dirs.append(tb)
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            dirs.append(Path(os.environ[var]) / "bin")
    return dirs


def find_tool(name: str) -> Path | None:
    """Path of CUDA tool ``name`` (one of `TOOLS`), or None when it is nowhere to be found."""
    if name not in TOOLS:
        raise ValueError(f"tool must be one of {TOOLS}, got {name!r}")
    for d in tool_dirs():
        p = d / name
        if p.is_file() and os.access(p, os.X_OK):
            return p
    found = shutil.which(name)
    return Path(found) if found else None


def require_tool(name: str) -> Path:
    """`find_tool`, raising `ToolMissing` with where it looked."""
    p = find_tool(name)
    if p is None:
        where = ", ".join(str(d) for d in tool_dirs()) or "(no toolkit directories)"
        raise ToolMissing(
            f"{name} not found in {where} or on PATH: install triton (it bundles the CUDA binary tools) or a "
            f"CUDA toolkit, or point $TTQKERN_CUDA_BIN at a directory holding {name}"
        )
    return p


def _run(args: list, timeout: float = 120) -> str:
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{Path(str(args[0])).name} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    return out.stdout + out.stderr


class _CubinFile:
    """A path for ``cubin`` (bytes are written to a temporary file, removed on exit)."""

    def __init__(self, cubin: bytes | str | Path):
        self._tmp = None
        if isinstance(cubin, bytes | bytearray):
            fd, name = tempfile.mkstemp(suffix=".cubin")
            with os.fdopen(fd, "wb") as f:
                f.write(cubin)
            self._tmp = self.path = Path(name)
        else:
            self.path = Path(cubin)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc):
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


def disassemble(cubin: bytes | str | Path) -> str:
    """SASS text of every kernel in ``cubin`` (``cuobjdump -sass``; ``nvdisasm`` if that is missing).

    Cached on disk (`tool_output`, ``~/.cache/ttqkern/sass``) under a hash of the tool and the
    cubin's bytes: a cubin of a few MB takes cuobjdump seconds, and the gates read the same
    cubins on every run.
    """
    data = bytes(cubin) if isinstance(cubin, bytes | bytearray) else Path(cubin).read_bytes()
    tool = find_tool("cuobjdump")
    args = ["-sass"] if tool is not None else ["-c"]
    tool = tool if tool is not None else require_tool("nvdisasm")

    def run() -> str:
        with _CubinFile(data) as path:
            return _run([tool, *args, path])

    return tool_output("sass", tool, args, data, run)


def _cache_dir(kind: str) -> Path:
    """``~/.cache/ttqkern/<kind>`` (``$XDG_CACHE_HOME``; ``$TTQKERN_PTXAS_CACHE`` for the ptxas reports)."""
    default = user_cache_dir(kind)
    return Path(os.environ.get("TTQKERN_PTXAS_CACHE", default)) if kind == "ptxas" else default


def tool_output(kind: str, tool: Path, args: list[str], data: bytes, run) -> str:
    """``run()``'s text, cached on disk under ``kind`` by a hash of the tool (path, size, mtime), ``args``, ``data``.

    A tool's output is a function of the tool binary, its arguments and its input; the
    cache file is written with `ttqkern.diskcache.write_atomic`.
    """
    import hashlib
    import zlib

    st = tool.stat()
    h = hashlib.sha256("\0".join([str(tool.resolve()), str(st.st_size), str(st.st_mtime_ns), *args]).encode())
    h.update(b"\0" + data)
    cached = _cache_dir(kind) / f"{h.hexdigest()}.z"
    try:
        return zlib.decompress(cached.read_bytes()).decode()
    except (OSError, zlib.error):
        text = run()
    write_atomic(cached, zlib.compress(text.encode(), 1))
    return text


# --- parsing ----------------------------------------------------------------------------------

_FUNC = re.compile(r"^\s*Function\s*:\s*(\S+)")
_NVD_FUNC = re.compile(r"^\s*\.text\.(\S+?):\s*$")
_LABEL = re.compile(r"^\s*(\.L_\w+):\s*$")
_INSTR = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+(.*?)\s*;?\s*(?:/\*.*\*/)?\s*$")
_PRED = re.compile(r"^(@!?U?P(?:T|\d+))\s+")
_TARGET_HEX = re.compile(r"^(0x[0-9a-fA-F]+)")
_TARGET_LABEL = re.compile(r"`\((\.L_\w+)\)")
BRANCHES = ("BRA", "JMP", "BRX", "JMX", "CALL")


@dataclass(frozen=True)
class Instr:
    """One SASS instruction: ``addr`` (byte offset), guard predicate, full opcode (with modifiers)."""

    addr: int
    opcode: str  # e.g. "LDG.E.128", "BAR.SYNC.DEFER_BLOCKING"
    operands: str
    pred: str = ""  # e.g. "@!P1", "" when unconditional
    target: int | None = None  # branch target address

    @property
    def op(self) -> str:
        """Base opcode without modifiers (``LDG``, ``BAR``, ``FFMA``)."""
        return self.opcode.split(".", 1)[0]

    @property
    def is_nop_filler(self) -> bool:
        """Padding: NOP, and the ``@!PT`` never-executed placeholders ptxas leaves behind."""
        return self.op == "NOP" or self.pred == "@!PT"


def parse_sass(text: str) -> dict[str, list[Instr]]:
    """``{kernel name: [Instr, ...]}`` from `disassemble` output (cuobjdump or nvdisasm format)."""
    funcs: dict[str, list[Instr]] = {}
    labels: dict[str, dict[str, int]] = {}
    pending: dict[str, list[tuple[int, str, str, str]]] = {}
    name = None
    last_labels: list[str] = []
    for line in text.splitlines():
        head = line.lstrip()[:2]
        # most lines are an instruction ("/*0a10*/ ...") or its encoding ("/* 0x... */"): only
        # those go through the instruction pattern (hundreds of thousands of lines per cubin)
        if head != "/*":
            m = _FUNC.match(line) or _NVD_FUNC.match(line)
            if m:
                name = m.group(1)
                funcs.setdefault(name, [])
                labels.setdefault(name, {})
                pending.setdefault(name, [])
                continue
            if name is not None:
                m = _LABEL.match(line)
                if m:
                    last_labels.append(m.group(1))
            continue
        if name is None:
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        addr = int(m.group(1), 16)
        body = m.group(2).strip().rstrip(";").strip()
        if not body:
            continue
        for lab in last_labels:
            labels[name][lab] = addr
        last_labels = []
        pred = ""
        pm = _PRED.match(body)
        if pm:
            pred = pm.group(1)
            body = body[pm.end() :]
        opcode, _, operands = body.partition(" ")
        pending[name].append((addr, opcode, operands.strip(), pred))
    for fname, rows in pending.items():
        out = []
        for addr, opcode, operands, pred in rows:
            target = None
            if opcode.split(".", 1)[0] in BRANCHES:
                hm = _TARGET_HEX.match(operands)
                lm = _TARGET_LABEL.search(operands)
                if hm:
                    target = int(hm.group(1), 16)
                elif lm and lm.group(1) in labels[fname]:
                    target = labels[fname][lm.group(1)]
            out.append(Instr(addr, opcode, operands, pred, target))
        funcs[fname] = out
    return funcs


# --- loops --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loop:
    """Instructions ``[start, end]`` (addresses, inclusive) closed by the backward branch at ``end``."""

    start: int
    end: int

    def contains(self, other: Loop) -> bool:
        return self.start <= other.start and other.end <= self.end and self != other

    def body(self, instrs: list[Instr]) -> list[Instr]:
        return [i for i in instrs if self.start <= i.addr <= self.end and not i.is_nop_filler]


def find_loops(instrs: list[Instr]) -> list[Loop]:
    """Every loop: a branch to an earlier address closes ``[target, branch]``.

    A branch to itself is not a loop but the trap ptxas puts after the last EXIT.
    """
    loops = {Loop(i.target, i.addr) for i in instrs if i.target is not None and i.target < i.addr}
    return sorted(loops, key=lambda lp: (lp.start, lp.end))


def innermost_loops(instrs: list[Instr]) -> list[Loop]:
    """Loops that contain no other loop."""
    loops = find_loops(instrs)
    return [lp for lp in loops if not any(lp.contains(o) for o in loops)]


# width suffixes of memory operations, in bits (no suffix: 32)
_WIDTHS = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128}
MEMORY_KINDS = ("LDG", "LDGSTS", "LDS", "LDSM", "LDL", "LD", "STG", "STS", "STL", "ST", "ATOM", "ATOMG", "RED", "LDC")
# opcodes counted per loop by family: {family: base opcodes}
FAMILIES = {
    "BAR": ("BAR",),
    "SHFL": ("SHFL",),
    "I2F": ("I2F", "I2FP", "I2I", "I2IP"),
    "F2I": ("F2I", "F2IP"),
    "MUFU": ("MUFU",),
    "MMA": ("HMMA", "HGMMA", "IMMA", "IGMMA", "DMMA", "QGMMA", "BMMA", "UTCHMMA", "UTCQMMA"),
    "FFMA": ("FFMA", "FFMA2"),
    "FADD": ("FADD", "FADD2"),
    "FMUL": ("FMUL", "FMUL2"),
    "HFMA2": ("HFMA2",),
    "LOP3": ("LOP3",),
    "SHF": ("SHF",),
    "PRMT": ("PRMT",),
    "F2F": ("F2F", "F2FP"),
    "DEPBAR": ("DEPBAR", "LDGDEPBAR", "ARRIVES", "SYNCS"),
    "LOCAL": ("LDL", "STL"),
}


def mem_width(opcode: str) -> int:
    """Access width in bits of a memory opcode (``LDG.E.128`` -> 128, ``LDG.E.U8`` -> 8, ``LDS`` -> 32)."""
    width = 32
    for part in opcode.split(".")[1:]:
        if part in _WIDTHS:
            width = _WIDTHS[part]
    return width


@dataclass
class LoopStats:
    """What one loop issues per iteration (one pass through its body).

    ``memory``: ``{"LDG.128": n, "LDG.8": n, "LDGSTS.128": n, "LDS.64": n, ...}`` (kind.width);
    ``families``: counts per `FAMILIES` entry; ``opcodes``: counts per base opcode.
    """

    start: int
    end: int
    instructions: int
    memory: dict[str, int] = field(default_factory=dict)
    families: dict[str, int] = field(default_factory=dict)
    opcodes: dict[str, int] = field(default_factory=dict)

    def loads(self, kind: str = "LDG") -> dict[int, int]:
        """``{width bits: count}`` of one memory kind (``LDG``, ``LDGSTS``, ``LDS``, ...)."""
        out: dict[int, int] = {}
        for key, n in self.memory.items():
            k, _, w = key.partition(".")
            if k == kind:
                out[int(w)] = out.get(int(w), 0) + n
        return out

    def global_load_bytes_per_thread(self) -> int:
        """Bytes one thread requests from global memory per iteration (LDG + LDGSTS)."""
        return sum(w // 8 * n for kind in ("LDG", "LDGSTS") for w, n in self.loads(kind).items())

    def as_dict(self) -> dict:
        return {
            "start": self.start,
            "end": self.end,
            "instructions": self.instructions,
            "memory": dict(sorted(self.memory.items())),
            "families": dict(sorted(self.families.items())),
        }


def _mem_kind(op: str) -> str | None:
    return op if op in MEMORY_KINDS else None


def loop_stats(instrs: list[Instr], loop: Loop) -> LoopStats:
    """`LoopStats` of ``loop``'s body (filler NOPs and ``@!PT`` placeholders not counted)."""
    body = loop.body(instrs)
    mem: Counter = Counter()
    ops: Counter = Counter(i.op for i in body)
    for i in body:
        kind = _mem_kind(i.op)
        if kind is not None and kind != "LDC":
            mem[f"{kind}.{mem_width(i.opcode)}"] += 1
    fams = {name: sum(ops[o] for o in members) for name, members in FAMILIES.items()}
    return LoopStats(loop.start, loop.end, len(body), dict(mem), fams, dict(ops))


def main_loop(
    instrs: list[Instr], require: tuple[str, ...] = ("LDG", "LDGSTS"), prefer: str | None = None
) -> LoopStats | None:
    """The innermost loop that issues the most global loads (ties: more instructions), or None.

    A kernel that streams a weight spends its time in the loop that loads it;
    ``require`` names the memory kinds that count as such loads.  ``prefer``: a
    `FAMILIES` name (e.g. ``"MMA"``); when some such loop uses it, only those count
    (a GEMM's main loop is the one with the tensor-core ops, not a copy loop beside it).
    """
    cands = []
    for lp in innermost_loops(instrs):
        st = loop_stats(instrs, lp)
        n = sum(c for k, c in st.memory.items() if k.partition(".")[0] in require)
        if n:
            cands.append(((n, st.instructions), st))
    if prefer is not None and any(st.families.get(prefer, 0) for _, st in cands):
        cands = [c for c in cands if c[1].families.get(prefer, 0)]
    return max(cands, key=lambda c: c[0])[1] if cands else None


def kernel_stats(instrs: list[Instr]) -> dict:
    """Whole-kernel counts (every instruction, loops or not): ``{"instructions", "families", "memory"}``."""
    loop = Loop(min((i.addr for i in instrs), default=0), max((i.addr for i in instrs), default=0))
    st = loop_stats(instrs, loop)
    return {"instructions": st.instructions, "families": st.families, "memory": st.memory}


# --- resources --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """Per-thread registers, spill bytes, stack and local bytes; per-CTA static shared memory bytes."""

    registers: int
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0
    local: int = 0
    shared: int = 0

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads


_RES = re.compile(r"Function\s+(\S+):\s*\n\s*(.*)")


def resource_usage(cubin: bytes | str | Path) -> dict[str, Resources]:
    """``cuobjdump -res-usage``: ``{kernel: Resources}`` (spills show as LOCAL / STACK bytes here)."""
    with _CubinFile(cubin) as path:
        text = _run([require_tool("cuobjdump"), "-res-usage", path])
    return parse_resource_usage(text)


def parse_resource_usage(text: str) -> dict[str, Resources]:
    """Parse ``cuobjdump -res-usage`` output."""
    out = {}
    for m in _RES.finditer(text):
        vals = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", m.group(2)))
        out[m.group(1)] = Resources(
            registers=int(vals.get("REG", 0)),
            stack=int(vals.get("STACK", 0)),
            local=int(vals.get("LOCAL", 0)),
            shared=int(vals.get("SHARED", 0)),
        )
    return out


_PTXAS_FUNC = re.compile(r"(?:Compiling entry function|Function properties for)\s+'?([\w$.]+)'?")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas_verbose(text: str) -> dict[str, Resources]:
    """Parse ``ptxas -v`` output: ``{kernel: Resources}`` with registers, spills, stack, smem."""
    out: dict[str, dict] = {}
    name = None
    for line in text.splitlines():
        m = _PTXAS_FUNC.search(line)
        if m:
            name = m.group(1)
            out.setdefault(name, {})
            continue
        if name is None:
            continue
        m = _PTXAS_SPILL.search(line)
        if m:
            out[name].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = _PTXAS_REGS.search(line)
        if m:
            out[name]["registers"] = int(m.group(1))
            if m.group(2):
                out[name]["shared"] = int(m.group(2))
    return {k: Resources(**{"registers": 0, **v}) for k, v in out.items()}


def ptxas_usage(
    ptx: str, arch: str, extra: tuple[str, ...] = (), ptxas: str | Path | None = None
) -> dict[str, Resources]:
    """Assemble ``ptx`` for ``arch`` (e.g. ``sm_90a``) with ``ptxas -v``: registers and spills per kernel.

    ``ptxas``: the assembler to run (default: `find_tool`); pass the one the compiler
    used, with its flags in ``extra``, to see exactly its register allocation.
    The report is cached on disk (`tool_output`; ``$TTQKERN_PTXAS_CACHE``, default
    ``~/.cache/ttqkern/ptxas``) under a hash of the assembler (path, size, mtime), the
    arguments and the PTX: the static gates and the compile check assemble the same
    kernels, and a second run assembles nothing.
    """
    tool = Path(ptxas) if ptxas is not None else require_tool("ptxas")

    def run() -> str:
        with tempfile.TemporaryDirectory() as d:
            src = Path(d) / "k.ptx"
            src.write_text(ptx)
            return _run([tool, f"-arch={arch}", "-v", *extra, src, "-o", Path(d) / "k.cubin"])

    return parse_ptxas_verbose(tool_output("ptxas", tool, [f"-arch={arch}", *extra], ptx.encode(), run))


# --- one call ----------------------------------------------------------------------------------


@dataclass
class KernelReport:
    """Everything this module reads from one kernel of a cubin."""

    name: str
    instructions: int
    loops: list[LoopStats]
    main: LoopStats | None
    resources: Resources | None

    def as_dict(self) -> dict:
        res = self.resources
        return {
            "name": self.name,
            "instructions": self.instructions,
            "loops": [lp.as_dict() for lp in self.loops],
            "main_loop": None if self.main is None else self.main.as_dict(),
            "resources": None if res is None else {**res.__dict__, "spills": res.spills},
        }


def inspect_cubin(
    cubin: bytes | str | Path,
    ptx: str | None = None,
    arch: str | None = None,
    ptxas: str | Path | None = None,
    ptxas_flags: tuple[str, ...] = (),
    prefer: str | None = None,
) -> dict:
    """``{kernel: KernelReport}`` for every kernel in ``cubin``.

    Resources come from ``ptxas -v`` when ``ptx`` and ``arch`` are given (it reports
    spill bytes; ``ptxas`` / ``ptxas_flags`` as in `ptxas_usage`), else from
    ``cuobjdump -res-usage`` (spills show as LOCAL bytes there).  ``prefer``: as in `main_loop`.
    """
    funcs = parse_sass(disassemble(cubin))
    if ptx is not None and arch is not None:
        res = ptxas_usage(ptx, arch, ptxas_flags, ptxas)
    else:
        res = resource_usage(cubin)
    out = {}
    for name, instrs in funcs.items():
        loops = [loop_stats(instrs, lp) for lp in innermost_loops(instrs)]
        body = [i for i in instrs if not i.is_nop_filler]
        out[name] = KernelReport(name, len(body), loops, main_loop(instrs, prefer=prefer), res.get(name))
    return out


# --- performance arithmetic ------------------------------------------------------------------


@dataclass(frozen=True)
class SMLimits:
    """Per-SM resource limits of an architecture (CUDA programming guide, compute capabilities table)."""

    registers: int = 65536
    max_threads: int = 2048
    max_ctas: int = 32
    shared_bytes: int = 233472  # usable per SM (sm_90: 228 KB)
    max_shared_per_cta: int = 232448
    reg_alloc_unit: int = 256  # registers are allocated per warp in units of this many
    issue_lanes_per_clk: int = 128  # 4 schedulers x 32 lanes


ARCH_LIMITS = {
    80: SMLimits(shared_bytes=167936, max_shared_per_cta=166912),
    86: SMLimits(max_threads=1536, max_ctas=16, shared_bytes=102400, max_shared_per_cta=101376),
    89: SMLimits(max_threads=1536, max_ctas=24, shared_bytes=102400, max_shared_per_cta=101376),
    90: SMLimits(),
}


def arch_limits(arch: int | str) -> SMLimits:
    """`SMLimits` for ``arch`` (``90``, ``"sm_90a"``, ``"80"``); unknown ones get sm_90's."""
    n = int(re.sub(r"\D", "", str(arch)) or 90)
    return ARCH_LIMITS.get(n, SMLimits())


def occupancy(registers: int, shared: int, threads: int, arch: int | str = 90) -> int:
    """Resident CTAs per SM for a kernel of ``threads`` per CTA, ``registers`` per thread, ``shared`` B per CTA."""
    lim = arch_limits(arch)
    warps = -(-threads // 32)
    regs_per_warp = -(-max(registers, 1) * 32 // lim.reg_alloc_unit) * lim.reg_alloc_unit
    by_regs = lim.registers // (regs_per_warp * warps)
    by_threads = lim.max_threads // (warps * 32)
    by_smem = lim.shared_bytes // shared if shared > 0 else lim.max_ctas
    if shared > lim.max_shared_per_cta:
        return 0
    return max(0, min(by_regs, by_threads, by_smem, lim.max_ctas))


def lanes_per_byte(instructions: int, warps: int, bytes_per_iteration: float) -> float:
    """SASS lanes issued per byte of (weight) data consumed: ``instructions x 32 x warps / bytes``.

    ``instructions`` is the loop body's length (what each warp issues per iteration),
    ``bytes_per_iteration`` what the whole CTA consumes per iteration.
    """
    return instructions * 32 * warps / bytes_per_iteration


def issue_ceiling_gbps(lanes_per_byte_: float, sms: int, clock_ghz: float, arch: int | str = 90) -> float:
    """Bandwidth (GB/s) at which instruction issue saturates: ``lanes/clk/SM x SMs x clock / lanes per byte``."""
    return arch_limits(arch).issue_lanes_per_clk * sms * clock_ghz / lanes_per_byte_


def bytes_in_flight_per_sm(
    ctas: int, sms: int, resident_ctas: int, bytes_per_iteration: float, stages: int = 1
) -> float:
    """Estimated bytes a SM has requested and not yet received, by Little's law's supply side.

    ``min(ceil(ctas / sms), resident_ctas)`` CTAs per SM, each with ``stages``
    iterations of ``bytes_per_iteration`` outstanding (1 for a loop whose loads are
    consumed in the iteration that issues them, more for prefetching or cp.async).
    """
    per_sm = min(-(-ctas // max(sms, 1)), max(resident_ctas, 0))
    return per_sm * bytes_per_iteration * stages


__all__ = [
    "ARCH_LIMITS",
    "FAMILIES",
    "TOOLS",
    "Instr",
    "KernelReport",
    "Loop",
    "LoopStats",
    "Resources",
    "SMLimits",
    "ToolMissing",
    "arch_limits",
    "bytes_in_flight_per_sm",
    "disassemble",
    "find_loops",
    "find_tool",
    "innermost_loops",
    "inspect_cubin",
    "issue_ceiling_gbps",
    "kernel_stats",
    "lanes_per_byte",
    "loop_stats",
    "main_loop",
    "mem_width",
    "occupancy",
    "parse_ptxas_verbose",
    "parse_resource_usage",
    "parse_sass",
    "ptxas_usage",
    "require_tool",
    "resource_usage",
    "tool_dirs",
]
