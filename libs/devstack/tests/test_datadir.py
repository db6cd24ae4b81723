"""The data folder's checks and the model folder's checks: each refusal names the file and the fix."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from parley_devstack.datadir import DataDir, DataDirError, DataDirInUseError
from parley_devstack.models import DEFAULT_MODEL, ModelError, _write_manifest, check_model_folder


def test_a_new_folder_gets_a_layout_private_secrets_and_stable_ports(tmp_path: Path) -> None:
    with DataDir(tmp_path / "data") as data:
        secrets = data.secrets()
        ports = data.ports()
    assert secrets["admin_api_key"].startswith("adm-")
    assert stat.S_IMODE((tmp_path / "data" / "secrets.json").stat().st_mode) == 0o600
    assert json.loads((tmp_path / "data" / "layout.json").read_text()) == {"layout": 1}

    with DataDir(tmp_path / "data") as again:
        assert again.secrets() == secrets
        assert again.ports() == ports
        again.save_secrets({"demo_api_key": "pk-x"})
        assert again.secrets() == {**secrets, "demo_api_key": "pk-x"}


def test_a_second_user_of_the_folder_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    with (
        DataDir(tmp_path / "data"),
        pytest.raises(DataDirInUseError, match=r"another Parley \(pid \d+\).*PARLEY_DATA_DIR"),
    ):
        DataDir(tmp_path / "data").open()
    DataDir(tmp_path / "data").open().close()  # free again once the first is closed


def test_a_folder_of_other_files_or_another_layout_is_left_untouched(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(DataDirError, match=r"not a Parley data folder.*Nothing was changed"):
        DataDir(foreign).open()
    assert sorted(p.name for p in foreign.iterdir()) == ["mine.txt"]

    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "layout.json").write_text('{"layout": 7}')
    with pytest.raises(DataDirError, match=r"layout 7.*newer Parley"):
        DataDir(newer).open()


def test_a_folder_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(DataDirError, match=r"cannot create the data folder .*file/data"):
        DataDir(tmp_path / "file" / "data").open()


def test_reset_deletes_everything(tmp_path: Path) -> None:
    with DataDir(tmp_path / "data") as data:
        (data.stack_dir / "mongo").mkdir(parents=True)
        data.secrets()
    DataDir(tmp_path / "data").reset()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["run.lock"]


def _model_folder(path: Path) -> Path:
    path.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (path / name).write_text("{}")
    (path / "model.safetensors").write_bytes(b"weights" * 1000)
    return path


def test_model_folders_are_checked_file_by_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"does not exist.*make install"):
        check_model_folder(tmp_path / "missing")
    folder = _model_folder(tmp_path / "model")

    _write_manifest(folder, DEFAULT_MODEL)
    check_model_folder(folder)

    weights = folder / "model.safetensors"
    weights.write_bytes(b"weights" * 999)
    with pytest.raises(ModelError, match=r"model\.safetensors is 6993 bytes.*truncated"):
        check_model_folder(folder)
    weights.write_bytes(b"WEIGHTS" * 1000)
    with pytest.raises(ModelError, match=r"model\.safetensors is corrupt"):
        check_model_folder(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"tokenizer\.json is missing"):
        check_model_folder(folder)
    (folder / "parley-model.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"parley-model\.json is unreadable"):
        check_model_folder(folder)


def test_a_brought_model_needs_only_its_config(tmp_path: Path) -> None:
    folder = tmp_path / "brought"
    folder.mkdir()
    with pytest.raises(ModelError, match=r"config\.json is missing"):
        check_model_folder(folder)
    (folder / "config.json").write_text("{}")
    check_model_folder(folder)
