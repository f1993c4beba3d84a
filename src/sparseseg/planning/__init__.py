"""Self-configuring plan: dataset fingerprint -> the ``auto`` preset (nnU-Net's idea).

:func:`plan_preset` fingerprints a dataset (:mod:`.fingerprint`), sizes the networks and patches
(:mod:`.plan`), applies the user's overrides, and with a time budget probes the machine and picks
the iterations (:mod:`.budget`). With a model folder it writes ``MODEL/plan.json`` (the
fingerprint, the decisions, the probe and the resulting preset) and reuses it when the same
request comes again, so a resumed run trains with exactly the same settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparseseg.config import Preset, apply_overrides, get_preset, preset_from_dict
from sparseseg.errors import InputError
from sparseseg.planning.budget import (
    ITERATION_FIELDS,
    ORDER_FIELDS,
    SHARES,
    describe_budget,
    fit_budget,
    probe,
)
from sparseseg.planning.fingerprint import fingerprint, fingerprint_arrays
from sparseseg.planning.plan import (
    PLANNED,
    at_spacing,
    check,
    describe,
    make_plan,
    plan_notes,
)

AUTO = "auto"
PLAN_FILE = "plan.json"

__all__ = [
    "AUTO",
    "PLAN_FILE",
    "describe",
    "fingerprint",
    "fingerprint_arrays",
    "fit_budget",
    "make_plan",
    "plan_preset",
    "probe",
    "resolve_preset",
]

_PROBES: dict[str, dict] = {}  # probe results of this process, by plan sizes and device


def _as_dict(overrides: list[str] | dict[str, Any] | None) -> dict[str, str]:
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return {str(k): str(v) for k, v in overrides.items()}
    out = {}
    for text in overrides:
        if "=" not in text:
            raise ValueError(f"override must look like section.field=value, got {text!r}")
        key, value = text.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _probe_cached(preset: Preset, num_classes: int, device, orders: tuple[str, ...]) -> dict:
    from sparseseg import distributed

    sizes = {k: preset.to_dict()[k] for k in ("model2d", "train2d", "model3d", "train3d", "meta")}
    key = json.dumps([sizes, num_classes, str(device), orders], sort_keys=True, default=str)
    if key in _PROBES:
        return {**_PROBES[key], "seconds": 0.0}
    measured = probe(preset, num_classes, device=device, orders=orders)
    if distributed.world_size() > 1:  # every rank plans with rank 0's numbers
        measured = distributed.all_gather_object(measured)[0]
    _PROBES[key] = measured
    return measured


def plan_preset(
    dataset,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    device: str | None = None,
    model_dir: str | Path | None = None,
    budget: bool = True,
    models: tuple[str, ...] = tuple(SHARES),
    log: Callable[[str], None] | None = None,
) -> Preset:
    """The ``auto`` preset planned for ``dataset`` (a Dataset or its folder), with overrides.

    With ``budget`` and ``budget_minutes`` > 0 (by default 30 on the CPU, 0 on CUDA; the
    override ``budget_minutes=...`` or ``--minutes`` sets it), a probe picks the iterations that
    are not overridden. ``models``: the models the run trains (full supervision: ``("3d",)``),
    over which the training time is shared. ``model_dir``: where plan.json is written and
    reused from.
    ``log`` receives a few lines describing the plan.
    """
    from sparseseg import distributed
    from sparseseg.data.layout import Dataset
    from sparseseg.fileio import write_json
    from sparseseg.runtime import resolve_device

    say = log or (lambda _msg: None)
    dataset = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
    wanted = _as_dict(overrides)
    device_type = resolve_device(device).type
    request = {"overrides": wanted, "device_type": device_type, "budget": bool(budget)}
    if tuple(models) != tuple(SHARES):
        request["models"] = list(models)
    path = Path(model_dir) / PLAN_FILE if model_dir is not None else None
    stored = {}
    if path is not None and path.exists():
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError:
            stored = {}
    distributed.barrier()  # under torchrun: every rank has read plan.json before rank 0 writes it
    if stored:
        if stored.get("request") == request and "preset" in stored:
            preset = preset_from_dict(stored["preset"])
            for line in describe(preset, stored.get("fingerprint")):
                say(line)
            say(f"plan: reused {path}")
            return preset
    fp = fingerprint(dataset)
    fp["test_cases"] = len(dataset.cases("Ts")) if (dataset.root / "imagesTs").is_dir() else 0
    try:
        # an overridden target spacing is planned at: patch and pooling follow the grid
        target = PLANNED
        if "target_spacing" in wanted:
            target = get_preset(AUTO, {"target_spacing": wanted["target_spacing"]}).target_spacing
        preset = make_plan(fp, device_type, target_spacing=target)
        if wanted:
            preset = apply_overrides(preset, wanted)
        check(preset)
    except ValueError as exc:
        raise InputError(f"bad settings: {exc}") from None
    record = None
    keep = [k for k in (*ITERATION_FIELDS, *ORDER_FIELDS.values()) if k in wanted]
    if budget and preset.budget_minutes > 0 and not set(ITERATION_FIELDS) <= set(keep):
        orders = tuple(k for k in models if ORDER_FIELDS[k] not in wanted)
        measured = _probe_cached(preset, dataset.num_classes, device, orders)
        seen = at_spacing(fp, preset.target_spacing)
        preset, record = fit_budget(preset, seen, measured, keep, tuple(models))
    for line in describe(preset, fp):
        say(line)
    if record is not None:
        say(describe_budget(record))
    if path is not None:
        plan = {
            "request": request,
            "fingerprint": fp,
            "notes": plan_notes(fp, preset),
            "budget": record,
            "preset": preset.to_dict(),
        }
        distributed.run_on_main(lambda: write_json(path, plan))
    return preset


def resolve_preset(
    name: str,
    overrides: list[str] | dict[str, Any] | None = None,
    dataset=None,
    **kwargs,
) -> Preset:
    """:func:`sparseseg.config.get_preset`, except that ``auto`` with a dataset is planned for
    it (:func:`plan_preset`, keyword arguments passed on)."""
    if name == AUTO and dataset is not None:
        return plan_preset(dataset, overrides, **kwargs)
    return get_preset(name, overrides)
