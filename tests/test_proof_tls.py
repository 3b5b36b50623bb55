"""Proof under failure: TLS is verified by default, trusted through SSL_CERT_FILE, skipped only on request.

A local HTTPS FaultServer presents a certificate from a throw-away CA made by trustme. The CA is
in no trust store, so a default ``dlman add`` must refuse it with one clear line (exit 1, nothing
written), trust it once ``SSL_CERT_FILE`` names the CA (httpx's trust_env, as curl and wget do), and
skip verification only with ``--insecure`` (or ``insecure=True``), saying so on stderr.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

import dlman
from faultserver import FaultServer

SIZE = 300_000


@pytest.fixture(scope="module")
def ca_pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def https_server(ca: trustme.CA, *names: str) -> FaultServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return FaultServer(ssl_context=context)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of a dlman process: no proxies, no trust-store overrides of the host."""
    environ = {k: v for k, v in os.environ.items()
               if not k.lower().endswith("_proxy") and k not in ("SSL_CERT_FILE", "SSL_CERT_DIR", "DLMAN_HOME")}
    environ.update(NO_PROXY="*", PYTHONUNBUFFERED="1")
    return environ


def dlman_cli(env: dict[str, str], cwd: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dlman", "--home", str(cwd / "home"), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def listed(env: dict[str, str], cwd: Path) -> list[dict]:
    result = dlman_cli(env, cwd, "list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())


def test_untrusted_certificate_fails_with_one_clear_line(tls_server, make_data, tmp_path, env) -> None:
    res = tls_server.add("/file.bin", make_data(SIZE))
    url = tls_server.url("/file.bin")
    result = dlman_cli(env, tmp_path, "add", url, "-d", "out")
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert url in line and "certificate" in line.lower() and "--insecure" in line, line
    assert "Traceback" not in result.stderr
    assert res.requests == [] and res.bytes_served == 0  # no request went out over the bad channel
    assert_nothing_written(tmp_path / "out")
    (job,) = listed(env, tmp_path)
    assert job["state"] == "failed" and "certificate" in job["error"].lower()
    # Verification failing is not a transient fault: no retries with backoff (the default is 5).
    assert tls_server.total_connections <= 2, tls_server.total_connections
    quiet = dlman_cli(env, tmp_path, "-q", "add", url, "-d", "out")
    assert quiet.returncode == 1 and quiet.stderr.strip().splitlines() == [line]


def test_certificate_for_another_name_is_refused_even_from_a_trusted_ca(ca, ca_pem, make_data, tmp_path,
                                                                        env) -> None:
    with https_server(ca, "localhost") as srv:  # valid, trusted, but not for 127.0.0.1
        res = srv.add("/file.bin", make_data(SIZE))
        env["SSL_CERT_FILE"] = str(ca_pem)
        result = dlman_cli(env, tmp_path, "add", srv.url("/file.bin"), "-d", "out")
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "certificate" in result.stderr.lower() or "hostname" in result.stderr.lower(), result.stderr
    assert res.requests == []
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("extra", [[], ["--http2"]], ids=["http1", "http2-alpn"])
def test_ssl_cert_file_makes_the_ca_trusted(tls_server, ca_pem, make_data, tmp_path, env, extra) -> None:
    res = tls_server.add("/file.bin", make_data(SIZE, seed=3), auto_etag=True)
    env["SSL_CERT_FILE"] = str(ca_pem)
    result = dlman_cli(env, tmp_path, "add", *extra, tls_server.url("/file.bin"), "-d", "out")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "file.bin").read_bytes() == res.data
    assert result.stderr.strip().splitlines() == [f"done {tmp_path / 'out' / 'file.bin'} (293.0 KiB)"]
    assert res.bytes_served == SIZE


def test_insecure_succeeds_and_warns(tls_server, make_data, tmp_path, env) -> None:
    res = tls_server.add("/file.bin", make_data(SIZE, seed=4))
    result = dlman_cli(env, tmp_path, "add", "--insecure", tls_server.url("/file.bin"), "-d", "out")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "file.bin").read_bytes() == res.data
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and ("tls" in warnings[0].lower() or "certificate" in warnings[0].lower()), \
        result.stderr
    assert "Traceback" not in result.stderr

    # The choice is stored with the job: `add --later --insecure` warns, and so does the run.
    res2 = tls_server.add("/later.bin", make_data(SIZE, seed=5))
    later = dlman_cli(env, tmp_path, "add", "--later", "--insecure", tls_server.url("/later.bin"), "-d", "out")
    assert later.returncode == 0 and "warning:" in later.stderr, later.stderr
    run = dlman_cli(env, tmp_path, "run")
    assert run.returncode == 0, run.stderr
    assert "warning:" in run.stderr and (tmp_path / "out" / "later.bin").read_bytes() == res2.data
    # ...and is not applied to other jobs: a plain job in the same run is still verified.
    tls_server.add("/plain.bin", make_data(SIZE, seed=6))
    assert dlman_cli(env, tmp_path, "add", "--later", tls_server.url("/plain.bin"), "-d", "out").returncode == 0
    mixed = dlman_cli(env, tmp_path, "run")
    assert mixed.returncode == 1 and "certificate" in mixed.stderr.lower(), mixed.stderr
    assert not (tmp_path / "out" / "plain.bin").exists()


def test_python_api(tls_server, ca_pem, make_data, tmp_path, monkeypatch, capsys, caplog) -> None:
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    res = tls_server.add("/file.bin", make_data(SIZE, seed=7))
    url = tls_server.url("/file.bin")

    with pytest.raises(dlman.DownloadError) as refused:
        dlman.download(url, tmp_path / "a.bin", timeout=5)
    assert "certificate" in str(refused.value).lower() and refused.value.url == url
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "a.bin.part").exists()

    with caplog.at_level(logging.WARNING, logger="dlman"):
        result = dlman.download(url, tmp_path / "b.bin", insecure=True, timeout=5)
    assert result.path == tmp_path / "b.bin" and result.path.read_bytes() == res.data
    assert any("verification" in r.getMessage().lower() for r in caplog.records if r.levelno == logging.WARNING)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # the engine prints nothing itself

    monkeypatch.setenv("SSL_CERT_FILE", str(ca_pem))
    trusted = dlman.download(url, tmp_path / "c.bin", timeout=5)
    assert trusted.path.read_bytes() == res.data


def test_a_missing_ssl_cert_file_is_named_and_plain_http_still_works(tls_server, server, make_data, tmp_path,
                                                                      env) -> None:
    """curl's behaviour: a CA file that cannot be read breaks HTTPS, clearly, and nothing else."""
    tls_server.add("/s.bin", make_data(SIZE))
    server.add("/p.bin", make_data(SIZE, seed=1))
    env["SSL_CERT_FILE"] = str(tmp_path / "no-such-ca.pem")
    plain = dlman_cli(env, tmp_path, "add", "-d", str(tmp_path / "out"), server.url("/p.bin"))
    assert plain.returncode == 0, plain.stderr
    assert (tmp_path / "out" / "p.bin").read_bytes() == make_data(SIZE, seed=1)
    secure = dlman_cli(env, tmp_path, "add", "-d", str(tmp_path / "out"), tls_server.url("/s.bin"))
    assert secure.returncode == 1
    assert f"SSL_CERT_FILE={tmp_path / 'no-such-ca.pem'}" in secure.stderr
    assert "internal error" not in secure.stderr and "Traceback" not in secure.stderr
    assert not (tmp_path / "out" / "s.bin").exists()
