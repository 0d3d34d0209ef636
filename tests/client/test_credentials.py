"""Where the SDK and the CLI find their token, and how they write one."""

from __future__ import annotations

import pytest

from equiprune.client import credentials
from equiprune.client.errors import SpecError


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUIPRUNE_CONFIG_DIR", str(tmp_path / "cfg"))
    for name in ("EQUIPRUNE_TOKEN", "EQUIPRUNE_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "cfg"


def test_the_order_argument_file_environment_then_the_servers_file(tmp_path, monkeypatch):
    credentials.write_token_file(credentials.credentials_file("127.0.0.1:9000"), "ept_stored")
    assert credentials.find_token("127.0.0.1:9000") == "ept_stored"
    assert credentials.find_token("localhost:9000") == "ept_stored"  # the same server, the other name
    assert credentials.find_token("127.0.0.1:9001") is None
    tokenfile = tmp_path / "t"
    credentials.write_token_file(tokenfile, "ept_file_env")
    monkeypatch.setenv("EQUIPRUNE_TOKEN_FILE", str(tokenfile))
    assert credentials.find_token("127.0.0.1:9000") == "ept_file_env"
    monkeypatch.setenv("EQUIPRUNE_TOKEN", "ept_env")
    assert credentials.find_token("127.0.0.1:9000") == "ept_env"
    credentials.write_token_file(tmp_path / "u", "ept_flag_file")
    assert credentials.find_token("127.0.0.1:9000", token_file=tmp_path / "u") == "ept_flag_file"
    assert credentials.find_token("127.0.0.1:9000", token="ept_flag", token_file=tmp_path / "u") == "ept_flag"


def test_token_files_are_private_and_checked(tmp_path):
    path = tmp_path / "deep" / "token"
    credentials.write_token_file(path, "ept_x")
    assert path.stat().st_mode & 0o777 == 0o600
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "big").write_bytes(b"x" * 5000)
    for name, words in (("empty", "empty"), ("big", "not a token file"), ("missing", "cannot read")):
        with pytest.raises(SpecError) as caught:
            credentials.read_token_file(tmp_path / name)
        assert words in caught.value.problem


def test_a_tls_ca_must_be_a_readable_pem(tmp_path):
    (tmp_path / "ca.pem").write_text("not a certificate")
    for path in (tmp_path / "ca.pem", tmp_path / "absent.pem"):
        with pytest.raises(SpecError) as caught:
            credentials.open_channel("127.0.0.1:1", [], tls_ca=path)
        assert caught.value.field == "tls_ca"


def test_a_token_file_is_replaced_never_widened_and_links_are_not_followed(tmp_path):
    path = tmp_path / "token"
    path.write_text("old\n")
    path.chmod(0o644)
    credentials.write_token_file(path, "ept_new")
    assert path.read_text() == "ept_new\n" and path.stat().st_mode & 0o777 == 0o600
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    credentials.write_token_file(link, "ept_x")
    assert target.read_text() == "keep\n" and not link.is_symlink()


def test_a_plaintext_token_beyond_this_machine_is_warned_about():
    with pytest.warns(UserWarning, match="plaintext"):
        credentials.open_channel("10.1.2.3:9000", [], token="ept_x").close()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        credentials.open_channel("127.0.0.1:9000", [], token="ept_x").close()
        credentials.open_channel("localhost:9000", [], token="ept_x").close()
