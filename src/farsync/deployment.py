"""Deployment time models: time a small model's run as if it were a larger deployment.

``cluster.time_model`` (and ``farsync plan``) describe the deployment being timed::

    time_model: 1b                                        # a preset (PRESETS)
    time_model: {params: 1e9, layers: 24, step_time: 0.1s}
    time_model: {params: 1e9, layers: 24, device: h100, mfu: 0.6, tokens_per_step: 2e6}

Step time: ``step_time`` if given; else Kaplan et al. (2020): FLOPs per step = 6 x params x
tokens per step (per worker; default: the run's own tokens per worker step), divided by the
device's dense bf16 peak (``device`` from DEVICES, or ``peak_flops``) x ``mfu`` (0.6, the DiLoCo
papers' value); without a device, by ``cluster.throughput``. Without ``params`` the model timed
is the run's own (its FLOPs from the task). Payload bytes are scaled to the deployment's
parameter count (``bytes_scale`` = params / the model's parameters: time only; reported bytes
stay the real ones). ``layers`` (default: the model's block list, else 1) and ``layer_shares``,
``forward_share``, ``bucket_size`` and ``overlap`` shape the step (`comm/timing.py`).

The presets are the deployments of the Streaming DiLoCo paper's simulations (arXiv 2501.18512):
1B parameters / 24 layers / 0.1 s per step, 10B / 48 / 0.8 s, 100B / 108 / 4.9 s.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .comm.timing import DDP_BUCKET_BYTES, StepLayout
from .units import (format_bandwidth, format_count, format_seconds, parse_bytes, parse_duration,
                    parse_flops)

PRESETS: dict[str, dict[str, Any]] = {
    "1b": {"params": 1e9, "layers": 24, "step_time": 0.1},
    "10b": {"params": 1e10, "layers": 48, "step_time": 0.8},
    "100b": {"params": 1e11, "layers": 108, "step_time": 4.9},
}

# dense bf16 peak FLOP/s (vendor data sheets, without sparsity)
DEVICES: dict[str, float] = {
    "v100": 125e12, "a100": 312e12, "h100": 989e12, "h200": 989e12, "b200": 2250e12,
    "tpu-v4": 275e12, "tpu-v5e": 197e12, "tpu-v5p": 459e12, "mi300x": 1307e12,
}


class TimeModelConfig(BaseModel):
    """A deployment to time the run as (module docstring). Every field is optional."""

    model_config = ConfigDict(extra="forbid")
    preset: Literal["1b", "10b", "100b"] | None = Field(None, description="start from a paper deployment (PRESETS)")
    params: float | None = Field(None, gt=0, description="parameters of the timed model (default: the run's model)")
    layers: int | None = Field(None, ge=1, description="its layers (default: the model's block list, else 1)")
    step_time: str | float | None = Field(None, description="compute time per inner step, e.g. '0.1s'")
    device: Literal[tuple(DEVICES)] | None = Field(None, description="device whose dense bf16 peak times a step (Kaplan)")  # type: ignore[valid-type]
    peak_flops: str | float | None = Field(None, description="peak FLOP/s instead of a device, e.g. '989TFLOPS'")
    mfu: float = Field(0.6, gt=0, le=1, description="model FLOP utilization of the device")
    tokens_per_step: float | None = Field(None, gt=0, description="tokens per worker per step (default: the run's)")
    layer_shares: list[float] | None = Field(None, description="per-layer share of parameters and compute (default: equal)")
    forward_share: float = Field(1.0 / 3.0, ge=0, lt=1, description="the forward pass's share of a step")
    bucket_size: str | float | None = Field("25MiB", description="bucket of a reduction, as timed (torch DDP: 25MiB); none: one")
    overlap: bool = Field(True, description="reductions start as the backward produces their buckets (false: at step end)")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, v):
        if isinstance(v, str):
            v = {"preset": v}
        if isinstance(v, dict) and v.get("preset") is not None:
            name = str(v["preset"]).lower()
            if name not in PRESETS:
                raise ValueError(f"unknown time_model preset {v['preset']!r}; valid choices: {', '.join(PRESETS)}")
            base = dict(PRESETS[name])
            if (v.get("device") is not None or v.get("peak_flops") is not None) and v.get("step_time") is None:
                base.pop("step_time")  # the device times the step, not the preset
            v = {**base, **v, "preset": name}
        return v

    @field_validator("step_time")
    @classmethod
    def _duration(cls, v):
        if v is not None and not parse_duration(v) > 0:
            raise ValueError(f"time_model.step_time must be > 0, got {v!r}")
        return v

    @field_validator("peak_flops")
    @classmethod
    def _flops(cls, v):
        if v is not None:
            parse_flops(v)
        return v

    @field_validator("bucket_size", mode="before")
    @classmethod
    def _bucket(cls, v):
        if isinstance(v, str) and v.strip().lower() == "none":
            return None
        if v is not None:
            parse_bytes(v)
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.step_time is not None and (self.device is not None or self.peak_flops is not None):
            raise ValueError("time_model: give step_time or device/peak_flops (with mfu, tokens_per_step), not both")
        if self.device is not None and self.peak_flops is not None:
            raise ValueError("time_model: give device or peak_flops, not both")
        if self.layer_shares is not None:
            if self.layers is not None and len(self.layer_shares) != self.layers:
                raise ValueError(f"time_model.layer_shares has {len(self.layer_shares)} entries but layers is {self.layers}")
            if any(not s > 0 for s in self.layer_shares):
                raise ValueError(f"time_model.layer_shares must all be > 0, got {self.layer_shares}")
        return self

    # ------------------------------------------------------------------ resolution
    def peak(self) -> float | None:
        if self.device is not None:
            return DEVICES[self.device]
        return parse_flops(self.peak_flops) if self.peak_flops is not None else None

    def step_time_s(self, params: float, tokens_per_step: float, throughput: float | None = None) -> float:
        """Compute time of one step of the timed model (Kaplan: 6 N tokens / (peak x MFU))."""
        if self.step_time is not None:
            return parse_duration(self.step_time)
        tokens = self.tokens_per_step or tokens_per_step
        if self.peak() is not None:
            return 6.0 * params * tokens / (self.peak() * self.mfu)
        if throughput is None:
            raise ValueError("time_model needs step_time, or device/peak_flops with tokens_per_step")
        return 6.0 * params * tokens / throughput

    def layout(self, layers: int) -> StepLayout:
        n = self.layers or (len(self.layer_shares) if self.layer_shares else layers)
        return StepLayout(n, tuple(self.layer_shares or ()), self.forward_share, self.overlap)

    def bucket_bytes(self) -> float | None:
        return None if self.bucket_size is None else parse_bytes(self.bucket_size)


def resolve(tm: TimeModelConfig | str | dict | None, n_params: int, layers: int, *, tokens_per_step: float | None = None,
            flops_per_step: float | None = None, throughput: float | None = None, step_time_s: float | None = None,
            bytes_scale: float = 1.0, workers: int | None = None, bandwidth_bps: float | None = None,
            latency_s: float | None = None) -> dict[str, Any]:
    """What the clock times a run of an `n_params`-parameter model with `layers` blocks as.

    Returns ``step_time_s``, ``bytes_scale``, ``layout``, ``bucket_bytes``, ``params`` and the
    ``description`` in words. Without a deployment (`tm` None, or no ``params``) the model timed
    is the run's own: its step time from `step_time_s`, the time model, or `flops_per_step` /
    `throughput`; payloads as they are (x `bytes_scale`)."""
    own = tm is None
    tm = tm if isinstance(tm, TimeModelConfig) else TimeModelConfig.model_validate(tm if tm is not None else {})
    if tm.params is None:
        params, scale = float(n_params), bytes_scale
        if own and step_time_s is not None:
            step, how = step_time_s, ""
        elif tm.step_time is not None or tm.peak() is not None:
            step = tm.step_time_s(params, tokens_per_step or 0.0)
            how = "" if tm.step_time is not None else f"on {tm.device or tm.peak_flops} at MFU {tm.mfu:g}"
        elif flops_per_step is not None and throughput is not None:
            step, how = flops_per_step / throughput, f"its FLOPs at {throughput / 1e12:g} TFLOP/s"
        else:
            step, how = step_time_s or 0.0, ""
    else:
        params, scale = tm.params, tm.params / n_params
        if tm.step_time is None and tm.peak() is None and (tokens_per_step is None or throughput is None):
            raise ValueError("time_model with params needs step_time, or device/peak_flops with tokens_per_step")
        step = tm.step_time_s(params, tokens_per_step or 0.0, throughput)
        how = ("" if tm.step_time is not None else
               f"6 x N x tokens FLOPs on {tm.device or tm.peak_flops} at MFU {tm.mfu:g}" if tm.peak() is not None else
               f"6 x N x tokens FLOPs at {throughput / 1e12:g} TFLOP/s")
    layout = tm.layout(layers)
    words = describe(params, layout.layers, step, workers=workers, bandwidth_bps=bandwidth_bps, latency_s=latency_s,
                     how=how, bucket_bytes=tm.bucket_bytes(), overlap=tm.overlap, own=tm.params is None)
    if tm.params is None and scale != 1.0:
        words += f"; payload bytes x {scale:g}"
    return {"step_time_s": step, "bytes_scale": scale, "layout": layout, "bucket_bytes": tm.bucket_bytes(),
            "params": params, "description": words}


def describe(params: float, layers: int, step_time_s: float, *, workers: int | None = None,
             bandwidth_bps: float | None = None, latency_s: float | None = None, how: str = "",
             bucket_bytes: float | None = DDP_BUCKET_BYTES, overlap: bool = True, own: bool = False) -> str:
    """The time model in words: 'timed as a 1B-parameter, 24-layer model at 0.1 s per step, 4
    workers, 1 Gbps, 10 ms (25 MiB buckets overlapped with the backward)'; `own`: the run's own
    model ('timed as the run's own ...')."""
    article = "the run's own" if own else "a"
    head = f"timed as {article} {format_count(params)}-parameter, {layers}-layer model at {format_seconds(step_time_s)} per step"
    if how:
        head += f" ({how})"
    net = []
    if workers is not None:
        net.append(f"{workers} worker{'s' if workers != 1 else ''}")
    if bandwidth_bps is not None:
        net.append(format_bandwidth(bandwidth_bps))
    if latency_s is not None:
        net.append(format_seconds(latency_s) + " latency")
    tail = ", ".join([head, *net])
    if not overlap:
        return tail + "; reductions start after the backward"
    if bucket_bytes is None:
        return tail + "; reductions in one message per call, overlapped with the backward"
    mib = bucket_bytes / 2**20
    size = f"{mib:.3g} MiB" if abs(mib - round(mib)) < 1e-9 else f"{bucket_bytes / 1e6:.3g} MB"
    return tail + f"; reductions in {size} buckets overlapped with the backward"


__all__ = ["DEVICES", "PRESETS", "TimeModelConfig", "describe", "resolve"]
