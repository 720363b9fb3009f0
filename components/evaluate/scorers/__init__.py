"""Image scorers for the evaluate step: one interface (``base.Scorer``), looked up by name (``get_scorer``)."""

from components.evaluate.scorers.base import SCORERS, Scorer, ScorerError, get_scorer

__all__ = ["SCORERS", "Scorer", "ScorerError", "get_scorer"]
