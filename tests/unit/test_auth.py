"""API keys on a real Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aredis

from kinemesh.services.common.auth import Authenticator, create_key, extract_key, key_digest, revoke_key
from kinemesh.services.common.errors import Unauthenticated
from kinemesh.services.common.jobstore import Keys


@pytest.fixture
def env(redis_url: str, key_prefix: str):
    return redis.Redis.from_url(redis_url, decode_responses=True), Keys(key_prefix), redis_url


def _auth(redis_url: str, keys: Keys, **kw) -> Authenticator:
    return Authenticator(aredis.Redis.from_url(redis_url, decode_responses=True), keys, "pepper", **kw)


def test_key_is_stored_hashed_and_resolves_to_its_tenant(env) -> None:
    client, keys, url = env
    key_id, api_key = create_key(client, keys, "acme", "pepper")
    stored = [k for k in client.scan_iter(match=f"{keys.prefix}:*")]
    dump = " ".join(stored) + " ".join(str(client.hgetall(k)) for k in stored if client.type(k) == "hash")
    assert api_key not in dump and api_key.split("_")[-1] not in dump, "the key must never be stored in clear"
    assert keys.api_key(key_digest(api_key, "pepper")) in stored
    principal = asyncio.run(_auth(url, keys, allow_dev_key=False).authenticate(api_key))
    assert (principal.tenant, principal.key_id) == ("acme", key_id)


def test_wrong_pepper_or_revoked_key_is_rejected(env) -> None:
    client, keys, url = env
    key_id, api_key = create_key(client, keys, "acme", "pepper")
    other = Authenticator(aredis.Redis.from_url(url, decode_responses=True), keys, "other-pepper", False)
    with pytest.raises(Unauthenticated):
        asyncio.run(other.authenticate(api_key))
    assert revoke_key(client, keys, key_id)
    with pytest.raises(Unauthenticated):
        asyncio.run(_auth(url, keys, allow_dev_key=False).authenticate(api_key))


def test_dev_key_only_when_allowed(env) -> None:
    _, keys, url = env
    with pytest.raises(Unauthenticated):
        asyncio.run(_auth(url, keys, allow_dev_key=False).authenticate("dev"))
    assert asyncio.run(_auth(url, keys, allow_dev_key=True).authenticate("dev")).tenant == "dev"


@pytest.mark.parametrize("tenant", ["", "UPPER", "has space", "-lead", "x" * 64])
def test_bad_tenant_names(env, tenant: str) -> None:
    client, keys, _ = env
    with pytest.raises(ValueError):
        create_key(client, keys, tenant, "pepper")


def test_extract_key_headers() -> None:
    assert extract_key("Bearer abc", None) == "abc"
    assert extract_key("bearer  abc ", None) == "abc"
    assert extract_key(None, "xyz") == "xyz"
    for auth in (None, "Basic abc", "Bearer ", ""):
        with pytest.raises(Unauthenticated):
            extract_key(auth, None)


def test_production_refuses_the_dev_pepper(monkeypatch: pytest.MonkeyPatch) -> None:
    from kinemesh.services.common.settings import Settings

    monkeypatch.setenv("KINEMESH_ENVIRONMENT", "production")
    monkeypatch.delenv("KINEMESH_API_KEY_PEPPER", raising=False)
    monkeypatch.delenv("KINEMESH_ALLOW_DEV_KEY", raising=False)
    with pytest.raises(ValueError, match="PEPPER"):
        Settings()
    monkeypatch.setenv("KINEMESH_API_KEY_PEPPER", "a-real-secret")
    assert Settings().environment == "production"
