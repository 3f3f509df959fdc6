"""Data consistency: make a sample agree with its measurement wherever the measurement determines it.

The range-null space decomposition (Wang, Yu & Zhang, "Zero-shot image restoration using denoising diffusion
null-space model", ICLR 2023). With a forward model A and a pseudo-inverse A+, a sample x splits into what the
measurement y fixes, A+ A x, and what it leaves open, (1 - A+ A) x. Replacing the first by A+ y:

    x <- x + A+(y) - A+(A(x))                                                        (one step)

| symbol | here |
|---|---|
| x | a sample of the model (QPI: a phase map, rad) |
| y | the measurement (QPI: the intensity pair) |
| A | `forward` (QPI: Fresnel propagation, `physics.fresnel.two_shot_intensities`) |
| A+ | `pseudo_inverse` (QPI: Tikhonov-regularised TIE, `physics.tie.tie_fft`) |

For a linear A with an exact pseudo-inverse one step is the projection onto {x : A x = y}. For QPI's forward
model (nonlinear in phi) and TIE (a first-order inverse), repeated steps are a fixed-point iteration toward
A+(A(x)) = A+(y): the sample reproduces the measurement in every spatial frequency the TIE weight passes, which
also removes part of TIE's own linearisation error there. The weight decides what "determined" means:
noise-free, nearly every frequency, and the sample becomes the measurement's phase; with noise, only the
frequencies whose signal stands far above the noise, and the model's sample keeps the rest. The iteration
contracts only where TIE's first order holds: at high frequencies Fresnel's transfer sin(pi lam dz f^2) departs
from it, and on strongly textured phases many steps slowly diverge. QPI's default is one step (README).
"""

from __future__ import annotations

from typing import Callable


def project(x, y, forward: Callable, pseudo_inverse: Callable, steps: int):
    """`steps` range-null space steps x <- x + A+(y) - A+(A(x)); A+(y) is computed once.

    Args:
        x: tensor [..., H, W] (any shape `forward` takes). The samples, batched on the leading axes.
        y: tensor, the measurement, broadcastable against `forward(x)`.
        forward: callable x -> what the instrument would record (A).
        pseudo_inverse: callable measurement -> x (A+), broadcasting over leading axes.
        steps: int >= 0. 0 returns x unchanged.

    Returns:
        tensor shaped like x.
    """
    if steps <= 0:
        return x
    target = pseudo_inverse(y)
    for _ in range(int(steps)):
        x = x + target - pseudo_inverse(forward(x))
    return x
