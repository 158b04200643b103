"""Reusable torch building blocks of the spaces (imported lazily: torch is heavy)."""
