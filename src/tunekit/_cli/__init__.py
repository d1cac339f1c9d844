"""The ``tunekit`` subcommands that run configs and inspect data (``fit``, ``plan``, ``schema``,
``generate``, ``validate-data``). Each module offers ``add_<name>_parser(subparsers)``, which
``tunekit.cli.build_parser`` calls."""
