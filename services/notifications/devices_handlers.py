"""gRPC handlers of capsule.notifications.v1.DevicesService: decode, authenticate, call the domain
(devices.py), encode."""

from __future__ import annotations

from typing import TypeAlias

import grpc
from capsule.notifications.v1 import devices_pb2 as pb
from capsule.notifications.v1 import devices_pb2_grpc

from services.common.timestamps import set_timestamp
from services.common.tokens import Authenticator
from services.notifications.devices import Devices
from services.notifications.push.storage import DeviceRow

Context: TypeAlias = grpc.aio.ServicerContext

PLATFORMS = {pb.DEVICE_PLATFORM_FCM: "fcm", pb.DEVICE_PLATFORM_APNS: "apns"}
WIRE = {name: number for number, name in PLATFORMS.items()}


class DevicesHandlers(devices_pb2_grpc.DevicesServiceServicer):
    def __init__(self, devices: Devices, authenticator: Authenticator) -> None:
        self.devices = devices
        self.auth = authenticator

    async def RegisterDevice(self, request: pb.RegisterDeviceRequest, context: Context) -> pb.Device:
        caller = await self.auth.require(context)
        row = await self.devices.register(caller, request.token, PLATFORMS.get(request.platform, ""))
        return _device(row)

    async def UnregisterDevice(
        self, request: pb.UnregisterDeviceRequest, context: Context
    ) -> pb.UnregisterDeviceResponse:
        caller = await self.auth.require(context)
        await self.devices.unregister(caller, request.token)
        return pb.UnregisterDeviceResponse()

    async def ListDevices(self, request: pb.ListDevicesRequest, context: Context) -> pb.ListDevicesResponse:
        caller = await self.auth.require(context)
        page = await self.devices.list(caller, request.page_size, request.page_token)
        return pb.ListDevicesResponse(devices=[_device(row) for row in page.rows], next_page_token=page.next_page_token)


def _device(row: DeviceRow) -> pb.Device:
    message = pb.Device(token=row.token, platform=WIRE[row.platform])  # type: ignore[arg-type]
    set_timestamp(message.created_at, row.created_at)
    if row.last_success_at is not None:
        set_timestamp(message.last_success_at, row.last_success_at)
    return message
