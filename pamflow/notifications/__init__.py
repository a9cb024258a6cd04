"""Notifications: the catalogue (every type of seeds 002 and 003, as data), Jinja2 templates,
queueing, routing, storm control and delivery (SMTP, syslog, signed webhooks).

Robots call :func:`queue` with a type name and its variables; the email sender robot
(``flows/notifications.py``) routes and delivers. No Prefect import in this package.
"""

from .catalogue import CATALOGUE, FAMILIES, RENAMED, SEVERITIES, NotificationType
from .queueing import (
    SECRET_KEYS,
    NotificationContextError,
    UnknownNotification,
    clean_context,
    emit_queued,
    queue,
)
from .templates import Rendered, TemplateError, render, sample, set_strict

__all__ = [
    "CATALOGUE",
    "FAMILIES",
    "RENAMED",
    "SECRET_KEYS",
    "SEVERITIES",
    "NotificationContextError",
    "NotificationType",
    "Rendered",
    "TemplateError",
    "UnknownNotification",
    "clean_context",
    "emit_queued",
    "queue",
    "render",
    "sample",
    "set_strict",
]
