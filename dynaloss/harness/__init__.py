"""The experiment harness behind ``dynaloss demo``, ``train``, ``plot`` and ``bench``: data sets, students, training
arms with checkpoints, figures, the teacher-round benchmark and progress reports. It needs the ``demo`` extra
(tqdm, matplotlib, scikit-learn, mnist1d); the library (:mod:`dynaloss`) does not import it.

``synthetic`` holds the adapters' offline data (coloured squares as detection and segmentation sets), which the
integration examples, benchmarks and tests train on; ``yolo`` the YOLO adapter's experiment runs and shrunken
model configs (it needs the ``ultralytics`` extra too).
"""

__all__: list[str] = []  # the harness is used by its submodules
