"""Azure: the subscription's virtual machines through azure-mgmt-compute
(``virtual_machines.list_all`` with the instance view, for the power state), their
addresses from the network interfaces and public IP addresses of azure-mgmt-network
(``list_all`` of each, so three paged listings whatever the number of VMs).

Credentials: a vault entry holding ``access_token`` (a bearer token issued elsewhere) or
``tenant_id``/``client_id``/``client_secret`` (a service principal), or the SDK's usual
chain (``DefaultAzureCredential``) when the account says ``sdk``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from .model import CloudAccount, CloudError, CloudInstance, Rejected, clean_text, make_instance

SCOPE = "https://management.azure.com/.default"
TOKEN_LIFETIME = 3600


class StaticToken:
    """A TokenCredential handing out one bearer token issued elsewhere."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(***)"

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(self._token, int(time.time()) + TOKEN_LIFETIME)


def _credential(secrets: dict[str, str] | None) -> Any:
    if secrets is None:
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()
    if "access_token" in secrets:
        return StaticToken(secrets["access_token"])
    if {"tenant_id", "client_id", "client_secret"} <= set(secrets):
        from azure.identity import ClientSecretCredential

        return ClientSecretCredential(secrets["tenant_id"], secrets["client_id"],
                                      secrets["client_secret"])
    raise CloudError("the vault entry holds neither access_token nor tenant_id, client_id "
                     "and client_secret")


def _d(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list:
    return value if isinstance(value, list) else []


def _key(resource_id: Any) -> str:
    return str(resource_id or "").strip().lower()


def _raw(item: Any) -> dict:
    """An ARM resource as its JSON object; CloudError for anything else (a page whose
    ``value`` is not a list of objects is not ARM's answer, and must not read as empty)."""
    raw = item.as_dict() if hasattr(item, "as_dict") else item
    if not isinstance(raw, dict):
        raise CloudError(f"a listed item is a {type(raw).__name__}, not an ARM resource")
    return raw


def _power_state(props: dict) -> str | None:
    for status in _l(_d(props.get("instanceView")).get("statuses")):
        code = str(_d(status).get("code") or "")
        if code.lower().startswith("powerstate/"):
            return code.split("/", 1)[1]
    return None


def _nic_addresses(nics: Iterator[Any], pips: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    """NIC id -> (private address, public address) of its primary IP configuration."""
    found: dict[str, tuple[str | None, str | None]] = {}
    for item in nics:
        nic = _raw(item)
        configs = [_d(c) for c in _l(_d(nic.get("properties")).get("ipConfigurations"))]
        configs.sort(key=lambda c: not _d(c.get("properties")).get("primary"))
        private = public = None
        for c in configs:
            props = _d(c.get("properties"))
            private = private or props.get("privateIPAddress")
            pip = _key(_d(props.get("publicIPAddress")).get("id"))
            public = public or pips.get(pip)
        found[_key(nic.get("id"))] = (private, public)
    return found


def list_instances(account: CloudAccount, secrets: dict[str, str] | None
                   ) -> Iterator[CloudInstance | Rejected]:
    """Every VM of the subscription, with its power state and addresses."""
    from azure.core.exceptions import HttpResponseError
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.network import NetworkManagementClient

    where = f"Azure account {account.name}, subscription {account.subscription_id}"
    step = "listing virtual machines"
    try:
        credential = _credential(secrets)
        kw: dict[str, Any] = {"retry_total": account.max_attempts - 1,
                              "credential_scopes": [SCOPE]}
        if account.endpoint_url:
            kw["base_url"] = account.endpoint_url
        if account.ca_file:
            kw["connection_verify"] = account.ca_file
        compute = ComputeManagementClient(credential, account.subscription_id or "", **kw)
        network = NetworkManagementClient(credential, account.subscription_id or "", **kw)
        vms = [_raw(vm) for vm in compute.virtual_machines.list_all(expand="instanceView")]
        if len(vms) > account.max_instances:
            raise CloudError(f"more than {account.max_instances} virtual machines "
                             "(max_instances): nothing imported")
        step = "listing public IP addresses"
        pips = {_key(p.get("id")): str(_d(p.get("properties")).get("ipAddress") or "")
                for p in map(_raw, network.public_ip_addresses.list_all())}
        step = "listing network interfaces"
        addresses = _nic_addresses(iter(network.network_interfaces.list_all()), pips)
        step = "reading instance views"
        for vm in vms:
            props = _d(vm.get("properties"))
            state = _power_state(props)
            if state is None and vm.get("name") and "/resourcegroups/" in _key(vm.get("id")):
                group = str(vm["id"]).split("/")[4]
                view = _raw(compute.virtual_machines.instance_view(group, str(vm["name"])))
                state = _power_state({"instanceView": view})
            nics = [_d(n) for n in _l(_d(props.get("networkProfile")).get("networkInterfaces"))]
            nics.sort(key=lambda n: not _d(n.get("properties")).get("primary"))
            private = public = None
            for nic in nics:
                p, q = addresses.get(_key(nic.get("id")), (None, None))
                private, public = private or p, public or q
            os_type = _d(_d(props.get("storageProfile")).get("osDisk")).get("osType")
            yield make_instance(
                external_id=props.get("vmId"), name=vm.get("name"), region=vm.get("location"),
                private=private, public=public, windows=str(os_type).lower() == "windows",
                state=state or "unknown", tags=_d(vm.get("tags")))
    except CloudError as exc:
        raise CloudError(f"{where}: {step} failed: {exc}") from None
    except HttpResponseError as exc:
        code = getattr(getattr(exc, "error", None), "code", None) or exc.reason or ""
        message = getattr(getattr(exc, "error", None), "message", None) or ""
        raise CloudError(f"{where}: {step} failed: HTTP {exc.status_code} "
                         f"{clean_text(code, 80)}: {clean_text(message, 200)}") from None
    except Exception as exc:  # noqa: BLE001 - an answer that is not ARM's, a dead endpoint
        raise CloudError(f"{where}: {step} failed: {type(exc).__name__}: "
                         f"{clean_text(exc, 200)}") from None
