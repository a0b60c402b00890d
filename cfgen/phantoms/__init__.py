"""Procedural phantoms from structural causal models: every image is render(u, attributes),
so the true counterfactual of any edit is render(u, attributes')."""
