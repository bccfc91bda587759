"""``sockecho models``: each model, its one line, and a source file a student can open."""

from __future__ import annotations

from pathlib import Path

import pytest

from sockecho import DEFAULT_MODEL, MODELS
from sockecho.cli import main


def test_models_lists_each_model_with_summary_and_its_source_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * len(MODELS)  # a summary line and a path line per model
    for (name, cls), summary_line, path_line in zip(
        MODELS.items(), lines[::2], lines[1::2], strict=True
    ):
        label = f"{name} (default)" if name == DEFAULT_MODEL else name
        assert summary_line.split("  ", 1)[0].strip() == label
        assert summary_line.endswith(cls.summary)
        source = Path(path_line.strip())
        assert source.is_file()
        assert f"class {cls.__name__}(" in source.read_text()
        assert f'name = "{name}"' in source.read_text()
