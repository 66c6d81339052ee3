"""A site in a deployed federation: answers the coordinator's calls, checking policy on each.

Every message is checked before anything else: its run's application bundle must be clinfl's
own (:func:`~clinfl.transport.flower_app.check_bundle`), the call must be one clinfl has, and its
body must decode to that call's type. The first call of a run (``join``) carries the run's
configuration; the site checks it against its policy and declines, with the reason, if the run
asks for less protection than the policy demands. Training, secure aggregation and the budget
are then enforced by the same :class:`~site_agent.agent.SiteAgent` as in the in-process
federation. Refusals go to the ledger's audit log and back to the coordinator.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from clinfl import __version__
from clinfl.algorithms import ModelSpec, available_algorithms, create_algorithm
from clinfl.audit.render import FORMATS, render_site
from clinfl.config import validate_run_config
from clinfl.config_file import run_config_from_mapping
from clinfl.data.labels import LABEL_SPACES
from clinfl.errors import ClinflError, PolicyViolation, ProtocolViolation
from clinfl.policy import PrivacyRequest, SitePolicy, apply_request
from clinfl.privacy.settings import default_grad_sample_mode
from clinfl.transport.calls import (
    JoinReply,
    JoinRequest,
    TrainRequest,
    check_call,
    encode_refusal,
    encode_reply,
)
from clinfl.transport.flower_app import check_bundle
from clinfl.transport.wire import decode
from site_agent.agent import SiteAgent, SiteIdentity
from site_agent.assembly import assemble_site
from site_agent.audit_report import build_site_report
from site_agent.evaluation import HeldOutEvaluator
from site_agent.ingest.pipeline import IngestOptions
from site_agent.ingest.split import ingest_and_split
from site_agent.ledger import SiteLedger

log = logging.getLogger("clinfl.site")
INGEST_DIR = "ingest"
END_OF_ROUND = frozenset({"secagg_reveal", "upload_plain"})


@dataclass(frozen=True)
class SiteData:
    """Where the site's export is and how to read it (the run sets the image size)."""

    export: Path
    labels: Path | None
    options: IngestOptions

    @property
    def label_space(self) -> str:
        """The label space the site's labels are in."""
        return self.options.label_space


@dataclass
class _Joined:
    agent: SiteAgent
    evaluator: HeldOutEvaluator


class DeployedSite:
    """One hospital's end of a deployed federation (one object for the life of the process)."""

    def __init__(
        self,
        identity: SiteIdentity,
        *,
        policy: SitePolicy,
        directory: Mapping[str, Ed25519PublicKey],
        data: SiteData,
        state_dir: Path,
        threads: int | None = None,
    ) -> None:
        """Serve as ``identity`` under ``policy``; ``threads`` caps torch's CPU threads."""
        self._threads = threads
        self._identity = identity
        self._policy = policy
        self._directory = dict(directory)
        self._data = data
        self._state_dir = state_dir
        self._runs: dict[int, _Joined] = {}
        self._checked_bundles: set[str] = set()

    @property
    def site_id(self) -> str:
        """The site's name in the federation."""
        return self._identity.site_id

    def handle(
        self, *, flower_run: int, bundle: bytes, bundle_hash: str, call: str, body: bytes
    ) -> bytes:
        """Answer one call; every failure becomes a refusal reply, never an exception.

        Raises:
            Nothing for a bad message; only programming errors propagate.
        """
        audited = False  # the agent writes its own refusals to the ledger
        try:
            self._check_bundle(bundle, bundle_hash)
            argument_type, _ = check_call(call)
            argument = decode(body, argument_type)
            audited = call not in ("join", "evaluate")
            result = self._dispatch(flower_run, call, argument)
        except ClinflError as error:
            log.warning("%s refused %s: %s", self.site_id, call[:40], error.message)
            if not audited:
                self._audit(error.message)
            return encode_refusal(error, site_id=self.site_id)
        if call in END_OF_ROUND:
            self.write_audit_report()
        return encode_reply(result)

    def _check_bundle(self, bundle: bytes, bundle_hash: str) -> None:
        if bundle_hash not in self._checked_bundles:
            check_bundle(bundle, declared_hash=bundle_hash)
            self._checked_bundles.add(bundle_hash)

    def _audit(self, reason: str) -> None:
        try:
            with closing(SiteLedger(self._state_dir)) as ledger:
                ledger.record_refusal(run_id="deployment", round_number=0, reason=reason)
        except ClinflError:
            log.exception("cannot write the refusal to the ledger")

    def _dispatch(self, flower_run: int, call: str, argument: Any) -> Any:
        if call == "join":
            return self._join(flower_run, argument)
        joined = self._runs.get(flower_run)
        if joined is None:
            raise ProtocolViolation(
                f"{self.site_id} has not joined this run",
                remedy="the coordinator must send `join` first",
            )
        agent = joined.agent
        if call == "train_round":
            assert isinstance(argument, TrainRequest)
            return agent.train_round(argument.global_state, argument.settings)
        if call == "upload_plain":
            return agent.upload_plain()
        if call == "evaluate":
            if "auc" not in self._policy.reporting.metrics:
                raise PolicyViolation(
                    f"{self.site_id}'s policy keeps evaluation metrics at the site",
                    remedy="choose another evaluation site, or add 'auc' to reporting.metrics",
                )
            return joined.evaluator.evaluate(argument)
        method = getattr(agent, call)
        return method(argument)

    def _join(self, flower_run: int, request: JoinRequest) -> JoinReply:
        site_data = self._data
        config = run_config_from_mapping(request.run_config, base=self._state_dir)
        local = replace(config.data, dataset="dicom", images=site_data.export)
        config = validate_run_config(
            replace(config, data=local), known_methods=available_algorithms()
        )
        if config.data.label_space != site_data.label_space:
            raise PolicyViolation(
                f"{self.site_id} labels its images in the {site_data.label_space!r} space; the "
                f"run trains on {config.data.label_space!r}",
                remedy="start the site with the run's --label-space",
            )
        asked = PrivacyRequest(secagg=config.secagg.enabled, min_sites=config.secagg.min_sites)
        try:
            policy = apply_request(self._policy, asked)
        except PolicyViolation as refusal:
            raise PolicyViolation(
                f"{self.site_id} declines the run: {refusal.message}", remedy=refusal.remedy
            ) from None
        size = config.data.image_size or site_data.options.image_size
        if self._threads is not None:
            torch.set_num_threads(self._threads)
        split = ingest_and_split(
            site_data.export,
            state_dir=self._state_dir / INGEST_DIR,
            options=replace(site_data.options, image_size=size),
            labels=site_data.labels,
            val_fraction=config.data.val_fraction,
            seed=config.federation.seed,
        )
        algorithm = create_algorithm(config.method)
        spec = ModelSpec(
            num_classes=len(LABEL_SPACES[site_data.label_space]),
            image_size=size,
            federation_seed=config.federation.federation_seed,
            init_seed=config.federation.seed,
        )
        mode = config.privacy.grad_sample_mode
        assembled = assemble_site(
            self._identity,
            split.train,
            policy,
            algorithm,
            spec,
            federation=config.federation,
            directory=self._directory,
            state_dir=self._state_dir,
            run_id=request.run_id,
            grad_sample_mode=default_grad_sample_mode(size) if mode == "auto" else mode,
            shuffle_seed=config.federation.seed,
        )
        evaluator = HeldOutEvaluator(split.val, split.test, algorithm, spec)
        self._runs = {flower_run: _Joined(assembled.agent, evaluator)}
        log.info(
            "%s joined run %s (%d training images)", self.site_id, request.run_id, len(split.train)
        )
        initial = None
        if request.send_initial_state:
            initial = algorithm.initial_state(algorithm.build_model(spec))
        return JoinReply(self.site_id, __version__, initial)

    def write_audit_report(self) -> None:
        """Write the site's audit report (JSON, Markdown, HTML) into its state folder."""
        if not (self._state_dir / "ledger.sqlite").is_file():
            return
        report = build_site_report(self._state_dir)
        for fmt in FORMATS:
            path = self._state_dir / f"audit_report.{fmt}"
            path.write_text(render_site(report, fmt))
