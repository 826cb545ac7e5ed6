"""The README's examples run as written: its Python blocks, and its command-line block from a
fresh folder after ``maxca example-data`` (the newcomer's first hour, issue 15)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from maxca import cli

README = Path(__file__).resolve().parents[1] / "README.md"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _command_line_block() -> list[list[str]]:
    """The ``maxca`` commands of the README's "Command line" section, one argv each."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Command line") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("#")[0].strip()
        if line:
            commands.append(shlex.split(line))
    return commands


def test_readme_python_blocks_run_in_an_empty_folder(tmp_path, monkeypatch):
    blocks = _blocks("python")
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
    from maxca import load_checkpoint

    model, _ = load_checkpoint(tmp_path / "my-model")  # what the README saved loads back
    assert model.config.attention == "maxca" and model.config.spatial_dims == 3


def test_readme_examples_use_no_shared_data():
    text = README.read_text(encoding="utf-8")
    commands = _command_line_block()
    assert "../shared" not in " ".join(" ".join(c) for c in commands)
    assert "source .venv/bin/activate" in text and ".venv/bin/maxca" in text
    assert [c[1] for c in commands[:2]] == ["example-data", "train"]


def test_readme_command_line_block_runs_after_example_data(tmp_path, monkeypatch, capsys):
    """Every command of the block, in order, in a fresh folder holding only ``configs/``.

    One deviation, for time: the training budget is cut to 3 steps (``budget.steps=3`` appended;
    the README's own budget is a plain override). ``maxca demo`` (minutes) is left out: it has
    its own tests."""
    (tmp_path / "configs").symlink_to(CONFIGS)
    monkeypatch.chdir(tmp_path)
    commands = _command_line_block()
    ran = []
    for argv in commands:
        assert argv[0] == "maxca", argv
        args = argv[1:]
        if args[0] == "demo":
            continue
        if args[0] == "train":
            args = [*args, "budget.steps=3", "val_every=3", "ckpt_every=3", "progress=false"]
        try:
            code = cli.main(args)
        except SystemExit as exc:
            code = exc.code
        assert code in (0, None), (argv, capsys.readouterr().err)
        ran.append(args[0])
    assert ran == ["example-data", "train", "register", "register", "evaluate"]
    assert (tmp_path / "results" / "F_M" / "figure.png").is_file()
    assert len(list((tmp_path / "results" / "val").glob("disp_*.nii.gz"))) == 2
    assert (tmp_path / "results" / "eval" / "summary.json").is_file()


def test_example_config_points_at_the_example_data():
    import yaml

    config = yaml.safe_load((CONFIGS / "example.yaml").read_text())
    assert config["data"]["path"] == "example-data/dataset.json"
