"""Jinja2 templates of every catalogue type: a subject, a plain-text body and an HTML body.

Rendering runs in Jinja2's :class:`~jinja2.sandbox.SandboxedEnvironment` (a template cannot
reach Python internals); the HTML environment autoescapes every variable, so a device
name like ``<script>`` arrives as text. A variable the template needs but the context lacks:

- under the *strict* setting (tests, ``PAMFLOW_NOTIFICATIONS_STRICT=1`` or
  :func:`set_strict`) rendering fails with :class:`TemplateError` naming the variable;
- in production it renders as a readable placeholder ``[missing: name]`` and the message
  still goes out (a notification with a hole beats no notification).

Every template sees the context's variables at top level and ``notification`` (type,
family, severity, description, tenant) and ``details`` (the context as sorted key/value
pairs). Types without a template of their own use the generic one, which prints the
description and the details. :data:`SAMPLES` holds sample variables for every type that
has its own template (the tests render and deliver every type with them).

Group messages (storm control: many notifications of one type to one recipient) and the
daily digest have their own templates: :func:`render_group` and :func:`render_digest`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from ..errors import PamflowError
from .catalogue import CATALOGUE, NotificationType

log = logging.getLogger(__name__)

SUBJECT_MAX = 250


class TemplateError(PamflowError):
    """A notification template failed to render (a missing variable under the strict setting,
    or a broken template)."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


class _Placeholder(jinja2.Undefined):
    """Production: a missing variable shows as ``[missing: name]`` instead of failing."""

    def __str__(self) -> str:
        return f"[missing: {self._undefined_name}]"

    def __iter__(self):
        return iter(())

    def __bool__(self) -> bool:
        return False

    def __len__(self) -> int:
        return 0


_strict: bool | None = None


def set_strict(value: bool | None) -> None:
    """Force strict (True) or lenient (False) rendering; None goes back to the environment."""
    global _strict
    _strict = value
    _envs.clear()
    _compiled.clear()


def is_strict() -> bool:
    if _strict is not None:
        return _strict
    return os.environ.get("PAMFLOW_NOTIFICATIONS_STRICT", "").lower() in ("1", "true", "yes")


# ----------------------------------------------------------------------------- templates
# (subject, text, html) per type; html is the inside of the layout's <body>.
LAYOUT = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{{ subject }}</title></head>
<body style="font-family:sans-serif">
<p style="color:#666">pamflow · {{ notification.family }} · {{ notification.severity }}\
{% if notification.tenant != "default" %} · tenant {{ notification.tenant }}{% endif %}</p>
{{ content }}
</body></html>
"""

GENERIC = (
    "{{ notification.type }}{% if summary is defined %}: {{ summary }}{% endif %}",
    "{{ notification.description }}.\n{% for key, value in details %}\n{{ key }}: {{ value }}{% endfor %}\n",
    "<p>{{ notification.description }}.</p>\n{% if details %}<table>{% for key, value in details %}"
    "<tr><th align=\"left\">{{ key }}</th><td>{{ value }}</td></tr>{% endfor %}</table>{% endif %}",
)

_DEVICE_HTML = ("<p>Device <b>{{ device }}</b> ({{ address }}) {{ verb }} on its configured ports "
                "({{ ports|join(', ') or 'none' }}).</p><p>{{ why }}</p><p>Checked at {{ checked_at }}.</p>")

_CERT = (
    "{{ notification.type }}: {{ common_name }}",
    "The certificate {{ common_name }}{% if device is defined %} served by {{ device }}{% endif %} "
    "expires on {{ not_after }} ({% if days == 0 %}today{% else %}in {{ days }} day(s){% endif %})."
    "{% if serial is defined %}\nSerial: {{ serial }}{% endif %}{% if issuer is defined %}\nIssuer: "
    "{{ issuer }}{% endif %}\n",
    "<p>The certificate <b>{{ common_name }}</b>{% if device is defined %} served by {{ device }}"
    "{% endif %} expires on {{ not_after }} ({% if days == 0 %}today{% else %}in {{ days }} day(s)"
    "{% endif %}).</p>{% if serial is defined %}<p>Serial: {{ serial }}</p>{% endif %}",
)

_REQUEST = (
    "{{ notification.type }}: request {{ request_id }} by {{ requester }}",
    "Request {{ request_id }} by {{ requester }} for {{ resource }}"
    "{% if approver is defined %}, decided by {{ approver }}{% endif %}"
    "{% if reason is defined %}.\nReason: {{ reason }}{% endif %}."
    "{% if reply_code is defined %}\n\nReply to this mail with APPROVE or DENY in the first line; "
    "keep the line\n{{ reply_code }}\nin the reply.{% endif %}\n",
    "<p>Request <b>{{ request_id }}</b> by {{ requester }} for {{ resource }}"
    "{% if approver is defined %}, decided by {{ approver }}{% endif %}.</p>"
    "{% if reason is defined %}<p>Reason: {{ reason }}</p>{% endif %}"
    "{% if reply_code is defined %}<p>Reply to this mail with APPROVE or DENY in the first line; keep "
    "the line <code>{{ reply_code }}</code> in the reply.</p>{% endif %}",
)

_WHO = "{{ account }} on {{ device }}"

_OWN: dict[str, tuple[str, str, str]] = {
    "Lost of connectivity": (
        "Lost of connectivity: {{ device }} ({{ address }})",
        "Device {{ device }} ({{ address }}) no longer answers on its configured ports "
        "({{ ports|join(', ') or 'none' }}): {{ reason }}. Checked at {{ checked_at }}.\n",
        _DEVICE_HTML.replace("{{ verb }}", "no longer answers").replace("{{ why }}", "{{ reason }}"),
    ),
    "Connectivity restored": (
        "Connectivity restored: {{ device }} ({{ address }})",
        "Device {{ device }} ({{ address }}) answers again on its configured ports "
        "({{ ports|join(', ') or 'none' }}): {{ detail }}. Checked at {{ checked_at }}.\n",
        _DEVICE_HTML.replace("{{ verb }}", "answers again").replace("{{ why }}", "{{ detail }}"),
    ),
    "Activation executed": (
        "Activation executed: " + _WHO,
        "The password of {{ account }} was activated on {{ device }}"
        "{% if recovered|default(false) %} (recovered after an interruption){% endif %}.\n",
        "<p>The password of <b>{{ account }}</b> was activated on <b>{{ device }}</b>"
        "{% if recovered|default(false) %} (recovered after an interruption){% endif %}.</p>",
    ),
    "Change Executed": (
        "Change Executed: " + _WHO,
        "The password of {{ account }} was changed on {{ device }}"
        "{% if recovered|default(false) %} (recovered after an interruption){% endif %}.\n",
        "<p>The password of <b>{{ account }}</b> was changed on <b>{{ device }}</b>"
        "{% if recovered|default(false) %} (recovered after an interruption){% endif %}.</p>",
    ),
    "Error on activation": (
        "Error on activation: {{ account|default('unknown account') }} on "
        "{{ device|default('unknown device') }}",
        "Activating the password of {{ account|default('unknown account') }} on "
        "{{ device|default('unknown device') }} failed: {{ error }}\n",
        "<p>Activating the password of <b>{{ account|default('unknown account') }}</b> on "
        "<b>{{ device|default('unknown device') }}</b> failed:</p><pre>{{ error }}</pre>",
    ),
    "Error on change": (
        "Error on change: {{ account|default('unknown account') }} on "
        "{{ device|default('unknown device') }}",
        "The operation on the password of {{ account|default('unknown account') }} on "
        "{{ device|default('unknown device') }} failed: {{ error }}\n",
        "<p>The operation on the password of <b>{{ account|default('unknown account') }}</b> on "
        "<b>{{ device|default('unknown device') }}</b> failed:</p><pre>{{ error }}</pre>",
    ),
    "Password changed": (
        "Password changed: " + _WHO,
        "{% if situation == 'imported' %}The imported password of {{ account }} on {{ device }} logs "
        "in; it is now the recorded password (the previous one is kept in history)."
        "{% elif situation == 'reconciled' %}Reconciliation recorded the password of {{ account }} on "
        "{{ device }}: {{ how }} (operation {{ operation_id }})."
        "{% else %}Operation {{ operation_id }} set a new password for {{ account }} on {{ device }}; "
        "it was verified by logging in.{% endif %}\n",
        "<p>{% if situation == 'imported' %}The imported password of <b>{{ account }}</b> on "
        "<b>{{ device }}</b> logs in; it is now the recorded password.{% elif situation == 'reconciled' %}"
        "Reconciliation recorded the password of <b>{{ account }}</b> on <b>{{ device }}</b>: {{ how }} "
        "(operation {{ operation_id }}).{% else %}Operation {{ operation_id }} set a new password for "
        "<b>{{ account }}</b> on <b>{{ device }}</b>; it was verified by logging in.{% endif %}</p>",
    ),
    "Invalid password": (
        "Invalid password: {% if situation == 'imported' %}imported password of {% endif %}" + _WHO,
        "{% if situation == 'imported' %}The password imported for {{ account }} on {{ device }} was "
        "refused by the target; it was discarded and the recorded password is kept."
        "{% elif situation == 'reconcile' %}Reconciliation found that no recorded password of "
        "{{ account }} on {{ device }} logs in."
        "{% else %}The recorded password of {{ account }} on {{ device }} was refused by the target"
        "{% if reconcile_next|default(false) %}; reconciliation will set it through the reconcile "
        "account{% endif %}.{% endif %}\n",
        "<p>{% if situation == 'imported' %}The password imported for <b>{{ account }}</b> on "
        "<b>{{ device }}</b> was refused by the target; it was discarded.{% elif situation == 'reconcile' %}"
        "Reconciliation found that no recorded password of <b>{{ account }}</b> on <b>{{ device }}</b> "
        "logs in.{% else %}The recorded password of <b>{{ account }}</b> on <b>{{ device }}</b> was "
        "refused by the target.{% endif %}</p>",
    ),
    "Password confirmed": (
        "Password confirmed: {% if account is defined %}" + _WHO + "{% else %}{{ count }} "
        "credential(s){% endif %}",
        "{% if account is defined %}The recorded password of {{ account }} on {{ device }} logs in."
        "{% else %}The recorded passwords of {{ credentials|join(', ') }}{% if count > credentials|length %}"
        " and {{ count - credentials|length }} more{% endif %} log in.{% endif %}\n",
        "{% if account is defined %}<p>The recorded password of <b>{{ account }}</b> on "
        "<b>{{ device }}</b> logs in.</p>{% else %}<p>{{ count }} recorded password(s) log in:</p><ul>"
        "{% for c in credentials %}<li>{{ c }}</li>{% endfor %}</ul>{% endif %}",
    ),
    "Password change reminder": (
        "Password change reminder: {{ account }} on {{ device }}",
        "The password of {{ account }} on {{ device }} is due to change on {{ due }} UTC "
        "(in {{ days }} day(s)).\n",
        "<p>The password of <b>{{ account }}</b> on <b>{{ device }}</b> is due to change on "
        "{{ due }} UTC (in {{ days }} day(s)).</p>",
    ),
    "Password reservation": (
        "Password reservation {{ {'start': 'started', 'end': 'ended', 'cancel': 'cancelled'}[phase] }}:"
        " {{ who }}",
        "Reservation {{ reservation_id }} of {{ who }} by {{ requested_by }} "
        "{% if phase == 'cancel' %}was cancelled by {{ cancelled_by }}{% else %}"
        "{{ {'start': 'started', 'end': 'ended'}[phase] }}{% endif %}"
        "{% if change_queued %}; a password change was queued{% endif %}.\n",
        "<p>Reservation {{ reservation_id }} of <b>{{ who }}</b> by {{ requested_by }} "
        "{% if phase == 'cancel' %}was cancelled by {{ cancelled_by }}{% else %}"
        "{{ {'start': 'started', 'end': 'ended'}[phase] }}{% endif %}"
        "{% if change_queued %}; a password change was queued{% endif %}.</p>",
    ),
    "Batch import finished": (
        "Batch import {% if failed|default(false) %}failed{% else %}finished{% endif %}: {{ file }}",
        "{% if failed|default(false) %}Import of {{ file }} failed, nothing was imported: {{ reason }}"
        "{% else %}Import of {{ file }} ({{ format }}) for tenant {{ tenant }} finished: {{ rows }} rows, "
        "{{ created }} created, {{ updated }} updated, {{ unchanged }} unchanged, {{ rejected }} rejected."
        "{% if imports_to_verify %}\n{{ imports_to_verify }} imported password(s) differ from the "
        "recorded ones: each is adopted only after a verify logs in with it.{% endif %}"
        "{% if error_file %}\nRejected rows are listed in {{ error_file }}.{% endif %}{% endif %}\n",
        "{% if failed|default(false) %}<p>Import of <b>{{ file }}</b> failed, nothing was imported: "
        "{{ reason }}</p>{% else %}<p>Import of <b>{{ file }}</b> ({{ format }}) for tenant {{ tenant }} "
        "finished.</p><table><tr><th>rows</th><th>created</th><th>updated</th><th>unchanged</th>"
        "<th>rejected</th></tr><tr><td>{{ rows }}</td><td>{{ created }}</td><td>{{ updated }}</td>"
        "<td>{{ unchanged }}</td><td>{{ rejected }}</td></tr></table>{% if error_file %}<p>Rejected "
        "rows are listed in {{ error_file }}.</p>{% endif %}{% endif %}",
    ),
    "Password daily summary": (
        "Password daily summary {{ date }}: {{ changed }} changed, {{ failed }} failed",
        "Password operations on {{ date }}: {{ changed }} changed, {{ failed }} failed.\n"
        "{% for item in items %}\n- {{ item.account }} on {{ item.device }}: {{ item.result }}{% endfor %}\n",
        "<p>Password operations on {{ date }}: <b>{{ changed }}</b> changed, <b>{{ failed }}</b> "
        "failed.</p><table>{% for item in items %}<tr><td>{{ item.account }}</td><td>{{ item.device }}"
        "</td><td>{{ item.result }}</td></tr>{% endfor %}</table>",
    ),
    "Password Expired": (
        "Password Expired: {{ count }} credential(s)",
        "{{ count }} credential(s) have an expired password:\n"
        "{% for c in credentials %}\n- {{ c }}{% endfor %}\n",
        "<p>{{ count }} credential(s) have an expired password:</p><ul>{% for c in credentials %}"
        "<li>{{ c }}</li>{% endfor %}</ul>",
    ),
    "MFA token": (
        "Your pamflow verification code",
        "Your one-time verification code is {{ code }}. It expires at {{ expires_at }} UTC and works "
        "once.\nIf you did not ask for it, tell your administrator.\n",
        "<p>Your one-time verification code is <b style=\"font-size:1.4em\">{{ code }}</b>.</p><p>It "
        "expires at {{ expires_at }} UTC and works once. If you did not ask for it, tell your "
        "administrator.</p>",
    ),
    "Bulk mail": (
        "{{ title }}",
        "{{ message }}\n",
        "<p>{{ message }}</p>",
    ),
}
_OWN["Reestabilished Connectivity"] = _OWN["Connectivity restored"]
_OWN["Daily report of change of passwords"] = _OWN["Password daily summary"]
for _name, _t in CATALOGUE.items():
    if _name.startswith("Certificate expiration"):
        _OWN[_name] = _CERT
    elif _t.family == "Access control" and _name != "Approver management":
        _OWN[_name] = _REQUEST

_CERT_SAMPLE = {"common_name": "www.example.test", "not_after": "2026-12-06T00:00:00+00:00",
                "days": 7, "device": "web-01", "serial": "0A1B", "issuer": "Example CA"}
_REQUEST_SAMPLE = {"request_id": 42, "requester": "alice", "resource": "root on db-01",
                   "approver": "bob", "reason": "maintenance window", "reply_code": "pfa1.x.y"}
_WHO_SAMPLE = {"account": "root", "device": "db-01", "operation_id": 7, "credential_id": 3,
               "device_id": 2}
SAMPLES: dict[str, dict[str, Any]] = {
    "Lost of connectivity": {"device": "db-01", "address": "10.0.0.5", "ports": [22, 443],
                             "reason": "timed out", "checked_at": "2026-11-29T10:00:00+00:00"},
    "Connectivity restored": {"device": "db-01", "address": "10.0.0.5", "ports": [22],
                              "detail": "22 open", "checked_at": "2026-11-29T10:00:00+00:00"},
    "Activation executed": {**_WHO_SAMPLE, "recovered": False},
    "Change Executed": {**_WHO_SAMPLE, "recovered": True},
    "Error on activation": {**_WHO_SAMPLE, "error": "sudo: a password is required"},
    "Error on change": {**_WHO_SAMPLE, "error": "connection refused"},
    "Password changed": {**_WHO_SAMPLE, "situation": "reconciled", "how": "the pending password"},
    "Invalid password": {**_WHO_SAMPLE, "situation": "verify", "reconcile_next": True},
    "Password confirmed": {"count": 3, "credentials": ["root@db-01", "admin@web-01", "svc@app-01"]},
    "Password change reminder": {"account": "root", "device": "db-01", "days": 3,
                                 "due": "2026-12-02 10:00", "credential_id": 3, "device_id": 2},
    "Password reservation": {"reservation_id": 5, "who": "root on db-01", "requested_by": "alice",
                             "phase": "cancel", "cancelled_by": "bob", "change_queued": True},
    "Batch import finished": {"file": "devices.xlsx", "format": "xlsx", "tenant": "default",
                              "rows": 10, "created": 8, "updated": 1, "unchanged": 0, "rejected": 1,
                              "imports_to_verify": 1, "error_file": "devices.errors.xlsx"},
    "Password daily summary": {"date": "2026-11-29", "changed": 2, "failed": 1,
                               "items": [{"account": "root", "device": "db-01", "result": "changed"},
                                         {"account": "svc", "device": "app-01", "result": "error"}]},
    "Password Expired": {"count": 2, "credentials": ["root@db-01", "svc@app-01"]},
    "MFA token": {"code": "493 817", "expires_at": "2026-11-29 10:10"},
    "Bulk mail": {"title": "Maintenance tonight", "message": "The PAM portal is down 22:00-23:00 UTC."},
}
SAMPLES["Reestabilished Connectivity"] = SAMPLES["Connectivity restored"]
SAMPLES["Daily report of change of passwords"] = SAMPLES["Password daily summary"]
_GENERIC_SAMPLE = {"summary": "sample event", "user": "alice", "device": "db-01"}


def sample(type_name: str) -> dict[str, Any]:
    """Sample variables for ``type_name`` (tests, ``pamflow notifications show --sample``)."""
    if type_name in SAMPLES:
        return dict(SAMPLES[type_name])
    if type_name.startswith("Certificate expiration"):
        return dict(_CERT_SAMPLE)
    if _OWN.get(type_name) is _REQUEST:
        return dict(_REQUEST_SAMPLE)
    return dict(_GENERIC_SAMPLE)


def templates_of(type_name: str) -> tuple[str, str, str]:
    """(subject, text, html) template sources of a type (its own or the generic one)."""
    return _OWN.get(type_name, GENERIC)


def has_own_template(type_name: str) -> bool:
    return type_name in _OWN


# ----------------------------------------------------------------------------- rendering
_GROUP = (
    "{{ count }} × {{ notification.type }}",
    "{{ notification.description }}: {{ count }} notification(s).\n"
    "{% for item in items %}\n- {{ item }}{% endfor %}"
    "{% if more %}\n… and {{ more }} more{% endif %}\n",
    "<p>{{ notification.description }}: <b>{{ count }}</b> notification(s).</p><ul>"
    "{% for item in items %}<li>{{ item }}</li>{% endfor %}</ul>"
    "{% if more %}<p>… and {{ more }} more</p>{% endif %}",
)
_DIGEST = (
    "Daily digest: {{ count }} notification(s)",
    "{% for section in sections %}{{ section.type }} ({{ section.count }}):"
    "{% for item in section['items'] %}\n- {{ item }}{% endfor %}"
    "{% if section.more %}\n… and {{ section.more }} more{% endif %}\n\n{% endfor %}",
    "{% for section in sections %}<h3>{{ section.type }} ({{ section.count }})</h3><ul>"
    "{% for item in section['items'] %}<li>{{ item }}</li>{% endfor %}</ul>"
    "{% if section.more %}<p>… and {{ section.more }} more</p>{% endif %}{% endfor %}",
)

_envs: dict[tuple[bool, bool], SandboxedEnvironment] = {}
_compiled: dict[tuple[bool, bool, str], jinja2.Template] = {}


def _env(html: bool) -> SandboxedEnvironment:
    strict = is_strict()
    key = (html, strict)
    env = _envs.get(key)
    if env is None:
        env = SandboxedEnvironment(
            autoescape=html,
            undefined=jinja2.StrictUndefined if strict else _Placeholder,
            keep_trailing_newline=True,
        )
        _envs[key] = env
    return env


def _template(source: str, html: bool) -> jinja2.Template:
    strict = is_strict()
    key = (html, strict, source)
    tpl = _compiled.get(key)
    if tpl is None:
        tpl = _env(html).from_string(source)
        _compiled[key] = tpl
    return tpl


def _render(source: str, html: bool, variables: Mapping[str, Any], what: str) -> str:
    try:
        return _template(source, html).render(variables)
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"{what}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"{what}: {type(exc).__name__}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise TemplateError(f"{what}: {type(exc).__name__}: {exc}") from None


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= SUBJECT_MAX else line[: SUBJECT_MAX - 1] + "…"


def _variables(kind: NotificationType, context: Mapping[str, Any], tenant: str) -> dict[str, Any]:
    details = sorted((str(k), v) for k, v in context.items())
    return {**context, "notification": {"type": kind.name, "family": kind.family,
                                        "severity": kind.severity,
                                        "description": kind.description, "tenant": tenant},
            "details": details}


def _sources_render(kind: NotificationType, sources: tuple[str, str, str],
                    variables: Mapping[str, Any]) -> Rendered:
    name = kind.name
    subject = _one_line(_render(sources[0], False, variables, f"{name} subject"))
    text = _render(sources[1], False, variables, f"{name} text")
    content = _render(sources[2], True, variables, f"{name} html")
    html = _render(LAYOUT, True, {**variables, "subject": subject,
                                  "content": jinja2.utils.markupsafe.Markup(content)},
                   f"{name} html layout")
    return Rendered(subject, text, html)


def render(kind: NotificationType, context: Mapping[str, Any], tenant: str = "default") -> Rendered:
    """Subject (one line), text and HTML of one notification."""
    variables = _variables(kind, context, tenant)
    try:
        return _sources_render(kind, templates_of(kind.name), variables)
    except TemplateError:
        if is_strict():
            raise
        log.warning("notification %r: its template failed; the generic one is used", kind.name,
                    exc_info=True)
        return _sources_render(kind, GENERIC, variables)


def render_group(kind: NotificationType, subjects: Sequence[str], tenant: str = "default",
                 listed: int = 200) -> Rendered:
    """One message for many notifications of one type (storm control): the count and the
    subject line of each, up to ``listed`` of them."""
    variables = _variables(kind, {}, tenant)
    variables.update(count=len(subjects), items=list(subjects[:listed]),
                     more=max(0, len(subjects) - listed))
    return _sources_render(kind, _GROUP, variables)


def render_digest(sections: Sequence[Mapping[str, Any]], tenant: str = "default") -> Rendered:
    """The daily digest of one recipient: ``sections`` are {type, count, items, more}."""
    kind = NotificationType("Daily digest", "Mail", "Notifications of the day", "info", "pamflow")
    variables = _variables(kind, {}, tenant)
    variables.update(sections=list(sections), count=sum(int(s["count"]) for s in sections))
    return _sources_render(kind, _DIGEST, variables)
