"""The email sender robots: Email sender ("send all queued emails") and the daily digest.

Robots queue notifications (``pamflow.notifications.queue``); the sender routes them into
messages (one per recipient, channel and type: a storm of one type is one message listing
it) and delivers them over one SMTP connection, syslog or signed webhooks. A run ends when
nothing is left to do for ``idle_s`` seconds or after ``lifetime_s``; the event
``pam.notification.queued`` (emitted when a robot's transaction commits) starts one, and an
hourly cron catches up retries. The rules live in ``pamflow.notifications.sender``.
"""

from __future__ import annotations

from prefect import flow

from tasks.notifications import mail_mfa_token, publish_sender_report, send_queued_notifications


@flow(name="email-sender")
def email_sender(lifetime_s: float = 240.0, poll_s: float = 5.0, idle_s: float = 30.0,
                 batch_size: int = 500, max_attempts: int = 5, backoff_s: float = 30.0,
                 settle_s: float = 10.0, smtp_block: str = "default",
                 routing_block: str = "default") -> dict:
    """Email sender: send all queued emails.

    Notifications settled for ``settle_s`` seconds are routed; messages are sent in batches
    of ``batch_size`` over one connection, retried with exponential backoff from
    ``backoff_s`` and marked dead after ``max_attempts``.
    """
    summary = send_queued_notifications(lifetime_s, poll_s, idle_s, batch_size, max_attempts,
                                        backoff_s, settle_s, smtp_block=smtp_block,
                                        routing_block=routing_block)
    publish_sender_report(summary)
    return summary.as_dict()


@flow(name="notification-digest")
def notification_digest(smtp_block: str = "default", routing_block: str = "default") -> dict:
    """Notification digest: once a day, one message per recipient gathering the notifications
    routed to the daily digest, then send all queued emails."""
    summary = send_queued_notifications(lifetime_s=240.0, idle_s=0.0, poll_s=1.0, settle_s=0.0,
                                        smtp_block=smtp_block, routing_block=routing_block,
                                        digest=True)
    publish_sender_report(summary, key="notification-digest")
    return summary.as_dict()


@flow(name="mfa-token-mail")
def mfa_token_mail(username: str, tenant: str = "default", ttl_s: float = 600.0,
                   smtp_block: str = "default") -> dict:
    """MFA token mail: a one-time code requested by an event, mailed to the user; it expires
    after ``ttl_s`` seconds and works once (``pamflow notifications mfa-verify``)."""
    from prefect.artifacts import create_markdown_artifact

    issued = mail_mfa_token(username, tenant, ttl_s, smtp_block)
    create_markdown_artifact(f"One-time code {issued['token_id']} mailed to user "
                             f"**{issued['username']}**, valid until {issued['expires_at']}.",
                             key="mfa-token-mail", description="MFA token mailed")
    return issued
