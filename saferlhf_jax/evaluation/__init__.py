"""Evaluation: score-model reports, arena, moderation metrics, plots."""
