"""Fixtures of the integration tests that several files share."""

from .bad_input_kit import earlier_run  # noqa: F401
