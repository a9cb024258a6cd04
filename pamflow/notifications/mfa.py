"""MFA token mail: a one-time code requested by an event, mailed to the user, expiring and
single use.

The code is a secret, so it never enters the notification queue (whose rows are readable
by operators): :func:`mail_token` issues it, seals it with pamflow's vault in ``mfa_token``
and sends the "MFA token" template straight through the SMTP channel; a mail that cannot be
sent revokes the code at once (the user asks again). :func:`verify` accepts a code once,
before it expires, within ``MAX_ATTEMPTS`` tries; issuing a new code revokes the older
ones. Every step is audited, never with the code.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .. import audit
from ..errors import PamflowError
from ..models import MfaToken, User
from ..models._base import row_id, table_of, utcnow
from .catalogue import CATALOGUE
from .channels import Channel, DeliveryError, OutMessage
from .routing import EMAIL_RE
from .sender import new_message_id
from .templates import render

DEFAULT_TTL_S = 600.0
MAX_ATTEMPTS = 5
ACTOR = "robot:mfa-token-mail"


class MfaError(PamflowError):
    """A code cannot be issued (unknown or inactive user, no address) or mailed."""


@dataclass(frozen=True)
class Issued:
    token_id: int
    username: str
    expires_at: datetime
    message_id: str


def mfa_aad(token_id: int) -> bytes:
    return f"pamflow|mfa_token|{token_id}|code".encode()


def _new_code() -> str:
    return f"{secrets.randbelow(10**6):06d}"


def mail_token(engine: Engine, channel: Channel, username: str, tenant: str = "default",
               ttl_s: float = DEFAULT_TTL_S, now: datetime | None = None,
               domain: str = "pamflow.local") -> Issued:
    """Issue a code for ``username``, mail it, return what was sent (never the code)."""
    from ..vault import vault

    now = now or utcnow()
    box = vault()
    with Session(engine) as db:
        user = db.exec(select(User).where(col(User.username) == username)).first()
        if user is None or user.status != "active":
            raise MfaError(f"no active user {username[:80]!r}")
        if not user.email or not EMAIL_RE.match(user.email):
            raise MfaError(f"user {username} has no valid e-mail address")
        t = table_of(MfaToken).c
        db.execute(sa.update(table_of(MfaToken)).where(
            t.username == username, t.used_at.is_(None), t.revoked_at.is_(None))
            .values(revoked_at=now))
        code = _new_code()
        token = MfaToken(tenant=tenant, username=username, code="-",
                         expires_at=now + timedelta(seconds=ttl_s))
        db.add(token)
        db.flush()
        token.code = box.encrypt(code, mfa_aad(row_id(token)))
        audit.record(db, ACTOR, "mfa.issued", "mfa_token", token.id,
                     {"username": username, "expires_at": token.expires_at.isoformat()})
        db.commit()
        token_id, expires = row_id(token), token.expires_at
        address = user.email
    kind = CATALOGUE["MFA token"]
    r = render(kind, {"code": code, "expires_at": f"{expires:%Y-%m-%d %H:%M}"}, tenant)
    msg = OutMessage(id=token_id, message_id=new_message_id(domain), tenant=tenant,
                     channel="email", recipient=address, type=kind.name, severity=kind.severity,
                     subject=r.subject, text=r.text, html=r.html, created_at=now)
    try:
        channel.send(msg)
    except DeliveryError as exc:
        with Session(engine) as db:
            db.execute(sa.update(table_of(MfaToken)).where(table_of(MfaToken).c.id == token_id)
                       .values(revoked_at=utcnow()))
            audit.record(db, ACTOR, "mfa.mail_failed", "mfa_token", token_id,
                         {"username": username, "error": str(exc)[:300]})
            db.commit()
        raise MfaError(f"the code for {username} could not be mailed: {exc}") from None
    return Issued(token_id, username, expires, msg.message_id)


def verify(db: Session, username: str, code: str, now: datetime | None = None,
           actor: str = "mfa") -> bool:
    """True once for the right code before it expires; the caller commits."""
    from ..vault import vault

    now = now or utcnow()
    token = db.exec(select(MfaToken).where(
        col(MfaToken.username) == username, col(MfaToken.used_at).is_(None),
        col(MfaToken.revoked_at).is_(None)).order_by(sa.desc(col(MfaToken.id)))).first()
    if token is None or token.expires_at <= now or token.attempts >= MAX_ATTEMPTS:
        audit.record(db, actor, "mfa.refused", "mfa_token", token.id if token else None,
                     {"username": username[:80], "reason": "no valid code"})
        return False
    token.attempts += 1
    expected = vault().decrypt(token.code, mfa_aad(row_id(token)))
    given = "".join(str(code).split())[:32]
    if not hmac.compare_digest(expected.encode(), given.encode()):
        db.add(token)
        audit.record(db, actor, "mfa.refused", "mfa_token", token.id,
                     {"username": username, "reason": "wrong code", "attempts": token.attempts})
        return False
    t = table_of(MfaToken).c
    done = db.execute(sa.update(table_of(MfaToken)).where(t.id == token.id, t.used_at.is_(None))
                      .values(used_at=now, attempts=token.attempts))
    ok = getattr(done, "rowcount", 0) == 1  # a concurrent verify may have used it first
    audit.record(db, actor, "mfa.verified" if ok else "mfa.refused", "mfa_token", token.id,
                 {"username": username, **({} if ok else {"reason": "already used"})})
    return ok
