"""Model owner's keybroker and model bundle tooling."""
