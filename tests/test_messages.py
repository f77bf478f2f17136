"""Library messages name parameters, the CLI shows its flags; reports go through the "skinaug" logger, whose level
--quiet lowers for one run."""

import logging

import pytest

from skinaug import runtime
from skinaug.generation import commands as generate
from skinaug.cli import flag_spelling, main
from skinaug.data.scan import scan_dataset
from skinaug.errors import Message, SkinaugError, UsageError, render

TEMPLATE = "give {class_name=NAME} with {n=N}; {overwrite=True}, {level='bottom'}, {epochs=0} or {device}"


def test_a_message_spells_parameters_for_python_and_flags_for_the_command_line():
    error = UsageError(TEMPLATE)
    assert str(error) == "give class_name=NAME with n=N; overwrite=True, level='bottom', epochs=0 or device"
    assert error.render(flag_spelling(["synthesize"])) == \
        "give --class NAME with -n N; --overwrite, --level bottom, --epochs 0 or --device"
    assert isinstance(error, SkinaugError) and error.exit_code == 2


def test_text_that_is_no_placeholder_is_left_as_it_is():
    text = "{'a': 1} in {Mixed} and {1} and {} and {a b}"
    assert render(text) == text == render(text, flag_spelling(["mix"]))


@pytest.mark.parametrize("argv, name, value, spelled", [
    (["mix"], "data", None, "DATA"),  # an argument: its metavar
    (["score", "codes"], "data", None, "--data"),  # the same parameter is an option of another command
    (["synthesize"], "n", "N", "-n N"),  # the option's first flag
    (["train", "prior"], "n_blocks", "4", "--blocks 4"),  # the library's name, the command's flag
    (["score", "fid"], "real_labels", "CSV", "--labels CSV"),
    (["resample"], "compile_step", "True", "--compile"),
    (["mix"], "not_an_option_here", None, "--not-an-option-here"),
    ([], "overwrite", "True", "--overwrite"),
])
def test_the_command_line_spells_each_parameter_as_its_running_command_does(argv, name, value, spelled):
    assert flag_spelling(argv)(name, value) == spelled


def test_a_usage_error_reads_as_parameters_from_python_and_as_flags_from_the_cli(tmp_path, capsys):
    with pytest.raises(UsageError) as caught:
        generate.synthesize(tmp_path / "out", n=3)
    assert str(caught.value) == "give class_name=NAME with n=N, or per_class=N"
    capsys.readouterr()
    assert main(["synthesize", "--out", str(tmp_path / "out"), "-n", "3"]) == 2
    assert capsys.readouterr().err.strip() == "error: give --class NAME with -n N, or --per-class N"
    assert not (tmp_path / "out").exists()


def test_a_warning_from_the_library_names_the_parameter(tiny_dataset, capsys):
    with open(tiny_dataset.labels_csv, "a") as handle:
        handle.write("ghost,nevus,L9\n")
    capsys.readouterr()
    assert len(scan_dataset(tiny_dataset.images, tiny_dataset.labels_csv)) == 12
    err = capsys.readouterr().err
    assert err.startswith("warning: 1 inputs of ") and err.rstrip().endswith("strict=True makes this an error")


def test_handlers_of_ones_own_receive_the_python_spelling():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    with runtime.reporting(handler):
        runtime.warn("{strict=True} makes this an error")
        runtime.log("resuming ({init} only sets the start of a run)")
    assert [record.getMessage() for record in records] == ["strict=True makes this an error",
                                                          "resuming (init only sets the start of a run)"]
    assert [record.levelno for record in records] == [logging.WARNING, logging.INFO]
    assert isinstance(records[0].msg, Message)


def test_quiet_lowers_the_level_for_one_run_and_progress_bars_follow_it(tmp_path, capsys, monkeypatch):
    logger = logging.getLogger("skinaug")
    seen = []

    def contact_sheet(*args, **kwargs):  # what the library sees while the command runs
        with runtime.progress(3) as bar:
            seen.append((logger.getEffectiveLevel(), bar.disable))
        return {}

    monkeypatch.setattr("skinaug.reports.preview.contact_sheet", contact_sheet)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    logger.setLevel(logging.DEBUG)  # a caller's own setting, which a command run leaves as it found it
    try:
        for quiet in ([], ["--quiet"]):
            assert main(["preview", str(tmp_path), "--out", str(tmp_path / "sheet.png"), *quiet]) == 0
            assert logger.level == logging.DEBUG
    finally:
        logger.setLevel(logging.INFO)
    assert seen == [(logging.INFO, False), (logging.WARNING, True)]
