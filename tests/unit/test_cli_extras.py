"""The `itsacat` command without its `stack` extra: one line naming the extra, not a traceback."""

import pytest

from itsacat import cli


def _missing(name: str):
    def import_module(module: str) -> None:
        raise ModuleNotFoundError(f"No module named '{name}'", name=name)

    return import_module


def test_a_missing_stack_module_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli.importlib, "import_module", _missing("moto.server"))
    assert cli.main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "moto.server is not installed" in err and "pip install 'itsacat[stack]'" in err


def test_any_other_missing_module_is_a_bug_and_is_not_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli.importlib, "import_module", _missing("trainer_lambdas.nope"))
    with pytest.raises(ModuleNotFoundError):
        cli.main(["status"])
