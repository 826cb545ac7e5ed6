"""Checkpoint integrity (issue #15 items 1 and 8): a checksum of the weights is saved with them
and verified on load; non-finite weights and an unreadable or malicious ``optimizer.pt`` are
refused with a :class:`MaxcaInputError` naming the file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from maxca.errors import MaxcaInputError
from maxca.models import create_model
from maxca.training.checkpoint import (
    load_checkpoint,
    load_optimizer_state,
    save_checkpoint,
)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(
        "pyramid_small", spatial_dims=2, enc_channels=2, dec_channels=4, heads=1, region=2
    )


def _data_offset(file: Path) -> int:
    """Byte offset of the tensor data in a safetensors file (8-byte header length + header)."""
    return 8 + int.from_bytes(file.read_bytes()[:8], "little")


def test_flipped_bytes_in_the_weights_are_detected(tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "ckpt", _model())
    load_checkpoint(ckpt)  # intact: loads
    weights = ckpt / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    start = _data_offset(weights)
    middle = start + (len(raw) - start) // 2
    for i in range(middle, middle + 200):
        raw[i] ^= 0x5A  # flip bits in the tensor data only: the file still parses
    weights.write_bytes(bytes(raw))
    with pytest.raises(MaxcaInputError, match=r"corrupt weights .*model\.safetensors.*checksum"):
        load_checkpoint(ckpt)


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    model = _model()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = math.nan
    ckpt = save_checkpoint(tmp_path / "ckpt", model)  # checksum matches: the NaN is "saved"
    with pytest.raises(MaxcaInputError, match=r"model\.safetensors: tensor .* NaN/Inf"):
        load_checkpoint(ckpt)


def test_checkpoint_without_checksum_still_loads(tmp_path: Path) -> None:
    model = _model()
    ckpt = save_checkpoint(tmp_path / "ckpt", model)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(ckpt / "model.safetensors"))  # an old checkpoint: no metadata
    loaded, _ = load_checkpoint(ckpt)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, tensors[k])


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize("content", ["garbage", "pickle"])
def test_corrupt_or_malicious_optimizer_state_is_bad_input(tmp_path: Path, content: str) -> None:
    ckpt = save_checkpoint(tmp_path / "ckpt", _model(), optimizer_state={"optimizer": {}})
    target = ckpt / "optimizer.pt"
    if content == "garbage":
        target.write_bytes(b"PK\x03\x04 not a zip at all")
    else:
        torch.save({"optimizer": _Evil()}, target)
    with pytest.raises(MaxcaInputError, match=r"optimizer state .*optimizer\.pt"):
        load_optimizer_state(ckpt)


@pytest.mark.parametrize("damage", ["flip", "nan"])
def test_register_with_damaged_weights_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    import nibabel as nib
    import numpy as np

    from maxca import cli

    torch.manual_seed(0)
    model = create_model(
        "pyramid_small", spatial_dims=3, enc_channels=2, dec_channels=4, heads=1, region=2
    )
    if damage == "nan":
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] = math.nan
    data = {"shape": [16, 16, 16], "spacing": [2.0, 2.0, 2.0], "normalise": "minmax"}
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoints" / "best", model, data=data)
    if damage == "flip":
        weights = ckpt / "model.safetensors"
        raw = bytearray(weights.read_bytes())
        for i in range(_data_offset(weights), _data_offset(weights) + 200):
            raw[i] ^= 0xFF
        weights.write_bytes(bytes(raw))
    image = np.random.default_rng(0).random((12, 14, 10)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / "img.nii.gz"))
    argv = [
        "register", "--model", tmp_path / "run", "--fixed", tmp_path / "img.nii.gz",
        "--moving", tmp_path / "img.nii.gz", "--out", tmp_path / "res", "--device", "cpu",
    ]  # fmt: skip
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("maxca: error: corrupt weights ") and "model.safetensors" in err
    assert not (tmp_path / "res").exists()
