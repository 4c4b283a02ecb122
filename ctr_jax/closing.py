"""A mixin for objects that hold something to release: ``with obj:`` closes it on the way out."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    """``with obj:`` gives ``obj`` and calls ``obj.close()`` when the block ends, by an error too.

    Subclasses define ``close()``; calling it twice must be harmless (``with`` and an explicit
    call may both reach it).
    """

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
