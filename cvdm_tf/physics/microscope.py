"""The physics of one brightfield defocus measurement, and the range of microscopes a model was trained on.

A thin object imaged at defocus +-dz through a microscope of wavelength lam and pixel size dx (at the sample).
In pixel units the Fresnel transfer function exp(-i pi lam dz |f|^2), f in cycles / um, is

    exp(-i pi F |f_px|^2),     F = lam dz / dx^2,  f_px = f dx in cycles / pixel                        (6.1')

and TIE's source k dx^2 dI/dz = (pi / F) (I(+dz) - I(-dz)). So for a phase map sampled on pixels, the intensity
pair depends on lam, dx and dz only through the Fresnel number F (the dimensionless defocus): F decides how far
light spreads (about F / 2 px at the Nyquist frequency), where TIE's first order holds (pi F f_px^2 << 1) and
how much signal a phase curvature gives against the camera's noise. The pixel size also sets how large a cell
of a given size looks in pixels, which is what a model's prior learns.

Notation:

    symbol   code name          units
    lam      wavelength_um      um
    dx       pixel_size_um      um (at the sample: camera pixel / magnification)
    dz       defocus_um         um (the two shots are at -dz and +dz)
    F        fresnel_number     dimensionless, lam dz / dx^2

The range QPI models are trained on (`configs/qpi.toml`) is chosen from what brightfield TIE setups use:
    - wavelength 0.45-0.70 um: LED or filtered halogen illumination across the visible;
    - pixel size 0.10-0.35 um at the sample: 6.5 um sCMOS pixels behind 20x-60x objectives;
    - F 4-64: the defocus users choose for TIE, about 0.3-5 um at 0.52 um and 0.21 um pixels (F = 12 at
      1 um; 0.60 um light, 0.16 um pixels and 2 um defocus give F = 47). Below F ~ 4 the defocus signal sinks
      into the camera's noise; far above 64 the pair is a Fresnel diffraction pattern, not a derivative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf

from cvdm_tf.errors import InputError

__all__ = ["Microscope", "MicroscopeRange"]


@dataclass(frozen=True)
class Microscope:
    """One measurement's physics. Fields are python floats, or scalar tensors inside a `tf.data` map."""

    wavelength_um: float
    pixel_size_um: float
    defocus_um: float

    @property
    def fresnel_number(self):
        """F = lam dz / dx^2."""
        return self.wavelength_um * self.defocus_um / self.pixel_size_um**2

    def describe(self) -> str:
        return (f"wavelength {self.wavelength_um:g} um, pixel size {self.pixel_size_um:g} um, defocus "
                f"{self.defocus_um:g} um (lam dz / dx^2 = {self.fresnel_number:.3g})")

    def check(self):
        """An InputError unless every quantity is a finite positive number."""
        for name in ("wavelength_um", "pixel_size_um", "defocus_um"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InputError(f"{name.replace('_um', '').replace('_', ' ')}: must be a positive number of "
                                 f"micrometres, got {value!r}")
        return self


@dataclass(frozen=True)
class MicroscopeRange:
    """The microscopes a model is trained on: wavelength and pixel size uniform in their ranges, F log-uniform
    (each octave of defocus as likely), defocus = F dx^2 / lam. A range whose ends are equal is one value."""

    wavelength_um: tuple[float, float]
    pixel_size_um: tuple[float, float]
    fresnel_number: tuple[float, float]

    @classmethod
    def single(cls, microscope: Microscope) -> "MicroscopeRange":
        """The range of a model trained on one microscope."""
        f = microscope.fresnel_number
        return cls((microscope.wavelength_um,) * 2, (microscope.pixel_size_um,) * 2, (f, f))

    @property
    def is_single(self) -> bool:
        return all(low == high for low, high in (self.wavelength_um, self.pixel_size_um, self.fresnel_number))

    def draw(self, seed) -> Microscope:
        """A random microscope of the range (scalar float32 tensors); `seed` is a stateless seed [2]."""
        u = tf.random.stateless_uniform([3], seed=seed)
        (lam0, lam1), (dx0, dx1), (f0, f1) = self.wavelength_um, self.pixel_size_um, self.fresnel_number
        wavelength = lam0 + (lam1 - lam0) * u[0]
        pixel = dx0 + (dx1 - dx0) * u[1]
        fresnel = tf.exp(math.log(f0) + (math.log(f1) - math.log(f0)) * u[2])
        return Microscope(wavelength, pixel, fresnel * pixel**2 / wavelength)

    def problem(self, microscope: Microscope) -> str | None:
        """Why `microscope` lies outside the range (one line), or None. Relative slack 1e-3 at the ends."""
        checks = (("wavelength", microscope.wavelength_um, self.wavelength_um, " um"),
                  ("pixel size", microscope.pixel_size_um, self.pixel_size_um, " um"),
                  ("lam dz / dx^2", microscope.fresnel_number, self.fresnel_number, ""))
        for name, value, (low, high), unit in checks:
            if not low * (1 - 1e-3) <= value <= high * (1 + 1e-3):
                return f"{name} {value:.3g}{unit} is outside the model's training range ({self.describe()})"
        return None

    def assert_contains(self, microscope: Microscope) -> list:
        """Graph assertions (scalar tensors) that fail with `describe()` when `microscope` lies outside."""
        checks = []
        for value, (low, high) in ((microscope.wavelength_um, self.wavelength_um),
                                   (microscope.pixel_size_um, self.pixel_size_um),
                                   (microscope.fresnel_number, self.fresnel_number)):
            value = tf.convert_to_tensor(value, tf.float32)
            inside = tf.logical_and(value >= low * (1 - 1e-3), value <= high * (1 + 1e-3))
            checks.append(tf.debugging.Assert(inside, [f"physics outside the range the model was trained on "
                                                       f"({self.describe()}):", value]))
        return checks

    def describe(self) -> str:
        if self.is_single:
            lam, dx, f = self.wavelength_um[0], self.pixel_size_um[0], self.fresnel_number[0]
            return (f"trained on one microscope only: wavelength {lam:g} um, pixel size {dx:g} um, defocus "
                    f"{f * dx**2 / lam:.3g} um")
        span = lambda pair, unit="": f"{pair[0]:g}-{pair[1]:g}{unit}"  # noqa: E731
        return (f"wavelength {span(self.wavelength_um, ' um')}, pixel size {span(self.pixel_size_um, ' um')}, "
                f"lam dz / dx^2 {span(self.fresnel_number)}")
