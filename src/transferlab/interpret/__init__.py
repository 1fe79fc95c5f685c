"""Interpretation: what a trained model looks at. Names are imported on first use, so the command
line can list the methods without loading torch."""

from importlib import import_module

_EXPORTS = {
    "explain": "explanation", "output_names": "explanation", "ExplainError": "cam", "compute_cams": "cam",
    "find_target_layer": "cam", "overlay": "cam", "feature_maps": "maps", "attention_maps": "maps",
    "attention_rollout": "maps", "token_attention": "maps", "ALL_METHODS": "methods",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"transferlab.interpret.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'transferlab.interpret' has no attribute {name!r}")
