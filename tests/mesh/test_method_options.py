"""What the protos declare about methods (mesh/catalog.py), read from the generated descriptors:
the route policies of our own method options, and the retryable methods of `idempotency_level`."""

from __future__ import annotations

from capsule.auth.v1 import auth_pb2

from mesh.catalog import (
    NO_POLICY,
    HttpCaching,
    LogIn,
    MethodPolicy,
    declared_policies,
    method_policy,
    retryable_methods,
)

THEMES = MethodPolicy(http_cache=HttpCaching(public=True, max_age_seconds=3600), anonymous=True)
ANONYMOUS = MethodPolicy(anonymous=True)


def test_the_route_policies_are_those_the_protos_declare() -> None:
    """Every method of the mesh that declares a policy, and nothing else: themes public for an
    hour, a countdown share and an invite's preview public for a minute, search private for 30 s,
    LogIn the log-in named by email, else username; the methods that need no token."""
    assert dict(declared_policies()) == {
        "/capsule.auth.v1.AuthService/SignUp": ANONYMOUS,
        "/capsule.auth.v1.AuthService/LogIn": MethodPolicy(
            login=LogIn(account_fields=("email", "username"), json_keys=("email", "username")), anonymous=True
        ),
        "/capsule.auth.v1.AuthService/Refresh": ANONYMOUS,
        "/capsule.auth.v1.AuthService/LogOut": ANONYMOUS,
        "/capsule.auth.v1.AuthService/CheckUsername": ANONYMOUS,
        "/capsule.auth.v1.AuthService/SearchUsers": MethodPolicy(
            http_cache=HttpCaching(public=False, max_age_seconds=30)
        ),
        "/capsule.capsules.v1.ThemesService/ListThemes": THEMES,
        "/capsule.capsules.v1.ThemesService/GetTheme": THEMES,
        "/capsule.capsules.v1.SharesService/GetShare": MethodPolicy(
            http_cache=HttpCaching(public=True, max_age_seconds=60), anonymous=True
        ),
        "/capsule.capsules.v1.InvitesService/GetInvite": MethodPolicy(
            http_cache=HttpCaching(public=True, max_age_seconds=60), anonymous=True
        ),
    }


def test_a_method_without_options_declares_no_policy() -> None:
    methods = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].methods_by_name
    assert method_policy(methods["GetMe"]) is NO_POLICY
    assert method_policy(methods["UpdateMe"]) is NO_POLICY
    assert method_policy(methods["SignUp"]) == ANONYMOUS


def test_retryable_methods_follow_idempotency_level() -> None:
    retryable = retryable_methods()
    assert "/capsule.auth.v1.AuthService/GetMe" in retryable  # NO_SIDE_EFFECTS
    assert "/capsule.auth.v1.AuthService/LogOut" in retryable  # IDEMPOTENT
    assert "/capsule.auth.v1.AuthService/LogIn" not in retryable
    assert not any(path.startswith("/capsule.mesh.") for path in retryable)  # the control plane's own API
