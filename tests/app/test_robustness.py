"""End-to-end test of maxca.app.robustness.run_robustness on tiny synthetic pairs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from maxca.app.robustness import (
    CSV_COLUMNS,
    Method,
    RobustnessPair,
    affine_method,
    break_severity,
    corruption_seed,
    markdown_report,
    model_method,
    run_robustness,
)
from maxca.data.corruptions import apply_corruption
from maxca.data.io import Volume
from maxca.errors import MaxcaInputError
from maxca.inference.register import register_pair
from maxca.metrics import evaluate_pair
from maxca.models import create_model
from maxca.training.checkpoint import load_checkpoint, save_checkpoint

SHAPE = (16, 20, 24)
AFFINE = np.array([[-2.0, 0, 0, 15], [0, 0, 2, -20], [0, -2, 0, 19], [0, 0, 0, 1]])


def subject(shift: tuple[float, float, float], seed: int) -> tuple[Volume, Volume]:
    """A blob phantom: an ellipsoid (label 1) holding a smaller one (label 2)."""
    rng = np.random.default_rng(seed)
    idx = np.indices(SHAPE, dtype=np.float64)
    c = (np.asarray(SHAPE) - 1) / 2 + np.asarray(shift)
    r = np.sqrt(
        (
            ((idx - c[:, None, None, None]) / np.array([5.0, 6.5, 7.5])[:, None, None, None]) ** 2
        ).sum(0)
    )
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[r < 1.0] = 1
    lab[r < 0.55] = 2
    image = np.array([0.0, 0.5, 0.9], dtype=np.float32)[lab]
    image += 0.03 * rng.standard_normal(SHAPE).astype(np.float32) * (lab > 0)
    return Volume(image.astype(np.float32), AFFINE), Volume(lab, AFFINE)


@pytest.fixture(scope="module")
def pairs() -> list[RobustnessPair]:
    out = []
    for i, (sf, sm) in enumerate((((0, 0, 0), (1.5, -1, 1)), ((0.5, 1, 0), (-1, 0.5, -1.5)))):
        f, fl = subject(sf, 10 + i)
        m, ml = subject(sm, 20 + i)
        out.append(RobustnessPair(f"p{i}", f, m, fl, ml))
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model(
        "pyramid_small", spatial_dims=3, enc_channels=2, dec_channels=4, heads=1, region=2
    )
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    data = {"shape": list(SHAPE), "spacing": [2.0] * 3, "normalise": "minmax", "spatial_dims": 3}
    return save_checkpoint(path, model, data=data)


def test_run_robustness_end_to_end(pairs, checkpoint, tmp_path: Path) -> None:
    methods = [model_method(checkpoint, name="tiny"), affine_method()]
    corruptions = ["gaussian_noise", "extreme_anatomy"]
    severities = [0, 3]
    out = tmp_path / "rob"
    rows = run_robustness(
        pairs, methods, corruptions, severities, seeds=[0], out_dir=out, labels=[1, 2]
    )
    n = len(pairs) * len(methods) * len(corruptions) * len(severities) * 2
    assert len(rows) == n
    with open(out / "robustness.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == n and list(csv_rows[0]) == CSV_COLUMNS
    keys = {(r["pair"], r["method"], r["corruption"], r["side"], r["severity"]) for r in csv_rows}
    assert len(keys) == n  # every combination exactly once
    assert (out / "robustness.md").is_file()
    for c in corruptions:
        png = out / f"robustness_{c}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "robustness.md").read_text()
    assert "## gaussian_noise" in md and "SNR 8" in md and "| moving | tiny |" in md

    model, info = load_checkpoint(checkpoint)
    for pair in pairs:
        # the clean registration, computed independently
        res = register_pair(model, info, pair.fixed, pair.moving, pair.moving_labels)
        clean = evaluate_pair(
            pair.fixed_labels.array, res.warped_labels.array, res.flow, (2.0,) * 3, [1, 2]
        )
        zero = np.zeros((3, *SHAPE), dtype=np.float32)
        unregistered = evaluate_pair(
            pair.fixed_labels.array, pair.moving_labels.array, zero, (2.0,) * 3, [1, 2]
        )
        for r in csv_rows:
            if r["pair"] != pair.name or r["severity"] != "0":
                continue
            expected = clean if r["method"] == "tiny" else unregistered
            assert float(r["dice"]) == expected.dice_mean  # exactly, through the CSV
            assert float(r["hd95"]) == expected.hd95_mean
        # a corrupted row differs from the clean one for the model, and the affine-only method
        # is unaffected by an intensity corruption (its flow is zero whatever the images)
        noisy = [r for r in csv_rows if r["pair"] == pair.name and r["severity"] == "3"]
        for r in noisy:
            if r["method"] == "affine only" and r["corruption"] == "gaussian_noise":
                assert float(r["dice"]) == unregistered.dice_mean
            if r["method"] == "tiny" and r["corruption"] == "gaussian_noise":
                # the untrained network's flow is tiny but depends on its input images
                assert float(r["sdlogj"]) != clean.sdlogj
        # extreme anatomy changes the truth: the affine-only score is that of the label map
        # deformed with the image (same seed as the run used)
        for side in ("moving", "fixed"):
            seed = corruption_seed(0, pairs.index(pair), "extreme_anatomy", side)
            lab = pair.moving_labels if side == "moving" else pair.fixed_labels
            deformed = apply_corruption(
                "extreme_anatomy",
                lab.array.astype(np.float32),
                3,
                seed=seed,
                labels=lab.array,
                spacing=(2.0,) * 3,
            ).labels
            f_lab = deformed if side == "fixed" else pair.fixed_labels.array
            m_lab = deformed if side == "moving" else pair.moving_labels.array
            expected = evaluate_pair(f_lab, m_lab, zero, (2.0,) * 3, [1, 2]).dice_mean
            (row,) = [
                r
                for r in noisy
                if r["corruption"] == "extreme_anatomy"
                and r["method"] == "affine only"
                and r["side"] == side
            ]
            assert float(row["dice"]) == expected
            assert expected != unregistered.dice_mean


def test_same_corruption_for_every_method(pairs) -> None:
    seen: dict[str, list[np.ndarray]] = {}

    def recorder(name: str) -> Method:
        def register(fixed: Volume, moving: Volume) -> np.ndarray:
            seen.setdefault(name, []).append(moving.array.copy())
            return np.zeros((3, *fixed.shape), dtype=np.float32)

        return Method(name, register)

    run_robustness(
        pairs, [recorder("a"), recorder("b")], ["rician_noise"], [0, 1, 2], sides=["moving"]
    )
    assert len(seen["a"]) == len(seen["b"]) == len(pairs) * 3
    for x, y in zip(seen["a"], seen["b"]):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(seen["a"][1], seen["a"][0])  # severity 1 differs from clean
    # seeds differ across pairs, corruptions and sides
    assert corruption_seed(0, 0, "rician_noise", "moving") != corruption_seed(
        0, 1, "rician_noise", "moving"
    )
    assert corruption_seed(0, 0, "rician_noise", "moving") != corruption_seed(
        0, 0, "rician_noise", "fixed"
    )


def test_bad_requests(pairs) -> None:
    m = [affine_method()]
    with pytest.raises(MaxcaInputError, match="unknown corruption 'blur'"):
        run_robustness(pairs, m, ["blur"], [0, 1])
    with pytest.raises(MaxcaInputError, match=r"severities must be integers in 0\.\.4"):
        run_robustness(pairs, m, ["gaussian_noise"], [0, 5])
    with pytest.raises(MaxcaInputError, match="method names must be distinct"):
        run_robustness(pairs, m + m, ["gaussian_noise"], [0])
    with pytest.raises(MaxcaInputError, match="sides must be distinct values"):
        run_robustness(pairs, m, ["gaussian_noise"], [0], sides=["left"])
    with pytest.raises(MaxcaInputError, match="at least one pair"):
        run_robustness([], m, ["gaussian_noise"], [0])
    f, fl = pairs[0].fixed, pairs[0].fixed_labels
    with pytest.raises(MaxcaInputError, match="fixed label map must hold integers"):
        RobustnessPair("x", f, f, Volume(fl.array.astype(np.float32), AFFINE), fl)
    with pytest.raises(MaxcaInputError, match="refine_steps must be an integer >= 0"):
        model_method("unused", refine_steps=-1)


def test_break_severity_is_the_first_level_beyond_the_drop() -> None:
    """Known answers on hand-made rows: the first severity more than 0.05 below clean (mean over
    pairs), None when no level is, and the break table in the report."""

    def rows_for(method: str, dice_by_severity: dict[int, list[float]]) -> list[dict]:
        return [
            {"pair": f"p{i}", "corruption": "gaussian_noise", "side": "moving", "method": method,
             "severity": s, "seed": 0, "dice": d, "hd95": 1.0, "njd_percent": 0.0,
             "sdlogj": 0.0, "seconds": 0.1, "level": ""}
            for s, ds in dice_by_severity.items() for i, d in enumerate(ds)
        ]  # fmt: skip

    rows = rows_for("a", {0: [0.80, 0.70], 1: [0.78, 0.70], 2: [0.74, 0.70], 3: [0.60, 0.60]})
    # means: 0.75, 0.74, 0.72 (drop 0.03), 0.60 (drop 0.15) -> breaks at 3
    rows += rows_for("b", {0: [0.70, 0.70], 1: [0.64, 0.64], 2: [0.69, 0.69], 3: [0.5, 0.5]})
    rows += rows_for("c", {0: [0.70, 0.70], 1: [0.69, 0.69], 2: [0.68, 0.68], 3: [0.66, 0.66]})
    assert break_severity(rows, "gaussian_noise", "moving", "a") == 3
    assert break_severity(rows, "gaussian_noise", "moving", "b") == 1
    assert break_severity(rows, "gaussian_noise", "moving", "c") is None
    assert break_severity(rows, "gaussian_noise", "moving", "c", drop=0.03) == 3
    assert break_severity(rows, "gaussian_noise", "fixed", "a") is None  # no such rows
    md = markdown_report(rows)
    table = md[md.index("## Where each method breaks") :]
    assert "| gaussian_noise | moving | 3 (SNR 8) | 1 (SNR 30) | - |" in table
    # a method run on another corruption only (a merged report) reads "not run" here, not nan
    other = [
        dict(r, corruption="bias_field", method="d") for r in rows_for("d", {0: [0.7], 3: [0.6]})
    ]
    md = markdown_report(rows + other)
    assert "nan" not in md
    drop = md[md.index("## Dice drop") : md.index("## Where each method breaks")]
    assert "| gaussian_noise | moving | -0.150 | -0.200 | -0.040 | not run |" in drop
    assert "| bias_field | moving | not run | not run | not run | -0.100 |" in drop
    table = md[md.index("## Where each method breaks") :]
    assert "| gaussian_noise | moving | 3 (SNR 8) | 1 (SNR 30) | - | not run |" in table


def test_slice_of_pairs_draws_the_full_runs_corruptions(pairs) -> None:
    """A run over pairs[1:] with first_pair_index=1 corrupts pair 1 exactly as the full run did
    (the script's --skip-pairs splits pairs over processes); without the index it does not."""

    def recorder(seen: list[np.ndarray]) -> Method:
        def register(fixed: Volume, moving: Volume) -> np.ndarray:
            seen.append(np.stack([np.asarray(fixed.array), np.asarray(moving.array)]))
            return np.zeros((3, *fixed.shape), dtype=np.float32)

        return Method("recorder", register)

    kinds = ["gaussian_noise", "motion_ghosting"]
    full: list[np.ndarray] = []
    run_robustness(pairs, [recorder(full)], kinds, [2], sides=["moving"], plot=False)
    sliced: list[np.ndarray] = []
    run_robustness(
        pairs[1:], [recorder(sliced)], kinds, [2], sides=["moving"], plot=False, first_pair_index=1
    )
    unshifted: list[np.ndarray] = []
    run_robustness(pairs[1:], [recorder(unshifted)], kinds, [2], sides=["moving"], plot=False)
    per_pair = len(kinds)  # one corrupted registration per corruption (no clean severity)
    assert len(full) == 2 * per_pair and len(sliced) == per_pair
    for a, b in zip(full[per_pair:], sliced):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(full[per_pair], unshifted[0])  # index 0's noise, not index 1's
    with pytest.raises(MaxcaInputError, match="first_pair_index"):
        run_robustness(pairs, [recorder([])], kinds, [2], first_pair_index=-1)


def test_model_method_refines_with_the_similarity_it_is_given(pairs, checkpoint) -> None:
    """``refine_similarity`` reaches the refinement: the flow equals ``register_pair`` with that
    similarity (a reference computation), differs from the model's own (NCC) refinement, and
    the method is named after it; refused when unknown or without refinement steps."""
    model, info = load_checkpoint(checkpoint, map_location="cpu")
    p = pairs[0]
    mse = model_method(checkpoint, refine_steps=3, refine_similarity="mse")
    own = model_method(checkpoint, refine_steps=3)
    assert mse.name == "tiny +refine 3 (mse)" and own.name == "tiny +refine 3"
    got = np.asarray(mse.register(p.fixed, p.moving))
    ref = register_pair(
        model, info, p.fixed, p.moving, refine_steps=3, refine_options={"similarity": "mse"}
    ).flow
    np.testing.assert_allclose(got, np.asarray(ref), atol=1e-6)
    assert np.abs(got - np.asarray(own.register(p.fixed, p.moving))).max() > 1e-4
    with pytest.raises(MaxcaInputError, match="refine similarity must be one of"):
        model_method(checkpoint, refine_steps=3, refine_similarity="cosine")
    with pytest.raises(MaxcaInputError, match="refine_similarity needs refine_steps > 0"):
        model_method(checkpoint, refine_similarity="mind")


def test_model_method_runs_the_passes_it_is_given(pairs, checkpoint) -> None:
    """``passes`` reaches ``register_pair`` (the flow equals its two-pass flow, a reference
    computation, and differs from one pass), names the method, and 0 is refused."""
    model, info = load_checkpoint(checkpoint, map_location="cpu")
    p = pairs[0]
    two = model_method(checkpoint, passes=2)
    assert two.name == "tiny x2" and model_method(checkpoint, passes=2, refine_steps=1).name == (
        "tiny x2 +refine 1"
    )
    got = np.asarray(two.register(p.fixed, p.moving))
    ref = register_pair(model, info, p.fixed, p.moving, passes=2).flow
    np.testing.assert_allclose(got, np.asarray(ref), atol=1e-6)
    one = np.asarray(model_method(checkpoint).register(p.fixed, p.moving))
    assert np.abs(got - one).max() > 1e-4
    with pytest.raises(MaxcaInputError, match="passes must be an integer >= 1"):
        model_method(checkpoint, passes=0)
