"""Which LADM token map for ImageNet MobileNetV2 on NIH1000: upsample to 128 px, or cut at stride 16?

Heads trained on frozen pretrained features, centralized, patient-grouped 5-fold over all of
NIH1000; metrics from the pooled out-of-fold predictions. For each token map:

- a linear probe (per-class logistic regression, C fixed at 0.01, on standardised mean-pooled
  features) and an LADM head (FedNCAlign-ML's LADM, ETF classifier and loss with the X-ray loss
  weights, attention width 128 for every map, 10 epochs of AdamW at 1e-3 on the frozen maps);
- macro-AUC over the learnable classes (at least 20 positive patients in the whole set),
  abnormal-vs-normal AUC (score: the largest class probability), frozen forward time per image;

and the training step time per image (forward and backward of the whole FedNCAlign-ML network,
batch 32, one thread by default: on a shared 2-core machine two threads measured far slower)
for full fine-tuning and for ``train_blocks`` 4 and 2. Results go to
``benchmarks/results/token_map.json``; ``docs/method.md`` ("Pretrained backbones") reads them.

    CLINFL_WEIGHTS_DIR=... python benchmarks/token_map.py

It needs the cached ImageNet MobileNetV2 weights (``clinfl weights fetch mobilenet_v2-imagenet``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "token_map.json"
DEFAULT_LABELS = Path("/work/shared/data/nih1000/labels.csv")
FOLDS = 5
MIN_POSITIVE_PATIENTS = 20
PROBE_C = 0.01
LADM_WIDTH = 128
LADM_EPOCHS = 10
STEP_BATCH = 32
TRAIN_BLOCKS: tuple[int | None, ...] = (None, 4, 2)
"""``train_blocks`` settings timed: the whole backbone, its last 4 blocks, its last 2."""


@dataclass(frozen=True)
class TokenMap:
    """One candidate: an input size and where MobileNetV2 is cut."""

    image_size: int
    feature_stride: int

    @property
    def key(self) -> str:
        """A short name: ``128px/s32``."""
        return f"{self.image_size}px/s{self.feature_stride}"


CANDIDATES = (
    TokenMap(128, 32),  # (a) upsample 64 -> 128, stride 32: 4x4 x 1280
    TokenMap(64, 16),  # (b) stride 16 at the source size: 4x4 x 96
    TokenMap(128, 16),  # (b') stride 16 after upsampling: 8x8 x 96
    TokenMap(64, 32),  # the source size, stride 32: 2x2 x 1280 (for reference)
)


def load_nih(labels: Path, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Return images ``[N, size, size]`` uint8, targets ``[N, 14]``, patient ids and class names."""
    from clinfl.data.labels import CXR14_LABELS
    from clinfl.data.png_reader import read_grayscale

    with labels.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = np.stack([read_grayscale(labels.parent / row["path"], size=size) for row in rows])
    targets = np.array([[int(row[name]) for name in CXR14_LABELS] for row in rows], np.float32)
    patients = np.array([row["Patient ID"] for row in rows])
    return images, targets, patients, list(CXR14_LABELS)


def patient_folds(patients: np.ndarray) -> np.ndarray:
    """Return each image's fold (0..4); a patient's images share one fold."""
    from sklearn.model_selection import GroupKFold

    fold = np.zeros(patients.size, dtype=np.int64)
    for index, (_, test) in enumerate(GroupKFold(n_splits=FOLDS).split(patients, groups=patients)):
        fold[test] = index
    return fold


def learnable_classes(targets: np.ndarray, patients: np.ndarray) -> list[int]:
    """Classes with at least :data:`MIN_POSITIVE_PATIENTS` positive patients."""
    keep = []
    for k in range(targets.shape[1]):
        if np.unique(patients[targets[:, k] > 0]).size >= MIN_POSITIVE_PATIENTS:
            keep.append(k)
    return keep


def scores(probabilities: np.ndarray, targets: np.ndarray, classes: list[int]) -> dict[str, float]:
    """Learnable-class macro-AUC and abnormal-vs-normal AUC of pooled predictions (percent)."""
    from sklearn.metrics import roc_auc_score

    macro = np.mean([roc_auc_score(targets[:, k], probabilities[:, k]) for k in classes])
    abnormal = roc_auc_score(targets.max(axis=1), probabilities.max(axis=1))
    return {"macro_auc": round(100 * float(macro), 2), "abnormal_auc": round(100 * abnormal, 2)}


def extract(images: np.ndarray, image_size: int) -> tuple[dict[int, Any], float]:
    """Return frozen pretrained feature maps by stride (16 and 32) and the forward ms per image.

    One pass through the whole network gives both: the stride-16 map is ``features[13]``'s
    output (the input of the first stride-32 block).
    """
    import torch

    from clinfl.config import MethodConfig
    from clinfl.data.batching import to_input_tensor
    from clinfl.model.backbones.build import build_feature_backbone
    from clinfl.model.backbones.mobilenet import STRIDE_16_BLOCKS, MobileNetV2Features

    method = MethodConfig(backbone="mobilenet_v2", feature_stride=32)
    backbone = build_feature_backbone(method, image_size).eval()
    assert isinstance(backbone, MobileNetV2Features)
    inputs = to_input_tensor(images)
    maps: dict[int, list[Any]] = {16: [], 32: []}
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(inputs), 100):
            x = backbone.input(inputs[first : first + 100])
            for index, block in enumerate(backbone.features):
                if index == STRIDE_16_BLOCKS:
                    maps[16].append(x)
                x = block(x)
            maps[32].append(x)
    elapsed = time.perf_counter() - start
    return {stride: torch.cat(chunks) for stride, chunks in maps.items()}, (
        1000 * elapsed / len(inputs)
    )


def linear_probe(maps: Any, targets: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold probabilities of per-class logistic regressions on mean-pooled features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    pooled = maps.mean(dim=(2, 3)).double().numpy()
    out = np.zeros_like(targets, dtype=np.float64)
    for fold in range(FOLDS):
        train, test = folds != fold, folds == fold
        scaler = StandardScaler().fit(pooled[train])
        x_train, x_test = scaler.transform(pooled[train]), scaler.transform(pooled[test])
        for k in range(targets.shape[1]):
            if targets[train, k].min() == targets[train, k].max():
                out[test, k] = targets[train, k].mean()
                continue
            model = LogisticRegression(C=PROBE_C, max_iter=2000).fit(x_train, targets[train, k])
            out[test, k] = model.predict_proba(x_test)[:, 1]
    return out


def ladm_head(maps: Any, targets: np.ndarray, folds: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold probabilities of FedNCAlign-ML's head (LADM + ETF) on frozen feature maps."""
    import torch

    from clinfl.algorithms import create_algorithm
    from clinfl.config import MethodConfig
    from clinfl.model.backbones.base import FeatureBackbone
    from clinfl.model.etf import SimplexETF
    from clinfl.model.networks import FedNCAlignNet

    class Given(FeatureBackbone):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.out_dim = dim

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    method = MethodConfig(lambda_rej=0.01, lambda_con=0.1, ladm_width=LADM_WIDTH)
    algorithm = create_algorithm(method)
    y = torch.from_numpy(targets)
    out = np.zeros_like(targets, dtype=np.float64)
    for fold in range(FOLDS):
        train = torch.from_numpy(np.flatnonzero(folds != fold))
        test = torch.from_numpy(np.flatnonzero(folds == fold))
        generator = torch.Generator().manual_seed(seed + fold)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + fold)
            net = FedNCAlignNet(
                Given(maps.shape[1]),
                SimplexETF(targets.shape[1], maps.shape[1], seed=20240917),
                ladm_width=LADM_WIDTH,
            )
        optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
        for _ in range(LADM_EPOCHS):
            order = train[torch.randperm(train.numel(), generator=generator)]
            for first in range(0, order.numel(), STEP_BATCH):
                rows = order[first : first + STEP_BATCH]
                loss = algorithm.per_sample_loss(net(maps[rows]), y[rows]).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        with torch.inference_mode():
            out[test.numpy()] = torch.sigmoid(net.eval()(maps[test]).logits).double().numpy()
    return out


def step_ms(token_map: TokenMap, train_blocks: int | None, repeats: int) -> float:
    """Median ms per image of one training step (forward + backward) of the whole network."""
    import torch

    from clinfl.algorithms import ModelSpec, create_algorithm
    from clinfl.config import MethodConfig

    method = MethodConfig(
        backbone="mobilenet_v2",
        feature_stride=token_map.feature_stride,
        train_blocks=train_blocks,
        lambda_rej=0.01,
        lambda_con=0.1,
    )
    algorithm = create_algorithm(method)
    spec = ModelSpec(
        num_classes=14, image_size=token_map.image_size, federation_seed=1, init_seed=0
    )
    model = algorithm.build_model(spec).train()
    size = token_map.image_size
    images = torch.randn(STEP_BATCH, 1, size, size)
    targets = (torch.rand(STEP_BATCH, 14) < 0.1).float()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        loss = algorithm.per_sample_loss(model(images), targets).mean()
        loss.backward()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return round(1000 * float(np.median(times[1:])) / STEP_BATCH, 3)


def main() -> None:
    """Measure every candidate token map and write the results file."""
    import torch

    from benchmarks.machine import machine_info

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record: dict[str, Any] = {
        "machine": machine_info(),
        "folds": FOLDS,
        "probe_c": PROBE_C,
        "ladm_width": LADM_WIDTH,
        "ladm_epochs": LADM_EPOCHS,
        "candidates": {},
    }
    for image_size in sorted({c.image_size for c in CANDIDATES}):
        images, targets, patients, names = load_nih(args.labels, image_size)
        folds = patient_folds(patients)
        classes = learnable_classes(targets, patients)
        record["learnable_classes"] = [names[k] for k in classes]
        by_stride, forward_ms = extract(images, image_size)
        print(f"{image_size}px: features in {forward_ms:.1f} ms per image", flush=True)
        for token_map in (c for c in CANDIDATES if c.image_size == image_size):
            maps = by_stride[token_map.feature_stride]
            started = time.perf_counter()
            linear = scores(linear_probe(maps, targets, folds), targets, classes)
            ladm = scores(ladm_head(maps, targets, folds, args.seed), targets, classes)
            heads_seconds = time.perf_counter() - started
            steps = {
                str(blocks): step_ms(token_map, blocks, args.repeats) for blocks in TRAIN_BLOCKS
            }
            record["candidates"][token_map.key] = {
                "image_size": token_map.image_size,
                "feature_stride": token_map.feature_stride,
                "tokens": f"{maps.shape[2]}x{maps.shape[3]}",
                "channels": int(maps.shape[1]),
                "frozen_forward_ms_per_image_full_network": round(forward_ms, 3),
                "linear_probe": linear,
                "ladm_head": ladm,
                "train_step_ms_per_image": steps,
                "heads_seconds": round(heads_seconds, 1),
            }
            print(token_map.key, json.dumps(record["candidates"][token_map.key]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
