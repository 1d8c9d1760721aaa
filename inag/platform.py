"""Platform descriptors: one YAML file per deployment target, validated against a schema.

A descriptor says what the hardware can do (clock, memories, number containers), which hardware
models cost it and with which parameters, which budgets a network must meet, how to measure on
the device, and what calibration has been applied. Every hardware number is a :class:`Sourced`
value that carries its citation and kind, so a calibrated value can replace a datasheet value
and the replacement stays auditable. Adding a target is writing such a file; no code changes.
"""

from __future__ import annotations

import math
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from hwmodels.quantities import LIMITS, ROLES

SCHEMA_VERSION = 1
SourceKind = Literal[
    "datasheet", "paper", "isa", "source-code", "derived", "measured", "detected", "guess"
]


class PlatformError(ValueError):
    """A platform file is missing, malformed or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sourced(_Strict):
    """A hardware number with its provenance (where it comes from and how it was obtained)."""

    value: float
    source: str = Field(min_length=3)
    kind: SourceKind = "datasheet"

    # Messages say what is expected; format_validation_error adds what was found, once.
    @field_validator("value")
    @classmethod
    def _finite_non_negative(cls, v: float) -> float:
        if not math.isfinite(v) or v < 0:
            raise ValueError("must be a finite number >= 0")
        return v


class PositiveSourced(Sourced):
    @field_validator("value")
    @classmethod
    def _finite_non_negative(cls, v: float) -> float:  # overrides: strictly positive
        if not math.isfinite(v) or v <= 0:
            raise ValueError("must be a finite number > 0")
        return v


class Memories(_Strict):
    flash_bytes: PositiveSourced
    sram_bytes: PositiveSourced
    reserved_flash_bytes: Sourced | None = None  # runtime code, not available to the network
    reserved_sram_bytes: Sourced | None = None  # stack, runtime state


class Numerics(_Strict):
    """Nominal bit-widths the kernels accept, and the containers values live in."""

    supported_bits: list[int] = Field(default_factory=lambda: [2, 3, 4, 5, 6, 7, 8])
    weight_containers: list[int] = Field(default_factory=lambda: [8])
    activation_containers: list[int] = Field(default_factory=lambda: [8])
    accumulator_bits: int = 32

    @field_validator("supported_bits", "weight_containers", "activation_containers")
    @classmethod
    def _bits_list(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 or b > 32 for b in v):
            raise ValueError("expected a non-empty list of bit-widths in 1..32")
        return sorted(set(v))

    @field_validator("weight_containers", "activation_containers")
    @classmethod
    def _holds_every_width(cls, v: list[int], info: ValidationInfo) -> list[int]:
        """A value lives in the smallest container that holds it (``Platform.container``); a
        width above every container would be costed as a container of its own that the
        hardware does not have (and every per-bit table would be asked for it)."""
        from inag.ir import INPUT_BITS  # lazily: the IR pulls in networkx and numpy

        supported = info.data.get("supported_bits")
        if not supported:  # invalid itself: reported on its own
            return v
        widest, why = max(supported), f"the widest of supported_bits {supported}"
        if info.field_name == "activation_containers" and widest < INPUT_BITS:
            widest, why = INPUT_BITS, f"the {INPUT_BITS}-bit network input"
        if max(v) < widest:
            raise ValueError(
                f"expected a container of at least {widest} bits ({why}), so that every "
                "value fits one"
            )
        return v


class Capability(_Strict):
    cpu: str = ""
    isa: str = ""
    llvm_cpu: str = ""  # LLVM's name for the CPU (what TVM's `mcpu` takes)
    features: list[str] = Field(default_factory=list)  # ISA extensions: avx512vnni, neon, sve
    cores: PositiveSourced | None = None
    clock_hz: PositiveSourced
    caches: dict[str, PositiveSourced] = Field(default_factory=dict)  # l1d_bytes, l2_bytes, ...
    memories: Memories
    numerics: Numerics = Field(default_factory=Numerics)


class ModelChoice(_Strict):
    model: str
    params: dict[str, Any] = Field(default_factory=dict)


def _default_models() -> dict[str, ModelChoice]:
    return {
        "storage": ModelChoice(model="eq2_storage"),
        "flash": ModelChoice(model="flash"),
        "sram": ModelChoice(model="sram_peak"),
    }


Constraints = create_model(
    "Constraints",
    __base__=_Strict,
    __doc__="Budgets a deployed network must meet; absent means unconstrained (one optional "
    "positive number per limit of hwmodels.quantities). Flash and SRAM default to the "
    "platform's memories less their reserved parts.",
    **{name: (float | None, Field(default=None, gt=0)) for name in LIMITS},  # type: ignore[call-overload]
)


class Rpc(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=9090, ge=1, le=65535)
    key: str | None = None
    tracker: str | None = None  # "host:port" of a TVM RPC tracker


class Measure(_Strict):
    runtime: Literal["c_standalone", "tvm_local", "tvm_rpc", "onnxruntime"]
    tvm_target: dict[str, Any] | None = None  # TVM >= 0.24 takes JSON-dict targets
    rpc: Rpc | None = None
    warmup: int = Field(default=2, ge=0)
    repeats: int = Field(default=20, ge=1)

    @field_validator("tvm_target")
    @classmethod
    def _target_has_kind(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and "kind" not in v:
            raise ValueError("a TVM target is a dict with at least 'kind' (e.g. {kind: llvm})")
        return v


class Calibration(_Strict):
    """Provenance of fitted numbers (written by ``inag calibrate``)."""

    fitted_on: str | None = None  # date
    device: str | None = None
    source: str | None = None
    runtime: str | None = None
    origin: Literal["device", "emulated", "model"] | None = None
    measurements: str | None = None  # the store the fit read
    fit_arch_ids: list[str] = Field(default_factory=list)
    coefficients: dict[str, float] = Field(default_factory=dict)
    residuals: dict[str, float | None] = Field(default_factory=dict)
    flash: dict[str, Any] | None = None  # the flash model's fit (linked sizes), if any

    @property
    def calibrated(self) -> bool:
        return bool(self.fitted_on and self.coefficients)

    def summary(self) -> str:
        """One line for `inag select`: is the latency model calibrated, and on what."""
        if not self.calibrated:
            return "latency model uncalibrated (datasheet/guess numbers)"
        r = self.residuals
        held = r.get("held_out_nets")
        within = r.get("within_10pct")
        acc = (
            f"; held-out within ±10 %: {within * held:.0f} of {held:.0f}"
            if held and within is not None
            else ""
        )
        return (
            f"latency model calibrated {self.fitted_on} on {self.origin or 'device'} "
            f"{self.device} via {self.runtime}, {len(self.fit_arch_ids)} nets{acc}"
        )


class Platform(_Strict):
    """A validated platform descriptor (``schema_version: 1``)."""

    schema_version: Literal[1]
    name: str = Field(min_length=1)
    description: str = ""
    kind: Literal["mcu", "cpu", "accelerator"]
    capability: Capability
    cost_models: dict[str, ModelChoice]
    constraints: Constraints = Field(default_factory=Constraints)
    measure: Measure
    calibration: Calibration = Field(default_factory=Calibration)
    path: str | None = Field(default=None, exclude=True)
    detected: bool = Field(default=False, exclude=True)  # had {detect: ...} fields (this host)

    @model_validator(mode="after")
    def _budgets_positive(self) -> Platform:
        """Reserved memory larger than the memory would make every network fail."""
        m = self.capability.memories
        for what, total, reserved in (
            ("flash", m.flash_bytes, m.reserved_flash_bytes),
            ("sram", m.sram_bytes, m.reserved_sram_bytes),
        ):
            if reserved is not None and reserved.value >= total.value:
                raise ValueError(
                    f"capability.memories.reserved_{what}_bytes ({reserved.value:g}) must be "
                    f"below {what}_bytes ({total.value:g}): no {what} would be left for the "
                    "network"
                )
        return self

    @field_validator("cost_models")
    @classmethod
    def _roles(cls, v: dict[str, ModelChoice]) -> dict[str, ModelChoice]:
        missing = {"energy", "latency"} - set(v)
        if missing:
            raise ValueError(f"needs models for {sorted(missing)} (roles: {sorted(ROLES)})")
        return {**_default_models(), **v}

    # -------------------------------------------------------------------- derived budgets
    def container(self, bits: int, which: Literal["weight", "activation"]) -> int:
        """The smallest container (bits) holding a ``bits``-wide value on this platform."""
        pool = (
            self.capability.numerics.weight_containers
            if which == "weight"
            else self.capability.numerics.activation_containers
        )
        for c in pool:
            if c >= bits:
                return c
        return bits

    @property
    def flash_budget_bytes(self) -> float:
        c, m = self.constraints, self.capability.memories
        if c.max_flash_bytes is not None:
            return c.max_flash_bytes
        return m.flash_bytes.value - (
            m.reserved_flash_bytes.value if m.reserved_flash_bytes else 0.0
        )

    @property
    def sram_budget_bytes(self) -> float:
        c, m = self.constraints, self.capability.memories
        if c.max_sram_bytes is not None:
            return c.max_sram_bytes
        return m.sram_bytes.value - (m.reserved_sram_bytes.value if m.reserved_sram_bytes else 0.0)


# ---------------------------------------------------------------------------- loading
def bundled_dir() -> Path:
    return Path(str(resources.files("inag").joinpath("platforms")))


def bundled_names() -> list[str]:
    d = bundled_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


_SAYS_FOUND = re.compile(r"\bfound\b")


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per error: the field, what was expected, and what was found (once)."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        found = err.get("input")
        found_s = repr(found) if not isinstance(found, dict) else "a mapping"
        if len(found_s) > 60:
            found_s = found_s[:57] + "..."
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            lines.append(f"  {loc}: missing (required field)")
        elif err["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown field (check its spelling)")
        elif not err["loc"]:  # a check across fields: its message names them
            lines.append(f"  {msg}")
        elif _SAYS_FOUND.search(msg):  # the check already says what it found
            lines.append(f"  {loc}: {msg}")
        else:
            lines.append(f"  {loc}: {msg}; found {found_s}")
    return f"{source}: invalid platform descriptor:\n" + "\n".join(lines)


def platform_from_dict(data: Any, source: str = "<dict>") -> Platform:
    """Validate ``data``; ``{detect: PROBE}`` fields are first resolved on this machine."""
    if not isinstance(data, dict):
        raise PlatformError(
            f"{source}: a platform descriptor is a YAML mapping, found {type(data).__name__}"
        )
    data = resolve_detected(data, source)
    if data.get("schema_version") != SCHEMA_VERSION:
        raise PlatformError(
            f"{source}: schema_version must be {SCHEMA_VERSION}, found "
            f"{data.get('schema_version')!r}"
        )
    try:
        return Platform.model_validate({**data, "path": source})
    except ValidationError as exc:
        raise PlatformError(format_validation_error(exc, source)) from None


def resolve_detected(data: dict[str, Any], source: str = "<dict>") -> dict[str, Any]:
    """``data`` with its ``{detect: PROBE}`` fields measured here (``inag.hostinfo``), and
    ``detected: true`` set when there were any; unchanged when there are none."""
    from inag import hostinfo

    if not hostinfo.has_markers(data):
        return data
    try:
        return {**hostinfo.resolve(data), "detected": True}
    except hostinfo.HostInfoError as exc:
        raise PlatformError(f"{source}: {exc}") from None


def resolve_platform_path(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    path = Path(text)
    if path.is_file():
        return path
    if "/" not in text and not text.endswith((".yaml", ".yml")):
        candidate = bundled_dir() / f"{text}.yaml"
        if candidate.is_file():
            return candidate
    names = ", ".join(bundled_names()) or "(none)"
    if path.exists():  # a directory or a device: there, but not a descriptor
        what = "a directory" if path.is_dir() else "not a regular file"
        raise PlatformError(
            f"platform {text!r} is {what}; expected a platform YAML file or a bundled name "
            f"({names})"
        )
    raise PlatformError(
        f"no platform {text!r}: no such file, and not a bundled name (bundled: {names})"
    )


def read_descriptor(name_or_path: str | Path) -> tuple[Path, Any]:
    """The path and the parsed, not yet validated YAML of a descriptor."""
    from inag.safe_io import InputError, load_yaml, read_text

    path = resolve_platform_path(name_or_path)
    try:  # encoding, size, duplicate keys, alias bombs, nesting, huge integers
        return path, load_yaml(read_text(path, "a platform YAML file"), str(path))
    except InputError as exc:
        raise PlatformError(str(exc)) from None


def load_platform(name_or_path: str | Path) -> Platform:
    """A platform by bundled name (``cortex_m``) or by path to a YAML file."""
    path, data = read_descriptor(name_or_path)
    return platform_from_dict(data, source=str(path))


def freeze_detected(name_or_path: str | Path = "host_cpu", name: str = "my_host") -> dict:
    """The descriptor with its ``{detect: ...}`` fields measured on this machine, renamed:
    an ordinary descriptor that describes this machine wherever it is loaded later."""
    import time

    path, data = read_descriptor(name_or_path)
    if not isinstance(data, dict):
        raise PlatformError(f"{path}: a platform descriptor is a YAML mapping")
    resolved = resolve_detected(data, str(path))
    resolved.pop("detected", None)
    platform_from_dict(resolved, str(path))  # what we write must validate
    cpu = resolved.get("capability", {}).get("cpu", "")
    return {
        **resolved,
        "name": name,
        "description": f"{cpu} detected {time.strftime('%Y-%m-%d')} (frozen from {path.name})",
    }
