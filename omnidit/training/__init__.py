"""Training loops for omnidit's own models: the shapes VAE, then the DiT on cached latents."""
