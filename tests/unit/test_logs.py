"""Log formats carry service/revision/attempt; secret values never reach the output."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from deployer.logs import JsonFormatter, SecretFilter, TextFormatter
from deployer.secrets import MASK, SecretStore


def emit(formatter: logging.Formatter, secrets: list[str], message: str, *args: object, **extra: object) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(SecretFilter(SecretStore(Path('/nonexistent'), also_mask=secrets).mask))
    logger = logging.getLogger(f"test-{id(stream)}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning(message, *args, extra=extra)
    return stream.getvalue()


def test_json_lines_carry_context() -> None:
    line = emit(JsonFormatter(), [], "%s: deployed", "svc", service="svc", revision=4, attempt=9)
    data = json.loads(line)
    assert data["message"] == "svc: deployed" and data["level"] == "warning"
    assert (data["service"], data["revision"], data["attempt"]) == ("svc", 4, 9)


def test_text_lines_append_context() -> None:
    assert emit(TextFormatter(), [], "hello", service="svc").rstrip().endswith("hello [service=svc]")


def test_secrets_are_masked_in_message_and_arguments() -> None:
    out = emit(JsonFormatter(), ["hunter22", "tok-abcdef"], "token %s leaked in http://x:%s@h",
               "tok-abcdef", "hunter22")
    assert "hunter22" not in out and "tok-abcdef" not in out and out.count(MASK) == 2
