"""bench/quality_curves.py: rows of several quality result files drawn on one plot, each
under its own label; a bad source is one line naming it."""

from __future__ import annotations

import json
import sys

import pytest
from PIL import Image

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import quality_curves  # noqa: E402  (a script folder, not a package)


def test_a_source_splits_at_the_first_colon_and_the_last_equals_sign():
    assert quality_curves.parse_source("r/a.json:point+pdml+ext (default recipe)=w=4") == (
        quality_curves.Path("r/a.json"), "point+pdml+ext (default recipe)=w", "4")
    with pytest.raises(SystemExit, match=r"source 'a.json=x': expected <file>:<row>=<label>"):
        quality_curves.parse_source("a.json=x")


def results(path, row, seeds):
    curve = [[25, 0.3], [50, 0.4]]
    path.write_text(json.dumps({"records": [{"row": row, "seed": s, "curve": curve}
                                            for s in seeds]}))
    return path


def test_rows_of_two_files_are_drawn_under_their_labels(tmp_path, monkeypatch, capsys):
    first = results(tmp_path / "a.json", "point", [0, 1])
    second = results(tmp_path / "b.json", "point+pdml+ext (default recipe)", [0, 1, 2])
    out = tmp_path / "curves.png"
    monkeypatch.setattr(sys, "argv", ["quality_curves.py", "--out", str(out),
                                      f"{first}:point=point CE",
                                      f"{second}:point+pdml+ext (default recipe)=recipe"])
    quality_curves.main()
    assert f"wrote {out} (5 runs)" in capsys.readouterr().out
    assert Image.open(out).format == "PNG"


def test_a_row_missing_from_its_file_is_named(tmp_path, monkeypatch):
    first = results(tmp_path / "a.json", "point", [0])
    monkeypatch.setattr(sys, "argv", ["quality_curves.py", "--out", str(tmp_path / "x.png"),
                                      f"{first}:full=full masks"])
    with pytest.raises(SystemExit, match=r"a\.json: no records of row 'full'"):
        quality_curves.main()
    assert not (tmp_path / "x.png").exists()
