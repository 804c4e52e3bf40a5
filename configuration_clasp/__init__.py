from configuration_clasp.configuration_clasp import ClaspConfig, hub_code_source, save_hub_code

__all__ = ["ClaspConfig", "hub_code_source", "save_hub_code"]
