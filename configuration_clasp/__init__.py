from configuration_clasp.configuration_clasp import ClaspConfig, hub_code_files, save_hub_code, save_with_code, staged_save

__all__ = ["ClaspConfig", "hub_code_files", "save_hub_code", "save_with_code", "staged_save"]
