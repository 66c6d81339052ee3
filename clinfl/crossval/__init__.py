"""Patient-grouped K-fold cross-validation of a simulated federation (``clinfl simulate --cv``).

One job per module: :mod:`~clinfl.crossval.pool` loads the whole data set unsplit,
:mod:`~clinfl.crossval.folds` plans folds and site ownership by patient,
:mod:`~clinfl.crossval.bootstrap` resamples patients, :mod:`~clinfl.crossval.scoring` turns
pooled out-of-fold predictions into metrics with intervals, :mod:`~clinfl.crossval.baselines`
scores the no-skill and age-only baselines, :mod:`~clinfl.crossval.predictions` stores the
predictions, :mod:`~clinfl.crossval.runner` runs the folds, :mod:`~clinfl.crossval.report`
writes ``cv.json`` and its table, and :mod:`~clinfl.crossval.compare` pairs two runs.
"""
