"""Dynamic Loss Networks: learnable losses with the PyTorch loss contract."""

from dynaloss.losses.class_aware import ClassAwareDLN
from dynaloss.losses.multipart import MultiPartDLN
from dynaloss.losses.pairwise import PairwiseDLN

__all__ = ["ClassAwareDLN", "MultiPartDLN", "PairwiseDLN"]
