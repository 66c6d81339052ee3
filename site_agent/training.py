"""A site's local training for one round: from the global weights to a weighted update."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from clinfl.algorithms import Algorithm, ModelSpec
from clinfl.algorithms.base import RoundContext, is_auxiliary
from clinfl.data.batching import shuffled_batches, to_input_tensor
from clinfl.data.imageset import ImageSet
from clinfl.errors import FederationError
from clinfl.federation.messages import RoundSettings
from clinfl.typing import StateDict
from site_agent.model_state import load_travelling_state

StepCallback = Callable[[str, int, int], None]


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


class LocalSite:
    """One hospital's trainer. Its data, model and optimiser state never leave it.

    The model (with the ETF derived from the federation seed) is built here; each round it loads
    the global travelling state, trains ``local_epochs`` epochs with AdamW, and returns
    ``w_local - w_global`` over the travelling tensors only (it stays at the site).
    """

    def __init__(
        self,
        site_id: str,
        data: ImageSet,
        algorithm: Algorithm,
        spec: ModelSpec,
        *,
        weight_decay: float,
        shuffle_seed: int,
        on_step: StepCallback | None = None,
        device: torch.device | None = None,
    ) -> None:
        if len(data) == 0:
            raise FederationError(
                f"site {site_id} has no training samples",
                remedy="use fewer sites or a larger rho so every site receives data",
            )
        self._site_id = site_id
        self._algorithm = algorithm
        self._device = torch.device("cpu") if device is None else device
        self._model = algorithm.build_model(spec).to(self._device)
        self._inputs = to_input_tensor(data.images)
        self._targets = torch.from_numpy(data.targets).to(torch.float32)
        self._weight_decay = weight_decay
        self._optimizer: torch.optim.AdamW | None = None
        self._generator = torch.Generator().manual_seed(shuffle_seed)
        self._on_step = on_step
        self._memory: dict[str, torch.Tensor] = {}  # the algorithm's site state (SCAFFOLD's c_i)
        self._batch_size = 32

    @property
    def site_id(self) -> str:
        """The site's identifier."""
        return self._site_id

    @property
    def num_samples(self) -> int:
        """Local training set size."""
        return int(self._inputs.shape[0])

    def update_sent(self, *, secagg: bool) -> None:
        """Nothing to record without DP."""

    def aggregate_size(self, sites: int) -> None:
        """Nothing to record without DP."""

    def _optimizer_for(self, lr: float) -> torch.optim.AdamW:
        if self._optimizer is None:
            params = [p for p in self._model.parameters() if p.requires_grad]
            self._optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=self._weight_decay)
        for group in self._optimizer.param_groups:
            group["lr"] = lr
        return self._optimizer

    def _in_order(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.num_samples, self._batch_size):
            stop = start + self._batch_size
            yield self._batch(slice(start, stop))

    def _batch(self, rows: slice | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._inputs[rows].to(self._device), self._targets[rows].to(self._device)

    def train_round(self, global_state: StateDict, settings: RoundSettings) -> LocalUpdate:
        """Train from ``global_state`` and return this site's update.

        Raises:
            FederationError: if the global state does not fit the local model or the loss diverges.
        """
        load_travelling_state(self._model, global_state)
        reference = {
            name: value.to(self._device, copy=True) for name, value in global_state.items()
        }
        optimizer = self._optimizer_for(settings.lr)
        self._model.train()
        n = self.num_samples
        steps_per_epoch = -(-n // settings.batch_size)
        total_steps = steps_per_epoch * settings.local_epochs
        loss_sum, step = 0.0, 0
        for _ in range(settings.local_epochs):
            for batch in shuffled_batches(
                n, batch_size=settings.batch_size, generator=self._generator
            ):
                images, targets = self._batch(batch)
                loss = self._algorithm.local_loss(
                    self._model, images, targets, reference, self._memory
                )
                if not torch.isfinite(loss):
                    raise FederationError(
                        f"site {self._site_id}: local loss became {loss.item()} in round "
                        f"{settings.round}",
                        remedy="lower --lr",
                    )
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                optimizer.step()
                self._algorithm.after_step(self._model, reference, self._memory)
                loss_sum += float(loss.detach())
                step += 1
                if self._on_step is not None:
                    self._on_step(self._site_id, step, total_steps)
        self._batch_size = settings.batch_size
        auxiliary = self._algorithm.auxiliary_update(
            self._model,
            reference,
            self._memory,
            RoundContext(steps=step, lr=settings.lr, batches=self._in_order),
        )
        local = self._algorithm.travelling_state(self._model)
        delta = {
            name: value.cpu() for name, value in site_update(reference, local, auxiliary).items()
        }
        return LocalUpdate(
            delta=delta, num_samples=n, mean_loss=loss_sum / max(step, 1), steps=step
        )
