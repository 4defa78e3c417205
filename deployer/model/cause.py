"""The root cause of a failure, said once: what a person reads on the page, in the CLI and in a commit status.

A crash loop's output holds the same traceback many times, with the daemon's internal paths in it.
``root_cause`` keeps the last one's final exception line and where it was raised (or, with no
traceback, the last distinct error lines); ``readable_paths`` makes paths relative to the
repository checkout and drops the rest of the state dir. The full output is stored with its step.
"""

from __future__ import annotations

import re

MAX_CAUSE = 300  # characters: a commit status description holds little more
_TRACEBACK = "Traceback (most recent call last):"
_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+)')
# A traceback's final line: an exception name (dotted), optionally followed by ": message".
_EXCEPTION = re.compile(r"^(?P<name>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Fault|Failure)|"
                        r"[A-Za-z_][\w.]*\.[A-Z]\w*)(?::\s?(?P<message>.*))?$")
_CHECKOUT = re.compile(r"(?:/[^\s\"':]+)?/checkouts/(?:[^\s/\"']+/)*?[0-9a-f]{40}/")
_SITE_PACKAGES = re.compile(r"(?:/[^\s\"':]+)?/(?P<where>site-packages|dist-packages)/")
_ERRORISH = re.compile(r"error|exception|fatal|failed|cannot|can't|could not|no such|not found|denied|refused|"
                       r"killed|abort|panic|traceback", re.IGNORECASE)


def readable_paths(text: str) -> str:
    """Checkout paths relative to the repository; an environment's packages as ``site-packages/…``."""
    text = _CHECKOUT.sub("", text)
    return _SITE_PACKAGES.sub(lambda match: f"{match['where']}/", text)


def root_cause(output: str, *, limit: int = MAX_CAUSE, errors_only: bool = False) -> str:
    """The cause of a failure from a process's output, once; empty when the output says nothing.

    ``errors_only``: lines that read like errors or nothing (a process that runs but answers its
    health path wrongly logs ordinary lines, which are no cause)."""
    lines = [line.rstrip() for line in readable_paths(output).splitlines()]
    cause, end = _from_traceback(lines)
    later = [index for index in range(end, len(lines)) if _ERRORISH.search(lines[index])]
    # An error said right after the traceback is its epilogue ("Application startup failed"); one said
    # further on is a newer failure (a crash loop's log holds the runs before it too).
    if not cause or (later and later[0] - end > 2):
        if errors_only and not later:
            return cause
        cause = _last_distinct([lines[index] for index in later] or lines[end:])
    return cause if len(cause) <= limit else cause[: limit - 1] + "…"


def _from_traceback(lines: list[str]) -> tuple[str, int]:
    """The last traceback's exception line with the frame (or the syntax error's spot) it points at,
    and the index of the line after it (0 when there is none)."""
    starts = [index for index, line in enumerate(lines) if line.strip() == _TRACEBACK]
    if not starts:
        return "", 0
    first = starts[-1] + 1
    for index in range(first, len(lines)):
        line = lines[index]
        if line[:1].isspace() or not _EXCEPTION.match(line):
            continue
        frames = [match for frame in lines[first:index] if (match := _FRAME.match(frame))]
        where = f" (at {frames[-1]['path']}:{frames[-1]['line']})" if frames else ""
        return f"{line.strip()}{where}", index + 1
    return "", 0


def _last_distinct(lines: list[str], count: int = 2) -> str:
    """The last ``count`` distinct lines that read like errors (else the last distinct lines)."""
    meaningful = [line.strip() for line in lines if line.strip()]
    errors = [line for line in meaningful if _ERRORISH.search(line)] or meaningful
    picked: list[str] = []
    for line in reversed(errors):
        if line not in picked:
            picked.append(line)
        if len(picked) == count:
            break
    return " / ".join(reversed(picked))
