"""Plain torch networks (no Lightning) shared by the diffusion methods."""
