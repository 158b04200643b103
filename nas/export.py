"""Hand over a model that runs: the architecture as JSON, TorchScript or ONNX; for the quant
space also `packed`, the low-bit weights packed (two 4-bit or four 2-bit codes per byte, with
per-channel scales) that `load_packed` turns back into the same network. The INT8 runtime
model for latency stays `QuantSpace.int8_model` (torch's INT8 kernels have no 2/4-bit path)."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search_spaces import get_space

from .errors import NasError
from .storage import Storage, best_trials, device_measurements, get_trial

FORMATS = ("json", "torchscript", "onnx", "packed")
#: Spaces whose models have packed low-bit weights (`--format packed`).
PACKED_SPACES = ("quant",)


def choose_trial(storage: Storage, job_id: int, number: int | None) -> dict[str, Any]:
    """A given trial, or the best completed one (feasible first, when constraints exist)."""
    if number is not None:
        trial = get_trial(storage, job_id, number)
        if trial["status"] != "completed":
            raise NasError(f"trial {number} of job {job_id} is {trial['status']}, not completed")
        return trial
    rows = best_trials(storage, job_id, top=1, feasible_only=True) or \
        best_trials(storage, job_id, top=1)
    if not rows:
        raise NasError(f"job {job_id} has no completed trial to export")
    return rows[0]


def export_trial(storage: Storage, job_id: int, number: int | None, fmt: str,
                 path: str) -> dict[str, Any]:
    """Write the chosen trial in `fmt` to `path`; returns a summary of what was written."""
    if fmt not in FORMATS:
        raise NasError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    target = Path(path)
    if not target.parent.resolve().is_dir():
        raise NasError(f"-o: folder {str(target.parent)!r} does not exist")
    if target.is_dir():
        raise NasError(f"-o: {str(target)!r} is a folder; give a file name")
    job = storage.jobs.get(job_id)
    spec = job.spec
    trial = choose_trial(storage, job_id, number)
    if fmt == "packed" and spec["space"] not in PACKED_SPACES:
        raise NasError(f"--format packed needs a space with low-bit weights "
                       f"({', '.join(PACKED_SPACES)}); job {job_id} searched {spec['space']!r}")
    space = get_space(spec["space"], **spec.get("space_args", {}))
    summary = {
        "job": job_id, "trial": trial["number"], "space": spec["space"],
        "space_args": spec.get("space_args", {}), "key": trial["key"], "arch": trial["arch"],
        "metrics": trial["metrics"], "params": trial["params"], "flops": trial["flops"],
        "measurements": device_measurements(storage, [trial["key"]], spec["space"]).get(
            trial["key"], []),
        "format": fmt, "path": str(target),
    }
    weights = storage.trials.weights(job_id, trial["number"]) if fmt != "json" else None
    state, normalisation = split_weights(weights)
    if fmt != "json":
        summary["weights"] = "trained" if weights else "initialised"
        # the model takes inputs as the dataset gives them: the standardisation the weights
        # were trained with is its first layer
        summary["input_normalisation"] = {**normalisation, "folded": True} \
            if normalisation else None
    if fmt == "json":
        text = json.dumps(summary, indent=2) + "\n"
        write_atomically(target, lambda tmp: tmp.write_text(text), option="-o")
    else:
        write_atomically(target, lambda tmp: _export_model(
            space, trial["arch"], fmt, tmp, seed=int(spec.get("seed", 0)), state=state,
            normalisation=normalisation), option="-o")
    storage.jobs.add_artifact(job_id, f"export-{fmt}", str(target.resolve()))
    return summary


def write_atomically(target: Path, write: Callable[[Path], None], option: str) -> None:
    """Run `write(tmp)` on a temporary file in `target`'s folder, then rename it over `target`
    (atomic on one filesystem): an export that fails or is killed leaves an existing file
    whole, never truncated. A write error is one NasError naming `option`."""
    try:
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                        dir=target.parent)
    except OSError as exc:
        raise NasError(f"{option}: cannot write in folder {str(target.parent)!r}: "
                       f"{exc.strerror or exc}") from None
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, target)
    except OSError as exc:
        raise NasError(f"{option}: cannot write {str(target)!r}: {exc.strerror or exc}") \
            from None
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _standardise_module(normalisation: dict[str, list[float]]) -> Any:
    """A module computing (x - mean) / std per channel (constants of the exported graph)."""
    import torch

    class Standardise(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            shape = (1, -1, 1, 1)
            self.register_buffer("mean", torch.tensor(normalisation["mean"]).reshape(shape))
            self.register_buffer("std", torch.tensor(normalisation["std"]).reshape(shape))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - self.mean) / self.std

    return Standardise()


def split_weights(weights: bytes | None) -> tuple[dict[str, Any] | None,
                                                 dict[str, list[float]] | None]:
    """A stored weights blob as (the model's state_dict, the input normalisation
    {mean, std} it was trained with, or None when not recorded)."""
    if not weights:
        return None, None
    import io

    import torch

    from workers.evaluators.train import NORMALISATION_KEYS

    state = torch.load(io.BytesIO(weights), weights_only=True)
    found = {name: state.pop(key) for name, key in NORMALISATION_KEYS.items() if key in state}
    normalisation = {name: [float(v) for v in value.flatten()] for name, value in found.items()}
    return state, normalisation if len(normalisation) == len(NORMALISATION_KEYS) else None


def _export_model(space: Any, arch: dict[str, Any], fmt: str, target: Path, seed: int,
                  state: dict[str, Any] | None = None,
                  normalisation: dict[str, list[float]] | None = None) -> None:
    """Build the model with the trial's trained weights where they were kept, else with a
    seeded initialisation (so every export of a trial is the same model); with the input
    standardisation the weights were trained with as its first step."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = space.build(arch)
        example = torch.randn(1, *space.input_shape(arch))
    if state:
        model.load_state_dict(state)
    if normalisation:
        model = torch.nn.Sequential(_standardise_module(normalisation), model)
    model.eval()
    if fmt == "packed":
        _save_packed(space, arch, model, target, normalisation)
        return
    if fmt == "torchscript":
        with torch.no_grad():
            torch.jit.trace(model, example).save(str(target))
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(target), dynamo=False, input_names=["input"],
                          output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


# ---- packed low-bit weights (quant space) ----------------------------------------------------
def _save_packed(space: Any, arch: dict[str, Any], model: Any, target: Path,
                 normalisation: dict[str, list[float]] | None) -> None:
    import torch

    from search_spaces.layers.quant_net import pack_model

    net = model[1] if isinstance(model, torch.nn.Sequential) else model
    packed = pack_model(net)
    packed.update({"space": space.name, "space_args": _space_args(space), "arch": arch,
                   "key": space.key(arch), "normalisation": normalisation,
                   "model_size_kb": space.model_size_kb(arch)})
    torch.save(packed, str(target))


def _space_args(space: Any) -> dict[str, Any]:
    return {"num_classes": space.num_classes, "input_channels": space.input_channels,
            "input_size": space.input_size, "stages": space.stages,
            "layers_per_stage": space.layers_per_stage, "stem_width": space.stem_width,
            "widths": list(space.widths)}


def load_packed(path: str | Path) -> Any:
    """The eval-mode torch model of a `--format packed` file: the fake-quantized network
    with the unpacked weights (and the input standardisation first, when recorded)."""
    import torch

    from search_spaces.layers.quant_net import load_packed_state

    packed = torch.load(str(path), weights_only=True)
    if not isinstance(packed, dict) or packed.get("space") not in PACKED_SPACES:
        raise NasError(f"{path}: not a packed model written by `nas export --format packed`")
    space = get_space(packed["space"], **packed["space_args"])
    model = load_packed_state(space.build(packed["arch"]), packed)
    if packed.get("normalisation"):
        model = torch.nn.Sequential(_standardise_module(packed["normalisation"]), model)
    return model.eval()
