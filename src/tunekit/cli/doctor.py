"""``tunekit doctor``: versions, the accelerator, optional packages and known-incompatible combinations (see
:mod:`tunekit.doctor`). Exit code 1 when something installed is known to be broken, else 0."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tunekit.doctor import format_report, report

__all__ = ["add_doctor_parser"]


def _cmd_doctor(args: argparse.Namespace) -> int:
    r = report()
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
    else:
        print(format_report(r))
        print("\nAttach this output to bug reports.")
    return 0 if r.ok else 1


def add_doctor_parser(sub: Any) -> None:
    doctor = sub.add_parser(
        "doctor",
        help="Versions, CUDA / GPU, optional packages and known-incompatible combinations; exit 1 if one is broken.",
    )
    doctor.add_argument("--json", action="store_true", help="Print JSON (fields: docs/cli.md#tunekit-doctor).")
    doctor.set_defaults(func=_cmd_doctor)
