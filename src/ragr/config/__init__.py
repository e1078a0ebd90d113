"""Config: Hydra composition, schema validation and ragr's resolvers."""

from ragr.config.compose import compose_config, to_yaml

__all__ = ["compose_config", "to_yaml"]
