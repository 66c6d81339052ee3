"""Pretrained weights: the catalogue of named weights, the local cache, and fetching into it.

Training never downloads: a backbone's pretrained start is read from the cache
(:func:`~clinfl.weights.cache.cached_weights`), which ``clinfl weights fetch`` fills.
"""
