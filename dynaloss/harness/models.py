"""Small students for the embedded data sets and the research code's wide ResNet8 for CIFAR."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from dynaloss._checks import check_positive_int

__all__ = ["MNIST1DCNN", "BasicBlock", "DigitsMLP", "ResMLP", "ResNet8"]


class MNIST1DCNN(nn.Module):
    """A small 1-D CNN for MNIST-1D: three stride-2 convolutions, then a linear classifier.

    ``Conv1d(1, c, 5) -> Conv1d(c, c, 3) -> Conv1d(c, c, 3)``, each with stride 2 and ReLU, take the length
    40 down to 5; the flattened ``c * 5`` features go to ``Linear(c * 5, num_classes)``. About 8k
    parameters with ``c = 32``: a teacher round with ``N = 10`` takes ~0.15 s on one CPU core.

    Args:
        num_classes: number of outputs (default: ``10``).
        channels: width of every convolution (default: ``32``).
        length: input length (default: ``40``).

    Shape:
        - input: ``(B, 1, length)``.
        - output: ``(B, num_classes)`` logits.
    """

    def __init__(self, num_classes: int = 10, channels: int = 32, length: int = 40) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes", minimum=2)
        check_positive_int(channels, "channels")
        check_positive_int(length, "length", minimum=8)
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        reduced = length
        for _ in range(3):
            reduced = (reduced - 1) // 2 + 1  # a stride-2 conv with "same" padding rounds up
        self.classifier = nn.Linear(channels * reduced, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class DigitsMLP(nn.Module):
    """A one-hidden-layer MLP for sklearn's 8x8 digits.

    Args:
        num_classes: number of outputs (default: ``10``).
        hidden: width of the hidden layer (default: ``64``).
        in_features: pixels per image (default: ``64``).

    Shape:
        - input: ``(B, 1, 8, 8)`` or ``(B, 64)``; everything after the batch dimension is flattened.
        - output: ``(B, num_classes)`` logits.
    """

    def __init__(self, num_classes: int = 10, hidden: int = 64, in_features: int = 64) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes", minimum=2)
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(check_positive_int(in_features, "in_features"), check_positive_int(hidden, "hidden")),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ResMLP(nn.Module):
    """A small residual MLP with BatchNorm, for flat or flattened inputs.

    ``Linear(in_features, width)``, then ``blocks`` pre-activation residual blocks
    ``x + Linear(ReLU(BatchNorm1d(x)))``, then ``BatchNorm1d -> ReLU -> Linear(width, num_classes)``. About
    7k parameters on MNIST-1D's 40 features and 8.5k on the 64 pixels of digits with the defaults: a
    student whose BatchNorm statistics a teacher's unroll has to carry.

    Args:
        num_classes: number of outputs (default: ``10``).
        in_features: features per sample after flattening (default: ``40``).
        width: width of the residual stream (default: ``48``).
        blocks: number of residual blocks (default: ``2``).

    Shape:
        - input: ``(B, ...)`` with ``in_features`` elements after the batch dimension, which are flattened.
        - output: ``(B, num_classes)`` logits.
    """

    def __init__(self, num_classes: int = 10, in_features: int = 40, width: int = 48, blocks: int = 2) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes", minimum=2)
        check_positive_int(width, "width")
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(check_positive_int(in_features, "in_features"), width))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width))
            for _ in range(check_positive_int(blocks, "blocks"))
        )
        self.head = nn.Sequential(nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.stem(x)
        for block in self.blocks:
            out = out + block(out)
        return self.head(out)


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 conv-BN layers and a shortcut (1x1 conv-BN when the shape changes).

    Shape:
        - input: ``(B, in_channels, H, W)``.
        - output: ``(B, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet8(nn.Module):
    """The L2T-DLN research code's wide ResNet8 for 32x32 images.

    A 3x3 stem conv to 64 channels, one :class:`BasicBlock` per stage with 64 / 128 / 256 channels and
    strides 1 / 2 / 2 (32 -> 32 -> 16 -> 8 pixels), ``avg_pool2d(4)`` (8x8 -> 2x2), and
    ``Linear(256 * 2 * 2 = 1024, num_classes)``. About 1.2 M parameters.

    Args:
        num_classes: number of outputs (default: ``10``).
        in_channels: image channels (default: ``3``).

    Shape:
        - input: ``(B, in_channels, 32, 32)``.
        - output: ``(B, num_classes)`` logits.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes", minimum=2)
        self.conv1 = nn.Conv2d(check_positive_int(in_channels, "in_channels"), 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = BasicBlock(64, 64, stride=1)
        self.layer2 = BasicBlock(64, 128, stride=2)
        self.layer3 = BasicBlock(128, 256, stride=2)
        self.linear = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"ResNet8 expects 32x32 images, got input of shape {tuple(x.shape)}")
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))
