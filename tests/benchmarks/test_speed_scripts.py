"""The speed-option and training-memory scripts on tiny inputs: rows, reference ratios."""

from __future__ import annotations

import csv
from pathlib import Path

import speed_options  # benchmarks/ is put on sys.path by conftest.py
import train_memory


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_speed_options_rows_and_reference_variant(tmp_path: Path) -> None:
    out = tmp_path / "so.csv"
    argv = [
        "--target", "pyramid_small", "--size", "8x8x16", "--variants", "eager-fp32,eager-bf16",
        "--repeats", "1", "--threads", "1", "--out", str(out),
    ]  # fmt: skip
    assert speed_options.main(argv) == 0
    rows = _rows(out)
    assert [(r["pass"], r["variant"]) for r in rows] == [
        ("inference", "eager-fp32"),
        ("inference", "eager-bf16"),
        ("train", "eager-fp32"),
        ("train", "eager-bf16"),
    ]
    for r in rows:
        if r["variant"] == "eager-fp32":  # the reference against itself
            assert float(r["ratio_to_eager_fp32"]) == 1.0 and float(r["max_abs_diff"]) == 0.0
        else:  # bfloat16 rounds: a visible but small change of the flow
            assert 0.0 < float(r["max_abs_diff"]) < 0.2 * float(r["ref_abs_max"])


def test_train_memory_reports_a_peak_above_the_baseline(tmp_path: Path) -> None:
    out = tmp_path / "mem.csv"
    argv = ["--model", "corrmaxca", "--size", "8x8x16", "--checkpoint", "--out", str(out)]
    assert train_memory.main(argv) == 0
    (row,) = _rows(out)
    assert row["model"] == "corrmaxca" and row["checkpoint"] == "True"
    assert int(row["params"]) == 29_454_340
    assert float(row["peak_gb"]) >= float(row["baseline_gb"]) > 0


def test_checkpoint_cost_times_both_variants(tmp_path: Path) -> None:
    import checkpoint_cost

    out = tmp_path / "ck.csv"
    argv = ["--model", "pyramid_small", "--size", "8x8x16", "--repeats", "1", "--out", str(out)]
    assert checkpoint_cost.main(argv) == 0
    (row,) = _rows(out)
    assert float(row["plain_s"]) > 0 and float(row["checkpoint_s"]) > 0
    ratio = float(row["checkpoint_s"]) / float(row["plain_s"])
    assert abs(float(row["ratio"]) - ratio) <= 0.05 * ratio


def test_checkpoint_cost_times_each_granularity_against_one_plain_step(tmp_path: Path) -> None:
    import checkpoint_cost

    out = tmp_path / "ck.csv"
    argv = ["--size", "8x8x16", "--repeats", "1", "--granularities", "stage,fine"]
    assert checkpoint_cost.main([*argv, "--out", str(out)]) == 0
    rows = _rows(out)
    assert [r["granularity"] for r in rows] == ["stage", "fine"]
    assert rows[0]["plain_s"] == rows[1]["plain_s"]  # one plain reference, timed alongside


def test_peak_tracker_counts_live_storage_exactly() -> None:
    """Known answer: a chain of float32 ops whose live bytes are computed by hand."""
    import torch

    from _peak import LiveBytes

    model = torch.nn.Linear(1, 1, bias=False)  # 4 bytes of parameters
    tracker = LiveBytes(model)
    with tracker:
        tracker.set_phase("forward")
        a = torch.ones(1000)  # 4000 B
        b = a * 2  # 8000 B live
        c = b + 1  # 12000 B live: the peak
        del a, b  # freed: 4000 B live
        d = c.view(10, 100)  # a view: no new storage
        e = d.sum()  # 4 B
    tracker.close()
    pk = tracker.peaks["forward"]
    assert pk.peak == 4 + 12000
    assert tracker.current == 4 + 4000 + 4
    assert e.item() == 3000.0
    labels = dict(pk.alive)
    assert labels["param"] == 4 and sum(labels.values()) == pk.peak


def test_train_memory_profile_peak_extrapolates_per_phase(tmp_path: Path) -> None:
    out = tmp_path / "peak.csv"
    argv = ["--size", "16x16x16", "--checkpoint", "--granularity", "fine", "--profile-peak"]
    assert train_memory.main([*argv, "--extrapolate-to", "32x32x32", "--out", str(out)]) == 0
    rows = {r["phase"]: r for r in _rows(out)}
    assert set(rows) == {"forward", "loss", "backward"}
    for r in rows.values():
        # 8x the voxels: the scaled tensors exceed the measured ones, by at most 8x
        peak, scaled = float(r["peak_mb"]) / 1e3, float(r["scaled_tensors_gb"])
        assert peak <= scaled + 1e-3 <= 8 * peak + 1e-2
        assert float(r["extrapolated_gb"]) > float(r["baseline_gb"]) > 0


def test_sampler_threads_previous_code_is_the_old_code_and_is_restored() -> None:
    """``previous_code`` switches off the slabs and puts back the var-based LayerNorm (same
    values as the current one), and restores both afterwards, even after an error."""
    import pytest
    import torch

    import sampler_threads
    from maxca.models._blocks import ChannelLayerNorm
    from maxca.spatial import sample

    limit, forward = sample.SPLIT_MIN_POINTS, ChannelLayerNorm.forward
    norm = ChannelLayerNorm(4)
    x = torch.randn(1, 4, 3, 5, 6, dtype=torch.float64) * 2 + 1
    with sampler_threads.previous_code(True):
        assert sample.SPLIT_MIN_POINTS > 10**15 and ChannelLayerNorm.forward is not forward
        old = norm(x)
    torch.testing.assert_close(old, norm(x), rtol=0, atol=1e-12)
    with pytest.raises(RuntimeError), sampler_threads.previous_code(True):
        raise RuntimeError("boom")
    assert (sample.SPLIT_MIN_POINTS, ChannelLayerNorm.forward) == (limit, forward)


def test_variant_rows_and_report(tmp_path) -> None:  # noqa: ANN001
    """Before/after rows: ratio to ``previous``, the difference on the ``current`` row only;
    the report writes the same rows as CSV and a Markdown table after its note; medians of
    interleaved calls (warm-up, then in turn)."""
    from _common import interleaved_medians, read_csv, variant_rows, write_variant_report

    rows = variant_rows("warp", "forward", {"previous": 2.0, "current": 0.5}, 1e-6, 2, 5)
    assert [r["variant"] for r in rows] == ["previous", "current"]
    assert [r["ratio"] for r in rows] == [1.0, 0.25]
    assert [r["max_abs_diff"] for r in rows] == [0.0, 1e-6]
    assert all(r["threads"] == 2 and r["repeats"] == 5 for r in rows)
    rows += variant_rows("warp", "backward", {"previous": 1.0, "current": 3.0}, None, 2, 5)
    table = write_variant_report(tmp_path / "out", "speed", rows, "a note")
    text = (tmp_path / "out" / "speed.md").read_text()
    assert text.startswith("a note\n\n") and text.endswith(table)
    assert "| warp | forward | current | 0.500 | 0.25 | 1.00e-06 |" in table
    assert "| warp | backward | current | 3.000 | 3.00 | - |" in table  # no difference measured
    back = read_csv(tmp_path / "out" / "speed.csv", numeric=["median_s", "ratio"])
    assert [r["ratio"] for r in back] == [1.0, 0.25, 1.0, 3.0]
    calls: list[str] = []
    medians = interleaved_medians(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2
    )
    assert calls == ["a", "b"] * 3 and set(medians) == {"a", "b"}  # warm-up, then in turn


def test_variant_recorder_collects_rows_and_prints_one_line(capsys) -> None:  # noqa: ANN001
    from _common import VariantRecorder, variant_rows

    record = VariantRecorder(threads=1, repeats=3)
    record("train", "3d step", {"previous": 10.0, "current": 8.0}, 0.0)
    record("warp", "forward", {"previous": 1.0, "current": 2.0}, None)
    assert record.rows == [
        *variant_rows("train", "3d step", {"previous": 10.0, "current": 8.0}, 0.0, 1, 3),
        *variant_rows("warp", "forward", {"previous": 1.0, "current": 2.0}, None, 1, 3),
    ]
    assert capsys.readouterr().out.splitlines() == [
        "train 3d step: 10.000 s -> 8.000 s (0.80x), max diff 0.00e+00",
        "warp forward: 1.000 s -> 2.000 s (2.00x), max diff n/a",
    ]
    quiet = VariantRecorder(threads=2, repeats=1, verbose=False)
    quiet("a", "b", {"previous": 1.0, "current": 1.0}, None)
    assert len(quiet.rows) == 2 and capsys.readouterr().out == ""


def test_memory_format_train_step_is_the_same_in_both_layouts() -> None:
    """``memory_format.train_step``: fresh networks of equal weights, one per layout, give the
    same first loss (up to float rounding)."""
    import pytest
    import torch

    import memory_format

    gen = torch.Generator().manual_seed(0)
    fixed, moving = torch.rand(2, 1, 1, 16, 16, 16, generator=gen)
    layouts = ("contiguous", "channels_last")
    losses = [memory_format.train_step("pyramid", fixed, moving, k)() for k in layouts]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert memory_format.LAYOUTS == {"previous": "contiguous", "current": "channels_last"}


def test_interleaved_times_runs_in_turn_and_times_each_call() -> None:
    import time

    from _common import interleaved_times

    calls: list[str] = []

    def slow() -> None:
        calls.append("slow")
        time.sleep(0.02)

    times = interleaved_times({"fast": lambda: calls.append("fast"), "slow": slow}, repeats=3)
    assert calls == ["fast", "slow"] * 4  # one warm-up round, then 3 timed rounds in turn
    assert [len(v) for v in times.values()] == [3, 3]
    assert min(times["slow"]) >= 0.02 > max(times["fast"])


def test_ncc_speed_previous_code_sums_by_convolution_and_is_restored() -> None:
    """``ncc_speed.previous_code`` makes LocalNCC sum its windows with the old convolutions
    (same sums as ``box_sum``), and puts ``box_sum`` back afterwards, even after an error."""
    import pytest
    import torch

    import ncc_speed
    from maxca.losses import LocalNCC, box_sum

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 7, 6, 9, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        ncc_speed.conv_box_sum(x, (3, 5, 9)), box_sum(x, (3, 5, 9)), rtol=0, atol=1e-12
    )
    current = LocalNCC._box_sum
    ncc = LocalNCC(3, window=5)
    I, J = x[:1], x[1:]
    with ncc_speed.previous_code(True):
        assert LocalNCC._box_sum is not current
        old = ncc(I, J)
    assert LocalNCC._box_sum is current
    torch.testing.assert_close(old, ncc(I, J), rtol=0, atol=1e-12)
    with pytest.raises(RuntimeError), ncc_speed.previous_code(True):
        raise RuntimeError("boom")
    assert LocalNCC._box_sum is current
