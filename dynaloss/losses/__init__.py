"""Dynamic Loss Networks: learnable losses with the PyTorch loss contract."""

from dynaloss.losses.multipart import MultiPartDLN
from dynaloss.losses.pairwise import PairwiseDLN

__all__ = ["MultiPartDLN", "PairwiseDLN"]
