"""The error answers of each operation in `/openapi.json`: one entry per HTTP status the operation
can return, each an `application/problem+json` body (gateway/problems.py) described by when it
happens.

The statuses come from what the gateway does with every request (SPEC §3, §7: JSON and query
parsing, body size, rate limits, the upstream's deadline and availability) and from what the
services answer, mapped by the gateway as SPEC §3 says (gateway/problems.py `HTTP_STATUS`). What the
protos declare decides what it can: path variables, body, field formats, and whether the method
needs a token (`(capsule.common.v1.anonymous)`); the rest is the explicit method lists below, each
saying where in the services it comes from, and tests/gateway/test_openapi_errors.py holds them to
the handlers.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from capsule.common.v1 import options_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.problems import MEDIA_TYPE, TYPE_PREFIX
from gateway.routing import Route
from gateway.transcoding import Transcoder
from services.common import field_rules

# Anonymous methods that still answer 401: they judge credentials of their own
# (services/auth/accounts.py: a wrong password is INVALID_CREDENTIALS; a refresh token that is not
# valid, expired or already used is TOKEN_INVALID, TOKEN_EXPIRED or REFRESH_TOKEN_REUSED).
CREDENTIAL_METHODS: Mapping[str, str] = {
    "capsule.auth.v1.AuthService.LogIn": "Wrong email, username or password (`INVALID_CREDENTIALS`).",
    "capsule.auth.v1.AuthService.Refresh": (
        "The refresh token is not valid or has expired (`TOKEN_INVALID`, `TOKEN_EXPIRED`), or was already "
        "used, which ends its session (`REFRESH_TOKEN_REUSED`)."
    ),
}

# Methods whose service reads the `idempotency-key` metadata (SPEC §3; README: API): the same key
# with a different request is 409 `IDEMPOTENCY_KEY_REUSED` (services/common/idempotency.py). Only
# these advertise the `Idempotency-Key` header.
IDEMPOTENT_CREATES = frozenset(
    {
        "capsule.auth.v1.AuthService.SignUp",
        "capsule.recipients.v1.RecipientsService.SendConnectionRequest",
        "capsule.recipients.v1.ThoughtsService.SendThought",
        "capsule.capsules.v1.CapsulesService.CreateCapsule",
        "capsule.capsules.v1.SelfLettersService.CreateSelfLetter",
        "capsule.capsules.v1.RepliesService.CreateReply",
        "capsule.capsules.v1.SharesService.CreateShare",
    }
)

# Writes refused with ALREADY_EXISTS (409) when what they would make is taken or already done, by
# the reasons the services give (services/*/: `AlreadyExists`).
CONFLICTS: Mapping[str, str] = {
    "capsule.auth.v1.AuthService.SignUp": "The email or username is taken (`EMAIL_TAKEN`, `USERNAME_TAKEN`).",
    "capsule.auth.v1.AuthService.UpdateMe": "The username is taken (`USERNAME_TAKEN`).",
    "capsule.recipients.v1.RecipientsService.SendConnectionRequest": (
        "Already connected (`ALREADY_CONNECTED`) or a request is already pending (`REQUEST_PENDING`)."
    ),
    "capsule.recipients.v1.RecipientsService.CreateRecipient": (
        "A recipient with this email or linked user is already in the address book "
        "(`RECIPIENT_EMAIL_TAKEN`, `RECIPIENT_LINKED_USER_TAKEN`)."
    ),
    "capsule.recipients.v1.RecipientsService.UpdateRecipient": (
        "A recipient with this email or linked user is already in the address book "
        "(`RECIPIENT_EMAIL_TAKEN`, `RECIPIENT_LINKED_USER_TAKEN`)."
    ),
    "capsule.recipients.v1.ThoughtsService.SendThought": (
        "A thought was already sent to this user today (`THOUGHT_ALREADY_SENT`)."
    ),
    "capsule.capsules.v1.SelfLettersService.ReflectOnSelfLetter": (
        "The self letter was already reflected on (`SELF_LETTER_ALREADY_REFLECTED`)."
    ),
    "capsule.capsules.v1.RepliesService.CreateReply": "The capsule already has a reply (`REPLY_EXISTS`).",
    "capsule.capsules.v1.InvitesService.ClaimInvite": "Someone else claimed the invite first (`INVITE_CLAIMED`).",
}

# PERMISSION_DENIED (403) a gateway caller can meet: a resource the caller may not see is 404
# instead (SPEC §3), so only a check of the caller's own credentials is left.
PERMISSION_CHECKS: Mapping[str, str] = {
    "capsule.auth.v1.AuthService.DeleteMe": "The password is not this account's (`WRONG_PASSWORD`).",
}

# Methods the 404 rule below would name that never answer it: CheckUsername answers whether the
# name is free, UnblockUser is done when no block is left, RegisterDevice (PUT) creates what the
# path names, and CreateRecipient refuses a linked user who is not a connection with 400
# (`NOT_CONNECTED`), whether or not the user exists.
NEVER_NOT_FOUND = frozenset(
    {
        "capsule.auth.v1.AuthService.CheckUsername",
        "capsule.recipients.v1.RecipientsService.UnblockUser",
        "capsule.notifications.v1.DevicesService.RegisterDevice",
        "capsule.recipients.v1.RecipientsService.CreateRecipient",
    }
)

_UUID = options_pb2.FieldRules.FORMAT_UUID


def method_name(route: Route) -> str:
    rpc = route.binding.rpc
    return f"{rpc.service}.{rpc.name}"


def needs_token(route: Route) -> bool:
    """Every public method but those its proto declares `(capsule.common.v1.anonymous)`; the
    services refuse a call without a valid token to the others (services/common/server.py)."""
    return not route.binding.rpc.policy.anonymous


def takes_idempotency_key(route: Route) -> bool:
    return method_name(route) in IDEMPOTENT_CREATES


def error_statuses(route: Route, transcoder: Transcoder) -> dict[int, str]:
    """Every error status the operation can answer, with when (its response's description).

    - 400 everywhere: JSON or query that does not parse or fit the message, a field rule broken,
      a page token not issued by the list, a refusal that depends on the state (FAILED_PRECONDITION).
    - 413 and 415 for an operation with a body: over the gateway's body limit, not JSON.
    - 401 for an operation that needs an access token (not declared anonymous), and for the
      anonymous ones that judge credentials of their own (CREDENTIAL_METHODS).
    - 403 where the service checks the caller's own credentials (PERMISSION_CHECKS).
    - 404 when the route has a path variable (the resource it names may not exist or not be the
      caller's), or the request names another resource by a UUID field (a user, a recipient);
      not for NEVER_NOT_FOUND.
    - 409 for the writes that take an Idempotency-Key (IDEMPOTENT_CREATES) and those that meet
      uniqueness (CONFLICTS).
    - 429 everywhere (the gateway's rate limits, and the services' own daily limits), 500, 503
      (a service or its database unavailable) and 504 (the upstream deadline) everywhere.
    """
    name = method_name(route)
    statuses: dict[int, str] = {400: _describe_400(transcoder)}
    if transcoder.takes_body:
        statuses[413] = "The request body is larger than the gateway's limit (256 KiB) (`BODY_TOO_LARGE`)."
        statuses[415] = "The request body is not `application/json` (`UNSUPPORTED_MEDIA_TYPE`)."
    if needs_token(route):
        statuses[401] = (
            "The access token is missing, expired or not valid, its session ended, or its account no longer "
            "exists (`UNAUTHENTICATED`, `TOKEN_EXPIRED`, `TOKEN_INVALID`, `SESSION_ENDED`)."
        )
    elif name in CREDENTIAL_METHODS:
        statuses[401] = CREDENTIAL_METHODS[name]
    if name in PERMISSION_CHECKS:
        statuses[403] = PERMISSION_CHECKS[name]
    if name in NEVER_NOT_FOUND:
        pass
    elif transcoder.path_parameters:
        statuses[404] = "Nothing the caller may see is named by the path (`NOT_FOUND`)."
    elif _names_a_resource(transcoder):
        statuses[404] = "A resource the request names does not exist or is not the caller's (`NOT_FOUND`)."
    conflicts = []
    if name in IDEMPOTENT_CREATES:
        conflicts.append("The Idempotency-Key was already used for a different request (`IDEMPOTENCY_KEY_REUSED`).")
    if name in CONFLICTS:
        conflicts.append(CONFLICTS[name])
    if conflicts:
        statuses[409] = " ".join(conflicts)
    statuses[429] = "Too many requests from this caller or address; retry after `Retry-After` seconds (`RATE_LIMITED`)."
    statuses[500] = "The server failed to handle the request (`INTERNAL`)."
    statuses[503] = "A service or its database is unavailable; retry shortly (`DEPENDENCY_UNAVAILABLE`)."
    statuses[504] = "The service did not answer within the gateway's deadline (`DEADLINE_EXCEEDED`)."
    return dict(sorted(statuses.items()))


def _describe_400(transcoder: Transcoder) -> str:
    parts = ["A field breaks its rule (`INVALID_FIELDS`, with `fieldViolations`)"]
    if transcoder.takes_body:
        parts.append("the body is not JSON or not an object (`MALFORMED_JSON`, `INVALID_BODY`)")
    parts.append("the query string does not parse (`INVALID_QUERY`)")
    if any(field.name == "page_token" for field in transcoder.input_type.DESCRIPTOR.fields):
        parts.append("the page token was not issued by this list for this caller (`MALFORMED_PAGE_TOKEN`)")
    parts.append("or the state refuses it (`FAILED_PRECONDITION` and the reasons of SPEC §4 to §6)")
    return "; ".join(parts) + "."


def _names_a_resource(transcoder: Transcoder) -> bool:
    """Whether a field outside the path holds a UUID the service looks up (its rule's format)."""
    bound = {p.field.names for p in transcoder.path_parameters}
    return _has_uuid_field(transcoder.input_type.DESCRIPTOR, (), bound, set())


def _has_uuid_field(
    descriptor: Descriptor, prefix: tuple[str, ...], bound: set[tuple[str, ...]], seen: set[str]
) -> bool:
    if descriptor.full_name in seen:
        return False
    for field in descriptor.fields:
        names = (*prefix, field.name)
        if names in bound:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if _has_uuid_field(field.message_type, names, bound, seen | {descriptor.full_name}):
                return True
            continue
        rules = field_rules.declared(field)
        if rules is not None and rules.format == _UUID:
            return True
    return False


# --- components.responses ------------------------------------------------------------------------

# A typical problem of each status: (reason, detail, field violations).
_TYPICAL: Mapping[int, tuple[str, str, list[dict[str, str]]]] = {
    400: (
        "INVALID_FIELDS",
        "The request has invalid fields: email.",
        [{"field": "email", "description": "must be an email address such as name@example.com"}],
    ),
    401: ("TOKEN_EXPIRED", "the access token has expired", []),
    403: (
        "WRONG_PASSWORD",
        "the password is not this account's",
        [{"field": "password", "description": "is not this account's password"}],
    ),
    404: ("NOT_FOUND", "no capsule with this id", []),
    409: (
        "IDEMPOTENCY_KEY_REUSED",
        "this Idempotency-Key was already used for a different request",
        [{"field": "idempotencyKey", "description": "use a new key for a new request"}],
    ),
    413: ("BODY_TOO_LARGE", "The request body is larger than 262144 bytes.", []),
    415: ("UNSUPPORTED_MEDIA_TYPE", "Content-Type 'text/plain' is not supported; send application/json.", []),
    429: ("RATE_LIMITED", "Too many requests; retry in 12 s.", []),
    500: ("INTERNAL", "The server failed to handle the request.", []),
    503: ("DEPENDENCY_UNAVAILABLE", "The service is unavailable; try again shortly.", []),
    504: ("DEADLINE_EXCEEDED", "The service did not answer in time.", []),
}

_GENERIC: Mapping[int, str] = {
    400: "The request is not valid.",
    401: "No valid credentials.",
    403: "The credentials do not allow it.",
    404: "Not found, or not the caller's.",
    409: "It conflicts with what exists.",
    413: "The body is too large.",
    415: "The body is not JSON.",
    429: "Rate limited.",
    500: "Internal error.",
    503: "Unavailable.",
    504: "Timed out upstream.",
}

_HEADERS: Mapping[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": '`Bearer`, or `Bearer error="invalid_token"` for a token that expired or is not valid.',
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {"description": "Seconds until a retry may succeed.", "schema": {"type": "string"}},
        "RateLimit-Limit": {"description": "The limit that was reached (the gateway's).", "schema": {"type": "string"}},
        "RateLimit-Remaining": {"description": "Requests left in the window.", "schema": {"type": "string"}},
        "RateLimit-Reset": {"description": "Seconds until the window resets.", "schema": {"type": "string"}},
    },
}


def response_name(status: int) -> str:
    return f"Problem{status}"


def problem_responses() -> dict[str, Any]:
    """`components.responses`: one problem+json response per status, with a typical example."""
    responses: dict[str, Any] = {}
    for status, (reason, detail, violations) in _TYPICAL.items():
        response: dict[str, Any] = {
            "description": _GENERIC[status],
            "content": {
                MEDIA_TYPE: {
                    "schema": {"$ref": "#/components/schemas/Problem"},
                    "example": {
                        "type": TYPE_PREFIX + reason.lower().replace("_", "-"),
                        "title": HTTPStatus(status).phrase,
                        "status": status,
                        "detail": detail,
                        "reason": reason,
                        "fieldViolations": violations,
                    },
                }
            },
        }
        if status in _HEADERS:
            response["headers"] = _HEADERS[status]
        responses[response_name(status)] = response
    return responses


def operation_responses(route: Route, transcoder: Transcoder) -> dict[str, Any]:
    """The error entries of one operation's `responses`: a reference per status, described."""
    return {
        str(status): {"$ref": f"#/components/responses/{response_name(status)}", "description": description}
        for status, description in error_statuses(route, transcoder).items()
    }
