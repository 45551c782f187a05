"""`lalm-slu download-model` against a local repository in the hub's layout (the hub calls are faked):
the model lands in model.path only once complete, at the commit the revision resolved to."""

import importlib
import json
import logging
import shutil
from types import SimpleNamespace

import huggingface_hub
import pytest
import yaml
from conftest import REPO
from huggingface_hub import errors

from fixtures.hub_schema import make_model_repo
from lalm_slu.cli import main
from lalm_slu.model.hub_snapshot import REVISION_FILE, is_commit
from lalm_slu.planning.job_arguments import model_revision_pinning
from lalm_slu.config.files import architecture_path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
ARCHITECTURE_7B = architecture_path("Qwen2-Audio-7B-Instruct")


class Killed(Exception):
    """The download job killed midway."""


def not_found(repo_id):
    """What huggingface_hub raises for a repository that does not exist."""
    http = importlib.import_module(errors.Response.__module__.split(".")[0])  # the HTTP client huggingface_hub uses
    url = f"https://huggingface.co/api/models/{repo_id}"
    return errors.RepositoryNotFoundError(
        f"404 Client Error: Repository Not Found for url: {url}",
        response=http.Response(404, request=http.Request("GET", url)),
    )


class FakeHub:
    """model_info and snapshot_download served from a local folder; fail_after stops a download midway."""

    def __init__(self, repo, fail_after=None):
        self.repo, self.fail_after, self.downloads = repo, fail_after, []

    def model_info(self, repo_id, revision=None):
        if repo_id != "Qwen/Qwen2-Audio-7B-Instruct":
            raise not_found(repo_id)
        return SimpleNamespace(sha=COMMIT)

    def snapshot_download(self, repo_id, revision=None, local_dir=None):
        self.downloads.append((repo_id, revision))
        (local_dir / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)
        for count, source in enumerate(sorted(self.repo.iterdir())):
            if count == self.fail_after:
                raise Killed
            shutil.copy2(source, local_dir / source.name)
        return str(local_dir)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    fake = FakeHub(make_model_repo(tmp_path, ARCHITECTURE_7B))
    monkeypatch.setattr(huggingface_hub, "model_info", fake.model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    return fake


def download(tmp_path, hub_id="Qwen/Qwen2-Audio-7B-Instruct", revision="main", *options):
    return main(
        [
            "download-model",
            "--hub-id",
            hub_id,
            "--revision",
            revision,
            "--out-dir",
            str(tmp_path / "models/Qwen2-Audio-7B-Instruct"),
            "--stamp",
            str(tmp_path / "stamp.json"),
            *options,
        ]
    )


def test_download_fetches_the_resolved_commit_into_the_model_folder_and_writes_a_stamp(hub, tmp_path):
    assert download(tmp_path) == 0
    model = tmp_path / "models/Qwen2-Audio-7B-Instruct"
    assert json.loads((model / "config.json").read_text()) == json.loads(ARCHITECTURE_7B.read_text())
    assert hub.downloads == [("Qwen/Qwen2-Audio-7B-Instruct", COMMIT)]
    stamp = json.loads((tmp_path / "stamp.json").read_text())
    assert (stamp["hub_id"], stamp["revision"], stamp["commit"]) == ("Qwen/Qwen2-Audio-7B-Instruct", "main", COMMIT)
    assert "model.safetensors.index.json" in stamp["files"] and "model-00002-of-00002.safetensors" in stamp["files"]
    assert not (tmp_path / "models/Qwen2-Audio-7B-Instruct.partial").exists()


def test_the_resolved_commit_is_recorded_inside_the_model_folder(hub, tmp_path):
    assert download(tmp_path) == 0
    recorded = json.loads((tmp_path / "models/Qwen2-Audio-7B-Instruct" / REVISION_FILE).read_text())
    assert recorded == {"hub_id": "Qwen/Qwen2-Audio-7B-Instruct", "revision": "main", "commit": COMMIT}


def test_a_branch_name_is_downloaded_with_a_warning_naming_its_commit(hub, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lalm_slu.model.hub_snapshot"):
        assert download(tmp_path) == 0
    assert "'main' is not a commit" in caplog.text and COMMIT in caplog.text


def test_a_required_commit_refuses_a_branch_name_before_downloading_anything(hub, tmp_path):
    with pytest.raises(SystemExit, match="revision 'main': a branch or tag moves"):
        download(tmp_path, "Qwen/Qwen2-Audio-7B-Instruct", "main", "--require-commit")
    assert hub.downloads == [] and sorted(path.name for path in tmp_path.iterdir()) == ["model-repo"]


def test_a_required_commit_downloads_that_commit_without_warning(hub, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lalm_slu.model.hub_snapshot"):
        assert download(tmp_path, "Qwen/Qwen2-Audio-7B-Instruct", COMMIT, "--require-commit") == 0
    assert hub.downloads == [("Qwen/Qwen2-Audio-7B-Instruct", COMMIT)] and not caplog.records
    assert json.loads((tmp_path / "stamp.json").read_text())["revision"] == COMMIT


def test_only_a_full_lowercase_commit_hash_is_a_commit():
    assert is_commit(COMMIT)
    assert not any(is_commit(name) for name in ("main", "v1.0", "refs/pr/1", COMMIT[:7], COMMIT.upper(), COMMIT + "0"))


def test_the_paper_config_pins_a_commit_and_the_workflow_requires_one_on_gpus():
    paper = yaml.safe_load((REPO / "workflow/configs/paper.yaml").read_text())
    assert is_commit(paper["model"]["revision"])
    assert model_revision_pinning(paper) == ["--require-commit"]
    demo = yaml.safe_load((REPO / "config.yaml").read_text())
    assert model_revision_pinning(demo) == []


def test_an_interrupted_download_leaves_no_model_folder_and_the_next_one_completes(hub, tmp_path):
    hub.fail_after = 3
    with pytest.raises(Killed):
        download(tmp_path)
    assert not (tmp_path / "models/Qwen2-Audio-7B-Instruct").exists()
    assert not (tmp_path / "stamp.json").exists()
    hub.fail_after = None
    assert download(tmp_path) == 0
    assert (tmp_path / "models/Qwen2-Audio-7B-Instruct/model-00001-of-00002.safetensors").is_file()


def test_an_unknown_repository_is_named_and_nothing_is_written(hub, tmp_path):
    with pytest.raises(SystemExit, match="Qwen/Qwen2-Audio-70B at main"):
        download(tmp_path, "Qwen/Qwen2-Audio-70B")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model-repo"]


def test_a_repository_without_config_json_is_not_a_model(hub, tmp_path):
    (hub.repo / "config.json").unlink()
    with pytest.raises(SystemExit, match="no config.json"):
        download(tmp_path)
    assert not (tmp_path / "models/Qwen2-Audio-7B-Instruct").exists()


def test_an_existing_model_folder_is_kept(hub, tmp_path):
    model = tmp_path / "models/Qwen2-Audio-7B-Instruct"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="exists; remove it"):
        download(tmp_path)
    assert (model / "config.json").read_text() == "{}"
