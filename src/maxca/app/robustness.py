"""Robustness of registration methods to out-of-distribution images.

:func:`run_robustness` takes labelled registration pairs, corrupts the moving image (and,
separately, the fixed image) with every corruption of :mod:`maxca.data.corruptions` at graded
severities, registers each corrupted pair with every method, and scores Dice, HD95 and folding
against the *clean* label maps (the label maps of the uncorrupted images; for
``extreme_anatomy``, which changes the anatomy itself, the label map deformed with the image).
Every method sees exactly the same corrupted images: each corrupted volume is made once and
registered by all methods in turn.

A method is a :class:`Method`: a name and a function ``(fixed, moving) -> flow`` returning the
``(d, *S_f)`` voxel displacement of the fixed grid (``docs/conventions.md``). Built in:
:func:`model_method` (a maxca checkpoint through :func:`maxca.inference.register.register_pair`,
optionally with instance optimisation) and :func:`affine_method` (the zero flow: the data's
affine pre-alignment only). Any other tool (ANTs, ...) plugs in the same way; the benchmark
script ``benchmarks/robustness.py`` adds ANTs SyN when ANTsPy is installed.

Outputs (:func:`write_outputs`): ``robustness.csv`` (one row per pair x method x corruption x
side x severity x seed), ``robustness.md`` (mean Dice over pairs per severity, and the Dice drop
from clean to the worst severity) and ``robustness_<corruption>.png`` (Dice vs severity, a line
per method, moving and fixed corruption as two panels).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------
from maxca._atomic import atomic_path, atomic_write_text
from maxca.app.registration import check_refine_similarity
from maxca.data.corruptions import CORRUPTIONS, apply_corruption, severity_levels

# ----------------------------------------------------------------------------------------------
# imports from the inference / metrics / checkpoint layers (one place, to repoint when they move)
from maxca.data.io import Volume, check_same_grid
from maxca.errors import MaxcaInputError
from maxca.inference.register import check_passes, register_pair, warp_volume
from maxca.metrics import evaluate_pair
from maxca.models.checkpoint import load_checkpoint

__all__ = [
    "BREAK_DROP",
    "CSV_COLUMNS",
    "SIDES",
    "Method",
    "RobustnessPair",
    "affine_method",
    "break_severity",
    "corruption_seed",
    "markdown_report",
    "model_method",
    "plot_corruption",
    "refined_name",
    "run_robustness",
    "score",
    "write_outputs",
]

log = logging.getLogger("maxca.app.robustness")

SIDES = ("moving", "fixed")

CSV_COLUMNS = [
    "pair",
    "method",
    "corruption",
    "side",
    "severity",
    "level",
    "seed",
    "dice",
    "hd95",
    "njd_percent",
    "sdlogj",
    "seconds",
]


@dataclass
class RobustnessPair:
    """One labelled registration pair.

    Attributes:
        name: identifier written in the CSV (e.g. ``"0011_0012"``).
        fixed, moving: the images (2-D or 3-D :class:`~maxca.data.io.Volume`, any grids).
        fixed_labels, moving_labels: integer label maps on their images' grids.
    """

    name: str
    fixed: Volume
    moving: Volume
    fixed_labels: Volume
    moving_labels: Volume

    def __post_init__(self) -> None:
        if self.fixed.ndim != self.moving.ndim:
            raise MaxcaInputError(
                f"pair {self.name}: fixed is {self.fixed.ndim}-D but moving is {self.moving.ndim}-D"
            )
        for what, image, labels in (
            ("fixed", self.fixed, self.fixed_labels),
            ("moving", self.moving, self.moving_labels),
        ):
            if np.issubdtype(labels.array.dtype, np.floating):
                raise MaxcaInputError(
                    f"pair {self.name}: {what} label map must hold integers, "
                    f"got {labels.array.dtype}"
                )
            check_same_grid(image, labels, f"pair {self.name}: {what} label map grid differs")


@dataclass(frozen=True)
class Method:
    """A registration method.

    Attributes:
        name: the name in tables and figures.
        register: ``register(fixed, moving) -> flow``: ``(d, *S_f)`` voxel displacement of the
            fixed grid (``warped(p) = moving(A_m^-1 A_f (p + flow(p)))``), numpy or tensor.
        kind: a free-form description (``"model"``, ``"identity"``, ``"ants"``, ...).
    """

    name: str
    register: Callable[[Volume, Volume], Any]
    kind: str = ""


def affine_method(name: str = "affine only") -> Method:
    """The zero flow: the images' affine pre-alignment, no deformable registration."""

    def register(fixed: Volume, moving: Volume) -> np.ndarray:
        return np.zeros((fixed.ndim, *fixed.shape), dtype=np.float32)

    return Method(name, register, "identity")


def refined_name(label: str, refine_steps: int, refine_similarity: str | None = None) -> str:
    """The name of a refined method: ``LABEL +refine N``, then `` (SIMILARITY)`` when the
    refinement optimises another similarity than the model's own."""
    name = f"{label} +refine {int(refine_steps)}"
    return name if refine_similarity is None else f"{name} ({refine_similarity})"


def model_method(
    checkpoint: str | Path,
    name: str | None = None,
    refine_steps: int = 0,
    which: str = "last",
    device: str = "cpu",
    model: Any = None,
    info: Any = None,
    refine_similarity: str | None = None,
    passes: int | None = None,
) -> Method:
    """A maxca model as a :class:`Method` (:func:`~maxca.inference.register.register_pair`).

    Args:
        checkpoint: a run directory, a checkpoint directory or a ``.safetensors`` file.
        name: the method's name (default: the folder name, ``+refine N`` with refinement, and
            `` (SIMILARITY)`` with ``refine_similarity``).
        refine_steps: instance-optimisation steps per pair (0: the network alone).
        which: ``"last"`` or ``"best"`` checkpoint of a run directory.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        model, info: an already loaded model and its checkpoint info (then ``checkpoint`` only
            names it), e.g. to share one model between a plain and a refined method.
        refine_similarity: the similarity the refinement optimises (``"ncc"``, ``"mse"`` or
            ``"mind"``, as ``maxca register --refine-similarity``); ``None``: the model's own.
            Refused without ``refine_steps``, where it would change nothing.
        passes: network passes (cascaded inference, as ``maxca register --passes``); ``None``:
            the model's default (1, or its recorded ``refine.passes`` when refining). An
            explicit value is named in the default name (``LABEL x2``).
    """
    if passes is not None:
        check_passes(passes)
    if isinstance(refine_steps, bool) or int(refine_steps) != refine_steps or refine_steps < 0:
        raise MaxcaInputError(f"refine_steps must be an integer >= 0, got {refine_steps!r}")
    check_refine_similarity(refine_similarity)
    if refine_similarity is not None and not refine_steps:
        raise MaxcaInputError("refine_similarity needs refine_steps > 0")
    options = None if refine_similarity is None else {"similarity": refine_similarity}
    if model is None:
        model, info = load_checkpoint(checkpoint, which=which, map_location="cpu")
    label = name or Path(checkpoint).name
    if name is None and passes is not None:
        label = f"{label} x{int(passes)}"
    if name is None and refine_steps:
        label = refined_name(label, refine_steps, refine_similarity)

    def register(fixed: Volume, moving: Volume) -> np.ndarray:
        result = register_pair(
            model,
            info,
            fixed,
            moving,
            device=device,
            refine_steps=int(refine_steps),
            refine_options=options,
            passes=passes,
        )
        return result.flow

    return Method(label, register, "model")


def corruption_seed(seed: int, pair_index: int, corruption: str, side: str) -> int:
    """The corruption seed of one (pair, corruption, side): the same for every method and every
    severity (a stronger severity scales the same random pattern), different across pairs,
    corruptions and sides."""
    names = list(CORRUPTIONS)
    entropy = [int(seed), int(pair_index), names.index(corruption), SIDES.index(side)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def score(
    flow: Any, fixed_labels: Volume, moving_labels: Volume, labels: Sequence[int] | None
) -> dict[str, float]:
    """Dice, HD95 (mm), % folded voxels and SDlogJ of a fixed-grid voxel flow.

    The moving label map is carried onto the fixed grid with nearest neighbour through both
    affines (:func:`~maxca.inference.register.warp_volume`) and scored by
    :func:`maxca.metrics.evaluate_pair` against ``fixed_labels``.
    """
    u = flow.detach().cpu().numpy() if isinstance(flow, torch.Tensor) else np.asarray(flow)
    u = u.astype(np.float32, copy=False)
    d = fixed_labels.ndim
    if u.shape != (d, *fixed_labels.shape):
        raise MaxcaInputError(
            f"a method returned a flow of shape {u.shape}, expected {(d, *fixed_labels.shape)}"
        )
    warped = warp_volume(moving_labels, torch.from_numpy(u)[None], fixed_labels.affine, "label")
    result = evaluate_pair(
        fixed_labels.array,
        warped[0, 0].numpy(),
        u,
        spacing=fixed_labels.spacing,
        labels=labels,
    )
    s = result.scalars()
    return {
        "dice": s["dice_mean"],
        "hd95": s["hd95_mean"],
        "njd_percent": s["njd_percent"],
        "sdlogj": s["sdlogj"],
    }


class _CachedScore:
    """:func:`score` with a cache: the same flow on the same label maps is scored once (the
    affine-only method returns the zero flow for every intensity corruption)."""

    def __init__(self, labels: Sequence[int] | None) -> None:
        self.labels = labels
        self.cache: dict[tuple[int, int, str], dict[str, float]] = {}
        self.keep: list[Volume] = []  # keeps the keyed label maps alive (ids stay unique)

    def __call__(self, flow: Any, fixed_labels: Volume, moving_labels: Volume) -> dict[str, float]:
        u = flow.detach().cpu().numpy() if isinstance(flow, torch.Tensor) else np.asarray(flow)
        u = np.ascontiguousarray(u, dtype=np.float32)
        digest = hashlib.blake2b(u.tobytes(), digest_size=16).hexdigest() + str(u.shape)
        key = (id(fixed_labels), id(moving_labels), digest)
        if key not in self.cache:
            self.cache[key] = score(u, fixed_labels, moving_labels, self.labels)
            self.keep += [fixed_labels, moving_labels]
        return dict(self.cache[key])


def _corrupt(
    name: str, image: Volume, labels: Volume, severity: int, seed: int
) -> tuple[Volume, Volume]:
    out = apply_corruption(
        name, image.array, severity, seed=seed, labels=labels.array, spacing=image.spacing
    )
    new_image = Volume(np.asarray(out.image, dtype=np.float32), image.affine, image.header)
    new_labels = labels
    if out.labels is not None and out.labels is not labels.array:
        new_labels = Volume(np.asarray(out.labels), labels.affine, labels.header)
    return new_image, new_labels


def _check_request(
    methods: Sequence[Method],
    corruptions: Sequence[str],
    severities: Sequence[int],
    seeds: Sequence[int],
    sides: Sequence[str],
) -> None:
    if not methods:
        raise MaxcaInputError("run_robustness needs at least one method, got none")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise MaxcaInputError(f"method names must be distinct, got {names}")
    if not corruptions:
        raise MaxcaInputError("run_robustness needs at least one corruption, got none")
    for c in corruptions:
        if c not in CORRUPTIONS:
            raise MaxcaInputError(f"unknown corruption {c!r}; expected some of {list(CORRUPTIONS)}")
    if len(set(corruptions)) != len(corruptions):
        raise MaxcaInputError(f"corruptions must be distinct, got {list(corruptions)}")
    top = min(CORRUPTIONS[c].max_severity for c in corruptions)
    if not severities or len(set(severities)) != len(severities):
        raise MaxcaInputError(f"severities must be distinct integers, got {list(severities)}")
    for s in severities:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s <= top:
            raise MaxcaInputError(
                f"severities must be integers in 0..{top}, got {list(severities)}"
            )
    if not seeds or len(set(seeds)) != len(seeds):
        raise MaxcaInputError(f"seeds must be distinct integers, got {list(seeds)}")
    if not sides or any(s not in SIDES for s in sides) or len(set(sides)) != len(sides):
        raise MaxcaInputError(f"sides must be distinct values from {list(SIDES)}, got {sides}")


def run_robustness(
    pairs: Sequence[RobustnessPair],
    methods: Sequence[Method],
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = (0, 1, 2, 3, 4),
    seeds: Sequence[int] = (0,),
    out_dir: str | Path | None = None,
    labels: Sequence[int] | None = None,
    sides: Sequence[str] = SIDES,
    plot: bool = True,
    meta: Mapping[str, Any] | None = None,
    first_pair_index: int = 0,
) -> list[dict[str, Any]]:
    """Register corrupted pairs with every method and score them against the clean labels.

    For each pair the clean registration is run once per method (when 0 is among the
    severities); its scores are the severity-0 rows of every corruption, side and seed. For
    each pair, corruption, side (``"moving"``: the moving image is corrupted, ``"fixed"``: the
    fixed image), severity ``>= 1`` and seed,
    the corrupted image is made once (seed :func:`corruption_seed`) and registered by every
    method. The metrics use the clean label maps (for ``extreme_anatomy``: the label map
    deformed together with the image).

    Args:
        pairs: the labelled pairs.
        methods: the :class:`Method` list (distinct names).
        corruptions: names from :data:`maxca.data.corruptions.CORRUPTIONS` (default: all).
        severities: integer severities (``0`` = clean), each within every corruption's range.
        seeds: corruption seeds; each gives its own corrupted images.
        out_dir: folder for the CSV, Markdown table and figures (:func:`write_outputs`); the
            CSV is rewritten after every pair so an interrupted run keeps what it finished.
        labels: label ids to score (``None``: every non-zero label present).
        sides: which images to corrupt, a subset of ``("moving", "fixed")``.
        plot: write the PNG figures.
        meta: extra ``key: value`` lines for the Markdown header (data, command, runtime...).
        first_pair_index: the index of ``pairs[0]`` in the full pair list. The corruption
            seeds depend on a pair's index in that list, so a run over a slice of it (e.g. the
            script's ``--skip-pairs``, to split the pairs over processes) must pass the slice's
            start to draw the same corrupted images as the full run.

    Returns:
        the rows (dicts with the keys of :data:`CSV_COLUMNS`).
    """
    corruptions = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    severities = [int(s) for s in severities] if severities is not None else []
    seeds = list(seeds)
    sides = tuple(sides)
    _check_request(methods, corruptions, severities, seeds, sides)
    if not pairs:
        raise MaxcaInputError("run_robustness needs at least one pair, got none")
    if isinstance(first_pair_index, bool) or int(first_pair_index) != first_pair_index:
        raise MaxcaInputError(f"first_pair_index must be an integer, got {first_pair_index!r}")
    if first_pair_index < 0:
        raise MaxcaInputError(f"first_pair_index must be >= 0, got {first_pair_index}")
    out = None if out_dir is None else Path(out_dir)
    rows: list[dict[str, Any]] = []
    for p_index, pair in enumerate(pairs):
        t_pair = time.perf_counter()
        scorer = _CachedScore(labels)  # per pair: label maps are only compared by identity
        clean: dict[str, dict[str, float]] = {}
        for m in methods if 0 in severities else ():
            t0 = time.perf_counter()
            flow = m.register(pair.fixed, pair.moving)
            seconds = time.perf_counter() - t0
            clean[m.name] = {
                **scorer(flow, pair.fixed_labels, pair.moving_labels),
                "seconds": seconds,
            }
            log.info("%s %s clean: Dice %.4f", pair.name, m.name, clean[m.name]["dice"])
        for corruption in corruptions:
            levels = severity_levels(corruption)
            for side in sides:
                base_seed = {
                    s: corruption_seed(s, first_pair_index + p_index, corruption, side)
                    for s in seeds
                }
                for severity in severities:
                    for seed in seeds:
                        common = {
                            "pair": pair.name,
                            "corruption": corruption,
                            "side": side,
                            "severity": severity,
                            "level": levels[severity],
                            "seed": seed,
                        }
                        if severity == 0:
                            rows += [{**common, "method": m.name, **clean[m.name]} for m in methods]
                            continue
                        fixed, moving = pair.fixed, pair.moving
                        f_lab, m_lab = pair.fixed_labels, pair.moving_labels
                        if side == "moving":
                            moving, m_lab = _corrupt(
                                corruption, moving, m_lab, severity, base_seed[seed]
                            )
                        else:
                            fixed, f_lab = _corrupt(
                                corruption, fixed, f_lab, severity, base_seed[seed]
                            )
                        for m in methods:
                            t0 = time.perf_counter()
                            flow = m.register(fixed, moving)
                            seconds = time.perf_counter() - t0
                            metrics = scorer(flow, f_lab, m_lab)
                            rows.append({**common, "method": m.name, **metrics, "seconds": seconds})
                        log.info(
                            "%s %s %s s%d: %s",
                            pair.name,
                            corruption,
                            side,
                            severity,
                            ", ".join(
                                f"{r['method']} {r['dice']:.3f}" for r in rows[-len(methods) :]
                            ),
                        )
        log.info("pair %s done in %.1f s", pair.name, time.perf_counter() - t_pair)
        if out is not None:
            write_csv(out / "robustness.csv", rows)
    if out is not None:
        write_outputs(out, rows, plot=plot, meta=meta)
    return rows


# ----------------------------------------------------------------------------------------------
# outputs


def _csv_value(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return value


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write the rows with :data:`CSV_COLUMNS` (full-precision floats), atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k, "")) for k in CSV_COLUMNS})
    return atomic_write_text(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``robustness.csv`` with numbers parsed (severity/seed int, metrics float)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["severity"] = int(r["severity"])
        r["seed"] = int(r["seed"])
        for k in ("dice", "hd95", "njd_percent", "sdlogj", "seconds"):
            r[k] = float(r[k]) if r[k] not in ("", None) else math.nan
    return rows


def _ordered(values: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _stat(rows: Sequence[Mapping[str, Any]], key: str = "dice") -> tuple[float, float, int]:
    """Mean and std (``ddof = 0``) over the per-pair means (seeds averaged within a pair)."""
    by_pair: dict[str, list[float]] = {}
    for r in rows:
        by_pair.setdefault(r["pair"], []).append(float(r[key]))
    vals = np.array([np.nanmean(v) for v in by_pair.values()], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return math.nan, math.nan, 0
    return float(vals.mean()), float(vals.std()), int(vals.size)


def _select(rows: Sequence[Mapping[str, Any]], **keys: Any) -> list[Mapping[str, Any]]:
    return [r for r in rows if all(r[k] == v for k, v in keys.items())]


#: a method "breaks" at the first severity whose mean Dice is this much below its clean Dice
BREAK_DROP = 0.05


def break_severity(
    rows: Sequence[Mapping[str, Any]],
    corruption: str,
    side: str,
    method: str,
    drop: float = BREAK_DROP,
) -> int | None:
    """The lowest severity ``>= 1`` at which ``method``'s mean Dice (over pairs) is more than
    ``drop`` below its clean (severity 0) mean Dice for this corruption and side; ``None`` if
    it never is, or if there is no clean row."""
    clean, _, n = _stat(_select(rows, corruption=corruption, side=side, method=method, severity=0))
    if n == 0:
        return None
    levels = sorted(
        {int(r["severity"]) for r in rows if r["corruption"] == corruption and r["side"] == side}
    )
    for s in (lv for lv in levels if lv >= 1):
        mean, _, k = _stat(
            _select(rows, corruption=corruption, side=side, method=method, severity=s)
        )
        if k and clean - mean > drop:
            return s
    return None


def markdown_report(
    rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None
) -> str:
    """The Markdown report: a mean-Dice table per corruption and a Dice-drop summary.

    Dice = mean over structures per pair, then mean ± std over pairs (seeds averaged within a
    pair). The drop is ``Dice(worst severity) - Dice(clean)`` per method and side; a method
    without rows for a corruption and side (e.g. a report merged from runs of other corruptions)
    reads ``not run`` there, never a number.
    """
    methods = _ordered([r["method"] for r in rows])
    corruptions = _ordered([r["corruption"] for r in rows])
    sides = _ordered([r["side"] for r in rows])
    severities = sorted({int(r["severity"]) for r in rows})
    n_pairs = len({r["pair"] for r in rows})
    lines = ["# Robustness to corrupted images", ""]
    for key, value in (meta or {}).items():
        lines.append(f"- {key}: {value}")
    lines += [
        "",
        f"{n_pairs} pairs; Dice = mean over structures against the clean label maps, then "
        "mean ± std over pairs. Severity 0 = clean images.",
        "",
        "## Dice drop from clean to the worst severity",
        "",
    ]
    worst = max(severities)
    header = ["corruption", "side", *methods]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in corruptions:
        for side in sides:
            cells = []
            for m in methods:
                clean, _, n0 = _stat(_select(rows, corruption=c, side=side, method=m, severity=0))
                bad, _, n1 = _stat(_select(rows, corruption=c, side=side, method=m, severity=worst))
                cells.append(f"{bad - clean:+.3f}" if n0 and n1 else "not run")
            lines.append(f"| {c} | {side} | " + " | ".join(cells) + " |")
    lines.append("")
    if 0 in severities:
        lines += [
            f"## Where each method breaks (first severity with Dice more than {BREAK_DROP} "
            "below its clean Dice)",
            "",
            "`-`: not within the severities run; `not run`: the method has no clean registration "
            "of this corruption and side.",
            "",
        ]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for c in corruptions:
            for side in sides:
                cells = []
                for m in methods:
                    if not _select(rows, corruption=c, side=side, method=m, severity=0):
                        cells.append("not run")
                        continue
                    at = break_severity(rows, c, side, m)
                    cells.append("-" if at is None else f"{at} ({severity_levels(c)[at]})")
                lines.append(f"| {c} | {side} | " + " | ".join(cells) + " |")
        lines.append("")
    for c in corruptions:
        levels = severity_levels(c)
        lines += [f"## {c}", ""]
        lines.append(
            "Severities: " + "; ".join(f"{s} = {levels[s]}" for s in severities if s in levels)
        )
        lines.append("")
        header = ["side", "method", *[f"s{s}" for s in severities]]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for side in sides:
            for m in methods:
                cells = []
                for s in severities:
                    mean, std, n = _stat(
                        _select(rows, corruption=c, side=side, method=m, severity=s)
                    )
                    cells.append("-" if n == 0 else f"{mean:.3f} ± {std:.3f}")
                lines.append(f"| {side} | {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_corruption(path: str | Path, rows: Sequence[Mapping[str, Any]], corruption: str) -> Path:
    """Dice vs severity for one corruption: a line per method (mean ± std over pairs), one panel
    per corrupted side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = [r for r in rows if r["corruption"] == corruption]
    methods = _ordered([r["method"] for r in sub])
    sides = _ordered([r["side"] for r in sub])
    severities = sorted({int(r["severity"]) for r in sub})
    levels = severity_levels(corruption)
    fig, axes = plt.subplots(
        1, len(sides), figsize=(5.2 * len(sides), 4.0), sharey=True, squeeze=False
    )
    for ax, side in zip(axes[0], sides):
        for i, m in enumerate(methods):
            stats = [_stat(_select(sub, side=side, method=m, severity=s)) for s in severities]
            ax.errorbar(
                severities,
                [st[0] for st in stats],
                yerr=[st[1] for st in stats],
                marker="o",
                capsize=3,
                color=f"C{i % 10}",
                label=m,
            )
        ticks = [f"{s}\n{textwrap.fill(levels.get(s, ''), 14)}" for s in severities]
        ax.set_xticks(severities, ticks, fontsize=6)  # level text wrapped: no overlap
        ax.set_xlabel("severity")
        ax.set_title(f"{corruption}: {side} image corrupted", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Dice (mean over structures; mean ± std over pairs)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


def write_outputs(
    out_dir: str | Path,
    rows: Sequence[Mapping[str, Any]],
    plot: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``robustness.csv``, ``robustness.md`` and (with ``plot``) one
    ``robustness_<corruption>.png`` per corruption into ``out_dir``.

    Returns:
        ``{"csv", "md", <corruption>...: path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": write_csv(out / "robustness.csv", rows)}
    paths["md"] = atomic_write_text(out / "robustness.md", markdown_report(rows, meta))
    if plot:
        for c in _ordered([r["corruption"] for r in rows]):
            paths[c] = plot_corruption(out / f"robustness_{c}.png", rows, c)
    return paths
