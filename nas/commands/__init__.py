"""Command groups of the `nas` CLI, one module each."""
