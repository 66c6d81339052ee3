"""A site's local training with DP-SGD (Opacus): Poisson sampling, per-sample clipping, noise.

One privacy engine per site and federation, built once: its accountant counts this process's
steps (Opacus' step hook) after the ledger's history, so a restarted site continues the same
accounting. Every round reserves its privacy spend in the ledger before the first step and is
refused, with the refusal recorded, if it would pass the budget. A site whose noise is
calibrated to ``target_epsilon_per_round`` also refuses, before any step, a round with more
steps than it calibrated for.

A round takes ``local_epochs`` epochs of Poisson-sampled batches, or, with ``local_steps``,
exactly that many Poisson-sampled batches at the same sampling rate (about batch size / N), and
reserves exactly those steps in the ledger. Each round's sampling draws fresh randomness from the
injected source (``os.urandom`` unless the in-process simulation passes a seeded one).

With augmentation multiplicity K > 1 (:mod:`site_agent.augmentation`) each Poisson batch of B
samples is trained as B x K translated views in one forward pass, and each sample's per-sample
gradient is the mean of its views' gradients before Opacus clips it: one clipped contribution
per sample, so the ledger charges exactly what K = 1 charges. This needs per-sample gradients
(hooks, ew, functorch); the ghost-norm modes only ever see norms and are refused.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clinfl.algorithms import Algorithm, ModelSpec
from clinfl.algorithms.base import SiteMemory
from clinfl.data.imageset import ImageSet
from clinfl.errors import BudgetExhausted, ConfigError, ModelError, PolicyViolation
from clinfl.federation.messages import RoundSettings
from clinfl.model.networks import LearnableRows
from clinfl.privacy.accounting import epsilon_of
from clinfl.privacy.bookkeeping import BookKeeping, enable_bookkeeping
from clinfl.privacy.ghost_norms import enable_mixed_ghost
from clinfl.privacy.noise import use_secure_noise
from clinfl.privacy.plan import BudgetSpentError, round_charge
from clinfl.privacy.settings import (
    BOOKKEEPING_MODE,
    GHOST_CLIPPING_MODES,
    DPSettings,
    has_per_sample_gradients,
    opacus_grad_sample_mode,
)
from clinfl.typing import StateDict
from site_agent.augmentation import average_view_gradients, view_batch
from site_agent.ledger import Reservation, SiteLedger
from site_agent.training import (
    RandomBytes,
    SiteTrainer,
    StepCallback,
    fresh_generator,
    round_steps,
    training_tensors,
)


def dp_incompatibilities(model: nn.Module) -> list[str]:
    """Return every reason ``model`` cannot be trained with Opacus (empty when it can)."""
    from opacus.validators import ModuleValidator

    problems = [str(error) for error in ModuleValidator.validate(model, strict=False)]
    problems += [
        f"{name}: a learnable matrix with no batch input (the learnable-query or "
        "learnable-classifier ablation) has no per-sample gradient"
        for name, module in model.named_modules()
        if isinstance(module, LearnableRows)
    ]
    return problems


def check_multiplicity_mode(augment_multiplicity: int, grad_sample_mode: str) -> None:
    """Refuse augmentation multiplicity with a mode that has no per-sample gradients.

    Raises:
        ConfigError: for ``augment_multiplicity`` > 1 with ghost, mixed-ghost or bookkeeping.
    """
    if augment_multiplicity > 1 and not has_per_sample_gradients(grad_sample_mode):
        raise ConfigError(
            f"augment_multiplicity {augment_multiplicity} needs per-sample gradients, which "
            f"grad_sample_mode {grad_sample_mode} never forms (it clips by ghost norms)",
            remedy="use --dp-mode auto or hooks (or ew, functorch), or --augment-multiplicity 1",
        )


class DPSteps:
    """DP-SGD steps (Opacus): Poisson sampling, per-sample clipping, noise; CPU only.

    The batch size, and with it the sampling rate, is fixed when the site is built; each round
    reserves its privacy spend in the ledger before its first step. With ``local_steps`` a round
    is exactly that many Poisson-sampled steps (whatever the site's size), and a per-round
    epsilon target is calibrated for that many. ``augment_multiplicity`` K > 1 trains each
    sample as K translated views whose gradients are averaged before clipping.
    """

    divergence_remedy = "lower --lr or the clipping norm"

    def __init__(
        self,
        site_id: str,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        algorithm: Algorithm,
        *,
        dp: DPSettings,
        ledger: SiteLedger,
        run_id: str,
        batch_size: int,
        local_epochs: int,
        weight_decay: float,
        local_steps: int | None = None,
        random_bytes: RandomBytes = os.urandom,
        augment_multiplicity: int = 1,
    ) -> None:
        """Build the privacy engine once (its accountant counts the steps after the ledger's).

        Raises:
            ConfigError: for ``augment_multiplicity`` > 1 with a ghost-norm mode (ghost,
                mixed-ghost, bookkeeping), which has no per-sample gradients to average.
        """
        check_multiplicity_mode(augment_multiplicity, dp.grad_sample_mode)
        self._views = augment_multiplicity
        self._augment: torch.Generator | None = None  # drawn in begin_round when views > 1
        self._site_id = site_id
        self._algorithm = algorithm
        self._dp = dp
        self._ledger = ledger
        self._run_id = run_id
        self._reservation: Reservation | None = None
        self._steps = 0
        self._random_bytes = random_bytes
        # the Poisson sampler's generator: re-seeded from random_bytes at every round
        self._generator = torch.Generator()
        loader = DataLoader(
            TensorDataset(inputs, targets), batch_size=batch_size, generator=self._generator
        )
        # What a round charges (noise, the sampling rate 1 / len(loader), steps), derived as
        # `clinfl policy plan` and the audit forecast derive it. The batch size, and with it the
        # sampling rate, is fixed here for the site's life: a round's settings.batch_size does
        # not change the loader, so it cannot change the rate.
        try:
            charge = round_charge(
                dp,
                samples=int(inputs.shape[0]),
                batch_size=batch_size,
                local_epochs=local_epochs,
                local_steps=local_steps,
                spent=ledger.history(),  # dp.planned_rounds: the budget left after these
            )
        except BudgetSpentError as spent:
            raise BudgetExhausted(
                f"{site_id} cannot plan its rounds: {spent}",
                remedy="the site has spent its privacy budget for this federation",
            ) from None
        self.sample_rate = charge.sample_rate
        self.noise_multiplier = charge.noise_multiplier
        # (per-round epsilon target, what the round was, steps) the noise was calibrated for
        self._calibration: tuple[float, str, int] | None = None
        if charge.calibrated_for is not None:
            unit = f"{local_steps} local steps" if local_steps else f"{local_epochs} local epochs"
            self._calibration = (charge.calibrated_for, unit, charge.steps)
        self._build_engine(model, loader, weight_decay)
        self._steps_per_epoch = charge.steps_per_epoch
        if len(self._loader) != charge.steps_per_epoch:  # the ledger must charge what trains
            raise ModelError(
                f"{site_id}: Opacus' Poisson sampler takes {len(self._loader)} batches per epoch "
                f"where clinfl charges {charge.steps_per_epoch}",
                remedy="use the Opacus version clinfl pins",
            )

    def _build_engine(self, model: nn.Module, loader: DataLoader[Any], weight_decay: float) -> None:
        from opacus import PrivacyEngine

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")  # see noise.py
            self.engine = PrivacyEngine(accountant=self._dp.accountant)
        # The engine's own accountant starts empty and counts this process's steps through
        # Opacus' step hook; what the site spent before it was built is the ledger's.
        self._spent_before = tuple(self._ledger.history())
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=weight_decay)
        extra: dict[str, Any] = {}
        ghost = self._dp.grad_sample_mode in GHOST_CLIPPING_MODES
        self._bookkeeping: BookKeeping | None = None
        if ghost or self._dp.grad_sample_mode == BOOKKEEPING_MODE:
            extra["criterion"] = _PerSampleCriterion(self._algorithm)
        if self._dp.grad_sample_mode == "mixed-ghost":
            enable_mixed_ghost(model)  # ghost norms for the convolutions where they cost less
        if self._dp.grad_sample_mode == BOOKKEEPING_MODE:
            # the same norms, one backward pass; refuses a layer it cannot form the sum for
            self._bookkeeping = enable_bookkeeping(model)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            made = self.engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=self._dp.max_grad_norm,
                poisson_sampling=True,
                grad_sample_mode=opacus_grad_sample_mode(self._dp.grad_sample_mode),
                **extra,
            )
        self._wrapped, self.optimizer = made[0], made[1]
        self._criterion = made[2] if ghost else None
        self._loader = made[-1]
        if self._dp.secure_rng:
            use_secure_noise(self.optimizer)

    @property
    def model(self) -> nn.Module:
        """The model without Opacus' wrapper (its state dict has the usual names)."""
        inner: nn.Module = self._wrapped._module
        return inner

    @property
    def device(self) -> torch.device:
        """DP-SGD runs on the CPU only."""
        return torch.device("cpu")

    def begin_round(self, settings: RoundSettings) -> int:
        """Check the round against the calibration, reserve its privacy spend; return its steps.

        The steps are ``local_steps`` when the round sets them, else epochs x batches per
        epoch; the sampler is re-seeded with fresh randomness for the round.

        Raises:
            PolicyViolation: if the round has more steps than the per-round epsilon target was
                calibrated for (recorded as a refusal; nothing trains).
            BudgetExhausted: if the round would pass the site's epsilon budget (nothing trains).
        """
        steps = round_steps(settings, self._steps_per_epoch)
        self._check_round_target(settings, steps)
        try:
            self._reservation = self._reserve(settings, steps)
        except BudgetExhausted as refusal:
            raise BudgetExhausted(
                f"{self._site_id} {refusal.message}", remedy=refusal.remedy
            ) from None
        self.optimizer.state.clear()  # fresh moments every round, as in plain training
        self.recover()  # and no per-sample state left over from a step that failed
        for group in self.optimizer.param_groups:
            group["lr"] = settings.lr
        self._generator.manual_seed(int.from_bytes(self._random_bytes(8), "big"))
        if self._views > 1:  # drawn after the sampler's, so K = 1 draws exactly what it did
            self._augment = fresh_generator(self._random_bytes)
        self._wrapped.train()
        return steps

    def recover(self) -> None:
        """Drop every per-sample record a step left (a forward without its backward, say).

        Opacus counts each forward pass on a parameter until its backward pass; a step that
        raised in between would otherwise make every later step of this site fail.
        """
        for module in self._wrapped.modules():
            if hasattr(module, "activations"):
                module.activations = []
        for param in self.model.parameters():
            if hasattr(param, "_forward_counter"):
                param._forward_counter = 0
        if self._bookkeeping is not None:
            self._bookkeeping.reset()
        self.optimizer.zero_grad(set_to_none=True)

    def abort_round(self) -> None:
        """No step was taken: release the round's reservation."""
        if self._reservation is not None:
            self._ledger.release(self._reservation.row_id)

    def batches(self, settings: RoundSettings) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of Poisson-sampled batches (the sizes vary; a batch may be empty).

        In fixed-step mode, exactly ``settings.local_steps`` such batches, as many as
        :meth:`begin_round` reserved: the sampler's epochs are read one after another.
        """
        loader: Iterable[tuple[torch.Tensor, torch.Tensor]] = self._loader
        if settings.local_steps is None:
            return loader
        epochs = itertools.chain.from_iterable(itertools.repeat(loader))
        return itertools.islice(epochs, settings.local_steps)

    def loss(
        self, images: torch.Tensor, targets: torch.Tensor, reference: StateDict, memory: SiteMemory
    ) -> torch.Tensor:
        """The batch's mean per-sample loss (Opacus' loss wrapper under ghost clipping).

        Under book-keeping it is the plain mean, which :meth:`step` backpropagates once. With
        multiplicity it is the mean over the batch's translated views.
        """
        self.optimizer.zero_grad(set_to_none=True)
        if self._bookkeeping is not None:
            self._bookkeeping.reset()
        if self._augment is not None:
            images, targets = view_batch(images, targets, self._views, self._augment)
        output = self._wrapped(images)
        if self._criterion is not None:  # ghost clipping: Opacus' loss wrapper
            loss: torch.Tensor = self._criterion(output, targets)
            return loss
        per_sample = self._algorithm.per_sample_loss(output, targets)
        # an empty Poisson batch: sum() is 0 with a graph; mean() would be NaN
        return per_sample.mean() if per_sample.numel() else per_sample.sum()

    def step(self, loss: torch.Tensor, reference: StateDict, memory: SiteMemory, lr: float) -> None:
        """Clip, noise and step; then the algorithm's data-free regulariser as its own step."""
        with warnings.catch_warnings():
            # ghost clipping backpropagates to module outputs only, which torch reports
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            if self._bookkeeping is not None:  # one pass; .grad is then the clipped sum
                self._bookkeeping.backward(loss, self._wrapped)
            else:
                loss.backward()  # type: ignore[no-untyped-call]
        if self._views > 1:  # one gradient per sample: the mean of its views', before clipping
            average_view_gradients(self.model.parameters(), self._views)
        self.optimizer.step()
        self._proximal_step(reference, memory, lr)

    def _proximal_step(self, reference: StateDict, memory: SiteMemory, lr: float) -> None:
        """Apply the algorithm's data-free regulariser (FedProx) as a separate gradient step.

        Opacus replaces parameter gradients by the clipped, noised per-sample sum, so a
        parameter-only term must be applied outside it. It reads no data, so it costs no privacy.
        """
        penalty = self._algorithm.regulariser(self.model, reference, memory)
        if penalty is None:
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(penalty, params, allow_unused=True)
        with torch.no_grad():
            for param, grad in zip(params, grads, strict=True):
                if grad is not None:
                    param.add_(grad, alpha=-lr)

    def end_round(self, settings: RoundSettings) -> None:
        """Drop the per-sample gradients (batch x parameters) until the next round."""
        self.optimizer.zero_grad(set_to_none=True)
        if self._bookkeeping is not None:
            self._bookkeeping.reset()  # and anything book-keeping still holds

    def data_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """None: reading the data outside DP-SGD would not be covered by the guarantee."""
        return iter(())

    def _check_round_target(self, settings: RoundSettings, steps: int) -> None:
        """Refuse a round that would cost more than the per-round target the noise was set for.

        Raises:
            PolicyViolation: with the round's epsilon, the target and the steps; recorded first.
        """
        if self._calibration is None:
            return
        target, calibrated, calibrated_steps = self._calibration
        if steps <= calibrated_steps:  # a round's epsilon grows with its steps
            return
        epsilon = epsilon_of(
            [(self.noise_multiplier, self.sample_rate, steps)],
            delta=self._dp.delta,
            accountant=self._dp.accountant,
        )
        asked = (
            f"{settings.local_epochs} local epochs ({steps} steps)"
            if settings.local_steps is None
            else f"{steps} local steps"
        )
        reason = (
            f"round {settings.round}: {asked} would "
            f"cost epsilon {epsilon:.3f} at delta {self._dp.delta:g}, past the per-round target "
            f"{target:g} its noise multiplier {self.noise_multiplier:.4f} was calibrated for "
            f"({calibrated}, {calibrated_steps} steps)"
        )
        self._ledger.record_refusal(run_id=self._run_id, round_number=settings.round, reason=reason)
        raise PolicyViolation(
            f"{self._site_id} refuses {reason}",
            remedy=f"ask for at most {calibrated} per round (the run's configured value when the "
            "site joined)",
        )

    def _reserve(self, settings: RoundSettings, steps: int) -> Reservation:
        return self._ledger.reserve(
            run_id=self._run_id,
            round_number=settings.round,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=steps,
            budget=self._dp.epsilon_budget,
            delta=self._dp.delta,
            accountant=self._dp.accountant,
            grad_sample_mode=self._dp.grad_sample_mode,
        )

    def update_sent(self, *, secagg: bool) -> None:
        """The round's update left the site: its reservation becomes spent."""
        if self._reservation is not None:
            self._ledger.spend(self._reservation.row_id, secagg=secagg)

    def aggregate_size(self, sites: int) -> None:
        """Record how many sites the round's sum covers."""
        if self._reservation is not None:
            self._ledger.record_sum(self._reservation.row_id, sites_in_sum=sites)

    def epsilon(self) -> float | None:
        """Return the epsilon of the steps Opacus' own accountant counted for this site so far.

        Charged as the ledger charges (:func:`~clinfl.privacy.accounting.epsilon_of`: by RDP
        where PRV cannot compute it), over the ledger's history when the engine was built
        followed by the steps the engine's accountant counted since (not the ledger's rounds).
        """
        history = [*self._spent_before, *self.engine.accountant.history]
        return epsilon_of(history, delta=self._dp.delta, accountant=self._dp.accountant)


def private_trainer(
    site_id: str,
    data: ImageSet,
    algorithm: Algorithm,
    spec: ModelSpec,
    *,
    dp: DPSettings,
    ledger: SiteLedger,
    run_id: str,
    batch_size: int,
    local_epochs: int,
    weight_decay: float,
    local_steps: int | None = None,
    random_bytes: RandomBytes = os.urandom,
    on_step: StepCallback | None = None,
    augment_multiplicity: int = 1,
    ema_decay: float | None = None,
) -> SiteTrainer:
    """Return a site's DP-SGD trainer: the model and the privacy engine, built once.

    ``local_steps`` (the run's, None by epochs) sets the steps a per-round epsilon target is
    calibrated for. Each round samples with fresh randomness from ``random_bytes``: the operating
    system's cryptographic source unless the in-process simulation passes
    :func:`~site_agent.training.simulation_random_bytes`. ``augment_multiplicity`` trains each
    sample as that many translated views, averaged before clipping (1: none); ``ema_decay``
    sends the steps' moving average (:class:`~site_agent.training.SiteTrainer`). Neither
    changes what the ledger charges.

    Raises:
        FederationError: if the site has no samples.
        ModelError: if the model has layers Opacus cannot handle (all listed).
        ConfigError: for ``augment_multiplicity`` > 1 with a ghost-norm mode.
    """
    inputs, targets = training_tensors(site_id, data)
    model = algorithm.build_model(spec)
    problems = dp_incompatibilities(model)
    if algorithm.dp_incompatibility is not None:
        problems.append(f"{algorithm.name}: {algorithm.dp_incompatibility}")
    if problems:
        raise ModelError(
            f"{site_id}: the model cannot be trained with DP-SGD: " + "; ".join(problems),
            remedy="use FedNCAlign-ML (any option but the learnable ones), FedAvg or FedProx, "
            "or a policy without DP",
        )
    steps = DPSteps(
        site_id,
        model,
        inputs,
        targets,
        algorithm,
        dp=dp,
        ledger=ledger,
        run_id=run_id,
        batch_size=batch_size,
        local_epochs=local_epochs,
        weight_decay=weight_decay,
        local_steps=local_steps,
        random_bytes=random_bytes,
        augment_multiplicity=augment_multiplicity,
    )
    return SiteTrainer(
        site_id,
        algorithm,
        steps,
        num_samples=int(inputs.shape[0]),
        on_step=on_step,
        ema_decay=ema_decay,
    )


class _PerSampleCriterion(nn.Module):
    """The algorithm's per-sample loss as a criterion, for Opacus' ghost clipping."""

    def __init__(self, algorithm: Algorithm) -> None:
        super().__init__()
        self.algorithm = algorithm
        self.reduction = "mean"

    def forward(self, output: Any, targets: torch.Tensor) -> torch.Tensor:
        """Return the loss of each sample: ``[B]``."""
        return self.algorithm.per_sample_loss(output, targets)
