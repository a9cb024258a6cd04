"""The prober: TCP connects to many endpoints at once, SSH banners read, no store.

``probe(targets)`` opens a TCP connection to every configured port of every target
concurrently (one epoll loop on Linux, asyncio elsewhere; raw non-blocking sockets, a
per-endpoint timeout, bounded concurrency) and reads the SSH banner where the port is SSH.
Large runs fork one process per core. What a port's outcome means for its device
(``verdict``) and the rules of the test are in ``pamflow.connectivity`` and ``.rules``.
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
from dataclasses import dataclass
from datetime import datetime

from ..models import Connectivity, utcnow

SSH_PORT = 22
DETAIL_MAX = 1000
BANNER_MAX = 255

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
    return (family, str(sockaddr[0]))


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
    bounds: list[tuple[int, int]] = []
    acc, start = 0, 0
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
            if not payload:
                raise RuntimeError("connectivity probe in a child process failed: no answer")
            status, value = pickle.loads(payload)  # noqa: S301 - our own child's answer
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
