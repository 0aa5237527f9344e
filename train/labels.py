"""Canonical FER label order. Every dataset adapter maps into it; runs store their label_names."""
from __future__ import annotations

CANONICAL7: tuple[str, ...] = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger")
CANONICAL8: tuple[str, ...] = CANONICAL7 + ("contempt",)


def canonical(num_classes: int = 7) -> list[str]:
    """Label names in ferlens order for 7 or 8 classes."""
    if num_classes not in (7, 8):
        raise ValueError(f"num_classes must be 7 or 8, got {num_classes}")
    return list(CANONICAL8 if num_classes == 8 else CANONICAL7)
