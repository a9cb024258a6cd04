"""GCP: Compute Engine instances of the account's project, through google-cloud-compute's
``InstancesClient.aggregated_list`` (every zone, page by page), filtered on the server
side by labels and status (and checked again here, with the zones/regions filter).

Credentials: a vault entry holding ``access_token`` (a bearer token issued elsewhere) or
``service_account_json`` (a service-account key, read-only compute scope), or the SDK's
usual chain (Application Default Credentials) when the account says ``sdk``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from .model import CloudAccount, CloudError, CloudInstance, Rejected, clean_text, make_instance

QUIET_WARNINGS = ("NO_RESULTS_ON_PAGE",)
SCOPES = ["https://www.googleapis.com/auth/compute.readonly"]


def _credentials(secrets: dict[str, str] | None) -> Any:
    if secrets is None:
        return None  # the client asks google.auth.default()
    if "access_token" in secrets:
        from google.oauth2.credentials import Credentials

        return Credentials(token=secrets["access_token"])
    if "service_account_json" in secrets:
        from google.oauth2 import service_account

        try:
            info = json.loads(secrets["service_account_json"])
            return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
        except (ValueError, KeyError, TypeError):
            raise CloudError("the vault entry's service_account_json is not a service-account "
                             "key") from None
    raise CloudError("the vault entry holds neither access_token nor service_account_json")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def server_filter(account: CloudAccount) -> str:
    """The aggregatedList ``filter``: labels and statuses, AND-ed (values quoted)."""
    parts = []
    for key, value in account.tag_filters.items():
        label = "".join(ch for ch in key if ch.isalnum() or ch in "_-").lower()
        if label != key:
            continue  # not a GCP label key: checked on this side only
        parts.append(f"(labels.{label}:*)" if value == "*" else f"(labels.{label} = {_quote(value)})")
    if account.states:
        parts.append("(" + " OR ".join(f"(status = {s.upper()})" for s in account.states
                                        if s.isalpha()) + ")")
    return " ".join(p for p in parts if p != "()")


def _zone(scope_key: str, raw_zone: object) -> str:
    text = str(raw_zone or scope_key or "")
    return text.rstrip("/").rsplit("/", 1)[-1]


def _windows(inst: Any) -> bool:
    for disk in getattr(inst, "disks", None) or []:
        if any(str(f.type_).upper() == "WINDOWS" for f in disk.guest_os_features or []):
            return True
        if any("windows-cloud" in str(lic) for lic in disk.licenses or []):
            return True
    return False


def _addresses(inst: Any) -> tuple[str | None, str | None]:
    private = public = None
    for nic in getattr(inst, "network_interfaces", None) or []:
        private = private or (nic.network_i_p or None)
        for ac in nic.access_configs or []:
            public = public or (ac.nat_i_p or None)
    return private, public


def list_instances(account: CloudAccount, secrets: dict[str, str] | None
                   ) -> Iterator[CloudInstance | Rejected]:
    """Every instance of the project's zones (``aggregated_list`` pages)."""
    from google.api_core import exceptions as gexc
    from google.api_core import retry as gretry
    from google.api_core.client_options import ClientOptions
    from google.cloud import compute_v1

    where = f"GCP account {account.name}, project {account.project}"
    try:
        options = ClientOptions(api_endpoint=account.endpoint_url) if account.endpoint_url else None
        client = compute_v1.InstancesClient(credentials=_credentials(secrets), transport="rest",
                                            client_options=options)
        session = getattr(client._transport, "_session", None)
        if account.ca_file and session is not None:
            session.verify = account.ca_file
        request = compute_v1.AggregatedListInstancesRequest(project=account.project)
        flt = server_filter(account)
        if flt:
            request.filter = flt
        if account.page_size:
            request.max_results = account.page_size
        retry = gretry.Retry(
            predicate=gretry.if_exception_type(gexc.TooManyRequests, gexc.ServiceUnavailable,
                                               gexc.InternalServerError, gexc.BadGateway),
            initial=0.2, maximum=2.0, multiplier=2.0, timeout=account.retry_seconds)
        for scope_key, scoped in client.aggregated_list(request=request, retry=retry,
                                                        timeout=60):
            warning = getattr(scoped, "warning", None)
            code = str(getattr(warning, "code", "") or "") if warning else ""
            if code and code not in QUIET_WARNINGS:
                # a zone that did not answer: a partial listing must not mark devices removed
                raise CloudError(f"listing instances failed: {clean_text(scope_key, 80)} "
                                 f"answered {clean_text(code, 60)}: "
                                 f"{clean_text(getattr(warning, 'message', ''), 160)}")
            for inst in scoped.instances or []:
                private, public = _addresses(inst)
                yield make_instance(
                    external_id=str(inst.id) if inst.id else "", name=inst.name,
                    region=_zone(scope_key, inst.zone), private=private, public=public,
                    windows=_windows(inst), state=inst.status, tags=dict(inst.labels or {}))
    except CloudError as exc:
        raise CloudError(f"{where}: {exc}") from None
    except gexc.GoogleAPICallError as exc:
        raise CloudError(f"{where}: listing instances failed: HTTP {exc.code}: "
                         f"{clean_text(exc.message, 200)}") from None
    except gexc.RetryError as exc:
        cause = exc.cause
        detail = f"HTTP {cause.code}: {clean_text(cause.message, 160)}" \
            if isinstance(cause, gexc.GoogleAPICallError) else clean_text(cause, 160)
        raise CloudError(f"{where}: listing instances failed: still refused after retrying "
                         f"for {account.retry_seconds:.0f} s ({detail})") from None
    except Exception as exc:  # noqa: BLE001 - an answer that is not the API's, a dead endpoint
        if type(exc).__name__ == "RefreshError":  # a 401 with a token that cannot refresh
            raise CloudError(f"{where}: the credentials were refused (HTTP 401) and cannot be "
                             "refreshed") from None
        raise CloudError(f"{where}: listing instances failed: {type(exc).__name__}: "
                         f"{clean_text(exc, 200)}") from None
