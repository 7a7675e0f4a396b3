"""capsule-mesh's HTTP gateway: HTTP/JSON in front of the gRPC services.

Everything the gateway serves is derived from the `google.api.http` annotations of the services'
protos (SPEC §2, §7), read once at start-up. A request flows through these modules, in order:

    descriptors  which methods have HTTP bindings (proto modules → HttpBinding)
    templates    one binding's path template, parsed and matched against a request path
    routing      the route table: (verb, path) → binding + path params, or 404 / 405
    bodies       the request body, size-limited and checked for JSON
    fields       JSON values and query strings → message fields, by proto3 JSON rules
    transcoding  path params + body + query → request message; response message → JSON
    upstream     long-lived gRPC channels, one pre-built callable per method, metadata, deadline
    problems     every error as application/problem+json (gRPC status → HTTP status)
    proxy        the endpoint that runs one transcoded call from end to end
    openapi      the OpenAPI 3.1 document, generated from the same bindings
    operations   /healthz, /readyz, /openapi.json, /metrics
    middleware   request ids and the last-resort 500
    metrics      Prometheus metrics by route template, and the access log
    app          assembles the Starlette application; `python -m gateway` serves it
with `settings` (the environment), `naming` (snake_case ↔ lowerCamelCase) and `logs` (JSON
logs carrying the request id) used throughout.
"""
