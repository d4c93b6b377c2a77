"""The ``dynaloss`` command's entry point: a clear message where the ``demo`` extra is not installed."""

from __future__ import annotations

import sys

# what the command line's harness imports beyond the library's own torch and numpy
DEMO_EXTRA = ("tqdm", "matplotlib", "sklearn", "mnist1d")


def main() -> int:
    try:
        from dynaloss.harness.cli import main as cli_main
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] not in DEMO_EXTRA:
            raise
        print(
            f"dynaloss: the command line needs the 'demo' extra ({error.name} is not installed): "
            "pip install 'dynaloss[demo]' (in a clone: pip install -e '.[demo]')",
            file=sys.stderr,
        )
        return 2
    return cli_main()
