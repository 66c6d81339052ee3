"""The hash of a run configuration that every site of a run binds into its advertisements.

SECAGG.md, "Version 3", R1': a site signs, with every advertisement, the hash of the whole run
configuration it trains by, so sites that a coordinator joined to one run with different
configurations (one SCAFFOLD site among FedAvg sites, other seeds, batch sizes, weight decay,
image size, validation fraction...) refuse the round before any share exists.

The hash is over the portable configuration (what a deployed site receives: no path, no
dropout, see :func:`~clinfl.config.site_fields.portable_run_config`) in a canonical encoding:
JSON with sorted keys, no whitespace, floats in their shortest round-trip form, NaN refused. A
field left at its default and the same default written out hash alike, because the site hashes
the configuration it parsed and validated, not the bytes it was sent.

The initial weights are bound by content: the SHA-256 of the file the site's model starts from
(its ``--init-weights`` file, or the pretrained set in its cache; see
:func:`~clinfl.weights.provenance.weights_provenance`) joins the document as
``method.init_weights_sha256``. Two sites that would start from different weights refuse each
other; the same file at different paths hashes alike.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from clinfl.config.run import RunConfig
from clinfl.config.site_fields import portable_run_config
from clinfl.weights.provenance import weights_provenance

_LABEL = b"clinfl/run-config/v1\n"


def canonical_run_config(config: RunConfig) -> bytes:
    """Return the canonical encoding of ``config``'s portable form and its initial weights' hash.

    Raises:
        ValueError: if a number is NaN or infinite (a validated configuration has none).
        ModelError: if the initial weights cannot be read, or a pretrained set is not cached.
    """
    document = portable_run_config(config)
    weights = weights_provenance(config.method)
    if weights is not None:
        document["method"]["init_weights_sha256"] = weights.sha256
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.encode()


def run_config_digest(config: RunConfig, *, image_size: int | None = None) -> bytes:
    """Return the SHA-256 a site binds for ``config``.

    ``image_size`` is the size the site actually trains at, where the run leaves it to the site
    (a deployed site then uses its export's size): it is bound too, so two sites of one run never
    train at different sizes.

    Raises:
        ValueError: if a number is NaN or infinite.
        ModelError: if the initial weights cannot be read, or a pretrained set is not cached.
    """
    if image_size is not None:
        config = replace(config, data=replace(config.data, image_size=image_size))
    return hashlib.sha256(_LABEL + canonical_run_config(config)).digest()
