"""The commands that take a run: which version an experiment folder gives, and ``actrec runs``."""

from __future__ import annotations

from pathlib import Path

import pytest
from viewer_fixtures import make_store

from actrec.runs import write_summary
from actrec.viewer.cli import render_main


def test_render_of_an_experiment_folder_names_the_version_it_took(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = tmp_path / "quickstart"
    make_store(experiment / "version_0", steps=range(3), run_id="six-conv")
    write_summary(experiment / "version_0", {"state": "finished", "model": "six_conv_tanh", "dataset": "mnist"})
    make_store(experiment / "version_1", steps=range(2), run_id="lenet")
    write_summary(experiment / "version_1", {"state": "finished", "model": "lenet", "dataset": "mnist"})
    (experiment / "version_2").mkdir()  # refused or --record false: no store

    assert render_main([str(experiment), "--quiet", "--jobs", "1"]) == 0
    assert capsys.readouterr().err == (
        f"{experiment}: taking version_1, the newest of 3 version(s) with a store (version_2 has none), "
        f"lenet on mnist; other versions trained six_conv_tanh on mnist; "
        f"pass {experiment / 'version_1'} or another version_N to choose.\n"
    )
    assert (experiment / "version_1" / "renders" / "curves.png").is_file()
    assert not (experiment / "version_0" / "renders").exists()

    assert render_main([str(experiment / "version_0"), "--quiet", "--jobs", "1"]) == 0
    assert capsys.readouterr().err == ""  # a run named exactly needs no word
