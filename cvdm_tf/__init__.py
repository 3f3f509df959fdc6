"""cvdm-tf: Conditional Variational Diffusion Models (Della Maggiora et al., ICLR 2024) in Keras 3.

From Python: `cvdm_tf.load("builtin:qpi").predict(pair, ...)` (see `cvdm_tf.api`)."""

__version__ = "0.1.0"


def load(spec):
    """The model of a run folder of `cvdm-tf train` or of `builtin:NAME`, with `.predict(measurement, ...)`
    (`cvdm_tf.api.Model`). TensorFlow is imported here, not by `import cvdm_tf`."""
    from cvdm_tf.api import load as _load

    return _load(spec)
