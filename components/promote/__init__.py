"""The promote step of the Diffusion-KTO pipeline."""
