"""Secure by default (issue 10): a run directory nobody else prepared, CURVE on an alerts socket
other machines can reach, Redis with a password and over TLS, prefixes that are never globs."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import time
from pathlib import Path

import msgpack
import pytest
import redis
import zmq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.detector.baseline_store import BaselineStore
from services.detector.keys import DetectorKeys
from shared.curve import bind_alerts_pub, create_keys, curve_client, is_local_endpoint
from shared.rundir import UnsafeRunDir, ensure_private_dir
from tests.pipeline_helpers import free_port, pktscope, read_summary, tcp_session, write_pcap

NOBODY = 65534


def _small_capture(tmp: Path) -> Path:
    packets = []
    for i in range(3):
        packets += tcp_session("10.0.0.1", f"198.51.100.{i + 1}", 40000 + i, 443, 1e9 + i)
    return write_pcap(tmp / "small.pcap", packets)


# --- the run directory -----------------------------------------------------------------------------
def test_run_refuses_a_run_dir_made_by_another_user_and_so_do_the_readers(short_tmp):
    hostile = short_tmp / "pktscope-1000"
    hostile.mkdir(mode=0o755)
    (hostile / "pipeline.json").write_text('{"redis_url": "redis://127.0.0.1:1/0"}')
    os.chown(hostile / "pipeline.json", NOBODY, NOBODY)
    os.chown(hostile, NOBODY, NOBODY)
    run = pktscope("run", "--read", str(_small_capture(short_tmp)), "--run-dir", str(hostile), check=False)
    assert run.returncode == 2
    assert f"run directory {hostile} belongs to nobody, not to you" in run.stderr
    assert "Traceback" not in run.stderr
    listed = pktscope("alerts", "list", "--run-dir", str(hostile), check=False)
    assert listed.returncode == 2 and "belongs to nobody" in listed.stderr
    assert "Traceback" not in listed.stderr


def test_run_dir_is_created_0700_and_a_symlink_is_refused(short_tmp):
    made = ensure_private_dir(short_tmp / "a" / "run")
    assert (made.stat().st_mode & 0o777) == 0o700
    loose = short_tmp / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    ensure_private_dir(loose)
    assert (loose.stat().st_mode & 0o777) == 0o700  # ours: tightened
    link = short_tmp / "link"
    link.symlink_to(made)
    with pytest.raises(UnsafeRunDir, match="symbolic link"):
        ensure_private_dir(link)


# --- CURVE on the alerts endpoint ------------------------------------------------------------------
def test_endpoints_beyond_loopback_are_told_apart():
    assert is_local_endpoint("ipc:///run/x/alerts.ipc")
    assert is_local_endpoint("tcp://127.0.0.1:5599") and is_local_endpoint("tcp://[::1]:5599")
    assert is_local_endpoint("tcp://localhost:5599")
    for ep in ("tcp://0.0.0.0:5599", "tcp://*:5599", "tcp://eth0:5599", "tcp://192.0.2.1:5599"):
        assert not is_local_endpoint(ep), ep


def test_alerts_endpoint_beyond_loopback_needs_keys_or_insecure_listen(short_tmp):
    capture = _small_capture(short_tmp)
    port = free_port()
    common = ["run", "--read", str(capture), "--learning", "0"]
    refused = pktscope(
        *common, "--run-dir", str(short_tmp / "r1"), "--alerts-endpoint", f"tcp://0.0.0.0:{port}", "--state-dir", str(short_tmp / "s1"), check=False
    )
    assert refused.returncode == 2
    assert "pktscope keys" in refused.stderr and "--insecure-listen" in refused.stderr
    insecure = pktscope(
        *common,
        "--run-dir",
        str(short_tmp / "r2"),
        "--state-dir",
        str(short_tmp / "s2"),
        "--alerts-endpoint",
        f"tcp://0.0.0.0:{port}",
        "--insecure-listen",
        "--json",
    )
    assert "warning: alerts on tcp://0.0.0.0" in insecure.stderr and "unencrypted" in insecure.stderr
    assert read_summary(insecure)["alerts"] == 4
    # with keys in the state directory they are used without being asked for
    pktscope("keys", "--dir", str(short_tmp / "s3" / "curve"))
    keyed = pktscope(
        *common, "--run-dir", str(short_tmp / "r3"), "--state-dir", str(short_tmp / "s3"),
        "--alerts-endpoint", f"tcp://0.0.0.0:{port}", "--json",
    )  # fmt: skip
    assert "warning" not in keyed.stderr
    assert read_summary(keyed)["alerts"] == 4
    cfg = (short_tmp / "r3" / "pipeline.json").read_text()
    assert str(short_tmp / "s3" / "curve") in cfg


def test_curve_alerts_socket_serves_authorized_subscribers_only(short_tmp):
    keys = short_tmp / "keys"
    create_keys(keys, "analyst")
    create_keys(short_tmp / "other", "intruder")  # valid keys, but not authorized here
    ctx = zmq.Context()
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    pub, auth = bind_alerts_pub(ctx, endpoint, 100, str(keys), insecure=False)
    try:
        good = ctx.socket(zmq.SUB)
        curve_client(good, keys, "analyst")
        plain = ctx.socket(zmq.SUB)  # no keys at all
        foreign = ctx.socket(zmq.SUB)
        foreign.curve_secretkey, foreign.curve_publickey = _keypair(short_tmp / "other" / "clients")
        foreign.curve_serverkey = zmq.auth.load_certificate(str(keys / "server.key"))[0]
        for s in (good, plain, foreign):
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(endpoint)
        got = {"good": 0, "plain": 0, "foreign": 0}
        deadline = time.time() + 10
        while time.time() < deadline and got["good"] < 5:
            pub.send_multipart([b"new_process_dest", msgpack.packb({"kind": "new_process_dest"})])
            for name, s in (("good", good), ("plain", plain), ("foreign", foreign)):
                while s.poll(50):
                    s.recv_multipart()
                    got[name] += 1
        assert got["good"] >= 5
        assert got["plain"] == 0 and got["foreign"] == 0
    finally:
        for s in (pub,):
            s.close(linger=0)
        auth.stop()
        ctx.destroy(linger=0)


def _keypair(clients: Path) -> tuple[bytes, bytes]:
    public, secret = zmq.auth.load_certificate(str(clients / "intruder.key_secret"))
    return secret, public


# --- Redis with a password, and over TLS -----------------------------------------------------------
def _tls_files(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "redis.crt", tmp / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_redis(short_tmp):
    """redis-server with a password, on TLS only (no plaintext port)."""
    cert, key = _tls_files(short_tmp)
    port = free_port()
    proc = subprocess.Popen(
        [
            shutil.which("redis-server"),
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(cert),
            "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(cert),
            "--tls-auth-clients", "no",
            "--requirepass", "s3cret-pw",
            "--save", "",
            "--dir", str(short_tmp),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"rediss://:s3cret-pw@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    deadline = time.time() + 15
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.RedisError:
            if time.time() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_replay_over_tls_with_a_password_and_wrong_password_is_a_clear_error(short_tmp, tls_redis):
    capture = _small_capture(short_tmp)
    done = pktscope(
        "run",
        "--read",
        str(capture),
        "--run-dir",
        str(short_tmp / "run"),
        "--redis-url",
        tls_redis,
        "--redis-prefix",
        "tlsrun",
        "--learning",
        "0",
        "--json",
    )
    assert read_summary(done)["alerts"] == 4
    assert "s3cret-pw" not in done.stderr
    listed = pktscope("alerts", "list", "--json", "--redis-url", tls_redis, "--redis-prefix", "tlsrun")
    assert len(listed.stdout.splitlines()) == 4
    wrong = tls_redis.replace("s3cret-pw", "guess")
    refused = pktscope(
        "run", "--read", str(capture), "--run-dir", str(short_tmp / "run2"), "--redis-url", wrong, check=False
    )
    assert refused.returncode == 2
    assert "refused the password" in refused.stderr and "guess" not in refused.stderr
    assert "Traceback" not in refused.stderr


# --- prefixes are names, not patterns ---------------------------------------------------------------
def test_baseline_reset_of_a_prefix_with_glob_characters_touches_only_its_own_keys(rdb, redis_url):
    for prefix in ("pktscope", "pkt*", "pkt?cope", "pkt[s]cope"):
        keys = DetectorKeys(prefix)
        rdb.sadd(keys.entity_set("host:10.0.0.1", "dest"), "example.com")
        rdb.hset(keys.entity("host:10.0.0.1"), "first_seen", 1)
    rdb.sadd(DetectorKeys("pkt*:ent:x").entity_set("e", "dest"), "a")  # a prefix that extends ours
    out = pktscope("baseline", "reset", "--redis-url", redis_url, "--redis-prefix", "pkt*")
    assert "2 keys deleted" in out.stdout  # its set and hash; no entities index or learning yet
    assert rdb.exists(DetectorKeys("pkt*").entity("host:10.0.0.1")) == 0
    for other in ("pktscope", "pkt?cope", "pkt[s]cope"):
        assert rdb.sismember(DetectorKeys(other).entity_set("host:10.0.0.1", "dest"), "example.com"), other
    assert rdb.exists(DetectorKeys("pkt*:ent:x").entity_set("e", "dest"))
    assert BaselineStore  # the store the CLI uses (scan pattern from DetectorKeys.entity_pattern)
