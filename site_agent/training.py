"""A site's local training for one round: from the global weights to a weighted update.

One trainer (:class:`SiteTrainer`) runs every round; how its steps are taken, plainly or with
DP-SGD, is its strategy's (:class:`PlainSteps`, :class:`~site_agent.private_training.DPSteps`).

A round trains ``local_epochs`` epochs, or, when the round sets ``local_steps``, exactly that
many steps whatever the site's size (SECAGG.md, "Version 3", R7'; :func:`round_steps`).

Every training call draws fresh randomness for its shuffling and sampling from an injected
:data:`RandomBytes` source (SECAGG.md, "Version 3", R10), by default the operating system's
cryptographic source (``os.urandom``), so two calls on the same global model do not give the
same update. Only the in-process simulation passes a seeded source
(:func:`simulation_random_bytes`), to make its runs reproducible. Nothing here seeds a global
random number generator.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from clinfl.algorithms import Algorithm, ModelSpec
from clinfl.algorithms.base import RoundContext, SiteMemory, is_auxiliary
from clinfl.data.batching import shuffled_batches, to_input_tensor, wrapped_batches
from clinfl.data.imageset import ImageSet
from clinfl.errors import FederationError, LocalTrainingFailed
from clinfl.federation.messages import RoundSettings
from clinfl.guards import present
from clinfl.typing import StateDict
from site_agent.augmentation import view_batch
from site_agent.model_state import load_travelling_state
from site_agent.weight_average import WeightAverage

StepCallback = Callable[[str, int, int], None]
RandomBytes = Callable[[int], bytes]
"""A source of random bytes: ``RandomBytes(n)`` returns ``n`` bytes. ``os.urandom`` by default."""


def simulation_random_bytes(seed: int) -> RandomBytes:
    """Return a reproducible, NOT cryptographic, byte source seeded with ``seed``.

    For the in-process simulation only (benchmarks and tests compare its runs): a site fed by it
    shuffles and samples the same way in every run with the same seed, so a coordinator that
    knew the seed could replay them. A deployed site never uses it: it draws from ``os.urandom``.
    """
    return random.Random(seed).randbytes


def fresh_generator(random_bytes: RandomBytes) -> torch.Generator:
    """Return a torch generator seeded with 64 fresh bits from ``random_bytes`` (one per call)."""
    return torch.Generator().manual_seed(int.from_bytes(random_bytes(8), "big"))


def round_steps(settings: RoundSettings, steps_per_epoch: int) -> int:
    """Return a round's optimiser steps: ``local_steps`` when set, else epochs x steps/epoch."""
    if settings.local_steps is not None:
        return settings.local_steps
    return settings.local_epochs * steps_per_epoch


def round_passes(settings: RoundSettings) -> int:
    """Return how many times a round iterates its strategy's batches.

    ``local_epochs`` by epochs; once in fixed-step mode, where one pass is the round's
    ``local_steps`` batches.
    """
    return 1 if settings.local_steps is not None else settings.local_epochs


@dataclass(frozen=True)
class LocalUpdate:
    """A round's result, private to the site: ``w_local - w_global`` and how it was obtained."""

    delta: StateDict
    num_samples: int
    mean_loss: float
    steps: int


def site_update(reference: StateDict, local: StateDict, auxiliary: StateDict) -> StateDict:
    """Return the update over every global-state entry.

    Model tensors change by ``local - reference``; auxiliary entries as the algorithm reported
    them (zero when it did not); a model tensor the algorithm reported (SphereFed's calibration
    statistics) as reported.
    """
    delta: StateDict = {}
    for name, value in reference.items():
        if name in auxiliary:
            delta[name] = auxiliary[name].to(value.dtype)
        elif is_auxiliary(name):
            delta[name] = torch.zeros_like(value)
        else:
            delta[name] = local[name] - value
    return delta


class TrainingStrategy(Protocol):
    """How a site takes its optimiser steps: plain (:class:`PlainSteps`) or DP-SGD.

    The DP-SGD strategy is :class:`~site_agent.private_training.DPSteps`. Everything else in a
    round (loading the global state, the epochs, the divergence check, the loss the site reports,
    the algorithm's state and the update) is :class:`SiteTrainer`'s, so the two cannot diverge.
    """

    divergence_remedy: str
    """What to tell the operator when the local loss diverges."""

    @property
    def model(self) -> nn.Module:
        """The model the algorithm reads and writes (without any wrapper)."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the model and the batches live."""
        ...

    def begin_round(self, settings: RoundSettings) -> int:
        """Prepare a round (DP-SGD: check and reserve its privacy cost); return its steps."""
        ...

    def abort_round(self) -> None:
        """The round ends before its first step (DP-SGD: release the reservation)."""
        ...

    def recover(self) -> None:
        """A step raised: drop whatever it left half done (gradients, per-sample state)."""
        ...

    def batches(self, settings: RoundSettings) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """Return one pass's (images, targets) batches, on :attr:`device`.

        By epochs a pass is one epoch; in fixed-step mode it is the round's
        ``settings.local_steps`` batches (:func:`round_passes`). Their order comes from the
        randomness :meth:`begin_round` drew for this call.
        """
        ...

    def loss(
        self, images: torch.Tensor, targets: torch.Tensor, reference: StateDict, memory: SiteMemory
    ) -> torch.Tensor:
        """Return the batch's mean loss, ready to backpropagate."""
        ...

    def step(self, loss: torch.Tensor, reference: StateDict, memory: SiteMemory, lr: float) -> None:
        """Backpropagate ``loss`` and take one optimiser step (with the algorithm's hooks)."""
        ...

    def end_round(self, settings: RoundSettings) -> None:
        """The round's steps are done."""
        ...

    def data_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The site's data for the algorithm's auxiliary update (none under DP-SGD).

        In order by epochs; in fixed-step mode as many fresh random full batches as the round's
        steps, so this pass does not follow the site's size either.
        """
        ...

    def update_sent(self, *, secagg: bool) -> None:
        """The round's update left the site (DP-SGD: its reservation becomes spent)."""
        ...

    def aggregate_size(self, sites: int) -> None:
        """The round's sum covers ``sites`` sites (DP-SGD: recorded in the ledger)."""
        ...

    def epsilon(self) -> float | None:
        """The epsilon spent so far (None without DP-SGD)."""
        ...


class SiteTrainer:
    """One hospital's trainer. Its data, model and optimiser state never leave it.

    Each round it loads the global travelling state, trains ``local_epochs`` epochs or
    ``local_steps`` steps (steps taken by its :class:`TrainingStrategy`) and returns
    ``w_local - w_global`` over the travelling tensors only, with the mean training loss over the
    samples it saw. Build one with :func:`plain_trainer` or
    :func:`~site_agent.private_training.private_trainer`.

    With ``ema_decay`` the round's local model is the exponential moving average of the
    trainable parameters over its steps, started at the global model
    (:class:`~site_agent.weight_average.WeightAverage`), not the last step's parameters.
    """

    def __init__(
        self,
        site_id: str,
        algorithm: Algorithm,
        strategy: TrainingStrategy,
        *,
        num_samples: int,
        on_step: StepCallback | None = None,
        ema_decay: float | None = None,
    ) -> None:
        self._site_id = site_id
        self._algorithm = algorithm
        self.strategy = strategy
        self._num_samples = num_samples
        self._on_step = on_step
        self._ema_decay = ema_decay
        self._average: WeightAverage | None = None  # the round's, with ema_decay
        self._memory: dict[str, torch.Tensor] = {}  # the algorithm's site state (SCAFFOLD's c_i)

    @property
    def site_id(self) -> str:
        """The site's identifier."""
        return self._site_id

    @property
    def num_samples(self) -> int:
        """Local training set size."""
        return self._num_samples

    @property
    def model(self) -> nn.Module:
        """The site's model (without any DP wrapper: its state dict has the usual names)."""
        return self.strategy.model

    def update_sent(self, *, secagg: bool) -> None:
        """The round's update left the site (DP-SGD: its privacy spend becomes spent)."""
        self.strategy.update_sent(secagg=secagg)

    def aggregate_size(self, sites: int) -> None:
        """Record how many sites the round's sum covers (DP-SGD only)."""
        self.strategy.aggregate_size(sites)

    def epsilon(self) -> float | None:
        """Return the epsilon spent so far (None without DP-SGD)."""
        return self.strategy.epsilon()

    def train_round(self, global_state: StateDict, settings: RoundSettings) -> LocalUpdate:
        """Train from ``global_state`` and return this site's update.

        Raises:
            PolicyViolation, BudgetExhausted: if the strategy refuses the round (DP-SGD; nothing
                trains).
            FederationError: if the global state does not fit the local model.
            LocalTrainingFailed: if the loss or the update stops being finite, or a step fails
                with a numerical error (failures that may depend on the site's data: the agent
                sends a zero update instead, R7').
        """
        strategy = self.strategy
        total_steps = strategy.begin_round(settings)
        try:
            load_travelling_state(strategy.model, global_state)
        except BaseException:
            strategy.abort_round()  # no step was taken
            raise
        reference = {
            name: value.to(strategy.device, copy=True) for name, value in global_state.items()
        }
        strategy.model.train()
        if self._ema_decay is not None:
            self._average = WeightAverage(strategy.model, self._ema_decay)
        tally = LossTally()
        # the algorithm's site state (SCAFFOLD's c_i) is worked on as a copy, committed only
        # when the round trains to a finite update, bounded (MEMORY_BOUND) and never non-finite
        memory = {k: v.clone() for k, v in self._memory.items() if bool(torch.isfinite(v).all())}
        failure = self._take_steps(settings, reference, memory, tally, total_steps)
        strategy.end_round(settings)
        if self._average is not None:  # the average is the round's local model
            self._average.apply()
            self._average = None
        delta: StateDict = {}
        try:  # the same work after a failure too: a failed round costs what a healthy one does
            auxiliary = self._algorithm.auxiliary_update(
                strategy.model,
                reference,
                memory,
                RoundContext(steps=tally.steps, lr=settings.lr, batches=strategy.data_batches),
            )
            local = self._algorithm.travelling_state(strategy.model)
            delta = {
                name: value.cpu()
                for name, value in site_update(reference, local, auxiliary).items()
            }
        except (RuntimeError, ValueError, ArithmeticError) as error:
            failure = failure or f"local training failed: {type(error).__name__}"
        broken = [name for name, value in delta.items() if not bool(torch.isfinite(value).all())]
        if failure is None and broken:
            failure = f"the update of {broken[0]} is not finite"
        if failure is not None:
            self._memory = {}  # whatever a crafted model did to it is not carried into a round
            raise LocalTrainingFailed(
                f"site {self._site_id}: {failure} in round {settings.round} (the site's "
                "algorithm state was reset)",
                remedy=strategy.divergence_remedy,
            )
        self._memory = bounded_memory(memory)
        return LocalUpdate(
            delta=delta, num_samples=self._num_samples, mean_loss=tally.mean, steps=tally.steps
        )

    def _take_steps(
        self,
        settings: RoundSettings,
        reference: StateDict,
        memory: SiteMemory,
        tally: LossTally,
        total_steps: int,
    ) -> str | None:
        """Take the round's steps; return why training failed, or None.

        After a failure (a loss that is not finite, a numerical error in a step) the remaining
        steps still run, through the same code (forward, backward, clipping and noise under
        DP-SGD, the optimiser step), on a model whose result is then thrown away: a failed
        round does the work of a healthy one, so its latency does not tell the coordinator
        that a crafted model made this site's training fail (R7').
        """
        failure: str | None = None
        taken = 0
        for _ in range(round_passes(settings)):
            for images, targets in self.strategy.batches(settings):
                taken += 1
                trouble = self._step(images, targets, reference, memory, settings, tally, failure)
                failure = failure or trouble
                if self._average is not None:
                    self._average.update()
                if self._on_step is not None:
                    self._on_step(self._site_id, taken, total_steps)
        return failure

    def _step(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        reference: StateDict,
        memory: SiteMemory,
        settings: RoundSettings,
        tally: LossTally,
        failed: str | None,
    ) -> str | None:
        strategy = self.strategy
        try:
            loss = strategy.loss(images, targets, reference, memory)
            value = float(loss.detach())
            strategy.step(loss, reference, memory, settings.lr)  # a failed round steps too
        except (RuntimeError, ValueError, ArithmeticError) as error:  # numerics the data caused
            strategy.recover()
            return f"local training failed: {type(error).__name__}"
        if not math.isfinite(value):
            return f"local loss became {value}"
        if failed is None:
            tally.add(value, int(images.shape[0]))
        return None


MEMORY_BOUND = 8.0
"""The largest magnitude an entry of an algorithm's site memory keeps from one round to the
next: SCAFFOLD's control variate travels as ``c / 16`` inside the secure-aggregation clip (0.5 by
default), so no larger value can reach the sum anyway. A crafted model could otherwise leave a
huge but finite value there that makes this site's next round fail, and not another's."""


def bounded_memory(memory: SiteMemory) -> dict[str, torch.Tensor]:
    """Return ``memory`` with every entry clamped to ``[-MEMORY_BOUND, MEMORY_BOUND]``."""
    return {name: value.clamp(-MEMORY_BOUND, MEMORY_BOUND) for name, value in memory.items()}


@dataclass
class LossTally:
    """The loss a site reports: the mean over the samples it saw (an empty batch weighs 0)."""

    total: float = 0.0
    samples: int = 0
    steps: int = 0

    def add(self, batch_mean: float, batch_size: int) -> None:
        """Count one step whose batch of ``batch_size`` samples had mean loss ``batch_mean``."""
        self.total += batch_mean * batch_size
        self.samples += batch_size
        self.steps += 1

    @property
    def mean(self) -> float:
        """The mean loss per sample seen (0.0 before any sample)."""
        return self.total / max(self.samples, 1)


def training_tensors(site_id: str, data: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Return a site's normalised inputs and float targets.

    Raises:
        FederationError: if the site has no samples.
    """
    if len(data) == 0:
        raise FederationError(
            f"site {site_id} has no training samples",
            remedy="use fewer sites or a larger rho so every site receives data",
        )
    return to_input_tensor(data.images), torch.from_numpy(data.targets).to(torch.float32)


class PlainSteps:
    """Steps without DP: AdamW on shuffled batches of the round's batch size, on any device.

    By epochs, each epoch is one fresh random pass (its last batch may be short). With
    ``local_steps``, exactly that many batches of exactly the batch size, from fresh random
    passes read one after another (:func:`~clinfl.data.batching.wrapped_batches`). Each round's
    order comes from a generator seeded afresh from ``random_bytes`` in :meth:`begin_round`.

    With ``augment_multiplicity`` K > 1 each batch trains as K randomly translated views of
    every sample, the loss their mean (:mod:`site_agent.augmentation`); the translations come
    from a second generator seeded from ``random_bytes`` in :meth:`begin_round`.
    """

    divergence_remedy = "lower --lr"

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        algorithm: Algorithm,
        *,
        weight_decay: float,
        random_bytes: RandomBytes,
        device: torch.device,
        augment_multiplicity: int = 1,
    ) -> None:
        self._device = device
        self._views = augment_multiplicity
        self._augment: torch.Generator | None = None  # drawn in begin_round when views > 1
        self._model = model.to(device)
        self._inputs = inputs
        self._targets = targets
        self._algorithm = algorithm
        self._weight_decay = weight_decay
        self._random_bytes = random_bytes
        self._generator = fresh_generator(random_bytes)  # replaced by every begin_round
        self._optimizer: torch.optim.AdamW | None = None
        # for data_batches: the last round's batch size and local steps once one ran
        self._batch_size = 32
        self._local_steps: int | None = None

    @property
    def model(self) -> nn.Module:
        """The model being trained."""
        return self._model

    @property
    def device(self) -> torch.device:
        """Where the model and the batches live."""
        return self._device

    def begin_round(self, settings: RoundSettings) -> int:
        """Set the round's learning rate, draw its fresh randomness; return its steps.

        The optimiser's state (AdamW's moments) is cleared: a round's update depends only on the
        global model, the run's settings, the data and fresh randomness, never on the models of
        earlier rounds, which a lying coordinator chooses (a crafted model could otherwise
        freeze or break a site's later rounds and isolate another site's update in the sum).
        """
        if self._optimizer is None:
            params = [p for p in self._model.parameters() if p.requires_grad]
            self._optimizer = torch.optim.AdamW(
                params, lr=settings.lr, weight_decay=self._weight_decay
            )
        self._optimizer.state.clear()  # AdamW's moments start afresh: nothing outlives a round
        for group in self._optimizer.param_groups:
            group["lr"] = settings.lr
        self._generator = fresh_generator(self._random_bytes)
        if self._views > 1:  # drawn after the order's, so K = 1 draws exactly what it did
            self._augment = fresh_generator(self._random_bytes)
        steps_per_epoch = -(-int(self._inputs.shape[0]) // settings.batch_size)
        return round_steps(settings, steps_per_epoch)

    def abort_round(self) -> None:
        """Nothing was reserved."""

    def recover(self) -> None:
        """Drop the gradients a failed step may have left."""
        self._model.zero_grad(set_to_none=True)

    def batches(self, settings: RoundSettings) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield one epoch in a fresh random order, or the round's fixed steps' full batches."""
        size = int(self._inputs.shape[0])
        if settings.local_steps is not None:
            rows_of = self._fixed_step_rows(settings.batch_size, settings.local_steps)
        else:
            rows_of = shuffled_batches(
                size, batch_size=settings.batch_size, generator=self._generator
            )
        for rows in rows_of:
            yield self._batch(rows)

    def _fixed_step_rows(self, batch_size: int, steps: int) -> Iterator[torch.Tensor]:
        """Rows of ``steps`` full batches from fresh random passes (fixed-step mode)."""
        size = int(self._inputs.shape[0])
        return wrapped_batches(size, batch_size=batch_size, steps=steps, generator=self._generator)

    def _batch(self, rows: slice | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._inputs[rows].to(self._device), self._targets[rows].to(self._device)

    def loss(
        self, images: torch.Tensor, targets: torch.Tensor, reference: StateDict, memory: SiteMemory
    ) -> torch.Tensor:
        """The algorithm's local objective on the batch (on its views with multiplicity)."""
        if self._augment is not None:
            images, targets = view_batch(images, targets, self._views, self._augment)
        return self._algorithm.local_loss(self._model, images, targets, reference, memory)

    def step(self, loss: torch.Tensor, reference: StateDict, memory: SiteMemory, lr: float) -> None:
        """One AdamW step, then the algorithm's per-step hook."""
        optimizer = present(self._optimizer, "the round's optimizer (begin_round makes it)")
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        self._algorithm.after_step(self._model, reference, memory)

    def end_round(self, settings: RoundSettings) -> None:
        """Remember the round's batch size and steps for :meth:`data_batches`."""
        self._batch_size = settings.batch_size
        self._local_steps = settings.local_steps

    def data_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The site's data in order, a batch at a time; in fixed-step mode, the round's steps.

        In fixed-step mode it yields as many fresh random full batches as the round took steps
        (:func:`~clinfl.data.batching.wrapped_batches`), so the auxiliary pass does not follow
        the site's size either.
        """
        size = int(self._inputs.shape[0])
        if self._local_steps is not None:
            for rows in self._fixed_step_rows(self._batch_size, self._local_steps):
                yield self._batch(rows)
            return
        for start in range(0, size, self._batch_size):
            yield self._batch(slice(start, start + self._batch_size))

    def update_sent(self, *, secagg: bool) -> None:
        """Nothing to record without DP."""

    def aggregate_size(self, sites: int) -> None:
        """Nothing to record without DP."""

    def epsilon(self) -> float | None:
        """No privacy is spent without DP."""
        return None


def plain_trainer(
    site_id: str,
    data: ImageSet,
    algorithm: Algorithm,
    spec: ModelSpec,
    *,
    weight_decay: float,
    random_bytes: RandomBytes = os.urandom,
    on_step: StepCallback | None = None,
    device: torch.device | None = None,
    augment_multiplicity: int = 1,
    ema_decay: float | None = None,
) -> SiteTrainer:
    """Return a site's trainer without DP (its model, ETF from the federation seed, built here).

    Each training call shuffles with fresh randomness from ``random_bytes``: the operating
    system's cryptographic source, unless the in-process simulation passes
    :func:`simulation_random_bytes`. ``augment_multiplicity`` trains each batch as that many
    translated views per sample (1: none); ``ema_decay`` sends the steps' moving average
    (:class:`SiteTrainer`).

    Raises:
        FederationError: if the site has no samples.
    """
    inputs, targets = training_tensors(site_id, data)
    steps = PlainSteps(
        algorithm.build_model(spec),
        inputs,
        targets,
        algorithm,
        weight_decay=weight_decay,
        random_bytes=random_bytes,
        device=torch.device("cpu") if device is None else device,
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
