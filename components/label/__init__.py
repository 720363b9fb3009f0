"""The label step of the Diffusion-KTO pipeline."""
