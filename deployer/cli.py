"""The ``deployer`` command. Errors become one clear line and an exit code.

Exit codes: 0 success, 1 failure, 2 usage error (or, for ``plan``, changes
pending). No traceback reaches the user; ``--debug`` shows one. Commands that
need the daemon talk to its JSON API (URL and token from settings).
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployer import __version__
from deployer.errors import ConfigError, DeployerError, ManifestError
from deployer.settings import Settings

if TYPE_CHECKING:  # the gitea commands import them when run: the other commands start faster
    from deployer.gitea import CheckTargets, GiteaClient, HookMemory

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
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="deployer.toml (default ./deployer.toml or $DEPLOYER_CONFIG)")
    remote = argparse.ArgumentParser(add_help=False, parents=[common])
    remote.add_argument("--url", help="the daemon's URL (default from [server] listen)")
    remote.add_argument("--json", action="store_true", help="print the API's JSON")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the daemon", parents=[common])
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument("--log-format", default="text", choices=["text", "json"])
    serve.set_defaults(run=_serve)
    validate = commands.add_parser("validate", help="check a service.yaml the way the daemon will", parents=[common])
    validate.add_argument("path", type=Path, nargs="?", default=Path("service.yaml"))
    validate.set_defaults(run=_validate)
    commands.add_parser("schema", help="print the JSON Schema of service.yaml").set_defaults(run=_schema)

    _remote(commands, remote, "status", "every service: state, health, port, commits, last attempt", _status)
    _remote(commands, remote, "history", "a service's revisions with their outcome", _history, service=True)
    diff = _remote(commands, remote, "diff", "field-level diff of two revisions' specs", _diff, service=True)
    diff.add_argument("a", type=int, nargs="?", help="older revision (default: the one before B)")
    diff.add_argument("b", type=int, nargs="?", help="newer revision (default: the newest)")
    plan = _remote(commands, remote, "plan", "what the daemon would do now (exit 2: changes pending)", _plan)
    plan.add_argument("service", nargs="?")
    plan.add_argument("--no-fetch", action="store_true", help="plan from the heads already fetched")
    logs = _remote(commands, remote, "logs", "a service's recent output", _logs, service=True)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    logs.add_argument("--bytes", type=int, default=16384)
    # long actions answer at once (202) and are followed until they end, unless --no-wait
    follow = argparse.ArgumentParser(add_help=False, parents=[remote])
    follow.add_argument("--timeout", type=float, default=600, help="seconds to follow it (default 600)")
    follow.add_argument("--no-wait", action="store_true", help="return once the daemon has accepted it")
    reconcile = _remote(commands, follow, "reconcile", "run a pass now (fetch first) and follow it", _reconcile)
    reconcile.add_argument("service", nargs="?")
    reconcile.add_argument("--retry", action="store_true",
                           help="try the service's held failed revision again (needs SERVICE)")
    _remote(commands, follow, "demo", "run the demo inputs against the running revision now", _demo, service=True)
    for name, helptext in (("rollback", "deploy an earlier revision and pin it"),
                           ("pin", "hold a service at a revision (default: the running one)")):
        command = _remote(commands, follow, name, helptext, _act, service=True)
        command.add_argument("revision", type=int, nargs="?")
        command.add_argument("--why", default="")
    for name, helptext in (("stop", "stop services and keep them stopped until started"),
                           ("start", "start stopped services (deploys the wanted revision through the gate)"),
                           ("restart", "restart services through the gate (blue/green behind the gateway)")):
        command = _remote(commands, remote, name, helptext, _operate)
        command.add_argument("services", nargs="*", metavar="NAME")
        command.add_argument("--group", help="every service of this group")
        command.add_argument("--source", help="every service of this source")
        command.add_argument("--all", action="store_true", help="every service")
        command.add_argument("--why", default="")
        command.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the outcome")
    for name, helptext in (("unpin", "follow the branch again"), ("resume", "reconcile a suspended service again"),
                           ("suspend", "stop reconciling a service, leaving it as it is")):
        command = _remote(commands, follow, name, helptext, _act, service=True)
        command.add_argument("--why", default="")
    _gitea_commands(commands, common)
    return parser


def _gitea_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    gitea = commands.add_parser("gitea", help="Gitea onboarding: check the connection, set up the push webhook")
    gitea.set_defaults(run=lambda args: _usage(gitea))
    verbs = gitea.add_subparsers(dest="gitea_command", metavar="COMMAND")
    check = verbs.add_parser("check", parents=[common],
                             help="reach [gitea] url, authenticate, read every followed owner and repository")
    check.add_argument("--repo", action="append", default=[], metavar="OWNER/NAME", help="check this one too")
    check.set_defaults(run=_gitea_check)
    hook = verbs.add_parser("hook", parents=[common],
                            help="create or repair deployer's push webhook on a repository or an organisation")
    hook.add_argument("repo", nargs="?", metavar="OWNER/NAME")
    hook.add_argument("--owner", help="an organisation: one hook for every repository of it")
    hook.add_argument("--branch", help="the branch filter (default [gitea] branch)")
    hook.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    hook.set_defaults(run=_gitea_hook)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _remote(commands: Any, parent: argparse.ArgumentParser, name: str, helptext: str, run: Any, *,
            service: bool = False) -> argparse.ArgumentParser:
    command: argparse.ArgumentParser = commands.add_parser(name, help=helptext, parents=[parent])
    if service:
        command.add_argument("service")
    command.set_defaults(run=run)
    return command


def _settings(config: Path | None) -> Settings:
    from deployer.settings import default_config_path, load_settings

    return load_settings(config if config is not None else default_config_path())


def _serve(args: argparse.Namespace) -> int:
    from deployer.app import serve
    from deployer.settings import default_config_path

    config = args.config if args.config is not None else default_config_path()
    settings = _settings(config)
    serve(settings, config_dir=config.resolve().parent if config is not None else None,
          log_level=args.log_level, log_format=args.log_format)
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


# -- commands that talk to the daemon --------------------------------------


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from deployer.client import ApiClient
    from deployer.secrets import read_local_api_token

    settings = _settings(args.config)
    token = settings.api_token or read_local_api_token(settings.paths.state_dir)  # made by serve on this host
    return ApiClient(args.url or f"http://{settings.server.listen}", token)


def _print_json(data: Any) -> int:
    print(json.dumps(data, indent=2, sort_keys=True))
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from deployer.client import STATUS_HEADERS, status_rows, table

    services = _client(args).get("/api/services")
    if args.json:
        return _print_json(services)
    print(table(status_rows(services), STATUS_HEADERS) if services else "no services yet")
    failing = [s["name"] for s in services if s["state"] == "failed" or
               (s.get("last_attempt") or {}).get("outcome") in ("failed", "rolled_back")]
    return EXIT_FAILURE if failing else EXIT_OK


def _history(args: argparse.Namespace) -> int:
    from deployer.client import HISTORY_HEADERS, history_rows, table

    detail = _client(args).get(f"/api/services/{args.service}")
    if args.json:
        return _print_json({"service": args.service, "revisions": detail["revisions"]})
    print(table(history_rows(detail), HISTORY_HEADERS))
    return EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    data = _client(args).get(f"/api/services/{args.service}/diff", a=args.a, b=args.b)
    if args.json:
        return _print_json(data)
    print(f"{args.service}: revision {data['from'] or '(none)'} -> {data['to']}")
    for change in data["changes"]:
        sign = {"added": "+", "removed": "-", "changed": "~"}[change["kind"]]
        old = "" if change["old"] is None else change["old"]
        new = "" if change["new"] is None else change["new"]
        print(f"  {sign} {change['path']}: {old}{' -> ' if change['kind'] == 'changed' else ''}"
              f"{new if change['kind'] != 'removed' else ''}")
    if not data["changes"]:
        print("  no differences")
    return EXIT_OK


def _plan(args: argparse.Namespace) -> int:
    from deployer.client import table

    query = {"service": args.service} if args.service else {}
    data = _client(args).get("/api/plan", fetch=None if args.no_fetch else "1", **query)
    if args.json:
        _print_json(data)
    else:
        rows = [[item["kind"], item["service"], item["source"], item["reason"]] for item in data["actions"]]
        print(table(rows, ("ACTION", "SERVICE", "SOURCE", "REASON")) if rows else "nothing to plan")
    return EXIT_OK if data["converged"] else EXIT_USAGE


def _logs(args: argparse.Namespace) -> int:
    import time

    client = _client(args)
    text = client.get_text(f"/api/services/{args.service}/logs", bytes=args.bytes)
    sys.stdout.write(text)
    while args.follow:
        time.sleep(1)
        newer = client.get_text(f"/api/services/{args.service}/logs", bytes=args.bytes)
        sys.stdout.write(_new_part(text, newer))
        sys.stdout.flush()
        text = newer
    return EXIT_OK


def _new_part(before: str, after: str) -> str:
    """What ``after`` adds to ``before``: both are tails of the same growing log.

    The end of ``before`` is looked for in ``after``; what follows it is new.
    """
    anchor = before[-256:]
    if not anchor:
        return after
    found = after.rfind(anchor)
    return after[found + len(anchor):] if found >= 0 else after


def _reconcile(args: argparse.Namespace) -> int:
    from deployer.client import newest_attempts

    if args.retry and not args.service:
        print("deployer reconcile: --retry needs a SERVICE (the one whose failed revision to try again)",
              file=sys.stderr)
        return EXIT_USAGE
    body = {"service": args.service, "retry": True} if args.retry else {"service": args.service} if args.service else {}
    client = _client(args)
    before = newest_attempts(client, [args.service]) if args.service else {}
    data = client.post("/api/reconcile", body)
    if not args.json:
        again = f" (retrying {args.service}'s held revision)" if args.retry else ""
        print(f"pass requested for {', '.join(data['requested']) or 'no sources'}{again}")
    return _followed(args, client, data, before)


def _followed(args: argparse.Namespace, client: Any, answer: dict[str, Any], steps_after: dict[str, int]) -> int:
    """An accepted long action (``answer`` holds its operation) followed to its end: exit 1 when an item failed."""
    final = _follow(args, client, answer, steps_after)
    if final is None:
        return EXIT_OK
    if args.json:
        _print_json({**answer, **final})
    return EXIT_FAILURE if any(item["ok"] is False for item in final["items"]) else EXIT_OK


def _follow(args: argparse.Namespace, client: Any, answer: dict[str, Any],
            steps_after: dict[str, int]) -> dict[str, Any] | None:
    """The operation once done, echoing steps and lines as they come; None with ``--no-wait`` (its id said)."""
    from deployer.client import follow_operation

    if args.no_wait:
        if args.json:
            _print_json(answer)
        else:
            print(f"accepted: operation {answer['id']} (GET /api/operations/{answer['id']})")
        return None
    return follow_operation(client, answer, timeout=args.timeout, echo=None if args.json else print,
                            steps_after=steps_after)


def _demo(args: argparse.Namespace) -> int:
    """Followed like any long action, then the answers recorded for the revision it ran against."""
    from deployer.client import table

    client = _client(args)
    final = _follow(args, client, client.post(f"/api/services/{args.service}/demo", {}), {})
    if final is None:
        return EXIT_OK
    item = final["items"][0]
    runs = client.get(f"/api/services/{args.service}/demos")["runs"] if item["revision"] is not None else []
    results: list[dict[str, Any]] = next((run["results"] for run in runs if run["revision"] == item["revision"]), [])
    if args.json:
        _print_json({**final, "service": args.service, "revision": item["revision"], "results": results})
    elif results:
        rows = [[result["name"], "ok" if result["ok"] else "FAILED", result["status"] or "-",
                 f"{result['latency_ms']:.0f} ms" if result["latency_ms"] is not None else "-",
                 result["problems"] or (result["text"] or result["content_type"] or "")[:60]]
                for result in results]
        print(f"{args.service}: revision {item['revision']}")
        print(table(rows, ("DEMO", "RESULT", "HTTP", "LATENCY", "ANSWER")))
    return EXIT_OK if item["ok"] else EXIT_FAILURE


def _act(args: argparse.Namespace) -> int:
    from deployer.client import newest_attempts

    client = _client(args)
    before = newest_attempts(client, [args.service])
    body = {"who": f"{getpass.getuser()}@{socket.gethostname()}", "why": args.why,
            "revision": getattr(args, "revision", None)}
    data = client.post(f"/api/services/{args.service}/{args.command}", body)
    if not args.json:
        print(data["message"])
    return _followed(args, client, data, before)


@dataclass(frozen=True)
class GiteaOnboarding:
    """What ``deployer gitea check|hook`` work with, from the same settings as the daemon."""

    client: GiteaClient
    targets: CheckTargets
    webhook_secret: str | None
    branch: str
    memory: HookMemory


def _gitea(settings: Settings) -> GiteaOnboarding:
    """The Gitea client, what to check and the hook memory, from the daemon's own settings (imports kept light)."""
    from deployer.gitea import CheckTargets, GiteaClient, HookMemory

    if not settings.gitea.url:
        raise ConfigError("[gitea] url is not set (or DEPLOYER_GITEA_URL): which Gitea should deployer talk to?")
    try:
        client = GiteaClient(settings.gitea.url, settings.gitea_token)
    except ValueError as exc:
        raise ConfigError(f"[gitea] url: {exc}") from None
    hook_url = (settings.server.public_url or f"http://{settings.server.listen}").rstrip("/") + "/hooks/gitea"
    targets = CheckTargets(_followed_repositories(settings), tuple(settings.gitea.allowed_owners), hook_url)
    return GiteaOnboarding(client, targets, settings.webhook_secret, settings.gitea.branch,
                           HookMemory(settings.paths.state_dir / "gitea-hooks.json"))


def _followed_repositories(settings: Settings) -> tuple[str, ...]:
    """``[[sources]]`` that are repositories of this Gitea (URL under ``url`` or ``clone_base``), as OWNER/NAME."""
    from deployer.safety import strip_credentials

    bases = [strip_credentials(base).rstrip("/") + "/" for base in (settings.gitea.url, settings.gitea.clone_base)
             if base]
    found = []
    for entry in settings.sources:
        url = strip_credentials(entry.url)
        for base in bases:
            if url.startswith(base):
                owner, _, name = url[len(base):].strip("/").removesuffix(".git").partition("/")
                if owner and name and "/" not in name:
                    found.append(f"{owner}/{name}")
                break
    return tuple(dict.fromkeys(found))


def _gitea_check(args: argparse.Namespace) -> int:
    from deployer.gitea import CheckTargets, check

    onboarding = _gitea(_settings(args.config))
    targets = onboarding.targets
    repos = tuple(dict.fromkeys([*targets.repos, *args.repo]))
    with onboarding.client:
        lines = check(onboarding.client, CheckTargets(repos, targets.owners, targets.hook_url))
    for line in lines:
        print(f"{'note' if line.note else 'ok' if line.ok else 'FAIL':<5} {line.what}: {line.detail}")
    return EXIT_OK if all(line.ok for line in lines) else EXIT_FAILURE


def _gitea_hook(args: argparse.Namespace) -> int:
    from deployer.gitea import GiteaRejected, HookSpec, ensure_hook, split_repo

    if bool(args.repo) == bool(args.owner):
        print("deployer gitea hook: name one repository (OWNER/NAME) or --owner ORG", file=sys.stderr)
        return EXIT_USAGE
    try:
        scope = f"repos/{'/'.join(split_repo(args.repo))}" if args.repo else f"orgs/{args.owner.strip()}"
    except ValueError as exc:
        print(f"deployer gitea hook: {exc}", file=sys.stderr)
        return EXIT_USAGE
    onboarding = _gitea(_settings(args.config))
    if not onboarding.webhook_secret:
        raise ConfigError("no webhook secret is configured ([gitea] webhook_secret_file or "
                          "DEPLOYER_WEBHOOK_SECRET): deployer refuses unsigned deliveries, so set one first")
    spec = HookSpec(onboarding.targets.hook_url, onboarding.webhook_secret, args.branch or onboarding.branch)
    with onboarding.client:
        try:
            change = ensure_hook(onboarding.client, scope, spec, onboarding.memory, dry_run=args.dry_run)
        except GiteaRejected as exc:
            if exc.status_code != 404:
                raise
            what = (f"no organisation {args.owner!r} (a user's repositories need a hook each: "
                    "`deployer gitea hook OWNER/NAME`)" if args.owner else f"no repository {args.repo!r}")
            raise GiteaRejected(f"{what}, or the token cannot see it (gitea answered 404)", status_code=404) from None
    print(change.describe(dry_run=args.dry_run))
    return EXIT_OK


def _operate(args: argparse.Namespace) -> int:
    """stop/start/restart: one operation over the services named; one line per service as each ends."""
    from deployer.client import follow_operation

    if not (args.services or args.group or args.source or args.all):
        print(f"deployer {args.command}: name services, or --group G, --source S or --all", file=sys.stderr)
        return EXIT_USAGE
    body: dict[str, Any] = {"who": f"{getpass.getuser()}@{socket.gethostname()}", "why": args.why,
                            "services": args.services, "group": args.group, "source": args.source, "all": args.all}
    client = _client(args)
    operation = client.post(f"/api/actions/{args.command}", body)
    final = follow_operation(client, operation, timeout=args.timeout,
                             echo=None if args.json else print)
    if args.json:
        _print_json(final)
    return EXIT_FAILURE if any(item["ok"] is False for item in final["items"]) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
