"""Loading the user's files for commands, with errors as one clear line."""

import sys
from pathlib import Path
from typing import Any

from itsacat.errors import UserError
from trainer_lambdas import datasets
from trainer_lambdas.nn import params as params_mod
from trainer_lambdas.nn.params import ParameterError, Parameters


def load_params(path: str | None, **overrides: Any) -> Parameters:
    """The parameters file at `path` (or the shipped default), with `overrides`: keys of
    parameters.json (`epochs=`, `fanout=`, `plan=`, ...), None meaning not given
    (`params.with_overrides`). A bad file or value is a `UserError` of one line."""
    try:
        if path is None:
            p = params_mod.default()
        else:
            try:
                text = Path(path).read_text()
            except OSError as e:
                raise UserError(f"cannot read parameters file {path}: {e.strerror}") from e
            p = params_mod.loads(text)
        p = params_mod.with_overrides(p, **overrides)
    except ParameterError as e:
        raise UserError(str(e)) from e
    for w in p.warnings:
        print(f"itsacat: warning: {w}", file=sys.stderr)
    return p


def load_dataset(path: str) -> datasets.Dataset:
    try:
        return datasets.load(path)
    except datasets.DatasetError as e:
        raise UserError(str(e)) from e
