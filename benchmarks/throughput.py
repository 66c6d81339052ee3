"""Local training step throughput (images/second) of each method on this machine."""

from __future__ import annotations

import statistics
import time

import torch

from clinfl.algorithms import ModelSpec, create_algorithm
from clinfl.config import RunConfig
from clinfl.config.presets import resolve_defaults

BATCH = 32
WARMUP_STEPS = 2
TIMED_STEPS = 8


def measure_throughput(dataset: str, method: str, config: RunConfig) -> dict[str, object]:
    """Time AdamW steps of the method's local loss on random inputs of the data set's shape."""
    config = resolve_defaults(config)
    size = config.data.image_size
    assert size is not None
    classes = 10 if config.data.dataset == "digits" else 14
    algorithm = create_algorithm(config.method)
    spec = ModelSpec(num_classes=classes, image_size=size, federation_seed=1, init_seed=0)
    device = torch.device(config.federation.device)
    model = algorithm.build_model(spec)
    reference = {k: v.to(device, copy=True) for k, v in algorithm.initial_state(model).items()}
    model.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 1, size, size, generator=generator).to(device)
    targets = (torch.rand(BATCH, classes, generator=generator) < 0.2).float().to(device)
    timings = []
    model.train()
    for step in range(WARMUP_STEPS + TIMED_STEPS):
        started = time.perf_counter()
        loss = algorithm.local_loss(model, images, targets, reference)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # CUDA runs asynchronously: time the finished step
        if step >= WARMUP_STEPS:
            timings.append(time.perf_counter() - started)
    median = statistics.median(timings)
    return {
        "dataset": dataset,
        "method": method,
        "image_size": size,
        "batch": BATCH,
        "steps_timed": TIMED_STEPS,
        "median_step_seconds": median,
        "images_per_second": BATCH / median,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
