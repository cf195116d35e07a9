"""Configuration: precedence file < environment < flags, refusals that name the key, secrets hidden."""

from __future__ import annotations

import pytest

from bridge.cli import build_parser, overrides_from_args
from bridge.config import ConfigError, Secret, load_config


def write(tmp_path, text: str):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_defaults() -> None:
    cfg = load_config(env={})
    assert cfg.kafka.bootstrap == "127.0.0.1:9092" and cfg.ingress.accepted_types == [1, 2, 4, 8, 254]


def test_precedence(tmp_path) -> None:
    path = write(tmp_path, 'site = "file"\n[kafka]\nbootstrap = "10.9.9.9:9092"\n[egress]\nframe_size = 1000\n')
    env = {"D4BRIDGE_SITE": "env", "D4BRIDGE_EGRESS_FRAME_SIZE": "2000"}
    cfg = load_config(path, {"site": "flag"}, env=env)
    assert cfg.site == "flag"
    assert cfg.egress.frame_size == 2000
    assert cfg.kafka.bootstrap == "10.9.9.9:9092"


@pytest.mark.parametrize("text,needle", [
    ('[kafka]\nbootstap = "x:1"\n', "unknown key 'kafka.bootstap'"),
    ('nonsense = 1\n', "unknown key 'nonsense'"),
    ('[ingress]\nlisten = "nohost"\n', "ingress.listen: expected host:port"),
    ('metrics_port = 70000\n', "metrics_port: expected a port number"),
    ('[analyze]\ntelescope = "10.0.0.0/33"\n', "analyze.telescope: expected CIDR"),
    ('[sanitize]\nworkers = "many"\n', "sanitize.workers: expected an integer"),
    ('[egress]\ninsecure = "perhaps"\n', "egress.insecure: expected true or false"),
    ('kafka = 3\n', "'kafka' must be a table"),
    ('site = \n', "not valid TOML"),
])
def test_refusals_name_the_key(tmp_path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert needle in str(info.value)


def test_unknown_environment_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"D4BRIDGE_KAFKA_BOOTSTARP": "x"})
    assert "kafka.bootstarp" in str(info.value)


def test_secrets_never_show(tmp_path) -> None:
    cfg = load_config(env={"D4BRIDGE_EGRESS_HMAC_KEY": "s3cret-key"})
    assert cfg.egress.hmac_key == Secret("s3cret-key")
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.describe())
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[egress]\nhmac_key = 5\nframe_size = -1\n"), env={})
    assert "s3cret" not in str(info.value)


def test_flags_and_key_files(tmp_path) -> None:
    key = tmp_path / "key"
    key.write_text("private key to change\n")
    args = build_parser().parse_args(["egress", "--bootstrap", "127.0.0.1:1", "--server", "127.0.0.1:4443",
                                      "--hmac-key-file", str(key), "--frame-size", "4096", "--site", "x"])
    cfg = load_config(None, overrides_from_args(args), env={})
    assert cfg.egress.hmac_key.reveal() == b"private key to change"
    assert cfg.egress.frame_size == 4096 and cfg.kafka.bootstrap == "127.0.0.1:1" and cfg.site == "x"


def test_every_design_subcommand_exists() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) >= {"broker", "topics", "ingress", "queue", "sanitize", "egress", "analyze", "send",
                                "export", "sanitize-file", "leakcheck", "demo", "sink"}
