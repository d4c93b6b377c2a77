"""Adapters that put a Dynamic Loss Network into other frameworks' objectives (installed as ``dynaloss.integrations``).

Each adapter imports its framework lazily: ``import dynaloss`` never imports ultralytics or
segmentation-models-pytorch.
"""

__all__: list[str] = []
