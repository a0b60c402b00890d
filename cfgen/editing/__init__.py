"""Counterfactual editing: DDIM inversion under the source prompt, regeneration under the target."""
