"""The real mesh through the `stack` fixture: the README's round trip works as written.

HTTP sign-up / log-in / me through gateway → Envoy → auth, and grpcurl through Envoy (server
reflection routed to auth). The deeper auth behaviour is tested in tests/auth.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from launcher.stack import Stack

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


async def test_sign_up_log_in_and_me_through_the_gateway(client: Any) -> None:
    name = f"readme{uuid.uuid4().hex[:8]}"
    body = {
        "email": f"{name}@example.com",
        "username": name,
        "password": "correct horse battery",
        "firstName": "Ada",
        "lastName": "Lovelace",
    }
    signup = await client.post("/v1/auth:signup", json=body)
    assert signup.status_code == 200, signup.text
    assert {"user", "accessToken", "refreshToken", "expiresIn"} <= set(signup.json())
    login = await client.post("/v1/auth:login", json={"username": name, "password": "correct horse battery"})
    assert login.status_code == 200, login.text
    me = await client.get("/v1/me", headers={"Authorization": f"Bearer {login.json()['accessToken']}"})
    assert me.status_code == 200, me.text
    assert me.json()["username"] == name


def test_grpcurl_lists_services_through_envoy(stack: Stack) -> None:
    result = subprocess.run(
        [GRPCURL, *stack.grpcurl_args(), stack.envoy_grpc, "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "capsule.auth.v1.AuthService" in result.stdout.split()


def test_every_instance_is_healthy_in_envoy(stack: Stack) -> None:
    for service, instances in stack.instances.items():
        assert len(instances) >= 2
        assert stack.envoy_health(service) == {i.grpc_address: True for i in instances}


def test_the_stack_uses_its_own_databases_and_cache_prefix(stack: Stack) -> None:
    assert stack.database_urls["auth"].rsplit("/", 1)[1].startswith("auth_t")
    assert stack.cache_prefix.startswith("test:")


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_gateway_health_routes(client: Any, path: str) -> None:
    assert (await client.get(path)).status_code == 200
