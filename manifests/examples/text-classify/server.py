"""A small text classifier with the deployer service contract: POST /predict, GET /health, GET /info.

A lexicon model: it scores text by weighted sentiment words with negation
handling and returns a softmax over {negative, neutral, positive}. Standard
library only, so it starts in well under a second.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LEXICON = {
    "excellent": 2.0, "great": 1.6, "good": 1.0, "love": 1.8, "nice": 0.8, "fast": 0.6, "happy": 1.2,
    "amazing": 2.0, "reliable": 1.0, "clean": 0.6, "recommend": 1.2,
    "terrible": -2.0, "awful": -2.0, "bad": -1.2, "poor": -1.2, "slow": -0.8, "weak": -0.8, "hate": -1.8,
    "broken": -1.6, "crash": -1.4, "crashes": -1.4, "disappointing": -1.5, "refund": -1.0,
}
NEGATIONS = {"not", "no", "never", "hardly", "isn't", "wasn't", "don't", "doesn't", "didn't"}
WORD = re.compile(r"[a-z']+")
LABELS = ("negative", "neutral", "positive")
STARTED = time.time()


def classify(text: str) -> dict[str, object]:
    words = WORD.findall(text.lower())
    score, hits = 0.0, []
    for index, word in enumerate(words):
        weight = LEXICON.get(word)
        if weight is None:
            continue
        if any(previous in NEGATIONS for previous in words[max(0, index - 2):index]):
            weight = -weight
        score += weight
        hits.append({"word": word, "weight": weight})
    logits = {"negative": -score, "neutral": 1.0 - abs(score), "positive": score}
    top = max(logits.values())
    exp = {label: math.exp(value - top) for label, value in logits.items()}
    total = sum(exp.values())
    scores = {label: round(exp[label] / total, 4) for label in LABELS}
    return {"label": max(scores, key=scores.__getitem__), "scores": scores, "evidence": hits}


class Handler(BaseHTTPRequestHandler):
    server_version = "text-classify/1.0"

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        elif self.path == "/info":
            self._send(200, {
                "name": "text-classify",
                "model": os.environ.get("MODEL_NAME", "lexicon-sentiment"),
                "version": os.environ.get("MODEL_VERSION", "1.0"),
                "labels": list(LABELS),
                "uptime_s": round(time.time() - STARTED, 1),
            })
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        if self.path != "/predict":
            self._send(404, {"error": f"no route {self.path}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > 1_000_000:
            self._send(413, {"error": "body too large"})
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            text = body["text"]
            if not isinstance(text, str):
                raise TypeError("text must be a string")
        except (ValueError, KeyError, TypeError) as exc:
            self._send(400, {"error": f"expected JSON {{\"text\": \"...\"}}: {exc}"})
            return
        self._send(200, classify(text))

    def _send(self, status: int, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        print(f"{self.address_string()} {format % args}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"text-classify listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
