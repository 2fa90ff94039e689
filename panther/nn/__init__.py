"""Sketched drop-in replacements for torch.nn layers."""

__all__: list[str] = []
