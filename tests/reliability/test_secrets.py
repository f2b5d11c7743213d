"""Secrets: no password, client secret, personal access token or issued token in anything Airflow keeps.

A child Airflow process (its own AIRFLOW_HOME, DEBUG logging) runs every example DAG, a DAG using every
operator and the sensor over both kinds of connection, and one DAG per failure path (API 401, 5xx, not
JSON, missing field, stream cut, 422, token endpoint 500, wrong password, wrong PAT, connection
refused), then ``test_connection`` on every connection.  Then everything it left is scanned: its whole
console output (task logs and Airflow's own), every file in its AIRFLOW_HOME (logs included), every row
of every table of its metadata database (rendered template fields, XComs, ...), the exception each
failed task raised, and the connection-test messages.  Each secret is looked for as is, URL-encoded and
(client id:secret) base64-encoded as in a Basic header.  The emulator's ``GET /_emulator/tokens`` gives
the access and refresh tokens it issued.

One thing is counted apart: Airflow's in-process test supervisor (``dag.test()``, ``airflow dags test``,
``airflow tasks test``) logs every request a task makes at DEBUG with its body, and ``MaskSecret``
requests carry the very values to mask (the connection's extras, the tokens the hook registers).  The
real supervisor logs those requests with "(body omitted)" (airflow/sdk/execution_time/supervisor.py).
That is upstream and specific to test runs at DEBUG; those lines are reported, not counted as leaks.

TLS: verification is on by default -- a hook fails clearly against an emulator with a self-signed
certificate, and works with the CA's path as ``verify``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from airflow_provider_candela.exceptions import CandelaApiError, CandelaAuthError
from airflow_provider_candela.hooks.candela import CandelaHook
from airflow_provider_candela.testing import CandelaEmulator

from ._support import AGENT, MODEL, TALLY, requests_of

HERE = Path(__file__).parent
EXAMPLE_DAGS = HERE.parents[1] / "example_dags"


# ------------------------------------------------------------------------------------------------
# the scanner


#: A DEBUG line of Airflow's in-process test supervisor echoing a MaskSecret request (see the module docstring).
AIRFLOW_ECHO = re.compile(r"\[debug\s*\] Sending request\s+loc=supervisor\.py:\d+ msg=MaskSecret\(value=")


@dataclass
class Scanner:
    """Finds secrets (as is, URL-encoded, base64 in a Basic header) in texts; counts what it scanned."""

    needles: dict[str, str] = field(default_factory=dict)  # searched text -> what it is
    scanned: int = 0
    leaks: list[str] = field(default_factory=list)
    airflow_echoes: list[str] = field(default_factory=list)

    def add(self, label: str, value: str) -> None:
        assert len(value) >= 12, f"{label} is too short to look for without false alarms"
        for form, text in (
            ("", value),
            (" (URL-encoded)", quote(value, safe="")),
            (" (form-encoded)", quote_plus(value)),
        ):
            self.needles.setdefault(text, label + form)

    def add_basic(self, label: str, user: str, secret: str) -> None:
        self.needles[base64.b64encode(f"{user}:{secret}".encode()).decode()] = f"{label} (Basic auth header)"

    def find(self, text: str) -> list[str]:
        return sorted({label for needle, label in self.needles.items() if needle in text})

    def scan(self, where: str, text: str) -> None:
        self.scanned += 1
        self.leaks.extend(f"{label} in {where}" for label in self.find(text))

    def scan_log(self, where: str, text: str) -> None:
        """Scan a console log line by line, setting Airflow's own MaskSecret echoes apart."""
        self.scanned += 1
        for number, line in enumerate(text.splitlines(), start=1):
            found = self.find(line)
            if found and AIRFLOW_ECHO.search(line):
                self.airflow_echoes.extend(f"{label} in {where}, line {number}" for label in found)
            else:
                self.leaks.extend(f"{label} in {where}, line {number}: {line[:160]}" for label in found)


def _texts(value: Any) -> Iterator[str]:
    """A database value as text, decompressing zlib blobs (serialized DAGs) when it is one."""
    if value is None:
        return
    if isinstance(value, bytes):
        yield value.decode("latin-1")
        with contextlib.suppress(zlib.error):
            yield zlib.decompress(value).decode("latin-1")
        return
    yield str(value)


# ------------------------------------------------------------------------------------------------
# the child run


@dataclass
class ChildRun:
    home: Path
    log: str
    out: dict[str, Any]
    exceptions: list[dict[str, Any]]
    scanner: Scanner
    tokens: dict[str, list[str]]
    stats: dict[str, Any]
    canary: str  # text known to hold every secret (the connections' JSON): the scanner must find them
    known: dict[str, str]


def _backup(source: Path, target: Path) -> None:
    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


@pytest.fixture(scope="module")
def child(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildRun]:
    known = {
        "password": "pw+" + secrets.token_urlsafe(12) + "/=",  # '+', '/' and '=' change when URL-encoded
        "client secret": "cs-" + secrets.token_urlsafe(16),
        "personal access token": "pat-" + secrets.token_urlsafe(16),
    }
    wrong = {
        "wrong password": "wrong-pw-" + secrets.token_urlsafe(12),
        "wrong PAT": "wrong-pat-" + secrets.token_urlsafe(12),
    }
    work = tmp_path_factory.mktemp("secrets")
    home, dags = work / "airflow-home", work / "airflow-home" / "dags"
    dags.mkdir(parents=True)
    _backup(airflow_db / "airflow.db", home / "airflow.db")
    for example in EXAMPLE_DAGS.glob("*.py"):
        shutil.copy(example, dags / example.name)
    shutil.copy(HERE / "_secrets_dags.py", dags / "reliability_secrets_dags.py")

    with CandelaEmulator(
        password=known["password"],
        client_secret=known["client secret"],
        access_token=known["personal access token"],
        slot_startup_seconds=0,
    ) as emulator:
        base = json.loads(emulator.connection_json(max_retries=1))
        pat = json.loads(emulator.connection_json(pat=True, max_retries=1))
        connections = {
            "CANDELA_DEFAULT": base,
            "CANDELA_PAT": pat,
            "CANDELA_WRONG_PASSWORD": {**base, "password": wrong["wrong password"]},
            "CANDELA_WRONG_PAT": {**pat, "extra": {**pat["extra"], "access_token": wrong["wrong PAT"]}},
            "CANDELA_DOWN": {
                **base,
                "host": f"http://127.0.0.1:{_closed_port()}",
                "extra": {**base["extra"], "token_url": f"http://127.0.0.1:{_closed_port()}/oauth2/token"},
            },
        }
        exceptions_file = work / "exceptions.jsonl"
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "DEBUG",
            "CANDELA_EMULATOR_URL": emulator.url,
            "CANDELA_SECRETS_EXCEPTIONS": str(exceptions_file),
            **{f"AIRFLOW_CONN_{name}": json.dumps(conn) for name, conn in connections.items()},
        }
        log_file, out_file = work / "child.log", work / "out.json"
        with log_file.open("w") as log:
            done = subprocess.run(
                [sys.executable, str(HERE / "_secrets_run.py"), str(out_file)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=300,
                check=False,
            )
        text = log_file.read_text(errors="replace")
        assert done.returncode == 0, text[-5000:]
        tokens = emulator.tokens()
        stats = emulator.stats()

    scanner = Scanner()
    for label, value in {**known, **wrong}.items():
        scanner.add(label, value)
    scanner.add_basic("client secret", emulator.client_id, known["client secret"])
    for kind, values in tokens.items():
        for value in values:
            scanner.add(f"an issued {kind[:-1].replace('_', ' ')}", value)
    yield ChildRun(
        home=home,
        log=text,
        out=json.loads(out_file.read_text()),
        exceptions=[json.loads(line) for line in exceptions_file.read_text().splitlines()],
        scanner=scanner,
        tokens=tokens,
        stats=stats,
        canary=json.dumps(connections)
        + base64.b64encode(f"{emulator.client_id}:{known['client secret']}".encode()).decode(),
        known={**known, **wrong},
    )


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------------------
# what ran


def test_the_child_ran_every_dag_and_every_failure_path(child: ChildRun) -> None:
    runs = child.out["runs"]
    for dag_id in ("candela_scheduled_pipeline_prompt", "candela_agent_prompt", "candela_session_cleanup"):
        assert runs[dag_id]["state"] == "success", runs[dag_id]
    every = runs["reliability_secrets_every_operator"]
    assert every["state"] == "success", every
    assert every["tasks"]["exists_deferred"] == "skipped"  # deferred, timed out in the trigger, soft_fail
    assert {state for task, state in every["tasks"].items() if task != "exists_deferred"} == {"success"}
    failed = {dag_id.removeprefix("reliability_secrets_fail_") for dag_id in runs if "_fail_" in dag_id}
    assert len(failed) == 10
    assert all(runs[f"reliability_secrets_fail_{name}"]["state"] == "failed" for name in failed)
    # each failure path raised its error, and the task recorded it
    raised = {
        e["dag_id"].removeprefix("reliability_secrets_fail_") for e in child.exceptions if "_fail_" in e["dag_id"]
    }
    assert raised == failed
    assert any("refused the password grant (400)" in e["message"] for e in child.exceptions)
    assert any("personal access token (extra access_token" in e["message"] for e in child.exceptions)
    assert any("broke off after 1 events" in e["message"] for e in child.exceptions)
    # the connection tests: two good connections, three bad ones
    tests = child.out["connection_tests"]
    assert [tests[c][0] for c in ("candela_default", "candela_pat")] == [True, True]
    assert [tests[c][0] for c in ("candela_wrong_password", "candela_wrong_pat", "candela_down")] == [False] * 3
    # tokens were issued (so there was something to leak), and DEBUG logging was on
    assert len(child.tokens["access_tokens"]) >= 10
    assert child.stats["token_grants"]["password"] >= 10
    assert "[debug    ]" in child.log
    assert requests_of(child.stats, "POST /session/agent_submit")


def test_no_secret_in_logs_files_database_xcom_or_exceptions(child: ChildRun) -> None:
    scanner = child.scanner
    scanner.scan_log("the console output of the Airflow process (task logs, Airflow's logs)", child.log)
    files = [p for p in child.home.rglob("*") if p.is_file() and not p.name.startswith("airflow.db")]
    for path in files:
        scanner.scan(f"file {path.relative_to(child.home)}", path.read_text(errors="replace"))
    rows: dict[str, int] = {}
    with contextlib.closing(sqlite3.connect(child.home / "airflow.db")) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):  # table names from sqlite_master
                rows[table] = rows.get(table, 0) + 1
                scanner.scan(f"table {table}", "\n".join(text for value in row for text in _texts(value)))
    for exception in child.exceptions:
        scanner.scan(f"the exception of {exception['dag_id']}.{exception['task_id']}", json.dumps(exception))
    for conn_id, result in child.out["connection_tests"].items():
        scanner.scan(f"test_connection of {conn_id}", json.dumps(result))

    TALLY.artefacts += scanner.scanned
    TALLY.leaks += len(scanner.leaks)
    TALLY.airflow_echoes += len(scanner.airflow_echoes)
    # what was scanned is what a user would look at: task logs on disk or not, rendered fields, XComs
    assert rows.get("rendered_task_instance_fields", 0) >= 10
    assert rows.get("xcom", 0) >= 10
    assert rows.get("connection", 0) == 0  # the connections came from the environment only
    assert scanner.scanned > 100
    assert scanner.leaks == []


def test_the_scan_would_find_each_secret(child: ChildRun) -> None:
    """The positive control: every secret (and its encoded forms) is found in text known to hold it."""
    found = child.scanner.find(child.canary)
    for label in ("password", "client secret", "personal access token", "wrong password", "wrong PAT"):
        assert label in found, found
    assert "client secret (Basic auth header)" in found
    password = child.known["password"]
    assert child.scanner.find(f"password={quote(password, safe='')}&scope=openid") == ["password (URL-encoded)"]
    assert child.scanner.find(f"password={quote_plus(password)}")  # as a form field
    assert child.scanner.find(base64.b64encode(password.encode()).decode()) == []  # no false alarm on other forms
    token = child.tokens["access_tokens"][0]
    assert child.scanner.find(f"Authorization: Bearer {token}") == ["an issued access token"]


# ------------------------------------------------------------------------------------------------
# TLS


@dataclass
class Tls:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A CA and a certificate for 127.0.0.1 signed by it (generated with ``cryptography``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Candela reliability test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    paths = Tls(ca=folder / "ca.pem", cert=folder / "server.pem", key=folder / "server-key.pem")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@pytest.fixture(scope="module")
def https_emulator(tls: Tls) -> Iterator[CandelaEmulator]:
    with CandelaEmulator(ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key), slot_startup_seconds=0) as emulator:
        yield emulator


def _tls_hook(emulator: CandelaEmulator, monkeypatch: pytest.MonkeyPatch, conn_id: str, **extra: Any) -> CandelaHook:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", emulator.connection_json(**extra))
    return CandelaHook(conn_id)


def test_tls_verification_is_on_by_default(https_emulator: CandelaEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    https_emulator.reset()
    assert https_emulator.url.startswith("https://127.0.0.1:")
    with pytest.raises(CandelaAuthError) as info, _tls_hook(https_emulator, monkeypatch, "candela_tls") as hook:
        hook.user_has_slot()
    message = str(info.value)
    assert message.startswith(f"TLS verification failed for the token endpoint {https_emulator.token_url}")
    assert "(SSLError): set the extra verify to the path of your CA bundle" in message

    monkeypatch.setenv(
        "AIRFLOW_CONN_CANDELA_TLS_PAT",
        json.dumps({"conn_type": "candela", "host": https_emulator.url, "extra": {"access_token": "demo-pat"}}),
    )
    with pytest.raises(CandelaApiError) as api_info, CandelaHook("candela_tls_pat") as hook:
        hook.user_has_slot()
    assert str(api_info.value).startswith(
        f"TLS verification failed for GET /slot/user_has_slot at {https_emulator.url} (SSLError): set the extra "
        "verify of connection 'candela_tls_pat' to the path of your CA bundle"
    )
    assert https_emulator.stats()["requests_total"] == 0  # refused during the handshake, and not retried


def test_tls_passes_with_the_ca_path_as_verify(
    https_emulator: CandelaEmulator, tls: Tls, monkeypatch: pytest.MonkeyPatch
) -> None:
    https_emulator.reset()
    with _tls_hook(https_emulator, monkeypatch, "candela_tls_ca", verify=str(tls.ca)) as hook:
        assert hook.test_connection()[0] is True
        hook.ensure_slot(poll_interval=0.01)
        session = hook.start_session(AGENT, MODEL)
        events = list(hook.submit_prompt_to_agent(session.obj_id, "Over TLS"))
        hook.stop_session()
    assert events[0].content == "Over TLS"
    stats = https_emulator.stats()
    assert stats["sessions_started"] == 1
    assert stats["running_sessions"][https_emulator.username] is None
