"""The development provider: logs each push (its kind and platform, never the token) and always
delivers. The default (PUSH_PROVIDER=log), so a local mesh needs no credentials."""

from __future__ import annotations

import logging

from services.notifications.push.base import Device, Message, Outcome

log = logging.getLogger(__name__)


class LogProvider:
    name = "log"

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, device: Device, message: Message) -> Outcome:
        self.sent += 1
        log.info(
            "push (log provider)",
            extra={
                "fields": {"platform": device.platform, "kind": message.data.get("kind", ""), "title": message.title}
            },
        )
        return Outcome.delivered()

    async def aclose(self) -> None:
        return None
