"""API keys: created by the CLI, stored as HMAC-SHA256 digests (never in clear), one tenant each.

A key looks like `km_<key id>_<secret>`. Keys are high-entropy, so a keyed fast hash is the
right tool (a slow password hash would cost every request). The digest uses a server-side
pepper, so a copy of Redis alone does not let anyone test guesses.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import redis
import redis.asyncio as aredis

from kinemesh.services.common.errors import Unauthenticated
from kinemesh.services.common.jobstore import Keys

TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEV_KEY = "dev"
DEV_TENANT = "dev"


@dataclass(frozen=True)
class Principal:
    tenant: str
    key_id: str


def key_digest(api_key: str, pepper: str) -> str:
    return hmac.new(pepper.encode(), api_key.encode(), hashlib.sha256).hexdigest()


def create_key(client: redis.Redis, keys: Keys, tenant: str, pepper: str) -> tuple[str, str]:
    """Store a new key for `tenant`; returns (key id, the key). The key is shown once."""
    if not TENANT_RE.match(tenant):
        raise ValueError("tenant must be 1-63 chars of a-z, 0-9, '_' or '-', starting with a letter or digit")
    key_id = secrets.token_hex(6)
    api_key = f"km_{key_id}_{secrets.token_urlsafe(32)}"
    digest = key_digest(api_key, pepper)
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.api_key(digest), mapping={"tenant": tenant, "key_id": key_id, "created_at": str(time.time())})
    pipe.set(keys.api_key_id(key_id), digest)
    pipe.execute()
    return key_id, api_key


def revoke_key(client: redis.Redis, keys: Keys, key_id: str) -> bool:
    digest = client.get(keys.api_key_id(key_id))
    if not digest:
        return False
    client.delete(keys.api_key(digest), keys.api_key_id(key_id))
    return True


def extract_key(authorization: str | None, x_api_key: str | None) -> str:
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    raise Unauthenticated("send an API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`")


class Authenticator:
    """Resolves keys to tenants, with a short in-process cache (revocation takes <= cache_ttl_s)."""

    def __init__(self, client: aredis.Redis, keys: Keys, pepper: str, allow_dev_key: bool,
                 cache_ttl_s: float = 10.0) -> None:
        self.r = client
        self.keys = keys
        self.pepper = pepper
        self.allow_dev_key = allow_dev_key
        self.cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def authenticate(self, api_key: str) -> Principal:
        if self.allow_dev_key and api_key == DEV_KEY:
            return Principal(DEV_TENANT, "dev")
        now = time.monotonic()
        # keyed by the presented key: the digest is only computed on a miss (it costs per request)
        hit = self._cache.get(api_key)
        if hit and hit[0] > now:
            principal = hit[1]
        else:
            digest = key_digest(api_key, self.pepper)
            raw = await self.r.hmget(self.keys.api_key(digest), "tenant", "key_id")
            principal = Principal(raw[0], raw[1]) if raw[0] else None
            if len(self._cache) > 10_000:
                self._cache.clear()
            # unknown keys are remembered briefly only, so a key created a moment ago works
            ttl = self.cache_ttl_s if principal else min(1.0, self.cache_ttl_s)
            self._cache[api_key] = (now + ttl, principal)
        if principal is None:
            raise Unauthenticated("unknown or revoked API key")
        return principal
