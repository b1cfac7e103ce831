"""Model weights shipped with pathosam (``pathosam_small.pt``; model card: docs/models.md)."""
