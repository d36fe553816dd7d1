"""One module per scenario of issue 6; each has ``run(config) -> ScenarioResult``."""
