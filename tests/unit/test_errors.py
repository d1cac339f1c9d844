"""The error tree: what each error subclasses, and what DatasetError carries."""

from __future__ import annotations

import pytest

import tunekit as tk
from tunekit import errors


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (tk.ConfigError, ValueError),
        (tk.DatasetError, ValueError),
        (tk.IncompatibleError, ValueError),
        (tk.TrainingError, RuntimeError),
        (tk.MissingDependencyError, ImportError),
    ],
)
def test_errors_subclass_the_builtin_users_catch(cls: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(cls, tk.TunekitError)
    assert issubclass(cls, builtin)


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_is_a_tunekit_error_reexported_at_top_level(name: str) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, errors.TunekitError)
    assert getattr(tk, name) is cls
    assert name in errors.__doc__  # the tree in the module docstring names every error


def test_error_tree_is_exactly_the_documented_one() -> None:
    assert sorted(errors.__all__) == [
        "CheckpointError",
        "ConfigError",
        "DatasetError",
        "ExportError",
        "IncompatibleError",
        "MissingDependencyError",
        "TrainingError",
        "TunekitError",
    ]
    assert tk.TunekitError.__bases__ == (Exception,)
    assert not issubclass(tk.CheckpointError, ValueError)
    assert not issubclass(tk.ExportError, ValueError)


def test_dataset_error_carries_row_and_field() -> None:
    err = tk.DatasetError("row 3, field 'completion': empty string", row=3, field="completion")
    assert str(err) == "row 3, field 'completion': empty string"
    assert (err.row, err.field) == (3, "completion")


def test_dataset_error_row_and_field_default_to_none() -> None:
    err = tk.DatasetError("the dataset is empty")
    assert (err.row, err.field) == (None, None)
    with pytest.raises(TypeError):
        tk.DatasetError("x", 3)  # type: ignore[misc]  # row and field are keyword-only


def test_config_error_is_caught_by_except_value_error() -> None:
    with pytest.raises(ValueError, match=r"^LoRA\(r=0\): r must be at least 1"):
        tk.LoRA(r=0)
