"""keras-vaegan: unpaired MRI <-> CT translation with a Keras 3 VAE-CycleGAN."""

__version__ = "0.1.0"
