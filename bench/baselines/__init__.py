"""The paper notebooks' ways of doing things, re-implemented faithfully as benchmark baselines."""
