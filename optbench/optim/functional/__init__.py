"""Shared update-rule pieces as small pure functions over tensors, one concept per module."""
