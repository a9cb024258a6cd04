"""A missing peer fails the run: the sshd tests (rotation, fault injection...) are never
skipped, so CI cannot go on to deploy without having run them.

Each case runs pytest in a subprocess the way CI does (``CI=true``), once as an
unprivileged user (the reason CI used to skip every sshd test) and once with sshd absent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# nobody, keeping only the right to read the checkout and the interpreter wherever they live
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "--inh-caps=+dac_override,+dac_read_search",
             "--ambient-caps=+dac_override,+dac_read_search", "--"]


def run_pytest(args: list[str], tmp_path: Path, as_nobody: bool = False, **env: str
               ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "--basetemp", str(tmp_path / "basetemp"), *args]
    if as_nobody and os.geteuid() == 0:
        cmd = AS_NOBODY + cmd
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CI": "true", "PYTHONDONTWRITEBYTECODE": "1", **env})


@pytest.mark.parametrize("why", ["not root", "sshd not installed"])
def test_a_missing_sshd_fails_the_rotation_tests_instead_of_skipping_them(tmp_path, why):
    if why == "not root":
        res = run_pytest(["tests/test_rotation.py"], tmp_path, as_nobody=True)
        reason = "sshd peer unavailable: the sshd peer needs root"
    else:
        res = run_pytest(["tests/test_rotation.py"], tmp_path,
                         PAMFLOW_TEST_SSHD_BIN=str(tmp_path / "no-such-sshd"))
        reason = f"sshd peer unavailable: sshd is not installed ({tmp_path / 'no-such-sshd'}"
    out = res.stdout + res.stderr
    summary = res.stdout.strip().splitlines()[-1]
    assert res.returncode == 1, out[-3000:]
    assert "skipped" not in summary and "passed" not in summary, summary
    errors = int(re.search(r"(\d+) errors?", summary).group(1))
    collected = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only",
                                "-p", "no:cacheprovider", "tests/test_rotation.py"],
                               cwd=ROOT, capture_output=True, text=True, timeout=120).stdout
    assert errors == int(re.search(r"(\d+) tests? collected", collected).group(1)) > 0
    assert reason in out
    assert "Fix: run the tests as root with openssh-server and sudo installed" in out


def test_under_ci_any_skip_fails_the_run(tmp_path):
    """Whatever raises a skip (a plugin, a unittest-style test), CI=true turns it into a failure."""
    case = tmp_path / "test_peer_absent.py"
    case.write_text("import unittest\n\n\ndef test_peer():\n"
                    "    raise unittest.SkipTest('peer absent')\n")
    args = ["-p", "tests.fixtures.peers", "--rootdir", str(tmp_path), str(case)]
    res = run_pytest(args, tmp_path)
    assert res.returncode == 1, res.stdout[-3000:]
    assert "skipped under CI=true, which fails the run instead: peer absent" in res.stdout
    assert "1 failed" in res.stdout.strip().splitlines()[-1]
    outside_ci = run_pytest(args, tmp_path, CI="")
    assert outside_ci.returncode == 0 and "1 skipped" in outside_ci.stdout


def test_the_deploy_workflow_runs_the_suite_as_root_with_ci_true_before_deploying():
    import yaml

    workflow = yaml.safe_load((ROOT / ".github/workflows/deploy.yml").read_text())
    jobs = workflow["jobs"]
    [tests] = [s for s in jobs["test"]["steps"] if "scripts/test" in s.get("run", "")]
    assert tests["run"].startswith("sudo -E ") and "CI=true" in tests["run"]
    assert tests["env"]["CI"] == "true"
    assert jobs["deploy"]["needs"] == "test"
