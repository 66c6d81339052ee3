"""Federated evaluation from pooled score histograms (issue 32): transport-free arithmetic.

- :mod:`~clinfl.evaluation.grid`: the shared bin grid on [0, 1].
- :mod:`~clinfl.evaluation.histograms`: one site's per-class histograms and pooling.
- :mod:`~clinfl.evaluation.vector`: the flat integer vector a secure-aggregation sum carries.
- :mod:`~clinfl.evaluation.auc`: AUC (with its error bound), F1 and metrics from histograms.
- :mod:`~clinfl.evaluation.operating`: per-class thresholds and test metrics from histograms.
- :mod:`~clinfl.evaluation.noise`: discrete Laplace evaluation noise and its epsilon.
"""
