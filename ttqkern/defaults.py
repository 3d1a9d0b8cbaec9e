"""Default TTQ hyper-parameters: one home for alpha, lam and p.

The values below are the best trial of the 3-bit Optuna study written to
``results/hparams/ttq_hparams_b3.json`` (key ``"best"``, copied exactly): TTQ with
r = 16 on SmolLM2-135M, group 64, objective = perplexity on the first 4 windows of
512 tokens of the WikiText-2 *validation* split, 47 trials
in two runs of ``python -m ttqkern.tune --hparams --bits 3 --max-windows 4`` (exact
commands in that file and in ``ttq_hparams_b3.run1.json``, the first run's summary).  Validation perplexity 33.081 against
36.143 for the spec's starting values (alpha = 0.25, lam = 1.0,
p = 2).  3 bits is the informative width on this model (its weights already sit on
a 4-bit grid).  AWQ does not use these: it keeps p = 2, lam = 0 and searches alpha.
"""

ALPHA = 0.24232075800745867
LAM = 0.0033144368617962555
P = 2.6784408609938994
