"""A real OpenSSH sshd on 127.0.0.1 with its own config, host keys and Linux test accounts.

Plain code (no pytest) so benchmarks can start the same server as the tests.
Needs root and Debian's openssh-server and sudo.

``SSHD.start(bind_mounts={"/usr/sbin/chpasswd": wrapper})`` runs sshd in a private mount
namespace (``unshare --mount``) where those files are replaced: its sessions — and sudo in
them — see the replacement, the rest of the machine does not.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pamflow.platform import free_port

SUDOERS_DIR = Path("/etc/sudoers.d")
# where sshd is; PAMFLOW_TEST_SSHD_BIN points at another build (or, in tests of the test
# suite itself, at nothing: a missing peer must fail the run, never skip it)
SSHD_BIN = Path(os.environ.get("PAMFLOW_TEST_SSHD_BIN") or "/usr/sbin/sshd")
FIX = "run the tests as root with openssh-server and sudo installed (scripts/test installs them)"


def _wait_banner(port: int, timeout: float = 15) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                data = s.recv(256)
                if data.startswith(b"SSH-"):
                    return data
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"sshd on port {port} gave no banner within {timeout}s")


@dataclass
class SSHD:
    """A running sshd. ``add_account`` creates real users that log in with passwords."""

    port: int
    workdir: Path
    proc: subprocess.Popen
    accounts: list[str] = field(default_factory=list)
    host_key_pub: str = ""
    command: list[str] = field(default_factory=list)

    @staticmethod
    def _command(config: Path, bind_mounts: dict[str, str | Path] | None) -> list[str]:
        sshd = [str(SSHD_BIN), "-D", "-e", "-f", str(config)]
        if not bind_mounts:
            return sshd
        mounts = " && ".join(f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}"
                             for dst, src in bind_mounts.items())
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f"{mounts} && exec {shlex.join(sshd)}"]

    @classmethod
    def start(cls, max_startups: int = 400,
              bind_mounts: dict[str, str | Path] | None = None) -> SSHD:
        missing = sshd_missing()
        if missing:
            raise RuntimeError(f"{missing}: {FIX}")
        workdir = Path(tempfile.mkdtemp(prefix="pamflow-sshd-"))
        key = workdir / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        Path("/run/sshd").mkdir(exist_ok=True)
        port = free_port()
        config = workdir / "sshd_config"
        config.write_text(
            f"""Port {port}
ListenAddress 127.0.0.1
HostKey {key}
PidFile {workdir / 'sshd.pid'}
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
UsePAM yes
MaxStartups {max_startups}:100:{max_startups * 2}
MaxSessions 100
MaxAuthTries 10
LoginGraceTime 60
UseDNS no
PrintMotd no
PrintLastLog no
Subsystem sftp internal-sftp
"""
        )
        command = cls._command(config, bind_mounts)
        proc = subprocess.Popen(
            command,
            stdout=open(workdir / "sshd.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        server = cls(port=port, workdir=workdir, proc=proc, command=command,
                     host_key_pub=(workdir / "ssh_host_ed25519_key.pub").read_text().strip())
        _wait_banner(port)
        return server

    @property
    def sudoers(self) -> Path:
        """This server's own sudoers drop-in (one per sshd, so parallel runs don't collide)."""
        return SUDOERS_DIR / f"pamflow-tests-{self.port}"

    def add_account(self, password: str, name: str | None = None, sudo_chpasswd: bool = False
                    ) -> str:
        """A new Linux account with ``password``; its name is returned."""
        name = name or f"pft{secrets.token_hex(4)}"
        subprocess.run(["useradd", "-M", "-N", "-s", "/bin/sh", "-d", "/tmp", name], check=True)
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)
        self.accounts.append(name)
        if sudo_chpasswd:
            with self.sudoers.open("a") as fh:
                fh.write(f"{name} ALL=(root) NOPASSWD: /usr/sbin/chpasswd\n")
            self.sudoers.chmod(0o440)
        return name

    def add_accounts(self, passwords: dict[str, str]) -> None:
        """Many accounts at once (name -> password), one useradd each and a single chpasswd."""
        for name in passwords:
            subprocess.run(["useradd", "-M", "-N", "-s", "/bin/sh", "-d", "/tmp", name],
                           check=True)
            self.accounts.append(name)
        body = "".join(f"{n}:{p}\n" for n, p in passwords.items())
        subprocess.run(["chpasswd"], input=body, text=True, check=True)

    def restart_with_new_host_key(self) -> None:
        """Replace the host key (to test host-key-changed handling) and restart sshd."""
        self.proc.terminate()
        self.proc.wait(10)
        key = self.workdir / "ssh_host_ed25519_key"
        key.unlink()
        Path(str(key) + ".pub").unlink()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        self.host_key_pub = Path(str(key) + ".pub").read_text().strip()
        self.proc = subprocess.Popen(
            self.command or self._command(self.workdir / "sshd_config", None),
            stdout=open(self.workdir / "sshd.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        _wait_banner(self.port)

    @property
    def log(self) -> str:
        """What sshd has logged so far (authentication attempts, errors)."""
        return (self.workdir / "sshd.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for name in self.accounts:
            subprocess.run(["userdel", "-f", name], capture_output=True)
        self.accounts.clear()
        self.sudoers.unlink(missing_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


def sshd_missing() -> str | None:
    """Why the sshd peer cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the sshd peer needs root (it creates Linux accounts and a sudoers drop-in)"
    if not SSHD_BIN.exists():
        return f"sshd is not installed ({SSHD_BIN} does not exist)"
    if shutil.which("sudo") is None:
        return "sudo is not installed"
    return None


def sshd_available() -> bool:
    return sshd_missing() is None
