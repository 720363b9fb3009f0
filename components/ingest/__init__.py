"""The ingest step of the Diffusion-KTO pipeline."""
