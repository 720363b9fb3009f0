"""The train step of the Diffusion-KTO pipeline."""
