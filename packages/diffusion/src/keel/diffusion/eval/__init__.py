"""Evaluation of generated images and videos without downloaded feature networks."""
