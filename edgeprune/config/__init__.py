from edgeprune.config.loader import load_yaml_model
from edgeprune.config.recipe import Recipe
from edgeprune.config.target import Budget, Device, Target

__all__ = ["Budget", "Device", "Recipe", "Target", "load_yaml_model"]
