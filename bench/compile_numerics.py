"""Why do torch.compile (Inductor) and eager logits differ for a TTQ model?  (issue 12, finding 19)

Quantization is a step function: a rounding-level change of an activation moves D
by an ulp and can flip a code at a rounding boundary, and a flipped 3-bit code
changes a weight by a whole quantization step.  Inductor fuses and reorders the
fp32 arithmetic *around* the TTQ custom ops (norms, attention, residuals), so the
activations reaching each TTQ layer differ from eager in the last bits.  This
script measures whether that explains the logit gap ("chaos at quantization
boundaries", i.e. the same computation with different rounding), or whether the
compiled model computes something else:

1. fp32 model, eager vs Inductor: the size of Inductor's own rounding differences.
2. TTQ prompt mode, eager vs Inductor: logits, top-1 agreement, and per layer how
   far D moved and how many codes differ (and by how much).
3. Replay: both models get the *same* packed weights and D (eager's), switched to
   ``static`` mode, and run the same prompts again.  If the gap falls back to the
   fp32 level of (1), all of it came from requantizing slightly different inputs.
4. Eager against eager with every embedding output perturbed by one ulp: if that
   gap is as large as Inductor's, the gap is the model's sensitivity to rounding.

    python bench/compile_numerics.py --out results/compile/inductor_vs_eager.json

(CPU; the bundled SmolLM2-135M by default, or ``--model`` a HF folder / .gguf.)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ttqkern  # noqa: E402
from ttqkern import backends  # noqa: E402
from ttqkern.nn import TTQLinear  # noqa: E402


def load(model_arg: str | None):
    from ttqkern import eval as ev

    if model_arg is None:  # the dequantized bundled model, if a previous eval run cached it
        cached = sorted((ev.cache_dir() / "models").glob("SmolLM2-135M-Instruct*"))
        model_arg = str(cached[0]) if cached else None
    lm, tok, name = ev.load_causal_lm(model_arg)
    return lm.eval(), tok, name


def prompts(tok, n: int, tokens: int) -> list[torch.Tensor]:
    text = (Path(ttqkern.__file__).parent / "data" / "wikitext2" / "wiki.valid.tokens").read_text()
    ids = tok(text[:200_000], return_tensors="pt").input_ids[0]
    return [ids[i * tokens : (i + 1) * tokens][None] for i in range(n)]


def ttq_layers(model) -> list[tuple[str, TTQLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, TTQLinear)]


def snapshot(model) -> dict:
    """Per TTQ layer: D and the stored codes (canonical)."""
    return {n: (m.D.clone(), m.packed.codes().clone()) for n, m in ttq_layers(model)}


def compare_logits(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a - b).abs()
    return {
        "max_abs_logit_diff": float(d.max()),
        "mean_abs_logit_diff": float(d.mean()),
        "logit_scale": float(a.abs().max()),
        "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
    }


def compare_quant(sa: dict, sb: dict) -> dict:
    drel, flips, total, worst = 0.0, 0, 0, 0
    per_layer = []
    for name, (Da, ca) in sa.items():
        Db, cb = sb[name]
        r = float(((Da - Db).abs() / Da.abs()).max())
        diff = (ca.to(torch.int32) - cb.to(torch.int32)).abs()
        f = int((diff != 0).sum())
        drel, flips, total, worst = max(drel, r), flips + f, total + diff.numel(), max(worst, int(diff.max()))
        per_layer.append((name, r, f / diff.numel()))
    first = per_layer[0]
    return {
        "max_rel_D_diff": drel,
        "codes_differing_fraction": flips / total,
        "max_code_diff": worst,
        "first_layer": {"name": first[0], "max_rel_D_diff": first[1], "codes_differing_fraction": first[2]},
    }


@torch.no_grad()
def run(model, xs, fn=None) -> tuple[torch.Tensor, list[dict]]:
    fn = fn or model
    logits, snaps = [], []
    for x in xs:
        logits.append(fn(x).logits.float())
        snaps.append(snapshot(model) if ttq_layers(model) else {})
    return torch.cat(logits), snaps


def perturb_embeddings_by_one_ulp(model, seed: int = 0):
    """A forward hook on the input embedding: every output element times (1 +- 2^-24) at random."""
    gen = torch.Generator().manual_seed(seed)

    def hook(_mod, _inp, out):
        sign = torch.randint(0, 2, out.shape, generator=gen).to(out.dtype) * 2 - 1
        return out * (1 + sign * 2.0**-24)

    return model.get_input_embeddings().register_forward_hook(hook)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--out", default="results/compile/inductor_vs_eager.json")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.time()
    fp32, tok, name = load(args.model)
    xs = prompts(tok, args.prompts, args.tokens)
    out = {
        "command": "python bench/compile_numerics.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": name,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "bits": args.bits,
        "group_size": args.group_size,
        "r": args.r,
        "backend": backends.resolve(args.backend, torch.device("cpu")).name,
        "prompts": args.prompts,
        "tokens_per_prompt": args.tokens,
    }

    # 1. fp32: Inductor's own rounding differences
    eager_fp, _ = run(fp32, xs)
    comp = torch.compile(fp32.forward)
    ind_fp, _ = run(fp32, xs, comp)
    out["fp32_eager_vs_inductor"] = compare_logits(eager_fp, ind_fp)
    print("fp32", out["fp32_eager_vs_inductor"], flush=True)

    # 2. TTQ prompt mode, eager vs Inductor (separate copies: each keeps its own packed state)
    kw = dict(method="ttq", bits=args.bits, group_size=args.group_size, r=args.r, mode="prompt", backend=args.backend)
    ttq_eager = ttqkern.quantize_model(copy.deepcopy(fp32), **kw)
    ttq_comp = copy.deepcopy(ttq_eager)
    eager_q, snaps_e = run(ttq_eager, xs)
    ind_q, snaps_c = run(ttq_comp, xs, torch.compile(ttq_comp.forward))
    out["ttq_eager_vs_inductor"] = compare_logits(eager_q, ind_q)
    out["ttq_eager_vs_inductor"]["quantization"] = [compare_quant(a, b) for a, b in zip(snaps_e, snaps_c, strict=True)]
    out["ttq_vs_fp32_eager"] = compare_logits(eager_fp, eager_q)
    print("ttq", {k: v for k, v in out["ttq_eager_vs_inductor"].items() if k != "quantization"}, flush=True)

    # 3. replay: the same packed weights and D in both, no requantization
    def set_mode(model, mode):
        for _n, m in ttq_layers(model):
            m.mode = mode

    comp_static = torch.compile(ttq_comp.forward)
    replay_e, replay_c = [], []
    with torch.no_grad():
        for x in xs:
            set_mode(ttq_eager, "prompt")
            ttq_eager(x)  # eager quantizes for this prompt ...
            for (_n, me), (_m, mc) in zip(ttq_layers(ttq_eager), ttq_layers(ttq_comp), strict=True):
                mc._store(me.packed, me.D)  # ... and both models keep exactly that
            set_mode(ttq_eager, "static")
            set_mode(ttq_comp, "static")
            replay_e.append(ttq_eager(x).logits.float())
            replay_c.append(comp_static(x).logits.float())
    set_mode(ttq_eager, "prompt")
    out["ttq_replay_same_packed_weights"] = compare_logits(torch.cat(replay_e), torch.cat(replay_c))
    print("replay", out["ttq_replay_same_packed_weights"], flush=True)

    # 4. eager vs eager with the embeddings perturbed by one ulp
    ttq_pert = copy.deepcopy(ttq_eager)
    handle = perturb_embeddings_by_one_ulp(ttq_pert)
    pert_q, snaps_p = run(ttq_pert, xs)
    handle.remove()
    out["ttq_eager_vs_eager_one_ulp_input"] = compare_logits(eager_q, pert_q)
    out["ttq_eager_vs_eager_one_ulp_input"]["quantization"] = [
        compare_quant(a, b) for a, b in zip(snaps_e, snaps_p, strict=True)
    ]
    print("1 ulp", {k: v for k, v in out["ttq_eager_vs_eager_one_ulp_input"].items() if k != "quantization"})
    out["seconds"] = round(time.time() - t0, 1)
    out["load_average"] = os.getloadavg()

    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(out))
    print(f"wrote {path} and {path.with_suffix('.md')} in {out['seconds']} s")
    return 0


def markdown(r: dict) -> str:
    rows = [
        ("fp32 model, eager vs Inductor", r["fp32_eager_vs_inductor"]),
        ("TTQ prompt mode, eager vs Inductor", r["ttq_eager_vs_inductor"]),
        ("TTQ, same packed weights and D in both (replay)", r["ttq_replay_same_packed_weights"]),
        ("TTQ eager vs eager, embeddings perturbed by 1 ulp", r["ttq_eager_vs_eager_one_ulp_input"]),
        ("(for scale) TTQ vs fp32, both eager", r["ttq_vs_fp32_eager"]),
    ]
    lines = [
        f"# Inductor vs eager on a TTQ model ({r['model']}, {r['bits']}-bit, group {r['group_size']}, r = {r['r']}, "
        f"backend {r['backend']})",
        "",
        f"Command: `{r['command']}` ({r['prompts']} prompts x {r['tokens_per_prompt']} tokens of WikiText-2 "
        f"validation; torch {r['torch']}, {r['threads']} threads, {r['seconds']} s, load average "
        f"{', '.join(f'{v:.1f}' for v in r['load_average'])}).",
        "",
        "| comparison | max abs logit diff | mean abs logit diff | top-1 agreement | codes differing | max rel D diff |",
        "|---|---|---|---|---|---|",
    ]
    for label, c in rows:
        q = c.get("quantization")
        codes = f"{max(x['codes_differing_fraction'] for x in q):.2e}" if q else "-"
        dd = f"{max(x['max_rel_D_diff'] for x in q):.2e}" if q else "-"
        lines.append(
            f"| {label} | {c['max_abs_logit_diff']:.3g} | {c['mean_abs_logit_diff']:.3g} | "
            f"{c['top1_agreement']:.1%} | {codes} | {dd} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
