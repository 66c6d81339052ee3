"""Flower's SecAgg+ (the pinned release) on the same inputs, driven through its own functions.

We call the site-side stage functions of ``flwr.client.mod.secure_aggregation.secaggplus_mod``
(``_setup``, ``_share_keys``, ``_collect_masked_vectors``, ``_unmask``) exactly as
``secaggplus_mod`` does, and replay the coordinator side of
``flwr.server.workflow.secure_aggregation.SecAggPlusWorkflow`` (neighbour ring, forwarding,
summing, share combination, mask removal, dequantisation) with Flower's own helpers. What is left
out is only Flower's transport (Message objects, the grid): neither side's numbers include a
network, so the comparison is compute against compute.
"""

from __future__ import annotations

import importlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clinfl.secagg.stages import Stage, stage_name

STAGES: tuple[str, ...] = tuple(stage_name(stage) for stage in Stage)
"""The protocol's stages as timing keys, in order, from clinfl's stage table. Flower's stages are
timed under the names of clinfl's stages that do the same work (it has no graph or consistency
stage)."""
ADVERTISE, GRAPH, SHARE, MASKED_INPUT, CONSISTENCY, UNMASK = STAGES


@dataclass
class StageTimes:
    """Per-stage seconds: the slowest site, the sum over sites, and the coordinator."""

    site_max: dict[str, float] = field(default_factory=dict)
    site_total: dict[str, float] = field(default_factory=dict)
    coordinator: dict[str, float] = field(default_factory=dict)
    bytes_per_site: dict[str, int] = field(default_factory=dict)

    def add_site(self, stage: str, seconds: float) -> None:
        """Record one site's time for ``stage``."""
        self.site_max[stage] = max(self.site_max.get(stage, 0.0), seconds)
        self.site_total[stage] = self.site_total.get(stage, 0.0) + seconds


def flower_version() -> str | None:
    """Return the installed Flower version, or None when Flower is absent."""
    try:
        import flwr
    except ImportError:
        return None
    return str(flwr.__version__)


def run_flower_secaggplus(
    updates: list[np.ndarray],
    weights: list[int],
    *,
    num_shares: int,
    threshold: int,
) -> tuple[StageTimes, np.ndarray]:
    """Run one SecAgg+ round of Flower on ``updates``; return timings and the aggregate."""
    client = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    from flwr.common import ConfigRecord, bytes_to_ndarray, ndarrays_to_parameters
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_extract,
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize
    from flwr.common.secure_aggregation.secaggplus_constants import Key
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    times = StageTimes()
    n = len(updates)
    clipping_range, quantization_range, mod_range = 8.0, 4194304, 4294967296
    max_weight = float(max(weights))
    node_ids = list(range(1, n + 1))
    states: dict[int, Any] = {}
    setup = {
        Key.SAMPLE_NUMBER: n,
        Key.SHARE_NUMBER: num_shares,
        Key.THRESHOLD: threshold,
        Key.CLIPPING_RANGE: clipping_range,
        Key.TARGET_RANGE: quantization_range,
        Key.MOD_RANGE: mod_range,
        Key.MAX_WEIGHT: max_weight,
    }
    clock = time.perf_counter()
    order = node_ids[:]
    random.Random(0).shuffle(order)
    half = num_shares >> 1
    neighbours = {
        nid: {order[(i + k) % n] for k in range(-half, half + 1)} for i, nid in enumerate(order)
    }
    times.coordinator[ADVERTISE] = time.perf_counter() - clock
    public: dict[int, tuple[bytes, bytes]] = {}
    for nid in node_ids:
        started = time.perf_counter()
        state = client.SecAggPlusState()
        state.nid = nid
        result = client._setup(state, ConfigRecord(dict(setup)))
        states[nid] = state
        public[nid] = (result[Key.PUBLIC_KEY_1], result[Key.PUBLIC_KEY_2])
        times.add_site(ADVERTISE, time.perf_counter() - started)
    times.bytes_per_site[ADVERTISE] = len(public[1][0]) + len(public[1][1])
    forwarded: dict[int, list[tuple[int, bytes]]] = {nid: [] for nid in node_ids}
    share_bytes = []
    for nid in node_ids:
        started = time.perf_counter()
        keys = ConfigRecord({str(m): list(public[m]) for m in neighbours[nid]})
        result = client._share_keys(states[nid], keys)
        times.add_site(SHARE, time.perf_counter() - started)
        share_bytes.append(sum(len(c) for c in result[Key.CIPHERTEXT_LIST]))
        for dst, ciphertext in zip(
            result[Key.DESTINATION_LIST], result[Key.CIPHERTEXT_LIST], strict=True
        ):
            forwarded[dst].append((nid, ciphertext))
    times.bytes_per_site[SHARE] = max(share_bytes)
    masked_total = None
    summing = 0.0
    for nid, update, weight in zip(node_ids, updates, weights, strict=True):
        started = time.perf_counter()
        configs = ConfigRecord(
            {
                Key.SOURCE_LIST: [s for s, _ in forwarded[nid]],
                Key.CIPHERTEXT_LIST: [c for _, c in forwarded[nid]],
            }
        )
        result = client._collect_masked_vectors(
            states[nid], configs, weight, ndarrays_to_parameters([update])
        )
        times.add_site(MASKED_INPUT, time.perf_counter() - started)
        payload = result[Key.MASKED_PARAMETERS]
        times.bytes_per_site[MASKED_INPUT] = sum(len(b) for b in payload)
        started = time.perf_counter()
        vector = [bytes_to_ndarray(b) for b in payload]
        masked_total = vector if masked_total is None else parameters_addition(masked_total, vector)
        summing += time.perf_counter() - started
    assert masked_total is not None
    started = time.perf_counter()
    masked_total = parameters_mod(masked_total, mod_range)
    times.coordinator[MASKED_INPUT] = summing + time.perf_counter() - started
    collected: dict[int, list[bytes]] = {nid: [] for nid in node_ids}
    for nid in node_ids:
        started = time.perf_counter()
        result = client._unmask(
            states[nid],
            ConfigRecord(
                {Key.ACTIVE_NODE_ID_LIST: sorted(neighbours[nid]), Key.DEAD_NODE_ID_LIST: []}
            ),
        )
        times.add_site(UNMASK, time.perf_counter() - started)
        times.bytes_per_site[UNMASK] = sum(len(s) for s in result[Key.SHARE_LIST])
        for owner, share in zip(result[Key.NODE_ID_LIST], result[Key.SHARE_LIST], strict=True):
            collected[owner].append(share)
    started = time.perf_counter()
    for shares in collected.values():
        seed = combine_shares(shares)
        mask = pseudo_rand_gen(seed, mod_range, get_parameters_shape(masked_total))
        masked_total = parameters_subtraction(masked_total, mask)
    recon = parameters_mod(masked_total, mod_range)
    q_total_ratio, recon = factor_extract(recon)
    aggregate = dequantize(recon, clipping_range, quantization_range)
    aggregate[0] += -(n - 1) * clipping_range
    aggregate[0] *= quantization_range / q_total_ratio
    times.coordinator[UNMASK] = time.perf_counter() - started
    return times, aggregate[0]
