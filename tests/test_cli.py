"""Every command answers --help; doctor works offline."""
import subprocess
import sys

import pytest

from course_lib.__main__ import COMMANDS, main


def test_top_level_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name, capsys):
    # in this process (a fresh interpreter per command cost a minute of the suite); the entry point
    # itself is checked in a fresh process below
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code in (0, None)
    assert "usage:" in capsys.readouterr().out.lower()


def test_entry_point_in_a_fresh_process():
    r = subprocess.run([sys.executable, "-m", "course_lib", "train-teacher", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout.lower() and "--reader-tokens" in r.stdout


def test_doctor_offline(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "mode" in out and "hub tier" in out and "device" in out


def test_data_manifest(capsys):
    assert main(["data", "manifest"]) == 0
    assert "grace_hopper" in capsys.readouterr().out


def test_data_prepare_reads_every_photo_of_the_collection(capsys):
    from course_lib import world

    assert main(["data", "prepare"]) == 0
    out = capsys.readouterr().out
    assert f"{len(world.photo_names())} photos" in out and "test" in out
