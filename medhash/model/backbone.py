"""Feature extractors for the global and local branches, by name (a registry).

Every backbone takes a 1-channel image (the first convolution is built for one
channel, so grayscale pixels are never copied 3x) and returns feature maps
[B, C, h, w]; `out_channels` says C.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from medhash.errors import InvalidParameterError


class Backbone(nn.Module):
    def __init__(self, features: nn.Module, out_channels: int, arch: str):
        super().__init__()
        self.features = features
        self.out_channels = out_channels
        self.arch = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.features(x))


def _densenet121() -> Backbone:
    from torchvision.models import densenet121

    net = densenet121(weights=None)
    net.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.features.conv0.weight)
    # torchvision's DenseNet ends its `features` with norm5 and no ReLU; Backbone adds the ReLU.
    return Backbone(net.features, 1024, "densenet121")


def _tiny() -> Backbone:
    """A small CNN (stride 16) for tests and the quick demo; same interface as DenseNet."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.MaxPool2d(2)]

    layers = block(1, 16) + block(16, 32) + block(32, 64) + block(64, 128)
    layers[-1] = nn.Identity()  # keep the last block's resolution (stride 8) for a finer CAM
    return Backbone(nn.Sequential(*layers), 128, "tiny")


BACKBONES: dict[str, Callable[[], Backbone]] = {
    "densenet121": _densenet121,
    "tiny": _tiny,
}


def build_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]()
    except KeyError:
        raise InvalidParameterError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}") from None
