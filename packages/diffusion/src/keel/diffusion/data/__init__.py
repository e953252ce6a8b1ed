"""Offline data for diffusion: real digits from installed packages, image folders, long videos."""
