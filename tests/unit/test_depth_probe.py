"""The depth probe's shallower backbone (benchmarks/depth_probe.py)."""

from __future__ import annotations

import pytest
import torch

import clinfl.model.backbones.resnet as backbone
from benchmarks.depth_probe import use_blocks_per_stage


def _blocks_per_stage(net: backbone.ResNet18Features) -> list[int]:
    return [len(stage) for stage in (net.layer1, net.layer2, net.layer3, net.layer4)]


def test_one_block_per_stage_builds_a_resnet10(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbone, "ResNet", backbone.ResNet)  # restored after the test
    full = backbone.ResNet18Features(stem="small", width=16)
    use_blocks_per_stage(1)
    shallow = backbone.ResNet18Features(stem="small", width=16)

    assert _blocks_per_stage(full) == [2, 2, 2, 2]
    assert _blocks_per_stage(shallow) == [1, 1, 1, 1]
    # same feature map (4x4 LADM tokens at 32 px, 8 * width channels), fewer parameters
    features = shallow(torch.zeros(2, 1, 32, 32))
    assert features.shape == (2, 128, 4, 4)
    assert sum(p.numel() for p in shallow.parameters()) < sum(p.numel() for p in full.parameters())


def test_two_blocks_per_stage_keeps_resnet18(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbone, "ResNet", backbone.ResNet)
    use_blocks_per_stage(2)
    assert _blocks_per_stage(backbone.ResNet18Features(stem="small", width=16)) == [2] * 4


def test_probe_keys_name_the_depth_so_one_file_holds_both() -> None:
    from benchmarks.depth_probe import probe_key
    from benchmarks.reference import Cell

    cell = Cell("main", "digits", "s1", "fedavg", 0, max_rounds=60)
    assert probe_key(cell, 1) == f"{cell.key}/blocks=1"
    assert probe_key(cell, 1) != probe_key(cell, 2)
