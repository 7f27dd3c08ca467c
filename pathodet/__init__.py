"""pathodet: signet ring cell detection in H&E images with partial annotation."""

__version__ = "0.1.0"
