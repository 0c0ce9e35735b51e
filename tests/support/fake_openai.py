"""A small OpenAI-compatible server on loopback that misbehaves on a schedule.

A real server (llama.cpp, vLLM) will not produce 429s, hangs, malformed or truncated
bodies on demand, so the fault-injection tests use this one. It answers
``/v1/completions`` and ``/v1/chat/completions`` with a deterministic label and top-k
log-probabilities. ``schedule`` maps a request's prompt to the behaviours of its
successive attempts (the last one repeats): ``ok``, ``429``, ``500``, ``hang``,
``malformed`` (billed, the body broken JSON), ``truncated`` (billed, then the body cut
short; ``cutbill`` is the same), ``nolabel``, ``slow`` (ok after ``slow_s``), ``drip`` (an ok
body sent one byte every ``drip_s``), ``nan`` (an ok body whose log-probabilities are NaN),
``echo401`` (a 401 whose body echoes the API key the request carried), ``echo``
(an ok answer whose text echoes it), ``redirect`` (a 307 to ``redirect_to``), ``nousage``
/ ``negusage`` (billed; usage left out, or negative), ``latebill`` (billed, then the body sent only after ``hang_s``: cut by the
client's deadline), ``gzipbomb`` (billed; a gzip body of about ``bomb_bytes / 1000`` that
expands to ``bomb_bytes``) and ``hugetext`` (an ok answer whose text is ``huge_chars``
long, whatever ``max_tokens`` was asked).

The server bills like a paid API: every ok body it wrote in full, and every answer the
behaviours above bill, adds its usage to ``billed_tokens_in`` / ``billed_tokens_out``
(``GET /stats`` returns the counters, so a process that only knows the URL can read them);
``billed_unread`` counts the billed answers no client could read whole (``malformed``,
``truncated``, ``latebill``, ``gzipbomb``): a server that sends a 200 has generated, and
billed, the answer, whatever happens to the body on the way. ``python -m
tests.support.fake_openai`` serves with a random fault schedule (:func:`soak_schedule`)
until killed, printing its URL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LABELS = ["negative", "neutral", "positive"]


def label_for(prompt: str) -> str:
    return LABELS[int(hashlib.md5(prompt.encode()).hexdigest(), 16) % 3]


class FakeOpenAI:
    def __init__(self, schedule: Callable[[str], list[str]] | None = None, *, hang_s: float = 5.0,
                 slow_s: float = 0.05, retry_after: str = "0.05", drip_s: float = 1.0,
                 port: int = 0, echo_pads: list[int] | None = None,
                 redirect_to: str = "", bomb_bytes: int = 200 * 2**20,
                 huge_chars: int = 6_500_000) -> None:
        self.schedule = schedule or (lambda prompt: ["ok"])
        self.bomb_bytes, self.huge_chars = bomb_bytes, huge_chars
        self._bomb: bytes | None = None
        self.echo_pads = list(echo_pads or [0])
        """Filler before the key a 401 echoes, one per echo in turn (to move it in the text)."""
        self.redirect_to = redirect_to
        """Where ``redirect`` sends a request (307): this origin ("", a relative location)
        or another server's (``http://host:port``); the path gets a ``/moved`` prefix."""
        self.hang_s, self.slow_s, self.retry_after = hang_s, slow_s, retry_after
        self.drip_s = drip_s
        self.attempts: Counter[str] = Counter()
        self.behaviours: Counter[str] = Counter()
        self.bodies: list[dict] = []
        """Every request body received, in arrival order."""
        self.billed_tokens_in = 0
        self.billed_tokens_out = 0
        self.billed_answers: Counter[str] = Counter()
        """prompt -> answers billed for it (the answers paid for)."""
        self.billed_unread = 0
        """Billed answers whose body no client could read whole (cut short, sent after the
        deadline, a decompression bomb)."""
        self.billed_max_tokens_in = 0
        """The most prompt tokens one billed answer had."""
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        default_error = self.server.handle_error

        def handle_error(request, client_address):  # a client killed mid-request is no error
            if not isinstance(sys.exc_info()[1], ConnectionError):
                default_error(request, client_address)
        self.server.handle_error = handle_error
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def bill(self, prompt: str, usage: dict, readable: bool = True) -> None:
        with self.lock:
            self.billed_tokens_in += usage["prompt_tokens"]
            self.billed_tokens_out += usage["completion_tokens"]
            self.billed_max_tokens_in = max(self.billed_max_tokens_in, usage["prompt_tokens"])
            self.billed_answers[prompt] += 1
            self.billed_unread += not readable

    def stats(self) -> dict:
        with self.lock:
            return {"attempts": sum(self.attempts.values()), "prompts": len(self.attempts),
                    "behaviours": dict(self.behaviours), "billed_tokens_in": self.billed_tokens_in,
                    "billed_tokens_out": self.billed_tokens_out,
                    "billed_answers": sum(self.billed_answers.values()),
                    "billed_unread": self.billed_unread,
                    "billed_max_tokens_in": self.billed_max_tokens_in,
                    "billed_prompts": len(self.billed_answers)}

    def gzip_bomb(self) -> bytes:
        """A gzip stream of ``bomb_bytes`` (a JSON object padded with zeros), made once."""
        with self.lock:
            if self._bomb is None:
                z = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
                parts = [z.compress(b'{"pad": "')]
                block = b"0" * 2**20
                for _ in range(self.bomb_bytes // len(block)):
                    parts.append(z.compress(block))
                parts.append(z.compress(b'"}'))
                parts.append(z.flush())
                self._bomb = b"".join(parts)
            return self._bomb

    def next_behaviour(self, prompt: str) -> str:
        with self.lock:
            n = self.attempts[prompt]
            self.attempts[prompt] += 1
            plan = self.schedule(prompt)
            b = plan[min(n, len(plan) - 1)]
            self.behaviours[b] += 1
            return b

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None,
                      length: int | None = None) -> None:
                try:
                    self._write(code, body, headers, length)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to answer

            def _write(self, code, body, headers, length) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(length if length is not None else len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def do_GET(self):  # noqa: N802
                if self.path.rstrip("/").endswith("/stats"):
                    return self._send(200, json.dumps(fake.stats()).encode())
                return self._send(404, b'{"error": {"message": "not found"}}')

            def _send_ok(self, prompt: str, answer: dict) -> None:
                try:
                    self._write(200, json.dumps(answer).encode(), None, None)
                except (BrokenPipeError, ConnectionResetError):
                    return
                fake.bill(prompt, answer["usage"])

            def do_POST(self):  # noqa: N802
                try:
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                except (ValueError, ConnectionError):  # the client died mid-request
                    self.close_connection = True
                    return None
                with fake.lock:
                    fake.bodies.append(body)
                chat = self.path.endswith("/chat/completions")
                prompt = (body["messages"][-1]["content"] if chat else body["prompt"])
                prompt = prompt if isinstance(prompt, str) else json.dumps(prompt)
                b = fake.next_behaviour(prompt)
                if b == "429":
                    return self._send(429, b'{"error": {"message": "slow down"}}',
                                      {"Retry-After": fake.retry_after})
                if b == "redirect":
                    return self._send(307, b"", {"Location": f"{fake.redirect_to}/moved{self.path}"})
                if b == "500":
                    return self._send(500, b'{"error": {"message": "boom"}}')
                if b == "hang":
                    time.sleep(fake.hang_s)
                    return self._send(200, b"{}")
                if b == "malformed":  # generated and billed; the body sent broken
                    fake.bill(prompt, self._ok(body, chat, prompt, "ok")["usage"], readable=False)
                    return self._send(200, b'{"choices": [{"text": "pos')
                if b in ("truncated", "cutbill"):  # billed in full, the body cut short
                    answer = self._ok(body, chat, prompt, "ok")
                    fake.bill(prompt, answer["usage"], readable=False)
                    full = json.dumps(answer).encode()
                    self._send(200, full[: len(full) // 2], length=len(full))
                    self.close_connection = True
                    return None
                if b in ("nousage", "negusage"):  # billed as usual; usage not said, or nonsense
                    answer = self._ok(body, chat, prompt, "ok")
                    fake.bill(prompt, answer["usage"])
                    if b == "nousage":
                        del answer["usage"]
                    else:
                        answer["usage"] = {**answer["usage"], "prompt_tokens": -40}
                    return self._send(200, json.dumps(answer).encode())
                if b == "latebill":  # billed as sent; the body arrives after the deadline
                    answer = self._ok(body, chat, prompt, "ok")
                    fake.bill(prompt, answer["usage"], readable=False)
                    time.sleep(fake.hang_s)
                    self._send(200, json.dumps(answer).encode())
                    self.close_connection = True
                    return None
                if b == "gzipbomb":  # billed; small on the wire, huge once decompressed
                    fake.bill(prompt, self._ok(body, chat, prompt, "ok")["usage"], readable=False)
                    return self._send(200, fake.gzip_bomb(), {"Content-Encoding": "gzip"})
                if b == "echo401":
                    auth = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    with fake.lock:
                        pad = fake.echo_pads.pop(0)
                        fake.echo_pads.append(pad)
                    msg = json.dumps({"error": {"message": f"invalid api key: {'.' * pad}{auth}"}})
                    return self._send(401, msg.encode())
                if b == "drip":
                    full = json.dumps(self._ok(body, chat, prompt, "ok")).encode()
                    try:
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(full)))
                        self.end_headers()
                        for i in range(len(full)):
                            self.wfile.write(full[i:i + 1])
                            self.wfile.flush()
                            time.sleep(fake.drip_s)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    self.close_connection = True
                    return None
                if b == "slow":
                    time.sleep(fake.slow_s)
                return self._send_ok(prompt, self._ok(body, chat, prompt, b))

            def _ok(self, body, chat, prompt, b):
                label = label_for(prompt)
                if b == "nolabel":
                    tops = [["The", -0.2], ["I", -2.5], ["It", -3.0]]
                    first = "The"
                else:
                    others = [lab for lab in LABELS if lab != label]
                    tops = [[" " + label, -0.3], [" " + others[0], -2.0], [" " + others[1], -3.0],
                            [" Positive" if label != "positive" else " Negative", -4.0], ["\n", -5.0]]
                    first = " " + label
                if b == "nan":
                    tops = [[t, float("nan")] for t, _ in tops]
                text = first
                if b == "echo":
                    text = first + " (you sent " + self.headers.get("Authorization", "") + ")"
                if b == "hugetext":
                    text = first + " " + "x" * (fake.huge_chars - len(first) - 1)
                usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": 1,
                         "total_tokens": len(prompt.split()) + 1}
                if chat:
                    lp = {"content": [{"token": first, "logprob": tops[0][1], "bytes": None,
                                       "top_logprobs": [{"token": t, "logprob": v, "bytes": None}
                                                        for t, v in tops]}]}
                    choice = {"index": 0, "finish_reason": "stop", "logprobs": lp,
                              "message": {"role": "assistant", "content": text}}
                    return {"id": "x", "object": "chat.completion", "created": 0,
                            "model": body["model"], "choices": [choice], "usage": usage}
                lp = {"tokens": [first], "token_logprobs": [tops[0][1]],
                      "top_logprobs": [dict(tops)], "text_offset": [0]}
                return {"id": "x", "object": "text_completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "text": text, "finish_reason": "stop",
                                     "logprobs": lp if body.get("logprobs") else None}],
                        "usage": usage}

        return Handler


SOAK_MODES = ("usage", "nousage", "deadline")


def soak_schedule(fault_rate: float, seed: int = 0,
                  mode: str = "usage") -> Callable[[str], list[str]]:
    """Per prompt, deterministically: mostly answered; ``fault_rate`` of prompts start with
    a transient fault and are answered on the next attempt.

    ``mode``: ``usage`` (answers say their usage; faults 429, 500, malformed, truncated),
    ``nousage`` (the same faults; answers billed without usage) or ``deadline`` (answers
    say their usage; the fault is ``latebill``, an answer billed and sent after the
    client's deadline)."""
    if mode not in SOAK_MODES:
        raise ValueError(f"mode {mode!r}: use one of {SOAK_MODES}")
    faults = ["latebill"] if mode == "deadline" else ["429", "500", "malformed", "truncated"]
    answer = "nousage" if mode == "nousage" else "ok"

    def schedule(prompt: str) -> list[str]:
        rng = random.Random(f"{seed}:{prompt}")
        if rng.random() < fault_rate:
            return [rng.choice(faults), answer]
        return [answer]

    return schedule


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="serve the fault-injecting fake on loopback")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--fault-rate", type=float, default=0.05)
    ap.add_argument("--slow-s", type=float, default=0.0)
    ap.add_argument("--mode", choices=SOAK_MODES, default="usage")
    ap.add_argument("--hang-s", type=float, default=5.0,
                    help="how long hang and latebill wait before answering")
    args = ap.parse_args(argv)
    schedule = soak_schedule(args.fault_rate, mode=args.mode)
    if args.slow_s:  # every plain answer after --slow-s (a teacher's latency)
        inner = schedule

        def schedule(prompt: str) -> list[str]:
            return ["slow" if b == "ok" else b for b in inner(prompt)]
    server = FakeOpenAI(schedule, port=args.port,
                        slow_s=args.slow_s, retry_after="0.05", hang_s=args.hang_s)
    print(server.base_url, flush=True)
    sys.stdout.flush()
    server.server.serve_forever()


if __name__ == "__main__":
    main()
