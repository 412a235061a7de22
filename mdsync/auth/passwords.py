"""argon2id password hashing, always off the event loop (one hash costs ~100 ms)."""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from concurrent.futures import Executor, Future

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


def _yield_to_the_loop() -> None:
    """Run hashing threads (and the lane threads argon2 starts from them) at a lower priority.

    Hashes are CPU-bound and, with parallelism > 1, each uses several cores: on a small machine
    a burst of logins would otherwise take the CPU from the event loop that serves every other
    request. Only Linux has per-thread nice values; elsewhere this does nothing.
    """
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + 10))
    except (AttributeError, OSError):
        pass


class _Hashers(Executor):
    """A bounded pool of daemon threads for the hashes. A ThreadPoolExecutor's threads are
    joined when the interpreter exits, so a hash still running (a registration the shutdown
    timeout gave up on) would keep a stopping server alive past its shutdown contract."""

    def __init__(self, workers: int):
        self._workers = workers
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        with self._lock:  # started on first use: the CLI makes a Passwords it may never hash with
            if len(self._threads) < self._workers:
                thread = threading.Thread(target=self._work, name=f"argon2-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        self._jobs.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        _yield_to_the_loop()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the waiter, as a ThreadPoolExecutor does
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the threads once their current hash is done (`wait`: wait for that); with
        `cancel_futures` the hashes not started yet are cancelled."""
        if cancel_futures:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job[0].cancel()
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)
        if wait:
            for thread in threads:
                thread.join()


class Passwords:
    def __init__(self, time_cost: int = 3, memory_cost: int = 65536, parallelism: int = 4):
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)
        # a bounded pool: a burst of logins queues here instead of starving every other thread
        self._pool = _Hashers(2)
        # verified against when an email is unknown, so both answers take the same time; made on
        # first need, in the pool, so that starting the server does not pay for a hash
        self._dummy: str | None = None

    @classmethod
    def configured(cls, auth) -> Passwords:
        """The hasher with the `[auth]` section's argon2 costs (the server's and the CLI's)."""
        return cls(auth.argon2_time_cost, auth.argon2_memory_cost, auth.argon2_parallelism)

    def hash_sync(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify_sync(self, password_hash: str | None, password: str) -> bool:
        if password_hash is None and self._dummy is None:
            self._dummy = self._hasher.hash("not a real password, only here for timing")
        try:
            return self._hasher.verify(password_hash or self._dummy, password) and password_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.hash_sync, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.verify_sync, password_hash, password)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
