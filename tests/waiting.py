"""Waiting for something a test expects to happen soon, bounded in time (never a bare sleep)."""

from __future__ import annotations

import asyncio
import inspect


async def eventually(check, timeout: float = 10.0, interval: float = 0.02):
    """Wait until `check()` (a function or a coroutine function) is truthy (bounded); returns its
    last value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(interval)
