"""The storage layer on local disk and on a real fake-gcs-server: the same calls, the same results."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.shared import storage


@pytest.fixture(params=["local", "gcs"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh empty location: a local directory, or a bucket on fake-gcs-server."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("gcs_bucket")


def test_read_write_exists_delete(root: str) -> None:
    uri = storage.join(root, "a", "b.json")
    assert not storage.exists(uri)
    storage.write_json(uri, {"x": [1, 2]})
    assert storage.exists(uri)
    assert storage.read_json(uri) == {"x": [1, 2]}
    storage.write_text(storage.join(root, "t.txt"), "héllo")
    assert storage.read_text(storage.join(root, "t.txt")) == "héllo"
    with storage.open_read(uri) as f:
        assert f.read().startswith(b"{")
    storage.delete(storage.join(root, "a"))
    assert not storage.exists(uri)
    with pytest.raises(storage.StorageError, match="no such"):
        storage.read_bytes(uri)


def test_list_and_glob(root: str) -> None:
    for rel in ("d/x.jsonl", "d/y.jsonl", "d/sub/z.jsonl", "d/sub/w.csv", "other/q.jsonl"):
        storage.write_text(storage.join(root, rel), rel)
    listed = [u[len(root) + 1 :] for u in storage.list_files(storage.join(root, "d"))]
    assert listed == ["d/sub/w.csv", "d/sub/z.jsonl", "d/x.jsonl", "d/y.jsonl"]
    top = [u[len(root) + 1 :] for u in storage.list_files(storage.join(root, "d") + "/*.jsonl")]
    assert top == ["d/x.jsonl", "d/y.jsonl"]
    deep = [u[len(root) + 1 :] for u in storage.list_files(storage.join(root, "d") + "/**/*.jsonl")]
    assert set(deep) >= {"d/sub/z.jsonl"} and "d/sub/w.csv" not in deep
    single = storage.join(root, "other/q.jsonl")
    assert storage.list_files(single) == [single]
    assert storage.list_files(storage.join(root, "missing")) == []


def _tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_upload_download_roundtrip_with_resumable_chunks(root: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "unet").mkdir(parents=True)
    (src / "model_index.json").write_text("{}")
    # 1.1 MiB with 256 KiB chunks: a resumable upload of five chunks, the last one partial.
    (src / "unet" / "weights.bin").write_bytes(os.urandom(1_100_000))
    written = storage.upload_dir(src, storage.join(root, "m"), chunk_size=256 * 1024)
    assert len(written) == 2
    out = storage.download_dir(storage.join(root, "m"), tmp_path / "dl")
    assert _tree(out) == _tree(src)
    cached = storage.local_dir(storage.join(root, "m"))
    assert _tree(cached) == _tree(src) | (
        {".complete": cached.joinpath(".complete").read_bytes()} if storage.is_gcs(root) else {}
    )


def test_upload_refuses_a_file_that_differs_from_its_manifest(root: str, tmp_path: Path) -> None:
    """A file changed after the manifest was taken is caught by the server's (or the copy's) CRC32C."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"a" * 1000)
    (src / "b.bin").write_bytes(os.urandom(300_000))
    manifest = storage.file_manifest(src)
    (src / "b.bin").write_bytes(os.urandom(300_000))  # same size, new content: only a checksum can tell
    with pytest.raises(storage.StorageError, match="b.bin"):
        storage.upload_dir(src, storage.join(root, "m"), chunk_size=256 * 1024, manifest=manifest)
    (src / "b.bin").unlink()
    with pytest.raises(storage.StorageError, match="disappeared"):
        storage.upload_dir(src, storage.join(root, "m2"), manifest=manifest)


def test_gcs_helpers(fake_gcs: str, tmp_path: Path) -> None:
    assert storage.split_gcs("gs://b/k/x") == ("b", "k/x")
    assert storage.join("gs://b/k/", "x", "/y") == "gs://b/k/x/y"
    with pytest.raises(storage.StorageError, match="no bucket"):
        storage.split_gcs("gs:///x")
    with pytest.raises(storage.StorageError):
        storage.download_dir("gs://nonexistent-prefix-bucket/none", tmp_path / "dl")


def test_a_gs_object_the_credentials_cannot_read_is_a_storage_error_naming_it(monkeypatch):
    """fake-gcs-server grants everything, so GCS's 403 is raised by a stand-in blob (the client's own
    exception type); a config file behind it is then one ConfigError line, not a traceback."""
    from google.api_core.exceptions import Forbidden

    from components.shared import storage
    from components.shared.config import ConfigError, StepConfig

    class DeniedBlob:
        def download_as_bytes(self) -> bytes:
            raise Forbidden("GET gs://b/train.yaml: sa@p.iam does not have storage.objects.get access")

    monkeypatch.setattr(storage, "_blob", lambda uri: DeniedBlob())
    with pytest.raises(storage.StorageError, match=r"gs://b/train\.yaml: access denied"):
        storage.read_bytes("gs://b/train.yaml")
    with pytest.raises(ConfigError, match=r"gs://b/train\.yaml: cannot read the config file .*access denied"):
        StepConfig.from_yaml("gs://b/train.yaml")
