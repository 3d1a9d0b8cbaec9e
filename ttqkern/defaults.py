"""Default TTQ hyper-parameters: one home for alpha, lam and p.

These are the spec's starting values (spec §2, stage 1).  The hyper-parameter
search (`python -m ttqkern.tune --hparams`) writes measured ones to
`results/hparams/`; when it has run, the values below are the ones it chose.
"""

ALPHA = 0.25
LAM = 1.0
P = 2.0
