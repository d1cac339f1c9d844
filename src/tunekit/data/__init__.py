"""The data layer: load, validate, normalise, template and tokenise."""

from tunekit.data.encoding import Encoded, encode_examples
from tunekit.data.formats import Example, NormalisedData, detect_format, normalise
from tunekit.data.loading import load_rows
from tunekit.data.templates import CHATML_TEMPLATE, Template, ensure_template

__all__ = [
    "CHATML_TEMPLATE",
    "Encoded",
    "Example",
    "NormalisedData",
    "Template",
    "detect_format",
    "encode_examples",
    "ensure_template",
    "load_rows",
    "normalise",
]
