"""ttqkern.backends.sass on a cubin assembled here from hand-written PTX (no GPU, no Triton needed).

The PTX kernel has one loop whose body is known: a 128-bit and an 8-bit global
load, an int-to-float conversion, a barrier; a shuffle after the loop.  The
tests check that the module finds that loop and counts exactly those things,
parses the resource reports, and does the performance arithmetic.  Skipped
with the reason when the CUDA binary tools (bundled with triton) are absent.
"""

from __future__ import annotations

import pytest

from ttqkern.backends import sass

_missing = [t for t in ("ptxas", "cuobjdump") if sass.find_tool(t) is None]
needs_tools = pytest.mark.skipif(
    bool(_missing),
    reason=f"CUDA binary tools not found ({', '.join(_missing)}): install triton or a CUDA toolkit, "
    "or set $TTQKERN_CUDA_BIN",
)

PTX = r"""
.version 7.0
.target sm_80
.address_size 64

.visible .entry probe_loop(.param .u64 src, .param .u64 dst, .param .u32 n)
{
    .reg .pred %p<2>;
    .reg .b32 %r<8>;
    .reg .f32 %f<12>;
    .reg .b64 %rd<8>;
    .reg .b16 %h<2>;
    ld.param.u64 %rd1, [src];
    ld.param.u64 %rd2, [dst];
    ld.param.u32 %r1, [n];
    cvta.to.global.u64 %rd3, %rd1;
    cvta.to.global.u64 %rd6, %rd2;
    mov.u32 %r2, %tid.x;
    mul.wide.u32 %rd4, %r2, 16;
    add.s64 %rd5, %rd3, %rd4;
    mov.f32 %f1, 0f00000000;
    mov.u32 %r3, 0;
LOOP:
    .pragma "nounroll";
    ld.global.v4.f32 {%f2, %f3, %f4, %f5}, [%rd5];
    ld.global.u8 %h1, [%rd5+8192];
    cvt.u32.u16 %r4, %h1;
    cvt.rn.f32.u32 %f6, %r4;
    add.f32 %f7, %f2, %f3;
    add.f32 %f8, %f4, %f5;
    add.f32 %f9, %f7, %f8;
    fma.rn.f32 %f1, %f9, %f6, %f1;
    bar.sync 0;
    add.s64 %rd5, %rd5, 4096;
    add.u32 %r3, %r3, 1;
    setp.lt.u32 %p1, %r3, %r1;
    @%p1 bra LOOP;
    mov.b32 %r5, %f1;
    shfl.sync.bfly.b32 %r6, %r5, 1, 31, -1;
    mov.b32 %f10, %r6;
    add.f32 %f11, %f1, %f10;
    st.global.f32 [%rd6], %f11;
    ret;
}
"""


@pytest.fixture(scope="module")
def cubin(tmp_path_factory):
    import subprocess

    d = tmp_path_factory.mktemp("sass")
    (d / "probe.ptx").write_text(PTX)
    out = d / "probe.cubin"
    subprocess.run(
        [str(sass.require_tool("ptxas")), "-arch=sm_80", str(d / "probe.ptx"), "-o", str(out)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return out


@needs_tools
def test_disassembles_and_finds_the_loop(cubin):
    funcs = sass.parse_sass(sass.disassemble(cubin))
    assert list(funcs) == ["probe_loop"]
    instrs = funcs["probe_loop"]
    loops = sass.innermost_loops(instrs)
    assert len(loops) == 1  # the trailing self-branch trap is not a loop
    st = sass.main_loop(instrs)
    assert (st.start, st.end) == (loops[0].start, loops[0].end)
    assert st.loads("LDG") == {128: 1, 8: 1}
    assert st.global_load_bytes_per_thread() == 17
    assert st.families["BAR"] == 1 and st.families["I2F"] == 1 and st.families["SHFL"] == 0
    assert st.families["FFMA"] == 1 and st.families["MUFU"] == 0
    # the shuffle is after the loop: the whole-kernel count sees it
    assert sass.kernel_stats(instrs)["families"]["SHFL"] == 1
    assert 8 <= st.instructions <= 20
    assert st.as_dict()["memory"] == {"LDG.128": 1, "LDG.8": 1}


@needs_tools
def test_bytes_input_and_nvdisasm_format_agree(cubin):
    from_bytes = sass.parse_sass(sass.disassemble(cubin.read_bytes()))
    nvdisasm = sass.find_tool("nvdisasm")
    if nvdisasm is None:
        pytest.skip("nvdisasm not found")
    import subprocess

    text = subprocess.run([str(nvdisasm), "-c", str(cubin)], capture_output=True, text=True, check=True).stdout
    from_nvd = sass.parse_sass(text)
    a, b = sass.main_loop(from_bytes["probe_loop"]), sass.main_loop(from_nvd["probe_loop"])
    assert a.as_dict() == b.as_dict()


@needs_tools
def test_resource_usage_and_ptxas_verbose(cubin):
    res = sass.resource_usage(cubin)["probe_loop"]
    assert res.registers > 0 and res.local == 0 and res.stack == 0
    pt = sass.ptxas_usage(PTX, "sm_80")["probe_loop"]
    assert pt.registers == res.registers and pt.spills == 0


@needs_tools
def test_ptxas_usage_is_cached_on_disk_per_ptx_and_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("TTQKERN_PTXAS_CACHE", str(tmp_path))
    first = sass.ptxas_usage(PTX, "sm_80")
    assert len(list(tmp_path.glob("*.z"))) == 1
    monkeypatch.setattr(sass, "_run", lambda *a, **k: pytest.fail("assembled again"))
    assert sass.ptxas_usage(PTX, "sm_80") == first
    monkeypatch.undo()
    monkeypatch.setenv("TTQKERN_PTXAS_CACHE", str(tmp_path))
    sass.ptxas_usage(PTX, "sm_80", ("--regAllocOptLevel=2",))  # other flags: another report
    assert len(list(tmp_path.glob("*.z"))) == 2


@needs_tools
def test_disassembly_is_cached_on_disk_per_cubin(cubin, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    text = sass.disassemble(cubin)
    assert len(list((tmp_path / "ttqkern" / "sass").glob("*.z"))) == 1
    with monkeypatch.context() as m:
        m.setattr(sass, "_run", lambda *a, **k: pytest.fail("disassembled again"))
        assert sass.disassemble(cubin.read_bytes()) == text  # same bytes, from a path or not
    sass.disassemble(cubin.read_bytes() + bytes(16))  # other bytes (trailing padding, same code): another entry
    assert len(list((tmp_path / "ttqkern" / "sass").glob("*.z"))) == 2


@needs_tools
def test_inspect_cubin_in_one_call(cubin):
    rep = sass.inspect_cubin(cubin)["probe_loop"]
    assert rep.main is not None and rep.main.loads("LDG") == {128: 1, 8: 1} and len(rep.loops) == 1
    assert rep.instructions > rep.main.instructions and rep.resources.registers > 0
    via_ptxas = sass.inspect_cubin(cubin, ptx=PTX, arch="sm_80")["probe_loop"]
    assert via_ptxas.resources.spills == 0 and via_ptxas.as_dict()["main_loop"] == rep.as_dict()["main_loop"]


def test_parsers_on_recorded_output():
    res = sass.parse_resource_usage(
        "Resource usage:\n Common:\n  GLOBAL:0\n Function k_a:\n  REG:168 STACK:16 SHARED:1024 LOCAL:672 "
        "CONSTANT[0]:568 TEXTURE:0\n Function k_b:\n  REG:32 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:392\n"
    )
    assert res["k_a"] == sass.Resources(registers=168, stack=16, local=672, shared=1024)
    assert res["k_b"].registers == 32
    pt = sass.parse_ptxas_verbose(
        "ptxas info    : Compiling entry function 'kern' for 'sm_90a'\n"
        "ptxas info    : Function properties for kern\n"
        "    672 bytes stack frame, 672 bytes spill stores, 1104 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 392 bytes cmem[0]\n"
    )
    assert pt["kern"] == sass.Resources(registers=255, spill_stores=672, spill_loads=1104, stack=672)
    assert pt["kern"].spills == 1776


def test_parse_sass_predicates_widths_and_targets():
    text = """
        Function : kern
        /*0000*/                   S2R R0, SR_TID.X ;                  /* 0x0000000000007919 */
        /*0010*/              @!PT LDS RZ, [RZ] ;                      /* 0x00000000fffff984 */
        /*0020*/                   LDG.E.U8 R2, desc[UR4][R4.64] ;     /* 0x0000000404027981 */
        /*0030*/                   LDG.E.64 R6, desc[UR4][R4.64] ;
        /*0040*/                   I2FP.F32.U32 R3, R2 ;
        /*0050*/               @P0 BRA 0x20 ;
        /*0060*/                   EXIT ;
        /*0070*/                   BRA 0x70;
    """
    instrs = sass.parse_sass(text)["kern"]
    assert [i.op for i in instrs] == ["S2R", "LDS", "LDG", "LDG", "I2FP", "BRA", "EXIT", "BRA"]
    assert instrs[1].is_nop_filler and instrs[5].pred == "@P0" and instrs[5].target == 0x20
    assert sass.find_loops(instrs) == [sass.Loop(0x20, 0x50)]
    st = sass.main_loop(instrs)
    assert st.instructions == 4 and st.loads("LDG") == {8: 1, 64: 1} and st.families["I2F"] == 1
    assert sass.mem_width("LDGSTS.E.BYPASS.128") == 128 and sass.mem_width("LDS") == 32


def test_performance_arithmetic():
    # the diagnosis of the shipped q_proj GEMV (perf-notes §3): 256 CTAs of 16x32 4-bit codes
    assert sass.bytes_in_flight_per_sm(256, 132, resident_ctas=16, bytes_per_iteration=256) == 512
    assert sass.bytes_in_flight_per_sm(800, 132, resident_ctas=4, bytes_per_iteration=2048, stages=2) == 16384
    assert sass.lanes_per_byte(100, 4, 1024) == 12.5
    assert abs(sass.issue_ceiling_gbps(103, 132, 1.98) - 324.8) < 0.1  # 0.32 TB/s, as diagnosed
    assert sass.occupancy(registers=32, shared=0, threads=128, arch=90) == 16  # thread-limited
    assert sass.occupancy(registers=255, shared=0, threads=256, arch="sm_90a") == 1
    assert sass.occupancy(registers=128, shared=100_000, threads=128, arch=80) == 1  # shared-limited
    assert sass.occupancy(registers=32, shared=300_000, threads=128, arch=90) == 0


def test_find_tool_rejects_unknown_names_and_reports_where_it_looked(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="tool must be one of"):
        sass.find_tool("nvcc")
    monkeypatch.setenv("TTQKERN_CUDA_BIN", str(tmp_path))
    assert sass.tool_dirs()[0] == tmp_path
    monkeypatch.setattr(sass, "_triton_bin", lambda: None)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(sass.ToolMissing, match=r"cuobjdump not found in .*TTQKERN_CUDA_BIN"):
        sass.require_tool("cuobjdump")
