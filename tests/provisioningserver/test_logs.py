"""Logs for people: repeats limited, noise dropped, workers' lines once."""

from __future__ import annotations

import io
import json

from twisted.logger import LogLevel, formatEvent

from provisioningserver import logs


def event(text: str, level: LogLevel = LogLevel.warn, **extra) -> dict:
    return {"log_format": text, "log_level": level, "log_namespace": "t", **extra}


def test_a_repeated_warning_is_shown_once_a_minute_with_its_cause():
    shown = []
    now = [0.0]
    limiter = logs.RepeatLimiter(shown.append, window=60, clock=lambda: now[0])
    failing = "Handshake with region at 10.0.0.1:5250 failed: wrong digest"
    for _ in range(30):  # Every 2 s for a minute.
        limiter(event(failing))
        now[0] += 2
    limiter(event(failing))
    texts = [formatEvent(e) for e in shown]
    assert texts[0] == failing
    assert len(texts) == 2
    assert texts[1].startswith(failing)
    assert "29 more times in the last 60 s" in texts[1]
    assert "likely cause: this host's secret differs" in texts[1]


def test_info_and_different_messages_go_through():
    shown = []
    limiter = logs.RepeatLimiter(shown.append, clock=lambda: 0.0)
    for _ in range(3):
        limiter(event("hello", LogLevel.info))
    limiter(event("a"))
    limiter(event("b"))
    assert len(shown) == 5


def test_the_limiter_forgets_the_oldest_messages():
    limiter = logs.RepeatLimiter(lambda e: None, clock=lambda: 0.0, limit=10)
    for n in range(100):
        limiter(event(f"message {n}"))
    assert len(limiter._seen) == 10


def test_noise_is_recognised():
    assert logs.isNoise(event("Starting factory {factory!r}", LogLevel.info))
    legacy = {"log_format": "{log_text}", "log_level": LogLevel.info}
    for text in (
        "(TCP Port 5240 Closed)",
        "Site starting on 5240",
        "Main loop terminated.",
        '"127.0.0.1" - - [01/Jan/2026:00:00:00 +0000] "GET /MAAS/rpc/ HTTP/1.1" '
        '200 96 "-" "-"',
    ):
        assert logs.isNoise({**legacy, "log_text": text}), text
    assert not logs.isNoise({**legacy, "log_text": "Cluster x registered."})
    failedPoll = (
        '"127.0.0.1" - - [01/Jan/2026:00:00:00 +0000] "GET /MAAS/rpc/ HTTP/1.1" 503 '
    )
    assert not logs.isNoise({**legacy, "log_text": failedPoll})


def test_worker_lines_are_printed_once_at_their_level():
    out = io.StringIO()
    record = json.dumps({"level": "error", "text": "boom"})
    assert logs.emitWorkerLine(record, "eventloop-1[7]", out, stamp=False) == "error"
    assert logs.emitWorkerLine("plain", "eventloop-1[7]", out, stamp=False) == "info"
    assert logs.emitWorkerLine("", "eventloop-1[7]", out) is None
    assert out.getvalue() == "eventloop-1[7] error: boom\neventloop-1[7] info: plain\n"


def test_a_worker_writes_json_lines():
    out = io.StringIO()
    observer = logs.makeObserver(
        "eventloop", environ={"MAAS_RPC_WORKER": "eventloop-1"}, stream=out
    )
    observer(event("hello {who}", LogLevel.info, who="you"))
    observer(event("Starting factory {factory!r}", LogLevel.info, factory=1))
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [
        {"level": "info", "text": "hello you"}
    ]


def test_under_systemd_lines_carry_no_timestamp():
    out = io.StringIO()
    observer = logs.makeObserver(
        "cluster", environ={"JOURNAL_STREAM": "1:2"}, stream=out
    )
    observer(event("hello", LogLevel.info))
    assert out.getvalue().startswith("cluster[")
