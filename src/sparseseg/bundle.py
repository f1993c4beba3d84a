"""The model bundle: everything ``predict`` needs, in one file; the one format of model files.

``MODEL/bundle.pt`` holds the weights of the 2D base model, the 3D base model and the meta-model,
each with the architecture name and constructor arguments that rebuild it, plus the preset and
config, class names, the intensity normalisation and two versions: the bundle format version and
the sparseseg version that wrote it. ``FILE.json`` beside ``FILE.pt`` (``MODEL/bundle.json``)
repeats everything but the weights for people to read. The file holds only tensors and plain
Python values, so it loads with ``torch.load(weights_only=True)``; nothing in it can run code.

Every model file sparseseg writes is a bundle: the base models of Step II
(``models/model2d.pt``, ``models/model3d.pt``) and the meta-model (``stage3_meta/meta.pt``) are
bundles of one part each, which ``train`` merges into ``MODEL/bundle.pt``.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparseseg import __version__
from sparseseg.data.planes import PL_SETS, PLANES
from sparseseg.errors import InputError
from sparseseg.fileio import atomic_path, write_json

FORMAT = "sparseseg-bundle"
FORMAT_VERSION = 1
BUNDLE_FILE = "bundle.pt"
PARTS = ("2d", "3d", "meta")

# Architecture name -> "module:class". Resolved lazily so this module imports without torch models.
ARCHITECTURES = {
    "densevoxnet": "sparseseg.models.densevoxnet:DenseVoxNet",
    "unet2d": "sparseseg.models.fcn2d:UNet2D",
    "ydensevoxnet": "sparseseg.models.meta:YDenseVoxNet",
    "dynunet": "sparseseg.models.dynunet:SegDynUNet",
    "dynunet-meta": "sparseseg.models.dynunet:MetaDynUNet",
}


@dataclass
class ModelPart:
    """One network: how to build it and its weights."""

    arch: str
    kwargs: dict[str, Any]
    state_dict: dict[str, Any]

    def build(self):
        """The network in eval mode with its weights loaded (on CPU)."""
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}")
        module_name, class_name = ARCHITECTURES[self.arch].split(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        net = cls(**self.kwargs)
        net.load_state_dict(self.state_dict)
        return net.eval()


@dataclass
class Bundle:
    """A trained model: its networks (all three, or one in a stage's model file) and what is
    needed to apply them."""

    parts: dict[str, ModelPart]
    class_names: list[str]
    preset: str
    config: dict[str, Any]
    normalisation: dict[str, Any] = field(default_factory=lambda: {"kind": "zscore-per-volume"})
    planes: list[str] = field(default_factory=lambda: list(PLANES))
    # the PL sets averaged into the meta-model's A(Y) input (all four in bundles written before
    # this field existed)
    pl_sets: list[str] = field(default_factory=lambda: list(PL_SETS))
    sparseseg_version: str = __version__
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None  # the file it was loaded from

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_channels(self) -> int:
        """Image channels the models read (1 for bundles that do not record it); a 2D model with
        neighbouring slices as input (``model2d.context``) reads 2 context + 1 per channel."""
        if "3d" in self.parts:
            return int(self.parts["3d"].kwargs.get("in_channels", 1))
        if "2d" in self.parts:
            context = int(self.config.get("model2d", {}).get("context", 0))
            return int(self.parts["2d"].kwargs.get("in_channels", 1)) // (2 * context + 1)
        return 1

    def build(self, part: str):
        """Network ``part`` ('2d', '3d' or 'meta') in eval mode; InputError if it can't be built."""
        if part not in self.parts:
            raise InputError(f"model bundle has no {part!r} model", self.source)
        try:
            return self.parts[part].build()
        except (ValueError, TypeError, RuntimeError) as exc:
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(
                f"cannot rebuild the {part!r} model ({problem})", self.source
            ) from None

    def metadata(self) -> dict[str, Any]:
        """Everything but the weights, as plain JSON-able values."""
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "sparseseg_version": self.sparseseg_version,
            "preset": self.preset,
            "class_names": list(self.class_names),
            "planes": list(self.planes),
            "pl_sets": list(self.pl_sets),
            "normalisation": dict(self.normalisation),
            "config": self.config,
            "parts": {k: {"arch": p.arch, "kwargs": p.kwargs} for k, p in self.parts.items()},
            "extra": self.extra,
        }


def bundle_file(path: str | Path) -> Path:
    """MODEL folder or bundle file -> the bundle file."""
    path = Path(path)
    return path / BUNDLE_FILE if path.is_dir() else path


def save_bundle(bundle: Bundle, path: str | Path) -> Path:
    """Write ``bundle`` to ``path`` (a MODEL folder or a ``.pt`` file), atomically.

    Returns the bundle file written. Its readable metadata is written beside it, as the same name
    with ``.json`` (``bundle.json``, ``model2d.json``).
    """
    import torch

    path = Path(path)
    target = path / BUNDLE_FILE if (path.is_dir() or not path.suffix) else path
    payload = bundle.metadata()
    payload["weights"] = {
        k: {kk: v.detach().cpu().contiguous() for kk, v in p.state_dict.items()}
        for k, p in bundle.parts.items()
    }
    # the JSON first: a file that exists has its JSON (reruns skip existing model files)
    write_json(target.with_suffix(".json"), bundle.metadata())
    with atomic_path(target) as tmp:
        torch.save(payload, tmp)
    return target


def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle from a MODEL folder or a bundle file.

    Raises InputError naming the file when it is missing, corrupt, not a bundle, or from another
    bundle format version.
    """
    import torch

    file = bundle_file(path)
    if not file.exists():
        where = "model folder has no bundle (did `sparseseg train` finish?)"
        raise InputError(where if Path(path).is_dir() else "file not found", file)
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle refused, anything torch raises
        raise InputError(f"cannot read model bundle ({type(exc).__name__})", file) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError("not a sparseseg model bundle", file)
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(
            f"bundle format version {version} (written by sparseseg "
            f"{payload.get('sparseseg_version', '?')}) is not supported by sparseseg "
            f"{__version__}, which reads version {FORMAT_VERSION}; retrain or use that version",
            file,
        )
    try:
        parts = {
            k: ModelPart(spec["arch"], dict(spec["kwargs"]), payload["weights"][k])
            for k, spec in payload["parts"].items()
        }
        return Bundle(
            parts=parts,
            class_names=list(payload["class_names"]),
            preset=str(payload["preset"]),
            config=payload["config"],
            normalisation=dict(payload["normalisation"]),
            planes=list(payload["planes"]),
            pl_sets=list(payload.get("pl_sets", PL_SETS)),
            sparseseg_version=str(payload["sparseseg_version"]),
            format_version=int(version),
            extra=dict(payload.get("extra", {})),
            source=file,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"model bundle is incomplete ({type(exc).__name__}: {exc})", file
        ) from None


def read_bundle_json(path: str | Path) -> dict[str, Any]:
    """The readable metadata beside a bundle (no weights)."""
    file = bundle_file(path).with_suffix(".json")
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise InputError("file not found", file) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({exc})", file) from None
