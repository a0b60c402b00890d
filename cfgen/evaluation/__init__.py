"""Scoring counterfactuals: identity, classifier gain, CLIP, distribution and ground-truth metrics."""
