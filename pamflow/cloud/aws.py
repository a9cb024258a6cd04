"""AWS: EC2 instances of the account's regions, through boto3's ``describe_instances``
paginator, filtered on the server side by state and tags (and checked again here).

Credentials: the access key pair of a vault entry (fields ``access_key_id``,
``secret_access_key``, optional ``session_token``), or boto3's usual chain (environment,
shared config, instance role) when the account says ``sdk``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from .model import CloudAccount, CloudError, CloudInstance, Rejected, clean_text, make_instance

log = logging.getLogger(__name__)

GONE_STATES = ("terminated",)  # listed for an hour after termination: gone for pamflow


def _filters(account: CloudAccount) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = []
    if account.states:
        filters.append({"Name": "instance-state-name", "Values": [s.lower() for s in account.states]})
    for key, value in account.tag_filters.items():
        if value == "*":
            filters.append({"Name": "tag-key", "Values": [key]})
        else:
            filters.append({"Name": f"tag:{key}", "Values": [value]})
    return filters


def _session(secrets: dict[str, str] | None) -> Any:
    import boto3

    if secrets is None:
        return boto3.session.Session()
    try:
        return boto3.session.Session(aws_access_key_id=secrets["access_key_id"],
                                     aws_secret_access_key=secrets["secret_access_key"],
                                     aws_session_token=secrets.get("session_token"))
    except KeyError as exc:
        raise CloudError(f"the vault entry lacks the field {exc.args[0]}") from None


def _error(account: CloudAccount, region: str, exc: Exception) -> CloudError:
    from botocore.exceptions import ClientError

    if type(exc).__name__ == "ResponseParserError":  # its text carries the whole answer
        what = "the answer is not EC2's XML (garbage or truncated)"
    elif isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        what = f"{clean_text(err.get('Code'), 80) or 'error'} (HTTP {status}): " \
               f"{clean_text(err.get('Message'), 200)}"
    else:
        what = f"{type(exc).__name__}: {clean_text(exc, 200)}"
    return CloudError(f"AWS account {account.name}, region {region}: listing instances failed: "
                      f"{what}")


def list_instances(account: CloudAccount, secrets: dict[str, str] | None
                   ) -> Iterator[CloudInstance | Rejected]:
    """Every instance of every configured region (pages of ``page_size`` when set)."""
    from botocore.config import Config

    session = _session(secrets)
    config = Config(retries={"total_max_attempts": account.max_attempts, "mode": "standard"},
                    connect_timeout=10, read_timeout=60, user_agent_extra="pamflow-cloud-import")
    pagination = {"PageSize": max(5, account.page_size)} if account.page_size else {}
    for region in account.regions:
        try:
            client = session.client("ec2", region_name=region, endpoint_url=account.endpoint_url,
                                    verify=account.ca_file or True, config=config)
            pages = client.get_paginator("describe_instances").paginate(
                Filters=_filters(account), PaginationConfig=pagination)
            for page in pages:
                if not isinstance(page, dict):
                    raise CloudError(f"AWS account {account.name}, region {region}: the answer "
                                     "is not a describe_instances page")
                for reservation in page.get("Reservations") or []:
                    for raw in reservation.get("Instances") or []:
                        state = (raw.get("State") or {}).get("Name")
                        if state in GONE_STATES:
                            continue
                        tags = raw.get("Tags") or []
                        name = next((t.get("Value") for t in tags
                                     if isinstance(t, dict) and t.get("Key") == "Name"), None)
                        yield make_instance(
                            external_id=raw.get("InstanceId"), name=name, region=region,
                            private=raw.get("PrivateIpAddress"), public=raw.get("PublicIpAddress"),
                            windows=str(raw.get("Platform") or "").lower() == "windows",
                            state=state, tags=tags)
        except CloudError:
            raise
        except Exception as exc:  # noqa: BLE001 - any SDK failure or malformed answer: one clear error
            raise _error(account, region, exc) from None
