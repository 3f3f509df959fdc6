"""cvdm-tf: Conditional Variational Diffusion Models (Della Maggiora et al., ICLR 2024) in Keras 3."""

__version__ = "0.1.0"
