"""PSPNet with the PSPNet paper's auxiliary *segmentation* branch, built on segmentation-models-pytorch."""

from __future__ import annotations

from typing import Any, NamedTuple

import segmentation_models_pytorch as smp
import torch.nn.functional as F
from torch import Tensor, nn

from dynaloss._checks import check_positive_int, check_tensor

__all__ = ["PSPNetAux", "PSPNetOutput"]


class PSPNetOutput(NamedTuple):
    """Per-pixel logits of the main head and of the auxiliary head, both ``(B, C, H, W)`` at input size."""

    main: Tensor
    aux: Tensor


class PSPNetAux(nn.Module):
    """smp's ``PSPNet`` plus an auxiliary segmentation head on the second-to-last encoder stage.

    smp's ``aux_params`` only builds a classification head; the PSPNet paper (and L2T-DLN's objective
    ``DLN(p, y) + 0.4 DLN(aux_p, y)``) needs per-pixel auxiliary logits. The default layout is the paper's:
    a dilated ResNet-50 (``encoder_depth=5, output_stride=8``) with the pyramid on layer4 and the auxiliary
    head (Conv3x3-BN-ReLU-Dropout-Conv1x1) on layer3. Any smp encoder works.

    The forward always returns both heads (a :class:`PSPNetOutput`), in training and in evaluation, so the
    model is a pure function of its parameters and inputs; use ``.main`` for predictions.

    Args:
        num_classes: classes ``C`` (VOC: 21).
        encoder_name: smp encoder (default: ``'resnet50'``).
        encoder_weights: pretrained weights to *download* (default: ``None``: random init, nothing fetched).
        encoder_depth: encoder stages, 3-5 (default: ``5``).
        output_stride: stride of the deepest features, 8, 16 or 32 (default: ``8``: dilated).
        psp_out_channels: width of the pyramid's output (default: ``512``).
        aux_channels: hidden width of the auxiliary head (default: ``256``).
        dropout: dropout of the pyramid and of the auxiliary head (default: ``0.1``, the PSPNet paper's).
        in_channels: input channels (default: ``3``).
        **encoder_kwargs: passed on to smp (e.g. options of ``tu-`` timm encoders).

    Shape:
        - input: ``(B, in_channels, H, W)`` with ``H`` and ``W`` divisible by :attr:`output_stride`.
        - output: :class:`PSPNetOutput` of two ``(B, C, H, W)`` tensors.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        encoder_name: str = "resnet50",
        encoder_weights: str | None = None,
        encoder_depth: int = 5,
        output_stride: int = 8,
        psp_out_channels: int = 512,
        aux_channels: int = 256,
        dropout: float = 0.1,
        in_channels: int = 3,
        **encoder_kwargs: Any,
    ) -> None:
        super().__init__()
        self.num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
        if encoder_depth not in (3, 4, 5):
            raise ValueError(f"encoder_depth must be 3, 4 or 5, got {encoder_depth!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
        stride = min(output_stride, 2**encoder_depth)
        self.pspnet = smp.PSPNet(
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            encoder_depth=encoder_depth,
            psp_out_channels=check_positive_int(psp_out_channels, "psp_out_channels"),
            psp_dropout=dropout,
            in_channels=in_channels,
            classes=num_classes,
            upsampling=stride,
            output_stride=output_stride,
            **encoder_kwargs,
        )
        aux_in = self.pspnet.encoder.out_channels[-2]
        hidden = check_positive_int(aux_channels, "aux_channels")
        self.aux_head = nn.Sequential(
            nn.Conv2d(aux_in, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(hidden, num_classes, 1),
        )
        self.output_stride = int(self.pspnet.encoder.output_stride)
        self.in_channels = in_channels

    def check_input(self, x: object) -> Tensor:
        """Raise ``ValueError``/``TypeError`` naming what is wrong with an input batch."""
        x = check_tensor(x, "x")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        stride = self.output_stride
        if height % stride or width % stride:
            padded = f"{-(-height // stride) * stride}x{-(-width // stride) * stride}"
            raise ValueError(
                f"input height and width must be divisible by the output stride {stride}, got "
                f"{height}x{width}; pad or crop to {padded}"
            )
        return x

    def forward(self, x: Tensor) -> PSPNetOutput:
        x = self.check_input(x)
        features = self.pspnet.encoder(x)
        main = self.pspnet.segmentation_head(self.pspnet.decoder(features))
        aux = F.interpolate(self.aux_head(features[-2]), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return PSPNetOutput(main, aux)
