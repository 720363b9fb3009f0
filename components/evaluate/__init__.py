"""The evaluate step of the Diffusion-KTO pipeline."""
