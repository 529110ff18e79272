"""Build `pose_landmarker_full.task` (MediaPipe BlazePose, Apache-2.0) from a PyPI wheel.

The runtime (mediapipe 1.2.x, Tasks API) ships no model files. mediapipe 0.10.21 is the last
wheel that bundles the BlazePose graphs (`pose_detection.tflite`, `pose_landmark_full.tflite`).
The Tasks API reads each graph's input normalisation from TFLite metadata, which the bundled
landmark graph lacks (and the detector's is mislabelled), so this step:

1. takes the two .tflite files out of the 0.10.21 wheel (verified against pinned sha256),
2. writes image-input metadata into each (detector: mean/std 127.5 -> [-1, 1];
   landmarker: mean 0, std 255 -> [0, 1]) with the flatbuffers schema modules that the same
   wheel ships (pure Python, executed in memory, nothing installed; needs only `flatbuffers`),
3. zips them, stored uncompressed and 64-byte aligned, as the Tasks API expects
   (`pose_detector.tflite`, `pose_landmarks_detector.tflite`),
4. records `manifest.json` (sources, hashes, licence, build time) and the licence text.

Idempotent: when the output exists and matches the manifest, nothing is done. The output is
byte-for-byte reproducible from the same wheel.

CLI: python -m kinemesh.models.assets.mediapipe_pose --out var/models/mediapipe [--wheel PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import struct
import sys
import time
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path

import flatbuffers
import numpy as np

from kinemesh.models.assets.wheel_cache import fetch_wheel, sha256_file

BUILDER_VERSION = 1
TASK_FILE = "pose_landmarker_full.task"
MANIFEST_FILE = "manifest.json"
LICENSE_FILE = "LICENSE.mediapipe"
SUBDIR = "mediapipe"  # folder of these files under the settings' model_dir
DEFAULT_OUT = Path("var/models") / SUBDIR
DEFAULT_CACHE = Path("var/cache/wheels")
BUILD_COMMAND = "python -m kinemesh.models.assets.mediapipe_pose --out {out}"

WHEEL_PROJECT = "mediapipe"
WHEEL_ENV = "KINEMESH_MEDIAPIPE_WHEEL"  # a local copy of the wheel, instead of downloading it
WHEEL_VERSION = "0.10.21"
# The .tflite files are the same in every platform build; pin one so any interpreter fetches it.
WHEEL_TAGS = "cp311-cp311-manylinux_2_28_x86_64"
WHEEL_PLATFORM_ARGS = (
    "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
    "--implementation", "cp", "--abi", "cp311",
)
SCHEMA_MEMBER = "mediapipe/tasks/metadata/schema_py_generated.py"
METADATA_SCHEMA_MEMBER = "mediapipe/tasks/metadata/metadata_schema_py_generated.py"
LICENSE_MEMBER = f"mediapipe-{WHEEL_VERSION}.dist-info/LICENSE"

TFLITE_IDENTIFIER = b"TFL3"
METADATA_IDENTIFIER = b"M001"
METADATA_NAME = "TFLITE_METADATA"
BUFFER_ALIGN = 16  # TFLite's own alignment of constant buffers
ZIP_ALIGN = 64  # the Tasks API reads bundle members in place; keep them aligned
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so the output hash is reproducible


@dataclass(frozen=True)
class GraphSpec:
    """One graph of the bundle: where it comes from and the metadata it needs."""

    member: str  # path inside the wheel
    sha256: str  # of that member, as published in mediapipe 0.10.21
    bundle_name: str  # member name inside the .task, fixed by the Tasks API
    name: str
    description: str
    mean: float  # input normalisation: (pixel - mean) / std
    std: float
    outputs: tuple[tuple[str, str], ...]  # (name, description) per output tensor, in order


GRAPHS = (
    GraphSpec(
        member="mediapipe/modules/pose_detection/pose_detection.tflite",
        sha256="9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c",
        bundle_name="pose_detector.tflite",
        name="BlazePose detector",
        description="Detects people (face-and-hips boxes and alignment keypoints) for BlazePose.",
        mean=127.5,
        std=127.5,
        outputs=(
            ("raw boxes/keypoints", "Undecoded SSD boxes and keypoints per anchor."),
            ("scores", "Undecoded score per anchor."),
        ),
    ),
    GraphSpec(
        member="mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
        sha256="e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f",
        bundle_name="pose_landmarks_detector.tflite",
        name="BlazePose GHUM 3D full",
        description="33 BlazePose landmarks (image and world) and a segmentation mask from a person crop.",
        mean=0.0,
        std=255.0,
        outputs=(
            ("landmarks", "39 x (x, y, z, visibility, presence) in crop pixels."),
            ("pose flag", "Probability that a person is in the crop."),
            ("segmentation", "Person segmentation logits."),
            ("heatmap", "Landmark heatmaps."),
            ("world landmarks", "39 x (x, y, z) in metres, origin at the hip centre."),
        ),
    ),
)


class ModelBuildError(RuntimeError):
    """The source wheel or its contents are not what this builder expects."""


@dataclass(frozen=True)
class BuildResult:
    task_path: Path
    manifest: dict
    skipped: bool  # True when a matching output already existed


def task_path(model_dir: Path | str) -> Path:
    """The .task file for a path that names it, its folder, or the settings' model_dir."""
    p = Path(model_dir)
    if p.suffix == ".task":
        return p
    if p.name == SUBDIR or (p / TASK_FILE).exists():
        return p / TASK_FILE
    return p / SUBDIR / TASK_FILE


def build_command(out: Path | str) -> str:
    return BUILD_COMMAND.format(out=out)


# --- generated flatbuffers schema modules, loaded from the wheel -----------------------------


def _load_module(name: str, source: bytes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__file__ = f"<{name}>"
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - pinned wheel
    return module


# --- metadata --------------------------------------------------------------------------------


def _tensor_metadata(md: types.ModuleType, name: str, description: str) -> object:
    t = md.TensorMetadataT()
    t.name = name
    t.description = description
    return t


def _metadata_bytes(md: types.ModuleType, spec: GraphSpec, n_outputs: int) -> bytes:
    """A ModelMetadata flatbuffer: an RGB image input with normalisation, feature outputs."""
    image = _tensor_metadata(md, "image", "RGB image, normalised as (pixel - mean) / std.")
    content = md.ContentT()
    content.contentPropertiesType = md.ContentProperties.ImageProperties
    props = md.ImagePropertiesT()
    props.colorSpace = md.ColorSpaceType.RGB
    content.contentProperties = props
    image.content = content
    norm = md.NormalizationOptionsT()
    norm.mean = [float(spec.mean)]
    norm.std = [float(spec.std)]
    unit = md.ProcessUnitT()
    unit.optionsType = md.ProcessUnitOptions.NormalizationOptions
    unit.options = norm
    image.processUnits = [unit]
    stats = md.StatsT()
    stats.min = [(0.0 - spec.mean) / spec.std]
    stats.max = [(255.0 - spec.mean) / spec.std]
    image.stats = stats

    if n_outputs != len(spec.outputs):
        raise ModelBuildError(f"{spec.member}: {n_outputs} outputs, expected {len(spec.outputs)}")
    outputs = []
    for out_name, out_desc in spec.outputs:
        t = _tensor_metadata(md, out_name, out_desc)
        c = md.ContentT()
        c.contentPropertiesType = md.ContentProperties.FeatureProperties
        c.contentProperties = md.FeaturePropertiesT()
        t.content = c
        outputs.append(t)

    subgraph = md.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    subgraph.outputTensorMetadata = outputs
    model = md.ModelMetadataT()
    model.name = spec.name
    model.description = spec.description
    model.version = f"mediapipe-{WHEEL_VERSION}"
    model.author = "Google LLC (MediaPipe); metadata by kinemesh"
    model.license = "Apache License, Version 2.0"
    model.subgraphMetadata = [subgraph]
    model.minParserVersion = "1.0.0"  # image properties + normalisation: schema 1.0 features
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=METADATA_IDENTIFIER)
    return bytes(builder.Output())


class _AlignedBuffer:
    """Packs a TFLite Buffer with its bytes aligned as the converter does (the generated
    object API packs them byte-aligned)."""

    def __init__(self, schema: types.ModuleType, buf: object) -> None:
        self.schema = schema
        self.data = None if buf.data is None else np.asarray(buf.data, dtype=np.uint8)
        self.offset = getattr(buf, "offset", 0)
        self.size = getattr(buf, "size", 0)

    def Pack(self, builder) -> int:  # noqa: N802 - the generated object API's name
        data_off = None
        if self.data is not None and self.data.size:
            n = int(self.data.size)
            builder.StartVector(1, n, BUFFER_ALIGN)
            builder.head = builder.head - n
            builder.Bytes[builder.head : builder.head + n] = self.data.tobytes()
            builder.vectorNumElems = n
            data_off = builder.EndVector()
        self.schema.BufferStart(builder)
        if data_off is not None:
            self.schema.BufferAddData(builder, data_off)
        if self.offset:
            self.schema.BufferAddOffset(builder, self.offset)
        if self.size:
            self.schema.BufferAddSize(builder, self.size)
        return self.schema.BufferEnd(builder)


def _with_metadata(schema: types.ModuleType, md: types.ModuleType, spec: GraphSpec, tflite: bytes) -> bytes:
    """The model with its TFLITE_METADATA entry replaced (or added)."""
    if tflite[4:8] != TFLITE_IDENTIFIER:
        raise ModelBuildError(f"{spec.member} is not a TFLite flatbuffer")
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(tflite, 0))
    n_outputs = len(model.subgraphs[0].outputs)
    meta = np.frombuffer(_metadata_bytes(md, spec, n_outputs), dtype=np.uint8)
    existing = [m for m in (model.metadata or []) if _as_str(m.name) == METADATA_NAME]
    if existing:
        # Reuse the old entry's buffer (tensors index buffers, so none may be removed) and
        # drop any duplicate entries.
        model.buffers[existing[0].buffer].data = meta
        model.metadata = [m for m in model.metadata if m is existing[0] or not any(m is e for e in existing)]
    else:
        buf = schema.BufferT()
        buf.data = meta
        model.buffers.append(buf)
        entry = schema.MetadataT()
        entry.name = METADATA_NAME
        entry.buffer = len(model.buffers) - 1
        model.metadata = [*(model.metadata or []), entry]
    model.buffers = [_AlignedBuffer(schema, b) for b in model.buffers]
    builder = flatbuffers.Builder(len(tflite) + len(meta) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def _as_str(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def read_input_normalisation(tflite: bytes, md: types.ModuleType, schema: types.ModuleType) -> tuple:
    """(mean, std) written into a model's metadata; for checks."""
    model = schema.Model.GetRootAs(tflite, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _as_str(entry.Name()) == METADATA_NAME:
            raw = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
            meta = md.ModelMetadataT.InitFromObj(md.ModelMetadata.GetRootAs(raw, 0))
            opts = meta.subgraphMetadata[0].inputTensorMetadata[0].processUnits[0].options
            return tuple(float(x) for x in opts.mean), tuple(float(x) for x in opts.std)
    raise ModelBuildError("no TFLITE_METADATA in model")


# --- bundle ----------------------------------------------------------------------------------


def _aligned_zip(members: list[tuple[str, bytes]]) -> bytes:
    """A stored (uncompressed) zip with each member's data at a ZIP_ALIGN boundary."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            # Local header: 30 bytes + name + extra. Pad with a zipalign-style extra field
            # (id 0xD935: 2-byte alignment value + zero padding).
            start = out.tell() + 30 + len(name.encode())
            pad = (-(start + 6)) % ZIP_ALIGN
            info.extra = struct.pack("<HHH", 0xD935, 2 + pad, ZIP_ALIGN) + b"\0" * pad
            zf.writestr(info, data)
    return out.getvalue()


def _resolve_wheel(wheel: Path | None, cache_dir: Path) -> Path:
    if wheel is not None:
        wheel = Path(wheel)
        if not wheel.is_file():
            raise ModelBuildError(f"wheel not found: {wheel}")
        return wheel
    return fetch_wheel(
        WHEEL_PROJECT, WHEEL_VERSION, cache_dir, platform_args=WHEEL_PLATFORM_ARGS, tag_suffix=WHEEL_TAGS
    )


def locate_wheel(wheel: Path | str | None, cache_dir: Path | str | None) -> Path:
    """The mediapipe wheel: `wheel`, else $KINEMESH_MEDIAPIPE_WHEEL, else one in `cache_dir` (default
    $KINEMESH_WHEEL_CACHE or var/cache/wheels), else downloaded there with pip."""
    cache = Path(cache_dir or os.environ.get("KINEMESH_WHEEL_CACHE") or DEFAULT_CACHE)
    wheel = wheel or os.environ.get(WHEEL_ENV) or None
    return _resolve_wheel(Path(wheel) if wheel else None, cache)


def is_built(out_dir: Path | str, task_file: str = TASK_FILE, manifest_file: str = MANIFEST_FILE,
             builder_version: int = BUILDER_VERSION) -> bool:
    """True when `out_dir` holds a .task whose sha256 matches its manifest (this builder's, by default)."""
    out_dir = Path(out_dir)
    try:
        manifest = json.loads((out_dir / manifest_file).read_text())
    except (OSError, ValueError):
        return False
    target = out_dir / task_file
    return (
        manifest.get("builder_version") == builder_version
        and target.is_file()
        and sha256_file(target) == manifest.get("output", {}).get("sha256")
    )


def build(
    out_dir: Path | str = DEFAULT_OUT,
    wheel: Path | str | None = None,
    cache_dir: Path | str | None = None,
    force: bool = False,
    verify: bool = True,
) -> BuildResult:
    """Build the .task into `out_dir` unless a matching one is there; return where it is.

    The wheel is `wheel`, else $KINEMESH_MEDIAPIPE_WHEEL, else one in `cache_dir` (default
    $KINEMESH_WHEEL_CACHE or var/cache/wheels), else downloaded there with pip.
    """
    out_dir = Path(out_dir)
    target = out_dir / TASK_FILE
    if not force and is_built(out_dir):
        return BuildResult(target, json.loads((out_dir / MANIFEST_FILE).read_text()), skipped=True)

    t0 = time.perf_counter()
    wheel_path = locate_wheel(wheel, cache_dir)
    t_fetch = time.perf_counter() - t0
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            schema = _load_module("_kinemesh_tflite_schema", zf.read(SCHEMA_MEMBER))
            md = _load_module("_kinemesh_tflite_metadata_schema", zf.read(METADATA_SCHEMA_MEMBER))
            license_text = zf.read(LICENSE_MEMBER)
            sources = {spec.member: zf.read(spec.member) for spec in GRAPHS}
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelBuildError(f"{wheel_path} is not the mediapipe {WHEEL_VERSION} wheel this needs: {exc}") from exc

    members: list[tuple[str, bytes]] = []
    graphs_record = []
    for spec in GRAPHS:
        src = sources[spec.member]
        digest = _sha256(src)
        if digest != spec.sha256:
            raise ModelBuildError(f"{spec.member} in {wheel_path.name} has sha256 {digest}, expected {spec.sha256}")
        model = _with_metadata(schema, md, spec, src)
        if read_input_normalisation(model, md, schema) != ((spec.mean,), (spec.std,)):
            raise ModelBuildError(f"metadata of {spec.bundle_name} did not round-trip")
        members.append((spec.bundle_name, model))
        graphs_record.append({
            "bundle_member": spec.bundle_name, "source_member": spec.member, "source_sha256": spec.sha256,
            "sha256": _sha256(model), "input_mean": spec.mean, "input_std": spec.std,
        })
    bundle = _aligned_zip(members)

    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(target, bundle)
    _atomic_write(out_dir / LICENSE_FILE, license_text)
    verified = _verify(target) if verify else None
    manifest = {
        "name": "pose_landmarker_full",
        "builder": "kinemesh.models.assets.mediapipe_pose",
        "builder_version": BUILDER_VERSION,
        "license": "Apache-2.0",
        "license_file": LICENSE_FILE,
        "source": {
            "package": WHEEL_PROJECT, "version": WHEEL_VERSION, "wheel": wheel_path.name,
            "wheel_sha256": sha256_file(wheel_path), "index": "PyPI",
        },
        "graphs": graphs_record,
        "output": {"file": TASK_FILE, "sha256": _sha256(bundle), "bytes": len(bundle)},
        "verified_with_runtime": verified,
        "build_seconds": round(time.perf_counter() - t0, 3),
        "fetch_seconds": round(t_fetch, 3),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _atomic_write(out_dir / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    return BuildResult(target, manifest, skipped=False)


def _verify(path: Path) -> str | None:
    """Load the bundle with the installed Tasks API and run it on a blank image.

    Returns the runtime version, or None when mediapipe is not installed here.
    """
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions
        from mediapipe.tasks.python.vision import PoseLandmarker, PoseLandmarkerOptions, RunningMode
    except ImportError:
        return None
    options = PoseLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(path)), running_mode=RunningMode.IMAGE
    )
    try:
        with PoseLandmarker.create_from_options(options) as landmarker:
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.zeros((256, 256, 3), np.uint8))
            landmarker.detect(image)
    except Exception as exc:  # the runtime raises plain RuntimeError/ValueError
        raise ModelBuildError(f"the built {path.name} does not load in mediapipe {mp.__version__}: {exc}") from exc
    return str(mp.__version__)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kinemesh.models.assets.mediapipe_pose", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--wheel", type=Path, default=None, help=f"a local mediapipe 0.10.21 wheel (default ${WHEEL_ENV}); else pip-downloaded")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"where a downloaded wheel is kept (default $KINEMESH_WHEEL_CACHE or {DEFAULT_CACHE})")
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching output exists")
    parser.add_argument("--no-verify", action="store_true", help="skip loading the result with the Tasks API")
    args = parser.parse_args(argv)
    try:
        result = build(args.out, wheel=args.wheel, cache_dir=args.cache_dir, force=args.force,
                       verify=not args.no_verify)
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    state = "up to date" if result.skipped else f"built in {result.manifest['build_seconds']} s"
    print(f"{result.task_path} ({state}, sha256 {result.manifest['output']['sha256']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
