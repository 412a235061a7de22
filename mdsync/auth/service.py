"""Sign-in logic: register, login, refresh with reuse detection, logout, sessions, passwords,
personal access tokens, first-admin setup, and authenticating each request."""

from __future__ import annotations

import ipaddress
import json
import logging
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from mdsync import audit, clock
from mdsync.api.errors import Conflict, Forbidden, NotFound, RateLimited, Unauthenticated, ValidationFailed
from mdsync.auth import setup_token
from mdsync.auth import store
from mdsync.auth.passwords import Passwords
from mdsync.auth.principals import Principals
from mdsync.auth.throttle import window
from mdsync.auth.tokens import PAT_PREFIX, REFRESH_PREFIX, AccessTokens, Principal, digest, opaque
from mdsync.config import Settings
from mdsync.db import Database, Tx
from mdsync.hooks import Hooks

log = logging.getLogger("mdsync.auth")
BAD_CREDENTIALS = "the email or password is incorrect"
ACCOUNT_WINDOW = 15 * 60

_SCOPE_LISTS: dict[str, tuple[str, ...]] = {}  # the few distinct `scopes` texts, parsed once each


def _scopes(text: str) -> tuple[str, ...]:
    scopes = _SCOPE_LISTS.get(text)
    if scopes is None:
        scopes = tuple(json.loads(text))
        if len(_SCOPE_LISTS) < 64:
            _SCOPE_LISTS[text] = scopes
    return scopes


_minute_ago = (-1, "")  # (whole second, clock.iso 60 s before it): formatted once a second


def _a_minute_ago() -> str:
    """clock.iso() of a minute ago, to the second: compared as text with the stored timestamps."""
    global _minute_ago
    second = int(clock.timestamp())
    if _minute_ago[0] != second:
        _minute_ago = (second, clock.iso(datetime.fromtimestamp(second - 60, UTC)))
    return _minute_ago[1]


class AuthService:
    def __init__(self, db: Database, settings: Settings, secret: str, hooks: Hooks, cluster=None):
        self.db = db
        self.hooks = hooks  # calls accept_invitation
        self.settings = settings
        cfg = settings.auth
        self.passwords = Passwords.configured(cfg)
        self.access = AccessTokens(secret, cfg.access_token_ttl)
        # in memory on one node; in Redis, for all nodes at once, with `cluster.redis_url`
        self.login_by_address = window(cluster, "login", cfg.login_attempts_per_address, 60)
        self.failures_by_account = window(cluster, "failures", cfg.login_failures_per_account, ACCOUNT_WINDOW)
        self.register_by_address = window(cluster, "register", cfg.register_attempts_per_address, 60)
        self.refresh_by_address = window(cluster, "refresh", cfg.refresh_attempts_per_address, 60)
        self.principals = Principals()  # sessions and tokens read within the last second
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in settings.server.trusted_proxies]

    # -- request identity ------------------------------------------------------------------
    def client_address(self, request: web.Request) -> str:
        remote = request.remote or "unknown"
        forwarded = request.headers.get("X-Forwarded-For")
        if forwarded and self._is_trusted(remote):
            hops = [h.strip() for h in forwarded.split(",") if h.strip()]
            for hop in reversed(hops):
                if not self._is_trusted(hop):
                    return hop
            return hops[0] if hops else remote
        return remote

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    async def authenticate(self, request: web.Request, optional: bool = False,
                           key_header: str | None = None) -> Principal | None:
        """The caller behind `Authorization: Bearer <token>` (or, on routes that name one, a
        `key_header` such as the Anthropic SDK's `x-api-key`)."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header and key_header and request.headers.get(key_header, "").strip():
            principal = await self.principal_from_token(request.headers[key_header].strip())
            if principal is None:
                raise Unauthenticated(f"the token in {key_header} is invalid, expired or revoked")
            return principal
        if not header:
            if optional:
                return None
            raise Unauthenticated("sign in first: send Authorization: Bearer <token>")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
        principal = await self.principal_from_token(token.strip())
        if principal is None:
            raise Unauthenticated("the token is invalid, expired or revoked")
        return principal

    async def principal_from_token(self, token: str) -> Principal | None:
        """The caller behind an access JWT or a personal access token, or None. What the
        database says of the session or token is kept for a second (auth/principals.py)."""
        if token.startswith(PAT_PREFIX):
            return await self._from_api_token(token)
        claims = self.access.verify(token)
        if claims is None:
            return None
        session_id = claims.session_id
        entry = self.principals.get(session_id)
        if entry is None:
            generation = self.principals.generation
            row = await store.session_state(self.db, session_id)
            if row is None:
                return None
            principal = None if row["revoked_at"] or row["disabled_at"] else Principal(
                row["user_id"], row["name"], row["email"], bool(row["is_admin"]), session_id=session_id,
                expires_at=claims.expires_at, user_created_at=row["created_at"])
            entry = self.principals.put(session_id, generation, principal)
        principal = entry[1]
        if principal is None or principal.user_id != claims.user_id:
            return None
        if principal.expires_at != claims.expires_at:   # another access token of the same session
            principal = principal._replace(expires_at=claims.expires_at)
        return principal

    async def _from_api_token(self, token: str) -> Principal | None:
        key = digest(token)
        entry = self.principals.get(key)
        if entry is None:
            generation = self.principals.generation
            row = await store.api_token_state(self.db, key)
            if row is None:
                return None   # not kept: guesses would push out the tokens in use
            principal = None if row["disabled_at"] else Principal(
                row["user_id"], row["name"], row["email"], bool(row["is_admin"]), token_id=row["id"],
                scopes=_scopes(row["scopes"]),
                expires_at=clock.parse(row["expires_at"]).timestamp() if row["expires_at"] else None,
                user_created_at=row["created_at"])
            entry = self.principals.put(key, generation, principal, row["last_used_at"])
        principal = entry[1]
        if principal is None or (principal.expires_at is not None and principal.expires_at <= clock.timestamp()):
            return None
        # last_used_at to the minute is enough; do not queue a write for every request
        last_used = entry[2]
        if not last_used or last_used < _a_minute_ago():
            entry[2] = clock.iso()
            self.db.submit(store.touch_api_token, principal.token_id)
        return principal

    # -- sign-in ---------------------------------------------------------------------------
    def _pair(self, user: Any, session_id: str, refresh_token: str) -> dict:
        return {
            "user": store.user_json(user),
            "access_token": self.access.issue(user["id"], session_id),
            "refresh_token": refresh_token,
            "token_type": "Bearer",
            "expires_in": self.access.ttl,
        }

    def _check_password(self, password: str, field: str = "password") -> None:
        if len(password) < self.settings.auth.password_min_length:
            raise ValidationFailed.field(field, f"must be at least {self.settings.auth.password_min_length} characters")

    async def register(self, email: str, password: str, name: str, invitation: str | None,
                       ip: str, user_agent: str | None, device_name: str | None = None) -> dict:
        wait = await self.register_by_address.take_async(ip)
        if wait is not None:
            raise RateLimited(wait, "too many registrations from this address")
        mode = self.settings.auth.registration
        if mode == "closed":
            raise Forbidden("registration is closed on this server; ask an admin for an account")
        if mode == "invite" and not invitation:
            raise Forbidden("registration needs an invitation on this server")
        return await self._create_account(email, password, name, invitation=invitation, ip=ip,
                                          user_agent=user_agent, device_name=device_name)

    async def _create_account(self, email: str, password: str, name: str, *, ip: str, user_agent: str | None,
                              device_name: str | None, invitation: str | None = None,
                              first_admin_token: str | None = None) -> dict:
        """An account, its first session and the token pair: registration, and with the setup
        token `first_admin_token` the first admin of a server without users (the token spent in
        the same transaction: refused once the server has a user, or when it is not valid)."""
        first_admin = first_admin_token is not None
        self._check_password(password)
        password_hash = await self.passwords.hash(password)
        refresh_token = opaque(REFRESH_PREFIX)
        ttl = self.settings.auth.refresh_token_ttl

        def create(tx: Tx):
            if first_admin:
                setup_token.consume(tx, first_admin_token)
            try:
                user = store.insert_user(tx, email, name, password_hash, is_admin=first_admin)
            except store.EmailTaken:
                raise Conflict("an account with this email already exists") from None
            if invitation:
                self.hooks.accept_invitation(tx, invitation, user["id"], email)
            session_id = store.create_session(tx, user["id"], device_name, user_agent, ttl, refresh_token)
            audit.record(tx, "admin.setup" if first_admin else "user.register", actor_id=user["id"],
                         target_type="user", target_id=user["id"], ip=ip)
            return user, session_id

        user, session_id = await self.db.write(create)
        return self._pair(user, session_id, refresh_token)

    async def login(self, email: str, password: str, device_name: str | None, ip: str,
                    user_agent: str | None) -> dict:
        wait = await self.login_by_address.take_async(ip)
        if wait is not None:
            raise RateLimited(wait, "too many sign-in attempts from this address")
        # the attempt counts as a failure from the start and is forgiven on success: counted only
        # after the (slow) hash, a burst of parallel guesses would all slip in before the first
        # failure was recorded
        wait = await self.failures_by_account.take_async(email)
        if wait is not None:
            raise RateLimited(wait, "too many failed sign-ins for this account")
        user = await store.user_by_email(self.db, email)
        ok = await self.passwords.verify(user["password_hash"] if user else None, password)
        if not ok:
            await self.db.write(lambda tx: audit.record(
                tx, "login.failed", actor_id=user["id"] if user else None, target_type="user",
                target_id=user["id"] if user else None, ip=ip, detail={"email": email}))
            raise Unauthenticated(BAD_CREDENTIALS)
        if user["disabled_at"]:
            raise Unauthenticated("this account is disabled")
        await self.failures_by_account.clear_async(email)
        new_hash = await self.passwords.hash(password) if self.passwords.needs_rehash(user["password_hash"]) else None
        refresh_token = opaque(REFRESH_PREFIX)
        ttl = self.settings.auth.refresh_token_ttl

        def sign_in(tx: Tx):
            if new_hash:
                store.update_user(tx, user["id"], password_hash=new_hash)
            session_id = store.create_session(tx, user["id"], device_name, user_agent, ttl, refresh_token)
            audit.record(tx, "login", actor_id=user["id"], target_type="session", target_id=session_id, ip=ip)
            return session_id

        session_id = await self.db.write(sign_in)
        return self._pair(user, session_id, refresh_token)

    async def refresh(self, refresh_token: str, ip: str) -> dict:
        wait = await self.refresh_by_address.take_async(ip)
        if wait is not None:
            raise RateLimited(wait, "too many token refreshes from this address")
        new_token = opaque(REFRESH_PREFIX)
        ttl = self.settings.auth.refresh_token_ttl

        def rotate(tx: Tx):
            row = store.refresh_token_row(tx, refresh_token)
            if row is None:
                return "invalid", None
            if row["spent_at"]:
                # a spent token presented again: someone holds a copy. End the whole family.
                store.revoke_session(tx, row["session_id"])
                audit.record(tx, "session.reuse_detected", actor_id=row["user_id"], target_type="session",
                             target_id=row["session_id"], ip=ip)
                return "reused", row
            if row["revoked_at"] or row["disabled_at"] or row["expires_at"] <= clock.iso():
                return "invalid", None
            store.rotate_refresh_token(tx, row["session_id"], refresh_token, new_token, ttl)
            return "ok", (store.user_by_id_tx(tx, row["user_id"]), row["session_id"])

        outcome, data = await self.db.write(rotate)
        if outcome == "reused":
            raise Unauthenticated("this refresh token was already used; the session has been signed out")
        if outcome != "ok":
            raise Unauthenticated("the refresh token is invalid, expired or revoked")
        user, session_id = data
        return self._pair(user, session_id, new_token)

    async def logout(self, principal: Principal) -> None:
        if principal.session_id is None:
            raise Forbidden("personal access tokens are revoked with DELETE /api/v1/me/tokens/{id}")
        session_id = principal.session_id

        def revoke(tx: Tx):
            store.revoke_session(tx, session_id)
            audit.record(tx, "logout", actor_id=principal.user_id, target_type="session", target_id=session_id)

        await self.db.write(revoke)

    async def revoke_session(self, principal: Principal, session_id: str) -> None:
        def revoke(tx: Tx):
            row = store.session_of_user(tx, session_id, principal.user_id)
            if row is None or row["revoked_at"]:
                return False
            store.revoke_session(tx, session_id)
            audit.record(tx, "session.revoke", actor_id=principal.user_id, target_type="session", target_id=session_id)
            return True

        if not await self.db.write(revoke):
            raise NotFound("no such session")

    # -- profile, password, tokens ---------------------------------------------------------
    # A stolen access token (15 minutes) must not become something that outlives it: a personal
    # access token, or an email address to take over the account or its invitations with. Those
    # need the password (docs/api.md "Auth and accounts").
    async def _confirm_password(self, principal: Principal, password: str | None, field: str, why: str) -> None:
        """The caller proves they know the password (403 naming `field` when missing or wrong);
        wrong guesses count against the same per-account limit as sign-in."""
        if password is None:
            raise Forbidden(f"{why} needs your password", errors=[{"field": field, "message": "send your password"}])
        wait = await self.failures_by_account.take_async(principal.email)
        if wait is not None:
            raise RateLimited(wait, "too many failed password checks for this account")
        user = await store.user_by_id(self.db, principal.user_id)
        if user is None or not await self.passwords.verify(user["password_hash"], password):
            raise Forbidden("the password is incorrect", errors=[{"field": field, "message": "is incorrect"}])
        await self.failures_by_account.clear_async(principal.email)

    async def update_profile(self, principal: Principal, name: str | None, email: str | None,
                             current_password: str | None = None) -> dict:
        changes = {k: v for k, v in (("name", name), ("email", email)) if v is not None}
        if email is not None and email.casefold() != principal.email.casefold():
            await self._confirm_password(principal, current_password, "current_password", "changing the email")
            changes["email_set_at"] = clock.iso()

        def update(tx: Tx):
            try:
                user = store.update_user(tx, principal.user_id, **changes)
            except store.EmailTaken:
                raise Conflict("an account with this email already exists") from None
            if changes:
                audit.record(tx, "user.update", actor_id=principal.user_id, target_type="user",
                             target_id=principal.user_id, detail={"fields": sorted(set(changes) - {"email_set_at"})})
            return user

        return store.user_json(await self.db.write(update))

    async def change_password(self, principal: Principal, current: str, new: str, ip: str) -> None:
        self._check_password(new, "new_password")
        # guessing the current password with a stolen token counts against the same per-account
        # limit as guessing it at login
        wait = await self.failures_by_account.take_async(principal.email)
        if wait is not None:
            raise RateLimited(wait, "too many failed password checks for this account")
        user = await store.user_by_id(self.db, principal.user_id)
        if not await self.passwords.verify(user["password_hash"], current):
            raise Forbidden("the current password is incorrect")
        await self.failures_by_account.clear_async(principal.email)
        new_hash = await self.passwords.hash(new)

        def change(tx: Tx):
            store.update_user(tx, principal.user_id, password_hash=new_hash)
            store.revoke_sessions_of(tx, principal.user_id, keep=principal.session_id)
            # personal access tokens too: one minted with a stolen token must not survive the
            # password change meant to evict the thief (scripts get new tokens)
            tokens = store.delete_api_tokens_of(tx, principal.user_id)
            audit.record(tx, "user.password_change", actor_id=principal.user_id, target_type="user",
                         target_id=principal.user_id, ip=ip, detail={"tokens_revoked": len(tokens)})

        await self.db.write(change)

    async def create_api_token(self, principal: Principal, name: str, scopes: list[str],
                               expires_at: str | None, password: str | None = None) -> dict:
        """A personal access token outlives the access token that asks for it: the password is
        needed, unless the caller's session signed in (with it) within auth.recent_sign_in_seconds."""
        if password is not None or not await self._signed_in_recently(principal):
            await self._confirm_password(principal, password, "password", "creating a personal access token"
                                         f" (beyond {self.settings.auth.recent_sign_in_seconds} s after signing in)")
        token = opaque(PAT_PREFIX)

        def create(tx: Tx):
            row = store.insert_api_token(tx, principal.user_id, name, token, scopes, expires_at)
            audit.record(tx, "token.create", actor_id=principal.user_id, target_type="api_token",
                         target_id=row["id"], detail={"scopes": scopes})
            return row

        row = await self.db.write(create)
        return {**store.api_token_json(row), "token": token}

    async def _signed_in_recently(self, principal: Principal) -> bool:
        if principal.session_id is None:
            return False  # a personal access token proves no recent sign-in
        signed_in = await store.session_signed_in_at(self.db, principal.session_id)
        return signed_in is not None and signed_in >= clock.iso_in(-self.settings.auth.recent_sign_in_seconds)

    async def delete_api_token(self, principal: Principal, token_id: str) -> None:
        def delete(tx: Tx):
            if not store.delete_api_token(tx, token_id, principal.user_id):
                return False
            audit.record(tx, "token.delete", actor_id=principal.user_id, target_type="api_token", target_id=token_id)
            return True

        if not await self.db.write(delete):
            raise NotFound("no such token")

    # -- first admin ---------------------------------------------------------------------------
    async def prepare_setup(self, maker: str = "") -> str | None:
        """A new one-time setup token when the server has no user and no valid unused setup
        token (printed by `serve`); None otherwise (`pending_setup` says then whether one exists).
        Only its hash is stored, with who printed it (`maker`; auth/setup_token.py)."""
        if await self.db.value("SELECT count(*) FROM users"):
            return None
        token = opaque()
        try:
            stored = await self.db.write(setup_token.mint, token, self.settings.auth.setup_token_ttl,
                                         maker or setup_token.made_by("mdsync serve"))
        except Conflict:   # a user came meanwhile
            return None
        return token if stored else None

    async def pending_setup(self) -> Any:
        """The valid unused setup token's row (made_by, created_at, expires_at) while the server
        has no user, else None."""
        return await setup_token.pending(self.db)

    async def setup(self, token: str, email: str, password: str, name: str, ip: str,
                    user_agent: str | None) -> dict:
        await setup_token.check(self.db, token)   # a wrong token is refused before the password is hashed
        return await self._create_account(email, password, name, ip=ip, user_agent=user_agent, device_name="setup",
                                          first_admin_token=token)

    def close(self) -> None:
        self.passwords.close()
