"""Small rules of the rotation protocol that need no target."""

from __future__ import annotations

from pamflow.credentials.work import _endpoint
from pamflow.models import Device


def test_endpoint_uses_the_port_the_protocol_listens_on():
    windows = Device(id=1, name="w1", address="10.0.0.1", platform="windows", ports=[3389, 5985])
    assert _endpoint(windows, "winrm").port == 5985  # not RDP, though it sorts first
    both = Device(id=2, name="w2", address="10.0.0.2", platform="windows", ports=[5985, 5986])
    assert _endpoint(both, "winrm").port == 5986  # HTTPS first
    ldap = Device(id=3, name="d1", address="10.0.0.3", platform="ldap", ports=[389, 636])
    assert _endpoint(ldap, "ldap").port == 636
    odd = Device(id=4, name="s1", address="10.0.0.4", ports=[2222])
    assert _endpoint(odd, "ssh").port == 2222
    pinned = Device(id=5, name="s2", address="10.0.0.5", ports=[22], settings={"port": 2200})
    assert _endpoint(pinned, "ssh").port == 2200
    bare = Device(id=6, name="s3", address="10.0.0.6", ports=[])
    assert _endpoint(bare, "ssh").port == 22
