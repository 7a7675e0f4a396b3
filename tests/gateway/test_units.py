"""Unit tests of the pure parts: templates, route table, field conversion, transcoding, settings."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from capsule.auth.v1 import auth_pb2
from capsule.common.v1 import common_pb2
from google.protobuf import api_pb2, field_mask_pb2, struct_pb2, type_pb2, wrappers_pb2
from google.protobuf.message import Message

from gateway.descriptors import DescriptorError, HttpBinding, Rpc
from gateway.fields import EnumValues, InvalidValue
from gateway.naming import camel_path, lower_camel, snake, upper_snake
from gateway.problems import FieldViolation, Problem
from gateway.routing import MethodNotAllowed, RouteMatch, RouteTable
from gateway.settings import Settings
from gateway.templates import TemplateError, parse_template, split_request_path
from gateway.transcoding import NO_BODY, Transcoder

# Templates.


@pytest.mark.parametrize(
    ("template", "path", "params"),
    [
        ("/v1/auth:signup", "/v1/auth:signup", {}),
        ("/v1/usernames/{username}", "/v1/usernames/ann", {"username": "ann"}),
        ("/v1/connection-requests/{id}:accept", "/v1/connection-requests/r1:accept", {"id": "r1"}),
        ("/v1/users/{user.id}/x", "/v1/users/7/x", {"user.id": "7"}),
        ("/v1/{name=shelves/*}", "/v1/shelves/s1", {"name": "shelves/s1"}),
        ("/v1/{name=shelves/*/books/*}:publish", "/v1/shelves/a/books/b:publish", {"name": "shelves/a/books/b"}),
        ("/v1/files/{path=**}", "/v1/files/a/b/c", {"path": "a/b/c"}),
        ("/v1/files/{path=**}", "/v1/files", {"path": ""}),
        ("/v1/*/x", "/v1/anything/x", {}),
    ],
)
def test_templates_match(template: str, path: str, params: dict[str, str]) -> None:
    segments, verb = split_request_path(path)
    parsed = parse_template(template)
    assert verb == parsed.verb
    assert parsed.match(segments) == params


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("/v1/usernames/{username}", "/v1/usernames/"),  # a variable is never empty
        ("/v1/usernames/{username}", "/v1/usernames/a/b"),
        ("/v1/{name=shelves/*}", "/v1/racks/s1"),
        ("/v1/me", "/v1/me/"),
    ],
)
def test_templates_do_not_match(template: str, path: str) -> None:
    segments, _ = split_request_path(path)
    assert parse_template(template).match(segments) is None


@pytest.mark.parametrize(
    "template",
    ["v1/x", "/v1/{a", "/v1/{a.}", "/v1/**/x", "/v1/{a}/{a}", "/v1/{a={b}}", "/v1/x:", "/v1//x", "/v1/{1a}"],
)
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(template)


def test_openapi_paths_keep_verbs_and_name_variables() -> None:
    assert parse_template("/v1/connection-requests/{id}:accept").openapi_path() == "/v1/connection-requests/{id}:accept"
    assert parse_template("/v1/{name=shelves/*}/books").openapi_path() == "/v1/{name}/books"
    assert parse_template("/v1/users/{user.id}").openapi_path() == "/v1/users/{user.id}"


def test_variables_decode_percent_escapes_but_keep_encoded_slashes_in_multi_segment_values() -> None:
    single = parse_template("/v1/x/{id}").variables[0]
    multi = parse_template("/v1/{name=shelves/*}").variables[0]
    assert single.decode("a%2Fb%3Ac%C3%A9") == "a/b:cé"
    assert multi.decode("shelves/a%2Fb") == "shelves/a%2Fb"
    with pytest.raises(UnicodeDecodeError):
        single.decode("%FF")


# Route table.


def rpc(input_type: type[Message] = type_pb2.Type, name: str = "Echo") -> Rpc:
    return Rpc(service="test.v1.TestService", name=name, input_type=input_type, output_type=input_type)


def binding(verb: str, template: str, body: str = "", input_type: type[Message] = type_pb2.Type) -> HttpBinding:
    return HttpBinding(rpc(input_type, name=f"{verb}{template}"), verb, template, body, "", 0)


def test_route_table_prefers_literals_and_never_lets_a_variable_swallow_a_verb() -> None:
    table = RouteTable(
        [
            binding("GET", "/v1/types/{name}"),
            binding("GET", "/v1/types/special"),
            binding("POST", "/v1/types/{name}:accept"),
            binding("DELETE", "/v1/types/{name}"),
        ]
    )
    special = table.resolve("GET", "/v1/types/special")
    assert isinstance(special, RouteMatch)
    assert special.route.binding.template == "/v1/types/special"
    accept = table.resolve("POST", "/v1/types/t1:accept")
    assert isinstance(accept, RouteMatch)
    assert accept.raw_params == {"name": "t1"}
    assert table.resolve("GET", "/v1/types/t1:accept") == MethodNotAllowed(("POST",))
    assert table.resolve("GET", "/v1/types/t1:other") is None
    assert table.resolve("PUT", "/v1/types/t1") == MethodNotAllowed(("DELETE", "GET"))


def test_route_table_refuses_two_methods_on_one_route() -> None:
    with pytest.raises(DescriptorError):
        RouteTable([binding("GET", "/v1/types/{name}"), binding("GET", "/v1/types/{id}")])


# Enums.


def test_enum_values_by_exact_name_short_name_any_case_or_number() -> None:
    cardinality = EnumValues(type_pb2.Field.Cardinality.DESCRIPTOR)
    assert cardinality.parse("CARDINALITY_REPEATED", from_text=False) == 3
    assert cardinality.parse("repeated", from_text=True) == 3
    assert cardinality.parse("Cardinality_Repeated", from_text=True) == 3
    assert cardinality.parse("3", from_text=True) == 3
    assert cardinality.parse(3, from_text=False) == 3
    with pytest.raises(InvalidValue, match=r"^must be one of unknown, optional, required, repeated$"):
        cardinality.parse("sometimes", from_text=True)
    with pytest.raises(InvalidValue, match=r"^must be one of CARDINALITY_UNKNOWN, CARDINALITY_OPTIONAL, CARD"):
        cardinality.parse(True, from_text=False)
    # A zero value named *_UNSPECIFIED is accepted but not advertised.
    reasons = EnumValues(common_pb2.ErrorReason.DESCRIPTOR)
    assert reasons.parse("error_reason_unspecified", from_text=True) == 0
    assert reasons.parse("invalid_fields", from_text=True) == common_pb2.INVALID_FIELDS
    with pytest.raises(InvalidValue) as caught:
        reasons.parse("nope", from_text=True)
    assert str(caught.value).startswith("must be one of invalid_fields, malformed_page_token, unauthenticated")
    # Kind's values share the prefix TYPE_, not KIND_: the common prefix is used.
    kind = EnumValues(type_pb2.Field.Kind.DESCRIPTOR)
    assert kind.parse("string", from_text=True) == type_pb2.Field.TYPE_STRING


# Transcoding.


def transcoder(
    verb: str = "GET", template: str = "/v1/types/{name}", body: str = "", input_type: type[Message] = type_pb2.Type
) -> Transcoder:
    table = RouteTable([binding(verb, template, body, input_type)])
    route = table.routes[0]
    return Transcoder(route.binding, route.template)


def invalid(call: Any) -> dict[str, str]:
    with pytest.raises(Problem) as caught:
        call()
    assert caught.value.status == 400
    return {v.field: v.description for v in caught.value.violations}


def test_query_parameters_nest_repeat_and_parse_enums() -> None:
    query = [
        ("oneofs", "a"),
        ("oneofs", "b"),
        ("syntax", "proto3"),
        ("sourceContext.fileName", "x.proto"),
        ("source_context.file_name", "y.proto"),
        ("edition", ""),
    ]
    t = transcoder()
    message = invalid(lambda: t.request({"name": "t1"}, NO_BODY, query))
    assert message == {"sourceContext.fileName": "is given more than once"}

    request = t.request({"name": "t%201"}, NO_BODY, query[:4])
    assert request == type_pb2.Type(
        name="t 1", oneofs=["a", "b"], syntax=type_pb2.SYNTAX_PROTO3, source_context={"file_name": "x.proto"}
    )


def test_query_parameter_errors_name_the_field() -> None:
    t = transcoder()
    assert invalid(
        lambda: t.request({"name": "x"}, NO_BODY, [("syntax", "proto4"), ("fields", "x"), ("nope", "1")])
    ) == {
        "syntax": "must be one of proto2, proto3, editions",
        "fields": "cannot be a query parameter (set it in a JSON body)",
        "nope": "is not a field of Type",
    }
    assert invalid(lambda: t.request({"name": "%FF"}, NO_BODY, [])) == {
        "name": "is not valid UTF-8 once percent-decoded"
    }


def test_scalar_query_values_are_parsed_strictly() -> None:
    t = transcoder(input_type=type_pb2.Field, template="/v1/fields/{name}")
    request = t.request({"name": "f"}, NO_BODY, [("number", "-7"), ("packed", "TRUE"), ("kind", "TYPE_INT64")])
    assert request == type_pb2.Field(name="f", number=-7, packed=True, kind=type_pb2.Field.TYPE_INT64)
    bad = [("number", "1.5"), ("packed", "yes"), ("oneofIndex", " 1"), ("kind", "")]
    found = invalid(lambda: t.request({"name": "f"}, NO_BODY, bad))
    assert found.pop("kind").startswith("must be one of unknown, double, float, int64,")
    assert found == {
        "number": "must be an integer",
        "packed": "must be true or false",
        "oneofIndex": "must be an integer",
    }


def test_json_bodies_follow_the_proto3_mapping() -> None:
    t = transcoder("POST", "/v1/types", "*")
    body = {
        "name": "T",
        "fields": [{"number": "3", "kind": "TYPE_STRING", "jsonName": "x"}, {"number": 4.0, "cardinality": 1}],
        "syntax": "SYNTAX_PROTO3",
        "sourceContext": None,
        "options": [{"name": "o", "value": {"@type": "type.googleapis.com/google.protobuf.Int32Value", "value": 5}}],
    }
    request = t.request({}, body, [])
    assert isinstance(request, type_pb2.Type)
    assert request.fields[0].number == 3 and request.fields[0].kind == type_pb2.Field.TYPE_STRING
    assert request.fields[1].number == 4 and request.fields[1].cardinality == 1
    assert not request.HasField("source_context")
    unpacked = wrappers_pb2.Int32Value()
    assert request.options[0].value.Unpack(unpacked) and unpacked.value == 5


def test_json_body_errors_are_all_named_with_their_paths() -> None:
    t = transcoder("POST", "/v1/types", "*")
    body = {
        "name": 1,
        "fields": [{"number": 1.5}, {"number": "x", "kind": "TYPE_NOPE"}, "field"],
        "oneofs": "a",
        "syntax": 99,
        "sourceContext": {"fileName": ["x"]},
        "options": [{"value": {"no": "type"}}],
    }
    found = invalid(lambda: t.request({}, body, []))
    assert found.pop("fields[1].kind").startswith("must be one of TYPE_UNKNOWN, TYPE_DOUBLE, TYPE_FLOAT,")
    assert found == {
        "name": "must be a string",
        "fields[0].number": "must be an integer",
        "fields[1].number": "must be an integer",
        "fields[2]": "must be an object",
        "oneofs": "must be an array",
        "sourceContext.fileName": "must be a string",
        "options[0].value": "is not a valid Any",
    }
    # Proto3 enums are open: an unknown number is kept, not refused.
    assert t.request({}, {"syntax": 7}, []).syntax == 7  # type: ignore[attr-defined]


def test_numbers_are_range_checked() -> None:
    t = transcoder("POST", "/v1/fields", "*", input_type=type_pb2.Field)
    assert invalid(lambda: t.request({}, {"number": 2**31}, [])) == {
        "number": "must be an integer from -2147483648 to 2147483647"
    }
    assert invalid(lambda: t.request({}, {"number": True}, [])) == {"number": "must be an integer"}


def test_well_known_types_in_json_and_query() -> None:
    t = transcoder("POST", "/v1/methods", "*", input_type=api_pb2.Method)
    assert t.request({}, {"requestStreaming": True, "options": []}, []) == api_pb2.Method(request_streaming=True)

    values = transcoder("POST", "/v1/values", "*", input_type=struct_pb2.Struct)
    assert values.request({}, {"fields": {"a": {"b": [1, None]}}}, []).ByteSize() > 0

    users = transcoder("GET", "/v1/users/{id}", input_type=auth_pb2.User)
    user = users.request({"id": "u"}, NO_BODY, [("createdAt", "2030-01-31T09:00:00Z")])
    assert user.created_at.seconds == 1_896_080_400  # type: ignore[attr-defined]
    assert invalid(lambda: users.request({"id": "u"}, NO_BODY, [("createdAt", "soon")])) == {
        "createdAt": "must be an RFC 3339 timestamp such as 2030-01-31T09:00:00Z"
    }

    updates = transcoder("PATCH", "/v1/me", "user", input_type=auth_pb2.UpdateMeRequest)
    request = updates.request({}, {}, [("update_mask", "firstName, last_name")])
    assert request.update_mask == field_mask_pb2.FieldMask(paths=["first_name", "last_name"])  # type: ignore[attr-defined]
    assert invalid(lambda: updates.request({}, {}, [("updateMask", "first name")])) == {
        "updateMask": "must be a comma-separated list of field names such as firstName,lastName"
    }


def test_path_values_win_over_body_values() -> None:
    t = transcoder("POST", "/v1/types/{name}:copy", "*")
    assert t.request({"name": "from-path"}, {"name": "from-body"}, []).name == "from-path"  # type: ignore[attr-defined]


def test_a_body_that_is_not_an_object_is_refused() -> None:
    t = transcoder("POST", "/v1/types", "*")
    with pytest.raises(Problem) as caught:
        t.request({}, [1], [])
    assert caught.value.reason == "INVALID_BODY"


def test_update_mask_is_filled_only_for_patch_with_a_body_field() -> None:
    patch = transcoder("PATCH", "/v1/me", "user", input_type=auth_pb2.UpdateMeRequest)
    request = patch.request({}, {"firstName": "A", "last_name": "B", "country": None}, [])
    assert list(request.update_mask.paths) == ["first_name", "last_name", "country"]  # type: ignore[attr-defined]

    put = transcoder("PUT", "/v1/me", "user", input_type=auth_pb2.UpdateMeRequest)
    assert list(put.request({}, {"firstName": "A"}, []).update_mask.paths) == []  # type: ignore[attr-defined]


def test_path_variables_must_name_singular_scalar_fields() -> None:
    with pytest.raises(DescriptorError):
        transcoder(template="/v1/types/{fields}")
    with pytest.raises(DescriptorError):
        transcoder(template="/v1/types/{nope}")


# Names, problems, settings.


def test_names() -> None:
    assert lower_camel("first_name") == "firstName"
    assert snake("firstName") == "first_name"
    assert snake("first_name") == "first_name"
    assert camel_path("user.first_name") == "user.firstName"
    assert camel_path("recipients[3].linked_user_id") == "recipients[3].linkedUserId"
    assert upper_snake("CapsuleStatus") == "CAPSULE_STATUS"


def test_problem_documents() -> None:
    body = Problem.invalid_fields([FieldViolation("email", "is required")]).to_dict()
    assert body == {
        "type": "urn:capsule-mesh:problem:invalid-fields",
        "title": "Bad Request",
        "status": 400,
        "detail": "The request has invalid fields: email.",
        "reason": "INVALID_FIELDS",
        "fieldViolations": [{"field": "email", "description": "is required"}],
    }


def test_settings_from_env() -> None:
    settings = Settings.from_env(
        {
            "GATEWAY_LISTEN": "0.0.0.0:9000",
            "GATEWAY_PROTO_MODULES": "capsule.auth.v1.auth_pb2, capsule.recipients.v1.recipients_pb2",
            "GATEWAY_UPSTREAM": "envoy:10000",
            "GATEWAY_UPSTREAM_CAPSULE_AUTH_V1_AUTHSERVICE": "auth:50051",
            "GATEWAY_CALL_TIMEOUT_SECONDS": "2.5",
        }
    )
    assert (settings.listen_host, settings.listen_port) == ("0.0.0.0", 9000)
    assert settings.proto_modules == ("capsule.auth.v1.auth_pb2", "capsule.recipients.v1.recipients_pb2")
    assert settings.upstream_for("capsule.auth.v1.AuthService") == "auth:50051"
    assert settings.upstream_for("capsule.recipients.v1.RelationshipService") == "envoy:10000"
    assert settings.call_timeout_seconds == 2.5
    assert Settings.from_env({}).proto_modules == ("capsule.auth.v1.auth_pb2",)
    with pytest.raises(SystemExit):
        Settings.from_env({"GATEWAY_CALL_TIMEOUT_SECONDS": "soon"})


def test_the_access_log_never_writes_a_capability_token(caplog: pytest.LogCaptureFixture) -> None:
    from gateway import metrics

    caplog.set_level(logging.DEBUG, logger="gateway.access")
    token = "T" * 43
    metrics.record({"method": "GET", "path": f"/v1/shares/{token}"}, "/v1/shares/{token}", 200, 0.001)
    metrics.record({"method": "GET", "path": "/v1/capsules/abc"}, "/v1/capsules/{id}", 200, 0.001)
    paths = [r.fields["path"] for r in caplog.records if r.name == "gateway.access"]  # type: ignore[attr-defined]
    assert paths == ["/v1/shares/{token}", "/v1/capsules/abc"]
    assert token not in caplog.text
