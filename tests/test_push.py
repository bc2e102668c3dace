"""quantkit push against a Hub stand-in on 127.0.0.1, through the real huggingface_hub client.

What is proven: a converted stand-in is published in one commit (LFS for weights), downloaded again and
equal byte for byte; the card parses as a ModelCard with the expected metadata; broken artifacts never reach
the network; missing/invalid tokens, other people's namespaces, taken names, 401/403, 5xx and dropped
connections give one-line HubErrors or are retried; an interrupted push publishes nothing and resumes
without re-sending uploaded files; the token never shows up in messages or logs.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, snapshot_download
from safetensors.torch import load_file

from hub_fixtures import ORG, OTHER_TOKEN, READ_TOKEN, TOKEN, USER, hub, make_artifact  # noqa: F401 - hub is a fixture
from quantkit.errors import HubError, InputError
from quantkit.hub.artifact import check_artifact
from quantkit.hub.card import render_card
from quantkit.hub.push import push
from quantkit.manifest import EVAL_JSON, weights_digest

REPO = f"{USER}/tiny-w4a16"


def _published(hub, repo=REPO, revision="main") -> dict[str, bytes]:
    return {p: b for p, b in hub.files(repo, revision).items() if p != ".gitattributes"}


def _local(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def test_push_then_download_is_byte_identical(hub, tmp_path):
    art = make_artifact(tmp_path / "art", shards=2, with_gguf=True)
    result = push(art, "tiny-w4a16")  # no namespace: the token's user

    assert result.repo_id == REPO and result.revision == "main"
    commits = hub.commits(REPO)
    assert len(commits) == 2  # the repo's initial commit, then everything in one commit
    assert commits[-1].oid == result.commit_oid
    # weights went through LFS (batch + presigned PUT), one PUT per large file
    lfs_files = [n for n in _local(art) if n.endswith((".safetensors", ".gguf"))]
    assert hub.count("PUT", r"^/lfs-storage/") == len(lfs_files) == 3
    assert all(commits[-1].files[n].is_lfs for n in lfs_files)

    # download with the same client, from a clean cache, and compare byte for byte
    got = Path(snapshot_download(REPO, cache_dir=tmp_path / "fresh-cache"))
    downloaded = {p.name: p.read_bytes() for p in got.iterdir() if p.is_file() and p.name != ".gitattributes"}
    readme = downloaded.pop("README.md")
    assert downloaded == _local(art)
    assert set(result.files) == set(downloaded) | {"README.md"}
    tensors = load_file(got / "model-00001-of-00002.safetensors")
    assert tensors and all(t.numel() for t in tensors.values())

    card = ModelCard(readme.decode())
    assert card.data.base_model == "tiny-org/tiny-llama"
    assert card.data.base_model_relation == "quantized"
    assert {"quantkit", "gptq", "4-bit", "gguf"} <= set(card.data.tags)
    assert card.data.quantization == {
        "method": "rtn", "bits": 4, "group_size": 32, "sym": True, "desc_act": False,
        "checkpoint_format": "gptq", "recipe": "w4a16-g32", "producer": "quantkit 0.1.0",
    }
    metrics = {(r.metric_type, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert metrics[("perplexity", "Perplexity")] == 12.3456
    assert metrics[("kl_divergence", "KL divergence from the base model")] == 0.0421
    assert metrics[("tokens_per_second", "decode tokens/s, batch 8")] == 900.75
    assert "| this model | 12.3456 | 0.2100 |" in card.text
    assert "NVIDIA H100 80GB HBM3" in card.text
    for how in ("vllm serve alice/tiny-w4a16", 'from_pretrained("alice/tiny-w4a16"', "--hf-file tiny-Q4_0.gguf"):
        assert how in card.text


def test_card_renders_only_the_sections_eval_measured(tmp_path):
    only_ppl = {"perplexity": {"text": "wiki", "quantized": {"ppl": 9.5}}}
    card = render_card(check_artifact(make_artifact(tmp_path / "a", evaluation=only_ppl)), repo_id="o/m")
    parsed = ModelCard(str(card))
    assert [r.metric_type for r in parsed.data.eval_results] == ["perplexity"]
    assert "### Perplexity" in parsed.text and "### Throughput" not in parsed.text
    assert "llama.cpp does not read GPTQ tensors" in parsed.text  # no GGUF in this artifact

    bare = ModelCard(str(render_card(check_artifact(make_artifact(tmp_path / "b", evaluation={})), repo_id="o/m")))
    assert bare.data.eval_results is None and "## Evaluation" not in bare.text
    assert bare.data.quantization["bits"] == 4


def _stale_eval(d: Path) -> None:
    data = json.loads((d / EVAL_JSON).read_text())
    data["weights_digest"] = "0" * 64
    (d / EVAL_JSON).write_text(json.dumps(data))


def _truncate(d: Path) -> None:
    path = d / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def _no_tokenizer(d: Path) -> None:
    (d / "tokenizer.json").unlink()
    (d / "tokenizer_config.json").unlink()


def _no_quantization(d: Path) -> None:
    config = json.loads((d / "config.json").read_text())
    del config["quantization_config"]
    (d / "config.json").write_text(json.dumps(config))


def _wrong_group(d: Path) -> None:
    for name in ("config.json", "quantize_config.json"):
        config = json.loads((d / name).read_text())
        (config.get("quantization_config") or config)["group_size"] = 64
        (d / name).write_text(json.dumps(config))


@pytest.mark.parametrize("breakage, words", [
    (_stale_eval, "measured other weights"),
    (_truncate, "unreadable safetensors"),
    (_no_tokenizer, "tokenizer"),
    (_no_quantization, "no quantization_config"),
    (_wrong_group, "do not match"),
    (lambda d: (d / EVAL_JSON).unlink(), "quantkit eval"),
])
def test_a_broken_artifact_never_reaches_the_network(hub, tmp_path, breakage, words):
    art = make_artifact(tmp_path / "art")
    breakage(art)
    with pytest.raises(InputError, match=words) as err:
        push(art, REPO)
    assert "\n" not in str(err.value)
    assert hub.state.requests == []


def test_missing_token_is_a_clear_error_before_any_request(hub, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError, match=r"no Hugging Face token: set HF_TOKEN or run `hf auth login`"):
        push(make_artifact(tmp_path / "art"), REPO)
    assert hub.state.requests == []


def test_rejected_token_401(hub, tmp_path):
    bad = "hf_NotAValidTokenAtAll1234567890xyz"
    with pytest.raises(HubError, match=r"rejected the token \(401\)") as err:
        push(make_artifact(tmp_path / "art"), REPO, token=bad)
    assert bad not in str(err.value)
    assert REPO not in hub.state.repos


def test_someone_elses_namespace_is_refused_before_creating_anything(hub, tmp_path):
    with pytest.raises(HubError, match=r"namespace 'bob' is not yours .*push to alice/x"):
        push(make_artifact(tmp_path / "art"), "bob/x")
    assert hub.count("POST", r"/api/repos/create") == 0


def test_org_namespace_is_allowed(hub, tmp_path):
    result = push(make_artifact(tmp_path / "art"), f"{ORG}/tiny")
    assert result.repo_id == f"{ORG}/tiny" and "README.md" in hub.files(f"{ORG}/tiny")


def test_read_only_token_is_refused(hub, tmp_path):
    with pytest.raises(HubError, match="read-only"):
        push(make_artifact(tmp_path / "art"), REPO, token=READ_TOKEN)
    assert REPO not in hub.state.repos


def test_server_side_403_leaves_nothing_published(hub, tmp_path):
    hub.fail("POST", r"/preupload/", status=403)
    with pytest.raises(HubError, match=r"403 Forbidden"):
        push(make_artifact(tmp_path / "art"), REPO)
    assert _published(hub) == {}  # the repo exists but holds no file of this push
    assert hub.count("POST", r"/commit/") == 0


def test_a_name_taken_by_another_model_is_refused(hub, tmp_path):
    hub.create_repo(REPO, files={"pytorch_model.bin": b"someone's weights", "config.json": b"{}"})
    with pytest.raises(HubError, match=r"name is taken by a repo quantkit did not publish"):
        push(make_artifact(tmp_path / "art"), REPO)
    assert len(hub.commits(REPO)) == 2 and hub.count("POST", r"/commit/") == 0


def test_a_name_taken_out_of_sight_409(hub, tmp_path):
    hub.fail("POST", r"/api/repos/create", status=409)
    with pytest.raises(HubError, match=r"name is taken \(409 Conflict\)"):
        push(make_artifact(tmp_path / "art"), REPO)


def test_private_repo_and_private_flag_on_a_public_repo(hub, tmp_path):
    push(make_artifact(tmp_path / "art"), REPO, private=True)
    assert hub.state.repos[REPO].private
    hub.create_repo(f"{USER}/public-one")
    with pytest.raises(HubError, match="is public but --private was given"):
        push(make_artifact(tmp_path / "art2"), f"{USER}/public-one", private=True)


def test_branch_and_message(hub, tmp_path):
    push(make_artifact(tmp_path / "art"), REPO, revision="g32", message="first cut")
    assert "config.json" in _published(hub, revision="g32")
    assert _published(hub, revision="main") == {}
    assert hub.commits(REPO)[-1].message == "first cut"


def test_repush_replaces_the_previous_artifact_in_one_commit(hub, tmp_path):
    push(make_artifact(tmp_path / "sharded", shards=2, with_gguf=True), REPO)
    single = make_artifact(tmp_path / "single", seed=1)
    push(single, REPO)
    files = _published(hub)
    files.pop("README.md")
    assert files == _local(single)  # old shards, index and gguf are gone
    assert len(hub.commits(REPO)) == 3


def test_5xx_are_retried_and_give_one_commit(hub, tmp_path, caplog):
    hub.fail("GET", r"/api/whoami-v2", status=503)
    hub.fail("POST", r"/api/repos/create", status=502)
    hub.fail("POST", r"/info/lfs/objects/batch", status=500, times=2)
    hub.fail("POST", r"/commit/", status=500, times=2)
    with caplog.at_level(logging.DEBUG):
        push(make_artifact(tmp_path / "art"), REPO)
    assert len(hub.commits(REPO)) == 2
    assert hub.count("POST", r"/commit/") == 3
    assert "retry" in caplog.text.lower()
    assert TOKEN not in caplog.text


def test_dropped_connections_are_retried(hub, tmp_path):
    art = make_artifact(tmp_path / "art")
    hub.fail("PUT", r"^/lfs-storage/", drop=True)
    hub.fail("POST", r"/commit/", drop=True)
    hub.fail("GET", r"/api/models/", drop=True)
    push(art, REPO)
    assert _published(hub)["model.safetensors"] == (art / "model.safetensors").read_bytes()
    assert hub.count("PUT", r"^/lfs-storage/") == 2  # the dropped one, then its retry
    assert len(hub.commits(REPO)) == 2


def test_lost_answers_do_not_duplicate_the_repo_or_the_commit(hub, tmp_path):
    """The Hub did the work but the answer never came: the retry must find it done, not fail or redo it."""
    art = make_artifact(tmp_path / "art")
    hub.fail("POST", r"/api/repos/create", drop=True, after=True)
    hub.fail("POST", r"/commit/", drop=True, after=True)
    result = push(art, REPO)
    assert hub.count("POST", r"/api/repos/create") == 2 and hub.count("POST", r"/commit/") == 1
    assert len(hub.commits(REPO)) == 2 and result.commit_oid == hub.commits(REPO)[-1].oid


def test_an_interrupted_push_publishes_nothing_and_resumes(hub, tmp_path):
    art = make_artifact(tmp_path / "art", shards=2)
    hub.fail("POST", r"/commit/", drop=True, times=100)
    with pytest.raises(HubError, match=r"after 5 attempts .* run the same command again to resume") as err:
        push(art, REPO)
    assert "\n" not in str(err.value) and TOKEN not in str(err.value)
    assert _published(hub) == {}  # the uploaded shards are not visible: no commit was made
    puts = hub.count("PUT", r"^/lfs-storage/")
    assert puts == 2

    hub.state.failures.clear()
    push(art, REPO)
    assert hub.count("PUT", r"^/lfs-storage/") == puts  # resumed: the shards were not sent again
    files = _published(hub)
    files.pop("README.md")
    assert files == _local(art)


def test_token_never_printed_or_logged(hub, tmp_path, caplog, capfd):
    art = make_artifact(tmp_path / "art")
    hub.fail("POST", r"/info/lfs/objects/batch", status=500)
    with caplog.at_level(logging.DEBUG):
        push(art, REPO)
        with pytest.raises(HubError) as err:
            push(art, f"{USER}/other", token=OTHER_TOKEN)  # bob's token, alice's namespace
        hub.fail("GET", r"/api/whoami-v2", status=401)
        with pytest.raises(HubError) as err401:
            push(art, REPO)
    out, errout = capfd.readouterr()
    for text in (caplog.text, out, errout, str(err.value), str(err401.value)):
        assert TOKEN not in text and OTHER_TOKEN not in text
    assert any(auth == f"Bearer {TOKEN}" for auth in hub.state.seen_authorization)  # it was sent, as a header


def test_push_in_a_fresh_process_reads_hf_endpoint_and_hf_token_from_the_environment(hub, tmp_path):
    art = make_artifact(tmp_path / "art")
    code = "import sys; from quantkit.hub.push import push; print(push(sys.argv[1], sys.argv[2]).commit_oid)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", code, str(art), "tiny-env"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == hub.commits(f"{USER}/tiny-env")[-1].oid
    assert TOKEN not in proc.stdout + proc.stderr


def test_a_local_base_model_path_stays_off_the_card(tmp_path):
    art = make_artifact(tmp_path / "art")
    manifest = json.loads((art / "quantkit_manifest.json").read_text())
    manifest["source"]["model"] = "/home/someone/private/checkpoints/my-llama"
    (art / "quantkit_manifest.json").write_text(json.dumps(manifest))
    card = ModelCard(str(render_card(check_artifact(art), repo_id="o/m")))
    assert "/home/someone" not in str(card) and "`my-llama` (a local checkpoint)" in card.text
    assert card.data.base_model is None


def test_offline_mode_refuses_to_publish(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):
        push(make_artifact(tmp_path / "art"), REPO)
    assert hub.state.requests == []


def test_card_reads_a_bare_perplexity_result(tmp_path):
    flat = {"text": "persuasion.txt", "ctx": 1024, "windows": 3, "quantized": {"ppl": 20.5, "stderr": 0.5},
            "baseline": {"ppl": 19.0, "stderr": 0.4, "model": "x"}}
    card = ModelCard(str(render_card(check_artifact(make_artifact(tmp_path / "a", evaluation=flat)), repo_id="o/m")))
    assert [r.metric_value for r in card.data.eval_results] == [20.5]
    assert "| base model | 19.0000 | 0.4000 |" in card.text


def test_cli_push_command(hub, tmp_path):
    from click.testing import CliRunner

    from quantkit.cli import main

    art = make_artifact(tmp_path / "art")
    ok = CliRunner().invoke(main, ["push", str(art), "tiny-cli", "--private", "--message", "from the CLI"])
    assert ok.exit_code == 0, ok.output
    assert f"published {USER}/tiny-cli (main): " in ok.output
    assert hub.state.repos[f"{USER}/tiny-cli"].private and hub.commits(f"{USER}/tiny-cli")[-1].message == "from the CLI"

    hub.fail("GET", r"/api/whoami-v2", status=401)
    bad = CliRunner().invoke(main, ["push", str(art), "tiny-cli"])
    assert bad.exit_code == 1
    lines = [line for line in bad.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "rejected the token (401)" in lines[0]
    assert TOKEN not in bad.output


def test_convert_push_to_validates_then_publishes(hub, tmp_path):
    """convert --push-to: convert, measure perplexity against MODEL into the artifact, publish it with its card."""
    from click.testing import CliRunner

    from conftest import make_checkpoint
    from quantkit.cli import main

    src = make_checkpoint(tmp_path / "src", "llama")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", str(src), "--out", str(out), "--push-to", "tiny-converted",
                                       "--eval-windows", "2"])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((out / EVAL_JSON).read_text())
    assert evaluation["weights_digest"] == weights_digest(out)
    assert evaluation["perplexity"]["windows"] == 2 and "kl_divergence" in evaluation["perplexity"]
    files = _published(hub, f"{USER}/tiny-converted")
    assert EVAL_JSON in files and "README.md" in files and "quantkit_manifest.json" in files
    assert TOKEN not in result.output


def test_convert_push_to_without_a_token_publishes_nothing(hub, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from conftest import make_checkpoint
    from quantkit.cli import main

    monkeypatch.delenv("HF_TOKEN")
    src = make_checkpoint(tmp_path / "src", "llama")
    result = CliRunner().invoke(main, ["convert", str(src), "--out", str(tmp_path / "out"), "--push-to", "x",
                                       "--eval-windows", "1"])
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1].startswith("error: ")
    assert hub.state.requests == []


def test_a_failing_upload_names_the_file(hub, tmp_path):
    hub.fail("PUT", r"^/lfs-storage/", status=500, times=1000)
    with pytest.raises(HubError, match=r"model\.safetensors: HTTP 500.*run the same command again to resume"):
        push(make_artifact(tmp_path / "art"), REPO)
    assert _published(hub) == {}


def test_token_from_hf_auth_login(hub, tmp_path, monkeypatch):
    """No HF_TOKEN: the token saved by `hf auth login` (HF_TOKEN_PATH) is used."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN")
    Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True, exist_ok=True)
    Path(constants.HF_TOKEN_PATH).write_text(TOKEN)
    assert push(make_artifact(tmp_path / "art"), REPO).repo_id == REPO
    assert hub.state.seen_authorization[-1] == f"Bearer {TOKEN}"
