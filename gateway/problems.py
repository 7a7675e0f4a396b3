"""Every error the gateway answers, as an RFC 9457 `application/problem+json` document.

    {"type", "title", "status", "detail", "reason", "fieldViolations": [{"field", "description"}]}

`reason` is machine-readable (a `capsule.common.v1.ErrorReason` name where one fits); field names
are JSON paths in lowerCamelCase. Upstream errors are mapped from the gRPC status (SPEC §3) and
its `google.rpc` details; the gateway's own errors (bad JSON, unknown route, ...) are built by
the constructors below. A 5xx never carries internals: its detail is generic unless a service
chose the message itself (a rich status), and an INTERNAL one is always generic.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus

import grpc
import orjson
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from starlette.responses import Response

from gateway.naming import camel_path

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:capsule-mesh:problem:"
STATUS_DETAILS_KEY = "grpc-status-details-bin"

# SPEC §3 (grpc-gateway's runtime/errors.go, except that the rest is 500 as the spec says).
HTTP_STATUS: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

# The reason when a status carries no google.rpc.ErrorInfo (e.g. made by Envoy or the channel).
_DEFAULT_REASONS: Mapping[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAUTHENTICATED: "UNAUTHENTICATED",
    grpc.StatusCode.NOT_FOUND: "NOT_FOUND",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "RATE_LIMITED",
    grpc.StatusCode.UNAVAILABLE: "DEPENDENCY_UNAVAILABLE",
}

# The detail of a 5xx the service did not word itself (transport errors name internal addresses).
_GENERIC_DETAILS: Mapping[int, str] = {
    500: "The server failed to handle the request.",
    503: "The service is unavailable; try again shortly.",
    504: "The service did not answer in time.",
}


@dataclass(frozen=True)
class FieldViolation:
    field: str  # JSON path in lowerCamelCase: user.firstName, ids[3]
    description: str


class Problem(Exception):
    def __init__(
        self,
        status: int,
        reason: str,
        detail: str,
        violations: Sequence[FieldViolation] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.violations = tuple(violations)
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, object]:
        return {
            "type": TYPE_PREFIX + self.reason.lower().replace("_", "-"),
            "title": _title(self.status),
            "status": self.status,
            "detail": self.detail,
            "reason": self.reason,
            "fieldViolations": [{"field": v.field, "description": v.description} for v in self.violations],
        }

    def body(self) -> bytes:
        return orjson.dumps(self.to_dict())

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """Content-Type and the problem's own headers, as an ASGI header list."""
        return [
            (b"content-type", MEDIA_TYPE.encode()),
            *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in self.headers.items()),
        ]

    def response(self) -> Response:
        """As a Starlette response (the operational routes and the router's own 404/405)."""
        return Response(self.body(), self.status, self.headers, MEDIA_TYPE)

    # The gateway's own errors.

    @classmethod
    def invalid_fields(cls, violations: Sequence[FieldViolation], detail: str = "") -> Problem:
        if not detail:
            names = ", ".join(dict.fromkeys(v.field or "(body)" for v in violations))
            detail = f"The request has invalid fields: {names}."
        return cls(400, "INVALID_FIELDS", detail, violations)

    @classmethod
    def malformed_json(cls, why: str) -> Problem:
        return cls(400, "MALFORMED_JSON", f"The request body is not valid JSON: {why}.")

    @classmethod
    def invalid_body(cls, detail: str) -> Problem:
        return cls(400, "INVALID_BODY", detail)

    @classmethod
    def body_too_large(cls, limit: int) -> Problem:
        return cls(413, "BODY_TOO_LARGE", f"The request body is larger than {limit} bytes.")

    @classmethod
    def unsupported_media_type(cls, content_type: str) -> Problem:
        return cls(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"Content-Type {content_type!r} is not supported; send application/json.",
            headers={"Accept": "application/json"},
        )

    @classmethod
    def not_found(cls, path: str) -> Problem:
        return cls(404, "NOT_FOUND", f"No route matches {path}.")

    @classmethod
    def method_not_allowed(cls, method: str, allowed: Iterable[str]) -> Problem:
        allow = ", ".join(allowed)
        return cls(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed here; use {allow}.", headers={"Allow": allow})

    @classmethod
    def internal(cls) -> Problem:
        return cls(500, "INTERNAL", _GENERIC_DETAILS[500])

    @classmethod
    def not_ready(cls) -> Problem:
        return cls(503, "DEPENDENCY_UNAVAILABLE", "The gateway is not connected to its upstream services yet.")

    # Upstream errors.

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError) -> Problem:
        code = error.code()
        status = HTTP_STATUS.get(code, 500)
        rich = rich_status(error.trailing_metadata())
        info, bad_request, retry = _details(rich)
        violations = [
            FieldViolation(camel_path(v.field), v.description)
            for v in (bad_request.field_violations if bad_request else ())
        ]
        reason = info.reason if info and info.reason else _default_reason(code, status, violations)
        message = error.details() or (rich.message if rich else "")
        if status == 500 or (status > 500 and rich is None) or not message:
            detail = _GENERIC_DETAILS.get(status) or _title(status)
        else:
            detail = message
        if status >= 500:
            log.warning("upstream error %s: %s", code.name, error.details())
        headers: dict[str, str] = {}
        if status == 401:
            invalid = reason in ("TOKEN_EXPIRED", "TOKEN_INVALID")
            headers["WWW-Authenticate"] = 'Bearer error="invalid_token"' if invalid else "Bearer"
        if retry is not None and retry.HasField("retry_delay"):
            delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
            headers["Retry-After"] = str(max(1, math.ceil(delay)))
        return cls(status, reason, detail, violations, headers)


def rich_status(trailing_metadata: object) -> status_pb2.Status | None:
    """The google.rpc.Status a service attached as `grpc-status-details-bin`, if any."""
    for key, value in trailing_metadata or ():  # type: ignore[attr-defined]
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                log.warning("ignoring undecodable %s trailer", STATUS_DETAILS_KEY)
                return None
    return None


def _details(
    rich: status_pb2.Status | None,
) -> tuple[error_details_pb2.ErrorInfo | None, error_details_pb2.BadRequest | None, error_details_pb2.RetryInfo | None]:
    info = bad_request = retry = None
    for packed in rich.details if rich else ():
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            packed.Unpack(bad_request)
        elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
    return info, bad_request, retry


def _default_reason(code: grpc.StatusCode, status: int, violations: Sequence[FieldViolation]) -> str:
    if code is grpc.StatusCode.INVALID_ARGUMENT and violations:
        return "INVALID_FIELDS"
    if status == 500:
        return "INTERNAL"
    return _DEFAULT_REASONS.get(code, code.name)


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
