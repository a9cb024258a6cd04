"""Connectivity test (seed: "Test all devices registered connections"): the domain, no Prefect.

``probe(targets)`` opens a TCP connection to every configured port of every target
concurrently (asyncio, raw non-blocking sockets, a per-endpoint timeout, bounded
concurrency) and reads the SSH banner where the port is SSH. ``check_devices(engine,
first_id, last_id)`` does one batch end to end: load the devices, probe them, write the
results to the store and queue the notifications.

The rules (what a PAM engineer expects):

- **Which devices.** Active devices with at least one configured port (``Device.ports``).
  Inactive devices are neither probed nor written. A device with no port has no registered
  connection to test: it is counted as "no ports" in the run's report and its row is left
  as it is. Malformed port entries (not an integer in 1..65535) are ignored and named in
  the device's ``connectivity_detail``; they lose nothing else.
- **A port answers** when a TCP connection to ``address:port`` completes within
  ``connect_timeout``. Refused, timed out, network unreachable, a name that does not
  resolve: the port does not answer, and the reason is recorded.
- **SSH ports** are port 22 and the ports named by the device's settings ``ssh_port`` (an
  integer or a list). Their banner (the ``SSH-`` line, RFC 4253 4.2) is read within
  ``banner_timeout`` and recorded in ``connectivity_detail``. Any other port that has
  already sent ``SSH-`` when the connection completes is recorded the same way (a free,
  non-blocking look; the prober never waits on a non-SSH port). An SSH port that accepts
  and closes without a banner, or stays silent, still *answers* (the host and its TCP
  stack are there; sshd does this when it is at ``MaxStartups``); the detail says so.
- **Reachable** when ANY configured port answers (the default: the device is on the
  network and the platform can reach it through at least one of its registered
  connections; ports that did not answer are named in the detail). A device whose settings
  say ``connectivity_rule: "all"`` is reachable only when every configured port answers.
- **State changes.** reachable -> unreachable queues "Lost of connectivity"; unreachable ->
  reachable queues "Connectivity restored"; each also writes an audit row
  (``connectivity.lost`` / ``connectivity.restored``). Both are in the same transaction as
  the state change, and the change is a conditional UPDATE (``WHERE connectivity = old``),
  so two overlapping runs never notify the same change twice. The first check of a device
  (``unknown`` -> either) sets the state silently: there was nothing to lose or restore
  (the unreachable ones are in the run's table of unreachable devices). A device in
  maintenance mode is probed and recorded, and its changes are audited, but no
  notification is queued (downtime is expected).
- **Local failures** (this machine ran out of file descriptors, say) say nothing about
  the device: such a device is "inconclusive", counted in the report and not written.
- **What is written.** Every probed device gets ``connectivity``, ``connectivity_detail``
  and ``last_checked_at``; ``last_seen_at`` only when reachable; ``updated_at`` only on a
  state change. Unchanged devices are written with one executemany UPDATE per batch.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import pickle
import resource
import select as io_select
import socket
import struct
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from . import audit, notifications
from .models import Connectivity, Device, utcnow

ACTOR = "robot:connectivity-test"
SSH_PORT = 22
DETAIL_MAX = 1000
BANNER_MAX = 255
LOST = "Lost of connectivity"
RESTORED = "Connectivity restored"

# a socket created non-blocking in one call where the platform can (Linux)
_STREAM_NONBLOCK = socket.SOCK_STREAM | getattr(socket, "SOCK_NONBLOCK", 0)
_NEEDS_SETBLOCKING = not hasattr(socket, "SOCK_NONBLOCK")
_AF_INET6 = socket.AF_INET6
_EINPROGRESS = errno.EINPROGRESS
_LINGER_ABORT = struct.pack("ii", 1, 0)
_EPOLL_IN = getattr(io_select, "EPOLLIN", 0)
_EPOLL_WATCH = getattr(io_select, "EPOLLOUT", 0) | _EPOLL_IN
_EPOLL_TROUBLE = getattr(io_select, "EPOLLERR", 0) | getattr(io_select, "EPOLLHUP", 0)

# Linux: connects multiplexed on one epoll (_Pump); elsewhere one coroutine per endpoint
USE_EPOLL = hasattr(io_select, "epoll")

# a port's outcome
OPEN = "open"
REFUSED = "refused"
TIMEOUT = "timeout"
UNRESOLVED = "unresolved"
ERROR = "error"
LOCAL = "local-error"  # this machine could not probe (no file descriptor...): says nothing of the device


@dataclass(frozen=True)
class Target:
    """One device to test: where it is and which ports are registered (no secrets)."""

    device_id: int | None
    name: str
    address: str
    ports: tuple[int, ...]
    ssh_ports: frozenset[int] = frozenset({SSH_PORT})
    rule: str = "any"  # any | all
    invalid_ports: tuple[str, ...] = ()


@dataclass
class PortResult:
    """The outcome of one endpoint: ``state`` is open, refused, timeout, unresolved or error."""

    port: int
    state: str
    reason: str | None = None
    banner: str | None = None

    @property
    def answered(self) -> bool:
        return self.state == OPEN

    def describe(self) -> str:
        text = f"{self.port} {self.state}"
        if self.banner:
            text += f" {self.banner}"
        if self.reason:
            text += f" ({self.reason})"
        return text


@dataclass
class DeviceResult:
    """A device's verdict: ``reachable`` by the target's rule, ``reason`` when it is not."""

    target: Target
    ports: list[PortResult]
    reachable: bool
    checked_at: datetime
    reason: str | None = None

    @property
    def inconclusive(self) -> bool:
        """Not reachable, but only because of a local failure: the store keeps its state."""
        return not self.reachable and any(p.state == LOCAL for p in self.ports)

    @property
    def connectivity(self) -> str:
        return Connectivity.reachable if self.reachable else Connectivity.unreachable

    @property
    def banner(self) -> str | None:
        return next((p.banner for p in self.ports if p.banner), None)

    def detail(self) -> str:
        """The text stored in ``Device.connectivity_detail`` (bounded)."""
        parts = [p.describe() for p in self.ports]
        if self.target.invalid_ports:
            parts.append("ignored invalid port(s): " + ", ".join(self.target.invalid_ports))
        text = "; ".join(parts)
        return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 3] + "..."


@dataclass
class BatchReport:
    """What one batch did; small and free of secrets (it becomes a Prefect task result)."""

    devices: int = 0  # active devices in the batch
    tested: int = 0
    reachable: int = 0
    unreachable: int = 0
    no_ports: int = 0
    inconclusive: int = 0  # not recorded: a local failure, not the device's (see LOCAL)
    lost: list[str] = field(default_factory=list)  # device names
    restored: list[str] = field(default_factory=list)
    unreachable_devices: list[dict] = field(default_factory=list)  # name, address, ports, reason

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------
# the prober


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def _effective_concurrency(requested: int) -> int:
    soft = raise_open_files_limit()
    if soft == resource.RLIM_INFINITY:
        return max(1, requested)
    # several batches may probe at once in one process (the flow's thread pool): a quarter each
    return max(1, min(requested, max(16, soft // 4)))


async def _resolve(loop: asyncio.AbstractEventLoop, address: str, timeout: float
                   ) -> tuple[int, str] | str:
    """``(family, ip)`` for ``address``, or the reason it does not resolve."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
        return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET, str(ip))
    except ValueError:
        pass
    if not address or len(address) > 253:
        return f"invalid address {address!r}"
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(address, None, type=socket.SOCK_STREAM)
    except TimeoutError:
        return f"name {address} not resolved within {timeout:g}s"
    except (socket.gaierror, UnicodeError, OSError) as exc:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return f"name {address} not resolved: {why}"
    if not infos:
        return f"name {address} not resolved: no address"
    # prefer IPv4, as most management networks do
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _type, _proto, _canon, sockaddr = infos[0]
    return (family, sockaddr[0])


def _clean_banner(raw: bytes) -> str:
    text = raw.decode("ascii", errors="replace").strip()
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text[:BANNER_MAX]


async def _read_ssh_banner(loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: float
                           ) -> tuple[str | None, str | None]:
    """``(banner, None)`` or ``(None, why not)``; servers may send other lines first."""
    buf = b""
    try:
        async with asyncio.timeout(timeout):
            while len(buf) < 8192:
                chunk = await loop.sock_recv(sock, 1024)
                if not chunk:
                    break
                buf += chunk
                for line in buf.split(b"\n")[:-1]:
                    if line.startswith(b"SSH-"):
                        return _clean_banner(line), None
    except TimeoutError:
        return None, f"no SSH banner within {timeout:g}s"
    except OSError as exc:
        return None, f"no SSH banner: {exc.strerror or exc}"
    if buf.startswith(b"SSH-"):  # a banner without its line end, then EOF
        return _clean_banner(buf.split(b"\n")[0]), None
    if not buf:
        return None, "closed without banner"
    return None, "answered, but not with an SSH banner"


def _new_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


async def _probe_endpoint(loop: asyncio.AbstractEventLoop, family: int, ip: str, port: int, ssh: bool,
                          connect_timeout: float, banner_timeout: float) -> PortResult:
    # out of descriptors is our problem, not the device's: wait for one, never report it
    deadline = loop.time() + max(connect_timeout, 5.0)
    while True:
        try:
            sock = _new_socket(family)
            break
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE) or loop.time() > deadline:
                return PortResult(port, LOCAL, f"local socket: {exc.strerror or exc}")
            await asyncio.sleep(0.05)
    try:
        addr = (ip, port, 0, 0) if family == socket.AF_INET6 else (ip, port)
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.sock_connect(sock, addr)
        except TimeoutError:
            return PortResult(port, TIMEOUT, f"no answer within {connect_timeout:g}s")
        except ConnectionRefusedError:
            return PortResult(port, REFUSED, "connection refused")
        except OSError as exc:
            return PortResult(port, ERROR, exc.strerror or str(exc))
        if ssh:
            banner, why = await _read_ssh_banner(loop, sock, banner_timeout)
            return PortResult(port, OPEN, why, banner)
        try:  # a free look: has the service already greeted us with an SSH banner?
            early = sock.recv(256)
        except OSError:
            early = b""
        if early.startswith(b"SSH-"):
            return PortResult(port, OPEN, None, _clean_banner(early.split(b"\n")[0]))
        return PortResult(port, OPEN)
    finally:
        sock.close()


def verdict(target: Target, ports: list[PortResult], checked_at: datetime) -> DeviceResult:
    """Apply the device's rule (any/all) to its ports' outcomes."""
    answered = [p for p in ports if p.answered]
    failed = [p for p in ports if not p.answered]
    reachable = bool(answered) and (target.rule != "all" or not failed)
    reason = None
    if not reachable:
        if not ports:
            reason = "no valid port configured"
        elif failed and target.rule == "all" and answered:
            reason = "not every port answers (rule: all): " + "; ".join(p.describe() for p in failed)
        elif failed and all(p.state == UNRESOLVED for p in failed):
            reason = failed[0].reason  # the name, once (not once per port)
        else:
            reason = "; ".join(p.describe() for p in failed)
    return DeviceResult(target, ports, reachable, checked_at, reason)


class _Pump:
    """Non-blocking connects multiplexed on one epoll instance that the asyncio loop watches.

    Per endpoint this costs a socket, a ``connect_ex``, an epoll registration and a
    ``SO_ERROR`` read: about a third of the CPU of a coroutine with ``loop.sock_connect``
    and ``asyncio.timeout`` each (measured in bench/connectivity.py). Connect timeouts are
    swept by one timer: every endpoint has the same timeout, so the in-flight table is in
    deadline order. SSH ports that connect are handed to a coroutine to read the banner.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, jobs: Iterator[tuple], results: list,
                 concurrency: int, connect_timeout: float, banner_timeout: float) -> None:
        self.loop, self.jobs, self.results = loop, jobs, results
        self.concurrency, self.connect_timeout, self.banner_timeout = (
            concurrency, connect_timeout, banner_timeout)
        self.epoll = io_select.epoll()
        self.pending: dict[int, tuple] = {}  # fd -> (sock, ti, pi, port, ssh, deadline)
        self.deferred: deque = deque()  # jobs waiting for a free file descriptor
        self.inflight = 0
        self.exhausted = False
        self.timer: asyncio.TimerHandle | None = None
        self.banners: set[asyncio.Task] = set()
        self.done: asyncio.Future = loop.create_future()

    async def run(self) -> None:
        fd = self.epoll.fileno()
        self.loop.add_reader(fd, self._guard, self._on_ready)
        try:
            self._guard(self._start_more)
            await self.done
        finally:
            self.loop.remove_reader(fd)
            if self.timer:
                self.timer.cancel()
            for entry in self.pending.values():
                entry[0].close()
            for task in self.banners:
                task.cancel()
            self.epoll.close()

    def _guard(self, fn) -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - surfaces in run(), never hangs it
            if not self.done.done():
                self.done.set_exception(exc)

    def _start_more(self) -> None:
        loop, pending, register, new_socket = self.loop, self.pending, self.epoll.register, socket.socket
        deadline = loop.time() + self.connect_timeout  # one clock read per refill
        while self.inflight < self.concurrency:
            if self.deferred:
                job = self.deferred.popleft()
            else:
                job = next(self.jobs, None)
                if job is None:
                    self.exhausted = True
                    break
            ti, pi, family, ip, port, ssh, tries = job
            try:
                sock = new_socket(family, _STREAM_NONBLOCK)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE) and tries < 200:
                    # out of descriptors is our problem, not the device's: wait, never report it
                    self.deferred.appendleft((ti, pi, family, ip, port, ssh, tries + 1))
                    if self.inflight == 0:
                        loop.call_later(0.05, self._guard, self._start_more)
                    return
                self.results[ti][pi] = PortResult(port, LOCAL, f"local socket: {exc.strerror or exc}")
                continue
            if _NEEDS_SETBLOCKING:
                sock.setblocking(False)
            err = sock.connect_ex((ip, port, 0, 0) if family == _AF_INET6 else (ip, port))
            if err == _EINPROGRESS:
                fd = sock.fileno()
                register(fd, _EPOLL_WATCH)
                pending[fd] = (sock, ti, pi, port, ssh, deadline)
                self.inflight += 1
                if self.timer is None:
                    self.timer = loop.call_at(deadline, self._guard, self._on_timer)
            else:
                self._connected(sock, ti, pi, port, ssh, err)
        if self.exhausted and self.inflight == 0 and not self.deferred and not self.done.done():
            self.done.set_result(None)

    def _connected(self, sock: socket.socket, ti: int, pi: int, port: int, ssh: bool, err: int,
                   readable: bool = False) -> None:
        if err == 0 and ssh:
            try:  # the banner is read through the event loop's own selector from here on
                self.epoll.unregister(sock.fileno())
            except OSError:
                pass  # connected at once: never registered
            self.inflight += 1
            task = self.loop.create_task(self._banner(sock, ti, pi, port))
            self.banners.add(task)
            return
        if err == 0:
            early = b""
            if readable:  # a free look: has the service already greeted us with an SSH banner?
                try:
                    early = sock.recv(256)
                except OSError:
                    pass
            # close with a reset, as port scanners do: no FIN exchange, no TIME_WAIT left here
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
            banner = _clean_banner(early.split(b"\n")[0]) if early.startswith(b"SSH-") else None
            result = PortResult(port, OPEN, None, banner)
        elif err == errno.ECONNREFUSED:
            result = PortResult(port, REFUSED, "connection refused")
        elif err == errno.ETIMEDOUT:
            result = PortResult(port, TIMEOUT, "connection timed out")
        else:
            result = PortResult(port, ERROR, os.strerror(err))
        sock.close()
        self.results[ti][pi] = result

    async def _banner(self, sock: socket.socket, ti: int, pi: int, port: int) -> None:
        try:
            banner, why = await _read_ssh_banner(self.loop, sock, self.banner_timeout)
            self.results[ti][pi] = PortResult(port, OPEN, why, banner)
        finally:
            sock.close()
            self.inflight -= 1
            self.banners.discard(asyncio.current_task())
            self._guard(self._start_more)

    def _finish(self, fd: int) -> tuple:
        # unregister explicitly: closing the socket removes it from the epoll only while it
        # is the file's sole descriptor, and a probe forked by another thread holds copies
        try:
            self.epoll.unregister(fd)
        except OSError:
            pass
        entry = self.pending.pop(fd)
        self.inflight -= 1
        return entry

    def _on_ready(self) -> None:
        for fd, events in self.epoll.poll(0, 4096):
            if fd not in self.pending:
                continue
            sock, ti, pi, port, ssh, _deadline = self._finish(fd)
            if events & _EPOLL_TROUBLE:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err == errno.ECONNRESET:  # accepted, then reset: the port answered
                    err = 0
            else:
                err = 0  # writable without error: connected
            self._connected(sock, ti, pi, port, ssh, err, bool(events & _EPOLL_IN))
        self._start_more()

    def _on_timer(self) -> None:
        self.timer = None
        now = self.loop.time()
        expired = []
        for fd, entry in self.pending.items():
            if entry[5] > now:
                break
            expired.append(fd)
        for fd in expired:
            sock, ti, pi, port, _ssh, _deadline = self._finish(fd)
            sock.close()
            self.results[ti][pi] = PortResult(port, TIMEOUT, f"no answer within {self.connect_timeout:g}s")
        if self.pending:
            self.timer = self.loop.call_at(next(iter(self.pending.values()))[5],
                                           self._guard, self._on_timer)
        self._start_more()


async def probe_async(targets: Sequence[Target], *, connect_timeout: float = 3.0,
                      banner_timeout: float = 3.0, resolve_timeout: float = 5.0,
                      concurrency: int = 500) -> list[DeviceResult]:
    """Probe every port of every target; results in the order of ``targets``.

    Names are resolved first (each distinct name once, 64 at a time), then every endpoint
    is connected with at most ``concurrency`` connections in flight.
    """
    loop = asyncio.get_running_loop()
    results: list[list[PortResult | None]] = [[None] * len(t.ports) for t in targets]
    names = {t.address for t in targets if t.ports} - {""}
    places: dict[str, tuple[int, str] | str] = {}
    for name in list(names):
        try:
            ip = ipaddress.ip_address(name.strip("[]"))
            places[name] = (socket.AF_INET6 if ip.version == 6 else socket.AF_INET, str(ip))
            names.discard(name)
        except ValueError:
            pass
    if names:
        gate = asyncio.Semaphore(64)

        async def resolve(name: str) -> None:
            async with gate:
                places[name] = await _resolve(loop, name, resolve_timeout)

        await asyncio.gather(*(resolve(n) for n in names))

    def jobs() -> Iterator[tuple]:
        for ti, target in enumerate(targets):
            place = places.get(target.address, f"invalid address {target.address!r}")
            for pi, port in enumerate(target.ports):
                if isinstance(place, str):
                    results[ti][pi] = PortResult(port, UNRESOLVED, place)
                else:
                    yield ti, pi, place[0], place[1], port, port in target.ssh_ports, 0

    total = sum(len(t.ports) for t in targets)
    limit = min(_effective_concurrency(concurrency), max(1, total))
    if USE_EPOLL:
        await _Pump(loop, jobs(), results, limit, connect_timeout, banner_timeout).run()
    else:  # one coroutine per endpoint in flight (portable, slower)
        work = jobs()

        async def worker() -> None:
            for ti, pi, family, ip, port, ssh, _tries in work:
                try:
                    results[ti][pi] = await _probe_endpoint(
                        loop, family, ip, port, ssh, connect_timeout, banner_timeout)
                except Exception as exc:  # noqa: BLE001 - one endpoint never stops the others
                    results[ti][pi] = PortResult(port, ERROR, f"{type(exc).__name__}: {exc}")

        await asyncio.gather(*(worker() for _ in range(limit)))
    now = utcnow()
    return [verdict(t, [r for r in rs if r is not None], now) for t, rs in zip(targets, results, strict=True)]


PARALLEL_MIN_ENDPOINTS = 2000


def probe(targets: Sequence[Target], *, processes: int = 1, **options) -> list[DeviceResult]:
    """``probe_async`` from synchronous code (also when an event loop already runs here).

    With ``processes`` > 1 and enough endpoints, the targets are split into that many
    slices, each probed by a forked copy of this process (the parent probes the first), so
    the kernel's connect work runs on every core. Results keep the order of ``targets``.
    """
    endpoints = sum(len(t.ports) for t in targets)
    if processes > 1 and endpoints >= PARALLEL_MIN_ENDPOINTS and hasattr(os, "fork"):
        return _probe_forked(targets, processes, options)
    return _probe_here(targets, options)


def _slices(targets: Sequence[Target], n: int) -> list[Sequence[Target]]:
    """``n`` contiguous slices with about the same number of endpoints each."""
    total = sum(len(t.ports) for t in targets)
    bounds, acc, start = [], 0, 0
    for i, target in enumerate(targets):
        acc += len(target.ports)
        if len(bounds) < n - 1 and acc >= total * (len(bounds) + 1) / n:
            bounds.append((start, i + 1))
            start = i + 1
    bounds.append((start, len(targets)))
    return [targets[a:b] for a, b in bounds if b > a]


def _probe_forked(targets: Sequence[Target], processes: int, options: dict) -> list[DeviceResult]:
    slices = _slices(targets, processes)
    per_slice = dict(options)
    if "concurrency" in per_slice:
        per_slice["concurrency"] = max(1, per_slice["concurrency"] // len(slices))
    children: list[tuple[int, int]] = []
    try:
        for part in slices[1:]:
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: probe its slice, send the results, never return
                code = 0
                try:
                    os.close(read_end)
                    data = pickle.dumps(("ok", _probe_here(part, per_slice)))
                except BaseException as exc:  # noqa: BLE001 - reported to the parent
                    data, code = pickle.dumps(("error", f"{exc.__class__.__name__}: {exc}")), 1
                try:
                    with os.fdopen(write_end, "wb") as out:
                        out.write(data)
                finally:
                    os._exit(code)
            os.close(write_end)
            children.append((pid, read_end))
        results = list(_probe_here(slices[0], per_slice))
        for pid, read_end in children:
            with os.fdopen(read_end, "rb") as inp:
                payload = inp.read()
            os.waitpid(pid, 0)
            status, value = pickle.loads(payload) if payload else ("error", "no answer")  # noqa: S301
            if status != "ok":
                raise RuntimeError(f"connectivity probe in a child process failed: {value}")
            results.extend(value)
        children.clear()
        return results
    finally:
        for pid, read_end in children:  # parent failed: do not leave children behind
            try:
                os.close(read_end)
                os.waitpid(pid, 0)
            except OSError:
                pass


def _probe_here(targets: Sequence[Target], options: dict) -> list[DeviceResult]:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(probe_async(targets, **options))
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = asyncio.run(probe_async(targets, **options))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="pamflow-connectivity-probe")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


# ---------------------------------------------------------------------------------------
# devices from the store, results to the store


def _port_list(raw: object) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Valid ports (deduplicated, in order) and the entries that are not ports."""
    items = raw if isinstance(raw, list | tuple) else ([] if raw in (None, "") else [raw])
    ports: list[int] = []
    invalid: list[str] = []
    for item in items:
        try:
            if isinstance(item, bool) or (isinstance(item, float) and not item.is_integer()):
                raise ValueError
            port = int(str(item).strip()) if isinstance(item, str) else int(item)
        except (TypeError, ValueError):
            invalid.append(str(item)[:20])
            continue
        if not 1 <= port <= 65535:
            invalid.append(str(item)[:20])
        elif port not in ports:
            ports.append(port)
    return tuple(ports), tuple(invalid)


def target_of(device_id: int | None, name: str, address: str, ports: object,
              settings: dict | None = None) -> Target:
    """The ``Target`` for a device row's values (ports and settings as stored)."""
    settings = settings if isinstance(settings, dict) else {}
    valid, invalid = _port_list(ports)
    ssh_ports = {SSH_PORT}
    ssh_setting = settings.get("ssh_port", settings.get("ssh_ports"))
    if ssh_setting is not None:
        ssh_ports.update(_port_list(ssh_setting)[0])
    rule = "all" if str(settings.get("connectivity_rule", "any")).lower() == "all" else "any"
    return Target(device_id, name, (address or "").strip(), valid, frozenset(ssh_ports), rule, invalid)


def plan_batches(engine: Engine, batch_size: int = 1000) -> list[tuple[int, int]]:
    """Active devices split into ``(first_id, last_id)`` ranges of ``batch_size`` devices."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    with Session(engine) as db:
        ids = db.exec(select(Device.id).where(Device.active).order_by(Device.id)).all()
    return [(ids[i], ids[min(i + batch_size, len(ids)) - 1]) for i in range(0, len(ids), batch_size)]


def load_targets(engine: Engine, first_id: int | None = None, last_id: int | None = None
                 ) -> tuple[list[Target], int]:
    """Active devices with ports in ``[first_id, last_id]``, and how many have none."""
    t = Device.__table__.c
    query = sa.select(t.id, t.name, t.address, t.ports, t.settings).where(t.active.is_(True))
    if first_id is not None:
        query = query.where(t.id >= first_id)
    if last_id is not None:
        query = query.where(t.id <= last_id)
    targets: list[Target] = []
    no_ports = 0
    with engine.connect() as conn:
        for row in conn.execute(query.order_by(t.id)):
            target = target_of(row.id, row.name, row.address, row.ports, row.settings)
            if target.ports:
                targets.append(target)
            elif target.invalid_ports:  # only malformed entries: tested, and unreachable
                targets.append(target)
            else:
                no_ports += 1
    return targets, no_ports


def _notify(db: Session, kind: str, device: dict, result: DeviceResult, maintenance: bool) -> None:
    target = result.target
    ports = ", ".join(str(p) for p in target.ports) or "none"
    if kind == LOST:
        subject = f"Lost of connectivity: {target.name} ({target.address})"
        body = (f"Device {target.name} ({target.address}) no longer answers on its configured "
                f"ports ({ports}): {result.reason}. Checked at {result.checked_at.isoformat()}.")
        action = "connectivity.lost"
    else:
        subject = f"Connectivity restored: {target.name} ({target.address})"
        body = (f"Device {target.name} ({target.address}) answers again on its configured ports "
                f"({ports}): {result.detail()}. Checked at {result.checked_at.isoformat()}.")
        action = "connectivity.restored"
    context = {
        "device_id": target.device_id,
        "device": target.name,
        "address": target.address,
        "ports": list(target.ports),
        "reason": result.reason,
        "detail": result.detail(),
        "checked_at": result.checked_at.isoformat(),
        "previous": device["connectivity"],
    }
    if not maintenance:
        notifications.queue(db, kind, subject, body, context)
    audit.record(db, ACTOR, action, "device", target.device_id,
                 {"from": device["connectivity"], "to": result.connectivity,
                  "reason": result.reason, "ports": list(target.ports),
                  "notified": not maintenance})


def record_results(engine: Engine, results: Sequence[DeviceResult]) -> BatchReport:
    """Write a batch's results in one transaction; queue notifications for state changes."""
    report = BatchReport()
    if not results:
        return report
    t = Device.__table__.c
    table = Device.__table__
    ids = [r.target.device_id for r in results]
    plain_seen: list[dict] = []
    plain_unseen: list[dict] = []
    changes: list[tuple[DeviceResult, dict]] = []
    with Session(engine) as db:
        current = {
            row.id: row._asdict()
            for row in db.execute(
                sa.select(t.id, t.connectivity, t.maintenance_mode, t.active).where(t.id.in_(ids)))
        }
        for result in results:
            device = current.get(result.target.device_id)
            if device is None or not device["active"]:  # deleted or deactivated meanwhile
                continue
            if result.inconclusive:
                continue
            old, new = device["connectivity"], result.connectivity
            if old != new and old in (Connectivity.reachable, Connectivity.unreachable):
                changes.append((result, device))
                continue
            values = {"_id": result.target.device_id, "_state": new, "_detail": result.detail(),
                      "_checked": result.checked_at}
            if old != new:  # first check: silent
                values["_updated"] = result.checked_at
            (plain_seen if result.reachable else plain_unseen).append(values)
        by_id = sa.bindparam("_id")
        base = {"connectivity": sa.bindparam("_state"), "connectivity_detail": sa.bindparam("_detail"),
                "last_checked_at": sa.bindparam("_checked")}
        for rows, seen in ((plain_seen, True), (plain_unseen, False)):
            for with_updated in (True, False):
                group = [r for r in rows if ("_updated" in r) == with_updated]
                if not group:
                    continue
                values = dict(base)
                if seen:
                    values["last_seen_at"] = sa.bindparam("_checked")
                if with_updated:
                    values["updated_at"] = sa.bindparam("_updated")
                db.execute(sa.update(table).where(t.id == by_id).values(**values), group)
        for result, device in changes:
            values = {"connectivity": result.connectivity, "connectivity_detail": result.detail(),
                      "last_checked_at": result.checked_at, "updated_at": result.checked_at}
            if result.reachable:
                values["last_seen_at"] = result.checked_at
            done = db.execute(
                sa.update(table)
                .where(t.id == result.target.device_id, t.connectivity == device["connectivity"])
                .values(**values)
            )
            if done.rowcount != 1:  # another run recorded this change first: it notified
                continue
            if result.reachable:
                _notify(db, RESTORED, device, result, device["maintenance_mode"])
                report.restored.append(result.target.name)
            else:
                _notify(db, LOST, device, result, device["maintenance_mode"])
                report.lost.append(result.target.name)
        db.commit()
    for result in results:
        if result.inconclusive:
            report.inconclusive += 1
            continue
        report.tested += 1
        if result.reachable:
            report.reachable += 1
        else:
            report.unreachable += 1
            report.unreachable_devices.append(unreachable_row(result))
    return report


def unreachable_row(result: DeviceResult) -> dict:
    """A row of the unreachable-devices table (name, address, ports, reason)."""
    target = result.target
    return {
        "name": target.name,
        "address": target.address,
        "ports": ", ".join(str(p) for p in target.ports) or "-",
        "reason": (result.reason or "")[:300],
    }


def check_devices(engine: Engine, first_id: int | None = None, last_id: int | None = None,
                  **options) -> BatchReport:
    """One batch end to end: load the active devices in the id range, probe them, record.

    Large batches are probed by one process per core (``processes``, default: every core).
    """
    targets, no_ports = load_targets(engine, first_id, last_id)
    options.setdefault("processes", os.cpu_count() or 1)
    results = probe(targets, **options) if targets else []
    report = record_results(engine, results)
    report.no_ports = no_ports
    report.devices = len(targets) + no_ports
    return report
