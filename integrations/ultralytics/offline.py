"""Keep ultralytics off the network, through its own documented switches.

``import ultralytics`` resolves two DNS names to decide whether it is online, unless ``YOLO_OFFLINE`` is set
before the import; the dataset check then looks for fonts and, when it misses them, asks the network for
``Arial.ttf``. :func:`prefer_offline` sets the switch (a value you set yourself wins) and
:func:`provide_fonts` puts a local font where ultralytics looks first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["FONT_NAMES", "prefer_offline", "provide_fonts"]

FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")  # what ultralytics' check_font asks for


def prefer_offline() -> None:
    """Set ``YOLO_OFFLINE=1`` unless it is set: ultralytics then skips its DNS probe at import."""
    os.environ.setdefault("YOLO_OFFLINE", "1")


def provide_fonts(config_dir: Path) -> list[Path]:
    """Copy matplotlib's DejaVu Sans to ``config_dir`` under the names ultralytics' font check looks for.

    ``check_font`` returns a file of that name in its config directory without going online; only missing
    files are written. Returns the files written.
    """
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    written = []
    for name in FONT_NAMES:
        target = config_dir / name
        if not target.exists():
            config_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            written.append(target)
    return written
