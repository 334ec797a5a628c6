"""The tiers' guards fail a test that breaks the tier's rule: each tier's real conftest.py
(copied into pytester's folder, so the same text runs) against a planted offending test.

Here rather than in tests/unit: the bench conftest imports matplotlib, whose first import on
a fresh machine asks fontconfig in a subprocess, which the unit tier's own guard would refuse.
The nested sessions run in this process (pytester's default), nothing is started.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import data as test_data

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parents[1]

PASSING = """
def test_nothing_forbidden():
    assert 1 + 1 == 2
"""


def run_planted(pytester: pytest.Pytester, tier: str, **planted: str) -> pytest.RunResult:
    """The tier's conftest.py, the planted test modules and one that breaks no rule, run."""
    pytester.makeconftest((TESTS / tier / "conftest.py").read_text())
    pytester.makepyfile(test_passing=PASSING, **planted)
    return pytester.runpytest("-p", "no:cacheprovider")


def test_the_bench_guard_fails_sockets_subprocesses_and_imports(pytester: pytest.Pytester) -> None:
    result = run_planted(
        pytester,
        "bench",
        test_socket="""
import contextlib, importlib

def test_planted():
    socket = importlib.import_module("socket")  # not a module-level import: refused too
    with contextlib.suppress(Exception), socket.socket() as s:  # caught: still a failure
        s.connect(("127.0.0.1", 9))
""",
        test_process="""
import importlib

def test_planted():
    importlib.import_module("subprocess").run(["true"])
""",
        test_import="""
import subprocess

def test_planted():
    pass
""",
    )
    # socket: passes its call, errors at teardown; process: fails, and errors at teardown;
    # import: errors at setup; the test that breaks no rule passes.
    result.assert_outcomes(passed=2, failed=1, errors=3)
    result.stdout.fnmatch_lines_random(
        [
            "*the bench tier may not use: the network (socket.connect to ('127.0.0.1', 9))*",
            "*the bench tier may not use: a subprocess (subprocess.Popen)*",
            "*the bench tier may not import subprocess*",
        ]
    )


def test_the_deploy_guard_fails_a_test_that_leaves_loopback(pytester: pytest.Pytester) -> None:
    result = run_planted(
        pytester,
        "deploy",
        test_planted="""
import contextlib, socket

def test_loopback_is_allowed():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))

def test_planted():
    with contextlib.suppress(Exception), socket.socket() as s:  # caught: still a failure
        s.connect(("192.0.2.1", 443))  # TEST-NET-1: never reached, refused before
""",
    )
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        ["*the deploy tier may not use: the network (socket.connect to ('192.0.2.1', 443))*"]
    )


def test_the_unit_guard_fails_a_test_over_its_time_limit(pytester: pytest.Pytester) -> None:
    """The unit conftest with its limit lowered from 5 s to 0.2 s (and nothing else changed),
    against a test that sleeps 0.5 s."""
    conftest = (TESTS / "unit" / "conftest.py").read_text()
    assert conftest.count("LIMIT_SECONDS = 5.0\n") == 1
    pytester.makeconftest(conftest.replace("LIMIT_SECONDS = 5.0\n", "LIMIT_SECONDS = 0.2\n"))
    pytester.makepyfile(
        test_planted="import time\n\ndef test_planted():\n    time.sleep(0.5)\n",
        test_passing=PASSING,
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        ["*the unit tier may not use: * s of wall-clock time (at most 0.2 s)*"]
    )


def test_missing_shared_data_fails_naming_the_folder_and_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "datasets.h5").write_bytes(b"")
    assert test_data.problems(tmp_path) == [
        "train_catvnoncat.h5 is missing",
        "test_catvnoncat.h5 is missing",
        "images/ has 0 *.jpeg, not 6",
    ]
    monkeypatch.setattr(test_data, "DATA_DIR", tmp_path)
    with pytest.raises(pytest.fail.Exception, match="ITSACAT_TEST_DATA") as failed:
        test_data.require()
    assert str(tmp_path) in str(failed.value)
