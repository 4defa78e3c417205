"""The ``deployer`` command. Errors become one clear line and an exit code.

Exit codes: 0 success, 1 failure, 2 usage error (or, for ``plan``, changes
pending). No traceback reaches the user; ``--debug`` shows one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from deployer import __version__
from deployer.errors import DeployerError, ManifestError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        result: int = args.run(args)
        return result
    except ManifestError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_FAILURE
    except DeployerError as exc:
        if args.debug:
            raise
        print(f"deployer: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deployer", description="GitOps deployer for AI model services")
    parser.add_argument("--version", action="version", version=f"deployer {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", type=Path, help="deployer.toml (default ./deployer.toml or $DEPLOYER_CONFIG)")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.set_defaults(run=_serve)

    validate = commands.add_parser("validate", help="check a service.yaml the way the daemon will")
    validate.add_argument("path", type=Path, nargs="?", default=Path("service.yaml"))
    validate.add_argument("--config", type=Path, help="deployer.toml, for the port range")
    validate.set_defaults(run=_validate)

    schema = commands.add_parser("schema", help="print the JSON Schema of service.yaml")
    schema.set_defaults(run=_schema)
    return parser


def _settings(config: Path | None):  # type: ignore[no-untyped-def]
    from deployer.settings import default_config_path, load_settings

    return load_settings(config if config is not None else default_config_path())


def _serve(args: argparse.Namespace) -> int:
    from deployer.app import configure_logging, serve
    from deployer.settings import default_config_path

    config = args.config if args.config is not None else default_config_path()
    settings = _settings(config)
    configure_logging(args.log_level)
    serve(settings, config_dir=config.resolve().parent if config is not None else None)
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    from deployer.loader import load_manifest_file

    settings = _settings(args.config)
    path: Path = args.path
    if path.is_dir():
        path = path / "service.yaml"
    manifest = load_manifest_file(path, repo_root=path.resolve().parent, port_range=settings.ports.bounds)
    names = ", ".join(service.name for service in manifest.services)
    print(f"{path}: ok ({len(manifest.services)} service{'s' if len(manifest.services) != 1 else ''}: {names})")
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    from deployer.loader import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
