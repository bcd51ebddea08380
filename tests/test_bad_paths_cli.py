"""Bad paths and options on the command line: `Error: ...` naming the path/option, exit 2, no traceback."""

from __future__ import annotations

import pytest

from helpers import cli


def assert_usage_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: "), result.output
    for needle in needles:
        assert needle in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_check_file_that_is_a_directory(tmp_path):
    assert_usage_error(cli("check", "--file", tmp_path), f"{tmp_path}: is a directory")


@pytest.fixture
def ws_with_samples(workspace, samples_csv):
    assert cli("data", "import", samples_csv).exit_code == 0
    return workspace


def test_lora_scripts_export_onto_an_existing_file(ws_with_samples, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me", encoding="utf-8")
    assert_usage_error(cli("data", "export", afile), f"{afile}: is a file", "lora-scripts")
    assert afile.read_text(encoding="utf-8") == "keep me"


@pytest.mark.parametrize("fmt", ["jsonl", "chatml"])
def test_jsonl_export_onto_an_existing_directory(ws_with_samples, tmp_path, fmt):
    adir = tmp_path / "adir"
    adir.mkdir()
    assert_usage_error(cli("data", "export", adir, "--format", fmt), f"{adir}: is a directory")
    assert not (tmp_path / "adir.tmp").exists()
    assert list(adir.iterdir()) == []


def test_export_under_a_path_through_a_file(ws_with_samples, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    assert_usage_error(cli("data", "export", afile / "out.jsonl", "--format", "jsonl"), str(afile))
    assert_usage_error(cli("data", "export", afile / "train_data"), str(afile))


def test_failed_write_removes_the_temp_file(ws_with_samples, tmp_path):
    out = tmp_path / "train_data"
    (out / "metadata.csv").mkdir(parents=True)  # the target itself cannot be replaced
    assert_usage_error(cli("data", "export", out), f"{out / 'metadata.csv'}: cannot write")
    assert sorted(p.name for p in out.iterdir()) == ["metadata.csv"]


def test_split_errors_exit_2(ws_with_samples, tmp_path):
    assert_usage_error(cli("data", "export", tmp_path / "out", "--split", "foo"), "--split", "'foo'")
    assert_usage_error(cli("data", "export", tmp_path / "out", "--split", "train"), "--split needs --snapshot")
    assert not (tmp_path / "out").exists()


def test_import_of_a_directory(ws_with_samples, tmp_path):
    adir = tmp_path / "adir.csv"
    adir.mkdir()
    assert_usage_error(cli("data", "import", adir), f"{adir}: is a directory")


def test_real_subprocess_directory_for_check_file(tmp_path):
    from helpers import cli_subprocess

    proc = cli_subprocess("check", "--file", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == f"Error: {tmp_path}: is a directory, expected a file\n"
