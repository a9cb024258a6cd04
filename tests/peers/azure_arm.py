"""An Azure Resource Manager endpoint (HTTPS, self-signed) for the real azure-mgmt-compute
and azure-mgmt-network clients (``base_url`` pointed here): virtual machines of a
subscription (``$expand=instanceView``), network interfaces and public IP addresses, each
paged with ``nextLink``; a VM's ``instanceView``; ARM error bodies; the bearer token
checked; faults on demand (HTTP 429/503 with Retry-After, garbage)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.peers.cloud_http import Answer, Peer

SUB = "00000000-0000-0000-0000-00000000cafe"
VMS = f"/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachines"
NICS = f"/subscriptions/{SUB}/providers/Microsoft.Network/networkInterfaces"
PIPS = f"/subscriptions/{SUB}/providers/Microsoft.Network/publicIPAddresses"


def rid(group: str, kind: str, name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{group}/providers/{kind}/{name}"


def arm_error(status: int, code: str, message: str, extra: dict[str, str] | None = None) -> Answer:
    return (status, {"Content-Type": "application/json", **(extra or {})},
            json.dumps({"error": {"code": code, "message": message}}).encode())


@dataclass
class FakeArm:
    token: str = "azure-test-token"
    page_size: int = 5
    vms: list[dict[str, Any]] = field(default_factory=list)
    nics: list[dict[str, Any]] = field(default_factory=list)
    pips: list[dict[str, Any]] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)
    garbage: bytes | None = None
    without_instance_view: bool = False  # list_all answers without it: asked per VM
    url: str = ""
    pages: dict[str, int] = field(default_factory=dict)

    def add_vm(self, n: int, *, group: str = "rg-app", location: str = "westeurope",
               private: str | None = "10.1.0.4", public: str | None = None,
               power: str = "running", os_type: str = "Linux",
               tags: dict[str, str] | None = None, name: str | None = None) -> str:
        vm_name = name or f"vm-{n}"
        nic_id = rid(group, "Microsoft.Network/networkInterfaces", f"{vm_name}-nic")
        vm_id = f"{n:08d}-aaaa-bbbb-cccc-{n:012d}"
        ipconf: dict[str, Any] = {"primary": True}
        if private:
            ipconf["privateIPAddress"] = private
        if public:
            pip_id = rid(group, "Microsoft.Network/publicIPAddresses", f"{vm_name}-pip")
            self.pips.append({"id": pip_id, "name": f"{vm_name}-pip", "location": location,
                              "properties": {"ipAddress": public,
                                             "publicIPAllocationMethod": "Static"}})
            ipconf["publicIPAddress"] = {"id": pip_id}
        self.nics.append({"id": nic_id, "name": f"{vm_name}-nic", "location": location,
                          "properties": {"ipConfigurations": [
                              {"id": nic_id + "/ipConfigurations/ipconfig1", "name": "ipconfig1",
                               "properties": ipconf}]}})
        self.vms.append({
            "id": rid(group, "Microsoft.Compute/virtualMachines", vm_name), "name": vm_name,
            "type": "Microsoft.Compute/virtualMachines", "location": location,
            "tags": tags or {},
            "properties": {
                "vmId": vm_id, "hardwareProfile": {"vmSize": "Standard_B1s"},
                "storageProfile": {"osDisk": {"osType": os_type, "name": f"{vm_name}-os",
                                              "createOption": "FromImage"}},
                "networkProfile": {"networkInterfaces": [{"id": nic_id,
                                                          "properties": {"primary": True}}]},
                "provisioningState": "Succeeded",
                "instanceView": {"statuses": [
                    {"code": "ProvisioningState/succeeded", "level": "Info"},
                    {"code": f"PowerState/{power}", "level": "Info",
                     "displayStatus": f"VM {power}"}]}}})
        return vm_id

    def remove_vm(self, vm_id: str) -> None:
        self.vms = [v for v in self.vms if v["properties"]["vmId"] != vm_id]

    def _page(self, path: str, items: list[dict[str, Any]], query: dict[str, list[str]]
              ) -> Answer:
        start = int(query.get("$skiptoken", ["0"])[0] or 0)
        self.pages[path] = self.pages.get(path, 0) + 1
        body: dict[str, Any] = {"value": items[start:start + self.page_size]}
        if start + self.page_size < len(items):
            body["nextLink"] = (f"{self.url}{path}?api-version=2024-07-01"
                                f"&$skiptoken={start + self.page_size}")
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    def handle(self, method: str, path: str, query: dict[str, list[str]],
               headers: dict[str, str], body: bytes) -> Answer:
        if headers.get("authorization") != f"Bearer {self.token}":
            return arm_error(401, "InvalidAuthenticationToken",
                             "The access token is invalid.")
        if self.fail_next:
            status = self.fail_next.pop(0)
            return arm_error(status, "TooManyRequests" if status == 429 else "ServiceUnavailable",
                             "throttled" if status == 429 else "unavailable",
                             {"Retry-After": "0"})
        if self.garbage is not None:
            return 200, {"Content-Type": "application/json"}, self.garbage
        if method == "GET" and path == VMS:
            vms = self.vms
            if self.without_instance_view or query.get("$expand") != ["instanceView"]:
                vms = [{**v, "properties": {k: x for k, x in v["properties"].items()
                                            if k != "instanceView"}} for v in vms]
            return self._page(path, vms, query)
        if method == "GET" and path == NICS:
            return self._page(path, self.nics, query)
        if method == "GET" and path == PIPS:
            return self._page(path, self.pips, query)
        if method == "GET" and path.endswith("/instanceView"):
            for v in self.vms:
                if v["id"].lower() + "/instanceview" == path.lower():
                    return (200, {"Content-Type": "application/json"},
                            json.dumps(v["properties"]["instanceView"]).encode())
        return arm_error(404, "ResourceNotFound", f"The resource '{path}' was not found.")

    def serve(self, cert: tuple[Path, Path]) -> Peer:
        peer = Peer(self.handle, cert=cert).start()
        self.url = peer.url
        return peer
