"""Renamed keyword arguments keep working for one release, with a ``DeprecationWarning`` (listed in CHANGELOG.md)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["renamed_keywords"]

F = TypeVar("F", bound=Callable[..., Any])


def renamed_keywords(**renames: str) -> Callable[[F], F]:
    """Accept each ``old=`` keyword of ``renames`` (``old="new"``) as ``new=``, warning that ``old`` is deprecated.

    Passing both names warns and raises ``TypeError``, as a repeated keyword would.
    """

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                warnings.warn(
                    f"{function.__qualname__}(): {old}= is deprecated, use {new}= ({old}= will be removed in the "
                    "next release)",
                    DeprecationWarning,
                    stacklevel=2,
                )
                if new in kwargs:
                    raise TypeError(
                        f"{function.__qualname__}() got both {old}= (deprecated) and {new}=: pass {new}= alone"
                    )
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
