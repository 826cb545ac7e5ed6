"""Landmark CSV reading and TRE with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from maxca.errors import MaxcaInputError
from maxca.metrics import read_landmarks_csv, tre, warp_points


def test_read_csv_with_header_spaces_and_blank_lines(tmp_path):
    path = tmp_path / "lm.csv"
    path.write_text("x,y,z\n1, 2.5, 3\n\n4,5,6\n")
    pts = read_landmarks_csv(path)
    assert pts.dtype == np.float64
    np.testing.assert_array_equal(pts, [[1, 2.5, 3], [4, 5, 6]])


def test_read_csv_without_header_2d(tmp_path):
    path = tmp_path / "lm.csv"
    path.write_text("1,2\n3,4\n")
    np.testing.assert_array_equal(read_landmarks_csv(path, dim=2), [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3\n4,5\n", r"same number of coordinates .* got rows of \[2, 3\] values"),
        ("1,2,3\n4,five,6\n", r"line 2: expected numbers, got '4,five,6'"),
        ("1,2,3,4\n", r"expected 2 or 3 coordinates per row, got 4"),
        ("x,y,z\n", r"at least one landmark, got none"),
        ("1,nan,3\n", r"coordinates must be finite"),
    ],
)
def test_read_csv_errors(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(MaxcaInputError, match=message):
        read_landmarks_csv(path)


def test_read_csv_missing_file_and_wrong_dim(tmp_path):
    with pytest.raises(MaxcaInputError, match=r"landmark file must exist, got '.*nope.csv'"):
        read_landmarks_csv(tmp_path / "nope.csv")
    path = tmp_path / "lm.csv"
    path.write_text("1,2\n")
    with pytest.raises(MaxcaInputError, match=r"expected 3 coordinates per row, got 2"):
        read_landmarks_csv(path, dim=3)


def test_tre_of_a_translation():
    # u = (3, 2, 0) voxels everywhere; moving landmarks equal the fixed ones, spacing (1, 2, 1):
    # each error is ||(3, 2, 0) * (1, 2, 1)|| = ||(3, 4, 0)|| = 5 mm
    flow = np.zeros((3, 6, 7, 8))
    flow[0], flow[1] = 3.0, 2.0
    p = np.array([[1.0, 2.0, 3.0], [4.5, 0.25, 7.0]])
    np.testing.assert_allclose(tre(p, p, flow, (1.0, 2.0, 1.0)), [5.0, 5.0])
    # landmarks that moved exactly by the flow: error 0
    np.testing.assert_allclose(tre(p, p + [3.0, 2.0, 0.0], flow, (1.0, 2.0, 1.0)), [0.0, 0.0])


def test_warp_points_interpolates_linearly():
    # u_0 = p_1^2: linear interpolation between p_1 = 2 and 3 at 2.5 gives (4 + 9) / 2
    grid = np.indices((4, 6), dtype=np.float64)
    flow = np.stack([grid[1] ** 2, np.zeros((4, 6))])
    out = warp_points([[1.0, 2.5]], flow)
    np.testing.assert_allclose(out, [[1.0 + 6.5, 2.5]])


def test_tre_bad_inputs():
    flow = np.zeros((2, 5, 5))
    with pytest.raises(MaxcaInputError, match=r"pair up, got 2 fixed and 1 moving"):
        tre(np.zeros((2, 2)), np.zeros((1, 2)), flow, (1, 1))
    with pytest.raises(MaxcaInputError, match=r"fixed_pts must have shape \(N, 2\), got 2x3"):
        tre(np.zeros((2, 3)), np.zeros((2, 3)), flow, (1, 1))
    with pytest.raises(MaxcaInputError, match=r"inside the 5x5 grid, got 1 outside"):
        tre([[0.0, 0.0], [5.0, 1.0]], np.zeros((2, 2)), flow, (1, 1))
