"""A Compute Engine REST endpoint for the real google-cloud-compute client (REST
transport, ``api_endpoint`` pointed here): ``instances.aggregatedList`` with
``maxResults``/``pageToken`` paging, per-zone scoped lists (a ``NO_RESULTS_ON_PAGE``
warning for an empty zone, as the API sends), Google's error bodies, a bearer token
checked, and faults on demand (HTTP 429/503 for the next N calls, garbage)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tests.peers.cloud_http import Answer, Peer

PATH = "/compute/v1/projects/{project}/aggregated/instances"


def gcp_instance(iid: int, name: str, zone: str, *, ip: str | None = "10.0.0.1",
                 nat: str | None = None, status: str = "RUNNING",
                 labels: dict[str, str] | None = None, windows: bool = False) -> dict[str, Any]:
    nic: dict[str, Any] = {"name": "nic0", "network": "global/networks/default"}
    if ip is not None:
        nic["networkIP"] = ip
    if nat is not None:
        nic["accessConfigs"] = [{"type": "ONE_TO_ONE_NAT", "name": "External NAT", "natIP": nat}]
    disk: dict[str, Any] = {"boot": True, "licenses": [
        "https://www.googleapis.com/compute/v1/projects/"
        + ("windows-cloud/global/licenses/windows-server-2022-dc" if windows
           else "debian-cloud/global/licenses/debian-12-bookworm")]}
    if windows:
        disk["guestOsFeatures"] = [{"type": "WINDOWS"}]
    return {"kind": "compute#instance", "id": str(iid), "name": name, "status": status,
            "zone": f"https://www.googleapis.com/compute/v1/projects/p/zones/{zone}",
            "labels": labels or {}, "networkInterfaces": [nic], "disks": [disk]}


def google_error(code: int, status: str, message: str) -> Answer:
    body = {"error": {"code": code, "message": message, "status": status,
                      "errors": [{"message": message, "domain": "global",
                                  "reason": status.lower()}]}}
    return code, {"Content-Type": "application/json"}, json.dumps(body).encode()


@dataclass
class FakeCompute:
    project: str = "pamflow-test"
    token: str = "gcp-test-token"
    zones: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fail_next: list[int] = field(default_factory=list)  # statuses for the next calls
    garbage: bytes | None = None
    raw_override: bytes | None = None  # a whole answer instead of the computed one
    page_sizes: list[int] = field(default_factory=list)

    def add(self, zone: str, instance: dict[str, Any]) -> None:
        self.zones.setdefault(zone, []).append(instance)

    def remove(self, iid: int) -> None:
        for zone in self.zones.values():
            zone[:] = [i for i in zone if i["id"] != str(iid)]

    def handle(self, method: str, path: str, query: dict[str, list[str]],
               headers: dict[str, str], body: bytes) -> Answer:
        if method != "GET" or path != PATH.format(project=self.project):
            return google_error(404, "NOT_FOUND", f"The resource '{path}' was not found")
        if headers.get("authorization") != f"Bearer {self.token}":
            return google_error(401, "UNAUTHENTICATED",
                                "Request had invalid authentication credentials.")
        if self.fail_next:
            status = self.fail_next.pop(0)
            return google_error(status, "RESOURCE_EXHAUSTED" if status == 429 else "UNAVAILABLE",
                                "Quota exceeded" if status == 429 else "backend unavailable")
        if self.garbage is not None:
            return 200, {"Content-Type": "application/json"}, self.garbage
        if self.raw_override is not None:
            return 200, {"Content-Type": "application/json"}, self.raw_override
        flat = [(z, i) for z in sorted(self.zones) for i in self.zones[z]]
        size = int(query.get("maxResults", ["500"])[0])
        start = int(query.get("pageToken", ["0"])[0] or 0)
        chunk = flat[start:start + size]
        self.page_sizes.append(len(chunk))
        items: dict[str, Any] = {}
        for zone in sorted(self.zones):
            found = [i for z, i in chunk if z == zone]
            items[f"zones/{zone}"] = {"instances": found} if found else {"warning": {
                "code": "NO_RESULTS_ON_PAGE",
                "message": "There are no results for scope 'zones/" + zone + "' on this page.",
                "data": [{"key": "scope", "value": f"zones/{zone}"}]}}
        answer: dict[str, Any] = {"kind": "compute#instanceAggregatedList",
                                  "id": f"projects/{self.project}/aggregated/instances",
                                  "items": items,
                                  "selfLink": f"https://www.googleapis.com{path}"}
        if start + size < len(flat):
            answer["nextPageToken"] = str(start + size)
        return 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()

    def serve(self) -> Peer:
        return Peer(self.handle).start()
