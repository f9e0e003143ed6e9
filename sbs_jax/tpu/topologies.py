"""TPU slices by name: topology strings (`v5e:4x4`) and Cloud accelerator types (`v5litepod-16`, `v4-32`), the
chips' published HBM and peaks, and the slice's compile-only devices from libtpu (no TPU needed).

Cloud names count chips for v5e/v6e (`v5litepod-16` = 16 chips) but TensorCores for v4/v5p (`v4-32` = 16
chips, two cores each, run as one megacore device). Hosts: v4/v5p have 4 chips per host; v5e/v6e slices of up
to 8 chips are one host, larger ones 4 chips per host.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation: published per-chip figures (Google Cloud's TPU pages)."""
    name: str                # topology prefix: v4, v5e, v5p, v6e
    cloud_prefix: str        # accelerator-type prefix: v4, v5litepod, v5p, v6e
    device_kind: str         # jax Device.device_kind of its devices
    hbm_bytes: int
    peak_bf16_flops: float   # per chip, per second
    hbm_bytes_per_s: float
    cores_in_name: int       # how many units of the Cloud name make one chip (TensorCores for v4/v5p)
    dims: int                # 3D torus (v4, v5p) or 2D (v5e, v6e)
    chip_config: str         # libtpu chip_config_name: megacore runs a chip's two cores as one device


CHIPS = {
    "v4": Chip("v4", "v4", "TPU v4", 32 * GIB, 275e12, 1228e9, 2, 3, "megacore"),
    "v5e": Chip("v5e", "v5litepod", "TPU v5 lite", 16 * GIB, 197e12, 819e9, 1, 2, "default"),
    "v5p": Chip("v5p", "v5p", "TPU v5", 95 * GIB, 459e12, 2765e9, 2, 3, "megacore"),
    "v6e": Chip("v6e", "v6e", "TPU v6 lite", 32 * GIB, 918e12, 1640e9, 1, 2, "default"),
}
_CLOUD_PREFIXES = {c.cloud_prefix: c for c in CHIPS.values()} | {"v5e": CHIPS["v5e"]}


@dataclasses.dataclass(frozen=True)
class Slice:
    """A slice to compile for: chip type, chip grid, number of slices (multislice over DCN), hosts."""
    chip: Chip
    shape: tuple[int, ...]
    num_slices: int = 1
    given_as: str = ""

    @property
    def chips_per_slice(self) -> int:
        return math.prod(self.shape)

    @property
    def num_chips(self) -> int:
        return self.chips_per_slice * self.num_slices

    @property
    def topology(self) -> str:
        return f"{self.chip.name}:{'x'.join(map(str, self.shape))}"

    @property
    def host_bounds(self) -> tuple[int, int, int]:
        """Chips per host as libtpu's (x, y, z) bounds."""
        if self.chip.dims == 2 and self.chips_per_slice <= 8:
            return (self.shape[0], self.shape[1], 1)
        return (2, 2, 1)

    @property
    def hosts_per_slice(self) -> int:
        return max(1, self.chips_per_slice // math.prod(self.host_bounds))

    @property
    def num_hosts(self) -> int:
        return self.hosts_per_slice * self.num_slices

    @property
    def cloud_name(self) -> str:
        return f"{self.chip.cloud_prefix}-{self.chips_per_slice * self.chip.cores_in_name}"


# The chip grids Cloud TPU offers for each slice size (chips -> grid).
_GRIDS = {
    2: {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)},
    3: {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
        256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)},
}


def _grid(chips: int, dims: int) -> tuple[int, ...]:
    if chips not in _GRIDS[dims]:
        raise ValueError(f"no {dims}D slice of {chips} chips; sizes: {sorted(_GRIDS[dims])} chips")
    return _GRIDS[dims][chips]


def parse(name: str, num_slices: int = 1) -> Slice:
    """`v5e:4x4`, `v4:2x2x2`, `v5litepod-16`, `v5e-16`, `v4-32`, `v5p-8`, `v6e-8` -> a `Slice`."""
    text = name.strip().lower()
    if num_slices < 1:
        raise ValueError(f"--num_slices: expected >= 1, got {num_slices}")
    match = re.fullmatch(r"(v\w+?):(\d+(?:x\d+)+)", text)
    if match:
        chip = CHIPS.get(match.group(1))
        if chip is None:
            raise ValueError(f"topology {name!r}: unknown chip {match.group(1)!r}; expected one of {sorted(CHIPS)}")
        shape = tuple(int(d) for d in match.group(2).split("x"))
        if len(shape) != chip.dims:
            raise ValueError(f"topology {name!r}: {chip.name} slices are {chip.dims}D ("
                             f"{'AxB' if chip.dims == 2 else 'AxBxC'})")
        return Slice(chip, shape, num_slices, name)
    match = re.fullmatch(r"(v\w+?)-(\d+)", text)
    if match and match.group(1) in _CLOUD_PREFIXES:
        chip = _CLOUD_PREFIXES[match.group(1)]
        units = int(match.group(2))
        if units % chip.cores_in_name:
            raise ValueError(f"accelerator type {name!r}: {chip.cloud_prefix} names count TensorCores "
                             f"({chip.cores_in_name} per chip); {units} is not a whole number of chips")
        try:
            return Slice(chip, _grid(units // chip.cores_in_name, chip.dims), num_slices, name)
        except ValueError as e:
            raise ValueError(f"accelerator type {name!r}: {e}") from None
    raise ValueError(f"unknown TPU slice {name!r}; expected a topology such as v5e:4x4, v4:2x2x2, v5p:2x2x4, "
                     f"v6e:2x4, or a Cloud accelerator type such as v5litepod-16, v4-32, v5p-8, v6e-8")


def quiet_libtpu_environment(slice_: Slice | None = None) -> None:
    """Environment for compiling without a TPU, set before libtpu loads: the host's JAX stays on CPU, libtpu
    may load beside another process that holds its lockfile (nothing runs on a chip here), and its warnings
    about a missing TPU VM metadata server are answered with this slice's type."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", slice_.cloud_name if slice_ else "v5litepod-4")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


def devices(slice_: Slice) -> list:
    """The slice's compile-only devices (`jax.experimental.topologies`; needs the `libtpu` package)."""
    quiet_libtpu_environment(slice_)
    try:
        import libtpu  # noqa: F401 - the compile-only backend
    except ImportError:
        raise RuntimeError("compiling for a TPU slice needs the `libtpu` package: pip install 'sbs-jax[tpu]' "
                           "(or `pip install libtpu`); no TPU is needed") from None
    from jax.experimental import topologies

    kwargs = {"chip_config_name": slice_.chip.chip_config, "chips_per_host_bounds": slice_.host_bounds}
    if slice_.num_slices > 1:
        kwargs["num_slices"] = slice_.num_slices
    found = topologies.get_topology_desc(topology_name=slice_.topology, platform="tpu", **kwargs).devices
    if len(found) != slice_.num_chips:
        raise RuntimeError(f"libtpu gave {len(found)} devices for {slice_.topology} x{slice_.num_slices}, "
                           f"expected one per chip ({slice_.num_chips})")
    return list(found)
