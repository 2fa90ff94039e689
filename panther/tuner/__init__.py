"""panther's autotuner (public API is assembled here)."""

from panther.tuner.config import Categorical, Float, Int, LayerConfig, TuningConfigs

__all__ = ["Categorical", "Float", "Int", "LayerConfig", "TuningConfigs"]
