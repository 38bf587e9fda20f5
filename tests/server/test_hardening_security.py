"""The token never appears in answers, short tokens are refused, failed authentication is rate-limited."""

from __future__ import annotations

import pytest

from genloom.server.app import Config, Server, main
from genloom.server.security import FailedAuth, WeakToken, hide_token
from server_support import Http, InProcessServer, write_plugins

TOKEN = "correct-horse-battery-staple"


def test_system_stats_does_not_echo_the_token(tmp_path):
    server = InProcessServer(tmp_path / "data", write_plugins(tmp_path / "plugins"), token=TOKEN)
    server.config.argv[:] = ["genloom", "serve", "--token", TOKEN, f"--token={TOKEN}", "--port", "0"]
    try:
        status, raw = Http(server.base, {"Authorization": f"Bearer {TOKEN}"}).get("/system_stats", raw=True)
        assert status == 200 and TOKEN.encode() not in raw
        assert b'"--token", "***"' in raw and b"--token=***" in raw and b'"--port", "0"' in raw
    finally:
        server.stop()


def test_hide_token_keeps_everything_else():
    assert hide_token(["a", "--token", "x", "--token=y", "--tokenish", "z"]) == \
        ["a", "--token", "***", "--token=***", "--tokenish", "z"]


def test_tokens_shorter_than_16_characters_are_refused(tmp_path, capsys):
    assert main(["--token", "short-token", "--data-dir", str(tmp_path)]) == 2
    assert "at least 16 characters" in capsys.readouterr().err
    with pytest.raises(WeakToken):
        Server(Config(data_dir=tmp_path / "d", token="fifteen-chars!!"))


def test_failed_authentication_is_rate_limited(tmp_path):
    server = InProcessServer(tmp_path / "data", write_plugins(tmp_path / "plugins"), token=TOKEN)
    good = Http(server.base, {"Authorization": f"Bearer {TOKEN}"})
    try:
        assert good.get("/queue")[0] == 200
        statuses = [Http(server.base, {"Authorization": f"Bearer guess-{i:012}"}).get("/queue")[0]
                    for i in range(12)]
        assert statuses[:10] == [401] * 10 and statuses[10:] == [429, 429]
        status, body = good.get("/queue")  # locked for every request from this address, a right one too
        assert status == 429 and body["error"]["type"] == "rate_limited"
    finally:
        server.stop()


def test_the_lockout_ends_with_its_window():
    clock = FailedAuth(limit=3, window=0.2)
    for _ in range(3):
        clock.failed("1.2.3.4")
    assert clock.retry_after("1.2.3.4") > 0 and clock.retry_after("5.6.7.8") == 0
    import time

    time.sleep(0.25)
    assert clock.retry_after("1.2.3.4") == 0


def test_addresses_remembered_are_bounded():
    limiter = FailedAuth(limit=2, window=60, addresses=100)
    for i in range(1000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._failures) == 100
