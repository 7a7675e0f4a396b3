"""argon2id password hashing, off the event loop (argon2-cffi releases the GIL while hashing)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from prometheus_client import Counter

# Each run costs tens of milliseconds of a core (memory-hard by design): the auth service's main
# CPU cost, and what a flood of log-ins or retried sign-ups would spend.
ARGON2_RUNS = Counter("auth_argon2_runs_total", "argon2id computations", ["op"])
_HASHES = ARGON2_RUNS.labels("hash")
_VERIFIES = ARGON2_RUNS.labels("verify")


class Passwords:
    def __init__(self, *, time_cost: int, memory_kib: int, parallelism: int, threads: int = 4) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="argon2")
        # Verified against when an account does not exist, so that log-in takes the same time
        # whether or not it does (SPEC §3).
        self._dummy_hash = self._hasher.hash("not a real password, only spends the same time")

    async def hash(self, password: str) -> str:
        _HASHES.inc()
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether `password` matches; with no hash, spends the time of a check and says no."""
        target = password_hash or self._dummy_hash

        def check() -> bool:
            try:
                return self._hasher.verify(target, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        _VERIFIES.inc()
        ok = await asyncio.get_running_loop().run_in_executor(self._pool, check)
        return ok and password_hash is not None

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
