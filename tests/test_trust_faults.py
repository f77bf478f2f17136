"""Issue 21, trust round two: faults that ended in a crash, a traceback or `internal error` now end in one line and a
non-zero exit, with nothing left behind (no temporary file, no lock, no stub)."""

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from skinaug.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]


def run(args, capsys) -> tuple[int, str]:
    """(exit code, stderr) of one CLI call."""
    capsys.readouterr()
    code = main([str(arg) for arg in args])
    return code, capsys.readouterr().err


def error_line(err: str) -> str:
    """The one `error:` line: neither a bug report nor a traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "internal error" not in lines[0] and "Traceback" not in err, err
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Hidden files (temporaries, locks, staging folders) under `folder`."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob(".*"))


# ------------------------------------------------------------------------------------ item 7: a full disk


def _limit_file_size(limit: int):
    def apply() -> None:
        # a file may not grow past `limit`: write() fails with EFBIG, as it fails with ENOSPC on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_disk_filling_up_inside_hdf5_is_one_line_and_leaves_neither_temporary_nor_lock(tiny_model, tmp_path):
    # a real failing write inside HDF5 (not a monkeypatch): it used to end in a segfault (exit -11/139), leaving the
    # temporary code file and the lock behind
    data, out = tiny_model.dataset, tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "skinaug", "encode", str(data.images), "--labels", str(data.labels_csv), "--model",
         str(tiny_model.path), "--out", str(out / "codes.h5"), "--device", "cpu", "--quiet"],
        preexec_fn=_limit_file_size(4000), env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 1, result.stderr
    line = error_line(result.stderr)
    assert f"cannot write {os.path.realpath(out / 'codes.h5')}: File too large" in line
    assert list(out.iterdir()) == []


def test_a_code_file_written_in_memory_reads_back_the_same(tiny_model, tmp_path, capsys):
    from skinaug.codes import read_codes

    data, out = tiny_model.dataset, tmp_path / "codes.h5"
    code, err = run(["encode", data.images, "--labels", data.labels_csv, "--model", tiny_model.path, "--out", out,
                     "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    codes = read_codes(out)
    assert codes.images == data.names and codes.codes["bottom"].shape[0] == 12
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------ item 12: what a killed run leaves


def test_a_killed_encodes_temporary_file_is_removed_by_the_next_run(tiny_model, tmp_path, capsys):
    data, out = tiny_model.dataset, tmp_path / "codes.h5"
    stale = tmp_path / ".codes.h5.k2j4x9q1.tmp"  # atomic_path's temporary, left by a SIGKILL
    stale.write_bytes(b"\0" * 45_000)
    code, err = run(["encode", data.images, "--labels", data.labels_csv, "--model", tiny_model.path, "--out", out,
                     "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    assert not stale.exists() and leftovers(tmp_path) == []


def test_ctrl_c_during_encode_does_not_advise_a_resume_it_lacks(tiny_model, tmp_path, monkeypatch, capsys):
    import skinaug.codes as codes_module

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(codes_module.CodeWriter, "append", interrupted)
    data, out = tiny_model.dataset, tmp_path / "codes.h5"
    code, err = run(["encode", data.images, "--labels", data.labels_csv, "--model", tiny_model.path, "--out", out,
                     "--device", "cpu", "--quiet"], capsys)
    assert code == 130
    assert err.startswith("interrupted:") and "--resume" not in err and "run the same command again" in err
    assert leftovers(tmp_path) == [] and not out.exists()
