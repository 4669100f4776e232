from __future__ import annotations

from pathlib import Path

import pytest

from mtlscope.cli import main


def test_run_runs_and_settings_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("setting: {name: synthetic}\ntraining: {epochs: 2}\n")
    assert main(["run", str(config), "training.batch_size=64", "--out", str(tmp_path / "out")]) == 0
    assert "completed" in capsys.readouterr().out
    assert main(["run", str(config), "training.batch_size=64", "--out", str(tmp_path / "out")]) == 0
    assert "already completed" in capsys.readouterr().out
    assert main(["runs", str(tmp_path / "out")]) == 0
    listing = capsys.readouterr().out
    assert "task0+task1" in listing and "1 runs: 1 completed" in listing
    assert main(["settings"]) == 0
    listing = capsys.readouterr().out
    for name in ("digits-mtl", "digits-attributes", "synthetic", "noisy-digits", "loop"):
        assert name in listing


def test_missing_paths_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["runs", str(tmp_path / "none")]) == 2
    assert "no such results directory" in capsys.readouterr().err


INTERRUPTED = "interrupted; run the same command to resume\n"


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("run", ["run", "c.yaml"]),
        ("runs", ["runs", "."]),
        ("analyze", ["analyze", "."]),
        ("report", ["report", "."]),
        ("sweep", ["sweep", "s.yaml"]),
        ("sweep_status", ["sweep-status", "."]),
        ("reproduce", ["reproduce", "p"]),
        ("demo", ["demo"]),
        ("settings", ["settings"]),
    ],
)
def test_ctrl_c_in_any_command_is_one_line_and_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str, argv: list[str]
) -> None:
    import mtlscope.cli as cli

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, f"_cmd_{command}", interrupted)
    assert main(argv) == 130
    captured = capsys.readouterr()
    assert captured.err == INTERRUPTED and captured.out == ""


def test_a_run_interrupted_mid_training_resumes_with_the_same_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mtlscope.progress import Progress

    config = tmp_path / "c.yaml"
    config.write_text("setting: {name: synthetic}\ntraining: {steps: 30, eval_every: 10, batch_size: 32}\n")
    argv = ["run", str(config), "--out", str(tmp_path / "out"), "--quiet"]
    advance_to = Progress.advance_to

    def ctrl_c_at_step_15(self: Progress, done: int, *, timed: bool = True) -> None:
        if done == 15:
            raise KeyboardInterrupt
        advance_to(self, done, timed=timed)

    with monkeypatch.context() as patch:
        patch.setattr(Progress, "advance_to", ctrl_c_at_step_15)
        assert main(argv) == 130
    captured = capsys.readouterr()
    assert captured.err == INTERRUPTED and captured.out == ""
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().endswith(": completed")
