"""The gateway's proxyless mode: its xDS bootstrap and the targets its settings choose."""

from __future__ import annotations

import json

import httpx
import pytest

from gateway import xds
from gateway.app import create_app
from gateway.settings import Settings
from tests.gateway.conftest import serve


def test_the_bootstrap_names_the_control_plane_and_a_node_unique_per_process() -> None:
    environ: dict[str, str] = {}
    node = xds.install_bootstrap("127.0.0.1:18000", zone="z1", environ=environ)
    bootstrap = json.loads(environ["GRPC_XDS_BOOTSTRAP_CONFIG"])
    assert bootstrap["xds_servers"][0]["server_uri"] == "127.0.0.1:18000"
    assert bootstrap["xds_servers"][0]["channel_creds"] == [{"type": "insecure"}]
    assert bootstrap["node"] == {"id": node, "cluster": xds.NODE_CLUSTER, "locality": {"zone": "z1"}}
    assert xds.node_id() != xds.node_id()


def test_a_bootstrap_the_environment_already_names_is_left_alone() -> None:
    for name in xds.BOOTSTRAP_VARIABLES:
        environ = {name: "/etc/grpc/bootstrap.json"}
        assert xds.install_bootstrap("127.0.0.1:18000", environ=environ) is None
        assert environ == {name: "/etc/grpc/bootstrap.json"}


def test_settings_choose_xds_targets_per_package_and_keep_overrides() -> None:
    env = {
        "GATEWAY_XDS_SERVER": "control-plane:18000",
        "GATEWAY_UPSTREAM_CAPSULE_CAPSULES_V1_CAPSULESSERVICE": "127.0.0.1:50051",
    }
    settings = Settings.from_env(env)
    assert settings.xds_server == "control-plane:18000"
    assert settings.upstream_for("capsule.auth.v1.AuthService") == "xds:///capsule.auth.v1"
    assert settings.upstream_for("capsule.recipients.v1.RelationshipService") == "xds:///capsule.recipients.v1"
    assert settings.upstream_for("capsule.capsules.v1.CapsulesService") == "127.0.0.1:50051"
    assert Settings.from_env({}).upstream_for("capsule.auth.v1.AuthService") == "127.0.0.1:10000"
    with pytest.raises(SystemExit):
        Settings.from_env({"GATEWAY_XDS_SERVER": "no-port"})


async def test_readyz_is_503_while_the_control_plane_is_unreachable(
    dead_target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proxyless, /readyz means: every xds channel has its resources and a connected instance."""
    # Through monkeypatch (the gateway would write os.environ itself, for the rest of the session).
    bootstrap = xds.build_bootstrap(dead_target, node=xds.node_id())
    monkeypatch.delenv("GRPC_XDS_BOOTSTRAP", raising=False)
    monkeypatch.setenv("GRPC_XDS_BOOTSTRAP_CONFIG", json.dumps(bootstrap))
    app = create_app(Settings(xds_server=dead_target, ready_timeout_seconds=0.3))
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/readyz")
        healthy = await http.get("/healthz")
    assert response.status_code == 503
    assert response.json()["reason"] == "DEPENDENCY_UNAVAILABLE"
    assert healthy.status_code == 200
