"""DecodeBudget: the bytes that image decodes may hold at once, across requests.

The per-request limit (ServeConfig.max_decode_bytes) bounds one decode from the size its header declares;
this bounds them together: a request reserves its decode's bytes before decoding and holds them until its
response is built (the decoded image lives that long). A request that does not fit waits, in arrival
order, at most `wait_s`; then it is refused with ServerBusyError (HTTP 503 with Retry-After) instead of
pushing the server past its memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from medhash.errors import MedhashError

__all__ = ["DecodeBudget", "ServerBusyError"]


class ServerBusyError(MedhashError):
    """The decode budget stayed full for the whole wait: HTTP 503, retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int):
        self.retry_after_s = retry_after_s
        super().__init__(message)


class DecodeBudget:
    def __init__(self, capacity_bytes: int, wait_s: float):
        self.capacity, self.wait_s = capacity_bytes, wait_s
        self.in_use = 0
        self._condition: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _cond(self) -> asyncio.Condition:
        # One per event loop: in-process benchmarks may drive the service from successive loops.
        loop = asyncio.get_running_loop()
        if self._condition is None or self._loop is not loop:
            self._condition, self._loop = asyncio.Condition(), loop
        return self._condition

    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int) -> AsyncIterator[None]:
        """Hold `nbytes` of the budget for the block (at most the capacity: the caller checks one request's
        limit first)."""
        nbytes = min(nbytes, self.capacity)
        cond = self._cond()
        async with cond:
            try:
                await asyncio.wait_for(cond.wait_for(lambda: self.in_use + nbytes <= self.capacity), self.wait_s)
            except asyncio.TimeoutError:
                raise ServerBusyError(
                    f"the server is decoding other images ({self.in_use >> 20} of {self.capacity >> 20} MB of its "
                    f"decode budget in use) and this one did not fit within {self.wait_s:g} s; retry shortly",
                    retry_after_s=max(1, round(self.wait_s))) from None
            self.in_use += nbytes
        try:
            yield
        finally:
            async with cond:
                self.in_use -= nbytes
                cond.notify_all()
