"""Figures: signed difference maps and original | counterfactual | difference panels."""
