"""The one strict base of every config model (recipes, targets, recovery, evaluate): an unknown key
fails at load with its key path (config/loader.py) instead of being silently ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
