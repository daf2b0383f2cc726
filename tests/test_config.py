"""sevd.toml: every key has a default; a key or section the daemon does not know is refused, naming it and the file."""

import pytest

from sevd import config as config_mod
from sevd.config import KEYS, Config
from sevd.errors import InputError


def test_no_file_at_the_default_path_means_the_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("SEVD_CONFIG", raising=False)
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG", tmp_path / "absent.toml")
    assert Config.load() == Config()


def test_a_named_file_must_exist(tmp_path):
    with pytest.raises(InputError, match="no such configuration file"):
        Config.load(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[daemon]\nlog_levle = "debug"\n', "unknown key 'log_levle' in [daemon]"),
        ('[psp]\nbackend = "device"\ndevice = "/dev/sev"\n', "unknown key 'device' in [psp]"),
        ('[xenstored]\nsocket = "/run/x"\n', "unknown section [xenstored]"),
        ('log_level = "debug"\n', "unknown section [log_level]"),
        ('daemon = "debug"\n', "daemon must be a [daemon] section"),
    ],
)
def test_unknown_keys_and_sections_are_refused_by_name_and_file(tmp_path, text, named):
    path = tmp_path / "sevd.toml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        Config.load(path)
    assert str(path) in str(err.value) and named in str(err.value)


def test_the_packaged_file_is_all_comments_and_names_every_key():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "debian" / "sevd.toml").read_text()
    for section, keys in KEYS.items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"#{key} = " in text, key
    assert Config.load(Path(__file__).resolve().parent.parent / "debian" / "sevd.toml") == Config(
        source=str(Path(__file__).resolve().parent.parent / "debian" / "sevd.toml")
    )
