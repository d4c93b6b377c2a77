"""L2T-DLN for PSPNet on segmentation-models-pytorch (``pip install dynaloss[smp]``).

:class:`PSPNetAux` is smp's PSPNet with the paper's auxiliary segmentation head, :class:`PSPNetDLNLoss` the
objective ``DLN(p, y) + 0.4 DLN(aux_p, y)``, :class:`PSPNetTrainer` the training loop with teacher rounds,
mIoU evaluation and resumable checkpoints, :class:`VOCSegmentation` PASCAL VOC 2012 read from a local
directory. Encoders are built with ``encoder_weights=None`` unless you ask for weights, so nothing is
downloaded.
"""

from dynaloss.integrations.smp.model import PSPNetAux, PSPNetOutput
from dynaloss.integrations.smp.objective import AUX_WEIGHT, VOC_IGNORE_INDEX, PSPNetCELoss, PSPNetDLNLoss
from dynaloss.integrations.smp.trainer import PSPNetTrainer
from dynaloss.integrations.smp.voc import VOC_CLASSES, VOCSegmentation

__all__ = [
    "AUX_WEIGHT",
    "VOC_CLASSES",
    "VOC_IGNORE_INDEX",
    "PSPNetAux",
    "PSPNetCELoss",
    "PSPNetDLNLoss",
    "PSPNetOutput",
    "PSPNetTrainer",
    "VOCSegmentation",
]
