"""`pgrouter check` and `pgrouter --version`: no servers needed, no connections made."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from harness.router import router_binary
from harness.util import free_port

GOOD_ROUTER = """\
[general]
listen = "127.0.0.1:{listen}"
pool_mode = "transaction"
default_pool_size = 10
checkout_timeout_ms = 5000
metrics_listen = ""
hot_reload = false

[[databases]]
name = "app"
host = "127.0.0.1"
port = {port}
database_name = "app"
role = "primary"
"""

GOOD_USERS = """\
[[users]]
name = "app"
database = "app"
password = "app-secret"
auth = "scram"
pool_size = 5
"""


def write(dirpath: Path, router_text: str, users_text: str) -> tuple[Path, Path]:
    r = dirpath / "router.toml"
    u = dirpath / "users.toml"
    r.write_text(router_text)
    u.write_text(users_text)
    return r, u


def check(r: Path, u: Path, cwd: Path | None = None) -> tuple[int, str]:
    proc = subprocess.run([str(router_binary()), "check", "--config", str(r), "--users", str(u)],
                          capture_output=True, text=True, timeout=30, cwd=cwd)
    return proc.returncode, proc.stdout + proc.stderr


def good_router(port=None) -> str:
    # A port nothing listens on: `check` must not connect anywhere.
    return GOOD_ROUTER.format(listen=free_port(), port=port or free_port())


def line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in text")


def assert_reported(output: str, path: Path, line: int, key: str):
    """Some output line names `file:line` and the key."""
    pattern = re.compile(re.escape(path.name) + r":" + str(line) + r"\b")
    hits = [ln for ln in output.splitlines() if pattern.search(ln) and key in ln]
    assert hits, (f"expected a line with {path.name}:{line} and {key!r} in:\n{output}")


def test_version():
    proc = subprocess.run([str(router_binary()), "--version"], capture_output=True, text=True,
                          timeout=10)
    assert proc.returncode == 0
    assert re.search(r"pgrouter\s+\d+\.\d+\.\d+", proc.stdout + proc.stderr), proc.stdout


def test_good_config_exits_0(tmp_path):
    r, u = write(tmp_path, good_router(), GOOD_USERS)
    code, out = check(r, u)
    assert code == 0, out


def test_good_config_default_paths(tmp_path):
    write(tmp_path, good_router(), GOOD_USERS)
    proc = subprocess.run([str(router_binary()), "check"], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unknown_key(tmp_path):
    text = good_router().replace('pool_mode = "transaction"', 'pool_mode = "transaction"\nlisen_addr = "x"')
    r, u = write(tmp_path, text, GOOD_USERS)
    code, out = check(r, u)
    assert code == 1, out
    assert_reported(out, r, line_of(text, "lisen_addr"), "lisen_addr")


@pytest.mark.parametrize("old,new,key", [
    ('pool_mode = "transaction"', 'pool_mode = "sideways"', "pool_mode"),
    ("default_pool_size = 10", 'default_pool_size = "ten"', "default_pool_size"),
    ('role = "primary"', 'role = "boss"', "role"),
    ('listen = "127.0.0.1:', 'listen = "not an address:', "listen"),
])
def test_bad_value(tmp_path, old, new, key):
    text = good_router()
    assert old in text
    text = text.replace(old, new)
    r, u = write(tmp_path, text, GOOD_USERS)
    code, out = check(r, u)
    assert code == 1, out
    assert_reported(out, r, line_of(text, new.split("=")[0].strip() + " ="), key)


@pytest.mark.parametrize("size", [1, 4095])
def test_max_message_size_too_small(tmp_path, size):
    """A max_message_size too small for ordinary statements is refused (it would
    end every client with 08P01); 4096 bytes is the least accepted."""
    text = good_router().replace("[general]\n", f"[general]\nmax_message_size = {size}\n")
    r, u = write(tmp_path, text, GOOD_USERS)
    code, out = check(r, u)
    assert code == 1, out
    assert_reported(out, r, line_of(text, "max_message_size ="), "max_message_size")
    assert "at least 4096" in out, out
    r, u = write(tmp_path, text.replace(f"max_message_size = {size}", "max_message_size = 4096"),
                 GOOD_USERS)
    code, out = check(r, u)
    assert code == 0, out


def test_no_databases_reported_on_a_real_line(tmp_path):
    text = good_router()
    text = text[:text.index("[[databases]]")]
    r, u = write(tmp_path, text, GOOD_USERS)
    code, out = check(r, u)
    assert code == 1, out
    assert_reported(out, r, 1, "databases")
    assert not re.search(re.escape(r.name) + r":0\b", out), out


def test_user_for_unknown_database(tmp_path):
    users = GOOD_USERS.replace('database = "app"', 'database = "nope"')
    r, u = write(tmp_path, good_router(), users)
    code, out = check(r, u)
    assert code == 1, out
    assert_reported(out, u, line_of(users, 'database = "nope"'), "database")


def test_bad_auth_method(tmp_path):
    users = GOOD_USERS.replace('auth = "scram"', 'auth = "telepathy"')
    r, u = write(tmp_path, good_router(), users)
    code, out = check(r, u)
    assert code == 1, out
    assert_reported(out, u, line_of(users, "telepathy"), "auth")


def test_every_problem_reported(tmp_path):
    text = good_router().replace('pool_mode = "transaction"', 'pool_mode = "sideways"\nbogus_key = 1')
    users = GOOD_USERS.replace('database = "app"', 'database = "nope"')
    r, u = write(tmp_path, text, users)
    code, out = check(r, u)
    assert code == 1, out
    assert_reported(out, r, line_of(text, "pool_mode ="), "pool_mode")
    assert_reported(out, r, line_of(text, "bogus_key"), "bogus_key")
    assert_reported(out, u, line_of(users, 'database = "nope"'), "database")


def test_toml_syntax_error(tmp_path):
    text = good_router().replace("default_pool_size = 10", "default_pool_size = = 10")
    r, u = write(tmp_path, text, GOOD_USERS)
    code, out = check(r, u)
    assert code == 1, out
    assert re.search(re.escape(r.name) + r":" + str(line_of(text, "= = 10")) + r"\b", out), out


def test_missing_file(tmp_path):
    r, u = write(tmp_path, good_router(), GOOD_USERS)
    missing = tmp_path / "absent-users.toml"
    code, out = check(r, missing)
    assert code == 1, out
    assert missing.name in out


def test_run_with_bad_config_exits_nonzero(tmp_path):
    text = good_router().replace('pool_mode = "transaction"', 'pool_mode = "sideways"')
    r, u = write(tmp_path, text, GOOD_USERS)
    proc = subprocess.run([str(router_binary()), "--config", str(r), "--users", str(u)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "pool_mode" in proc.stdout + proc.stderr


JWT_USERS = GOOD_USERS + """
[[users]]
name = "authenticator"
database = "app"
server_password = "auth-secret"
login = false
"""


@pytest.mark.parametrize("case", ["missing", "not_pem"])
def test_bad_jwt_key_file_reported_with_line_and_key(tmp_path, case):
    """`check` loads [jwt] public_key_file (it would stop the router) and
    reports it like any other problem: file, line, key. Starting the router
    reports it the same way."""
    key = tmp_path / "jwt.pem"
    if case == "not_pem":
        key.write_text("not a key\n")
    text = good_router() + f'\n[jwt]\nleeway_s = 0\npublic_key_file = "{key}"\n'
    r, u = write(tmp_path, text, JWT_USERS)
    code, out = check(r, u)
    assert code == 1, out
    assert_reported(out, r, line_of(text, "public_key_file"), "jwt.public_key_file")
    assert str(key) in out, out
    proc = subprocess.run([str(router_binary()), "--config", str(r), "--users", str(u)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert_reported(proc.stdout + proc.stderr, r, line_of(text, "public_key_file"),
                    "jwt.public_key_file")


def test_good_jwt_key_file_and_jwks_url_pass_check(tmp_path):
    """A loadable PEM passes; a JWKS URL is not fetched by `check`."""
    from harness.jwt_tokens import SigningKey
    key = SigningKey("rsa").write_public_pem(tmp_path / "jwt.pem")
    text = good_router() + f'\n[jwt]\npublic_key_file = "{key}"\n'
    r, u = write(tmp_path, text, JWT_USERS)
    assert check(r, u)[0] == 0
    text = good_router() + f'\n[jwt]\njwks_url = "http://127.0.0.1:{free_port()}/jwks.json"\n'
    r, u = write(tmp_path, text, JWT_USERS)
    code, out = check(r, u)
    assert code == 0, out



def test_named_files_are_checked_even_when_the_files_have_other_problems(tmp_path):
    """A missing `[jwt] public_key_file` or `server_tls_ca` used to be
    reported only once router.toml and users.toml had no other problem:
    `check` said "1 problem(s)" for the bad pool_mode, the DBA fixed it and
    ran it again to learn about the key file. It reports every problem at
    once, each once, router file first."""
    key = tmp_path / "absent-jwt.pem"
    ca = tmp_path / "absent-ca.pem"
    text = (good_router().replace('pool_mode = "transaction"', 'pool_mode = "sideways"')
            .replace('hot_reload = false', f'hot_reload = false\nserver_tls = "verify-full"\n'
                                           f'server_tls_ca = "{ca}"')
            + f'\n[jwt]\nalgorithms = ["HS256"]\npublic_key_file = "{key}"\n')
    users = JWT_USERS.replace("pool_size = 5", "pool_size = 0")
    r, u = write(tmp_path, text, users)
    code, out = check(r, u)
    assert code == 1, out
    assert_reported(out, r, line_of(text, "pool_mode"), "general.pool_mode")
    assert_reported(out, r, line_of(text, "server_tls_ca"), "general.server_tls_ca")
    assert_reported(out, r, line_of(text, "algorithms"), "jwt.algorithms")
    assert_reported(out, r, line_of(text, "public_key_file"), "jwt.public_key_file")
    assert_reported(out, u, line_of(users, "pool_size = 0"), "users.pool_size")
    problem_lines = [ln for ln in out.splitlines() if re.match(r".*\.toml:\d+: ", ln)]
    assert len(problem_lines) == len(set(problem_lines)), out
    assert f"{len(problem_lines)} problem(s) found" in out, out
    assert out.index("public_key_file") < out.index("users.pool_size"), out
    # A [jwt] with no key source at all, next to another problem: said once.
    text = (good_router().replace('pool_mode = "transaction"', 'pool_mode = "sideways"')
            + '\n[jwt]\nleeway_s = 0\n')
    r, u = write(tmp_path, text, JWT_USERS)
    code, out = check(r, u)
    assert code == 1, out
    assert "2 problem(s) found" in out, out

@pytest.mark.parametrize("mode,case", [("verify-full", "missing"), ("verify-full", "not_pem"),
                                       ("require", "missing")])
def test_bad_server_tls_ca_reported_by_check_and_start(tmp_path, mode, case):
    """A `server_tls_ca` that does not load: `check` used to call the files
    valid while the router started and then failed every login (reload
    refused the same edit). `check` and start-up now both refuse it with
    file, line and key, as reload does (test_reload.py)."""
    ca = tmp_path / "ca.pem"
    if case == "not_pem":
        ca.write_text("id,name\n1,not a certificate\n")
    text = good_router().replace(
        "[general]\n", f'[general]\nserver_tls = "{mode}"\nserver_tls_ca = "{ca}"\n')
    r, u = write(tmp_path, text, GOOD_USERS)
    code, out = check(r, u)
    assert code == 1, out
    assert_reported(out, r, line_of(text, "server_tls_ca ="), "general.server_tls_ca")
    assert str(ca) in out, out
    proc = subprocess.run([str(router_binary()), "--config", str(r), "--users", str(u)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert_reported(proc.stdout + proc.stderr, r, line_of(text, "server_tls_ca ="),
                    "general.server_tls_ca")


@pytest.mark.parametrize("case", ["missing", "not_pem"])
def test_bad_jit_api_ca_reported_by_check_and_start(tmp_path, case):
    """`[jit] api_ca` that does not load: `check` used to call the files
    valid, and start-up failed with "[jit]: api_ca ..." naming no file,
    line or key. Both now report `router.toml:LINE: jit.api_ca: ...`."""
    ca = tmp_path / "jit-ca.pem"
    if case == "not_pem":
        ca.write_text("id,name\n1,not a certificate\n")
    text = good_router() + f'\n[jit]\napi_url = "https://127.0.0.1:9/check"\napi_ca = "{ca}"\n'
    r, u = write(tmp_path, text, GOOD_USERS)
    code, out = check(r, u)
    assert code == 1, out
    assert_reported(out, r, line_of(text, "api_ca ="), "jit.api_ca")
    assert str(ca) in out, out
    proc = subprocess.run([str(router_binary()), "--config", str(r), "--users", str(u)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert_reported(proc.stdout + proc.stderr, r, line_of(text, "api_ca ="), "jit.api_ca")


@pytest.mark.parametrize("query,says", [
    ("SELEC rolname, rolpassword FROM pg_authid WHERE rolname = $1", "syntax error"),
    ("DELETE FROM pg_authid WHERE rolname = $1", "must be a SELECT"),
])
def test_bad_auth_query_reported_by_check_and_start(tmp_path, query, says):
    """`[auth_query] query` is parsed before use: a typo used to pass
    `check` and start-up and then fail every lookup at login."""
    text = good_router() + f'\n[auth_query]\nuser = "app"\nquery = "{query}"\n'
    r, u = write(tmp_path, text, GOOD_USERS)
    code, out = check(r, u)
    assert code == 1, out
    assert_reported(out, r, line_of(text, "query ="), "auth_query.query")
    assert says in out, out
    proc = subprocess.run([str(router_binary()), "--config", str(r), "--users", str(u)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert_reported(proc.stdout + proc.stderr, r, line_of(text, "query ="), "auth_query.query")
    good = text.replace(query, "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1")
    r, u = write(tmp_path, good, GOOD_USERS)
    assert check(r, u)[0] == 0


def test_good_server_tls_ca_and_client_certificate_pass_check(tmp_path):
    from harness.certs import CertAuthority
    ca = CertAuthority.create(tmp_path)
    leaf = ca.issue(tmp_path, "localhost", dns=["localhost"])
    text = good_router().replace(
        "[general]\n",
        f'[general]\nserver_tls = "verify-full"\nserver_tls_ca = "{ca.cert_path}"\n'
        f'tls_certificate = "{leaf.cert_path}"\ntls_private_key = "{leaf.key_path}"\n')
    r, u = write(tmp_path, text, GOOD_USERS)
    code, out = check(r, u)
    assert code == 0, out


def test_bad_tls_private_key_reported_at_its_line(tmp_path):
    """The client-side TLS files are reported at their own key and line too."""
    from harness.certs import CertAuthority
    ca = CertAuthority.create(tmp_path)
    leaf = ca.issue(tmp_path, "localhost", dns=["localhost"])
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key\n")
    text = good_router().replace(
        "[general]\n",
        f'[general]\ntls_certificate = "{leaf.cert_path}"\ntls_private_key = "{bad_key}"\n')
    r, u = write(tmp_path, text, GOOD_USERS)
    code, out = check(r, u)
    assert code == 1, out
    assert_reported(out, r, line_of(text, "tls_private_key ="), "general.tls_private_key")
