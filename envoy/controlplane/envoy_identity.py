"""Envoy's certificate, minted and renewed by the control plane and delivered over SDS (SPEC §12).

Why here: Envoy's listener and clusters take their certificate from SDS secrets on the ADS stream
(mesh/envoy_config.py), and the control plane holds the mesh CA key anyway (it signs nothing else
on the data path). Minting in-process means no file to share with Envoy and no restart: a renewal
is a new Secret version on the stream Envoy already has, and Envoy hands the new certificate to
every new TLS handshake while the connections already open keep going.

When: at start-up (the first snapshot must carry it, or Envoy's TLS resources would warm forever),
then at half the certificate's life (SPEC §12: ≤ 24 h, renewed at half), and whenever an operator
or a test calls `rotate()`. The wall clock decides "half the life" (certificates are wall-clock
objects); the waiting itself is bounded to `RECHECK_SECONDS` at a time so a suspended or re-set
clock is noticed. A failed renewal keeps the current certificate and is retried.

Only the connection Envoy opens to the control plane itself cannot use SDS (the stream has to
exist first): that identity is a file (build_xds_bootstrap's tls_dir), written by whoever runs
Envoy.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from pathlib import Path

from mesh.pki import ENVOY, MAX_TTL, Issued, MeshCA

log = logging.getLogger(__name__)

RECHECK_SECONDS = 300.0
RETRY_SECONDS = 10.0


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class EnvoyIdentity:
    """Issues Envoy's certificate from the mesh CA and hands each new one to `publish`."""

    def __init__(
        self,
        ca: MeshCA,
        publish: Callable[[Issued], None],
        *,
        ttl: datetime.timedelta = MAX_TTL,
        clock: Callable[[], datetime.datetime] = _now,
    ) -> None:
        self._ca = ca
        self._publish = publish
        self._ttl = ttl
        self._clock = clock
        self.current: Issued | None = None
        self.renew_at = clock()

    @classmethod
    def load(cls, ca_dir: Path, publish: Callable[[Issued], None], *, ttl: datetime.timedelta) -> EnvoyIdentity:
        return cls(MeshCA.load(ca_dir), publish, ttl=ttl)

    def rotate(self) -> Issued:
        """A new certificate for Envoy, published at once; the next renewal at half its life."""
        issued_at = self._clock()
        issued = self._ca.issue(ENVOY, ttl=self._ttl)
        self.current = issued
        self.renew_at = issued_at + (issued.not_after - issued_at) / 2
        self._publish(issued)
        log.info(
            "Envoy certificate issued",
            extra={"fields": {"not_after": issued.not_after.isoformat(), "renew_at": self.renew_at.isoformat()}},
        )
        return issued

    def seconds_to_renewal(self) -> float:
        return (self.renew_at - self._clock()).total_seconds()

    async def renew_forever(self) -> None:
        """Renew at half life, for ever (a background task of the control plane)."""
        while True:
            wait = self.seconds_to_renewal()
            if wait > 0:
                # A timer, not synchronisation: re-read the clock at least every RECHECK_SECONDS.
                await asyncio.sleep(min(wait, RECHECK_SECONDS))
                continue
            try:
                self.rotate()
            except Exception:
                log.exception("Envoy certificate not renewed; keeping the current one and retrying")
                await asyncio.sleep(RETRY_SECONDS)
